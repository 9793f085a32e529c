/* Copy patterns: sizes from 1 B to 64 MiB, odd sizes, offsets inside allocations, HtoD / DtoH /
 * DtoD, synchronous and asynchronous on streams, memset D8/D16/D32 and their async variants.
 * Everything is verified byte for byte on the host, including the bytes around each copy. */
#include "common.h"

#define GUARD 64 /* bytes before and after each copied range */

static const size_t sizes[] = {
    1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 255, 256, 257,
    511, 1000, 1023, 4095, 4096, 4097, 8191, 65535, 65536, 65537, 100003, 262144,
    (1u << 20) - 1, 1u << 20, (1u << 20) + 1, 3333333, 4u << 20, (8u << 20) + 13, 16u << 20,
    64u << 20,
};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static unsigned char *want, *got, *src;

/* Reads the whole device buffer [d, d+total) and compares it with want. */
static void verify_device(CUdeviceptr d, size_t total, const char *what)
{
    CHECK(cuMemcpyDtoH(got, d, total));
    expect_bytes(got, want, total, what);
}

static void sync_patterns(void)
{
    char what[128];
    for (size_t k = 0; k < NSIZES; k++) {
        size_t n = sizes[k];
        size_t off = (k * 5) % 17;       /* offset inside the allocation: 0..16 */
        size_t pos = GUARD + off;
        size_t total = n + 2 * GUARD;
        CUdeviceptr a, b;
        CHECK(cuMemAlloc(&a, total));
        CHECK(cuMemAlloc(&b, total));
        CHECK(cuMemsetD8(a, 0xab, total));
        CHECK(cuMemsetD8(b, 0xcd, total));

        /* HtoD at an offset, from an odd host address when k is odd. */
        fill_pattern(src, n + 1, (uint32_t)k);
        const unsigned char *hs = src + (k & 1);
        CHECK(cuMemcpyHtoD(a + pos, hs, n));
        memset(want, 0xab, total);
        memcpy(want + pos, hs, n);
        snprintf(what, sizeof what, "htod size=%zu at=%zu", n, pos);
        verify_device(a, total, what);

        /* DtoH of just the range, into an odd host address. */
        memset(got, 0, n + 8);
        CHECK(cuMemcpyDtoH(got + 3, a + pos, n));
        snprintf(what, sizeof what, "dtoh size=%zu", n);
        expect_bytes(got + 3, hs, n, what);

        /* DtoD between two allocations, different offsets. */
        CHECK(cuMemcpyDtoD(b + GUARD + 1, a + pos, n));
        memset(want, 0xcd, total);
        memcpy(want + GUARD + 1, hs, n);
        snprintf(what, sizeof what, "dtod size=%zu", n);
        verify_device(b, total, what);

        /* DtoD inside one allocation (non-overlapping halves). */
        if (n >= 2) {
            size_t h = n / 2;
            CHECK(cuMemcpyDtoD(b + GUARD, b + GUARD + 1 + h, h));
            memcpy(want + GUARD, hs + h, h);
            snprintf(what, sizeof what, "dtod same allocation size=%zu", h);
            verify_device(b, total, what);
        }
        CHECK(cuMemFree(a));
        CHECK(cuMemFree(b));
    }
}

/* Small copies at every offset 0..7 of every length 1..16 into one buffer. */
static void small_offsets(void)
{
    const size_t total = 64;
    CUdeviceptr d;
    CHECK(cuMemAlloc(&d, total));
    CHECK(cuMemsetD8(d, 0, total));
    memset(want, 0, total);
    unsigned int count = 0, bad = 0;
    for (size_t off = 0; off < 8; off++) {
        for (size_t len = 1; len <= 16; len++) {
            unsigned char v[16];
            for (size_t i = 0; i < len; i++)
                v[i] = (unsigned char)(off * 16 + len + i);
            CHECK(cuMemcpyHtoD(d + off * 3, v, len));
            memcpy(want + off * 3, v, len);
            unsigned char r[16];
            CHECK(cuMemcpyDtoH(r, d + off * 3 + len / 2, len - len / 2));
            if (memcmp(r, want + off * 3 + len / 2, len - len / 2) != 0)
                bad++;
            count++;
        }
    }
    CHECK(cuMemcpyDtoH(got, d, total));
    printf("small offsets: %u copies, %u bad\n", count, bad);
    expect(bad == 0 && memcmp(got, want, total) == 0, "small offsets");
    CHECK(cuMemFree(d));
}

