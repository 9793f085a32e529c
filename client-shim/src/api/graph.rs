//! CUDA graphs and stream capture, kept on the client: a graph is a list of recorded operations with their
//! dependencies; launching it replays them, in dependency order, onto the stream through the usual paths.
//!
//! Capture follows the driver's rules: an operation queued on a capturing stream becomes a node depending on
//! the stream's last nodes; an event recorded there carries those nodes to streams that wait on it (which
//! join the capture); synchronizing a capturing stream is refused and invalidates the capture. Replay is
//! serial on the launch stream, which orders nodes at least as strictly as their dependencies ask.

use std::collections::HashMap;
use std::ffi::c_void;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use vgpu_cuda_sys::driver::{
    CUgraph, CUgraphEdgeData, CUgraphExec, CUgraphInstantiateResult, CUgraphNode, CUhostFn, CUstream,
    CUstreamCaptureMode, CUstreamCaptureStatus, CUDA_GRAPH_INSTANTIATE_PARAMS, CUDA_HOST_NODE_PARAMS,
    CUDA_KERNEL_NODE_PARAMS, CUDA_MEMCPY2D, CUDA_MEMCPY3D, CUDA_MEMSET_NODE_PARAMS,
};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::ClientHandle;
use crate::{ffi, state};

/// One recorded operation.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    Kernel {
        function: FunctionId,
        shape: LaunchShape,
        args: Vec<u8>,
    },
    Memset {
        dst: u64,
        pitch: usize,
        value: u32,
        elem: u32,
        width: usize,
        height: usize,
    },
    HtoD {
        dst: u64,
        src: usize,
        n: usize,
    },
    DtoH {
        dst: usize,
        src: u64,
        n: usize,
    },
    DtoD {
        dst: u64,
        src: u64,
        n: usize,
    },
    /// A `CUDA_MEMCPY2D` as given.
    Copy2D(Vec<u8>),
    /// A `CUDA_MEMCPY3D` as given.
    Copy3D(Vec<u8>),
    Host {
        function: CUhostFn,
        user: usize,
    },
    /// Stream memory operations (`cuStreamWriteValue32` and friends, or a batch).
    MemOps {
        ops: Vec<MemOp>,
        batch_flags: u32,
        single: bool,
    },
    Empty,
}

#[derive(Default, Clone)]
struct Graph {
    nodes: Vec<(u64, Node)>,
    edges: Vec<(u64, u64)>,
    /// Stream-ordered allocations made while capturing into this graph (`cuMemAllocAsync`): natively allocation
    /// nodes. Here they are allocated once, at capture. One the app does not free in the capture outlives the
    /// graph, as natively (the app frees it like any allocation).
    allocated: Vec<u64>,
    /// The subset freed in the capture too: memory the graph's launches use and nothing else sees, kept until the
    /// graph and every executable made from it are gone.
    owned: Vec<u64>,
}

/// A stream taking part in a capture: the graph it records into and the nodes its next operation follows.
struct Capture {
    graph: u64,
    origin: StreamId,
    deps: Vec<u64>,
    invalidated: bool,
}

#[derive(Default)]
struct Graphs {
    graphs: HashMap<u64, Graph>,
    /// Executable graphs: their nodes in an order that respects every dependency.
    execs: HashMap<u64, Vec<(u64, Node)>>,
    captures: HashMap<StreamId, Capture>,
    /// Events recorded in a capture: the graph and the nodes a waiting stream must follow.
    events: HashMap<EventId, (u64, Vec<u64>)>,
    /// The graph-owned allocations each executable holds.
    exec_owned: HashMap<u64, Vec<u64>>,
    /// How many graphs and executables hold each graph-owned allocation.
    holders: HashMap<u64, u32>,
}

/// Drops one hold on each allocation; those nobody holds any more are freed (synchronously, as `cuMemFree` is:
/// a launch of the graph may still be using them).
fn release_owned(mut g: MutexGuard<'static, Graphs>, owned: Vec<u64>) -> CuResult<()> {
    let mut free = Vec::new();
    for dptr in owned {
        if let Some(n) = g.holders.get_mut(&dptr) {
            *n -= 1;
            if *n == 0 {
                g.holders.remove(&dptr);
                free.push(dptr);
            }
        }
    }
    drop(g);
    for dptr in free {
        // Gone already if the app freed it itself (an error natively, which the app saw then).
        let route = super::route_of_ptr(dptr);
        if state::write().remove_device_range(dptr).is_some() {
            crate::client::call_to(route, 0, &MemFree { dptr: DevicePtr(dptr) }, &[])?;
        }
    }
    Ok(())
}

