//! Executable graphs: instantiated from a graph's nodes as they are then. One whose every node the server can run
//! is instantiated there too and launched in one message (the kernels' pinned host memory pushed first, as for
//! a launch); the others are replayed here node by node onto the launch stream. Updates in place
//! (`cuGraphExec*SetParams`, `cuGraphExecUpdate`) change both copies.

use std::collections::HashMap;
use std::ffi::c_void;

use vgpu_cuda_sys::driver::{
    CUgraph, CUgraphExec, CUgraphExecUpdateResult, CUgraphExecUpdateResultInfo, CUgraphInstantiateResult, CUgraphNode,
    CUgraphNodeType, CUstream, CUDA_GRAPH_INSTANTIATE_PARAMS, CUDA_MEMCPY2D, CUDA_MEMCPY3D,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::params::{generic_node, kernel_node, memset_node, server_spec};
use super::{graphs, key, local_handle, local_id, ordered, refuse, release_owned, Graphs, Node};
use crate::api::event::event_id;
use crate::{client, ffi, state};

/// `CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH`: launches from device code.
const DEVICE_LAUNCH: u64 = 4;

/// One node of an executable graph: a child graph node holds its graph's nodes.
#[derive(Clone)]
pub(crate) struct Step {
    id: u64,
    node: Node,
    children: Vec<Step>,
}

pub(crate) struct Exec {
    /// The nodes in an order that respects every dependency (a child node's nodes inside it).
    steps: Vec<Step>,
    /// Instantiated on the server too, and launched there.
    server: bool,
    flags: u64,
    /// Every node of the graph it was made from, conditional bodies included, with its kind: the nodes the
    /// exec-level setters may name.
    kinds: HashMap<u64, CUgraphNodeType>,
    /// The graph's own nodes in creation order and its edges by index (what `cuGraphExecUpdate` compares).
    order: Vec<u64>,
    edges: Vec<(usize, usize)>,
    /// Each kernel node's arguments: what a launch scans for pinned host memory the server mirrors.
    kernel_args: HashMap<u64, Vec<u8>>,
    /// The graph-owned allocations this executable holds.
    owned: Vec<u64>,
}

/// The nodes of `graph` as an executable graph runs them.
fn steps(g: &Graphs, graph: u64) -> CuResult<Vec<Step>> {
    let gr = g.graphs.get(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    ordered(gr)?
        .into_iter()
        .map(|(id, node)| {
            let children = match &node {
                Node::Child { graph } => steps(g, *graph)?,
                _ => Vec::new(),
            };
            Ok(Step { id, node, children })
        })
        .collect()
}

/// Every node of `graph` and of the graphs its nodes own: kinds and kernel arguments.
fn survey(g: &Graphs, graph: u64, kinds: &mut HashMap<u64, CUgraphNodeType>, args: &mut HashMap<u64, Vec<u8>>) {
    let Some(gr) = g.graphs.get(&graph) else { return };
    for (id, node) in &gr.nodes {
        kinds.insert(*id, node.node_type());
        if let Node::Kernel { args: a, .. } = node {
            args.insert(*id, a.clone());
        }
        for o in node.owned_graphs() {
            survey(g, o, kinds, args);
        }
    }
}

/// A graph's shape: its nodes in creation order, its edges by index into them, and the nodes' types.
type Shape = (Vec<u64>, Vec<(usize, usize)>, Vec<CUgraphNodeType>);

/// The graph's nodes in creation order and its edges by index.
fn shape_of(g: &Graphs, graph: u64) -> CuResult<Shape> {
    let gr = g.graphs.get(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let order: Vec<u64> = gr.nodes.iter().map(|(id, _)| *id).collect();
    let index = |n: u64| order.iter().position(|&o| o == n).unwrap_or(usize::MAX);
    let mut edges: Vec<(usize, usize)> = gr.edges.iter().map(|(a, b)| (index(*a), index(*b))).collect();
    edges.sort_unstable();
    let kinds = gr.nodes.iter().map(|(_, n)| n.node_type()).collect();
    Ok((order, edges, kinds))
}

fn instantiate(out: *mut CUgraphExec, graph: CUgraph, flags: u64) -> CuResult<()> {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut g = graphs();
    let id = local_id(graph);
    let gr = g.graph(graph)?;
    if gr.owner.is_some() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mirrored = gr.mirrored;
    let owned = gr.owned.clone();
    let steps = steps(&g, id)?;
    let (client_only, conditional) = g.traits(id);
    if conditional && client_only {
        return refuse(
            "instantiating a graph with a conditional node and a node that runs in the client (host function, \
             copy to or from host memory)",
            CUDA_ERROR_NOT_SUPPORTED,
        );
    }
    let server = mirrored && !client_only;
    if flags & DEVICE_LAUNCH != 0 && !server {
        return refuse(
            "cuGraphInstantiate for device launch of a graph replayed by the client",
            CUDA_ERROR_NOT_SUPPORTED,
        );
    }
    let (mut kinds, mut kernel_args) = (HashMap::new(), HashMap::new());
    survey(&g, id, &mut kinds, &mut kernel_args);
    let (order, edges, _) = shape_of(&g, id)?;
    let exec = state::new_id();
    if server {
        let call = GraphInstantiate {
            graph: GraphId(id),
            exec: GraphExecId(exec),
            flags,
        };
        client::call(0, &call, &[])?;
    }
    for dptr in &owned {
        *g.holders.entry(*dptr).or_insert(0) += 1;
    }
    g.execs.insert(
        exec,
        Exec {
            steps,
            server,
            flags,
            kinds,
            order,
            edges,
            kernel_args,
            owned,
        },
    );
    ffi::write(out, local_handle(exec))
}

/// Queues one node on `stream` through the ordinary paths (which record it instead while the stream captures).
fn replay(flags: u16, stream: CUstream, step: &Step) -> CuResult<()> {
    use crate::api::{copy, copy2d, launch, memset, stream_mem};
    match &step.node {
        Node::Kernel { function, shape, args } => launch::launch_packed(flags, *function, *shape, stream, args),
        Node::Memset {
            dst,
            pitch,
            value,
            elem,
            width,
            height,
        } => memset::memset_async(flags, *dst, *pitch, *value, *elem, *width, *height, stream),
        Node::HtoD { dst, src, n } => copy::htod_async(flags, *dst, *src as *const c_void, *n, stream),
        Node::DtoH { dst, src, n } => copy::dtoh_async(flags, *dst as *mut c_void, *src, *n, stream),
        Node::DtoD { dst, src, n } => copy::dtod_async(flags, *dst, *src, *n, stream),
        Node::Copy2D(raw) => copy2d::copy_2d(flags, raw.as_ptr() as *const CUDA_MEMCPY2D, Some(stream)),
        Node::Copy3D(raw) => copy2d::copy_3d(flags, raw.as_ptr() as *const CUDA_MEMCPY3D, Some(stream)),
        Node::Host { function, user } => crate::api::stream::host_callback(flags, stream, |status| {
            if status == CUDA_SUCCESS {
                ffi::call_host_fn(*function, *user)
            }
        }),
        Node::MemOps {
            ops,
            batch_flags,
            single,
        } => stream_mem::submit(flags, stream, ops, *batch_flags, *single),
        Node::Child { .. } => step.children.iter().try_for_each(|s| replay(flags, stream, s)),
        Node::EventRecord(e) | Node::EventWait(e) => {
            let sid = crate::api::stream::stream_id(stream)?;
            if let Some(r) = super::capture(key(flags, sid), step.node.clone()) {
                return r;
            }
            if matches!(step.node, Node::EventRecord(_)) {
                client::post(flags, &EventRecord { event: *e, stream: sid }, &[])
            } else {
                let call = StreamWaitEvent {
                    stream: sid,
                    event: *e,
                    flags: 0,
                    _pad: 0,
                };
                client::post(flags, &call, &[])
            }
        }
        Node::Empty | Node::MemAlloc { .. } | Node::MemFree { .. } => {
            let sid = crate::api::stream::stream_id(stream)?;
            super::capture(key(flags, sid), step.node.clone()).unwrap_or(Ok(()))
        }
        Node::Conditional { .. } => Err(CUDA_ERROR_NOT_SUPPORTED),
    }
}

fn launch(flags: u16, exec: CUgraphExec, stream: CUstream) -> CuResult<()> {
    crate::api::need_ctx()?;
    let sid = crate::api::stream::stream_id(stream)?;
    let capturing = super::is_capturing(key(flags, sid));
    let (server, steps, words) = {
        let g = graphs();
        let e = g.execs.get(&local_id(exec)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let has_conditional = e
            .kinds
            .values()
            .any(|k| *k == CUgraphNodeType::CU_GRAPH_NODE_TYPE_CONDITIONAL);
        if capturing && has_conditional {
            return refuse(
                "cuGraphLaunch of a graph with a conditional node into a stream capture",
                CUDA_ERROR_NOT_SUPPORTED,
            );
        }
        if e.server && !capturing {
            // Each kernel's arguments padded to whole words, so pointers stay aligned for the scan.
            let mut words = Vec::new();
            for a in e.kernel_args.values() {
                words.extend_from_slice(a);
                words.resize(words.len().div_ceil(8) * 8, 0);
            }
            (true, Vec::new(), words)
        } else {
            (false, e.steps.clone(), Vec::new())
        }
    };
    if !server {
        return steps.iter().try_for_each(|s| replay(flags, stream, s));
    }
    // A graph lives on the server of the context that was current when it was built; its launch goes where its
    // stream is (the same server for a stream of that context).
    let route = crate::api::route_of_stream(sid);
    crate::mirror::before_launch(flags, route, sid, &words)?;
    let call = GraphLaunch {
        exec: GraphExecId(local_id(exec)),
        stream: sid,
    };
    client::post_to(route, flags, &call, &[])
}

fn find_step(steps: &mut [Step], id: u64) -> Option<&mut Step> {
    for s in steps.iter_mut() {
        if s.id == id {
            return Some(s);
        }
        if let Some(found) = find_step(&mut s.children, id) {
            return Some(found);
        }
    }
    None
}

/// `cuGraphExec*SetParams`: the node of `exec` made from `node` takes `new` (of its kind) for later launches.
fn exec_set(exec: CUgraphExec, node: CUgraphNode, new: Node) -> CuResult<()> {
    let mut g = graphs();
    let e = g.execs.get_mut(&local_id(exec)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let id = local_id(node);
    if e.kinds.get(&id) != Some(&new.node_type()) || matches!(new, Node::Child { .. } | Node::Conditional { .. }) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if e.server {
        let Some(spec) = server_spec(&new) else {
            return refuse(
                "updating a graph node of the server's to use host memory",
                CUDA_ERROR_NOT_SUPPORTED,
            );
        };
        let mut tail = Vec::new();
        spec.encode(&mut tail);
        let call = GraphExecNodeSetParams {
            exec: GraphExecId(local_id(exec)),
            node: GraphNodeId(id),
            kind: spec.kind(),
            _pad: 0,
        };
        client::post(0, &call, &tail)?;
    }
    if let Node::Kernel { args, .. } = &new {
        e.kernel_args.insert(id, args.clone());
    }
    if let Some(step) = find_step(&mut e.steps, id) {
        step.node = new;
    }
    Ok(())
}

/// Whether two lists of steps have the same nodes, kinds and nesting (the order is the graph's own).
fn same_steps(a: &[Step], b: &[Step]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.node.node_type() == y.node.node_type() && same_steps(&x.children, &y.children))
}

/// Gives `old` (an executable's steps) the nodes of `new`, position by position; `old` keeps its ids.
fn take_nodes(old: &mut [Step], new: &[Step], args: &mut HashMap<u64, Vec<u8>>) {
    for (o, n) in old.iter_mut().zip(new) {
        if let Node::Kernel { args: a, .. } = &n.node {
            args.insert(o.id, a.clone());
        }
        if !matches!(o.node, Node::Child { .. }) {
            o.node = n.node.clone();
        }
        take_nodes(&mut o.children, &n.children, args);
    }
}

fn exec_child_set(exec: CUgraphExec, node: CUgraphNode, child: CUgraph) -> CuResult<()> {
    let mut g = graphs();
    g.graph(child)?;
    let new = steps(&g, local_id(child))?;
    let e = g.execs.get_mut(&local_id(exec)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let id = local_id(node);
    if e.kinds.get(&id) != Some(&CUgraphNodeType::CU_GRAPH_NODE_TYPE_GRAPH) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut args = std::mem::take(&mut e.kernel_args);
    let r = match find_step(&mut e.steps, id) {
        Some(step) if same_steps(&step.children, &new) => {
            take_nodes(&mut step.children, &new, &mut args);
            Ok(())
        }
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    };
    e.kernel_args = args;
    r?;
    if e.server {
        let call = GraphExecChildSetParams {
            exec: GraphExecId(local_id(exec)),
            node: GraphNodeId(id),
            child: GraphId(local_id(child)),
        };
        client::post(0, &call, &[])?;
    }
    Ok(())
}

/// `cuGraphExecUpdate`: `exec` takes the parameters of `graph`, which must have its graph's shape (the server's
/// driver judges executables it holds; the client, those it replays).
fn exec_update(exec: CUgraphExec, graph: CUgraph, info: *mut CUgraphExecUpdateResultInfo) -> CuResult<()> {
    use CUgraphExecUpdateResult as R;
    let mut g = graphs();
    g.graph(graph)?;
    let (order, edges, kinds) = shape_of(&g, local_id(graph))?;
    let new = steps(&g, local_id(graph))?;
    let e = g.execs.get(&local_id(exec)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let mut report = CUgraphExecUpdateResultInfo {
        result: R::CU_GRAPH_EXEC_UPDATE_SUCCESS,
        errorNode: std::ptr::null_mut(),
        errorFromNode: std::ptr::null_mut(),
    };
    let mut verdict = Ok(());
    if order.len() != e.order.len() || edges != e.edges {
        report.result = R::CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED;
        verdict = Err(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE);
    } else if let Some(i) = (0..order.len()).find(|&i| e.kinds.get(&e.order[i]) != Some(&kinds[i])) {
        report.result = R::CU_GRAPH_EXEC_UPDATE_ERROR_NODE_TYPE_CHANGED;
        report.errorNode = local_handle(order[i]);
        verdict = Err(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE);
    } else if e.server {
        let call = GraphExecUpdate {
            exec: GraphExecId(local_id(exec)),
            graph: GraphId(local_id(graph)),
        };
        let mut tail = Vec::new();
        match client::call_with_tail(0, &call, &[], &mut tail) {
            Ok(_) => {}
            Err(code) => {
                if let Ok((r, _)) = <GraphExecUpdateReply as zerocopy::FromBytes>::read_from_prefix(&tail) {
                    report.result = R(r.update_result);
                    report.errorNode = local_handle(r.error_node.get());
                    report.errorFromNode = local_handle(r.error_from_node.get());
                }
                verdict = Err(code);
            }
        }
    }
    if verdict.is_ok() {
        // Position by position: the graph's node i (creation order) updates the executable's node i.
        let map: HashMap<u64, u64> = order.iter().copied().zip(e.order.iter().copied()).collect();
        if let Some(e) = g.execs.get_mut(&local_id(exec)) {
            for n in &new {
                if let Some(old) = map.get(&n.id).and_then(|&old| find_step(&mut e.steps, old)) {
                    let id = old.id;
                    if let Node::Kernel { args, .. } = &n.node {
                        e.kernel_args.insert(id, args.clone());
                    }
                    if !matches!(old.node, Node::Child { .. }) {
                        old.node = n.node.clone();
                    }
                }
            }
        }
    }
    if !info.is_null() {
        ffi::write(info, report)?;
    }
    verdict
}

entry! {
    cuGraphInstantiateWithFlags => |f, out, graph, flags| {
        instantiate(out, graph, flags)
    }
    cuGraphInstantiateWithParams, cuGraphInstantiateWithParams_ptsz => |f, out, graph, params| {
        let mut p: CUDA_GRAPH_INSTANTIATE_PARAMS = ffi::read(params)?;
        let r = instantiate(out, graph, p.flags);
        p.hErrNode_out = std::ptr::null_mut();
        p.result_out = if r.is_ok() {
            CUgraphInstantiateResult::CUDA_GRAPH_INSTANTIATE_SUCCESS
        } else {
            CUgraphInstantiateResult::CUDA_GRAPH_INSTANTIATE_ERROR
        };
        ffi::write(params, p)?;
        if r.is_ok() && p.flags & 2 != 0 && !p.hUploadStream.is_null() {
            // CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD: uploaded in the stream given; nothing to do ahead here.
            crate::api::stream::stream_id(p.hUploadStream)?;
        }
        r
    }
    cuGraphLaunch, cuGraphLaunch_ptsz => |f, exec, stream| {
        launch(f, exec, stream)
    }
    cuGraphUpload, cuGraphUpload_ptsz => |f, exec, stream| {
        let sid = crate::api::stream::stream_id(stream)?;
        let server = graphs().execs.get(&local_id(exec)).ok_or(CUDA_ERROR_INVALID_VALUE)?.server;
        if server {
            client::post(f, &GraphUpload { exec: GraphExecId(local_id(exec)), stream: sid }, &[])?;
        }
        Ok(())
    }
    cuGraphExecDestroy => |f, exec| {
        let mut g = graphs();
        let e = g.execs.remove(&local_id(exec)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if e.server {
            client::post(0, &GraphExecDestroy { exec: GraphExecId(local_id(exec)) }, &[])?;
        }
        release_owned(g, e.owned)
    }
    cuGraphExecGetFlags => |f, exec, out| {
        let flags = graphs().execs.get(&local_id(exec)).ok_or(CUDA_ERROR_INVALID_VALUE)?.flags;
        ffi::write(out, flags)
    }
    cuGraphExecKernelNodeSetParams_v2 => |f, exec, node, params| {
        exec_set(exec, node, kernel_node(params)?)
    }
    cuGraphExecMemsetNodeSetParams => |f, exec, node, params, _ctx| {
        exec_set(exec, node, memset_node(params)?)
    }
    cuGraphExecMemcpyNodeSetParams => |f, exec, node, params, _ctx| {
        let raw = ffi::bytes(params as *const u8, std::mem::size_of::<CUDA_MEMCPY3D>())?.to_vec();
        exec_set(exec, node, Node::Copy3D(raw))
    }
    cuGraphExecHostNodeSetParams => |f, exec, node, params| {
        let p = ffi::read(params)?;
        if p.fn_.is_none() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        exec_set(exec, node, Node::Host { function: p.fn_, user: p.userData as usize })
    }
    cuGraphExecEventRecordNodeSetEvent => |f, exec, node, event| {
        exec_set(exec, node, Node::EventRecord(event_id(event)?))
    }
    cuGraphExecEventWaitNodeSetEvent => |f, exec, node, event| {
        exec_set(exec, node, Node::EventWait(event_id(event)?))
    }
    cuGraphExecNodeSetParams => |f, exec, node, params| {
        exec_set(exec, node, generic_node(params)?)
    }
    cuGraphExecChildGraphNodeSetParams => |f, exec, node, child| {
        exec_child_set(exec, node, child)
    }
    cuGraphExecUpdate_v2 => |f, exec, graph, info| {
        exec_update(exec, graph, info)
    }
}
