// nvcc-flags: --default-stream per-thread
// Per-thread default stream: four host threads each use their own default stream (no stream
// argument), and they do not serialise against each other: a thread's default stream is free
// while another thread's default stream runs a 300 ms kernel.
#include "common.h"
#include <thread>
#include <vector>
#include <atomic>

__global__ void iota_plus(int *p, int n, int base) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = base + i;
}
__global__ void square(int *p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = (int)((long long)p[i] * p[i] % 65521);
}

static long long g_sum[4];
static int g_bad[4];

static void worker(int id) {
  CHECK(cudaSetDevice(0));
  const int n = 1 << 18;
  int *d;
  CHECK(cudaMalloc(&d, n * sizeof(int)));
  std::vector<int> h(n);
  for (int rep = 0; rep < 5; rep++) {
    iota_plus<<<n / 256, 256>>>(d, n, id * 1000 + rep);
    square<<<n / 256, 256>>>(d, n);
    CHECK(cudaMemcpyAsync(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost, cudaStreamPerThread));
    CHECK(cudaStreamSynchronize(cudaStreamPerThread));
  }
  CHECK_LAUNCH();
  long long sum = 0;
  int bad = 0;
  for (int i = 0; i < n; i++) {
    long long v = id * 1000 + 4 + i;
    if (h[i] != (int)(v * v % 65521)) bad++;
    sum += h[i];
  }
  g_sum[id] = sum;
  g_bad[id] = bad;
  CHECK(cudaFree(d));
}

int main() {
  init_device();
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; i++) ts.emplace_back(worker, i);
  for (auto &t : ts) t.join();
  checkpoint("launch");
  for (int i = 0; i < 4; i++) printf("result: thread %d sum %lld mismatches %d\n", i, g_sum[i], g_bad[i]);

  // Independence: thread 0 keeps its default stream busy for 300 ms; thread 1 times a small
  // kernel on its own default stream meanwhile.
  std::atomic<bool> launched{false};
  std::atomic<bool> finished{false};
  cudaEvent_t busy_end;
  CHECK(cudaEventCreate(&busy_end));
  float busy_ms = 0;
  std::thread t0([&] {
    CHECK(cudaSetDevice(0));
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    CHECK(cudaEventRecord(a));  // per-thread default stream
    vt_spin_kernel<<<1, 1>>>(300ull * 1000 * 1000, nullptr);
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventRecord(busy_end));
    launched = true;
    CHECK(cudaEventSynchronize(b));
    busy_ms = elapsed_ms(a, b);
    while (!finished) std::this_thread::yield();
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
  });
  float other_ms = 0;
  cudaError_t busy_state = cudaSuccess;
  std::thread t1([&] {
    CHECK(cudaSetDevice(0));
    while (!launched) std::this_thread::yield();
    int *d;
    CHECK(cudaMalloc(&d, 1024 * sizeof(int)));
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    CHECK(cudaEventRecord(a));
    iota_plus<<<4, 256>>>(d, 1024, 0);
    CHECK(cudaEventRecord(b));
    CHECK(cudaStreamSynchronize(cudaStreamPerThread));
    other_ms = elapsed_ms(a, b);
    // The busy kernel must still be running when this thread's work completed.
    busy_state = cudaEventQuery(busy_end);
    finished = true;
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    CHECK(cudaFree(d));
  });
  t0.join();
  t1.join();
  printf("time: busy stream %.2f ms, other thread's kernel %.3f ms\n", busy_ms, other_ms);
  printf("result: the busy stream when the other thread's work completed: %s\n", vt_name(busy_state));
  result("per-thread default streams run concurrently", busy_state == cudaErrorNotReady && busy_ms >= 299.0f);
  CHECK(cudaEventDestroy(busy_end));
  bool ok = true;
  for (int i = 0; i < 4; i++) ok = ok && g_bad[i] == 0;
  result("per-thread streams", ok);
  return done();
}
