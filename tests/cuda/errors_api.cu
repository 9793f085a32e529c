// Error paths of the runtime API with stable native answers: invalid pointers and sizes, bad
// launch configurations, too much static/dynamic shared memory, invalid devices, cudaGetLastError
// (returns and clears) vs cudaPeekAtLastError (returns, keeps), error names and strings.
// ERROR_CASE_KEEP leaves the last error for the next line to inspect; ERROR_CASE clears it.
#include "common.h"

__global__ void k_small(int *p) {
  if (p) p[threadIdx.x] = 1;
}
__global__ void k_big_static() {
  __shared__ int big[12 * 1024];  // 48 KiB of static shared memory: the static limit
  big[threadIdx.x] = threadIdx.x;
  __syncthreads();
  if (big[0] == 12345) printf("never\n");
}

static void host_only() {}

int main() {
  // Before any context exists.
  ERROR_CASE_KEEP("cudaSetDevice(99)", cudaSetDevice(99));
  ERROR_CASE("cudaGetLastError after it", cudaGetLastError());
  init_device();
  ERROR_CASE("clean state: cudaGetLastError", cudaGetLastError());

  int *d;
  CHECK(cudaMalloc(&d, 1024));
  int h[256];
  // Pointers.
  ERROR_CASE("cudaMalloc null result pointer", cudaMalloc(nullptr, 16));
  ERROR_CASE_KEEP("cudaMalloc huge", cudaMalloc((void **)&h, (size_t)1 << 60));
  ERROR_CASE("cudaGetLastError after huge malloc", cudaGetLastError());
  ERROR_CASE("cudaMalloc 0 bytes", cudaMalloc((void **)&h, 0));
  ERROR_CASE("cudaFree(nullptr)", cudaFree(nullptr));
  ERROR_CASE("cudaFree of a host pointer", cudaFree(h));
  ERROR_CASE("cudaFree inside an allocation", cudaFree((char *)d + 16));
  ERROR_CASE("cudaMemcpy DtoH from a host pointer",
             cudaMemcpy(h, (void *)(uintptr_t)0x10, 16, cudaMemcpyDeviceToHost));
  ERROR_CASE("cudaMemcpy DtoH past the end", cudaMemcpy(h, d, 2048, cudaMemcpyDeviceToHost));
  ERROR_CASE("cudaMemcpy bad kind", cudaMemcpy(h, d, 16, (cudaMemcpyKind)17));
  ERROR_CASE("cudaMemset past the end", cudaMemset(d, 0, 4096));
  ERROR_CASE_KEEP("cudaMemset of a host pointer", cudaMemset(h, 0, 16));
  ERROR_CASE_KEEP("cudaMemcpy 0 bytes", cudaMemcpy(h, d, 0, cudaMemcpyDeviceToHost));
  ERROR_CASE_KEEP("peek keeps the last error", cudaPeekAtLastError());
  ERROR_CASE("get returns it", cudaGetLastError());
  ERROR_CASE("and clears it", cudaGetLastError());

  // Launch configurations.
  k_small<<<1, 2048>>>(d);
  ERROR_CASE_KEEP("2048 threads per block (peek)", cudaPeekAtLastError());
  ERROR_CASE("2048 threads per block (get)", cudaGetLastError());
  ERROR_CASE("cleared", cudaGetLastError());
  k_small<<<0, 32>>>(d);
  ERROR_CASE("grid of 0 blocks", cudaGetLastError());
  k_small<<<dim3(1, 70000), 32>>>(d);
  ERROR_CASE("grid y 70000", cudaGetLastError());
  k_small<<<1, dim3(32, 1, 128)>>>(d);
  ERROR_CASE("block z 128", cudaGetLastError());
  k_small<<<1, 32, 300 * 1024>>>(d);
  ERROR_CASE("300 KiB dynamic shared memory", cudaGetLastError());
  k_big_static<<<1, 32, 4096>>>();
  ERROR_CASE("48 KiB static + 4 KiB dynamic shared memory", cudaGetLastError());
  k_big_static<<<1, 32>>>();
  ERROR_CASE("48 KiB static shared memory alone", cudaGetLastError());
  cudaStream_t bogus = (cudaStream_t)(uintptr_t)0x1;  // cudaStreamLegacy, valid
  k_small<<<1, 32, 0, bogus>>>(d);
  ERROR_CASE("launch on cudaStreamLegacy", cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  checkpoint("launch");
  // After configuration errors the context is still fine.
  k_small<<<1, 256>>>(d);
  CHECK_LAUNCH();
  CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
  result("context still usable", h[0] == 1 && h[255] == 1);

  // Function attributes of a non-kernel.
  cudaFuncAttributes fa;
  ERROR_CASE("cudaFuncGetAttributes(nullptr)", cudaFuncGetAttributes(&fa, (const void *)nullptr));
  ERROR_CASE("cudaFuncGetAttributes(host function)", cudaFuncGetAttributes(&fa, (const void *)&host_only));
  // Streams and events.
  cudaStream_t s;
  ERROR_CASE("cudaStreamCreateWithFlags bad flags", cudaStreamCreateWithFlags(&s, 0x100));
  cudaEvent_t ev;
  ERROR_CASE("cudaEventCreateWithFlags bad flags", cudaEventCreateWithFlags(&ev, 0x100));
  ERROR_CASE("cudaStreamSynchronize(legacy)", cudaStreamSynchronize(0));
  CHECK(cudaGetLastError());
  // Limits.
  ERROR_CASE("cudaDeviceSetLimit bad limit", cudaDeviceSetLimit((cudaLimit)99, 1));
  size_t v = 0;
  ERROR_CASE("cudaDeviceGetLimit stack size", cudaDeviceGetLimit(&v, cudaLimitStackSize));
  printf("stack size limit %zu\n", v);
  CHECK(cudaGetLastError());

  // Names and strings.
  const cudaError_t codes[] = {cudaSuccess,
                               cudaErrorInvalidValue,
                               cudaErrorMemoryAllocation,
                               cudaErrorInitializationError,
                               cudaErrorInvalidConfiguration,
                               cudaErrorInvalidDevicePointer,
                               cudaErrorInvalidMemcpyDirection,
                               cudaErrorInvalidDevice,
                               cudaErrorNoDevice,
                               cudaErrorInvalidResourceHandle,
                               cudaErrorNotReady,
                               cudaErrorIllegalAddress,
                               cudaErrorLaunchOutOfResources,
                               cudaErrorLaunchFailure,
                               cudaErrorCooperativeLaunchTooLarge,
                               cudaErrorNotSupported,
                               cudaErrorHostMemoryAlreadyRegistered,
                               cudaErrorHostMemoryNotRegistered,
                               cudaErrorInsufficientDriver,
                               cudaErrorStreamCaptureUnsupported,
                               cudaErrorUnknown,
                               (cudaError_t)12345};
  for (cudaError_t c : codes) printf("code %d: %s: %s\n", (int)c, cudaGetErrorName(c), cudaGetErrorString(c));
  CHECK(cudaFree(d));
  return done();
}
