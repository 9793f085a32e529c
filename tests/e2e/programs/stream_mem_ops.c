/* Stream memory operations: cuStreamWriteValue32/64, cuStreamWaitValue32/64 and cuStreamBatchMemOp in stream
 * order with copies, then the error cases the driver refuses at the call. */
#include "common.h"

static void read_back(CUdeviceptr d, void *host, size_t n, CUstream s)
{
    CHECK(cuMemcpyDtoHAsync(host, d, n, s));
    CHECK(cuStreamSynchronize(s));
}

int main(void)
{
    /* Line-buffered: a driver that crashes on an error case still shows how far it got. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    CUdevice dev;
    setup(&dev);
    int mem_ops = -1, wide = -1;
    CHECK(cuDeviceGetAttribute(&mem_ops, CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR, dev));
    CHECK(cuDeviceGetAttribute(&wide, CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS, dev));
    printf("device: wait NOR %d, 64-bit mem ops %d\n", mem_ops, wide);

    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CUdeviceptr d;
    CHECK(cuMemAlloc(&d, 256));
    CHECK(cuMemsetD8Async(d, 0, 256, s));

    /* Single operations, in order with the memset before them and the copy after. */
    CHECK(cuStreamWriteValue32(s, d, 0x11223344u, CU_STREAM_WRITE_VALUE_DEFAULT));
    CHECK(cuStreamWriteValue64(s, d + 8, 0x0102030405060708ull, CU_STREAM_WRITE_VALUE_DEFAULT));
    CHECK(cuStreamWaitValue32(s, d, 0x11223344u, CU_STREAM_WAIT_VALUE_EQ));
    CHECK(cuStreamWaitValue64(s, d + 8, 0x0102030405060700ull, CU_STREAM_WAIT_VALUE_GEQ));
    CHECK(cuStreamWaitValue32(s, d, 0x00000040u, CU_STREAM_WAIT_VALUE_AND));
    uint32_t w32 = 0;
    uint64_t w64 = 0;
    read_back(d, &w32, 4, s);
    read_back(d + 8, &w64, 8, s);
    expect(w32 == 0x11223344u, "cuStreamWriteValue32 wrote its value");
    expect(w64 == 0x0102030405060708ull, "cuStreamWriteValue64 wrote its value");

    /* A batch: write, wait on what it wrote, write 64 bits, a barrier. */
    CUstreamBatchMemOpParams ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].writeValue.operation = CU_STREAM_MEM_OP_WRITE_VALUE_32;
    ops[0].writeValue.address = d + 16;
    ops[0].writeValue.value = 7;
    ops[1].waitValue.operation = CU_STREAM_MEM_OP_WAIT_VALUE_32;
    ops[1].waitValue.address = d + 16;
    ops[1].waitValue.value = 5;
    ops[1].waitValue.flags = CU_STREAM_WAIT_VALUE_GEQ;
    ops[2].writeValue.operation = CU_STREAM_MEM_OP_WRITE_VALUE_64;
    ops[2].writeValue.address = d + 24;
    ops[2].writeValue.value64 = 0xfedcba9876543210ull;
    ops[3].memoryBarrier.operation = CU_STREAM_MEM_OP_BARRIER;
    ops[3].memoryBarrier.flags = CU_STREAM_MEMORY_BARRIER_TYPE_SYS;
    CHECK(cuStreamBatchMemOp(s, 4, ops, 0));
    unsigned char bytes[32];
    read_back(d + 16, bytes, sizeof bytes, s);
    uint32_t b32;
    uint64_t b64;
    memcpy(&b32, bytes, 4);
    memcpy(&b64, bytes + 8, 8);
    expect(b32 == 7 && b64 == 0xfedcba9876543210ull, "cuStreamBatchMemOp wrote both values");

    /* Every write landed where it should and nowhere else. */
    unsigned char all[256], want[256];
    memset(want, 0, sizeof want);
    uint32_t v32 = 0x11223344u, seven = 7;
    uint64_t v64 = 0x0102030405060708ull, big = 0xfedcba9876543210ull;
    memcpy(want, &v32, 4);
    memcpy(want + 8, &v64, 8);
    memcpy(want + 16, &seven, 4);
    memcpy(want + 24, &big, 8);
    read_back(d, all, sizeof all, s);
    expect_bytes(all, want, sizeof all, "the whole buffer after the operations");

    /* The per-thread default stream takes them too. */
    CHECK(cuStreamWriteValue32(CU_STREAM_PER_THREAD, d + 64, 99, 0));
    CHECK(cuStreamSynchronize(CU_STREAM_PER_THREAD));
    read_back(d + 64, &w32, 4, s);
    expect(w32 == 99, "a write on the per-thread stream");

    /* Captured into a graph (natively memory-operation nodes) and launched twice. */
    CHECK(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    CHECK(cuStreamWriteValue32(s, d + 128, 5, 0));
    CHECK(cuStreamWaitValue32(s, d + 128, 5, CU_STREAM_WAIT_VALUE_EQ));
    CHECK(cuStreamWriteValue64(s, d + 136, 0xa5a5a5a5a5a5a5a5ull, 0));
    CUgraph graph;
    CHECK(cuStreamEndCapture(s, &graph));
    CUgraphExec exec;
    CHECK(cuGraphInstantiate(&exec, graph, 0));
    for (int launch = 0; launch < 2; launch++) {
        CHECK(cuMemsetD8Async(d + 128, 0, 16, s));
        CHECK(cuGraphLaunch(exec, s));
        unsigned char got[16];
        read_back(d + 128, got, sizeof got, s);
        memcpy(&b32, got, 4);
        memcpy(&b64, got + 8, 8);
        char what[80];
        snprintf(what, sizeof what, "graph launch %d: captured writes landed", launch);
        expect(b32 == 5 && b64 == 0xa5a5a5a5a5a5a5a5ull, what);
    }
    CHECK(cuGraphExecDestroy(exec));
    CHECK(cuGraphDestroy(graph));

    ERROR_CASE("write32 at an unaligned address", cuStreamWriteValue32(s, d + 2, 1, 0));
    ERROR_CASE("write64 at a 4-byte aligned address", cuStreamWriteValue64(s, d + 4, 1, 0));
    ERROR_CASE("batch of 0 operations", cuStreamBatchMemOp(s, 0, ops, 0));
    CUstreamBatchMemOpParams bad;
    memset(&bad, 0, sizeof bad);
    bad.operation = (CUstreamBatchMemOpType)77;
    ERROR_CASE("batch with an unknown operation", cuStreamBatchMemOp(s, 1, &bad, 0));
    CHECK(cuStreamSynchronize(s));

    CHECK(cuMemFree(d));
    CHECK(cuStreamDestroy(s));
    printf("done\n");
    return finish();
}
