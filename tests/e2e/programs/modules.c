/* Modules and libraries: cuModuleLoadData (PTX), GetFunction, GetGlobal (write/read a global),
 * Unload; cuLibraryLoadData, GetKernel, cuKernelGetFunction, GetGlobal; cuFuncGetAttribute. */
#include "common.h"

static const char *const names[] = {"vector_add", "saxpy", "fill_u32", "reduce_pass1", "reduce_pass2", "unused_params",
                                    "spin", "mixed_params", "use_globals", "empty"};

static void func_attributes(CUfunction f, const char *name)
{
    int regs = -1, maxt = -1, ptx = -1, bin = -1, shared = -1, local = -1;
    CHECK(cuFuncGetAttribute(&regs, CU_FUNC_ATTRIBUTE_NUM_REGS, f));
    CHECK(cuFuncGetAttribute(&maxt, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, f));
    CHECK(cuFuncGetAttribute(&ptx, CU_FUNC_ATTRIBUTE_PTX_VERSION, f));
    CHECK(cuFuncGetAttribute(&bin, CU_FUNC_ATTRIBUTE_BINARY_VERSION, f));
    CHECK(cuFuncGetAttribute(&shared, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, f));
    CHECK(cuFuncGetAttribute(&local, CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, f));
    printf("device: %s regs=%d max_threads=%d ptx=%d binary=%d shared=%d local=%d\n", name, regs, maxt, ptx,
           bin, shared, local);
    char what[128];
    snprintf(what, sizeof what, "%s attributes: regs > 0, 0 < max threads <= 1024", name);
    expect(regs > 0 && maxt > 0 && maxt <= 1024, what);
}

