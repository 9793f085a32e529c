/* Stream-ordered allocation inside a captured graph, as PyTorch's cudaMallocAsync allocator does under
 * torch.cuda.graph: cuMemAllocAsync, a kernel filling the memory, a copy out of it and cuMemFreeAsync, all
 * captured; the graph is launched three times (each launch must find the memory usable again), then destroyed. */
#include "common.h"

enum { N = 4096 };

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    CUdevice dev;
    setup(&dev);
    CUmodule mod;
    CHECK(cuModuleLoadData(&mod, kernels_ptx));
    CUfunction fill = get_function(mod, "fill_u32");
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CUdeviceptr out;
    CHECK(cuMemAlloc(&out, N * sizeof(uint32_t)));
    CHECK(cuMemsetD32(out, 0, N));

    CHECK(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    CUdeviceptr tmp = 0;
    CHECK(cuMemAllocAsync(&tmp, N * sizeof(uint32_t), s));
    unsigned int base = 1000, n = N;
    void *args[] = {&tmp, &base, &n};
    CHECK(cuLaunchKernel(fill, N / 256, 1, 1, 256, 1, 1, 0, s, args, NULL));
    CHECK(cuMemcpyDtoDAsync(out, tmp, N * sizeof(uint32_t), s));
    CHECK(cuMemFreeAsync(tmp, s));
    CUgraph graph;
    CHECK(cuStreamEndCapture(s, &graph));
    printf("captured: alloc, kernel, copy, free\n");
    CUgraphExec exec;
    CHECK(cuGraphInstantiate(&exec, graph, 0));

    for (int launch = 0; launch < 3; launch++) {
        CHECK(cuMemsetD32Async(out, 0, N, s));
        CHECK(cuGraphLaunch(exec, s));
        CHECK(cuStreamSynchronize(s));
        uint32_t host[N];
        CHECK(cuMemcpyDtoH(host, out, sizeof host));
        int good = 1;
        for (int i = 0; i < N; i++)
            good &= host[i] == base + (uint32_t)i;
        char what[64];
        snprintf(what, sizeof what, "launch %d: the graph's own memory held the kernel's values", launch);
        result(good, what);
    }
    CHECK(cuGraphExecDestroy(exec));
    CHECK(cuGraphDestroy(graph));

    /* An allocation the capture does not free outlives the launch: the app reads it and frees it itself. */
    CHECK(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    CUdeviceptr keep = 0;
    CHECK(cuMemAllocAsync(&keep, N * sizeof(uint32_t), s));
    unsigned int base2 = 77;
    void *args2[] = {&keep, &base2, &n};
    CHECK(cuLaunchKernel(fill, N / 256, 1, 1, 256, 1, 1, 0, s, args2, NULL));
    CHECK(cuStreamEndCapture(s, &graph));
    CHECK(cuGraphInstantiate(&exec, graph, 0));
    CHECK(cuGraphLaunch(exec, s));
    CHECK(cuStreamSynchronize(s));
    uint32_t kept[N];
    CHECK(cuMemcpyDtoH(kept, keep, sizeof kept));
    int good = 1;
    for (int i = 0; i < N; i++)
        good &= kept[i] == base2 + (uint32_t)i;
    result(good, "memory the graph allocated and left alive holds the kernel's values");
    CHECK(cuMemFreeAsync(keep, s));
    CHECK(cuStreamSynchronize(s));
    printf("the app freed the graph's surviving allocation\n");
    CHECK(cuGraphExecDestroy(exec));
    CHECK(cuGraphDestroy(graph));

    /* Freeing on a capturing stream memory allocated before the capture is accepted natively; vGPU refuses
     * it (a free node of outside memory), so this program only frees such memory outside captures. */
    CHECK(cuMemFree(out));
    CHECK(cuStreamDestroy(s));
    CHECK(cuModuleUnload(mod));
    printf("done\n");
    return finish();
}
