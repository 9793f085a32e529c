/* Kernel arguments: every scalar size, a struct by value, alignment padding; passed as kernelParams
 * and as the packed `extra` buffer (CU_LAUNCH_PARAM_BUFFER_POINTER/SIZE). */
#include "common.h"

struct Pair {
    int a;
    double b;
};

/* Offsets of mixed_params' parameters (see kernels/kernels.cu). */
enum { OFF_C = 0, OFF_S = 2, OFF_I = 4, OFF_D = 8, OFF_F = 16, OFF_LL = 24, OFF_PAIR = 32, OFF_OUT = 48,
       MIXED_SIZE = 56 };

static const char c = -5;
static const short s = -1234;
static const int i = 123456789;
static const double d = 3.141592653589793;
static const float f = -2.5f;
static const long long ll = -1234567890123LL;
static const struct Pair pair = {-42, 2.718281828459045};

static int check_mixed(CUdeviceptr out, const char *how)
{
    unsigned long long w[8];
    CHECK(cuMemcpyDtoH(w, out, sizeof w));
    unsigned long long want[8];
    want[0] = (unsigned long long)(long long)c;
    want[1] = (unsigned long long)(long long)s;
    want[2] = (unsigned long long)(long long)i;
    memcpy(&want[3], &d, 8);
    uint32_t fb;
    memcpy(&fb, &f, 4);
    want[4] = fb;
    want[5] = (unsigned long long)ll;
    want[6] = (unsigned long long)(long long)pair.a;
    memcpy(&want[7], &pair.b, 8);
    int ok = memcmp(w, want, sizeof w) == 0;
    char what[96];
    snprintf(what, sizeof what, "mixed_params via %s", how);
    result(ok, what);
    return ok;
}

