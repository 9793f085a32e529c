/* Stream capture into an existing graph (cuStreamBeginCaptureToGraph), as XLA traces library calls into its
 * command buffers: after a node built by hand (NULL edge data), then after the captured nodes with explicit
 * default edge data, then into the body graph of a conditional node (whose default value runs it at every
 * launch). The capture reports the app's graph and the node it will follow (cuStreamGetCaptureInfo_v3), and ends
 * on that same graph. */
#include "common.h"

enum { N = 2048 };

static size_t count_nodes(CUgraph g)
{
    size_t n = 0;
    CHECK(cuGraphGetNodes(g, NULL, &n));
    return n;
}

static int all_words(CUdeviceptr p, uint32_t value)
{
    static uint32_t host[N];
    CHECK(cuMemcpyDtoH(host, p, sizeof host));
    for (int i = 0; i < N; i++)
        if (host[i] != value)
            return 0;
    return 1;
}

static int filled(CUdeviceptr p, uint32_t base)
{
    static uint32_t host[N];
    CHECK(cuMemcpyDtoH(host, p, sizeof host));
    for (int i = 0; i < N; i++)
        if (host[i] != base + (uint32_t)i)
            return 0;
    return 1;
}

/* How many of `g`'s nodes are of each kind: memset, memcpy, kernel. */
static void kinds(CUgraph g, size_t *memsets, size_t *copies, size_t *kernels)
{
    CUgraphNode nodes[16];
    size_t n = 16;
    CHECK(cuGraphGetNodes(g, nodes, &n));
    *memsets = *copies = *kernels = 0;
    for (size_t i = 0; i < n; i++) {
        CUgraphNodeType t;
        CHECK(cuGraphNodeGetType(nodes[i], &t));
        *memsets += t == CU_GRAPH_NODE_TYPE_MEMSET;
        *copies += t == CU_GRAPH_NODE_TYPE_MEMCPY;
        *kernels += t == CU_GRAPH_NODE_TYPE_KERNEL;
    }
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    CUdevice dev;
    CUcontext ctx = setup(&dev);
    CUmodule mod = load_kernels();
    CUfunction fill = get_function(mod, "fill_u32");
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CUdeviceptr a, b, c, d, e;
    CUdeviceptr *all[] = {&a, &b, &c, &d, &e};
    for (int i = 0; i < 5; i++) {
        CHECK(cuMemAlloc(all[i], N * sizeof(uint32_t)));
        CHECK(cuMemsetD32(*all[i], 0, N));
    }

    /* A graph with one memset node built by hand (a = 3). */
    CUgraph g;
    CHECK(cuGraphCreate(&g, 0));
    CUDA_MEMSET_NODE_PARAMS m;
    memset(&m, 0, sizeof m);
    m.dst = a;
    m.value = 3;
    m.elementSize = 4;
    m.width = N;
    m.height = 1;
    CUgraphNode first;
    CHECK(cuGraphAddMemsetNode(&first, g, NULL, 0, &m, ctx));

    /* Captured after it: a copy a -> b, a kernel filling c, a memset of d. */
    CHECK(cuStreamBeginCaptureToGraph(s, g, &first, NULL, 1, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    CHECK(cuMemcpyDtoDAsync(b, a, N * sizeof(uint32_t), s));
    unsigned int base = 40, n = N;
    void *args[] = {&c, &base, &n};
    CHECK(cuLaunchKernel(fill, N / 256, 1, 1, 256, 1, 1, 0, s, args, NULL));
    CHECK(cuMemsetD32Async(d, 5, N, s));
    CUstreamCaptureStatus status;
    CUgraph capturing = NULL;
    const CUgraphNode *follow = NULL;
    const CUgraphEdgeData *follow_edges = NULL;
    size_t nfollow = 0;
    CHECK(cuStreamGetCaptureInfo(s, &status, NULL, &capturing, &follow, &follow_edges, &nfollow));
    printf("capture: status %d, into the app's graph: %s, next node follows %zu node\n", (int)status,
           capturing == g ? "yes" : "no", nfollow);
    CUgraph ended = NULL;
    CHECK(cuStreamEndCapture(s, &ended));
    printf("the capture ended on the app's graph: %s\n", ended == g ? "yes" : "no");

    /* Captured once more, after the graph's last node, with explicit default edge data (e = 8). */
    CUgraphNode leaves[1];
    size_t nleaves = 0;
    CUgraphNode nodes[16];
    size_t total = 16;
    CHECK(cuGraphGetNodes(g, nodes, &total));
    for (size_t i = 0; i < total; i++) {
        size_t dependents = 0;
        CHECK(cuGraphNodeGetDependentNodes(nodes[i], NULL, NULL, &dependents));
        if (dependents == 0 && nleaves < 1)
            leaves[nleaves++] = nodes[i];
    }
    CUgraphEdgeData edge;
    memset(&edge, 0, sizeof edge);
    CHECK(cuStreamBeginCaptureToGraph(s, g, leaves, &edge, nleaves, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    CHECK(cuMemsetD32Async(e, 8, N, s));
    CHECK(cuStreamEndCapture(s, &ended));

    size_t memsets, copies, kernels, edges = 0, roots = 0;
    kinds(g, &memsets, &copies, &kernels);
    CHECK(cuGraphGetEdges(g, NULL, NULL, NULL, &edges));
    CHECK(cuGraphGetRootNodes(g, NULL, &roots));
    printf("graph: %zu nodes (%zu memset, %zu memcpy, %zu kernel), %zu edges, %zu root\n", count_nodes(g), memsets,
           copies, kernels, edges, roots);

    CUgraphExec exec;
    CHECK(cuGraphInstantiateWithFlags(&exec, g, 0));
    CHECK(cuGraphLaunch(exec, s));
    CHECK(cuStreamSynchronize(s));
    expect(all_words(a, 3), "the hand-built memset ran");
    expect(all_words(b, 3), "the captured copy ran after it");
    expect(all_words(d, 5), "the captured memset ran");
    expect(all_words(e, 8), "the second capture's memset ran");
    result(filled(c, 40), "the captured kernel ran");
    CHECK(cuGraphExecDestroy(exec));

    /* Into a conditional node's body (XLA's traced command buffers inside lax.cond): a memset and a kernel. */
    CUgraph cg;
    CHECK(cuGraphCreate(&cg, 0));
    CUgraphConditionalHandle h;
    CHECK(cuGraphConditionalHandleCreate(&h, cg, ctx, 1, CU_GRAPH_COND_ASSIGN_DEFAULT));
    CUgraphNodeParams p;
    memset(&p, 0, sizeof p);
    p.type = CU_GRAPH_NODE_TYPE_CONDITIONAL;
    p.conditional.handle = h;
    p.conditional.type = CU_GRAPH_COND_TYPE_IF;
    p.conditional.size = 1;
    p.conditional.ctx = ctx;
    CUgraphNode cond;
    CHECK(cuGraphAddNode_v2(&cond, cg, NULL, NULL, 0, &p));
    CUgraph body = p.conditional.phGraph_out[0];
    CHECK(cuMemsetD32(a, 0, N));
    CHECK(cuMemsetD32(c, 0, N));
    CHECK(cuStreamBeginCaptureToGraph(s, body, NULL, NULL, 0, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    CHECK(cuMemsetD32Async(a, 42, N, s));
    unsigned int base2 = 7;
    void *args2[] = {&c, &base2, &n};
    CHECK(cuLaunchKernel(fill, N / 256, 1, 1, 256, 1, 1, 0, s, args2, NULL));
    CHECK(cuStreamEndCapture(s, &ended));
    printf("the body capture ended on the body graph: %s; body nodes: %zu\n", ended == body ? "yes" : "no",
           count_nodes(body));
    CHECK(cuGraphInstantiateWithFlags(&exec, cg, 0));
    CHECK(cuGraphLaunch(exec, s));
    CHECK(cuStreamSynchronize(s));
    expect(all_words(a, 42), "the IF body captured into ran (default value 1)");
    result(filled(c, 7), "the kernel captured into the IF body ran");
    CHECK(cuGraphExecDestroy(exec));
    CHECK(cuGraphDestroy(cg));

    CHECK(cuGraphDestroy(g));
    for (int i = 0; i < 5; i++)
        CHECK(cuMemFree(*all[i]));
    CHECK(cuStreamDestroy(s));
    CHECK(cuModuleUnload(mod));
    printf("done\n");
    return finish();
}
