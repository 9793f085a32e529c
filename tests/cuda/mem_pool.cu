// Stream-ordered allocation: cudaMallocAsync / cudaFreeAsync on streams, the default memory pool
// and its attributes (release threshold, reserved/used memory), an explicit pool with
// cudaMallocFromPoolAsync, and reuse of freed memory in stream order.
#include "common.h"

__global__ void fill(int *p, int n, int v) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v + i;
}

int main() {
  init_device();
  int supported = 0;
  CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, 0));
  printf("memory pools supported %d\n", supported);
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  cudaMemPool_t pool;
  CHECK(cudaDeviceGetDefaultMemPool(&pool, 0));
  uint64_t threshold = 0;
  CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  printf("default release threshold %llu\n", (unsigned long long)threshold);

  const int n = 1 << 20;
  int *a, *b;
  CHECK(cudaMallocAsync(&a, n * sizeof(int), s));
  fill<<<n / 256, 256, 0, s>>>(a, n, 100);
  CHECK_LAUNCH();
  CHECK(cudaMallocAsync(&b, n * sizeof(int), s));
  CHECK(cudaMemcpyAsync(b, a, n * sizeof(int), cudaMemcpyDeviceToDevice, s));
  int *h;
  CHECK(cudaMallocHost(&h, n * sizeof(int)));
  CHECK(cudaMemcpyAsync(h, b, n * sizeof(int), cudaMemcpyDeviceToHost, s));
  CHECK(cudaFreeAsync(a, s));
  CHECK(cudaFreeAsync(b, s));
  checkpoint("launch");
  CHECK(cudaStreamSynchronize(s));
  int bad = 0;
  for (int i = 0; i < n; i++) bad += h[i] != 100 + i;
  printf("result: pool allocations mismatches %d\n", bad);
  uint64_t used = 1, reserved = 0;
  CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
  CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &reserved));
  printf("used after frees %llu, reserved high mark >= 8 MiB: %s\n", (unsigned long long)used,
         reserved >= (8u << 20) ? "yes" : "no");
  CHECK(cudaMemPoolTrimTo(pool, 0));

  // Keep freed memory: a second round reuses it (same address in stream order).
  uint64_t keep = UINT64_MAX;
  CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  int *c, *c2;
  CHECK(cudaMallocAsync(&c, 4 << 20, s));
  CHECK(cudaFreeAsync(c, s));
  CHECK(cudaMallocAsync(&c2, 4 << 20, s));
  printf("freed block reused in stream order: %s\n", c == c2 ? "yes" : "no");
  CHECK(cudaFreeAsync(c2, s));
  CHECK(cudaStreamSynchronize(s));

  // An explicit pool.
  cudaMemPoolProps props = {};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = 0;
  cudaMemPool_t mine;
  CHECK(cudaMemPoolCreate(&mine, &props));
  int *e;
  CHECK(cudaMallocFromPoolAsync((void **)&e, 1 << 20, mine, s));
  fill<<<1, 256, 0, s>>>(e, 256, 7);
  CHECK(cudaMemcpyAsync(h, e, 256 * sizeof(int), cudaMemcpyDeviceToHost, s));
  CHECK(cudaFreeAsync(e, s));
  CHECK(cudaStreamSynchronize(s));
  printf("result: explicit pool h[0]=%d h[255]=%d\n", h[0], h[255]);
  result("mem pool", bad == 0 && h[0] == 7 && h[255] == 262);
  CHECK(cudaMemPoolDestroy(mine));
  // cudaMallocAsync on the legacy stream, freed with cudaFree after a synchronize.
  int *f;
  CHECK(cudaMallocAsync(&f, 1024, 0));
  CHECK(cudaMemsetAsync(f, 0, 1024, 0));
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaFree(f));
  CHECK(cudaStreamSynchronize(s));
  CHECK(cudaFreeHost(h));
  CHECK(cudaStreamDestroy(s));
  return done();
}
