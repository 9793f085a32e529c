/* saxpy: y = a*x + y with a float scalar argument, grid-stride loop, two launches on a stream. */
#include "common.h"

int main(void)
{
    CUdevice dev;
    setup(&dev);
    CUmodule mod = load_kernels();
    CUfunction f = get_function(mod, "saxpy");

    const unsigned int n = 3000017; /* odd, more than grid * block */
    const size_t bytes = n * sizeof(float);
    float *x = xmalloc(bytes), *y = xmalloc(bytes), *out = xmalloc(bytes);
    /* Integer-valued inputs: a*x + y is exact in float whether or not the GPU fuses it. */
    for (unsigned int i = 0; i < n; i++) {
        x[i] = (float)(i % 1000);
        y[i] = (float)(i % 777);
    }
    float a = 2.5f;

    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CUdeviceptr dx, dy;
    CHECK(cuMemAlloc(&dx, bytes));
    CHECK(cuMemAlloc(&dy, bytes));
    CHECK(cuMemcpyHtoDAsync(dx, x, bytes, s));
    CHECK(cuMemcpyHtoDAsync(dy, y, bytes, s));

    unsigned int nn = n;
    void *args[] = {&a, &dx, &dy, &nn};
    CHECK(cuLaunchKernel(f, 64, 1, 1, 128, 1, 1, 0, s, args, NULL));
    CHECK(cuLaunchKernel(f, 64, 1, 1, 128, 1, 1, 0, s, args, NULL));
    CHECK(cuMemcpyDtoHAsync(out, dy, bytes, s));
    CHECK(cuStreamSynchronize(s));
    CHECK(cuStreamQuery(s));

    unsigned int bad = 0;
    for (unsigned int i = 0; i < n; i++)
        if (out[i] != 2.0f * a * x[i] + y[i])
            bad++;
    printf("result: saxpy n=%u mismatches=%u\n", n, bad);
    result(bad == 0, "saxpy twice");

    /* The input x is untouched by the kernels. */
    CHECK(cuMemcpyDtoH(out, dx, bytes));
    expect_bytes(out, x, bytes, "x unchanged");

    CHECK(cuMemFree(dx));
    CHECK(cuMemFree(dy));
    CHECK(cuStreamDestroy(s));
    CHECK(cuModuleUnload(mod));
    teardown(dev);
    free(x), free(y), free(out);
    printf("done\n");
    return finish();
}
