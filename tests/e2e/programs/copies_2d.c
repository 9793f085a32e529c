/* Pitched memory: cuMemAllocPitch, cuMemcpy2D host<->device and device<->device, cuMemcpy2DAsync, cuMemcpy3DPeer. */
#include "common.h"

int main(void)
{
    CUdevice dev;
    setup(&dev);
    const size_t width = 1003, height = 37; /* bytes per row, rows */
    CUdeviceptr d1, d2;
    size_t pitch1 = 0, pitch2 = 0;
    CHECK(cuMemAllocPitch(&d1, &pitch1, width, height, 4));
    CHECK(cuMemAllocPitch(&d2, &pitch2, width, height, 16));
    printf("device: pitch %zu and %zu for width %zu\n", pitch1, pitch2, width);
    expect(pitch1 >= width && pitch2 >= width, "pitch >= width");

    const size_t hpitch = 1100;
    unsigned char *src = xmalloc(hpitch * height), *dst = xmalloc(hpitch * height);
    fill_pattern(src, hpitch * height, 21);
    memset(dst, 0, hpitch * height);

    CUDA_MEMCPY2D m;
    memset(&m, 0, sizeof m);
    m.srcMemoryType = CU_MEMORYTYPE_HOST;
    m.srcHost = src;
    m.srcPitch = hpitch;
    m.dstMemoryType = CU_MEMORYTYPE_DEVICE;
    m.dstDevice = d1;
    m.dstPitch = pitch1;
    m.WidthInBytes = width;
    m.Height = height;
    CHECK(cuMemcpy2D(&m));

    /* Device to device, with offsets inside both regions (x=3 bytes, y=1 row). */
    memset(&m, 0, sizeof m);
    m.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    m.srcDevice = d1;
    m.srcPitch = pitch1;
    m.srcXInBytes = 3;
    m.srcY = 1;
    m.dstMemoryType = CU_MEMORYTYPE_DEVICE;
    m.dstDevice = d2;
    m.dstPitch = pitch2;
    m.dstXInBytes = 5;
    m.dstY = 2;
    m.WidthInBytes = width - 10;
    m.Height = height - 3;
    CHECK(cuMemcpy2D(&m));

    /* Back to the host, asynchronously. */
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    memset(&m, 0, sizeof m);
    m.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    m.srcDevice = d2;
    m.srcPitch = pitch2;
    m.dstMemoryType = CU_MEMORYTYPE_HOST;
    m.dstHost = dst;
    m.dstPitch = hpitch;
    m.srcXInBytes = 5;
    m.srcY = 2;
    m.WidthInBytes = width - 10;
    m.Height = height - 3;
    CHECK(cuMemcpy2DAsync(&m, s));
    CHECK(cuStreamSynchronize(s));

    int bad = 0;
    for (size_t y = 0; y < height - 3; y++)
        bad += memcmp(dst + y * hpitch, src + (y + 1) * hpitch + 3, width - 10) != 0;
    printf("2d rows wrong: %d\n", bad);
    expect(bad == 0, "2d host->device->device->host with offsets");

    /* A whole pitched region back with a plain 1-D copy: rows at pitch1 apart. */
    unsigned char *lin = xmalloc(pitch1 * height);
    CHECK(cuMemcpyDtoH(lin, d1, pitch1 * height));
    bad = 0;
    for (size_t y = 0; y < height; y++)
        bad += memcmp(lin + y * pitch1, src + y * hpitch, width) != 0;
    expect(bad == 0, "pitched rows seen by a 1-D copy");

    /* cuMemcpy3DPeer within one device (both contexts the current one): d1's rows into a cleared d2. */
    CUcontext ctx;
    CHECK(cuCtxGetCurrent(&ctx));
    CHECK(cuMemsetD8(d2, 0, pitch2 * height));
    CUDA_MEMCPY3D_PEER p;
    memset(&p, 0, sizeof p);
    p.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    p.srcDevice = d1;
    p.srcPitch = pitch1;
    p.srcHeight = height;
    p.srcContext = ctx;
    p.dstMemoryType = CU_MEMORYTYPE_DEVICE;
    p.dstDevice = d2;
    p.dstPitch = pitch2;
    p.dstHeight = height;
    p.dstContext = ctx;
    p.WidthInBytes = width;
    p.Height = height;
    p.Depth = 1;
    CHECK(cuMemcpy3DPeer(&p));
    unsigned char *lin2 = xmalloc(pitch2 * height);
    CHECK(cuMemcpyDtoH(lin2, d2, pitch2 * height));
    bad = 0;
    for (size_t y = 0; y < height; y++)
        bad += memcmp(lin2 + y * pitch2, src + y * hpitch, width) != 0;
    expect(bad == 0, "cuMemcpy3DPeer device->device rows");
    free(lin2);

    CHECK(cuStreamDestroy(s));
    CHECK(cuMemFree(d1));
    CHECK(cuMemFree(d2));
    free(src), free(dst), free(lin);
    teardown(dev);
    printf("done\n");
    return finish();
}
