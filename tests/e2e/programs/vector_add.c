/* Vector add: c = a + b over an odd-sized vector, kernelParams launch. */
#include "common.h"

int main(void)
{
    CUdevice dev;
    setup(&dev);
    CUmodule mod = load_kernels();
    CUfunction f = get_function(mod, "vector_add");

    const unsigned int n = (1u << 20) + 3;
    const size_t bytes = n * sizeof(float);
    float *a = xmalloc(bytes), *b = xmalloc(bytes), *c = xmalloc(bytes), *back = xmalloc(bytes);
    for (unsigned int i = 0; i < n; i++) {
        a[i] = (float)i * 0.5f;
        b[i] = (float)(n - i) * 0.25f;
        c[i] = -1.0f;
    }

    CUdeviceptr da, db, dc;
    CHECK(cuMemAlloc(&da, bytes));
    CHECK(cuMemAlloc(&db, bytes));
    CHECK(cuMemAlloc(&dc, bytes));
    CHECK(cuMemcpyHtoD(da, a, bytes));
    CHECK(cuMemcpyHtoD(db, b, bytes));
    CHECK(cuMemsetD32(dc, 0, n));

    /* The inputs survive the round trip. */
    CHECK(cuMemcpyDtoH(back, da, bytes));
    expect_bytes(back, a, bytes, "copy a round trip");

    unsigned int nn = n;
    void *args[] = {&da, &db, &dc, &nn};
    const unsigned int block = 256;
    CHECK(cuLaunchKernel(f, ceil_div(n, block), 1, 1, block, 1, 1, 0, NULL, args, NULL));
    CHECK(cuCtxSynchronize());
    CHECK(cuMemcpyDtoH(c, dc, bytes));

    unsigned int bad = 0;
    for (unsigned int i = 0; i < n; i++)
        if (c[i] != a[i] + b[i])
            bad++;
    printf("result: vector_add n=%u mismatches=%u\n", n, bad);
    result(bad == 0, "vector_add");

    CHECK(cuMemFree(da));
    CHECK(cuMemFree(db));
    CHECK(cuMemFree(dc));
    CHECK(cuModuleUnload(mod));
    teardown(dev);
    free(a), free(b), free(c), free(back);
    printf("done\n");
    return finish();
}
