/* Graphs built node by node with the generic cuGraphAddNode_v2 (CUgraphNodeParams), as XLA's command buffers
 * build them: memset, kernel, device-to-device memcpy (with explicit default edge data), empty, a child graph
 * cloned and one moved in, event record and wait; the structure queries (types, roots, edges, dependencies,
 * a child node's graph); upload and launch; updates in place (cuGraphExecNodeSetParams,
 * cuGraphExecKernelNodeSetParams) and from a graph of the same shape (cuGraphExecUpdate), which a graph of
 * another shape fails; edges added and removed, a node destroyed. */
#include "common.h"

enum { N = 1024 };

static CUcontext g_ctx;

struct built {
    CUgraph g;
    CUgraphNode memset_a, kernel_b, copy_c, join, child_d, record, wait, moved_e;
};

static CUgraphNodeParams memset_params(CUdeviceptr dst, unsigned int value)
{
    CUgraphNodeParams p;
    memset(&p, 0, sizeof p);
    p.type = CU_GRAPH_NODE_TYPE_MEMSET;
    p.memset.dst = dst;
    p.memset.value = value;
    p.memset.elementSize = 4;
    p.memset.width = N;
    p.memset.height = 1;
    p.memset.ctx = g_ctx;
    return p;
}

static CUgraphNodeParams kernel_params(CUfunction f, void **args)
{
    CUgraphNodeParams p;
    memset(&p, 0, sizeof p);
    p.type = CU_GRAPH_NODE_TYPE_KERNEL;
    p.kernel.func = f;
    p.kernel.gridDimX = N / 256;
    p.kernel.gridDimY = p.kernel.gridDimZ = 1;
    p.kernel.blockDimX = 256;
    p.kernel.blockDimY = p.kernel.blockDimZ = 1;
    p.kernel.kernelParams = args;
    return p;
}

/* A graph of one memset node (what the child graph nodes hold). */
static CUgraph one_memset(CUdeviceptr dst, unsigned int value)
{
    CUgraph g;
    CHECK(cuGraphCreate(&g, 0));
    CUgraphNodeParams p = memset_params(dst, value);
    CUgraphNode n;
    CHECK(cuGraphAddNode_v2(&n, g, NULL, NULL, 0, &p));
    return g;
}

