/* Error cases that must return the native code. Each prints "error-case <name>: <CUresult name>";
 * none aborts. The native run's output is the reference. */
#include "common.h"

static const CUresult codes[] = {
    CUDA_SUCCESS, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_OUT_OF_MEMORY, CUDA_ERROR_NOT_INITIALIZED,
    CUDA_ERROR_NO_DEVICE, CUDA_ERROR_INVALID_DEVICE, CUDA_ERROR_INVALID_IMAGE, CUDA_ERROR_INVALID_CONTEXT,
    CUDA_ERROR_INVALID_PTX, CUDA_ERROR_INVALID_HANDLE, CUDA_ERROR_NOT_FOUND, CUDA_ERROR_NOT_READY,
    CUDA_ERROR_ILLEGAL_ADDRESS, CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, CUDA_ERROR_LAUNCH_FAILED,
    CUDA_ERROR_NOT_SUPPORTED, CUDA_ERROR_UNKNOWN,
};

static void error_strings(void)
{
    for (size_t k = 0; k < sizeof codes / sizeof codes[0]; k++) {
        const char *name = NULL, *str = NULL;
        CUresult rn = cuGetErrorName(codes[k], &name);
        CUresult rs = cuGetErrorString(codes[k], &str);
        printf("error %d: name %s (%d) string \"%s\" (%d)\n", (int)codes[k], name ? name : "(null)", (int)rn,
               str ? str : "(null)", (int)rs);
    }
    int invalid[] = {12345, -1, 1000};
    for (size_t k = 0; k < 3; k++) {
        const char *name = "unchanged", *str = "unchanged";
        CUresult rn = cuGetErrorName((CUresult)invalid[k], &name);
        CUresult rs = cuGetErrorString((CUresult)invalid[k], &str);
        printf("error-case cuGetErrorName(%d): %s, name %s\n", invalid[k], err_name(rn), name ? name : "(null)");
        printf("error-case cuGetErrorString(%d): %s, string %s\n", invalid[k], err_name(rs), str ? str : "(null)");
    }
}

