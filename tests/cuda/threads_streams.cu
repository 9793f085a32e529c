// Several host threads share the device (legacy default stream semantics): each creates its own
// streams, events and buffers, runs copy -> kernel -> copy pipelines concurrently, and checks
// its results; the threads also allocate and free concurrently.
#include "common.h"
#include <thread>
#include <vector>

__global__ void affine(const int *in, int *out, int n, int a, int b) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i] * a + b;
}

static int g_bad[8];
static long long g_sum[8];

static void worker(int id) {
  CHECK(cudaSetDevice(0));
  const int n = 1 << 17;
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t ev;
  CHECK(cudaEventCreate(&ev));
  int *hin, *hout, *din, *dout;
  CHECK(cudaMallocHost(&hin, n * sizeof(int)));
  CHECK(cudaMallocHost(&hout, n * sizeof(int)));
  CHECK(cudaMalloc(&din, n * sizeof(int)));
  CHECK(cudaMalloc(&dout, n * sizeof(int)));
  int bad = 0;
  long long sum = 0;
  for (int round = 0; round < 10; round++) {
    for (int i = 0; i < n; i++) hin[i] = i + round;
    CHECK(cudaMemcpyAsync(din, hin, n * sizeof(int), cudaMemcpyHostToDevice, s));
    affine<<<n / 256, 256, 0, s>>>(din, dout, n, id + 1, round);
    CHECK_LAUNCH();
    CHECK(cudaMemcpyAsync(hout, dout, n * sizeof(int), cudaMemcpyDeviceToHost, s));
    CHECK(cudaEventRecord(ev, s));
    CHECK(cudaEventSynchronize(ev));
    for (int i = 0; i < n; i++) {
      int want = (i + round) * (id + 1) + round;
      bad += hout[i] != want;
      sum += hout[i];
    }
    // Churn: allocate and free while other threads do the same.
    void *tmp;
    CHECK(cudaMalloc(&tmp, (size_t)(id + 1) << 20));
    CHECK(cudaFree(tmp));
  }
  g_bad[id] = bad;
  g_sum[id] = sum;
  CHECK(cudaFreeHost(hin));
  CHECK(cudaFreeHost(hout));
  CHECK(cudaFree(din));
  CHECK(cudaFree(dout));
  CHECK(cudaEventDestroy(ev));
  CHECK(cudaStreamDestroy(s));
}

int main() {
  init_device();
  std::vector<std::thread> ts;
  for (int i = 0; i < 8; i++) ts.emplace_back(worker, i);
  for (auto &t : ts) t.join();
  checkpoint("launch");
  bool ok = true;
  for (int i = 0; i < 8; i++) {
    printf("result: thread %d mismatches %d sum %lld\n", i, g_bad[i], g_sum[i]);
    ok = ok && g_bad[i] == 0;
  }
  result("threads", ok);
  return done();
}