/* The graph under test; a, b, c, d, e are device arrays of N words, `ev` an event. */
static struct built build(CUfunction fill, CUdeviceptr *a, CUdeviceptr *b, CUdeviceptr *c, CUdeviceptr *d,
                          CUdeviceptr *e, CUevent ev, unsigned int a_value, unsigned int *b_base, unsigned int *n)
{
    struct built r;
    CHECK(cuGraphCreate(&r.g, 0));
    CUgraphNodeParams p = memset_params(*a, a_value);
    CHECK(cuGraphAddNode_v2(&r.memset_a, r.g, NULL, NULL, 0, &p));

    void *args[] = {b, b_base, n};
    p = kernel_params(fill, args);
    CHECK(cuGraphAddNode_v2(&r.kernel_b, r.g, NULL, NULL, 0, &p));

    memset(&p, 0, sizeof p);
    p.type = CU_GRAPH_NODE_TYPE_MEMCPY;
    p.memcpy.copyCtx = g_ctx;
    p.memcpy.copyParams.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    p.memcpy.copyParams.srcDevice = *a;
    p.memcpy.copyParams.dstMemoryType = CU_MEMORYTYPE_DEVICE;
    p.memcpy.copyParams.dstDevice = *c;
    p.memcpy.copyParams.WidthInBytes = N * sizeof(uint32_t);
    p.memcpy.copyParams.Height = 1;
    p.memcpy.copyParams.Depth = 1;
    CUgraphEdgeData edge;
    memset(&edge, 0, sizeof edge);
    CHECK(cuGraphAddNode_v2(&r.copy_c, r.g, &r.memset_a, &edge, 1, &p));

    memset(&p, 0, sizeof p);
    p.type = CU_GRAPH_NODE_TYPE_EMPTY;
    CUgraphNode both[2] = {r.kernel_b, r.copy_c};
    CHECK(cuGraphAddNode_v2(&r.join, r.g, both, NULL, 2, &p));

    /* A child graph node holds a copy of its graph: the original is changed afterwards. */
    CUgraph child = one_memset(*d, 9);
    memset(&p, 0, sizeof p);
    p.type = CU_GRAPH_NODE_TYPE_GRAPH;
    p.graph.graph = child;
    p.graph.ownership = CU_GRAPH_CHILD_GRAPH_OWNERSHIP_CLONE;
    CHECK(cuGraphAddNode_v2(&r.child_d, r.g, &r.join, NULL, 1, &p));
    CUgraphNode child_memset;
    size_t one = 1;
    CHECK(cuGraphGetNodes(child, &child_memset, &one));
    CUDA_MEMSET_NODE_PARAMS later;
    memset(&later, 0, sizeof later);
    later.dst = *d;
    later.value = 10;
    later.elementSize = 4;
    later.width = N;
    later.height = 1;
    CHECK(cuGraphMemsetNodeSetParams(child_memset, &later));
    CHECK(cuGraphDestroy(child));

    memset(&p, 0, sizeof p);
    p.type = CU_GRAPH_NODE_TYPE_EVENT_RECORD;
    p.eventRecord.event = ev;
    CHECK(cuGraphAddNode_v2(&r.record, r.g, &r.child_d, NULL, 1, &p));
    memset(&p, 0, sizeof p);
    p.type = CU_GRAPH_NODE_TYPE_WAIT_EVENT;
    p.eventWait.event = ev;
    CHECK(cuGraphAddNode_v2(&r.wait, r.g, &r.record, NULL, 1, &p));

    /* A child graph moved in: the node owns the graph itself. */
    memset(&p, 0, sizeof p);
    p.type = CU_GRAPH_NODE_TYPE_GRAPH;
    p.graph.graph = one_memset(*e, 11);
    p.graph.ownership = CU_GRAPH_CHILD_GRAPH_OWNERSHIP_MOVE;
    CHECK(cuGraphAddNode_v2(&r.moved_e, r.g, NULL, NULL, 0, &p));
    return r;
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

static size_t count_nodes(CUgraph g)
{
    size_t n = 0;
    CHECK(cuGraphGetNodes(g, NULL, &n));
    return n;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    CUdevice dev;
    g_ctx = setup(&dev);
    CUmodule mod = load_kernels();
    CUfunction fill = get_function(mod, "fill_u32");
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CUevent ev;
    CHECK(cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING));
    CUdeviceptr a, b, c, d, e;
    CUdeviceptr *all[] = {&a, &b, &c, &d, &e};
    for (int i = 0; i < 5; i++) {
        CHECK(cuMemAlloc(all[i], N * sizeof(uint32_t)));
        CHECK(cuMemsetD32(*all[i], 0, N));
    }
    unsigned int base = 100, n = N;
    struct built r = build(fill, &a, &b, &c, &d, &e, ev, 0x01020304, &base, &n);

    printf("nodes: %zu\n", count_nodes(r.g));
    size_t roots = 0, edges = 0, deps = 0, dependents = 0;
    CHECK(cuGraphGetRootNodes(r.g, NULL, &roots));
    CHECK(cuGraphGetEdges_v2(r.g, NULL, NULL, NULL, &edges));
    CHECK(cuGraphNodeGetDependencies_v2(r.join, NULL, NULL, &deps));
    CHECK(cuGraphNodeGetDependentNodes_v2(r.memset_a, NULL, NULL, &dependents));
    printf("roots: %zu, edges: %zu, dependencies of the empty node: %zu, dependents of the memset: %zu\n", roots,
           edges, deps, dependents);
    CUgraphNode nodes[] = {r.memset_a, r.kernel_b, r.copy_c, r.join, r.child_d, r.record, r.wait, r.moved_e};
    printf("types:");
    for (int i = 0; i < 8; i++) {
        CUgraphNodeType t;
        CHECK(cuGraphNodeGetType(nodes[i], &t));
        printf(" %d", (int)t);
    }
    printf("\n");
    CUgraph embedded;
    CHECK(cuGraphChildGraphNodeGetGraph(r.child_d, &embedded));
    printf("the child node's graph has %zu node\n", count_nodes(embedded));

    CUgraphExec exec;
    CHECK(cuGraphInstantiateWithFlags(&exec, r.g, 0));
    CHECK(cuGraphUpload(exec, s));
    CHECK(cuGraphLaunch(exec, s));
    CHECK(cuStreamSynchronize(s));
    expect(all_words(a, 0x01020304), "launch 1: the memset node filled a");
    expect(all_words(c, 0x01020304), "launch 1: the memcpy node copied a to c after the memset");
    expect(all_words(d, 9), "launch 1: the cloned child graph kept its memset of 9");
    expect(all_words(e, 11), "launch 1: the moved child graph ran");
    result(filled(b, 100), "launch 1: the kernel node filled b");

    /* In place: the memset writes another value, the kernel another base. */
    CUgraphNodeParams p = memset_params(a, 0x0a0b0c0d);
    CHECK(cuGraphExecNodeSetParams(exec, r.memset_a, &p));
    unsigned int base2 = 500;
    void *args2[] = {&b, &base2, &n};
    CUDA_KERNEL_NODE_PARAMS k;
    memset(&k, 0, sizeof k);
    k.func = fill;
    k.gridDimX = N / 256;
    k.gridDimY = k.gridDimZ = 1;
    k.blockDimX = 256;
    k.blockDimY = k.blockDimZ = 1;
    k.kernelParams = args2;
    CHECK(cuGraphExecKernelNodeSetParams(exec, r.kernel_b, &k));
    CHECK(cuGraphLaunch(exec, s));
    CHECK(cuStreamSynchronize(s));
    expect(all_words(c, 0x0a0b0c0d), "launch 2: the updated memset's value reached c");
    result(filled(b, 500), "launch 2: the updated kernel node filled b from 500");

    /* From a graph of the same shape. */
    unsigned int base3 = 900;
    struct built same = build(fill, &a, &b, &c, &d, &e, ev, 0x55555555, &base3, &n);
    CUgraphExecUpdateResultInfo info;
    memset(&info, 0, sizeof info);
    CHECK(cuGraphExecUpdate(exec, same.g, &info));
    printf("update from a graph of the same shape: result %d\n", (int)info.result);
    CHECK(cuGraphLaunch(exec, s));
    CHECK(cuStreamSynchronize(s));
    expect(all_words(c, 0x55555555), "launch 3: the update's memset value reached c");
    result(filled(b, 900), "launch 3: the update's kernel filled b from 900");

    /* A graph of another shape cannot update it. */
    CUgraph other = one_memset(a, 1);
    memset(&info, 0, sizeof info);
    ERROR_CASE("update from a graph of another shape", cuGraphExecUpdate(exec, other, &info));
    printf("update result: %d\n", (int)info.result);

    /* Edges added and removed, a node destroyed. */
    CUgraph h;
    CHECK(cuGraphCreate(&h, 0));
    CUgraphNode x[3];
    for (int i = 0; i < 3; i++)
        CHECK(cuGraphAddEmptyNode(&x[i], h, NULL, 0));
    CUgraphEdgeData zero[2];
    memset(zero, 0, sizeof zero);
    CUgraphNode from[2] = {x[0], x[1]}, to[2] = {x[1], x[2]};
    CHECK(cuGraphAddDependencies_v2(h, from, to, zero, 2));
    CHECK(cuGraphGetEdges(h, NULL, NULL, NULL, &edges));
    printf("edges after adding two: %zu\n", edges);
    CHECK(cuGraphRemoveDependencies(h, &x[0], &x[1], NULL, 1));
    CHECK(cuGraphGetEdges(h, NULL, NULL, NULL, &edges));
    CHECK(cuGraphGetRootNodes(h, NULL, &roots));
    printf("after removing one: %zu edge, %zu roots\n", edges, roots);
    CHECK(cuGraphDestroyNode(x[2]));
    CHECK(cuGraphGetEdges(h, NULL, NULL, NULL, &edges));
    printf("after destroying a node: %zu nodes, %zu edges\n", count_nodes(h), edges);

    CHECK(cuGraphDestroy(h));
    CHECK(cuGraphDestroy(other));
    CHECK(cuGraphExecDestroy(exec));
    CHECK(cuGraphDestroy(same.g));
    CHECK(cuGraphDestroy(r.g));
    for (int i = 0; i < 5; i++)
        CHECK(cuMemFree(*all[i]));
    CHECK(cuEventDestroy(ev));
    CHECK(cuStreamDestroy(s));
    CHECK(cuModuleUnload(mod));
    printf("done\n");
    return finish();
}
