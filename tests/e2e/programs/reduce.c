/* Two-pass reduction: many blocks sum into partials in dynamic shared memory, one block sums the
 * partials; the host checks both passes. */
#include "common.h"

int main(void)
{
    CUdevice dev;
    setup(&dev);
    CUmodule mod = load_kernels();
    CUfunction pass1 = get_function(mod, "reduce_pass1");
    CUfunction pass2 = get_function(mod, "reduce_pass2");

    const unsigned int n = 10000019;
    const unsigned int blocks = 240, threads = 256;
    uint32_t *in = xmalloc(n * sizeof(uint32_t));
    fill_pattern(in, n * sizeof(uint32_t), 7);
    unsigned long long want = 0;
    for (unsigned int i = 0; i < n; i++)
        want += in[i];

    CUdeviceptr din, dpartial, dout;
    CHECK(cuMemAlloc(&din, n * sizeof(uint32_t)));
    CHECK(cuMemAlloc(&dpartial, blocks * sizeof(unsigned long long)));
    CHECK(cuMemAlloc(&dout, sizeof(unsigned long long)));
    CHECK(cuMemcpyHtoD(din, in, n * sizeof(uint32_t)));
    CHECK(cuMemsetD8(dpartial, 0xff, blocks * sizeof(unsigned long long)));
    CHECK(cuMemsetD8(dout, 0xff, sizeof(unsigned long long)));

    unsigned int nn = n, nb = blocks;
    void *args1[] = {&din, &dpartial, &nn};
    void *args2[] = {&dpartial, &dout, &nb};
    const unsigned int shmem = threads * sizeof(unsigned long long);
    CHECK(cuLaunchKernel(pass1, blocks, 1, 1, threads, 1, 1, shmem, NULL, args1, NULL));
    CHECK(cuLaunchKernel(pass2, 1, 1, 1, threads, 1, 1, shmem, NULL, args2, NULL));
    CHECK(cuCtxSynchronize());

    unsigned long long partial[240], got = 0, partial_sum = 0;
    CHECK(cuMemcpyDtoH(partial, dpartial, sizeof partial));
    CHECK(cuMemcpyDtoH(&got, dout, sizeof got));
    for (unsigned int i = 0; i < blocks; i++)
        partial_sum += partial[i];
    printf("host sum: %llu\n", want);
    printf("result: partials sum %llu\n", partial_sum);
    printf("result: device sum %llu\n", got);
    result(partial_sum == want, "pass 1 partials");
    result(got == want, "pass 2 total");

    CHECK(cuMemFree(din));
    CHECK(cuMemFree(dpartial));
    CHECK(cuMemFree(dout));
    CHECK(cuModuleUnload(mod));
    teardown(dev);
    free(in);
    printf("done\n");
    return finish();
}
