/* The driver's private module walk (export table 6e163fbe, slot 7), as cuFFT uses it: every function of a
 * module is visited once with the handle cuModuleGetFunction gives and its name, and the walk returns their
 * number. Also: cuModuleGetFunction gives one handle per function however often it is asked. */
#include "common.h"

typedef void (*visitor_fn)(void *data, CUfunction function, const char *name);
typedef size_t (*module_walk_fn)(CUcontext ctx, CUmodule module, visitor_fn visit, void *data);

#define MAX_SEEN 64
struct seen {
    int count;
    CUfunction functions[MAX_SEEN];
    char names[MAX_SEEN][64];
};

static void visit(void *data, CUfunction function, const char *name)
{
    struct seen *s = data;
    if (s->count < MAX_SEEN) {
        s->functions[s->count] = function;
        snprintf(s->names[s->count], sizeof s->names[0], "%s", name ? name : "(null)");
    }
    s->count++;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int main(void)
{
    CUcontext ctx = setup(NULL);
    CUmodule mod;
    CHECK(cuModuleLoadData(&mod, kernels_ptx));
    unsigned int count = 0;
    CHECK(cuModuleGetFunctionCount(&count, mod));
    printf("module functions: %u\n", count);

    const CUuuid tools_module = {{0x6e, 0x16, 0x3f, 0xbe, 0xb9, 0x58, 0x44, 0x4d, 0x83, 0x5c, 0xe1, 0x82, 0xaf,
                                  0xf1, 0x99, 0x1e}};
    const void *const *table = NULL;
    CHECK(cuGetExportTable((const void **)&table, &tools_module));
    printf("table 6e163fbe: %zu bytes\n", (size_t)(uintptr_t)table[0]);
    module_walk_fn walk = (module_walk_fn)table[7];

    struct seen s = {0};
    size_t n = walk(ctx, mod, visit, &s);
    printf("walk returned %zu, visited %d\n", n, s.count);
    expect(n == count && s.count == (int)count, "walk visits every function once and returns their number");

    const char *sorted[MAX_SEEN];
    int mismatches = 0;
    for (int i = 0; i < s.count && i < MAX_SEEN; i++) {
        CUfunction f = NULL;
        CHECK(cuModuleGetFunction(&f, mod, s.names[i]));
        if (f != s.functions[i])
            mismatches++;
        const char *name = NULL;
        CHECK(cuFuncGetName(&name, s.functions[i]));
        if (strcmp(name, s.names[i]) != 0)
            mismatches++;
        sorted[i] = s.names[i];
    }
    expect(mismatches == 0, "each visited handle is cuModuleGetFunction's and cuFuncGetName names it");
    qsort(sorted, s.count < MAX_SEEN ? s.count : MAX_SEEN, sizeof sorted[0], by_name);
    for (int i = 0; i < s.count && i < MAX_SEEN; i++)
        printf("visited: %s\n", sorted[i]);

    CUfunction a = NULL, b = NULL;
    CHECK(cuModuleGetFunction(&a, mod, "saxpy"));
    CHECK(cuModuleGetFunction(&b, mod, "saxpy"));
    expect(a == b, "cuModuleGetFunction twice gives one handle");

    /* A visited handle launches like any other. */
    CUfunction fill = NULL;
    for (int i = 0; i < s.count && i < MAX_SEEN; i++)
        if (strcmp(s.names[i], "fill_u32") == 0)
            fill = s.functions[i];
    expect(fill != NULL, "fill_u32 was visited");
    if (fill) {
        enum { N = 1024 };
        CUdeviceptr d;
        CHECK(cuMemAlloc(&d, N * sizeof(uint32_t)));
        unsigned int value = 0xabcd1234u, n_elems = N;
        void *args[] = {&d, &value, &n_elems};
        CHECK(cuLaunchKernel(fill, N / 256, 1, 1, 256, 1, 1, 0, NULL, args, NULL));
        uint32_t host[N];
        CHECK(cuMemcpyDtoH(host, d, sizeof host));
        int good = 1;
        for (int i = 0; i < N; i++)
            good &= host[i] == value + (uint32_t)i;
        result(good, "fill_u32 through a visited handle");
        CHECK(cuMemFree(d));
    }

    CHECK(cuModuleUnload(mod));
    printf("done\n");
    return finish();
}