/// `cuMemAllocAsync` on stream `key`: when it is capturing, the allocation is the capture's graph's.
pub(crate) fn capture_alloc(key: StreamId, dptr: u64) {
    if CAPTURING.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut g = graphs();
    let Some(graph) = g.captures.get(&key).map(|c| c.graph) else {
        return;
    };
    if let Some(gr) = g.graphs.get_mut(&graph) {
        gr.allocated.push(dptr);
    }
}

/// `cuMemFreeAsync` on stream `key`. `None`: the stream is not capturing (free as usual). Memory the capture's
/// graph allocated stays the graph's (natively a free node, whose memory the next launch allocates again); memory
/// from outside the capture cannot be freed by a graph here, so the capture ends, as with any call it cannot take.
pub(crate) fn capture_free(key: StreamId, dptr: u64) -> Option<CuResult<()>> {
    if CAPTURING.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut g = graphs();
    let graph = g.captures.get(&key)?.graph;
    if let Some(gr) = g.graphs.get_mut(&graph).filter(|gr| gr.allocated.contains(&dptr)) {
        if !gr.owned.contains(&dptr) {
            gr.owned.push(dptr);
            g.holders.insert(dptr, 1);
        }
        return Some(Ok(()));
    }
    drop(g);
    crate::log::log!(
        crate::log::WARN,
        "cuMemFreeAsync of memory allocated outside the capture, on a capturing stream: not supported by vGPU"
    );
    Some(refuse_sync(key))
}

fn graphs() -> MutexGuard<'static, Graphs> {
    static G: OnceLock<Mutex<Graphs>> = OnceLock::new();
    G.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Streams capturing right now, so that the common case (none) costs one atomic load.
static CAPTURING: AtomicUsize = AtomicUsize::new(0);

/// The capture key of a stream: the per-thread default stream is its own stream; the legacy one (0, 1)
/// cannot be captured.
pub(crate) fn key(flags: u16, stream: StreamId) -> StreamId {
    if stream == StreamId::NULL && flags & FLAG_PER_THREAD != 0 {
        StreamId::PER_THREAD
    } else {
        stream
    }
}

pub(crate) fn is_capturing(key: StreamId) -> bool {
    CAPTURING.load(Ordering::Relaxed) > 0 && graphs().captures.contains_key(&key)
}

/// Records `node` on capturing stream `key`. `None`: the stream is not capturing (run it as usual).
pub(crate) fn capture(key: StreamId, node: Node) -> Option<CuResult<()>> {
    if CAPTURING.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut g = graphs();
    let cap = g.captures.get(&key)?;
    if cap.invalidated {
        return Some(Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED));
    }
    let (graph, deps) = (cap.graph, cap.deps.clone());
    let id = state::new_id();
    let gr = g.graphs.entry(graph).or_default();
    gr.nodes.push((id, node));
    gr.edges.extend(deps.iter().map(|&d| (d, id)));
    if let Some(cap) = g.captures.get_mut(&key) {
        cap.deps = vec![id];
    }
    Some(Ok(()))
}

/// A synchronizing call on a capturing stream: refused, and the capture is invalidated, as natively.
pub(crate) fn refuse_sync(key: StreamId) -> CuResult<()> {
    if CAPTURING.load(Ordering::Relaxed) == 0 {
        return Ok(());
    }
    let mut g = graphs();
    let Some(graph) = g.captures.get(&key).map(|c| c.graph) else {
        return Ok(());
    };
    for c in g.captures.values_mut().filter(|c| c.graph == graph) {
        c.invalidated = true;
    }
    Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
}

/// `cuEventRecord` on a capturing stream: remembers where the capture stands. `true`: handled.
pub(crate) fn record_event(key: StreamId, event: EventId) -> bool {
    if CAPTURING.load(Ordering::Relaxed) == 0 {
        return false;
    }
    let mut g = graphs();
    let Some(cap) = g.captures.get(&key) else {
        return false;
    };
    let entry = (cap.graph, cap.deps.clone());
    g.events.insert(event, entry);
    true
}

