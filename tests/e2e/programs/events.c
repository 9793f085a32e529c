/* Events: create (flags), record, query, synchronize, elapsed time, stream waits, destroy. */
#include "common.h"

int main(void)
{
    CUdevice dev;
    setup(&dev);
    CUmodule mod = load_kernels();
    CUfunction spin = get_function(mod, "spin");
    int clock_khz = 0;
    CHECK(cuDeviceGetAttribute(&clock_khz, CU_DEVICE_ATTRIBUTE_CLOCK_RATE, dev));

    CUevent a, b, c, nt, bs;
    CHECK(cuEventCreate(&a, CU_EVENT_DEFAULT));
    CHECK(cuEventCreate(&b, CU_EVENT_DEFAULT));
    CHECK(cuEventCreate(&c, CU_EVENT_DEFAULT));
    CHECK(cuEventCreate(&nt, CU_EVENT_DISABLE_TIMING));
    CHECK(cuEventCreate(&bs, CU_EVENT_BLOCKING_SYNC));
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));

    /* Never recorded: query and synchronize succeed at once. */
    ERROR_CASE("query never recorded", cuEventQuery(a));
    ERROR_CASE("synchronize never recorded", cuEventSynchronize(a));
    float ms = -1;
    ERROR_CASE("elapsed never recorded", cuEventElapsedTime(&ms, a, b));
    ERROR_CASE("stream wait on never recorded event", cuStreamWaitEvent(s, a, 0));

    /* A kernel of about 100 ms between a and b. */
    CUdeviceptr flags;
    CHECK(cuMemAlloc(&flags, 4));
    CHECK(cuMemsetD32(flags, 0, 1));
    unsigned long long cycles = (unsigned long long)clock_khz * 100ull;
    void *args[] = {&cycles, &flags};
    double t0 = now_ms();
    CHECK(cuEventRecord(a, s));
    CHECK(cuLaunchKernel(spin, 1, 1, 1, 32, 1, 1, 0, s, args, NULL));
    CHECK(cuEventRecord(b, s));
    CUresult q = cuEventQuery(b);
    printf("result: query while the kernel runs: %s\n", err_name(q));
    q = cuEventElapsedTime(&ms, a, b);
    printf("result: elapsed while the kernel runs: %s\n", err_name(q));
    CHECK(cuEventSynchronize(b));
    double host_ms = now_ms() - t0;
    ERROR_CASE("query after synchronize", cuEventQuery(b));
    CHECK(cuEventElapsedTime(&ms, a, b));
    expect(ms >= 0.0f, "elapsed is not negative");
    printf("timing: spin kernel %.3f ms by events, %.3f ms by host clock\n", ms, host_ms);
    result(ms > 50.0f && ms < 1000.0f, "elapsed time covers the kernel (50..1000 ms)");

    float self = -1;
    CHECK(cuEventElapsedTime(&self, b, b));
    printf("elapsed from an event to itself: %.3f\n", self);

    /* Timing disabled: elapsed time is refused. */
    CHECK(cuEventRecord(nt, s));
    CHECK(cuEventSynchronize(nt));
    ERROR_CASE("elapsed with timing disabled (end)", cuEventElapsedTime(&ms, a, nt));
    ERROR_CASE("elapsed with timing disabled (start)", cuEventElapsedTime(&ms, nt, b));

    /* Events on the default stream, and a blocking-sync event. */
    CHECK(cuEventRecord(c, NULL));
    CHECK(cuEventRecord(bs, NULL));
    CHECK(cuEventSynchronize(bs));
    ERROR_CASE("query blocking-sync event", cuEventQuery(bs));
    CHECK(cuEventSynchronize(c));
    CHECK(cuEventElapsedTime(&ms, b, c));
    expect(ms >= 0.0f, "elapsed across streams is not negative");

    /* Re-recording moves the event; a copy timed by events. */
    const size_t bytes = 16u << 20;
    CUdeviceptr x, y;
    CHECK(cuMemAlloc(&x, bytes));
    CHECK(cuMemAlloc(&y, bytes));
    CHECK(cuEventRecord(a, s));
    CHECK(cuMemcpyDtoDAsync(y, x, bytes, s));
    CHECK(cuEventRecord(b, s));
    CHECK(cuStreamSynchronize(s));
    ERROR_CASE("query after stream synchronize", cuEventQuery(b));
    CHECK(cuEventElapsedTime(&ms, a, b));
    expect(ms >= 0.0f, "elapsed of a copy is not negative");
    printf("timing: 16 MiB device-to-device copy %.3f ms\n", ms);

    /* A second stream waits on an event of the first. */
    CUstream s2;
    CHECK(cuStreamCreate(&s2, CU_STREAM_DEFAULT));
    CHECK(cuMemsetD32(flags, 0, 1));
    CHECK(cuEventRecord(a, s));
    CHECK(cuLaunchKernel(spin, 1, 1, 1, 32, 1, 1, 0, s, args, NULL));
    CHECK(cuEventRecord(b, s));
    CHECK(cuStreamWaitEvent(s2, b, 0));
    unsigned int seen = 0;
    CHECK(cuMemcpyDtoHAsync(&seen, flags, 4, s2));
    CHECK(cuStreamSynchronize(s2));
    result(seen == 1, "stream wait event orders the second stream after the kernel");
    ERROR_CASE("query event the other stream waited on", cuEventQuery(b));

    CHECK(cuStreamDestroy(s2));
    CHECK(cuStreamDestroy(s));
    CHECK(cuEventDestroy(a));
    CHECK(cuEventDestroy(b));
    CHECK(cuEventDestroy(c));
    CHECK(cuEventDestroy(nt));
    CHECK(cuEventDestroy(bs));
    CHECK(cuMemFree(flags));
    CHECK(cuMemFree(x));
    CHECK(cuMemFree(y));
    CHECK(cuModuleUnload(mod));
    teardown(dev);
    printf("done\n");
    return finish();
}
