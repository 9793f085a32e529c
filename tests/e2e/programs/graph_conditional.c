/* Conditional graph nodes as XLA's command buffers build them (lax.cond, lax.switch, lax.while_loop): a kernel
 * sets each handle from device code (cudaGraphSetConditional) right before its node; an IF with an ELSE body, a
 * SWITCH of three bodies, a WHILE whose body kernel ends the loop, and an IF whose handle gets its default value
 * at every launch (CU_GRAPH_COND_ASSIGN_DEFAULT). Three launches with different conditions, the last after a
 * node inside a body was updated through the executable graph (cuGraphExecMemsetNodeSetParams).
 * Kernels: kernels/conditional.cu (PTX: the driver resolves cudaGraphSetConditional at JIT time). */
#include "common.h"
#include "conditional_ptx.h"

static CUcontext g_ctx;

/* A kernel node running `f` once (one thread) with `args`. */
static CUgraphNode add_kernel(CUgraph g, const CUgraphNode *deps, size_t n, CUfunction f, void **args)
{
    CUDA_KERNEL_NODE_PARAMS p;
    memset(&p, 0, sizeof p);
    p.func = f;
    p.gridDimX = p.gridDimY = p.gridDimZ = 1;
    p.blockDimX = p.blockDimY = p.blockDimZ = 1;
    p.kernelParams = args;
    CUgraphNode node;
    CHECK(cuGraphAddKernelNode(&node, g, deps, n, &p));
    return node;
}

/* A memset node writing one 32-bit `value` at `dst`. */
static CUDA_MEMSET_NODE_PARAMS word(CUdeviceptr dst, unsigned int value)
{
    CUDA_MEMSET_NODE_PARAMS m;
    memset(&m, 0, sizeof m);
    m.dst = dst;
    m.value = value;
    m.elementSize = 4;
    m.width = 1;
    m.height = 1;
    return m;
}

static CUgraphNode add_word(CUgraph g, CUdeviceptr dst, unsigned int value)
{
    CUDA_MEMSET_NODE_PARAMS m = word(dst, value);
    CUgraphNode node;
    CHECK(cuGraphAddMemsetNode(&node, g, NULL, 0, &m, g_ctx));
    return node;
}

/* A conditional node after `dep`; its body graphs come back in `bodies`. */
static CUgraphNode add_conditional(CUgraph g, CUgraphNode dep, CUgraphConditionalHandle h,
                                   CUgraphConditionalNodeType type, unsigned int size, CUgraph *bodies)
{
    CUgraphNodeParams p;
    memset(&p, 0, sizeof p);
    p.type = CU_GRAPH_NODE_TYPE_CONDITIONAL;
    p.conditional.handle = h;
    p.conditional.type = type;
    p.conditional.size = size;
    p.conditional.ctx = g_ctx;
    CUgraphNode node;
    CHECK(cuGraphAddNode_v2(&node, g, dep ? &dep : NULL, NULL, dep ? 1 : 0, &p));
    for (unsigned int i = 0; i < size; i++)
        bodies[i] = p.conditional.phGraph_out[i];
    return node;
}

static size_t node_count(CUgraph g)
{
    size_t n = 0;
    CHECK(cuGraphGetNodes(g, NULL, &n));
    return n;
}

