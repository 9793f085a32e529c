/* Pageable asynchronous copies of 1 MiB on the NULL stream, each waited for with cuStreamSynchronize before the
 * buffer is refilled (as a compiled PyTorch step sends its inputs): every copy lands, and through vGPU's shared
 * staging (shm sessions) none of them waits again for a staging slot that the stream wait already freed
 * (expected/staged_async.stats). Then one buffer refilled as soon as each call returns, four times without a wait in
 * between: each copy carries the bytes the buffer held at its call. */
#include "common.h"

#define MIB (1u << 20)

int main(void)
{
    CUdevice dev;
    setup(&dev);
    unsigned char *host = xmalloc(MIB), *check = xmalloc(4 * MIB), *want = xmalloc(4 * MIB);
    CUdeviceptr d;
    CHECK(cuMemAlloc(&d, 4 * MIB));

    for (unsigned int i = 0; i < 20; i++) {
        fill_pattern(host, MIB, 10 + i);
        CHECK(cuMemcpyHtoDAsync(d, host, MIB, NULL));
        CHECK(cuStreamSynchronize(NULL));
    }
    fill_pattern(want, MIB, 29);
    CHECK(cuMemcpyDtoH(check, d, MIB));
    expect_bytes(check, want, MIB, "20 pageable async copies, each waited for");

    for (unsigned int k = 0; k < 4; k++) {
        fill_pattern(host, MIB, 40 + k);
        fill_pattern(want + k * MIB, MIB, 40 + k);
        CHECK(cuMemcpyHtoDAsync(d + k * MIB, host, MIB, NULL));
    }
    CHECK(cuStreamSynchronize(NULL));
    CHECK(cuMemcpyDtoH(check, d, 4 * MIB));
    expect_bytes(check, want, 4 * MIB, "4 pageable async copies from one buffer refilled at once");

    CHECK(cuMemFree(d));
    teardown(dev);
    free(host), free(check), free(want);
    printf("done\n");
    return finish();
}