/// `cuStreamWaitEvent` on an event recorded in a capture: the waiting stream joins the capture (or adds the
/// event's nodes to what it follows). `true`: handled.
pub(crate) fn wait_event(key: StreamId, event: EventId) -> bool {
    if CAPTURING.load(Ordering::Relaxed) == 0 {
        return false;
    }
    let mut g = graphs();
    let Some((graph, deps)) = g.events.get(&event).cloned() else {
        return false;
    };
    let origin = g.captures.values().find(|c| c.graph == graph).map(|c| c.origin);
    let Some(origin) = origin else {
        return false;
    };
    match g.captures.get_mut(&key) {
        Some(c) => {
            for d in deps {
                if !c.deps.contains(&d) {
                    c.deps.push(d);
                }
            }
        }
        None => {
            g.captures.insert(
                key,
                Capture {
                    graph,
                    origin,
                    deps,
                    invalidated: false,
                },
            );
            CAPTURING.fetch_add(1, Ordering::Relaxed);
        }
    }
    true
}

/// Capture status of `key` and the capture's id (its graph's; 0 when none).
pub(crate) fn capture_status(key: StreamId) -> (CUstreamCaptureStatus, u64) {
    use CUstreamCaptureStatus as S;
    if CAPTURING.load(Ordering::Relaxed) == 0 {
        return (S::CU_STREAM_CAPTURE_STATUS_NONE, 0);
    }
    match graphs().captures.get(&key) {
        Some(c) if c.invalidated => (S::CU_STREAM_CAPTURE_STATUS_INVALIDATED, c.graph),
        Some(c) => (S::CU_STREAM_CAPTURE_STATUS_ACTIVE, c.graph),
        None => (S::CU_STREAM_CAPTURE_STATUS_NONE, 0),
    }
}

/// Graphs, executable graphs and graph nodes live in the client: their handles carry client-local ids.
fn local_id<T>(handle: *mut T) -> u64 {
    handle as u64
}

fn local_handle<T>(id: u64) -> *mut T {
    id as *mut T
}

fn known_graph(g: &Graphs, graph: CUgraph) -> CuResult<u64> {
    let id = local_id(graph);
    if g.graphs.contains_key(&id) {
        Ok(id)
    } else {
        Err(CUDA_ERROR_INVALID_VALUE)
    }
}

/// Adds a node built by hand, after `deps`.
fn add_node(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, n: usize, node: Node) -> CuResult<()> {
    if out.is_null() || (n > 0 && deps.is_null()) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut g = graphs();
    let graph = known_graph(&g, graph)?;
    let id = state::new_id();
    let gr = g.graphs.entry(graph).or_default();
    let mut edges = Vec::with_capacity(n);
    for i in 0..n {
        let d = local_id(ffi::read(deps.wrapping_add(i))?);
        if !gr.nodes.iter().any(|(nid, _)| *nid == d) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        edges.push((d, id));
    }
    gr.nodes.push((id, node));
    gr.edges.extend(edges);
    ffi::write(out, local_handle(id))
}

/// The nodes of `graph` in an order that respects its edges (Kahn's algorithm; ties in insertion order).
fn ordered(graph: &Graph) -> CuResult<Vec<(u64, Node)>> {
    let mut indegree: HashMap<u64, usize> = graph.nodes.iter().map(|(id, _)| (*id, 0)).collect();
    for (_, to) in &graph.edges {
        *indegree.entry(*to).or_default() += 1;
    }
    let mut done = Vec::with_capacity(graph.nodes.len());
    let mut left: Vec<&(u64, Node)> = graph.nodes.iter().collect();
    while !left.is_empty() {
        let Some(pos) = left.iter().position(|(id, _)| indegree.get(id) == Some(&0)) else {
            // A cycle: the driver refuses to instantiate it.
            return Err(CUDA_ERROR_INVALID_VALUE);
        };
        let (id, node) = left.remove(pos);
        for (_, to) in graph.edges.iter().filter(|(from, _)| from == id) {
            if let Some(d) = indegree.get_mut(to) {
                *d -= 1;
            }
        }
        done.push((*id, node.clone()));
    }
    Ok(done)
}

fn instantiate(out: *mut CUgraphExec, graph: CUgraph) -> CuResult<()> {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut g = graphs();
    let id = known_graph(&g, graph)?;
    let order = ordered(&g.graphs[&id])?;
    let owned = g.graphs[&id].owned.clone();
    let exec = state::new_id();
    g.execs.insert(exec, order);
    for dptr in &owned {
        *g.holders.entry(*dptr).or_insert(0) += 1;
    }
    g.exec_owned.insert(exec, owned);
    ffi::write(out, local_handle(exec))
}

