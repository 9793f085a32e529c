//! Graphs as a whole and their structure: creation and destruction, nodes, edges and dependencies (queried here,
//! changed here and on the server), copies, kernel node attributes.

use std::mem::size_of;

use vgpu_cuda_sys::driver::{
    CUgraph, CUgraphEdgeData, CUgraphNode, CUkernelNodeAttrID, CUkernelNodeAttrValue, CUlaunchAttributeID,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::{graphs, local_handle, local_id, read_deps, refuse, release_owned, Graphs, Node};
use crate::{client, ffi};

/// Writes up to `*count` of `items` (handles) to `out`, or only the count when `out` is NULL; `data` (may be
/// NULL) gets default edge data for each.
fn hand_out(items: &[u64], out: *mut CUgraphNode, data: *mut CUgraphEdgeData, count: *mut usize) -> CuResult<()> {
    if out.is_null() {
        return ffi::write(count, items.len());
    }
    let want = ffi::read(count)?;
    for (i, id) in items.iter().take(want).enumerate() {
        ffi::write(out.wrapping_add(i), local_handle(*id))?;
        if !data.is_null() {
            ffi::write(data.wrapping_add(i), CUgraphEdgeData::default())?;
        }
    }
    ffi::write(count, want.min(items.len()))
}

/// `cuGraphGetEdges`: the count alone when `from` and `to` are NULL; else up to `*count` edges.
fn edges(
    graph: CUgraph,
    from: *mut CUgraphNode,
    to: *mut CUgraphNode,
    data: *mut CUgraphEdgeData,
    count: *mut usize,
) -> CuResult<()> {
    let g = graphs();
    let gr = g.graph(graph)?;
    if from.is_null() && to.is_null() {
        return ffi::write(count, gr.edges.len());
    }
    if from.is_null() || to.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
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

/// The nodes `node` depends on (`incoming`) or that depend on it.
fn neighbours(node: CUgraphNode, incoming: bool) -> CuResult<Vec<u64>> {
    let g = graphs();
    let (graph, _) = g.node(node)?;
    let id = local_id(node);
    let gr = g.graphs.get(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    Ok(gr
        .edges
        .iter()
        .filter_map(|&(a, b)| match incoming {
            true if b == id => Some(a),
            false if a == id => Some(b),
            _ => None,
        })
        .collect())
}

/// `cuGraphAddDependencies` / `cuGraphRemoveDependencies`: `n` edges `from[i]` → `to[i]` of one graph.
fn change_edges(
    graph: CUgraph,
    from: *const CUgraphNode,
    to: *const CUgraphNode,
    data: *const CUgraphEdgeData,
    n: usize,
    remove: bool,
) -> CuResult<()> {
    if n > MAX_GRAPH_EDGES {
        return refuse(
            "adding or removing more than 8192 graph edges in one call",
            CUDA_ERROR_NOT_SUPPORTED,
        );
    }
    let mut g = graphs();
    let gid = local_id(graph);
    let gr = g.graph(graph)?;
    let mirrored = gr.mirrored;
    let froms = read_deps(&g, from, data, n)?;
    let tos = read_deps(&g, to, std::ptr::null(), n)?;
    let mut list = gr.edges.clone();
    for (&a, &b) in froms.iter().zip(&tos) {
        if g.node_graph.get(&a) != Some(&gid) || g.node_graph.get(&b) != Some(&gid) || a == b {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        match (remove, list.iter().position(|e| *e == (a, b))) {
            (false, None) => list.push((a, b)),
            (true, Some(i)) => {
                list.remove(i);
            }
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    if mirrored && n > 0 {
        let mut tail = Vec::with_capacity(n * 16);
        for (a, b) in froms.iter().zip(&tos) {
            tail.extend_from_slice(&a.to_le_bytes());
            tail.extend_from_slice(&b.to_le_bytes());
        }
        let call = GraphEdges {
            graph: GraphId(gid),
            count: n as u32,
            remove: remove as u32,
        };
        client::post(0, &call, &tail)?;
    }
    if let Some(gr) = g.graphs.get_mut(&gid) {
        gr.edges = list;
    }
    Ok(())
}

/// Bytes of a kernel node attribute's value.
const ATTR_LEN: usize = size_of::<CUkernelNodeAttrValue>();

/// `cuGraphKernelNodeSetAttribute`: the scheduling hints a launch takes too are kept (and reported back); what
/// changes how a kernel runs (cooperative, clusters) is not offered for graph nodes.
fn set_attribute(g: &mut Graphs, node: CUgraphNode, attr: CUkernelNodeAttrID, value: &[u8]) -> CuResult<()> {
    use CUlaunchAttributeID as Id;
    if !matches!(g.node(node)?.1, Node::Kernel { .. }) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    match attr {
        Id::CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW
        | Id::CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY
        | Id::CU_LAUNCH_ATTRIBUTE_PRIORITY
        | Id::CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP
        | Id::CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN
        | Id::CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE
        | Id::CU_LAUNCH_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => {
            g.kernel_attrs.insert((local_id(node), attr.0), value.to_vec());
            Ok(())
        }
        _ if value.iter().all(|&b| b == 0) => {
            g.kernel_attrs.insert((local_id(node), attr.0), value.to_vec());
            Ok(())
        }
        _ => refuse(
            "cuGraphKernelNodeSetAttribute (cooperative or cluster kernel nodes)",
            CUDA_ERROR_NOT_SUPPORTED,
        ),
    }
}

entry! {
    cuGraphCreate => |f, out, flags| {
        if out.is_null() || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let graph = graphs().new_graph(None, true)?;
        ffi::write(out, local_handle(graph))
    }
    cuGraphDestroy => |f, graph| {
        let mut g = graphs();
        let gr = g.graph(graph)?;
        if gr.owner.is_some() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mirrored = gr.mirrored;
        let owned = g.forget_graph(local_id(graph));
        if mirrored {
            client::post(0, &GraphDestroy { graph: GraphId(local_id(graph)) }, &[])?;
        }
        release_owned(g, owned)
    }
    cuGraphGetNodes => |f, graph, nodes, count| {
        let g = graphs();
        let ids: Vec<u64> = g.graph(graph)?.nodes.iter().map(|(id, _)| *id).collect();
        hand_out(&ids, nodes, std::ptr::null_mut(), count)
    }
    cuGraphGetRootNodes => |f, graph, nodes, count| {
        let g = graphs();
        let gr = g.graph(graph)?;
        let roots: Vec<u64> = gr.nodes.iter().map(|(id, _)| *id).filter(|id| !gr.edges.iter().any(|(_, b)| b == id)).collect();
        hand_out(&roots, nodes, std::ptr::null_mut(), count)
    }
    cuGraphGetEdges => |f, graph, from, to, count| {
        edges(graph, from, to, std::ptr::null_mut(), count)
    }
    cuGraphGetEdges_v2 => |f, graph, from, to, data, count| {
        edges(graph, from, to, data, count)
    }
    cuGraphNodeGetType => |f, node, out| {
        let ty = graphs().node(node)?.1.node_type();
        ffi::write(out, ty)
    }
    cuGraphNodeGetDependencies => |f, node, deps, count| {
        hand_out(&neighbours(node, true)?, deps, std::ptr::null_mut(), count)
    }
    cuGraphNodeGetDependencies_v2 => |f, node, deps, data, count| {
        hand_out(&neighbours(node, true)?, deps, data, count)
    }
    cuGraphNodeGetDependentNodes => |f, node, deps, count| {
        hand_out(&neighbours(node, false)?, deps, std::ptr::null_mut(), count)
    }
    cuGraphNodeGetDependentNodes_v2 => |f, node, deps, data, count| {
        hand_out(&neighbours(node, false)?, deps, data, count)
    }
    cuGraphChildGraphNodeGetGraph => |f, node, out| {
        let g = graphs();
        match g.node(node)?.1 {
            Node::Child { graph } => ffi::write(out, local_handle(*graph)),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    cuGraphAddDependencies => |f, graph, from, to, n| {
        change_edges(graph, from, to, std::ptr::null(), n, false)
    }
    cuGraphAddDependencies_v2 => |f, graph, from, to, data, n| {
        change_edges(graph, from, to, data, n, false)
    }
    cuGraphRemoveDependencies => |f, graph, from, to, n| {
        change_edges(graph, from, to, std::ptr::null(), n, true)
    }
    cuGraphRemoveDependencies_v2 => |f, graph, from, to, data, n| {
        change_edges(graph, from, to, data, n, true)
    }
    cuGraphDestroyNode => |f, node| {
        let mut g = graphs();
        let (graph, _) = g.node(node)?;
        let mirrored = g.graphs.get(&graph).is_some_and(|gr| gr.mirrored);
        if mirrored {
            client::post(0, &GraphDestroyNode { node: GraphNodeId(local_id(node)) }, &[])?;
        }
        g.forget_node(local_id(node));
        Ok(())
    }
    cuGraphClone => |f, out, original| {
        if out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut g = graphs();
        g.graph(original)?;
        if g.traits(local_id(original)).1 {
            // Natively too: a graph with conditional nodes cannot be cloned.
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let clone = super::params::copy_graph(&mut g, local_id(original))?;
        ffi::write(out, local_handle(clone))
    }
    cuGraphNodeFindInClone => |f, out, original, clone| {
        let g = graphs();
        let c = g.graph(clone)?;
        let found = c.clone_map.iter().find(|(o, _)| *o == local_id(original)).map(|(_, c)| *c);
        ffi::write(out, local_handle(found.ok_or(CUDA_ERROR_INVALID_VALUE)?))
    }
    cuGraphKernelNodeSetAttribute => |f, node, attr, value| {
        let bytes = ffi::bytes(value as *const u8, ATTR_LEN)?.to_vec();
        set_attribute(&mut graphs(), node, attr, &bytes)
    }
    cuGraphKernelNodeGetAttribute => |f, node, attr, out| {
        let g = graphs();
        if !matches!(g.node(node)?.1, Node::Kernel { .. }) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let value = g.kernel_attrs.get(&(local_id(node), attr.0)).cloned().unwrap_or_else(|| vec![0; ATTR_LEN]);
        ffi::bytes_mut(out as *mut u8, ATTR_LEN)?.copy_from_slice(&value);
        Ok(())
    }
    cuGraphKernelNodeCopyAttributes => |f, dst, src| {
        let mut g = graphs();
        for n in [dst, src] {
            if !matches!(g.node(n)?.1, Node::Kernel { .. }) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
        }
        let copied: Vec<(u32, Vec<u8>)> = g
            .kernel_attrs
            .iter()
            .filter(|((n, _), _)| *n == local_id(src))
            .map(|((_, a), v)| (*a, v.clone()))
            .collect();
        for (a, v) in copied {
            g.kernel_attrs.insert((local_id(dst), a), v);
        }
        Ok(())
    }
    cuDeviceGraphMemTrim => |f, device| {
        let n = client::session()?.devices.len() as i32;
        if device < 0 || device >= n {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        // Graph memory here is ordinary memory, freed when its graphs go: nothing is cached to give back.
        Ok(())
    }
}
