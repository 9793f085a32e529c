// A kernel fault: a store to an illegal address. The launch itself succeeds; the synchronising
// call returns cudaErrorIllegalAddress, which is sticky: later calls in this process fail with
// it too (cudaGetLastError does not clear it). cudaDeviceReset then gives a working device again.
#include "common.h"

__global__ void bad_store(int *p) { p[threadIdx.x * 1024] = 42; }
__global__ void good(int *p) { p[threadIdx.x] = threadIdx.x; }

int main() {
  init_device();
  int *ok;
  CHECK(cudaMalloc(&ok, 256 * sizeof(int)));
  good<<<1, 256>>>(ok);
  CHECK(cudaDeviceSynchronize());
  // An address in no allocation (near the top of the 49-bit virtual address space).
  int *wild = (int *)(uintptr_t)0x1fff00000000ull;
  bad_store<<<1, 32>>>(wild);
  ERROR_CASE("launch of the faulting kernel (cudaGetLastError)", cudaGetLastError());
  checkpoint("launch");
  cudaError_t e = cudaDeviceSynchronize();
  printf("result: cudaDeviceSynchronize -> %s (%d): %s\n", vt_name(e), (int)e, cudaGetErrorString(e));
  e = cudaGetLastError();
  printf("result: cudaGetLastError -> %s (%d)\n", vt_name(e), (int)e);
  e = cudaPeekAtLastError();
  printf("result: cudaPeekAtLastError -> %s (%d)\n", vt_name(e), (int)e);
  int *more = nullptr;
  e = cudaMalloc(&more, 1024);
  printf("result: cudaMalloc after the fault -> %s (%d)\n", vt_name(e), (int)e);
  int h = 0;
  e = cudaMemcpy(&h, ok, sizeof h, cudaMemcpyDeviceToHost);
  printf("result: cudaMemcpy after the fault -> %s (%d)\n", vt_name(e), (int)e);
  good<<<1, 32>>>(ok);
  e = cudaGetLastError();
  printf("result: launch after the fault -> %s (%d)\n", vt_name(e), (int)e);
  cudaStream_t s;
  e = cudaStreamCreate(&s);
  printf("result: cudaStreamCreate after the fault -> %s (%d)\n", vt_name(e), (int)e);

  // Recovery: reset the device (destroys the primary context). Whether the process can go on after
  // a sticky error is whatever the native driver does; every step's status is printed.
  e = cudaDeviceReset();
  printf("result: cudaDeviceReset -> %s (%d)\n", vt_name(e), (int)e);
  checkpoint("reset");
  e = cudaGetLastError();
  printf("result: cudaGetLastError after the reset -> %s (%d)\n", vt_name(e), (int)e);
  int *fresh = nullptr;
  e = cudaMalloc(&fresh, 256 * sizeof(int));
  printf("result: cudaMalloc after the reset -> %s (%d)\n", vt_name(e), (int)e);
  if (e == cudaSuccess) {
    good<<<1, 256>>>(fresh);
    e = cudaGetLastError();
    printf("result: launch after the reset -> %s (%d)\n", vt_name(e), (int)e);
    int back[256] = {0};
    e = cudaMemcpy(back, fresh, sizeof back, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int i = 0; i < 256; i++) bad += back[i] != i;
    printf("result: copy after the reset -> %s, mismatches %d\n", vt_name(e), bad);
    cudaFree(fresh);
  }
  e = cudaDeviceSynchronize();
  printf("result: final synchronize -> %s (%d)\n", vt_name(e), (int)e);
  printf("done\n");
  return 0;
}
