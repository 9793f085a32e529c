// Occupancy API: cudaOccupancyMaxActiveBlocksPerMultiprocessor (with and without dynamic shared
// memory), cudaOccupancyMaxPotentialBlockSize, cudaOccupancyAvailableDynamicSMemPerBlock, and a
// launch with the suggested configuration.
#include "common.h"

__global__ void light(float *p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = p[i] * 2.0f + 1.0f;
}
__global__ void __launch_bounds__(128) bounded(float *p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] += 1.0f;
}
__global__ void shared_user(float *p, int n) {
  extern __shared__ float sm[];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  sm[threadIdx.x] = i < n ? p[i] : 0.0f;
  __syncthreads();
  if (i < n) p[i] = sm[blockDim.x - 1 - threadIdx.x];
}

static size_t smem_for_block(int threads) { return (size_t)threads * sizeof(float); }

int main() {
  init_device();
  int blocks = 0;
  for (int bs : {32, 128, 256, 512, 1024}) {
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, light, bs, 0));
    printf("light: block %d -> %d blocks per SM\n", bs, blocks);
  }
  for (size_t sh : {0, 16384, 49152}) {
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, shared_user, 256, sh));
    printf("shared_user: 256 threads + %zu bytes -> %d blocks per SM\n", sh, blocks);
  }
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(&blocks, light, 256, 0, cudaOccupancyDisableCachingOverride));
  printf("light with flags: %d\n", blocks);
  int minGrid = 0, blockSize = 0;
  CHECK(cudaOccupancyMaxPotentialBlockSize(&minGrid, &blockSize, light, 0, 0));
  printf("light: suggested block %d, min grid %d\n", blockSize, minGrid);
  CHECK(cudaOccupancyMaxPotentialBlockSize(&minGrid, &blockSize, bounded, 0, 0));
  printf("bounded: suggested block %d, min grid %d\n", blockSize, minGrid);
  CHECK(cudaOccupancyMaxPotentialBlockSizeVariableSMem(&minGrid, &blockSize, shared_user,
                                                       smem_for_block, 0));
  printf("shared_user (variable smem): suggested block %d, min grid %d\n", blockSize, minGrid);
  size_t avail = 0;
  CHECK(cudaOccupancyAvailableDynamicSMemPerBlock(&avail, shared_user, 2, 256));
  printf("available dynamic shared memory for 2 blocks of 256: %zu\n", avail);
  ERROR_CASE("bounded kernel at 256 threads", cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, bounded, 256, 0));
  printf("bounded at 256 threads -> %d\n", blocks);

  const int n = 1 << 20;
  float *d;
  CHECK(cudaMalloc(&d, n * sizeof(float)));
  CHECK(cudaMemset(d, 0, n * sizeof(float)));
  CHECK(cudaOccupancyMaxPotentialBlockSize(&minGrid, &blockSize, light, 0, 0));
  light<<<(n + blockSize - 1) / blockSize, blockSize>>>(d, n);
  CHECK_LAUNCH();
  bounded<<<n / 128, 128>>>(d, n);
  bounded<<<n / 256, 256>>>(d, n);
  ERROR_CASE("launch bounded kernel with 256 threads", cudaGetLastError());
  checkpoint("launch");
  float h[4];
  CHECK(cudaMemcpy(h, d + n - 4, sizeof h, cudaMemcpyDeviceToHost));
  printf("result: %.1f %.1f %.1f %.1f\n", h[0], h[1], h[2], h[3]);
  result("occupancy launch", h[0] == 2.0f && h[3] == 2.0f);
  CHECK(cudaFree(d));
  return done();
}
