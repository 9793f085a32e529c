/*
 * Shared helpers of the end-to-end test programs (CUDA driver API only, C11).
 *
 * Output rules (tests/e2e/run.py relies on them):
 *   - output is deterministic;
 *   - "result: ..."  lines depend on a kernel having really run (dropped on the emulated backend);
 *   - "timing: ..."  lines depend on time (never compared);
 *   - "device: ..."  lines are facts of the GPU (name, memory, attributes) that the emulated backend
 *                    may answer differently (dropped on the emulated backend, compared on a real GPU);
 *   - every other line must be identical natively and through vGPU on any backend.
 * A program exits 0 when every CHECK passed and every copy/host-side check matched. A wrong kernel
 * result prints "result: ... FAIL" (the runner fails it where results are compared) but does not
 * change the exit status, so that the same binary passes on the emulated backend.
 */
#ifndef E2E_COMMON_H
#define E2E_COMMON_H

#include <cuda.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels_ptx.h"

static int g_failures __attribute__((unused));

/* Name of a CUresult, or "CUresult(<n>)" when the driver does not know it. */
static inline const char *err_name(CUresult r)
{
    static char buf[8][32];
    static int next;
    const char *name = NULL;
    if (cuGetErrorName(r, &name) == CUDA_SUCCESS && name != NULL)
        return name;
    char *b = buf[next++ % 8];
    snprintf(b, sizeof buf[0], "CUresult(%d)", (int)r);
    return b;
}

/* Any result other than CUDA_SUCCESS ends the program with status 1. */
#define CHECK(call)                                                                                \
    do {                                                                                           \
        CUresult check_r_ = (call);                                                                \
        if (check_r_ != CUDA_SUCCESS) {                                                            \
            printf("FAIL %s -> %s (%d)\n", #call, err_name(check_r_), (int)check_r_);              \
            fprintf(stderr, "%s:%d: FAIL %s -> %s (%d)\n", __FILE__, __LINE__, #call,              \
                    err_name(check_r_), (int)check_r_);                                            \
            fflush(stdout);                                                                        \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* An expected error: prints "error-case <name>: <CUresult name>" and never aborts. */
#define ERROR_CASE(name, call)                                                                     \
    do {                                                                                           \
        CUresult ec_r_ = (call);                                                                   \
        printf("error-case %s: %s\n", (name), err_name(ec_r_));                                    \
    } while (0)

/* A host-side check whose outcome is the same on every backend (copies, error codes...). */
static inline void expect(int ok, const char *what)
{
    if (ok) {
        printf("%s: ok\n", what);
    } else {
        printf("%s: FAIL\n", what);
        g_failures++;
    }
}

/* A check of what a kernel computed: a "result:" line, never fatal. */
static inline void result(int ok, const char *what)
{
    printf("result: %s: %s\n", what, ok ? "ok" : "FAIL");
}

/* Exit status of main: 1 when a plain check failed. */
static inline int finish(void)
{
    fflush(stdout);
    return g_failures ? 1 : 0;
}

/* Deterministic bytes (xorshift32), different for each seed. */
static inline void fill_pattern(void *buf, size_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 0x9e3779b9u;
    if (x == 0)
        x = 1;
    unsigned char *p = buf;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (unsigned char)(x >> 7);
    }
}

/* Offset of the first differing byte, or -1 when equal. */
static inline long long first_diff(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return (long long)i;
    return -1;
}

/* Byte-for-byte comparison printed as "<what>: ok" or "<what>: FAIL (first difference at N)". */
static inline void expect_bytes(const void *got, const void *want, size_t n, const char *what)
{
    long long d = first_diff(got, want, n);
    if (d < 0) {
        printf("%s: ok\n", what);
    } else {
        printf("%s: FAIL (first difference at byte %lld of %zu)\n", what, d, n);
        g_failures++;
    }
}

static inline void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        printf("FAIL malloc(%zu)\n", n);
        exit(1);
    }
    return p;
}

static inline double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* cuInit, device 0, its primary context made current. */
static inline CUcontext setup(CUdevice *dev_out)
{
    CUdevice dev;
    CUcontext ctx;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    if (dev_out)
        *dev_out = dev;
    return ctx;
}

static inline void teardown(CUdevice dev)
{
    CHECK(cuCtxSynchronize());
    CHECK(cuCtxSetCurrent(NULL));
    CHECK(cuDevicePrimaryCtxRelease(dev));
}

/* The test kernels (kernels/kernels.cu) as a module. */
static inline CUmodule load_kernels(void)
{
    CUmodule mod;
    CHECK(cuModuleLoadData(&mod, kernels_ptx));
    return mod;
}

static inline CUfunction get_function(CUmodule mod, const char *name)
{
    CUfunction f;
    CHECK(cuModuleGetFunction(&f, mod, name));
    return f;
}

static inline unsigned int ceil_div(size_t n, unsigned int d)
{
    return (unsigned int)((n + d - 1) / d);
}

#endif
