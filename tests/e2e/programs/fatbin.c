/* Fat binaries (what nvcc-built programs carry): sm_90 SASS + compute_80 PTX, compressed (nvcc's
 * default) and uncompressed, through cuModuleLoadFatBinary, cuModuleLoadData and cuLibraryLoadData.
 * On a GPU other than sm_90 the driver JIT-compiles the PTX. */
#include "common.h"
#include "kernels_fatbin.h"

static void vector_add_with(CUfunction f, const char *how)
{
    const unsigned int n = 4099;
    float a[4099], b[4099], c[4099];
    for (unsigned int i = 0; i < n; i++)
        a[i] = (float)i, b[i] = 0.5f * (float)i;
    CUdeviceptr da, db, dc;
    CHECK(cuMemAlloc(&da, sizeof a));
    CHECK(cuMemAlloc(&db, sizeof b));
    CHECK(cuMemAlloc(&dc, sizeof c));
    CHECK(cuMemcpyHtoD(da, a, sizeof a));
    CHECK(cuMemcpyHtoD(db, b, sizeof b));
    CHECK(cuMemsetD32(dc, 0, n));
    unsigned int nn = n;
    void *args[] = {&da, &db, &dc, &nn};
    CHECK(cuLaunchKernel(f, ceil_div(n, 128), 1, 1, 128, 1, 1, 0, NULL, args, NULL));
    CHECK(cuMemcpyDtoH(c, dc, sizeof c));
    int bad = 0;
    for (unsigned int i = 0; i < n; i++)
        bad += c[i] != 1.5f * (float)i;
    char what[128];
    snprintf(what, sizeof what, "vector_add from %s", how);
    result(bad == 0, what);
    CHECK(cuMemFree(da));
    CHECK(cuMemFree(db));
    CHECK(cuMemFree(dc));
}

static void module_checks(CUmodule mod, const char *how)
{
    char what[160];
    CUfunction f;
    CHECK(cuModuleGetFunction(&f, mod, "vector_add"));
    CUfunction g;
    snprintf(what, sizeof what, "%s: missing function", how);
    ERROR_CASE(what, cuModuleGetFunction(&g, mod, "no_such_kernel"));
    CUdeviceptr table;
    size_t bytes = 0;
    CHECK(cuModuleGetGlobal(&table, &bytes, mod, "g_table"));
    printf("%s: global g_table %zu bytes\n", how, bytes);
    float t[256], back[256];
    fill_pattern(t, sizeof t, 3);
    CHECK(cuMemcpyHtoD(table, t, sizeof t));
    CHECK(cuMemcpyDtoH(back, table, sizeof back));
    snprintf(what, sizeof what, "%s: global write/read", how);
    expect_bytes(back, t, sizeof t, what);
    int regs = 0, bin = 0;
    CHECK(cuFuncGetAttribute(&regs, CU_FUNC_ATTRIBUTE_NUM_REGS, f));
    CHECK(cuFuncGetAttribute(&bin, CU_FUNC_ATTRIBUTE_BINARY_VERSION, f));
    printf("device: %s: vector_add regs=%d binary=%d\n", how, regs, bin);
    vector_add_with(f, how);
}

int main(void)
{
    CUdevice dev;
    setup(&dev);
    printf("fat binary sizes: %zu compressed, %zu plain\n", sizeof kernels_fatbin, sizeof kernels_plain_fatbin);

    const struct {
        const void *image;
        const char *name;
    } images[] = {{kernels_fatbin, "compressed fatbin"}, {kernels_plain_fatbin, "plain fatbin"}};

    for (int i = 0; i < 2; i++) {
        char how[96];
        CUmodule mod;
        CHECK(cuModuleLoadFatBinary(&mod, images[i].image));
        snprintf(how, sizeof how, "cuModuleLoadFatBinary %s", images[i].name);
        module_checks(mod, how);
        CHECK(cuModuleUnload(mod));

        CHECK(cuModuleLoadData(&mod, images[i].image));
        snprintf(how, sizeof how, "cuModuleLoadData %s", images[i].name);
        module_checks(mod, how);
        CHECK(cuModuleUnload(mod));

        CUlibrary lib;
        CHECK(cuLibraryLoadData(&lib, images[i].image, NULL, NULL, 0, NULL, NULL, 0));
        CUkernel k;
        CHECK(cuLibraryGetKernel(&k, lib, "vector_add"));
        CUfunction f;
        CHECK(cuKernelGetFunction(&f, k));
        snprintf(how, sizeof how, "cuLibraryLoadData %s", images[i].name);
        vector_add_with(f, how);
        CUdeviceptr g;
        size_t bytes = 0;
        CHECK(cuLibraryGetGlobal(&g, &bytes, lib, "g_counter"));
        printf("%s: global g_counter %zu bytes\n", how, bytes);
        CHECK(cuLibraryUnload(lib));
    }

    /* A fat binary whose header is damaged. */
    unsigned char *broken = xmalloc(sizeof kernels_plain_fatbin);
    memcpy(broken, kernels_plain_fatbin, sizeof kernels_plain_fatbin);
    broken[0] ^= 0xff;
    CUmodule mod;
    ERROR_CASE("cuModuleLoadFatBinary with a damaged magic", cuModuleLoadFatBinary(&mod, broken));
    free(broken);

    teardown(dev);
    printf("done\n");
    return finish();
}