static void async_patterns(void)
{
    CUstream s1, s2;
    CUevent ev;
    CHECK(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
    CHECK(cuStreamCreate(&s2, CU_STREAM_DEFAULT));
    CHECK(cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING));
    char what[128];
    for (size_t k = 0; k < NSIZES; k += 3) {
        size_t n = sizes[k];
        size_t total = n + 2 * GUARD;
        CUdeviceptr a, b;
        CHECK(cuMemAlloc(&a, total));
        CHECK(cuMemAlloc(&b, total));
        CHECK(cuMemsetD8Async(a, 0x11, total, s1));
        CHECK(cuMemsetD8Async(b, 0x22, total, s1));
        fill_pattern(src, n, (uint32_t)(1000 + k));
        CHECK(cuMemcpyHtoDAsync(a + GUARD, src, n, s1));
        CHECK(cuMemcpyDtoDAsync(b + GUARD + 7, a + GUARD, n, s1));
        CHECK(cuEventRecord(ev, s1));
        /* s2 waits for s1's work, then reads b back. */
        CHECK(cuStreamWaitEvent(s2, ev, 0));
        memset(got, 0, total);
        CHECK(cuMemcpyDtoHAsync(got, b, total, s2));
        CHECK(cuStreamSynchronize(s2));
        memset(want, 0x22, total);
        memcpy(want + GUARD + 7, src, n);
        snprintf(what, sizeof what, "async htod+dtod+dtoh size=%zu", n);
        expect_bytes(got, want, total, what);
        CHECK(cuStreamSynchronize(s1));
        CHECK(cuMemFree(a));
        CHECK(cuMemFree(b));
    }
    /* Async copies on the legacy default stream (0). */
    size_t n = 1234567;
    CUdeviceptr d;
    CHECK(cuMemAlloc(&d, n));
    fill_pattern(src, n, 99);
    CHECK(cuMemcpyHtoDAsync(d, src, n, NULL));
    memset(got, 0, n);
    CHECK(cuMemcpyDtoHAsync(got, d, n, NULL));
    CHECK(cuCtxSynchronize());
    expect_bytes(got, src, n, "async on default stream size=1234567");
    CHECK(cuMemFree(d));
    CHECK(cuEventDestroy(ev));
    CHECK(cuStreamDestroy(s1));
    CHECK(cuStreamDestroy(s2));
}

static void set16(unsigned char *p, uint16_t v, size_t count)
{
    for (size_t i = 0; i < count; i++)
        memcpy(p + 2 * i, &v, 2);
}

static void set32(unsigned char *p, uint32_t v, size_t count)
{
    for (size_t i = 0; i < count; i++)
        memcpy(p + 4 * i, &v, 4);
}

static void memsets(void)
{
    const size_t total = 1 << 16;
    CUdeviceptr d;
    CHECK(cuMemAlloc(&d, total));
    CHECK(cuMemsetD8(d, 0, total));
    memset(want, 0, total);

    CHECK(cuMemsetD8(d + 1, 0x5a, 1001));
    memset(want + 1, 0x5a, 1001);
    verify_device(d, total, "memset d8 odd offset");

    CHECK(cuMemsetD16(d + 2050, 0xbeef, 777));
    set16(want + 2050, 0xbeef, 777);
    verify_device(d, total, "memset d16");

    CHECK(cuMemsetD32(d + 4100, 0xdeadbeefu, 3001));
    set32(want + 4100, 0xdeadbeefu, 3001);
    verify_device(d, total, "memset d32");

    CHECK(cuMemsetD8(d + 30000, 0x00, 1));
    want[30000] = 0;
    verify_device(d, total, "memset d8 one byte");

    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CHECK(cuMemsetD8Async(d + 40001, 0xc3, 999, s));
    memset(want + 40001, 0xc3, 999);
    CHECK(cuMemsetD16Async(d + 42002, 0x1234, 1111, s));
    set16(want + 42002, 0x1234, 1111);
    CHECK(cuMemsetD32Async(d + 50000, 0x01020304u, 2000, s));
    set32(want + 50000, 0x01020304u, 2000);
    CHECK(cuStreamSynchronize(s));
    verify_device(d, total, "memset async d8/d16/d32");
    CHECK(cuStreamDestroy(s));
    CHECK(cuMemFree(d));

    /* Large memsets. */
    const size_t big = 64u << 20;
    CHECK(cuMemAlloc(&d, big));
    CHECK(cuMemsetD32(d, 0x89abcdefu, big / 4));
    set32(want, 0x89abcdefu, big / 4);
    CHECK(cuMemsetD8(d + 5, 0x77, big - 11));
    memset(want + 5, 0x77, big - 11);
    verify_device(d, big, "memset 64 MiB d32 then d8");
    CHECK(cuMemFree(d));
}

int main(void)
{
    CUdevice dev;
    setup(&dev);
    size_t max = (64u << 20) + 2 * GUARD + 64;
    want = xmalloc(max);
    got = xmalloc(max);
    src = xmalloc(max);

    sync_patterns();
    small_offsets();
    async_patterns();
    memsets();

    teardown(dev);
    free(want), free(got), free(src);
    printf("done\n");
    return finish();
}
