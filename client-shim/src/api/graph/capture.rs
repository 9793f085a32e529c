//! Stream capture, following the driver's rules: an operation queued on a capturing stream becomes a node
//! depending on the stream's last nodes; an event recorded there carries those nodes to streams that wait on it
//! (which join the capture); synchronizing a capturing stream is refused and invalidates the capture. A capture
//! records into a new graph (`cuStreamBeginCapture`) or into an existing one after given nodes
//! (`cuStreamBeginCaptureToGraph`).

use std::sync::atomic::{AtomicUsize, Ordering};

use vgpu_cuda_sys::driver::{
    CUgraph, CUgraphEdgeData, CUgraphNode, CUstream, CUstreamCaptureMode, CUstreamCaptureStatus,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::{graphs, local_handle, local_id, read_deps, refuse, release_owned, Node};
use crate::{ffi, state};

/// A stream taking part in a capture: the graph it records into and the nodes its next operation follows.
pub(crate) struct Capture {
    pub(crate) graph: u64,
    origin: StreamId,
    deps: Vec<u64>,
    invalidated: bool,
    /// The capture sequence's id (`cuStreamGetCaptureInfo`).
    id: u64,
    /// Capturing into a graph the app made (`cuStreamBeginCaptureToGraph`): it stays the app's at the end.
    into_existing: bool,
    /// `deps` as handles and default edge data, as `cuStreamGetCaptureInfo` last handed them out (the arrays
    /// must stay put until the stream's next capture call).
    exported: Box<[CUgraphNode]>,
    exported_edges: Box<[CUgraphEdgeData]>,
}

// SAFETY: `exported` holds graph node handles, which are client-local ids, never dereferenced.
unsafe impl Send for Capture {}

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

fn new_capture(graph: u64, origin: StreamId, deps: Vec<u64>, id: u64, into_existing: bool) -> Capture {
    Capture {
        graph,
        origin,
        deps,
        invalidated: false,
        id,
        into_existing,
        exported: Box::new([]),
        exported_edges: Box::new([]),
    }
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
    match g.insert_node(graph, &deps, node) {
        Ok(id) => {
            if let Some(cap) = g.captures.get_mut(&key) {
                cap.deps = vec![id];
            }
            Some(Ok(()))
        }
        Err(e) => Some(Err(e)),
    }
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
    let Some((origin, id, into_existing)) = g
        .captures
        .values()
        .find(|c| c.graph == graph)
        .map(|c| (c.origin, c.id, c.into_existing))
    else {
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
            g.captures
                .insert(key, new_capture(graph, origin, deps, id, into_existing));
            CAPTURING.fetch_add(1, Ordering::Relaxed);
        }
    }
    true
}

/// Capture status of `key` and the capture's id (0 when none).
pub(crate) fn capture_status(key: StreamId) -> (CUstreamCaptureStatus, u64) {
    let (status, id, _, _) = capture_info(key);
    (status, id)
}

/// What `cuStreamGetCaptureInfo` reports: status, capture id, graph, and the nodes the stream's next operation
/// will follow (an array that stays valid until the next capture call on the stream) with their count.
pub(crate) fn capture_info(
    key: StreamId,
) -> (
    CUstreamCaptureStatus,
    u64,
    CUgraph,
    Option<(*const CUgraphNode, *const CUgraphEdgeData, usize)>,
) {
    use CUstreamCaptureStatus as S;
    let none = (S::CU_STREAM_CAPTURE_STATUS_NONE, 0, std::ptr::null_mut(), None);
    if CAPTURING.load(Ordering::Relaxed) == 0 {
        return none;
    }
    let mut g = graphs();
    let Some(c) = g.captures.get_mut(&key) else {
        return none;
    };
    let status = if c.invalidated {
        S::CU_STREAM_CAPTURE_STATUS_INVALIDATED
    } else {
        S::CU_STREAM_CAPTURE_STATUS_ACTIVE
    };
    c.exported = c.deps.iter().map(|&d| local_handle(d)).collect();
    c.exported_edges = vec![CUgraphEdgeData::default(); c.deps.len()].into_boxed_slice();
    let deps = (c.exported.as_ptr(), c.exported_edges.as_ptr(), c.deps.len());
    (status, c.id, local_handle(c.graph), Some(deps))
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
    if g.own_allocation(graph, dptr) {
        return Some(Ok(()));
    }
    drop(g);
    crate::log::log!(
        crate::log::WARN,
        "cuMemFreeAsync of memory allocated outside the capture, on a capturing stream: not supported by vGPU"
    );
    Some(refuse_sync(key))
}

impl super::Graphs {
    /// Memory `graph` allocated, freed in the graph too: from now on the graph's alone. `false`: the graph did
    /// not allocate it.
    pub(crate) fn own_allocation(&mut self, graph: u64, dptr: u64) -> bool {
        let Some(gr) = self.graphs.get_mut(&graph).filter(|gr| gr.allocated.contains(&dptr)) else {
            return false;
        };
        if !gr.owned.contains(&dptr) {
            gr.owned.push(dptr);
            self.holders.insert(dptr, 1);
        }
        true
    }
}

