// Mapped (zero-copy) host memory: cudaSetDeviceFlags(cudaDeviceMapHost), cudaHostAlloc with
// cudaHostAllocMapped, cudaHostGetDevicePointer; kernels read and write host memory directly.
#include "common.h"

__global__ void twice_plus(const int *in, int *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = 2 * in[i] + 1;
}
__global__ void stamp(unsigned *slots) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  slots[i] = i * i + 5;
}

int main() {
  CHECK(cudaSetDeviceFlags(cudaDeviceMapHost));
  unsigned dflags = 0;
  CHECK(cudaGetDeviceFlags(&dflags));
  printf("device flags include MapHost: %s\n", (dflags & cudaDeviceMapHost) ? "yes" : "no");
  init_device();
  int can = 0;
  CHECK(cudaDeviceGetAttribute(&can, cudaDevAttrCanMapHostMemory, 0));
  printf("can map host memory: %d\n", can);
  const int n = 1 << 16;
  int *hin, *hout;
  CHECK(cudaHostAlloc(&hin, n * sizeof(int), cudaHostAllocMapped));
  CHECK(cudaHostAlloc(&hout, n * sizeof(int), cudaHostAllocMapped | cudaHostAllocPortable));
  unsigned f = 0;
  CHECK(cudaHostGetFlags(&f, hout));
  printf("flags mapped|portable: %#x\n", f);
  for (int i = 0; i < n; i++) {
    hin[i] = i;
    hout[i] = -1;
  }
  int *din, *dout;
  CHECK(cudaHostGetDevicePointer((void **)&din, hin, 0));
  CHECK(cudaHostGetDevicePointer((void **)&dout, hout, 0));
  int uva = 0;
  CHECK(cudaDeviceGetAttribute(&uva, cudaDevAttrUnifiedAddressing, 0));
  printf("unified addressing: %d, device pointer equals host pointer: %s\n", uva,
         (void *)din == (void *)hin ? "yes" : "no");
  twice_plus<<<n / 256, 256>>>(din, dout, n);
  CHECK_LAUNCH();
  checkpoint("launch");
  CHECK(cudaDeviceSynchronize());
  int bad = 0;
  for (int i = 0; i < n; i++) bad += hout[i] != 2 * i + 1;
  printf("result: mismatches %d, hout[100]=%d\n", bad, hout[100]);
  result("kernel wrote host memory", bad == 0);

  // The host changes the input in place; the next kernel sees it without any copy.
  for (int i = 0; i < n; i++) hin[i] = 1000 - i;
  twice_plus<<<n / 256, 256>>>(din, dout, n);
  CHECK(cudaDeviceSynchronize());
  bad = 0;
  for (int i = 0; i < n; i++) bad += hout[i] != 2 * (1000 - i) + 1;
  result("kernel read host changes", bad == 0);

  // A small mapped buffer, written by 512 threads.
  unsigned *counter, *dcounter;
  CHECK(cudaHostAlloc(&counter, 512 * sizeof(unsigned), cudaHostAllocMapped));
  memset(counter, 0, 512 * sizeof(unsigned));
  CHECK(cudaHostGetDevicePointer((void **)&dcounter, counter, 0));
  stamp<<<8, 64>>>(dcounter);
  CHECK(cudaDeviceSynchronize());
  unsigned long long total = 0;
  for (int i = 0; i < 512; i++) total += counter[i];
  printf("result: stamped total %llu\n", total);
  result("small mapped buffer", total == 44608256ull + 5 * 512);

  // Mixing with copies: cudaMemcpy from a mapped buffer to device memory and back.
  int *dev;
  CHECK(cudaMalloc(&dev, n * sizeof(int)));
  CHECK(cudaMemcpy(dev, hin, n * sizeof(int), cudaMemcpyDefault));
  CHECK(cudaMemcpy(hout, dev, n * sizeof(int), cudaMemcpyDefault));
  bad = 0;
  for (int i = 0; i < n; i++) bad += hout[i] != 1000 - i;
  printf("copies through mapped buffers: mismatches %d\n", bad);
  int plain = 0;
  void *dp = nullptr;
  ERROR_CASE("cudaHostGetDevicePointer of pageable memory", cudaHostGetDevicePointer(&dp, &plain, 0));
  CHECK(cudaGetLastError());
  CHECK(cudaFree(dev));
  CHECK(cudaFreeHost(hin));
  CHECK(cudaFreeHost(hout));
  CHECK(cudaFreeHost(counter));
  return done();
}
