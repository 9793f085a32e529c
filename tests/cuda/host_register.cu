// cudaHostRegister: page-lock existing malloc'd memory (default and mapped), use it for async
// copies and from kernels, unregister; the errors of registering twice and unregistering unknown
// memory.
#include "common.h"
#include <unistd.h>

__global__ void add_index(int *p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] += i;
}

int main() {
  init_device();
  const long page = sysconf(_SC_PAGESIZE);
  const int n = 1 << 20;
  const size_t bytes = n * sizeof(int);
  int *buf = (int *)aligned_alloc(page, bytes);
  int *mbuf = (int *)aligned_alloc(page, bytes);
  int *unaligned = (int *)malloc(bytes + 100);
  for (int i = 0; i < n; i++) buf[i] = mbuf[i] = 7;
  CHECK(cudaHostRegister(buf, bytes, cudaHostRegisterDefault));
  CHECK(cudaHostRegister(mbuf, bytes, cudaHostRegisterMapped));
  CHECK(cudaHostRegister((char *)unaligned + 4, 10000, cudaHostRegisterDefault));
  checkpoint("registered");
  unsigned f = 0;
  CHECK(cudaHostGetFlags(&f, mbuf));
  printf("flags of mapped registration: %#x\n", f);
  ERROR_CASE("register twice", cudaHostRegister(buf, bytes, cudaHostRegisterDefault));
  ERROR_CASE("register overlapping", cudaHostRegister(buf + 1024, 4096, cudaHostRegisterDefault));
  CHECK(cudaGetLastError());

  int *d;
  CHECK(cudaMalloc(&d, bytes));
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  CHECK(cudaMemcpyAsync(d, buf, bytes, cudaMemcpyHostToDevice, s));
  add_index<<<n / 256, 256, 0, s>>>(d, n);
  CHECK_LAUNCH();
  CHECK(cudaMemcpyAsync(buf, d, bytes, cudaMemcpyDeviceToHost, s));
  checkpoint("launch");
  CHECK(cudaStreamSynchronize(s));
  int bad = 0;
  for (int i = 0; i < n; i++) bad += buf[i] != 7 + i;
  printf("result: registered round trip mismatches %d\n", bad);

  int *dm;
  CHECK(cudaHostGetDevicePointer((void **)&dm, mbuf, 0));
  add_index<<<n / 256, 256, 0, s>>>(dm, n);
  CHECK(cudaStreamSynchronize(s));
  int bad2 = 0;
  for (int i = 0; i < n; i++) bad2 += mbuf[i] != 7 + i;
  printf("result: mapped registration mismatches %d\n", bad2);
  result("host register", bad == 0 && bad2 == 0);

  CHECK(cudaHostUnregister(buf));
  CHECK(cudaHostUnregister(mbuf));
  CHECK(cudaHostUnregister((char *)unaligned + 4));
  ERROR_CASE("unregister twice", cudaHostUnregister(buf));
  int local[16];
  ERROR_CASE("unregister never registered", cudaHostUnregister(local));
  ERROR_CASE("register null", cudaHostRegister(nullptr, 4096, cudaHostRegisterDefault));
  ERROR_CASE("register zero bytes", cudaHostRegister(buf, 0, cudaHostRegisterDefault));
  ERROR_CASE("register bad flags", cudaHostRegister(buf, bytes, 0x80000000u));
  CHECK(cudaGetLastError());
  // Pageable again: copies still work.
  CHECK(cudaMemcpy(d, buf, bytes, cudaMemcpyHostToDevice));
  CHECK(cudaFree(d));
  CHECK(cudaStreamDestroy(s));
  free(buf);
  free(mbuf);
  free(unaligned);
  return done();
}
