// Several streams overlapping copies and kernels.
// 1. A kernel that spins for 100 ms on stream A while stream B copies 64 MiB to and from pinned
//    memory: events show the copies finished before the kernel did (copy/compute overlap).
// 2. Four spinning kernels (50 ms each) on four streams finish in well under 4 x 50 ms
//    (concurrent kernels).
// 3. A chunked pipeline: H2D, kernel, D2H for 8 chunks spread over 4 streams; results checked.
#include "common.h"
#include <vector>

__global__ void scale(const int *in, int *out, int n, int k) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    out[i] = in[i] * k + 1;
}

int main() {
  init_device();
  cudaStream_t s[4];
  for (auto &x : s) CHECK(cudaStreamCreateWithFlags(&x, cudaStreamNonBlocking));
  cudaEvent_t kStart, kEnd, cEnd;
  CHECK(cudaEventCreate(&kStart));
  CHECK(cudaEventCreate(&kEnd));
  CHECK(cudaEventCreate(&cEnd));

  // 1. copy/compute overlap
  const size_t bytes = 64u << 20;
  char *h;
  CHECK(cudaMallocHost(&h, bytes));
  memset(h, 0x5a, bytes);
  char *d;
  CHECK(cudaMalloc(&d, bytes));
  CHECK(cudaEventRecord(kStart, s[0]));
  vt_spin_kernel<<<1, 32, 0, s[0]>>>(100ull * 1000 * 1000, nullptr);
  CHECK_LAUNCH();
  CHECK(cudaEventRecord(kEnd, s[0]));
  CHECK(cudaStreamWaitEvent(s[1], kStart, 0));  // copies start after the kernel started
  CHECK(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, s[1]));
  CHECK(cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, s[1]));
  CHECK(cudaEventRecord(cEnd, s[1]));
  checkpoint("launch");
  CHECK(cudaDeviceSynchronize());
  float kernel_ms = elapsed_ms(kStart, kEnd), copy_ms = elapsed_ms(kStart, cEnd);
  printf("time: kernel %.2f ms, copies done after %.2f ms\n", kernel_ms, copy_ms);
  result("copies finished while the kernel ran", copy_ms < kernel_ms);
  CHECK(cudaFreeHost(h));
  CHECK(cudaFree(d));

  // 2. concurrent kernels
  CHECK(cudaEventRecord(kStart, 0));
  for (auto &x : s) CHECK(cudaStreamWaitEvent(x, kStart, 0));
  for (auto &x : s) vt_spin_kernel<<<1, 32, 0, x>>>(50ull * 1000 * 1000, nullptr);
  CHECK_LAUNCH();
  for (auto &x : s) {
    cudaEvent_t e;
    CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    CHECK(cudaEventRecord(e, x));
    CHECK(cudaStreamWaitEvent(0, e, 0));
    CHECK(cudaEventDestroy(e));
  }
  CHECK(cudaEventRecord(kEnd, 0));
  CHECK(cudaEventSynchronize(kEnd));
  float all_ms = elapsed_ms(kStart, kEnd);
  printf("time: 4 x 50 ms kernels on 4 streams took %.2f ms\n", all_ms);
  result("kernels on different streams ran concurrently", all_ms < 150.0f);

  // 3. chunked pipeline
  const int n = 1 << 22, chunks = 8, cn = n / chunks;
  int *hin, *hout, *din, *dout;
  CHECK(cudaHostAlloc(&hin, n * sizeof(int), cudaHostAllocDefault));
  CHECK(cudaHostAlloc(&hout, n * sizeof(int), cudaHostAllocDefault));
  CHECK(cudaMalloc(&din, n * sizeof(int)));
  CHECK(cudaMalloc(&dout, n * sizeof(int)));
  for (int i = 0; i < n; i++) hin[i] = i % 100003;
  memset(hout, 0, n * sizeof(int));
  CHECK(cudaEventRecord(kStart, 0));
  CHECK(cudaDeviceSynchronize());
  for (int c = 0; c < chunks; c++) {
    cudaStream_t st = s[c % 4];
    size_t off = (size_t)c * cn;
    CHECK(cudaMemcpyAsync(din + off, hin + off, cn * sizeof(int), cudaMemcpyHostToDevice, st));
    scale<<<128, 256, 0, st>>>(din + off, dout + off, cn, c + 2);
    CHECK_LAUNCH();
    CHECK(cudaMemcpyAsync(hout + off, dout + off, cn * sizeof(int), cudaMemcpyDeviceToHost, st));
  }
  for (auto &x : s) CHECK(cudaStreamSynchronize(x));
  CHECK(cudaEventRecord(kEnd, 0));
  CHECK(cudaEventSynchronize(kEnd));
  printf("time: pipeline of %d chunks %.3f ms\n", chunks, elapsed_ms(kStart, kEnd));
  long long bad = 0, sum = 0;
  for (int i = 0; i < n; i++) {
    int want = hin[i] * (i / cn + 2) + 1;
    if (hout[i] != want) bad++;
    sum += hout[i];
  }
  printf("result: pipeline mismatches %lld sum %lld\n", bad, sum);
  result("pipeline", bad == 0);
  CHECK(cudaFreeHost(hin));
  CHECK(cudaFreeHost(hout));
  CHECK(cudaFree(din));
  CHECK(cudaFree(dout));
  for (auto &x : s) CHECK(cudaStreamDestroy(x));
  CHECK(cudaEventDestroy(kStart));
  CHECK(cudaEventDestroy(kEnd));
  CHECK(cudaEventDestroy(cEnd));
  return done();
}