/// Queues one node on `stream` through the ordinary paths.
fn replay(flags: u16, stream: CUstream, node: &Node) -> CuResult<()> {
    match node {
        Node::Kernel { function, shape, args } => super::launch::launch_packed(flags, *function, *shape, stream, args),
        Node::Memset {
            dst,
            pitch,
            value,
            elem,
            width,
            height,
        } => super::memset::memset_async(flags, *dst, *pitch, *value, *elem, *width, *height, stream),
        Node::HtoD { dst, src, n } => super::copy::htod_async(flags, *dst, *src as *const c_void, *n, stream),
        Node::DtoH { dst, src, n } => super::copy::dtoh_async(flags, *dst as *mut c_void, *src, *n, stream),
        Node::DtoD { dst, src, n } => super::copy::dtod_async(flags, *dst, *src, *n, stream),
        Node::Copy2D(raw) => super::copy2d::copy_2d(flags, raw.as_ptr() as *const CUDA_MEMCPY2D, Some(stream)),
        Node::Copy3D(raw) => super::copy2d::copy_3d(flags, raw.as_ptr() as *const CUDA_MEMCPY3D, Some(stream)),
        Node::Host { function, user } => super::stream::host_callback(flags, stream, |status| {
            if status == CUDA_SUCCESS {
                ffi::call_host_fn(*function, *user)
            }
        }),
        Node::MemOps {
            ops,
            batch_flags,
            single,
        } => super::stream_mem::submit(flags, stream, ops, *batch_flags, *single),
        Node::Empty => Ok(()),
    }
}

