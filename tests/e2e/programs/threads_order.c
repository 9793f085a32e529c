/* Work two threads put on one stream reaches the GPU in the order they submitted it: thread A queues many
 * asynchronous memsets on the legacy stream and hands over to thread B (no CUDA call in between), which queues one
 * more and reads the value back. Natively the stream serialises them in submission order; through vGPU each thread
 * has its own connection and server thread, so this checks the server keeps the client's cross-thread order.
 * Also loads modules from files: cuModuleLoad, cuLibraryLoadFromFile, cuModuleLoadDataEx. */
#include <pthread.h>
#include <unistd.h>

#include "common.h"

static CUcontext g_ctx;
static CUdeviceptr g_buf;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cond = PTHREAD_COND_INITIALIZER;
static int g_turn; /* round number thread B may run */
static int g_done; /* rounds thread B finished */
static unsigned g_seen[32];

enum { ROUNDS = 20, QUEUED = 2000 };

static void *second_thread(void *arg)
{
    (void)arg;
    CHECK(cuCtxSetCurrent(g_ctx));
    for (int round = 1; round <= ROUNDS; round++) {
        pthread_mutex_lock(&g_lock);
        while (g_turn < round)
            pthread_cond_wait(&g_cond, &g_lock);
        pthread_mutex_unlock(&g_lock);
        CHECK(cuMemsetD32Async(g_buf, 100000u + (unsigned)round, 1, NULL));
        unsigned v = 0;
        CHECK(cuMemcpyDtoH(&v, g_buf, sizeof v));
        g_seen[round] = v;
        pthread_mutex_lock(&g_lock);
        g_done = round;
        pthread_cond_broadcast(&g_cond);
        pthread_mutex_unlock(&g_lock);
    }
    return NULL;
}

static void load_from_files(void)
{
    char path[] = "/tmp/vgpu-e2e-ptx-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        printf("FAIL mkstemp\n");
        exit(1);
    }
    size_t len = strlen(kernels_ptx);
    if (write(fd, kernels_ptx, len) != (ssize_t)len) {
        printf("FAIL write\n");
        exit(1);
    }
    close(fd);

    CUmodule mod;
    CHECK(cuModuleLoad(&mod, path));
    CUfunction fill = get_function(mod, "fill_u32");
    CUdeviceptr d;
    const unsigned n = 4096;
    CHECK(cuMemAlloc(&d, n * sizeof(unsigned)));
    unsigned value = 0x5eed;
    void *params[] = {&d, &value, (void *)&n};
    CHECK(cuLaunchKernel(fill, ceil_div(n, 256), 1, 1, 256, 1, 1, 0, NULL, params, NULL));
    unsigned host[4096];
    CHECK(cuMemcpyDtoH(host, d, sizeof host));
    int ok = 1;
    for (unsigned i = 0; i < n; i++)
        ok &= host[i] == value + i; /* fill_u32 writes value + index */
    result(ok, "kernel from cuModuleLoad");
    CHECK(cuModuleUnload(mod));

    CUlibrary lib;
    CHECK(cuLibraryLoadFromFile(&lib, path, NULL, NULL, 0, NULL, NULL, 0));
    CUkernel k;
    CHECK(cuLibraryGetKernel(&k, lib, "fill_u32"));
    printf("library from file: kernel found\n");
    CHECK(cuLibraryUnload(lib));

    CHECK(cuModuleLoadDataEx(&mod, kernels_ptx, 0, NULL, NULL));
    get_function(mod, "vector_add");
    printf("cuModuleLoadDataEx without options: function found\n");
    CHECK(cuModuleUnload(mod));

    unlink(path);
    ERROR_CASE("cuModuleLoad of a missing file", cuModuleLoad(&mod, path));
    ERROR_CASE("cuLibraryLoadFromFile of a missing file", cuLibraryLoadFromFile(&lib, path, NULL, NULL, 0, NULL, NULL, 0));
    CHECK(cuMemFree(d));
}

int main(void)
{
    CUdevice dev;
    g_ctx = setup(&dev);
    load_from_files();

    CHECK(cuMemAlloc(&g_buf, sizeof(unsigned)));
    CHECK(cuMemsetD32(g_buf, 0, 1));
    pthread_t t;
    if (pthread_create(&t, NULL, second_thread, NULL) != 0) {
        printf("FAIL pthread_create\n");
        return 1;
    }
    for (int round = 1; round <= ROUNDS; round++) {
        for (unsigned i = 0; i < QUEUED; i++)
            CHECK(cuMemsetD32Async(g_buf, i, 1, NULL));
        pthread_mutex_lock(&g_lock);
        g_turn = round;
        pthread_cond_broadcast(&g_cond);
        while (g_done < round)
            pthread_cond_wait(&g_cond, &g_lock);
        pthread_mutex_unlock(&g_lock);
    }
    pthread_join(t, NULL);
    int wrong = 0;
    for (int round = 1; round <= ROUNDS; round++)
        wrong += g_seen[round] != 100000u + (unsigned)round;
    printf("rounds whose last write was not the second thread's: %d of %d\n", wrong, ROUNDS);
    expect(wrong == 0, "cross-thread stream order");
    CHECK(cuMemFree(g_buf));
    teardown(dev);
    return finish();
}
