/* What a synchronizing call covers, whichever thread queued the work: an async device-to-host copy into pageable
 * memory is done when the call returns (libraries read the bytes at once); async copies into pinned memory queued
 * by one thread are in place once another thread's cuStreamSynchronize, cuEventSynchronize or completed
 * cuStreamQuery returns, or once the main thread's cuCtxSynchronize does (as ProcessGroupGloo's worker thread
 * waits for copies the main thread queued); and a stream waited for right after such a copy costs no second wait
 * (expected/sync_scope.stats); a wait for one stream does not end a copy still running on another; and an event
 * recorded on another thread's per-thread default stream covers the copies queued there. */
#include <pthread.h>

#include "common.h"

#define WORDS 1024
#define ROUNDS 20

static CUcontext g_ctx;
static CUstream g_stream;
static CUevent g_event;

static void *sync_stream(void *arg)
{
    (void)arg;
    CHECK(cuCtxSetCurrent(g_ctx));
    CHECK(cuStreamSynchronize(g_stream));
    return NULL;
}

static void *sync_event(void *arg)
{
    (void)arg;
    CHECK(cuCtxSetCurrent(g_ctx));
    CHECK(cuEventSynchronize(g_event));
    return NULL;
}

static void *poll_stream(void *arg)
{
    (void)arg;
    CHECK(cuCtxSetCurrent(g_ctx));
    CUresult r;
    while ((r = cuStreamQuery(g_stream)) == CUDA_ERROR_NOT_READY)
        ;
    CHECK(r);
    return NULL;
}

struct queued {
    uint32_t *pinned;
    CUdeviceptr d;
};

/* Queues a fill and a copy into pinned memory on this thread's per-thread default stream and records g_event there. */
static void *queue_on_own_stream(void *arg)
{
    struct queued *q = arg;
    CHECK(cuCtxSetCurrent(g_ctx));
    CHECK(cuMemsetD32Async(q->d, 17, WORDS, CU_STREAM_PER_THREAD));
    CHECK(cuMemcpyDtoHAsync(q->pinned, q->d, WORDS * 4, CU_STREAM_PER_THREAD));
    CHECK(cuEventRecord(g_event, CU_STREAM_PER_THREAD));
    return NULL;
}

static void *queue_copy(void *arg)
{
    struct queued *q = arg;
    CHECK(cuCtxSetCurrent(g_ctx));
    CHECK(cuMemcpyDtoHAsync(q->pinned, q->d, WORDS * 4, g_stream));
    return NULL;
}

static void in_other_thread(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    if (pthread_create(&t, NULL, fn, arg) != 0) {
        printf("pthread_create failed\n");
        exit(2);
    }
    pthread_join(t, NULL);
}

/* Fills d with `value` on the stream, then queues its copy into `pinned` on the stream (main thread). */
static void queue_fill_and_copy(uint32_t *pinned, CUdeviceptr d, unsigned int value)
{
    memset(pinned, 0, WORDS * 4);
    CHECK(cuMemsetD32Async(d, value, WORDS, g_stream));
    CHECK(cuMemcpyDtoHAsync(pinned, d, WORDS * 4, g_stream));
}

static int all_equal(const uint32_t *w, unsigned int value)
{
    for (int i = 0; i < WORDS; i++)
        if (w[i] != value)
            return 0;
    return 1;
}

