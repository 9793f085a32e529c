/* Device queries: count, name, total memory, UUID, attributes, driver version, cuMemGetInfo. */
#include "common.h"

static const struct {
    CUdevice_attribute attr;
    const char *name;
} attrs[] = {
    {CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, "MAX_THREADS_PER_BLOCK"},
    {CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, "MAX_BLOCK_DIM_X"},
    {CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y, "MAX_BLOCK_DIM_Y"},
    {CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, "MAX_BLOCK_DIM_Z"},
    {CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, "MAX_GRID_DIM_X"},
    {CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, "MAX_GRID_DIM_Y"},
    {CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z, "MAX_GRID_DIM_Z"},
    {CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, "MAX_SHARED_MEMORY_PER_BLOCK"},
    {CU_DEVICE_ATTRIBUTE_WARP_SIZE, "WARP_SIZE"},
    {CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "MULTIPROCESSOR_COUNT"},
    {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "COMPUTE_CAPABILITY_MAJOR"},
    {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "COMPUTE_CAPABILITY_MINOR"},
    {CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, "UNIFIED_ADDRESSING"},
    {CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS, "CONCURRENT_KERNELS"},
    {CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT, "ASYNC_ENGINE_COUNT"},
    {CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, "GLOBAL_MEMORY_BUS_WIDTH"},
    {CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, "L2_CACHE_SIZE"},
    {CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, "MAX_THREADS_PER_MULTIPROCESSOR"},
    {CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, "PCI_BUS_ID"},
    {CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, "MANAGED_MEMORY"},
    {CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN"},
};

int main(void)
{
    int version = 0;
    CHECK(cuDriverGetVersion(&version)); /* allowed before cuInit */
    printf("device: driver version %d\n", version);
    expect(version >= 13000, "driver version is CUDA 13 or later");

    CHECK(cuInit(0));
    int count = 0;
    CHECK(cuDeviceGetCount(&count));
    printf("device: count %d\n", count);
    expect(count >= 1, "at least one device");

    for (int i = 0; i < count; i++) {
        CUdevice dev;
        CHECK(cuDeviceGet(&dev, i));
        char name[256];
        CHECK(cuDeviceGetName(name, sizeof name, dev));
        printf("device: %d name %s\n", i, name);
        size_t total = 0;
        CHECK(cuDeviceTotalMem(&total, dev));
        printf("device: %d total memory %zu\n", i, total);
        CUuuid uuid;
        CHECK(cuDeviceGetUuid(&uuid, dev));
        printf("device: %d uuid ", i);
        int nonzero = 0;
        for (int k = 0; k < 16; k++) {
            printf("%02x", (unsigned char)uuid.bytes[k]);
            nonzero |= uuid.bytes[k] != 0;
        }
        printf("\n");
        if (i == 0) {
            expect(name[0] != '\0', "name is not empty");
            expect(total > 0, "total memory is not zero");
            expect(nonzero, "uuid is not zero");
        }
        for (size_t k = 0; k < sizeof attrs / sizeof attrs[0]; k++) {
            int v = -1;
            CHECK(cuDeviceGetAttribute(&v, attrs[k].attr, dev));
            printf("device: %d %s %d\n", i, attrs[k].name, v);
        }
    }

    CUdevice dev;
    CHECK(cuDeviceGet(&dev, 0));
    int v = 0;
    CHECK(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_WARP_SIZE, dev));
    expect(v > 0, "warp size is positive");
    CHECK(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, dev));
    expect(v >= 64 && v <= 4096, "max threads per block is sane");
    CHECK(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, dev));
    expect(v == 1, "unified addressing");

    /* Every attribute the header knows can be asked (values are device facts). */
    int asked = 0;
    for (int a = 1; a < CU_DEVICE_ATTRIBUTE_MAX; a++) {
        int x;
        CUresult r = cuDeviceGetAttribute(&x, (CUdevice_attribute)a, dev);
        if (r == CUDA_SUCCESS)
            asked++;
        else
            printf("device: attribute %d -> %s\n", a, err_name(r));
    }
    printf("device: %d attributes answered\n", asked);

    ERROR_CASE("attribute out of range", cuDeviceGetAttribute(&v, (CUdevice_attribute)9999, dev));
    CUdevice bad;
    ERROR_CASE("device ordinal out of range", cuDeviceGet(&bad, count));
    ERROR_CASE("device ordinal negative", cuDeviceGet(&bad, -1));
    char name[64];
    ERROR_CASE("name of an invalid device", cuDeviceGetName(name, sizeof name, (CUdevice)count + 7));
    size_t total;
    ERROR_CASE("total memory of an invalid device", cuDeviceTotalMem(&total, (CUdevice)count + 7));
    CUuuid uuid;
    ERROR_CASE("uuid of an invalid device", cuDeviceGetUuid(&uuid, (CUdevice)count + 7));
    ERROR_CASE("attribute of an invalid device",
               cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_WARP_SIZE, (CUdevice)count + 7));

    /* cuMemGetInfo needs a context. */
    size_t free_b = 0, total_b = 0;
    ERROR_CASE("mem get info without context", cuMemGetInfo(&free_b, &total_b));
    CUcontext ctx;
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuMemGetInfo(&free_b, &total_b));
    CHECK(cuDeviceTotalMem(&total, dev));
    expect(free_b <= total_b, "mem info: free <= total");
    expect(total_b > 0, "mem info: total is not zero");
    printf("device: mem info total equals device total memory: %s\n", total_b == total ? "yes" : "no");
    printf("device: mem info total %zu\n", total_b); /* free memory varies: not printed */

    /* An allocation shows in free memory. */
    CUdeviceptr p;
    size_t free2 = 0;
    CHECK(cuMemAlloc(&p, 256u << 20));
    CHECK(cuMemGetInfo(&free2, &total_b));
    expect(free2 < free_b, "free memory shrinks after a 256 MiB allocation");
    CHECK(cuMemFree(p));

    CHECK(cuCtxSetCurrent(NULL));
    CHECK(cuDevicePrimaryCtxRelease(dev));
    printf("done\n");
    return finish();
}
