/* Pinned memory reused the way frameworks reuse it (PyTorch's pinned DataLoader batches): a kernel whose
 * arguments name a pinned buffer it never writes, the host refilling the buffer once an event query says the
 * kernel is done, then copying it to the device; host writes made after a kernel survive the next synchronize;
 * a kernel's own writes into pinned memory reach the host; an async device-to-host copy into part of a pinned
 * buffer leaves the host's other bytes alone; slices of a large buffer every kernel names are copied without
 * pulling it whole or waiting per copy. */
#include "common.h"

#define BYTES (64u << 10)

static void wait_event(CUevent e)
{
    CUresult r;
    while ((r = cuEventQuery(e)) == CUDA_ERROR_NOT_READY)
        ;
    CHECK(r);
}

int main(void)
{
    CUdevice dev;
    setup(&dev);
    CUmodule mod = load_kernels();
    CUfunction unused = get_function(mod, "unused_params");
    CUfunction fill = get_function(mod, "fill_u32");

    unsigned char *pinned, *want = xmalloc(BYTES), *check = xmalloc(BYTES);
    CHECK(cuMemAllocHost((void **)&pinned, BYTES));
    CUdeviceptr d;
    CHECK(cuMemAlloc(&d, BYTES));
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CUevent e;
    CHECK(cuEventCreate(&e, CU_EVENT_DISABLE_TIMING));
    CUdeviceptr none = 0;
    unsigned int zero = 0;

    /* 1. A kernel names the buffer and ignores it; once it is done the host refills the buffer and copies it. */
    fill_pattern(pinned, BYTES, 1);
    CUdeviceptr as_device = (CUdeviceptr)(uintptr_t)pinned;
    void *unused_args[] = {&as_device, &none, &none, &zero};
    CHECK(cuLaunchKernel(unused, 1, 1, 1, 32, 1, 1, 0, s, unused_args, NULL));
    CHECK(cuEventRecord(e, s));
    wait_event(e);
    fill_pattern(pinned, BYTES, 2);
    fill_pattern(want, BYTES, 2);
    CHECK(cuMemcpyHtoDAsync(d, pinned, BYTES, s));
    CHECK(cuStreamSynchronize(s));
    CHECK(cuMemcpyDtoH(check, d, BYTES));
    expect_bytes(check, want, BYTES, "copy of a buffer refilled after a kernel that named it");

    /* 2. Host bytes written after such a kernel ended survive the next synchronizing call. */
    CHECK(cuLaunchKernel(unused, 1, 1, 1, 32, 1, 1, 0, s, unused_args, NULL));
    CHECK(cuEventRecord(e, s));
    wait_event(e);
    fill_pattern(pinned, BYTES, 3);
    fill_pattern(want, BYTES, 3);
    CHECK(cuCtxSynchronize());
    expect_bytes(pinned, want, BYTES, "host writes after the kernel ended, after cuCtxSynchronize");

    /* 3. A kernel writes the first 1024 words of the buffer; the rest stays as the host left it. */
    unsigned int value = 7, n = 1024;
    void *fill_args[] = {&as_device, &value, &n};
    CHECK(cuLaunchKernel(fill, 4, 1, 1, 256, 1, 1, 0, s, fill_args, NULL));
    CHECK(cuStreamSynchronize(s));
    int wrote = 1;
    for (unsigned int i = 0; i < n; i++)
        wrote &= ((unsigned int *)pinned)[i] == value + i;
    result(wrote, "kernel wrote into pinned memory");
    expect_bytes(pinned + 4 * n, want + 4 * n, BYTES - 4 * n, "bytes the kernel did not write");

    /* 4. An async copy lands in one part of the buffer while the host writes another part. */
    fill_pattern(want, BYTES, 4);
    CHECK(cuMemcpyHtoD(d, want, BYTES));
    CHECK(cuMemcpyDtoHAsync(pinned + 8192, d, 4096, s));
    fill_pattern(pinned + 16384, 4096, 5);
    CHECK(cuStreamSynchronize(s));
    expect_bytes(pinned + 8192, want, 4096, "async copy into part of a pinned buffer");
    fill_pattern(check, 4096, 5);
    expect_bytes(pinned + 16384, check, 4096, "host bytes beside it, written meanwhile");

    /* 5. A large pinned buffer named by every kernel (as uninitialised words of frameworks' argument structs do)
     * while slices of it are copied up, then synchronized: every slice lands, and through vGPU the buffer is neither
     * pulled whole nor waited for per copy (expected/pinned_reuse.stats bounds the traffic). */
    const size_t big_bytes = 16u << 20, slice = 32u << 10;
    unsigned char *big;
    CHECK(cuMemAllocHost((void **)&big, big_bytes));
    fill_pattern(big, big_bytes, 6);
    CUdeviceptr dbig;
    CHECK(cuMemAlloc(&dbig, 50 * slice));
    CUdeviceptr big_as_device = (CUdeviceptr)(uintptr_t)big;
    void *big_args[] = {&big_as_device, &none, &none, &zero};
    for (int i = 0; i < 50; i++) {
        CHECK(cuLaunchKernel(unused, 1, 1, 1, 32, 1, 1, 0, s, big_args, NULL));
        CHECK(cuMemcpyHtoDAsync(dbig + (size_t)i * slice, big + (size_t)i * slice, slice, s));
    }
    CHECK(cuStreamSynchronize(s));
    unsigned char *slices = xmalloc(50 * slice);
    CHECK(cuMemcpyDtoH(slices, dbig, 50 * slice));
    expect_bytes(slices, big, 50 * slice, "50 slices of a pinned buffer every kernel names");
    free(slices);
    CHECK(cuMemFree(dbig));
    CHECK(cuMemFreeHost(big));

    CHECK(cuEventDestroy(e));
    CHECK(cuStreamDestroy(s));
    CHECK(cuMemFree(d));
    CHECK(cuMemFreeHost(pinned));
    free(want);
    free(check);
    CHECK(cuModuleUnload(mod));
    teardown(dev);
    printf("done\n");
    return finish();
}