int main(void)
{
    /* ---- before cuInit ---- */
    CUdevice dev = -1;
    ERROR_CASE("cuDeviceGet before cuInit", cuDeviceGet(&dev, 0));
    int count = -1;
    ERROR_CASE("cuDeviceGetCount before cuInit", cuDeviceGetCount(&count));
    int version = 0;
    ERROR_CASE("cuDriverGetVersion before cuInit", cuDriverGetVersion(&version));
    ERROR_CASE("cuInit with flags 1", cuInit(1));
    error_strings();

    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));

    /* ---- no current context ---- */
    CUdeviceptr p;
    ERROR_CASE("cuMemAlloc without context", cuMemAlloc(&p, 1024));
    ERROR_CASE("cuCtxSynchronize without context", cuCtxSynchronize());
    CUmodule mod;
    ERROR_CASE("cuModuleLoadData without context", cuModuleLoadData(&mod, kernels_ptx));
    CUstream st;
    ERROR_CASE("cuStreamCreate without context", cuStreamCreate(&st, 0));
    CUevent ev;
    ERROR_CASE("cuEventCreate without context", cuEventCreate(&ev, 0));

    CUcontext ctx;
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));

    /* ---- allocation ---- */
    ERROR_CASE("cuMemAlloc 0 bytes", cuMemAlloc(&p, 0));
    ERROR_CASE("cuMemAlloc 1 PiB", cuMemAlloc(&p, (size_t)1 << 50));
    CHECK(cuCtxSynchronize());

    /* ---- modules ---- */
    ERROR_CASE("cuModuleLoadData of text that is not PTX", cuModuleLoadData(&mod, "this is not a module"));
    static const char broken_ptx[] = ".version 8.0\n.target sm_80\n.address_size 64\n"
                                     ".visible .entry broken(\n.param .u64 p\n)\n{\n  this is not ptx;\n}\n";
    ERROR_CASE("cuModuleLoadData of PTX that does not compile", cuModuleLoadData(&mod, broken_ptx));
    CHECK(cuModuleLoadData(&mod, kernels_ptx));
    CUfunction f;
    ERROR_CASE("cuModuleGetFunction missing name", cuModuleGetFunction(&f, mod, "missing_kernel"));
    CUdeviceptr g;
    size_t gbytes;
    ERROR_CASE("cuModuleGetGlobal missing name", cuModuleGetGlobal(&g, &gbytes, mod, "missing_global"));
    ERROR_CASE("cuModuleGetFunction NULL module", cuModuleGetFunction(&f, NULL, "vector_add"));
    CUlibrary lib;
    CUresult lr = cuLibraryLoadData(&lib, "this is not a module", NULL, NULL, 0, NULL, NULL, 0);
    printf("error-case cuLibraryLoadData of text that is not PTX: %s\n", err_name(lr));
    if (lr == CUDA_SUCCESS) { /* loading may be lazy: the error may come with the first use */
        CUkernel k;
        ERROR_CASE("cuLibraryGetKernel in a library of text that is not PTX", cuLibraryGetKernel(&k, lib, "vector_add"));
        ERROR_CASE("cuLibraryUnload of a library of text that is not PTX", cuLibraryUnload(lib));
    }

    /* ---- streams, events, attributes ---- */
    ERROR_CASE("cuStreamCreate bad flags", cuStreamCreate(&st, 0x100));
    ERROR_CASE("cuEventCreate bad flags", cuEventCreate(&ev, 0x100));
    CHECK(cuModuleGetFunction(&f, mod, "vector_add"));
    int v;
    ERROR_CASE("cuFuncGetAttribute bad attribute", cuFuncGetAttribute(&v, (CUfunction_attribute)999, f));
    CUevent e1, e2;
    CHECK(cuEventCreate(&e1, 0));
    CHECK(cuEventCreate(&e2, CU_EVENT_DISABLE_TIMING));
    float ms;
    ERROR_CASE("cuEventElapsedTime never recorded", cuEventElapsedTime(&ms, e1, e1));
    CHECK(cuEventRecord(e1, NULL));
    CHECK(cuEventRecord(e2, NULL));
    CHECK(cuCtxSynchronize());
    ERROR_CASE("cuEventElapsedTime timing disabled", cuEventElapsedTime(&ms, e1, e2));
    CHECK(cuEventDestroy(e1));
    CHECK(cuEventDestroy(e2));

    /* ---- launches ---- */
    const unsigned int n = 1024;
    CUdeviceptr a, b, c;
    CHECK(cuMemAlloc(&a, n * 4));
    CHECK(cuMemAlloc(&b, n * 4));
    CHECK(cuMemAlloc(&c, n * 4));
    unsigned int nn = n;
    void *args[] = {&a, &b, &c, &nn};
    ERROR_CASE("launch block 2048x1x1", cuLaunchKernel(f, 1, 1, 1, 2048, 1, 1, 0, NULL, args, NULL));
    ERROR_CASE("launch block 32x32x2 (2048 threads)", cuLaunchKernel(f, 1, 1, 1, 32, 32, 2, 0, NULL, args, NULL));
    ERROR_CASE("launch block z 65", cuLaunchKernel(f, 1, 1, 1, 1, 1, 65, 0, NULL, args, NULL));
    ERROR_CASE("launch block 0", cuLaunchKernel(f, 1, 1, 1, 0, 1, 1, 0, NULL, args, NULL));
    ERROR_CASE("launch grid 0", cuLaunchKernel(f, 0, 1, 1, 32, 1, 1, 0, NULL, args, NULL));
    ERROR_CASE("launch grid y 65536", cuLaunchKernel(f, 1, 65536, 1, 32, 1, 1, 0, NULL, args, NULL));
    ERROR_CASE("launch 1 MiB dynamic shared memory", cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 1 << 20, NULL, args, NULL));
    ERROR_CASE("launch NULL function", cuLaunchKernel(NULL, 1, 1, 1, 32, 1, 1, 0, NULL, args, NULL));

    _Alignas(8) unsigned char buf[64];
    memset(buf, 0, sizeof buf);
    memcpy(buf + 0, &a, 8);
    memcpy(buf + 8, &b, 8);
    memcpy(buf + 16, &c, 8);
    memcpy(buf + 24, &n, 4);
    size_t size = 28;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
    ERROR_CASE("launch with both kernelParams and extra", cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, NULL, args, extra));
    /* The packed buffer's size against the kernel's 28 bytes of parameters (the wrong argument
     * count). unused_params has vector_add's layout but reads none of its parameters, so launches
     * the driver accepts with missing bytes are harmless. */
    CUfunction unused;
    CHECK(cuModuleGetFunction(&unused, mod, "unused_params"));
    static const size_t sizes[] = {0, 1, 8, 24, 27, 28, 29, 32, 36, 64};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        char name[96];
        size = sizes[k];
        snprintf(name, sizeof name, "launch extra size %zu for 28 bytes of parameters", size);
        ERROR_CASE(name, cuLaunchKernel(unused, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, extra));
    }
    ERROR_CASE("cuCtxSynchronize after the extra size cases", cuCtxSynchronize());
    size = 28;
    void *no_size[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_END};
    ERROR_CASE("launch extra without a size", cuLaunchKernel(unused, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, no_size));
    void *no_pointer[] = {CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
    ERROR_CASE("launch extra without a pointer",
               cuLaunchKernel(unused, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, no_pointer));
    CUfunction empty;
    CHECK(cuModuleGetFunction(&empty, mod, "empty"));
    size = 0;
    ERROR_CASE("launch extra size 0 for a kernel without parameters",
               cuLaunchKernel(empty, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, extra));
    size = 8;
    ERROR_CASE("launch extra size 8 for a kernel without parameters",
               cuLaunchKernel(empty, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, extra));
    size = 28;
    ERROR_CASE("launch extra size 28 (correct)", cuLaunchKernel(f, ceil_div(n, 32), 1, 1, 32, 1, 1, 0, NULL, NULL, extra));
    /* Launch errors of this kind are not sticky: the context still works. */
    ERROR_CASE("cuCtxSynchronize after the launch errors", cuCtxSynchronize());
    CHECK(cuMemsetD32(a, 1, n));
    unsigned int w = 0;
    CHECK(cuMemcpyDtoH(&w, a + 4 * (n - 1), 4));
    expect(w == 1, "context usable after the launch errors");

    CHECK(cuMemFree(a));
    CHECK(cuMemFree(b));
    CHECK(cuMemFree(c));
    CHECK(cuModuleUnload(mod));
    CHECK(cuCtxSetCurrent(NULL));
    CHECK(cuDevicePrimaryCtxRelease(dev));
    printf("done\n");
    return finish();
}
