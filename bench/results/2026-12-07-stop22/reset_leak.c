// Stop 22: the hostile pattern the session fix closes, run through vGPU on the real driver: 8 MiB copies (one
// synchronous, one asynchronous) made while a context of the app's own is current, then a primary-context reset,
// over and over. Natively the driver frees nothing of the app's context at the reset; before the fix the worker
// forgot (and so leaked) the pinned buffers it had made for those copies at every reset. The script watches the
// worker's resident memory. Build: nvcc -o reset_leak reset_leak.c -lcuda; run: reset_leak [ROUNDS].
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    CUdevice dev;
    CUcontext primary, own;
    CUdeviceptr d;
    size_t n = 8u << 20;
    char *host = malloc(n), *back = malloc(n);
    if (!host || !back) return 2;
    for (size_t i = 0; i < n; i++) host[i] = (char)(i * 7 + 1);
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&primary, dev)) return 1;
    if (cuCtxCreate(&own, NULL, 0, dev) || cuMemAlloc(&d, n)) return 1;  // own is current from here on
    for (int r = 0; r < rounds; r++) {
        CUresult a = cuMemcpyHtoD(d, host, n);
        CUresult b = cuMemcpyHtoDAsync(d, host, n, 0);
        CUresult c = cuCtxSynchronize();
        CUresult e = cuDevicePrimaryCtxReset(dev);
        if (a || b || c || e) {
            printf("round %d: copy %d, async copy %d, synchronize %d, reset %d\n", r, a, b, c, e);
            return 1;
        }
    }
    CUresult got = cuMemcpyDtoH(back, d, n);
    printf("%d rounds of copies in the app's own context and primary-context resets: data %s (%d)\n", rounds,
           got == CUDA_SUCCESS && memcmp(back, host, n) == 0 ? "intact" : "wrong", (int)got);
    cuMemFree(d);
    cuCtxDestroy(own);
    return 0;
}
