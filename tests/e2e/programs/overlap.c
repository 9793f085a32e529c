/* Two streams overlapping copy and compute: a spinning kernel on one stream, 64 MiB copies to and
 * from pinned host memory on another; events measure both run alone and together. */
#include "common.h"

static float elapsed(CUevent a, CUevent b)
{
    float ms = 0;
    CHECK(cuEventSynchronize(b));
    CHECK(cuEventElapsedTime(&ms, a, b));
    return ms;
}

int main(void)
{
    CUdevice dev;
    setup(&dev);
    CUmodule mod = load_kernels();
    CUfunction spin = get_function(mod, "spin");

    const size_t bytes = 64u << 20;
    unsigned char *h_in, *h_out;
    CHECK(cuMemAllocHost((void **)&h_in, bytes));
    CHECK(cuMemAllocHost((void **)&h_out, bytes));
    fill_pattern(h_in, bytes, 5);
    memset(h_out, 0, bytes);

    CUdeviceptr d_in, d_src, d_flags;
    CHECK(cuMemAlloc(&d_in, bytes));
    CHECK(cuMemAlloc(&d_src, bytes));
    CHECK(cuMemAlloc(&d_flags, 4 * sizeof(unsigned int)));
    CHECK(cuMemcpyHtoD(d_src, h_in, bytes)); /* what the DtoH copy will read */

    CUstream s1, s2;
    CHECK(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
    CHECK(cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING));
    CUevent e[8];
    for (int i = 0; i < 8; i++)
        CHECK(cuEventCreate(&e[i], CU_EVENT_DEFAULT));

    /* Calibrate the spin kernel: 1e6 cycles. */
    unsigned long long cycles = 1000000ull;
    void *args[] = {&cycles, &d_flags};
    CHECK(cuLaunchKernel(spin, 1, 1, 1, 32, 1, 1, 0, s1, args, NULL)); /* warm-up */
    CHECK(cuEventRecord(e[0], s1));
    CHECK(cuLaunchKernel(spin, 1, 1, 1, 32, 1, 1, 0, s1, args, NULL));
    CHECK(cuEventRecord(e[1], s1));
    float t_cal = elapsed(e[0], e[1]);

    /* Copies alone (HtoD then DtoH), on s2. */
    CHECK(cuEventRecord(e[2], s2));
    CHECK(cuMemcpyHtoDAsync(d_in, h_in, bytes, s2));
    CHECK(cuMemcpyDtoHAsync(h_out, d_src, bytes, s2));
    CHECK(cuEventRecord(e[3], s2));
    float t_copy = elapsed(e[2], e[3]);

    /* Kernel alone, sized to last about as long as the copies. */
    double scale = t_cal > 0.001f ? t_copy / t_cal : 1.0;
    if (scale < 1.0)
        scale = 1.0;
    if (scale > 5000.0)
        scale = 5000.0;
    cycles = (unsigned long long)(1000000.0 * scale);
    CHECK(cuEventRecord(e[0], s1));
    CHECK(cuLaunchKernel(spin, 1, 1, 1, 32, 1, 1, 0, s1, args, NULL));
    CHECK(cuEventRecord(e[1], s1));
    float t_kernel = elapsed(e[0], e[1]);

    /* Both together: s2 starts after e[4] on s1; s1 ends after s2's copies (e[5]). */
    memset(h_out, 0, bytes);
    CHECK(cuMemsetD8(d_in, 0, bytes));
    CHECK(cuMemsetD32(d_flags, 0, 4));
    CHECK(cuCtxSynchronize());
    CHECK(cuEventRecord(e[4], s1));
    CHECK(cuStreamWaitEvent(s2, e[4], 0));
    CHECK(cuLaunchKernel(spin, 1, 1, 1, 32, 1, 1, 0, s1, args, NULL));
    CHECK(cuMemcpyHtoDAsync(d_in, h_in, bytes, s2));
    CHECK(cuMemcpyDtoHAsync(h_out, d_src, bytes, s2));
    CHECK(cuEventRecord(e[5], s2));
    CHECK(cuStreamWaitEvent(s1, e[5], 0));
    CHECK(cuEventRecord(e[6], s1));
    float t_both = elapsed(e[4], e[6]);
    CHECK(cuStreamSynchronize(s2));

    printf("timing: calibration 1e6 cycles %.3f ms\n", t_cal);
    printf("timing: copies alone %.3f ms, kernel alone %.3f ms, together %.3f ms\n", t_copy, t_kernel,
           t_both);
    int overlap = t_both < 0.8f * (t_copy + t_kernel);
    printf("result: overlap seen: %s\n", overlap ? "yes" : "no");

    /* The copies made during the overlapped run are complete and exact. */
    expect_bytes(h_out, h_in, bytes, "dtoh 64 MiB to pinned memory during kernel");
    unsigned char *check = xmalloc(bytes);
    CHECK(cuMemcpyDtoH(check, d_in, bytes));
    expect_bytes(check, h_in, bytes, "htod 64 MiB from pinned memory during kernel");
    unsigned int flags[4];
    CHECK(cuMemcpyDtoH(flags, d_flags, sizeof flags));
    result(flags[0] == 1, "spin kernel ran");
    free(check);

    for (int i = 0; i < 8; i++)
        CHECK(cuEventDestroy(e[i]));
    CHECK(cuStreamDestroy(s1));
    CHECK(cuStreamDestroy(s2));
    CHECK(cuMemFree(d_in));
    CHECK(cuMemFree(d_src));
    CHECK(cuMemFree(d_flags));
    CHECK(cuMemFreeHost(h_in));
    CHECK(cuMemFreeHost(h_out));
    CHECK(cuModuleUnload(mod));
    teardown(dev);
    printf("done\n");
    return finish();
}