/* One launch with these condition values; returns the flags and loop count it left. */
static void run(CUgraphExec exec, CUstream s, CUdeviceptr values, CUdeviceptr flags, CUdeviceptr counter,
                const uint32_t want_values[3], uint32_t got_flags[3], uint32_t *got_count)
{
    CHECK(cuMemcpyHtoD(values, want_values, 3 * sizeof(uint32_t)));
    CHECK(cuMemsetD32(flags, 0, 3));
    CHECK(cuMemsetD32(counter, 0, 1));
    CHECK(cuGraphLaunch(exec, s));
    CHECK(cuStreamSynchronize(s));
    CHECK(cuMemcpyDtoH(got_flags, flags, 3 * sizeof(uint32_t)));
    CHECK(cuMemcpyDtoH(got_count, counter, sizeof(uint32_t)));
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    CUdevice dev;
    g_ctx = setup(&dev);
    CUmodule mod;
    CHECK(cuModuleLoadData(&mod, conditional_ptx));
    CUfunction set_condition = get_function(mod, "set_condition");
    CUfunction while_step = get_function(mod, "while_step");
    printf("module calling cudaGraphSetConditional loaded\n");
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CUdeviceptr values, flags, counter;
    CHECK(cuMemAlloc(&values, 3 * sizeof(uint32_t)));
    CHECK(cuMemAlloc(&flags, 3 * sizeof(uint32_t)));
    CHECK(cuMemAlloc(&counter, sizeof(uint32_t)));

    CUgraph g;
    CHECK(cuGraphCreate(&g, 0));
    CUgraphConditionalHandle h_if, h_switch, h_while, h_default;
    CHECK(cuGraphConditionalHandleCreate(&h_if, g, g_ctx, 0, 0));
    CHECK(cuGraphConditionalHandleCreate(&h_switch, g, g_ctx, 0, 0));
    CHECK(cuGraphConditionalHandleCreate(&h_while, g, g_ctx, 0, 0));
    CHECK(cuGraphConditionalHandleCreate(&h_default, g, g_ctx, 1, CU_GRAPH_COND_ASSIGN_DEFAULT));
    printf("four conditional handles made\n");

    /* IF (values[0]): then writes flags[0] = 1, else flags[0] = 2. */
    CUdeviceptr v0 = values, v1 = values + 4, v2 = values + 8;
    void *set_if_args[] = {&h_if, &v0};
    CUgraphNode set_if = add_kernel(g, NULL, 0, set_condition, set_if_args);
    CUgraph if_bodies[2];
    CUgraphNode if_node = add_conditional(g, set_if, h_if, CU_GRAPH_COND_TYPE_IF, 2, if_bodies);
    CUgraphNode then_word = add_word(if_bodies[0], flags, 1);
    add_word(if_bodies[1], flags, 2);

    /* SWITCH (values[1]): body i writes flags[1] = 10 + i. */
    void *set_switch_args[] = {&h_switch, &v1};
    CUgraphNode set_switch = add_kernel(g, &if_node, 1, set_condition, set_switch_args);
    CUgraph switch_bodies[3];
    CUgraphNode switch_node = add_conditional(g, set_switch, h_switch, CU_GRAPH_COND_TYPE_SWITCH, 3, switch_bodies);
    for (unsigned int i = 0; i < 3; i++)
        add_word(switch_bodies[i], flags + 4, 10 + i);

    /* WHILE (entered when values[2] != 0): the body counts and ends the loop after 5 iterations. */
    void *set_while_args[] = {&h_while, &v2};
    CUgraphNode set_while = add_kernel(g, &switch_node, 1, set_condition, set_while_args);
    CUgraph while_body;
    CUgraphNode while_node = add_conditional(g, set_while, h_while, CU_GRAPH_COND_TYPE_WHILE, 1, &while_body);
    unsigned int limit = 5;
    void *step_args[] = {&h_while, &counter, &limit};
    add_kernel(while_body, NULL, 0, while_step, step_args);

    /* IF on a handle whose default (1) every launch assigns: writes flags[2] = 7. */
    CUgraph default_body;
    add_conditional(g, while_node, h_default, CU_GRAPH_COND_TYPE_IF, 1, &default_body);
    add_word(default_body, flags + 8, 7);

    CUgraphNodeType type;
    CHECK(cuGraphNodeGetType(if_node, &type));
    printf("conditional node type: %d\n", (int)type);
    printf("top-level nodes: %zu\n", node_count(g));
    printf("body nodes: then %zu, else %zu, switch %zu %zu %zu, while %zu, default %zu\n", node_count(if_bodies[0]),
           node_count(if_bodies[1]), node_count(switch_bodies[0]), node_count(switch_bodies[1]),
           node_count(switch_bodies[2]), node_count(while_body), node_count(default_body));

    CUgraphExec exec;
    CHECK(cuGraphInstantiateWithFlags(&exec, g, 0));
    printf("instantiated\n");

    uint32_t f[3], count;
    const uint32_t first[3] = {1, 2, 1};
    run(exec, s, values, flags, counter, first, f, &count);
    result(f[0] == 1 && f[1] == 12 && f[2] == 7 && count == 5,
           "launch 1: IF took its then body, SWITCH body 2, WHILE ran 5 times, the default IF ran");
    if (f[0] != 1 || f[1] != 12 || f[2] != 7 || count != 5)
        fprintf(stderr, "launch 1: flags %u %u %u, count %u\n", f[0], f[1], f[2], count);

    const uint32_t second[3] = {0, 7, 0};
    run(exec, s, values, flags, counter, second, f, &count);
    result(f[0] == 2 && f[1] == 0 && f[2] == 7 && count == 0,
           "launch 2: IF took its else body, SWITCH no body, WHILE did not run, the default IF ran");
    if (f[0] != 2 || f[1] != 0 || f[2] != 7 || count != 0)
        fprintf(stderr, "launch 2: flags %u %u %u, count %u\n", f[0], f[1], f[2], count);

    /* A node inside the IF's then body, updated through the executable graph. */
    CUDA_MEMSET_NODE_PARAMS three = word(flags, 3);
    CHECK(cuGraphExecMemsetNodeSetParams(exec, then_word, &three, g_ctx));
    printf("then body node updated in the executable graph\n");
    const uint32_t third[3] = {1, 0, 1};
    run(exec, s, values, flags, counter, third, f, &count);
    result(f[0] == 3 && f[1] == 10 && f[2] == 7 && count == 5,
           "launch 3: the updated then body wrote 3, SWITCH body 0, WHILE ran 5 times");
    if (f[0] != 3 || f[1] != 10 || f[2] != 7 || count != 5)
        fprintf(stderr, "launch 3: flags %u %u %u, count %u\n", f[0], f[1], f[2], count);

    CHECK(cuGraphExecDestroy(exec));
    CHECK(cuGraphDestroy(g));
    CHECK(cuMemFree(values));
    CHECK(cuMemFree(flags));
    CHECK(cuMemFree(counter));
    CHECK(cuStreamDestroy(s));
    CHECK(cuModuleUnload(mod));
    printf("done\n");
    return finish();
}