int main(void)
{
    CUdevice dev;
    setup(&dev);

    /* ---- module ---- */
    CUmodule mod;
    CHECK(cuModuleLoadData(&mod, kernels_ptx));
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        CUfunction f;
        CHECK(cuModuleGetFunction(&f, mod, names[i]));
        printf("module function %s: found\n", names[i]);
    }
    CUfunction f;
    ERROR_CASE("module function missing", cuModuleGetFunction(&f, mod, "no_such_kernel"));
    ERROR_CASE("module function empty name", cuModuleGetFunction(&f, mod, ""));
    ERROR_CASE("module function of a global variable's name", cuModuleGetFunction(&f, mod, "g_table"));

    func_attributes(get_function(mod, "vector_add"), "vector_add");
    func_attributes(get_function(mod, "reduce_pass1"), "reduce_pass1");
    func_attributes(get_function(mod, "empty"), "empty");
    int v;
    ERROR_CASE("function attribute out of range",
               cuFuncGetAttribute(&v, (CUfunction_attribute)999, get_function(mod, "empty")));

    CUdeviceptr g_table, c_scale, g_counter;
    size_t bytes = 0;
    CHECK(cuModuleGetGlobal(&g_table, &bytes, mod, "g_table"));
    printf("global g_table: %zu bytes\n", bytes);
    CHECK(cuModuleGetGlobal(&c_scale, &bytes, mod, "c_scale"));
    printf("global c_scale: %zu bytes\n", bytes);
    CHECK(cuModuleGetGlobal(&g_counter, NULL, mod, "g_counter"));
    bytes = 0;
    CHECK(cuModuleGetGlobal(NULL, &bytes, mod, "g_counter"));
    printf("global g_counter: %zu bytes (size only)\n", bytes);
    CUdeviceptr none;
    ERROR_CASE("module global missing", cuModuleGetGlobal(&none, &bytes, mod, "no_such_global"));
    ERROR_CASE("module global of a kernel's name", cuModuleGetGlobal(&none, &bytes, mod, "vector_add"));

    float table[256], back[256];
    for (int i = 0; i < 256; i++)
        table[i] = (float)i - 100.0f;
    int scale = 3;
    CHECK(cuMemcpyHtoD(g_table, table, sizeof table));
    CHECK(cuMemcpyHtoD(c_scale, &scale, sizeof scale));
    CHECK(cuMemsetD32(g_counter, 0, 1));
    CHECK(cuMemcpyDtoH(back, g_table, sizeof back));
    expect_bytes(back, table, sizeof table, "global g_table write/read");
    int scale_back = 0;
    CHECK(cuMemcpyDtoH(&scale_back, c_scale, sizeof scale_back));
    expect(scale_back == 3, "constant c_scale write/read");

    const unsigned int n = 1000;
    CUdeviceptr out;
    CHECK(cuMemAlloc(&out, n * sizeof(float)));
    unsigned int nn = n;
    void *args[] = {&out, &nn};
    CHECK(cuLaunchKernel(get_function(mod, "use_globals"), ceil_div(n, 128), 1, 1, 128, 1, 1, 0, NULL, args,
                         NULL));
    float res[1000];
    unsigned int counter = 0;
    CHECK(cuMemcpyDtoH(res, out, sizeof res));
    CHECK(cuMemcpyDtoH(&counter, g_counter, sizeof counter));
    int bad = 0;
    for (unsigned int i = 0; i < n; i++)
        bad += res[i] != table[i % 256] * 3.0f;
    result(bad == 0, "use_globals read the globals");
    printf("result: g_counter %u\n", counter);

    /* A second module from the same PTX has its own globals. */
    CUmodule mod2;
    CHECK(cuModuleLoadData(&mod2, kernels_ptx));
    CUdeviceptr g_counter2;
    CHECK(cuModuleGetGlobal(&g_counter2, &bytes, mod2, "g_counter"));
    expect(g_counter2 != g_counter, "second module's global has another address");
    unsigned int seven = 7, five = 5, r1 = 0, r2 = 0;
    CHECK(cuMemcpyHtoD(g_counter, &five, 4));
    CHECK(cuMemcpyHtoD(g_counter2, &seven, 4));
    CHECK(cuMemcpyDtoH(&r1, g_counter, 4));
    CHECK(cuMemcpyDtoH(&r2, g_counter2, 4));
    expect(r1 == 5 && r2 == 7, "globals of two modules are separate");
    CHECK(cuModuleUnload(mod2));
    CHECK(cuModuleUnload(mod));

    /* ---- library ---- */
    CUlibrary lib;
    CHECK(cuLibraryLoadData(&lib, kernels_ptx, NULL, NULL, 0, NULL, NULL, 0));
    CUkernel kern;
    CHECK(cuLibraryGetKernel(&kern, lib, "vector_add"));
    CUkernel missing;
    ERROR_CASE("library kernel missing", cuLibraryGetKernel(&missing, lib, "no_such_kernel"));
    CUfunction kf;
    CHECK(cuKernelGetFunction(&kf, kern));
    CUfunction kf_again;
    CHECK(cuKernelGetFunction(&kf_again, kern));
    expect(kf_again == kf, "cuKernelGetFunction twice in one context: the same function");
    func_attributes(kf, "library vector_add");

    CUdeviceptr lg;
    CHECK(cuLibraryGetGlobal(&lg, &bytes, lib, "g_table"));
    printf("library global g_table: %zu bytes\n", bytes);
    ERROR_CASE("library global missing", cuLibraryGetGlobal(&lg, &bytes, lib, "no_such_global"));
    for (int i = 0; i < 256; i++)
        table[i] = (float)(i * i);
    CHECK(cuMemcpyHtoD(lg, table, sizeof table));
    CHECK(cuMemcpyDtoH(back, lg, sizeof back));
    expect_bytes(back, table, sizeof table, "library global write/read");

    /* vector_add through the CUfunction of the kernel, and through the CUkernel itself. */
    const unsigned int m = 5000;
    float *a = xmalloc(m * 4), *b = xmalloc(m * 4), *c = xmalloc(m * 4);
    for (unsigned int i = 0; i < m; i++)
        a[i] = (float)i, b[i] = 2.0f * (float)i;
    CUdeviceptr da, db, dc;
    CHECK(cuMemAlloc(&da, m * 4));
    CHECK(cuMemAlloc(&db, m * 4));
    CHECK(cuMemAlloc(&dc, m * 4));
    CHECK(cuMemcpyHtoD(da, a, m * 4));
    CHECK(cuMemcpyHtoD(db, b, m * 4));
    unsigned int mm = m;
    void *vargs[] = {&da, &db, &dc, &mm};
    CHECK(cuMemsetD32(dc, 0, m));
    CHECK(cuLaunchKernel(kf, ceil_div(m, 256), 1, 1, 256, 1, 1, 0, NULL, vargs, NULL));
    CHECK(cuMemcpyDtoH(c, dc, m * 4));
    bad = 0;
    for (unsigned int i = 0; i < m; i++)
        bad += c[i] != 3.0f * (float)i;
    result(bad == 0, "launch through cuKernelGetFunction");
    CHECK(cuMemsetD32(dc, 0, m));
    CHECK(cuLaunchKernel((CUfunction)kern, ceil_div(m, 256), 1, 1, 256, 1, 1, 0, NULL, vargs, NULL));
    CHECK(cuMemcpyDtoH(c, dc, m * 4));
    bad = 0;
    for (unsigned int i = 0; i < m; i++)
        bad += c[i] != 3.0f * (float)i;
    result(bad == 0, "launch through the CUkernel handle");

    CHECK(cuMemFree(da));
    CHECK(cuMemFree(db));
    CHECK(cuMemFree(dc));
    CHECK(cuMemFree(out));
    CHECK(cuLibraryUnload(lib));
    free(a), free(b), free(c);
    teardown(dev);
    printf("done\n");
    return finish();
}