/// `cuGraphGetEdges`: the count alone when `from` and `to` are NULL; else up to `*count` edges (with zeroed
/// edge data: default edges).
fn edges(
    graph: CUgraph,
    from: *mut CUgraphNode,
    to: *mut CUgraphNode,
    data: *mut CUgraphEdgeData,
    count: *mut usize,
) -> CuResult<()> {
    let g = graphs();
    let gr = g.graphs.get(&local_id(graph)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if from.is_null() && to.is_null() {
        return ffi::write(count, gr.edges.len());
    }
    let want = ffi::read(count)?;
    for (i, (a, b)) in gr.edges.iter().take(want).enumerate() {
        ffi::write(from.wrapping_add(i), local_handle(*a))?;
        ffi::write(to.wrapping_add(i), local_handle(*b))?;
        if !data.is_null() {
            ffi::write(data.wrapping_add(i), CUgraphEdgeData::default())?;
        }
    }
    ffi::write(count, want.min(gr.edges.len()))
}

fn kernel_node(params: *const CUDA_KERNEL_NODE_PARAMS) -> CuResult<Node> {
    let p: CUDA_KERNEL_NODE_PARAMS = ffi::read(params)?;
    let f = if p.func.is_null() { p.kern.id() } else { p.func.id() };
    let args = super::launch::pack_args(f, p.kernelParams, p.extra)?;
    Ok(Node::Kernel {
        function: f,
        shape: LaunchShape {
            grid: [p.gridDimX, p.gridDimY, p.gridDimZ],
            block: [p.blockDimX, p.blockDimY, p.blockDimZ],
            shared_mem: p.sharedMemBytes,
            cooperative: false,
            cluster: [1, 1, 1],
        },
        args,
    })
}

fn memset_node(params: *const CUDA_MEMSET_NODE_PARAMS) -> CuResult<Node> {
    let p: CUDA_MEMSET_NODE_PARAMS = ffi::read(params)?;
    if !matches!(p.elementSize, 1 | 2 | 4) || p.width == 0 || p.height == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(Node::Memset {
        dst: p.dst,
        pitch: if p.height > 1 {
            p.pitch
        } else {
            p.width * p.elementSize as usize
        },
        value: p.value,
        elem: p.elementSize,
        width: p.width,
        height: p.height,
    })
}

/// `cuStreamBeginCapture`: a capture in `mode` (the mode only shapes which calls other threads may make, which the
/// client does not police) on a stream that is not capturing yet.
fn begin_capture(flags: u16, stream: CUstream, mode: CUstreamCaptureMode) -> CuResult<()> {
    super::need_ctx()?;
    let id = super::stream::stream_id(stream)?;
    let key = key(flags, id);
    if key == StreamId::NULL || key == StreamId::LEGACY {
        // The legacy default stream cannot be captured.
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    if mode.0 > CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED.0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut g = graphs();
    if g.captures.contains_key(&key) {
        return Err(CUDA_ERROR_ILLEGAL_STATE);
    }
    let graph = state::new_id();
    g.graphs.insert(graph, Graph::default());
    g.captures.insert(
        key,
        Capture {
            graph,
            origin: key,
            deps: Vec::new(),
            invalidated: false,
        },
    );
    CAPTURING.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

entry! {
    cuStreamBeginCapture, cuStreamBeginCapture_ptsz => |f, stream| {
        // The CUDA 10.0 form has no mode: the driver captures in CU_STREAM_CAPTURE_MODE_GLOBAL.
        begin_capture(f, stream, CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
    }
    cuStreamBeginCapture_v2, cuStreamBeginCapture_v2_ptsz => |f, stream, mode| {
        begin_capture(f, stream, mode)
    }
    cuStreamEndCapture, cuStreamEndCapture_ptsz => |f, stream, out| {
        let id = super::stream::stream_id(stream)?;
        let key = key(f, id);
        if out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut g = graphs();
        let Some(cap) = g.captures.get(&key) else {
            return Err(CUDA_ERROR_ILLEGAL_STATE);
        };
        if cap.origin != key {
            return Err(CUDA_ERROR_ILLEGAL_STATE);
        }
        let (graph, invalidated) = (cap.graph, cap.invalidated);
        let before = g.captures.len();
        g.captures.retain(|_, c| c.graph != graph);
        CAPTURING.fetch_sub(before - g.captures.len(), Ordering::Relaxed);
        g.events.retain(|_, (gr, _)| *gr != graph);
        if invalidated {
            let owned = g.graphs.remove(&graph).map(|gr| gr.owned).unwrap_or_default();
            release_owned(g, owned)?;
            ffi::write(out, std::ptr::null_mut())?;
            return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        }
        ffi::write(out, local_handle(graph))
    }
    cuGraphCreate => |f, out, flags| {
        if out.is_null() || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let graph = state::new_id();
        graphs().graphs.insert(graph, Graph::default());
        ffi::write(out, local_handle(graph))
    }
    cuGraphDestroy => |f, graph| {
        let mut g = graphs();
        match g.graphs.remove(&local_id(graph)) {
            Some(gr) => release_owned(g, gr.owned),
            None => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    cuGraphAddKernelNode_v2 => |f, out, graph, deps, n, params| {
        add_node(out, graph, deps, n, kernel_node(params)?)
    }
    cuGraphAddMemsetNode => |f, out, graph, deps, n, params, _ctx| {
        add_node(out, graph, deps, n, memset_node(params)?)
    }
    cuGraphAddMemcpyNode => |f, out, graph, deps, n, params, _ctx| {
        let raw = ffi::bytes(params as *const u8, std::mem::size_of::<CUDA_MEMCPY3D>())?.to_vec();
        add_node(out, graph, deps, n, Node::Copy3D(raw))
    }
    cuGraphAddHostNode => |f, out, graph, deps, n, params| {
        let p: CUDA_HOST_NODE_PARAMS = ffi::read(params)?;
        if p.fn_.is_none() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        add_node(out, graph, deps, n, Node::Host { function: p.fn_, user: p.userData as usize })
    }
    cuGraphAddEmptyNode => |f, out, graph, deps, n| {
        add_node(out, graph, deps, n, Node::Empty)
    }
    cuGraphGetNodes => |f, graph, nodes, count| {
        let g = graphs();
        let gr = g.graphs.get(&local_id(graph)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if nodes.is_null() {
            return ffi::write(count, gr.nodes.len());
        }
        let want = ffi::read(count)?;
        for (i, (id, _)) in gr.nodes.iter().take(want).enumerate() {
            ffi::write(nodes.wrapping_add(i), local_handle(*id))?;
        }
        ffi::write(count, want.min(gr.nodes.len()))
    }
    cuGraphGetEdges => |f, graph, from, to, count| {
        edges(graph, from, to, std::ptr::null_mut(), count)
    }
    cuGraphGetEdges_v2 => |f, graph, from, to, data, count| {
        edges(graph, from, to, data, count)
    }
    cuGraphInstantiateWithFlags => |f, out, graph, flags| {
        instantiate(out, graph)
    }
    cuGraphInstantiateWithParams, cuGraphInstantiateWithParams_ptsz => |f, out, graph, params| {
        let r = instantiate(out, graph);
        if !params.is_null() {
            let mut p: CUDA_GRAPH_INSTANTIATE_PARAMS = ffi::read(params)?;
            p.hErrNode_out = std::ptr::null_mut();
            p.result_out = if r.is_ok() {
                CUgraphInstantiateResult::CUDA_GRAPH_INSTANTIATE_SUCCESS
            } else {
                CUgraphInstantiateResult::CUDA_GRAPH_INSTANTIATE_ERROR
            };
            ffi::write(params, p)?;
        }
        r
    }
    cuGraphLaunch, cuGraphLaunch_ptsz => |f, exec, stream| {
        super::need_ctx()?;
        super::stream::stream_id(stream)?;
        let nodes = graphs().execs.get(&local_id(exec)).cloned().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        for (_, node) in &nodes {
            replay(f, stream, node)?;
        }
        Ok(())
    }
    cuGraphUpload, cuGraphUpload_ptsz => |f, exec, stream| {
        super::stream::stream_id(stream)?;
        if graphs().execs.contains_key(&local_id(exec)) { Ok(()) } else { Err(CUDA_ERROR_INVALID_VALUE) }
    }
    cuGraphExecDestroy => |f, exec| {
        let mut g = graphs();
        match g.execs.remove(&local_id(exec)) {
            Some(_) => {
                let owned = g.exec_owned.remove(&local_id(exec)).unwrap_or_default();
                release_owned(g, owned)
            }
            None => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    cuGraphExecKernelNodeSetParams_v2 => |f, exec, node, params| {
        let new = kernel_node(params)?;
        let mut g = graphs();
        let nodes = g.execs.get_mut(&local_id(exec)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let slot = nodes.iter_mut().find(|(id, _)| *id == local_id(node)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if !matches!(slot.1, Node::Kernel { .. }) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        slot.1 = new;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(key: StreamId) -> u64 {
        let graph = state::new_id();
        let mut g = graphs();
        g.graphs.insert(graph, Graph::default());
        g.captures.insert(
            key,
            Capture {
                graph,
                origin: key,
                deps: Vec::new(),
                invalidated: false,
            },
        );
        CAPTURING.fetch_add(1, Ordering::Relaxed);
        graph
    }

    fn op(key: StreamId) {
        assert_eq!(capture(key, Node::Empty), Some(Ok(())));
    }

    /// The fork/join capture of tests/cuda/graphs.cu: 7 nodes and 7 edges, as the driver builds it.
    #[test]
    fn capture_follows_stream_order_and_events() {
        let (s, s2) = (StreamId(0x7000_0010), StreamId(0x7000_0020));
        let (fork, join) = (EventId(0x7000_0030), EventId(0x7000_0040));
        let graph = begin(s);
        op(s); // H2D copy
        assert!(record_event(s, fork));
        assert!(wait_event(s2, fork)); // s2 joins the capture
        op(s2); // memset
        op(s2); // kernel
        assert!(record_event(s2, join));
        op(s); // kernel
        assert!(wait_event(s, join));
        op(s); // kernel after the join
        op(s); // host function
        op(s); // D2H copy
        let g = graphs();
        let gr = &g.graphs[&graph];
        assert_eq!(gr.nodes.len(), 7);
        assert_eq!(gr.edges.len(), 7);
        let order = ordered(gr).expect("acyclic");
        let pos = |id: u64| order.iter().position(|(n, _)| *n == id).unwrap_or(usize::MAX);
        for (from, to) in &gr.edges {
            assert!(pos(*from) < pos(*to), "edge {from:#x} -> {to:#x} out of order");
        }
        drop(g);
        // A synchronizing call invalidates the capture; its streams stay in it until it ends.
        assert_eq!(refuse_sync(s2), Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED));
        assert_eq!(
            capture_status(s).0,
            CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_INVALIDATED
        );
        assert_eq!(
            capture(s, Node::Empty),
            Some(Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED))
        );
        let mut g = graphs();
        let before = g.captures.len();
        g.captures.retain(|_, c| c.graph != graph);
        CAPTURING.fetch_sub(before - g.captures.len(), Ordering::Relaxed);
        drop(g);
        assert_eq!(capture(s, Node::Empty), None);
    }

    #[test]
    fn cycles_are_refused() {
        let g = Graph {
            nodes: vec![(1, Node::Empty), (2, Node::Empty)],
            edges: vec![(1, 2), (2, 1)],
            allocated: Vec::new(),
            owned: Vec::new(),
        };
        assert!(ordered(&g).is_err());
    }
}
