/* Memory error cases: copies and memsets past the end of an allocation, frees of pointers that are
 * not allocations, misaligned memsets. Prints "error-case <name>: <CUresult name>"; never aborts. */
#include "common.h"

int main(void)
{
    CUdevice dev;
    setup(&dev);
    const size_t size = 2u << 20; /* a whole 2 MiB page: no slack after the end */
    CUdeviceptr a, b;
    CHECK(cuMemAlloc(&a, size));
    CHECK(cuMemAlloc(&b, size));
    unsigned char *host = xmalloc(2 * size);
    memset(host, 0x5a, 2 * size);

    ERROR_CASE("htod 32 bytes at 16 before the end", cuMemcpyHtoD(a + size - 16, host, 32));
    ERROR_CASE("htod 1 byte at the end", cuMemcpyHtoD(a + size, host, 1));
    ERROR_CASE("htod twice the allocation", cuMemcpyHtoD(a, host, 2 * size));
    ERROR_CASE("dtoh 32 bytes at 16 before the end", cuMemcpyDtoH(host, a + size - 16, 32));
    ERROR_CASE("dtod source past the end", cuMemcpyDtoD(b, a + size / 2, size));
    ERROR_CASE("dtod destination past the end", cuMemcpyDtoD(b + size / 2, a, size));
    ERROR_CASE("memset d8 past the end", cuMemsetD8(a + size - 16, 0, 32));
    ERROR_CASE("memset d32 past the end", cuMemsetD32(a + size - 16, 0, 8));
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    ERROR_CASE("htod async past the end", cuMemcpyHtoDAsync(a + size - 16, host, 32, s));
    ERROR_CASE("dtoh async past the end", cuMemcpyDtoHAsync(host, a + size - 16, 32, s));
    ERROR_CASE("stream synchronize after async range errors", cuStreamSynchronize(s));
    ERROR_CASE("htod to address 0", cuMemcpyHtoD(0, host, 4));
    ERROR_CASE("dtoh from address 0", cuMemcpyDtoH(host, 0, 4));

    ERROR_CASE("memset d16 misaligned", cuMemsetD16(a + 1, 0, 4));
    ERROR_CASE("memset d32 misaligned", cuMemsetD32(a + 2, 0, 4));

    ERROR_CASE("free interior pointer", cuMemFree(a + 16));
    ERROR_CASE("free pointer that was never allocated", cuMemFree((CUdeviceptr)0x1000));
    ERROR_CASE("free 0", cuMemFree(0));
    CHECK(cuMemFree(b));
    ERROR_CASE("free twice", cuMemFree(b));

    /* The context still works, and the allocation kept its contents. */
    ERROR_CASE("cuCtxSynchronize after the memory errors", cuCtxSynchronize());
    CHECK(cuMemsetD8(a, 0x33, size));
    CHECK(cuMemcpyHtoD(a + size - 16, host, 16));
    CHECK(cuMemcpyDtoH(host, a + size - 32, 32));
    int ok = 1;
    for (int i = 0; i < 32; i++)
        ok &= host[i] == (i < 16 ? 0x33 : 0x5a);
    expect(ok, "copy ending exactly at the end of the allocation");
    CHECK(cuStreamDestroy(s));
    CHECK(cuMemFree(a));
    free(host);
    teardown(dev);
    printf("done\n");
    return finish();
}
