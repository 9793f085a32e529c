/* Contexts: primary context retain/state/release, cuCtxCreate/Push/Pop/GetCurrent/Destroy,
 * cuCtxSynchronize, cuCtxGetDevice, and per-thread current contexts. */
#include <pthread.h>

#include "common.h"

static CUcontext g_primary;

static void *thread_main(void *arg)
{
    (void)arg;
    CUcontext cur = (CUcontext)1;
    CHECK(cuCtxGetCurrent(&cur));
    printf("thread: current at start is null: %s\n", cur == NULL ? "yes" : "no");
    CUdeviceptr p;
    ERROR_CASE("thread alloc without context", cuMemAlloc(&p, 64));
    CHECK(cuCtxSetCurrent(g_primary));
    CHECK(cuMemAlloc(&p, 64));
    CHECK(cuMemsetD8(p, 7, 64));
    unsigned char b[64];
    CHECK(cuMemcpyDtoH(b, p, 64));
    expect(b[0] == 7 && b[63] == 7, "thread: memory through the primary context");
    CHECK(cuMemFree(p));
    CHECK(cuCtxSynchronize());
    CHECK(cuCtxSetCurrent(NULL));
    return NULL;
}

int main(void)
{
    CHECK(cuInit(0));
    CUdevice dev;
    CHECK(cuDeviceGet(&dev, 0));

    CUcontext cur = (CUcontext)1;
    CHECK(cuCtxGetCurrent(&cur));
    printf("current at start is null: %s\n", cur == NULL ? "yes" : "no");
    ERROR_CASE("synchronize without context", cuCtxSynchronize());
    CUdevice d2 = -1;
    ERROR_CASE("get device without context", cuCtxGetDevice(&d2));
    CUcontext popped = (CUcontext)1;
    ERROR_CASE("pop with empty stack", cuCtxPopCurrent(&popped));

    unsigned int flags = 99;
    int active = 99;
    CHECK(cuDevicePrimaryCtxGetState(dev, &flags, &active));
    printf("primary state before retain: flags=%u active=%d\n", flags, active);

    /* Primary context: retain twice, make current. */
    CUcontext primary, primary2;
    CHECK(cuDevicePrimaryCtxRetain(&primary, dev));
    CHECK(cuDevicePrimaryCtxRetain(&primary2, dev));
    expect(primary == primary2, "retain twice gives the same context");
    CHECK(cuDevicePrimaryCtxGetState(dev, &flags, &active));
    printf("primary state after retain: active=%d\n", active);
    CHECK(cuCtxSetCurrent(primary));
    CHECK(cuCtxGetCurrent(&cur));
    expect(cur == primary, "primary is current");
    CHECK(cuCtxGetDevice(&d2));
    expect(d2 == dev, "cuCtxGetDevice gives device 0");
    CHECK(cuCtxSynchronize());
    g_primary = primary;

    /* A created context is pushed on top of the primary. */
    CUcontext created;
    CHECK(cuCtxCreate(&created, NULL, 0, dev));
    expect(created != primary, "created context differs from the primary");
    CHECK(cuCtxGetCurrent(&cur));
    expect(cur == created, "created context is current");
    CUdeviceptr p;
    CHECK(cuMemAlloc(&p, 1 << 20));
    CHECK(cuMemsetD32(p, 0x12345678u, (1 << 20) / 4));
    uint32_t w = 0;
    CHECK(cuMemcpyDtoH(&w, p + 4096, 4));
    expect(w == 0x12345678u, "memory in the created context");
    CHECK(cuCtxSynchronize());

    CHECK(cuCtxPopCurrent(&popped));
    expect(popped == created, "pop returns the created context");
    CHECK(cuCtxGetCurrent(&cur));
    expect(cur == primary, "after pop the primary is current");
    CHECK(cuCtxPushCurrent(created));
    CHECK(cuCtxGetCurrent(&cur));
    expect(cur == created, "after push the created context is current");
    CHECK(cuMemFree(p));

    /* A second created context on the stack, then unwound. */
    CUcontext third;
    CHECK(cuCtxCreate(&third, NULL, 0, dev));
    CHECK(cuCtxGetCurrent(&cur));
    expect(cur == third, "third context is current");
    CHECK(cuCtxPopCurrent(&popped));
    expect(popped == third, "pop returns the third context");
    CHECK(cuCtxDestroy(third));
    CHECK(cuCtxGetCurrent(&cur));
    expect(cur == created, "destroying a non-current context leaves the current one");

    /* Destroying the current context pops it. */
    CHECK(cuCtxDestroy(created));
    CHECK(cuCtxGetCurrent(&cur));
    printf("after destroying the current context the primary is current: %s\n",
           cur == primary ? "yes" : "no");
    CHECK(cuCtxSetCurrent(primary));

    /* Another thread starts with no current context. */
    pthread_t t;
    if (pthread_create(&t, NULL, thread_main, NULL) != 0 || pthread_join(t, NULL) != 0) {
        printf("FAIL pthread\n");
        return 1;
    }
    CHECK(cuCtxGetCurrent(&cur));
    expect(cur == primary, "this thread's current context is unchanged");

    /* Pop the primary off this thread's stack, then release both retains. */
    CHECK(cuCtxPopCurrent(&popped));
    expect(popped == primary, "pop returns the primary");
    CHECK(cuCtxGetCurrent(&cur));
    expect(cur == NULL, "stack is empty");
    CHECK(cuDevicePrimaryCtxRelease(dev));
    CHECK(cuDevicePrimaryCtxGetState(dev, &flags, &active));
    printf("primary state after one release: active=%d\n", active);
    CHECK(cuDevicePrimaryCtxRelease(dev));
    CHECK(cuDevicePrimaryCtxGetState(dev, &flags, &active));
    printf("primary state after both releases: active=%d\n", active);

    /* Retain again: a fresh primary context works. */
    CHECK(cuDevicePrimaryCtxRetain(&primary, dev));
    CHECK(cuCtxSetCurrent(primary));
    CHECK(cuMemAlloc(&p, 4096));
    CHECK(cuMemFree(p));
    CHECK(cuCtxSynchronize());
    CHECK(cuCtxSetCurrent(NULL));
    CHECK(cuDevicePrimaryCtxRelease(dev));
    printf("done\n");
    return finish();
}
