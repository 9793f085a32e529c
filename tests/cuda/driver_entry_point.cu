// Libraries built on the runtime often fetch driver functions through the runtime:
// cudaGetDriverEntryPointByVersion (cuGetProcAddress underneath) for cuDeviceGetName, cuMemAlloc,
// cuMemcpyHtoD, cuMemFree, cuCtxGetCurrent and cuStreamSynchronize; per-thread default stream
// flags; a symbol that does not exist; and mixing the driver calls with runtime allocations.
#include "common.h"
#include <cuda.h>

typedef CUresult (*PFN_DeviceGetName)(char *, int, CUdevice);
typedef CUresult (*PFN_MemAlloc)(CUdeviceptr *, size_t);
typedef CUresult (*PFN_MemFree)(CUdeviceptr);
typedef CUresult (*PFN_MemcpyHtoD)(CUdeviceptr, const void *, size_t);
typedef CUresult (*PFN_CtxGetCurrent)(CUcontext *);
typedef CUresult (*PFN_StreamSynchronize)(CUstream);
typedef CUresult (*PFN_GetErrorName)(CUresult, const char **);

static const char *qres(cudaDriverEntryPointQueryResult q) {
  switch (q) {
    case cudaDriverEntryPointSuccess: return "success";
    case cudaDriverEntryPointSymbolNotFound: return "symbol not found";
    case cudaDriverEntryPointVersionNotSufficent: return "version not sufficient";
  }
  return "?";
}

template <typename F>
static F entry(const char *name, unsigned version, unsigned long long flags = cudaEnableDefault) {
  void *fn = nullptr;
  cudaDriverEntryPointQueryResult q;
  cudaError_t e = cudaGetDriverEntryPointByVersion(name, &fn, version, flags, &q);
  printf("entry point %s (version %u, flags %llu): %s, %s, %s\n", name, version, flags, vt_name(e), qres(q),
         fn ? "non-null" : "null");
  (void)cudaGetLastError();
  return (F)fn;
}

__global__ void add_one(int *p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] += 1;
}

int main() {
  init_device();
  auto getName = entry<PFN_DeviceGetName>("cuDeviceGetName", 12000);
  auto memAlloc = entry<PFN_MemAlloc>("cuMemAlloc", 12000);
  auto memFree = entry<PFN_MemFree>("cuMemFree", 12000);
  auto htod = entry<PFN_MemcpyHtoD>("cuMemcpyHtoD", 12000);
  auto ctxCur = entry<PFN_CtxGetCurrent>("cuCtxGetCurrent", 12000);
  auto sync = entry<PFN_StreamSynchronize>("cuStreamSynchronize", 12000, cudaEnablePerThreadDefaultStream);
  auto errName = entry<PFN_GetErrorName>("cuGetErrorName", 13000);
  entry<void *>("cuNoSuchFunction", 12000);
  entry<void *>("cuMemAlloc", 2000);  // older than the function's first version
  if (!getName || !memAlloc || !memFree || !htod || !ctxCur || !sync || !errName) {
    printf("FAIL a driver entry point is missing\n");
    return 1;
  }
  char name[256] = {0};
  CUresult r = getName(name, sizeof name, 0);
  cudaDeviceProp p;
  CHECK(cudaGetDeviceProperties(&p, 0));
  printf("cuDeviceGetName: %d, same as the runtime's name: %s\n", (int)r, strcmp(name, p.name) == 0 ? "yes" : "no");
  CUcontext ctx = nullptr;
  r = ctxCur(&ctx);
  printf("cuCtxGetCurrent: %d, context %s\n", (int)r, ctx ? "set (the runtime's primary context)" : "null");
  CUdeviceptr dp = 0;
  r = memAlloc(&dp, 1024 * sizeof(int));
  printf("cuMemAlloc: %d\n", (int)r);
  int h[1024];
  for (int i = 0; i < 1024; i++) h[i] = i;
  r = htod(dp, h, sizeof h);
  printf("cuMemcpyHtoD: %d\n", (int)r);
  // The runtime sees the driver's allocation.
  add_one<<<4, 256>>>((int *)dp, 1024);
  CHECK_LAUNCH();
  checkpoint("launch");
  r = sync(nullptr);
  printf("cuStreamSynchronize (per-thread default stream): %d\n", (int)r);
  CHECK(cudaMemcpy(h, (void *)dp, sizeof h, cudaMemcpyDeviceToHost));
  printf("result: h[0]=%d h[1023]=%d\n", h[0], h[1023]);
  result("driver entry points", h[0] == 1 && h[1023] == 1024);
  r = memFree(dp);
  printf("cuMemFree: %d\n", (int)r);
  const char *en = nullptr;
  r = errName(CUDA_ERROR_INVALID_VALUE, &en);
  printf("cuGetErrorName(1): %d %s\n", (int)r, en ? en : "(null)");
  int drv = 0;
  CHECK(cudaDriverGetVersion(&drv));
  printf("device: driver version %d\n", drv);
  return done();
}
