// cudaFuncGetAttributes for kernels with different resource use, cudaFuncSetAttribute
// (carveout, max dynamic shared memory), cudaFuncSetCacheConfig, cudaDeviceGet/SetCacheConfig,
// and cudaGetFuncBySymbol / cudaFuncGetName.
#include "common.h"

__global__ void tiny(int *p) { p[threadIdx.x] = threadIdx.x; }
__global__ void with_static_shared(float *p) {
  __shared__ float tile[32][33];
  tile[threadIdx.y][threadIdx.x] = p[threadIdx.y * 32 + threadIdx.x];
  __syncthreads();
  p[threadIdx.y * 32 + threadIdx.x] = tile[threadIdx.x][threadIdx.y];
}
__constant__ float c_weights[1024];
__global__ void __launch_bounds__(256, 2) with_locals(float *p, int k) {
  float local[64];
  for (int i = 0; i < 64; i++) local[i] = p[(threadIdx.x + i * k) % 256] * c_weights[i];
  float s = 0;
  for (int i = 0; i < 64; i++) s += local[(i * k) % 64];
  p[threadIdx.x] = s;
}

static void show(const char *name, const void *f) {
  cudaFuncAttributes a;
  CHECK(cudaFuncGetAttributes(&a, f));
  printf("%s: sharedSizeBytes %zu constSizeBytes %zu localSizeBytes %zu maxThreadsPerBlock %d numRegs %d\n", name,
         a.sharedSizeBytes, a.constSizeBytes, a.localSizeBytes, a.maxThreadsPerBlock, a.numRegs);
  printf("%s: ptxVersion %d binaryVersion %d cacheModeCA %d maxDynamicSharedSizeBytes %d "
         "preferredShmemCarveout %d\n",
         name, a.ptxVersion, a.binaryVersion, a.cacheModeCA, a.maxDynamicSharedSizeBytes,
         a.preferredShmemCarveout);
  printf("%s: clusterDimMustBeSet %d requiredClusterWidth %d nonPortableClusterSizeAllowed %d\n", name,
         a.clusterDimMustBeSet, a.requiredClusterWidth, a.nonPortableClusterSizeAllowed);
}

int main() {
  init_device();
  show("tiny", (const void *)tiny);
  show("with_static_shared", (const void *)with_static_shared);
  show("with_locals", (const void *)with_locals);
  checkpoint("module");
  CHECK(cudaFuncSetAttribute(tiny, cudaFuncAttributePreferredSharedMemoryCarveout, 50));
  CHECK(cudaFuncSetAttribute(tiny, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024));
  CHECK(cudaFuncSetCacheConfig(with_static_shared, cudaFuncCachePreferShared));
  show("tiny after set", (const void *)tiny);
  cudaFuncCache cfg;
  CHECK(cudaDeviceGetCacheConfig(&cfg));
  printf("device cache config %d\n", (int)cfg);
  CHECK(cudaDeviceSetCacheConfig(cudaFuncCachePreferL1));
  CHECK(cudaDeviceGetCacheConfig(&cfg));
  printf("device cache config after set %d\n", (int)cfg);
  ERROR_CASE("carveout 101", cudaFuncSetAttribute(tiny, cudaFuncAttributePreferredSharedMemoryCarveout, 101));
  ERROR_CASE("unknown attribute", cudaFuncSetAttribute(tiny, (cudaFuncAttribute)77, 1));
  CHECK(cudaGetLastError());

  cudaFunction_t fn;
  CHECK(cudaGetFuncBySymbol(&fn, (const void *)with_locals));
  const char *name = nullptr;
  CHECK(cudaFuncGetName(&name, (const void *)with_locals));
  printf("name of with_locals: %s\n", name ? name : "(null)");

  float w[1024];
  for (int i = 0; i < 1024; i++) w[i] = 1.0f;
  CHECK(cudaMemcpyToSymbol(c_weights, w, sizeof w));
  float *p;
  CHECK(cudaMalloc(&p, 1024 * sizeof(float)));
  float h[1024];
  for (int i = 0; i < 1024; i++) h[i] = (float)(i % 256);
  CHECK(cudaMemcpy(p, h, sizeof h, cudaMemcpyHostToDevice));
  with_static_shared<<<1, dim3(32, 32)>>>(p);
  CHECK_LAUNCH();
  CHECK(cudaMemcpy(h, p, sizeof h, cudaMemcpyDeviceToHost));
  printf("result: transposed h[1]=%.0f h[32]=%.0f\n", h[1], h[32]);
  for (int i = 0; i < 256; i++) h[i] = 1.0f;
  CHECK(cudaMemcpy(p, h, 256 * sizeof(float), cudaMemcpyHostToDevice));
  with_locals<<<1, 256>>>(p, 3);
  tiny<<<1, 32, 60 * 1024>>>((int *)p + 512);
  CHECK_LAUNCH();
  checkpoint("launch");
  CHECK(cudaMemcpy(h, p, sizeof h, cudaMemcpyDeviceToHost));
  printf("result: with_locals h[0]=%.0f, tiny wrote %d\n", h[0], ((int *)h)[512 + 31]);
  CHECK(cudaFree(p));
  return done();
}
