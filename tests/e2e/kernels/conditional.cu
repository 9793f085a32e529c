// Kernels that set a graph's conditional handles from device code (`cudaGraphSetConditional`), as XLA's
// command buffers do for lax.cond / lax.while_loop. Built to PTX only (tests/e2e/gen_kernels.sh): the driver
// resolves `cudaGraphSetConditional` when it JIT-compiles the module, as it does for XLA's own PTX.
//
// Parameter layouts (byte offset:size):
//   set_condition  handle@0:8 value@8:8                 total 16
//   while_step     handle@0:8 counter@8:8 limit@16:4    total 20
#include <cuda_runtime.h>

// Sets `handle` to the value at `value` (one thread).
extern "C" __global__ void set_condition(cudaGraphConditionalHandle handle, const unsigned int *value)
{
    cudaGraphSetConditional(handle, *value);
}

// One loop iteration: counts itself and ends the loop (sets `handle` to 0) once `limit` iterations ran.
extern "C" __global__ void while_step(cudaGraphConditionalHandle handle, unsigned int *counter, unsigned int limit)
{
    unsigned int n = ++*counter;
    if (n >= limit)
        cudaGraphSetConditional(handle, 0);
}
