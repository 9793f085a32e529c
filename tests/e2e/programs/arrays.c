/* CUDA arrays: cuArrayCreate/GetDescriptor/Destroy, host<->array copies through cuMemcpy2D, array-to-array copies
 * (cuMemcpyAtoA, and cuMemcpy3D between two 1-D arrays), and an array-to-array copy past the end. */
#include "common.h"

#define WIDTH 256 /* float elements per array */
#define BYTES (WIDTH * 4)

static CUarray make_array(void)
{
    CUDA_ARRAY_DESCRIPTOR d;
    memset(&d, 0, sizeof d);
    d.Width = WIDTH;
    d.Height = 0;
    d.Format = CU_AD_FORMAT_FLOAT;
    d.NumChannels = 1;
    CUarray a;
    CHECK(cuArrayCreate(&a, &d));
    return a;
}

/* The whole 1-D array from or to host memory, with a 2-D copy of one row. */
static void host_to_array(CUarray a, const void *src)
{
    CUDA_MEMCPY2D m;
    memset(&m, 0, sizeof m);
    m.srcMemoryType = CU_MEMORYTYPE_HOST;
    m.srcHost = src;
    m.srcPitch = BYTES;
    m.dstMemoryType = CU_MEMORYTYPE_ARRAY;
    m.dstArray = a;
    m.WidthInBytes = BYTES;
    m.Height = 1;
    CHECK(cuMemcpy2D(&m));
}

static void array_to_host(void *dst, CUarray a)
{
    CUDA_MEMCPY2D m;
    memset(&m, 0, sizeof m);
    m.srcMemoryType = CU_MEMORYTYPE_ARRAY;
    m.srcArray = a;
    m.dstMemoryType = CU_MEMORYTYPE_HOST;
    m.dstHost = dst;
    m.dstPitch = BYTES;
    m.WidthInBytes = BYTES;
    m.Height = 1;
    CHECK(cuMemcpy2D(&m));
}

int main(void)
{
    CUdevice dev;
    setup(&dev);
    CUarray a = make_array(), b = make_array();

    CUDA_ARRAY_DESCRIPTOR got;
    CHECK(cuArrayGetDescriptor(&got, a));
    printf("descriptor: width %zu height %zu format %d channels %u\n", got.Width, got.Height, (int)got.Format,
           got.NumChannels);

    unsigned char *pa = xmalloc(BYTES), *pb = xmalloc(BYTES), *want = xmalloc(BYTES), *back = xmalloc(BYTES);
    fill_pattern(pa, BYTES, 31);
    fill_pattern(pb, BYTES, 32);
    host_to_array(a, pa);
    host_to_array(b, pb);
    array_to_host(back, a);
    expect_bytes(back, pa, BYTES, "host -> array -> host");

    /* The first half of a into the second half of b. */
    CHECK(cuMemcpyAtoA(b, BYTES / 2, a, 0, BYTES / 2));
    memcpy(want, pb, BYTES / 2);
    memcpy(want + BYTES / 2, pa, BYTES / 2);
    array_to_host(back, b);
    expect_bytes(back, want, BYTES, "cuMemcpyAtoA: half of a into b at an offset");

    /* A 3-D copy between the two 1-D arrays: a's bytes [256, 512) to the start of b. */
    CUDA_MEMCPY3D m;
    memset(&m, 0, sizeof m);
    m.srcMemoryType = CU_MEMORYTYPE_ARRAY;
    m.srcArray = a;
    m.srcXInBytes = 256;
    m.dstMemoryType = CU_MEMORYTYPE_ARRAY;
    m.dstArray = b;
    m.WidthInBytes = 256;
    m.Height = 1;
    m.Depth = 1;
    CHECK(cuMemcpy3D(&m));
    memcpy(want, pa + 256, 256);
    array_to_host(back, b);
    expect_bytes(back, want, BYTES, "cuMemcpy3D: array to array");

    /* Past the end of b: refused, and b is unchanged. */
    ERROR_CASE("cuMemcpyAtoA past the end", cuMemcpyAtoA(b, BYTES - 256, a, 0, 512));
    ERROR_CASE("cuMemcpyAtoA source past the end", cuMemcpyAtoA(b, 0, a, BYTES - 4, 8));
    array_to_host(back, b);
    expect_bytes(back, want, BYTES, "b unchanged by refused copies");

    CHECK(cuArrayDestroy(a));
    CHECK(cuArrayDestroy(b));
    free(pa), free(pb), free(want), free(back);
    teardown(dev);
    printf("done\n");
    return finish();
}
