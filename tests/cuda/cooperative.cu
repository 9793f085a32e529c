// Cooperative launch: cudaLaunchCooperativeKernel with cooperative_groups grid.sync(), the grid
// sized by the occupancy API; a two-phase sum that needs a grid-wide barrier; the error for a grid
// too large to be co-resident.
#include "common.h"
#include <cooperative_groups.h>
namespace cg = cooperative_groups;

// Phase 1: each block sums its slice into partial[block]. grid.sync(). Phase 2: block 0 adds up
// the partials. grid.sync(). Phase 3: every thread writes the total scaled by its index.
__global__ void coop_sum(const int *in, int n, long long *partial, long long *total, long long *out) {
  cg::grid_group grid = cg::this_grid();
  __shared__ long long s[256];
  long long acc = 0;
  for (long long i = grid.thread_rank(); i < n; i += grid.size()) acc += in[i];
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
  grid.sync();
  if (grid.thread_rank() == 0) {
    long long t = 0;
    for (unsigned b = 0; b < gridDim.x; b++) t += partial[b];
    *total = t;
  }
  grid.sync();
  if (grid.thread_rank() < 1000) out[grid.thread_rank()] = *total + grid.thread_rank();
}

int main() {
  init_device();
  int coop = 0, sms = 0;
  CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, 0));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  printf("cooperative launch supported: %d\n", coop);
  int perSm = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, coop_sum, 256, 0));
  printf("device: %d SMs, %d blocks of 256 per SM\n", sms, perSm);
  int blocks = sms * perSm;

  const int n = 5000000;
  int *in;
  long long *partial, *total, *out;
  CHECK(cudaMalloc(&in, n * sizeof(int)));
  CHECK(cudaMalloc(&partial, (blocks + 1) * sizeof(long long)));
  CHECK(cudaMalloc(&total, sizeof(long long)));
  CHECK(cudaMalloc(&out, 1000 * sizeof(long long)));
  int *h = (int *)malloc(n * sizeof(int));
  long long want = 0;
  for (int i = 0; i < n; i++) {
    h[i] = (i * 7) % 1001 - 500;
    want += h[i];
  }
  CHECK(cudaMemcpy(in, h, n * sizeof(int), cudaMemcpyHostToDevice));
  int nn = n;
  void *args[] = {&in, &nn, &partial, &total, &out};
  CHECK(cudaLaunchCooperativeKernel((void *)coop_sum, dim3(blocks), dim3(256), args, 0, 0));
  checkpoint("launch");
  CHECK(cudaDeviceSynchronize());
  long long got = 0, o[1000];
  CHECK(cudaMemcpy(&got, total, sizeof got, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(o, out, sizeof o, cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int i = 0; i < 1000; i++) bad += o[i] != want + i;
  printf("result: total %lld (want %lld), out mismatches %d\n", got, want, bad);
  result("cooperative grid sync", got == want && bad == 0);

  // A smaller grid on a stream, twice.
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  for (int rep = 0; rep < 2; rep++) {
    CHECK(cudaMemsetAsync(total, 0, sizeof(long long), s));
    CHECK(cudaLaunchCooperativeKernel((void *)coop_sum, dim3(sms), dim3(256), args, 0, s));
  }
  CHECK(cudaStreamSynchronize(s));
  CHECK(cudaMemcpy(&got, total, sizeof got, cudaMemcpyDeviceToHost));
  result("cooperative launch on a stream", got == want);

  // Too many blocks to be co-resident.
  ERROR_CASE_KEEP("cooperative grid too large",
             cudaLaunchCooperativeKernel((void *)coop_sum, dim3(blocks * 2 + 1), dim3(256), args, 0, 0));
  ERROR_CASE("cudaGetLastError after it", cudaGetLastError());
  CHECK(cudaStreamDestroy(s));
  CHECK(cudaFree(in));
  CHECK(cudaFree(partial));
  CHECK(cudaFree(total));
  CHECK(cudaFree(out));
  free(h);
  return done();
}
