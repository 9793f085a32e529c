// Stop 22: what the real driver frees with a context, for the session's rule (a pinned buffer follows the context
// current when it was made). Build: nvcc -o ctx_lifetimes ctx_lifetimes.c -lcuda. Prints one line per case.
#include <cuda.h>
#include <stdio.h>

static const char *alive(void *p) {
    unsigned int flags = 0;
    CUresult r = cuMemHostGetFlags(&flags, p);
    return r == CUDA_SUCCESS ? "alive" : "freed";
}

int main(void) {
    CUdevice dev;
    CUcontext primary, own, cur;
    void *in_primary, *in_own, *in_own_destroyed, *no_flags;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&primary, dev)) return 1;
    cuCtxSetCurrent(primary);
    cuMemHostAlloc(&in_primary, 1 << 20, CU_MEMHOSTALLOC_PORTABLE);
    cuCtxCreate(&own, NULL, 0, dev);  // current now
    cuMemHostAlloc(&in_own, 1 << 20, CU_MEMHOSTALLOC_PORTABLE);
    cuMemHostAlloc(&no_flags, 1 << 20, 0);
    CUresult reset = cuDevicePrimaryCtxReset(dev);
    printf("primary reset: %d\n", (int)reset);
    printf("portable buffer made in the primary context, after its reset: %s\n", alive(in_primary));
    printf("portable buffer made in a created context, after the primary's reset: %s\n", alive(in_own));
    printf("plain buffer made in a created context, after the primary's reset: %s\n", alive(no_flags));
    CUcontext other;
    cuCtxCreate(&other, NULL, 0, dev);
    cuMemHostAlloc(&in_own_destroyed, 1 << 20, CU_MEMHOSTALLOC_PORTABLE);
    cuCtxSetCurrent(own);
    printf("destroy: %d\n", (int)cuCtxDestroy(other));
    cuCtxGetCurrent(&cur);
    printf("portable buffer made in a destroyed context (asked from another): %s\n", alive(in_own_destroyed));
    printf("free of it: %d\n", (int)cuMemFreeHost(in_own_destroyed));
    printf("free of the primary's (reset) buffer: %d\n", (int)cuMemFreeHost(in_primary));
    printf("free of the live one: %d\n", (int)cuMemFreeHost(in_own));
    cuCtxDestroy(own);
    return 0;
}