/// `cuStreamBeginCapture`, or with `target` (a graph and the nodes to follow) `cuStreamBeginCaptureToGraph`:
/// a capture in `mode` (the mode only shapes which calls other threads may make, which the client does not
/// police) on a stream that is not capturing yet.
fn begin_capture(
    flags: u16,
    stream: CUstream,
    mode: CUstreamCaptureMode,
    target: Option<(u64, Vec<u64>)>,
) -> CuResult<()> {
    super::super::need_ctx()?;
    let id = crate::api::stream::stream_id(stream)?;
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
    let capture_id = state::new_id();
    let capture = match target {
        Some((graph, deps)) => new_capture(graph, key, deps, capture_id, true),
        None => {
            let graph = g.new_graph(None, true)?;
            new_capture(graph, key, Vec::new(), capture_id, false)
        }
    };
    g.captures.insert(key, capture);
    CAPTURING.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Ends the capture that began on `key`; hands out its graph.
fn end_capture(key: StreamId, out: *mut CUgraph) -> CuResult<()> {
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
    let (graph, invalidated, into_existing) = (cap.graph, cap.invalidated, cap.into_existing);
    let before = g.captures.len();
    g.captures.retain(|_, c| c.graph != graph);
    CAPTURING.fetch_sub(before - g.captures.len(), Ordering::Relaxed);
    g.events.retain(|_, (gr, _)| *gr != graph);
    if invalidated {
        // A graph the capture made goes with it; the app's own graph stays the app's, as natively.
        if !into_existing {
            let mirrored = g.graphs.get(&graph).is_some_and(|gr| gr.mirrored);
            let owned = g.forget_graph(graph);
            if mirrored {
                crate::client::post(0, &GraphDestroy { graph: GraphId(graph) }, &[])?;
            }
            release_owned(g, owned)?;
        }
        ffi::write(out, std::ptr::null_mut())?;
        return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    }
    ffi::write(out, local_handle(graph))
}

/// `cuStreamUpdateCaptureDependencies`: `flags` 0 adds `deps` to what the stream's next operation follows,
/// 1 replaces it.
fn update_dependencies(
    flags: u16,
    stream: CUstream,
    deps: *mut CUgraphNode,
    data: *const CUgraphEdgeData,
    n: usize,
    mode: u32,
) -> CuResult<()> {
    let key = key(flags, crate::api::stream::stream_id(stream)?);
    let mut g = graphs();
    let graph = match g.captures.get(&key) {
        Some(c) if c.invalidated => return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED),
        Some(c) => c.graph,
        None => return Err(CUDA_ERROR_ILLEGAL_STATE),
    };
    let new = read_deps(&g, deps, data, n)?;
    if new.iter().any(|d| g.node_graph.get(d) != Some(&graph)) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let Some(cap) = g.captures.get_mut(&key) else {
        return Err(CUDA_ERROR_ILLEGAL_STATE);
    };
    match mode {
        0 => {
            for d in new {
                if !cap.deps.contains(&d) {
                    cap.deps.push(d);
                }
            }
        }
        1 => cap.deps = new,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    Ok(())
}

/// `cuStreamBeginCaptureToGraph`: the graph must be the app's (not a graph a node owns... except a conditional
/// node's body, which is what XLA captures into), the dependencies nodes of it.
fn begin_capture_to_graph(
    flags: u16,
    stream: CUstream,
    graph: CUgraph,
    deps: *const CUgraphNode,
    data: *const CUgraphEdgeData,
    n: usize,
    mode: CUstreamCaptureMode,
) -> CuResult<()> {
    let target = {
        let g = graphs();
        let gr = g.graph(graph)?;
        if gr
            .owner
            .is_some_and(|o| !matches!(g.node(local_handle(o)), Ok((_, Node::Conditional { .. }))))
        {
            return refuse(
                "cuStreamBeginCaptureToGraph into a child graph node's graph",
                CUDA_ERROR_INVALID_VALUE,
            );
        }
        let list = read_deps(&g, deps, data, n)?;
        if list.iter().any(|d| g.node_graph.get(d) != Some(&local_id(graph))) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        (local_id(graph), list)
    };
    begin_capture(flags, stream, mode, Some(target))
}

entry! {
    cuStreamBeginCapture, cuStreamBeginCapture_ptsz => |f, stream| {
        // The CUDA 10.0 form has no mode: the driver captures in CU_STREAM_CAPTURE_MODE_GLOBAL.
        begin_capture(f, stream, CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL, None)
    }
    cuStreamBeginCapture_v2, cuStreamBeginCapture_v2_ptsz => |f, stream, mode| {
        begin_capture(f, stream, mode, None)
    }
    cuStreamBeginCaptureToGraph, cuStreamBeginCaptureToGraph_ptsz => |f, stream, graph, deps, data, n, mode| {
        begin_capture_to_graph(f, stream, graph, deps, data, n, mode)
    }
    cuStreamEndCapture, cuStreamEndCapture_ptsz => |f, stream, out| {
        let id = crate::api::stream::stream_id(stream)?;
        end_capture(key(f, id), out)
    }
    cuStreamUpdateCaptureDependencies, cuStreamUpdateCaptureDependencies_ptsz => |f, stream, deps, n, flags| {
        update_dependencies(f, stream, deps, std::ptr::null(), n, flags)
    }
    cuStreamUpdateCaptureDependencies_v2, cuStreamUpdateCaptureDependencies_v2_ptsz => |f, stream, deps, data, n, flags| {
        update_dependencies(f, stream, deps, data, n, flags)
    }
}

#[cfg(test)]
pub(super) fn begin_for_test(key: StreamId) -> u64 {
    let mut g = graphs();
    let graph = state::new_id();
    g.graphs.insert(graph, super::Graph::default());
    g.captures
        .insert(key, new_capture(graph, key, Vec::new(), state::new_id(), false));
    CAPTURING.fetch_add(1, Ordering::Relaxed);
    graph
}

#[cfg(test)]
pub(super) fn end_for_test(graph: u64) {
    let mut g = graphs();
    let before = g.captures.len();
    g.captures.retain(|_, c| c.graph != graph);
    CAPTURING.fetch_sub(before - g.captures.len(), Ordering::Relaxed);
}