int main(void)
{
    CUdevice dev;
    g_ctx = setup(&dev);
    CHECK(cuStreamCreate(&g_stream, CU_STREAM_NON_BLOCKING));
    CHECK(cuEventCreate(&g_event, CU_EVENT_DISABLE_TIMING));
    CUdeviceptr d;
    CHECK(cuMemAlloc(&d, WORDS * 4));
    uint32_t *pinned;
    CHECK(cuMemAllocHost((void **)&pinned, WORDS * 4));

    /* 1. Into pageable memory: in place when the call returns, before any synchronizing call. */
    uint32_t count = 0;
    CHECK(cuMemsetD32Async(d, 5180, WORDS, g_stream));
    CHECK(cuMemcpyDtoHAsync(&count, d, 4, g_stream));
    expect(count == 5180, "pageable async copy in place when the call returns");
    uint32_t rows[4][3];
    memset(rows, 0, sizeof rows);
    CUDA_MEMCPY2D p;
    memset(&p, 0, sizeof p);
    p.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    p.srcDevice = d;
    p.srcPitch = 64;
    p.dstMemoryType = CU_MEMORYTYPE_HOST;
    p.dstHost = rows;
    p.dstPitch = sizeof rows[0];
    p.WidthInBytes = sizeof rows[0];
    p.Height = 4;
    CHECK(cuMemcpy2DAsync(&p, g_stream));
    expect(rows[3][2] == 5180 && rows[0][0] == 5180, "pageable async 2D copy in place when the call returns");

    uint32_t slices[3][2][2];
    memset(slices, 0, sizeof slices);
    CUDA_MEMCPY3D p3;
    memset(&p3, 0, sizeof p3);
    p3.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    p3.srcDevice = d;
    p3.srcPitch = 64;
    p3.srcHeight = 4;
    p3.dstMemoryType = CU_MEMORYTYPE_HOST;
    p3.dstHost = slices;
    p3.dstPitch = sizeof slices[0][0];
    p3.dstHeight = 2;
    p3.WidthInBytes = sizeof slices[0][0];
    p3.Height = 2;
    p3.Depth = 3;
    CHECK(cuMemcpy3DAsync(&p3, g_stream));
    expect(slices[0][0][0] == 5180 && slices[2][1][1] == 5180, "pageable async 3D copy in place when the call returns");

    /* 2-4. Pinned memory, the copy queued by the main thread, the wait made by another. */
    queue_fill_and_copy(pinned, d, 12);
    in_other_thread(sync_stream, NULL);
    expect(all_equal(pinned, 12), "pinned copy, stream synchronized by another thread");
    queue_fill_and_copy(pinned, d, 13);
    CHECK(cuEventRecord(g_event, g_stream));
    in_other_thread(sync_event, NULL);
    expect(all_equal(pinned, 13), "pinned copy, event synchronized by another thread");
    queue_fill_and_copy(pinned, d, 14);
    in_other_thread(poll_stream, NULL);
    expect(all_equal(pinned, 14), "pinned copy, stream found complete by another thread's query");

    /* 5. The copy queued by another thread, the main thread synchronizing the context. */
    memset(pinned, 0, WORDS * 4);
    CHECK(cuMemsetD32Async(d, 15, WORDS, g_stream));
    struct queued q = {pinned, d};
    in_other_thread(queue_copy, &q);
    CHECK(cuCtxSynchronize());
    expect(all_equal(pinned, 15), "pinned copy queued by another thread, context synchronized");

    /* 6. A pageable copy and a wait for its stream, as `.item()` makes them. */
    int ok = 1;
    for (unsigned int i = 0; i < ROUNDS; i++) {
        CHECK(cuMemsetD32Async(d, 100 + i, 1, g_stream));
        CHECK(cuMemcpyDtoHAsync(&count, d, 4, g_stream));
        CHECK(cuStreamSynchronize(g_stream));
        ok &= count == 100 + i;
    }
    expect(ok, "pageable copy then stream synchronize, 20 times");

    /* 7. Waits for another stream (its event found complete, the stream synchronized) end nothing on this one:
     * the copy behind a running kernel comes back at this stream's own wait. */
    CUmodule mod = load_kernels();
    CUfunction spin = get_function(mod, "spin");
    CUstream other;
    CHECK(cuStreamCreate(&other, CU_STREAM_NON_BLOCKING));
    CUevent other_event;
    CHECK(cuEventCreate(&other_event, CU_EVENT_DISABLE_TIMING));
    CUdeviceptr spun;
    CHECK(cuMemAlloc(&spun, 4));
    memset(pinned, 0, WORDS * 4);
    unsigned long long cycles = 200000000ull;
    void *spin_args[] = {&cycles, &spun};
    CHECK(cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, g_stream, spin_args, NULL));
    CHECK(cuMemsetD32Async(d, 16, WORDS, g_stream));
    CHECK(cuMemcpyDtoHAsync(pinned, d, WORDS * 4, g_stream));
    CHECK(cuEventRecord(other_event, other));
    CUresult r;
    while ((r = cuEventQuery(other_event)) == CUDA_ERROR_NOT_READY)
        ;
    CHECK(r);
    CHECK(cuStreamSynchronize(other));
    CHECK(cuStreamSynchronize(g_stream));
    expect(all_equal(pinned, 16), "pinned copy behind a running kernel, after waits for another stream");
    CHECK(cuMemFree(spun));
    CHECK(cuEventDestroy(other_event));
    CHECK(cuStreamDestroy(other));
    CHECK(cuModuleUnload(mod));

    /* 8. A copy another thread queued on its per-thread default stream, waited for here through an event recorded
     * there. */
    memset(pinned, 0, WORDS * 4);
    in_other_thread(queue_on_own_stream, &q);
    CHECK(cuEventSynchronize(g_event));
    expect(all_equal(pinned, 17), "pinned copy on another thread's per-thread stream, event synchronized here");

    CHECK(cuMemFreeHost(pinned));
    CHECK(cuMemFree(d));
    CHECK(cuEventDestroy(g_event));
    CHECK(cuStreamDestroy(g_stream));
    teardown(dev);
    printf("done\n");
    return finish();
}
