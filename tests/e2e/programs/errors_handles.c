/* Bad and destroyed handles, only where the native driver's answer is well defined (checked on the
 * H100, driver 580: these return the same code every time; a destroyed stream or event, a bogus
 * stream, pushing/setting a destroyed context crash natively, and destroying a context twice varies, so they are not here).
 * Prints "error-case <name>: <CUresult name>"; never aborts. */
#include "common.h"

int main(void)
{
    CUdevice dev;
    setup(&dev);

    /* Unloaded modules and their functions. */
    CUmodule mod;
    CUfunction f;
    CHECK(cuModuleLoadData(&mod, kernels_ptx));
    CHECK(cuModuleGetFunction(&f, mod, "empty"));
    CHECK(cuModuleUnload(mod));
    CUfunction g;
    ERROR_CASE("cuModuleGetFunction of an unloaded module", cuModuleGetFunction(&g, mod, "empty"));
    ERROR_CASE("cuModuleUnload twice", cuModuleUnload(mod));
    ERROR_CASE("cuLaunchKernel of a function of an unloaded module",
               cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));

    /* Unloaded library. */
    CUlibrary lib;
    CHECK(cuLibraryLoadData(&lib, kernels_ptx, NULL, NULL, 0, NULL, NULL, 0));
    CHECK(cuLibraryUnload(lib));
    CUkernel k;
    ERROR_CASE("cuLibraryGetKernel of an unloaded library", cuLibraryGetKernel(&k, lib, "empty"));

    /* A created context destroyed (destroying it twice answers INVALID_CONTEXT or
     * CONTEXT_IS_DESTROYED natively, varying from run to run: not tested). */
    CUcontext ctx;
    CHECK(cuCtxCreate(&ctx, NULL, 0, dev));
    CHECK(cuCtxDestroy(ctx));
    CUcontext cur;
    CHECK(cuCtxGetCurrent(&cur));
    CUcontext primary;
    CHECK(cuDevicePrimaryCtxRetain(&primary, dev));
    expect(cur == primary, "the primary context is current again");
    CHECK(cuDevicePrimaryCtxRelease(dev));

    /* NULL handles. */
    ERROR_CASE("cuEventQuery NULL", cuEventQuery(NULL));
    ERROR_CASE("cuEventRecord NULL", cuEventRecord(NULL, NULL));
    float ms;
    ERROR_CASE("cuEventElapsedTime NULL events", cuEventElapsedTime(&ms, NULL, NULL));
    ERROR_CASE("cuStreamWaitEvent NULL event", cuStreamWaitEvent(NULL, NULL, 0));
    ERROR_CASE("cuStreamDestroy NULL", cuStreamDestroy(NULL));
    ERROR_CASE("cuCtxDestroy NULL", cuCtxDestroy(NULL));
    ERROR_CASE("cuModuleUnload NULL", cuModuleUnload(NULL));
    int v;
    ERROR_CASE("cuFuncGetAttribute NULL function", cuFuncGetAttribute(&v, CU_FUNC_ATTRIBUTE_NUM_REGS, NULL));
    ERROR_CASE("cuKernelGetFunction NULL kernel", cuKernelGetFunction(&g, NULL));
    ERROR_CASE("cuLibraryGetKernel NULL library", cuLibraryGetKernel(&k, NULL, "empty"));

    /* None of this is sticky. */
    ERROR_CASE("cuCtxSynchronize after the handle errors", cuCtxSynchronize());
    teardown(dev);
    printf("done\n");
    return finish();
}
