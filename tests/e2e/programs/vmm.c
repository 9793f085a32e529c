/* Virtual memory management as PyTorch's expandable segments use it: the granularity, one reservation, physical
 * allocations mapped back to back, read-write access, copies and memsets across the seams between mappings, a
 * mapping unmapped (copies into the hole fail) and the hole filled again, handles released while still mapped,
 * and error cases. Prints no address: only what is the same natively and through vGPU. */
#include "common.h"

#define SEGMENTS 8 /* the reservation, in granules */

static CUmemAccessDesc read_write(CUdevice dev)
{
    CUmemAccessDesc d;
    memset(&d, 0, sizeof d);
    d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    d.location.id = dev;
    d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    return d;
}

int main(void)
{
    CUdevice dev;
    setup(&dev);
    int supported = 0;
    CHECK(cuDeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev));
    expect(supported == 1, "virtual memory management supported");

    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    size_t gran = 0, recommended = 0;
    CHECK(cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    CHECK(cuMemGetAllocationGranularity(&recommended, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
    printf("device: granularity minimum %zu, recommended %zu\n", gran, recommended);
    expect(gran > 0 && recommended % gran == 0, "recommended granularity is a multiple of the minimum");
    const size_t seg = gran;

    CUdeviceptr base = 0;
    CHECK(cuMemAddressReserve(&base, SEGMENTS * seg, 0, 0, 0));
    expect(base % seg == 0, "reservation aligned to the granularity");

    /* Three handles back to back, made accessible in one call, as PyTorch grows a segment. */
    CUmemGenericAllocationHandle h[4];
    for (int i = 0; i < 3; i++)
        CHECK(cuMemCreate(&h[i], seg, &prop, 0));
    for (int i = 0; i < 3; i++)
        CHECK(cuMemMap(base + i * seg, seg, 0, h[i], 0));
    CUmemAccessDesc access = read_write(dev);
    CHECK(cuMemSetAccess(base, 3 * seg, &access, 1));
    unsigned long long flags = 0;
    CHECK(cuMemGetAccess(&flags, &access.location, base + seg + 64));
    printf("access flags of the middle mapping: %llu\n", flags);

    /* A memset of all three, a copy over the first seam, a memset over the second. */
    const size_t total = 3 * seg, half = seg / 2;
    unsigned char *want = xmalloc(total), *got = xmalloc(total), *src = xmalloc(half);
    fill_pattern(src, half, 1);
    CHECK(cuMemsetD8(base, 0x11, total));
    memset(want, 0x11, total);
    CHECK(cuMemcpyHtoD(base + seg - half / 2, src, half));
    memcpy(want + seg - half / 2, src, half);
    CHECK(cuMemsetD32(base + 2 * seg - 4096, 0xa5a5a5a5u, 2048));
    memset(want + 2 * seg - 4096, 0xa5, 8192);
    CHECK(cuMemcpyDtoH(got, base, total));
    expect_bytes(got, want, total, "three mappings read back after a copy and memsets across the seams");

    /* Device to device, source over the second seam, destination over the first. */
    CHECK(cuMemcpyDtoD(base + seg / 4, base + seg + half, seg));
    memmove(want + seg / 4, want + seg + half, seg);
    CHECK(cuMemcpyDtoH(got, base, total));
    expect_bytes(got, want, total, "device-to-device copy across both seams");

    /* Pointer queries answer for mapped memory: the mapping is the range. */
    CUdeviceptr range_base = 0;
    size_t range_size = 0;
    CHECK(cuMemGetAddressRange(&range_base, &range_size, base + seg + 100));
    expect(range_base == base + seg && range_size == seg, "cuMemGetAddressRange gives the mapping");
    unsigned int memtype = 0;
    CHECK(cuPointerGetAttribute(&memtype, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, base + 2 * seg));
    expect(memtype == CU_MEMORYTYPE_DEVICE, "mapped memory is device memory");

    /* Unmap the middle mapping: copies into the hole fail; its handle keeps its bytes. */
    CHECK(cuCtxSynchronize());
    CHECK(cuMemUnmap(base + seg, seg));
    ERROR_CASE("htod into the unmapped hole", cuMemcpyHtoD(base + seg + 64, src, 64));
    ERROR_CASE("dtoh from the unmapped hole", cuMemcpyDtoH(got, base + seg + 64, 64));

    /* A new handle fills the hole. */
    CHECK(cuMemCreate(&h[3], seg, &prop, 0));
    CHECK(cuMemMap(base + seg, seg, 0, h[3], 0));
    CHECK(cuMemSetAccess(base + seg, seg, &access, 1));
    CHECK(cuMemsetD8(base + seg, 0x22, seg));
    unsigned char *old_middle = xmalloc(seg);
    memcpy(old_middle, want + seg, seg);
    memset(want + seg, 0x22, seg);
    CHECK(cuMemcpyDtoH(got, base, total));
    expect_bytes(got, want, total, "hole filled by a new handle");

    /* The unmapped handle, mapped again elsewhere in the reservation, still holds its bytes. */
    CHECK(cuMemMap(base + 4 * seg, seg, 0, h[1], 0));
    CHECK(cuMemSetAccess(base + 4 * seg, seg, &access, 1));
    CHECK(cuMemcpyDtoH(got, base + 4 * seg, seg));
    expect_bytes(got, old_middle, seg, "an unmapped handle kept its bytes");

    /* The handle behind an address, and a handle's properties. */
    CUmemGenericAllocationHandle retained = 0;
    CHECK(cuMemRetainAllocationHandle(&retained, (void *)(uintptr_t)(base + 2 * seg + 100)));
    expect(retained == h[2], "cuMemRetainAllocationHandle gives the mapped handle");
    CHECK(cuMemRelease(retained));
    CUmemAllocationProp back;
    memset(&back, 0xff, sizeof back);
    CHECK(cuMemGetAllocationPropertiesFromHandle(&back, h[0]));
    expect(back.type == CU_MEM_ALLOCATION_TYPE_PINNED && back.location.type == CU_MEM_LOCATION_TYPE_DEVICE &&
               back.location.id == dev && back.requestedHandleTypes == CU_MEM_HANDLE_TYPE_NONE,
           "properties read back from a handle");

    /* Error cases. */
    CUmemGenericAllocationHandle bad = 0;
    ERROR_CASE("create of a size that is not a multiple of the granularity",
               cuMemCreate(&bad, seg + seg / 2, &prop, 0));
    ERROR_CASE("map outside the reservation", cuMemMap(base + SEGMENTS * seg, seg, 0, h[0], 0));
    ERROR_CASE("map over an existing mapping", cuMemMap(base, seg, 0, h[3], 0));
    ERROR_CASE("map past the end of the handle", cuMemMap(base + 5 * seg, 2 * seg, 0, h[0], 0));
    ERROR_CASE("map of an unknown handle", cuMemMap(base + 5 * seg, seg, 0, (CUmemGenericAllocationHandle)0, 0));
    ERROR_CASE("cuMemFree of mapped memory", cuMemFree(base));
    ERROR_CASE("set access on an unmapped range", cuMemSetAccess(base + 6 * seg, seg, &access, 1));

    /* Handles released while mapped: the memory lives until it is unmapped. */
    for (int i = 0; i < 4; i++)
        CHECK(cuMemRelease(h[i]));
    CHECK(cuMemcpyDtoH(got, base, total));
    expect_bytes(got, want, total, "memory of released handles stays while mapped");
    CHECK(cuCtxSynchronize());
    for (int i = 0; i < 3; i++)
        CHECK(cuMemUnmap(base + i * seg, seg));
    CHECK(cuMemUnmap(base + 4 * seg, seg));
    CHECK(cuMemAddressFree(base, SEGMENTS * seg));

    free(want);
    free(got);
    free(src);
    free(old_middle);
    teardown(dev);
    printf("done\n");
    return finish();
}
