// Events: create flags, record, query, synchronize, elapsed time, cudaStreamWaitEvent across
// streams, and the errors of misuse.
#include "common.h"

__global__ void fill(int *p, int n, int v) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v;
}
__global__ void add_from(int *dst, const int *src, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] += src[i];
}

int main() {
  init_device();
  cudaEvent_t a, b, nt, bs;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreateWithFlags(&b, cudaEventDefault));
  CHECK(cudaEventCreateWithFlags(&nt, cudaEventDisableTiming));
  CHECK(cudaEventCreateWithFlags(&bs, cudaEventBlockingSync));

  // A never-recorded event is complete.
  ERROR_CASE("query never-recorded event", cudaEventQuery(a));
  CHECK(cudaEventSynchronize(a));

  cudaStream_t s1, s2;
  CHECK(cudaStreamCreate(&s1));
  CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  int *flag;
  CHECK(cudaMalloc(&flag, sizeof(int)));
  CHECK(cudaMemset(flag, 0, sizeof(int)));

  CHECK(cudaEventRecord(a, s1));
  vt_spin_kernel<<<1, 1, 0, s1>>>(200ull * 1000 * 1000, flag);
  CHECK_LAUNCH();
  CHECK(cudaEventRecord(b, s1));
  checkpoint("launch");
  cudaError_t q = cudaEventQuery(b);  // the kernel spins for 200 ms
  printf("result: query while the kernel runs: %s\n", vt_name(q));
  CHECK(cudaEventSynchronize(b));
  ERROR_CASE("query after synchronize", cudaEventQuery(b));
  float ms = elapsed_ms(a, b);
  printf("time: 200 ms spin measured %.2f ms\n", ms);
  result("elapsed time >= 199 ms", ms >= 199.0f);
  ERROR_CASE("elapsed time, reversed order is allowed", cudaEventElapsedTime(&ms, b, a));
  printf("result: reversed elapsed is negative: %s\n", ms < 0 ? "yes" : "no");

  // Timing-disabled events.
  CHECK(cudaEventRecord(nt, s1));
  CHECK(cudaEventSynchronize(nt));
  ERROR_CASE("elapsed with a timing-disabled event", cudaEventElapsedTime(&ms, a, nt));
  cudaEvent_t fresh;
  CHECK(cudaEventCreate(&fresh));
  ERROR_CASE("elapsed with a never-recorded event", cudaEventElapsedTime(&ms, a, fresh));
  CHECK(cudaEventDestroy(fresh));

  // Blocking-sync event.
  CHECK(cudaEventRecord(bs, s1));
  vt_spin_kernel<<<1, 1, 0, s1>>>(20ull * 1000 * 1000, flag);
  CHECK(cudaEventRecord(bs, s1));
  CHECK(cudaEventSynchronize(bs));
  ERROR_CASE("query blocking-sync event after synchronize", cudaEventQuery(bs));

  // Cross-stream dependency: s2 waits for s1's fill before adding.
  const int n = 1 << 16;
  int *x, *y;
  CHECK(cudaMalloc(&x, n * sizeof(int)));
  CHECK(cudaMalloc(&y, n * sizeof(int)));
  CHECK(cudaMemsetAsync(y, 0, n * sizeof(int), s2));
  CHECK(cudaStreamSynchronize(s2));
  vt_spin_kernel<<<1, 1, 0, s1>>>(50ull * 1000 * 1000, flag);
  fill<<<n / 256, 256, 0, s1>>>(x, n, 7);
  CHECK(cudaEventRecord(nt, s1));
  CHECK(cudaStreamWaitEvent(s2, nt, 0));
  add_from<<<n / 256, 256, 0, s2>>>(y, x, n);
  add_from<<<n / 256, 256, 0, s2>>>(y, x, n);
  CHECK_LAUNCH();
  int *h = (int *)malloc(n * sizeof(int));
  CHECK(cudaMemcpyAsync(h, y, n * sizeof(int), cudaMemcpyDeviceToHost, s2));
  CHECK(cudaStreamSynchronize(s2));
  int bad = 0;
  for (int i = 0; i < n; i++) bad += h[i] != 14;
  printf("result: after the wait, y = 2x everywhere: mismatches %d\n", bad);
  result("stream wait event", bad == 0);
  int hf = 0;
  CHECK(cudaMemcpy(&hf, flag, sizeof(int), cudaMemcpyDeviceToHost));
  printf("result: spin kernels ran %d\n", hf);

  CHECK(cudaEventDestroy(nt));
  CHECK(cudaStreamSynchronize(s1));
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  CHECK(cudaEventDestroy(bs));
  CHECK(cudaStreamDestroy(s1));
  CHECK(cudaStreamDestroy(s2));
  CHECK(cudaFree(x));
  CHECK(cudaFree(y));
  CHECK(cudaFree(flag));
  free(h);
  return done();
}
