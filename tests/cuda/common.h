// Shared helpers for the tests/cuda programs (CUDA runtime API, built by nvcc).
//
// Output rules (tests/cuda/README.md):
//   time: ...     depends on time; never compared
//   device: ...   a fact of this GPU/machine (UUID, bus id, memory size); dropped with --no-device
//   result: ...   depends on kernels having run; "result: <what> FAIL" fails the program where
//                 results are compared (native, vgpu on the real backend)
//   error-case <name>: <cudaError name> (<code>)   an error the program provokes on purpose
//   checkpoint: <what>   progress markers; "done" is the last line of a program that got through
// Everything else must be identical natively and through vGPU. An unexpected API error prints
// "FAIL <file>:<line> <call> -> <name> (<code>): <text>" and exits 1. Results never change the exit
// status (on the emulated backend kernels do not run, so results are wrong there by design).
#pragma once
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>

// Line-buffered stdout so that host lines and device printf output keep their order in a pipe.
static int vt_stdout_setup = [] {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  return 0;
}();

static inline const char *vt_name(cudaError_t e) { return cudaGetErrorName(e); }

#define CHECK(call)                                                                          \
  do {                                                                                       \
    cudaError_t vt_e = (call);                                                               \
    if (vt_e != cudaSuccess) {                                                               \
      printf("FAIL %s:%d %s -> %s (%d): %s\n", __FILE__, __LINE__, #call, cudaGetErrorName(vt_e), \
             (int)vt_e, cudaGetErrorString(vt_e));                                           \
      fflush(stdout);                                                                        \
      _Exit(1); /* not exit(): other threads may still be inside the runtime */             \
    }                                                                                        \
  } while (0)

// Checks a kernel launch (configuration errors are reported by cudaGetLastError).
#define CHECK_LAUNCH() CHECK(cudaGetLastError())

// An error provoked on purpose: prints its name and code; compared with the native run.
// ERROR_CASE then clears the thread's last error (cudaGetLastError), so that a later CHECK_LAUNCH
// does not report it; ERROR_CASE_KEEP leaves it (for tests of cudaGetLastError/PeekAtLastError).
static inline cudaError_t vt_error_case(const char *label, cudaError_t e, bool clear) {
  printf("error-case %s: %s (%d)\n", label, cudaGetErrorName(e), (int)e);
  if (clear) (void)cudaGetLastError();
  return e;
}
#define ERROR_CASE(label, call) vt_error_case(label, (call), true)
#define ERROR_CASE_KEEP(label, call) vt_error_case(label, (call), false)

static inline void checkpoint(const char *what) { printf("checkpoint: %s\n", what); }

static inline bool result(const char *what, bool ok) {
  printf("result: %s %s\n", what, ok ? "OK" : "FAIL");
  return ok;
}

// Prints the last line every program ends with when it got through.
static inline int done() {
  CHECK(cudaDeviceSynchronize());
  printf("done\n");
  fflush(stdout);
  return 0;
}

// Initialises the runtime (primary context) on device 0 and prints the first checkpoint.
static inline void init_device() {
  CHECK(cudaSetDevice(0));
  CHECK(cudaFree(0));
  checkpoint("init");
}

// Deterministic pseudo-random numbers (same on every machine).
static inline uint32_t vt_rand(uint32_t &state) {
  state = state * 1664525u + 1013904223u;
  return state >> 8;
}

// Elapsed milliseconds between two recorded events.
static inline float elapsed_ms(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  CHECK(cudaEventElapsedTime(&ms, a, b));
  return ms;
}

// A kernel that spins for about `ns` nanoseconds of GPU time (global timer), for overlap tests.
__device__ __forceinline__ uint64_t vt_globaltimer() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__global__ void vt_spin_kernel(uint64_t ns, int *flag) {
  uint64_t start = vt_globaltimer();
  while (vt_globaltimer() - start < ns) {
  }
  if (flag && threadIdx.x == 0) atomicAdd(flag, 1);
}
