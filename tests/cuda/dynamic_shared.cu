// Dynamic shared memory: extern __shared__ arrays sized at launch, several sizes, the opt-in
// above 48 KiB (cudaFuncSetAttribute MaxDynamicSharedMemorySize), and too much shared memory.
#include "common.h"

__global__ void reverse_blocks(const int *in, int *out, int n) {
  extern __shared__ int buf[];
  int base = blockIdx.x * blockDim.x, t = threadIdx.x;
  if (base + t < n) buf[t] = in[base + t];
  __syncthreads();
  int src = blockDim.x - 1 - t;
  if (base + t < n && base + src < n) out[base + t] = buf[src];
}

// Uses `words` ints of dynamic shared memory: fills it, then sums it.
__global__ void big_shared(int words, long long *out) {
  extern __shared__ int sm[];
  for (int i = threadIdx.x; i < words; i += blockDim.x) sm[i] = i % 1000;
  __syncthreads();
  if (threadIdx.x == 0) {
    long long s = 0;
    for (int i = 0; i < words; i++) s += sm[i];
    out[blockIdx.x] = s;
  }
}

int main() {
  init_device();
  int optin = 0, perBlock = 0;
  CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
  CHECK(cudaDeviceGetAttribute(&perBlock, cudaDevAttrMaxSharedMemoryPerBlock, 0));
  printf("shared memory per block %d, opt-in max %d\n", perBlock, optin);

  const int n = 1 << 16;
  int *in, *out;
  CHECK(cudaMalloc(&in, n * sizeof(int)));
  CHECK(cudaMalloc(&out, n * sizeof(int)));
  int *h = (int *)malloc(n * sizeof(int));
  for (int i = 0; i < n; i++) h[i] = i;
  CHECK(cudaMemcpy(in, h, n * sizeof(int), cudaMemcpyHostToDevice));
  for (int threads : {32, 128, 1024}) {
    reverse_blocks<<<n / threads, threads, threads * sizeof(int)>>>(in, out, n);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(h, out, n * sizeof(int), cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int i = 0; i < n; i++) bad += h[i] != (i / threads) * threads + (threads - 1 - i % threads);
    printf("result: reverse in blocks of %d: mismatches %d\n", threads, bad);
  }
  checkpoint("launch");

  long long *sums;
  CHECK(cudaMalloc(&sums, 4 * sizeof(long long)));
  long long hs[4];
  // 48 KiB works without opt-in.
  int words = 48 * 1024 / 4;
  big_shared<<<4, 256, words * 4>>>(words, sums);
  CHECK_LAUNCH();
  CHECK(cudaMemcpy(hs, sums, sizeof hs, cudaMemcpyDeviceToHost));
  printf("result: 48 KiB sums %lld %lld\n", hs[0], hs[3]);
  // Above 48 KiB without opt-in: launch error.
  words = 100 * 1024 / 4;
  big_shared<<<4, 256, words * 4>>>(words, sums);
  ERROR_CASE("100 KiB without opt-in (cudaGetLastError)", cudaGetLastError());
  ERROR_CASE("cudaGetLastError again (cleared)", cudaGetLastError());
  // With opt-in.
  CHECK(cudaFuncSetAttribute(big_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024));
  cudaFuncAttributes fa;
  CHECK(cudaFuncGetAttributes(&fa, big_shared));
  printf("maxDynamicSharedSizeBytes now %d\n", fa.maxDynamicSharedSizeBytes);
  big_shared<<<4, 256, words * 4>>>(words, sums);
  CHECK_LAUNCH();
  CHECK(cudaMemcpy(hs, sums, sizeof hs, cudaMemcpyDeviceToHost));
  long long want = 0;
  for (int i = 0; i < words; i++) want += i % 1000;
  printf("result: 100 KiB sums %lld %lld (want %lld)\n", hs[0], hs[3], want);
  result("dynamic shared", hs[0] == want && hs[3] == want);
  // Beyond the opt-in maximum.
  ERROR_CASE("set attribute above the opt-in maximum",
             cudaFuncSetAttribute(big_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, optin + 1));
  big_shared<<<1, 32, optin + 1024>>>(16, sums);
  ERROR_CASE("launch above the opt-in maximum", cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  free(h);
  CHECK(cudaFree(in));
  CHECK(cudaFree(out));
  CHECK(cudaFree(sums));
  return done();
}
