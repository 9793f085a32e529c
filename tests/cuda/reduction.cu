// Multi-kernel reduction of 16M ints: pass 1 (shared-memory tree + warp shuffles, one partial per
// block), pass 2 (the partials), then the same with atomics in one pass, and a min/max reduction;
// results checked against the host.
#include "common.h"
#include <vector>
#include <algorithm>

__inline__ __device__ long long warp_sum(long long v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
__global__ void block_sum(const T *in, long long n, long long *out) {
  __shared__ long long warps[32];
  long long acc = 0;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    acc += in[i];
  acc = warp_sum(acc);
  int lane = threadIdx.x % 32, wid = threadIdx.x / 32;
  if (lane == 0) warps[wid] = acc;
  __syncthreads();
  if (wid == 0) {
    acc = lane < (int)(blockDim.x / 32) ? warps[lane] : 0;
    acc = warp_sum(acc);
    if (lane == 0) out[blockIdx.x] = acc;
  }
}

__global__ void atomic_sum(const int *in, long long n, unsigned long long *total) {
  long long acc = 0;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    acc += in[i];
  acc = warp_sum(acc);
  if (threadIdx.x % 32 == 0) atomicAdd(total, (unsigned long long)acc);
}

__global__ void minmax(const int *in, int n, int *mn, int *mx) {
  int lo = 0x7fffffff, hi = (int)0x80000000;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    lo = min(lo, in[i]);
    hi = max(hi, in[i]);
  }
  for (int off = 16; off > 0; off >>= 1) {
    lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, off));
    hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, off));
  }
  if (threadIdx.x % 32 == 0) {
    atomicMin(mn, lo);
    atomicMax(mx, hi);
  }
}

int main() {
  init_device();
  const long long n = 16ll << 20;
  std::vector<int> h(n);
  uint32_t s = 2024;
  long long want = 0;
  int wmin = 0x7fffffff, wmax = (int)0x80000000;
  for (long long i = 0; i < n; i++) {
    h[i] = (int)(vt_rand(s) % 2000001) - 1000000;
    want += h[i];
    wmin = std::min(wmin, h[i]);
    wmax = std::max(wmax, h[i]);
  }
  printf("host: sum %lld min %d max %d\n", want, wmin, wmax);
  int *d;
  long long *partial, *total;
  const int blocks = 1024;
  CHECK(cudaMalloc(&d, n * sizeof(int)));
  CHECK(cudaMalloc(&partial, blocks * sizeof(long long)));
  CHECK(cudaMalloc(&total, sizeof(long long)));
  CHECK(cudaMemcpy(d, h.data(), n * sizeof(int), cudaMemcpyHostToDevice));
  cudaEvent_t e0, e1, e2;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  CHECK(cudaEventCreate(&e2));
  CHECK(cudaEventRecord(e0));
  block_sum<int><<<blocks, 256>>>(d, n, partial);
  block_sum<long long><<<1, 1024>>>(partial, blocks, total);
  CHECK_LAUNCH();
  CHECK(cudaEventRecord(e1));
  checkpoint("launch");
  long long got = 0;
  CHECK(cudaMemcpy(&got, total, sizeof got, cudaMemcpyDeviceToHost));
  printf("result: two-pass sum %lld\n", got);

  unsigned long long *atot;
  CHECK(cudaMalloc(&atot, sizeof *atot));
  CHECK(cudaMemset(atot, 0, sizeof *atot));
  CHECK(cudaEventRecord(e1));
  atomic_sum<<<blocks, 256>>>(d, n, atot);
  CHECK(cudaEventRecord(e2));
  unsigned long long ag = 0;
  CHECK(cudaMemcpy(&ag, atot, sizeof ag, cudaMemcpyDeviceToHost));
  printf("result: atomic sum %lld\n", (long long)ag);
  printf("time: two-pass %.3f ms, atomic %.3f ms\n", elapsed_ms(e0, e1), elapsed_ms(e1, e2));

  int *mm;
  CHECK(cudaMalloc(&mm, 2 * sizeof(int)));
  int init[2] = {0x7fffffff, (int)0x80000000};
  CHECK(cudaMemcpy(mm, init, sizeof init, cudaMemcpyHostToDevice));
  minmax<<<256, 256>>>(d, (int)n, mm, mm + 1);
  CHECK_LAUNCH();
  int gm[2];
  CHECK(cudaMemcpy(gm, mm, sizeof gm, cudaMemcpyDeviceToHost));
  printf("result: min %d max %d\n", gm[0], gm[1]);
  result("reduction", got == want && (long long)ag == want && gm[0] == wmin && gm[1] == wmax);
  for (cudaEvent_t e : {e0, e1, e2}) CHECK(cudaEventDestroy(e));
  CHECK(cudaFree(d));
  CHECK(cudaFree(partial));
  CHECK(cudaFree(total));
  CHECK(cudaFree(atot));
  CHECK(cudaFree(mm));
  return done();
}