int main(void)
{
    CUdevice dev;
    setup(&dev);
    CUmodule mod = load_kernels();
    CUfunction mixed = get_function(mod, "mixed_params");
    CUfunction vadd = get_function(mod, "vector_add");
    CUfunction saxpy = get_function(mod, "saxpy");
    CUfunction empty = get_function(mod, "empty");

    CUdeviceptr out;
    CHECK(cuMemAlloc(&out, 64));

    /* kernelParams. */
    CHECK(cuMemsetD8(out, 0, 64));
    char pc = c;
    short ps = s;
    int pi = i;
    double pd = d;
    float pf = f;
    long long pll = ll;
    struct Pair pp = pair;
    void *args[] = {&pc, &ps, &pi, &pd, &pf, &pll, &pp, &out};
    CHECK(cuLaunchKernel(mixed, 1, 1, 1, 1, 1, 1, 0, NULL, args, NULL));
    CHECK(cuCtxSynchronize());
    check_mixed(out, "kernelParams");

    /* extra: one packed buffer laid out with each parameter's alignment. */
    CHECK(cuMemsetD8(out, 0, 64));
    _Alignas(8) unsigned char buf[MIXED_SIZE];
    memset(buf, 0xee, sizeof buf); /* padding bytes hold junk on purpose */
    memcpy(buf + OFF_C, &c, 1);
    memcpy(buf + OFF_S, &s, 2);
    memcpy(buf + OFF_I, &i, 4);
    memcpy(buf + OFF_D, &d, 8);
    memcpy(buf + OFF_F, &f, 4);
    memcpy(buf + OFF_LL, &ll, 8);
    memcpy(buf + OFF_PAIR, &pair.a, 4);
    memcpy(buf + OFF_PAIR + 8, &pair.b, 8);
    memcpy(buf + OFF_OUT, &out, 8);
    size_t size = sizeof buf;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
    CHECK(cuLaunchKernel(mixed, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, extra));
    CHECK(cuCtxSynchronize());
    check_mixed(out, "extra");

    /* extra with the size given before the pointer. */
    CHECK(cuMemsetD8(out, 0, 64));
    void *extra2[] = {CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_END};
    CHECK(cuLaunchKernel(mixed, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, extra2));
    CHECK(cuCtxSynchronize());
    check_mixed(out, "extra (size first)");

    /* vector_add and saxpy through extra: 28-byte buffers (no tail padding). */
    const unsigned int n = 777;
    float ha[777], hb[777], hc[777];
    for (unsigned int k = 0; k < n; k++)
        ha[k] = (float)k, hb[k] = (float)(3 * k);
    CUdeviceptr da, db, dc;
    CHECK(cuMemAlloc(&da, sizeof ha));
    CHECK(cuMemAlloc(&db, sizeof hb));
    CHECK(cuMemAlloc(&dc, sizeof hc));
    CHECK(cuMemcpyHtoD(da, ha, sizeof ha));
    CHECK(cuMemcpyHtoD(db, hb, sizeof hb));
    CHECK(cuMemsetD32(dc, 0, n));
    _Alignas(8) unsigned char vbuf[28];
    memcpy(vbuf + 0, &da, 8);
    memcpy(vbuf + 8, &db, 8);
    memcpy(vbuf + 16, &dc, 8);
    memcpy(vbuf + 24, &n, 4);
    size_t vsize = 28;
    void *vextra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, vbuf, CU_LAUNCH_PARAM_BUFFER_SIZE, &vsize, CU_LAUNCH_PARAM_END};
    CHECK(cuLaunchKernel(vadd, ceil_div(n, 64), 1, 1, 64, 1, 1, 0, NULL, NULL, vextra));
    CHECK(cuMemcpyDtoH(hc, dc, sizeof hc));
    int bad = 0;
    for (unsigned int k = 0; k < n; k++)
        bad += hc[k] != 4.0f * (float)k;
    result(bad == 0, "vector_add via extra");

    float a = 0.5f;
    _Alignas(8) unsigned char sbuf[28];
    memset(sbuf, 0, sizeof sbuf);
    memcpy(sbuf + 0, &a, 4);
    memcpy(sbuf + 8, &da, 8);
    memcpy(sbuf + 16, &dc, 8);
    memcpy(sbuf + 24, &n, 4);
    void *sextra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, sbuf, CU_LAUNCH_PARAM_BUFFER_SIZE, &vsize, CU_LAUNCH_PARAM_END};
    CHECK(cuLaunchKernel(saxpy, 2, 1, 1, 32, 1, 1, 0, NULL, NULL, sextra));
    CHECK(cuMemcpyDtoH(hc, dc, sizeof hc));
    bad = 0;
    for (unsigned int k = 0; k < n; k++)
        bad += hc[k] != 4.5f * (float)k;
    result(bad == 0, "saxpy via extra (float first, pointer padded to 8)");

    /* Multi-dimensional grid and block. */
    CUfunction fill = get_function(mod, "fill_u32");
    CUdeviceptr big;
    const unsigned int m = 100000;
    CHECK(cuMemAlloc(&big, m * 4));
    CHECK(cuMemsetD32(big, 0, m));
    unsigned int value = 1000, mm = m;
    void *fargs[] = {&big, &value, &mm};
    CHECK(cuLaunchKernel(fill, 3, 2, 2, 16, 4, 2, 0, NULL, fargs, NULL));
    unsigned int *hb2 = xmalloc(m * 4);
    CHECK(cuMemcpyDtoH(hb2, big, m * 4));
    bad = 0;
    for (unsigned int k = 0; k < m; k++) /* grid-stride over blockIdx.x/threadIdx.x: 48 a step */
        bad += hb2[k] != value + k;
    result(bad == 0, "fill_u32 with a 3-D grid and block");
    free(hb2);

    /* No parameters: NULL kernelParams, empty extra, or an empty kernelParams array. */
    CHECK(cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
    void *end_only[] = {CU_LAUNCH_PARAM_END};
    CHECK(cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, end_only));
    void *no_args[1] = {NULL};
    CHECK(cuLaunchKernel(empty, 4, 1, 1, 1024, 1, 1, 0, NULL, no_args, NULL));
    CHECK(cuCtxSynchronize());
    printf("empty kernel launches: ok\n");

    CHECK(cuMemFree(out));
    CHECK(cuMemFree(da));
    CHECK(cuMemFree(db));
    CHECK(cuMemFree(dc));
    CHECK(cuMemFree(big));
    CHECK(cuModuleUnload(mod));
    teardown(dev);
    printf("done\n");
    return finish();
}
