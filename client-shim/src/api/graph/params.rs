//! Graph nodes by kind: the cuda.h parameter structs read into `Node`s (the per-kind `cuGraphAdd*Node` calls and
//! the generic `cuGraphAddNode`, whose `CUgraphNodeParams` union is read member by member at its offsets), the
//! nodes' parameters set and read back, and which nodes the server can run by itself (`server_spec`).

use std::mem::{offset_of, size_of};

use vgpu_cuda_sys::driver::{
    CUDA_KERNEL_NODE_PARAMS_v3, CUDA_MEMSET_NODE_PARAMS_v2, CUDA_MEM_ALLOC_NODE_PARAMS_v2, CUdeviceptr, CUevent,
    CUfunction, CUgraph, CUgraphChildGraphNodeOwnership, CUgraphConditionalNodeType, CUgraphEdgeData, CUgraphNode,
    CUgraphNodeParams, CUgraphNodeType, CUkernel, CUmemAllocationType, CUmemLocationType, CUmemorytype,
    CUDA_CHILD_GRAPH_NODE_PARAMS, CUDA_CONDITIONAL_NODE_PARAMS, CUDA_EVENT_RECORD_NODE_PARAMS,
    CUDA_EVENT_WAIT_NODE_PARAMS, CUDA_HOST_NODE_PARAMS, CUDA_KERNEL_NODE_PARAMS, CUDA_MEMCPY2D, CUDA_MEMCPY3D,
    CUDA_MEMCPY_NODE_PARAMS, CUDA_MEMSET_NODE_PARAMS, CUDA_MEM_ALLOC_NODE_PARAMS, CUDA_MEM_FREE_NODE_PARAMS,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::{add_node, graphs, local_handle, local_id, mirroring, read_deps, refuse, Graphs, Node};
use crate::api::event::event_id;
use crate::api::{need_ctx, ClientHandle};
use crate::{client, ffi, mirror, state};

/// A kernel node from the fields `CUDA_KERNEL_NODE_PARAMS` (v2) and `_v3` share.
#[allow(clippy::too_many_arguments)]
fn kernel(
    func: CUfunction,
    kern: CUkernel,
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem: u32,
    params: *mut *mut std::ffi::c_void,
    extra: *mut *mut std::ffi::c_void,
) -> CuResult<Node> {
    let f = if func.is_null() { kern.id() } else { func.id() };
    let args = crate::api::launch::pack_args(f, params, extra)?;
    Ok(Node::Kernel {
        function: f,
        shape: LaunchShape {
            grid,
            block,
            shared_mem,
            cooperative: false,
            cluster: [1, 1, 1],
        },
        args,
    })
}

pub(crate) fn kernel_node(params: *const CUDA_KERNEL_NODE_PARAMS) -> CuResult<Node> {
    let p: CUDA_KERNEL_NODE_PARAMS = ffi::read(params)?;
    kernel(
        p.func,
        p.kern,
        [p.gridDimX, p.gridDimY, p.gridDimZ],
        [p.blockDimX, p.blockDimY, p.blockDimZ],
        p.sharedMemBytes,
        p.kernelParams,
        p.extra,
    )
}

fn kernel_node_v3(p: &CUDA_KERNEL_NODE_PARAMS_v3) -> CuResult<Node> {
    kernel(
        p.func,
        p.kern,
        [p.gridDimX, p.gridDimY, p.gridDimZ],
        [p.blockDimX, p.blockDimY, p.blockDimZ],
        p.sharedMemBytes,
        p.kernelParams,
        p.extra,
    )
}

fn memset(dst: u64, pitch: usize, value: u32, elem: u32, width: usize, height: usize) -> CuResult<Node> {
    if !matches!(elem, 1 | 2 | 4) || width == 0 || height == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(Node::Memset {
        dst,
        pitch: if height > 1 { pitch } else { width * elem as usize },
        value,
        elem,
        width,
        height,
    })
}

pub(crate) fn memset_node(params: *const CUDA_MEMSET_NODE_PARAMS) -> CuResult<Node> {
    let p: CUDA_MEMSET_NODE_PARAMS = ffi::read(params)?;
    memset(p.dst, p.pitch, p.value, p.elementSize, p.width, p.height)
}

fn memcpy_node(params: *const CUDA_MEMCPY3D) -> CuResult<Node> {
    let raw = ffi::bytes(params as *const u8, size_of::<CUDA_MEMCPY3D>())?.to_vec();
    Ok(Node::Copy3D(raw))
}

fn host_node(p: CUDA_HOST_NODE_PARAMS) -> CuResult<Node> {
    if p.fn_.is_none() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(Node::Host {
        function: p.fn_,
        user: p.userData as usize,
    })
}

/// Whether `len` bytes at `addr` are device memory the server holds (not a host mirror kept in step here).
fn on_device(addr: u64, len: u64) -> bool {
    state::read().check_range(addr, len).is_ok() && mirror::find(addr as usize).is_none()
}

/// A copy's side as a device address at its first byte, when it is device memory.
#[allow(clippy::too_many_arguments)]
fn device_side(
    kind: CUmemorytype,
    device: CUdeviceptr,
    x: usize,
    y: usize,
    z: usize,
    pitch: usize,
    height: usize,
) -> Option<u64> {
    let unified = kind == CUmemorytype::CU_MEMORYTYPE_UNIFIED;
    if kind != CUmemorytype::CU_MEMORYTYPE_DEVICE && !unified {
        return None;
    }
    let offset = (z as u64)
        .checked_mul(pitch as u64)?
        .checked_mul(height as u64)?
        .checked_add((y as u64).checked_mul(pitch as u64)?)?
        .checked_add(x as u64)?;
    device.checked_add(offset)
}

/// A structured copy between two stretches of device memory, as the server runs it.
fn device_copy(
    src: u64,
    src_pitch: usize,
    src_height: usize,
    dst: u64,
    dst_pitch: usize,
    dst_height: usize,
    box3: [usize; 3],
) -> Option<GraphCopySpec> {
    let spec = GraphCopySpec {
        src: DevicePtr(src),
        src_pitch: src_pitch as u64,
        src_height: src_height as u64,
        dst: DevicePtr(dst),
        dst_pitch: dst_pitch as u64,
        dst_height: dst_height as u64,
        width: box3[0] as u64,
        height: box3[1] as u64,
        depth: box3[2] as u64,
    };
    let (s, d) = spec.spans()?;
    (on_device(src, s) && on_device(dst, d)).then_some(spec)
}

/// The node as the server runs it; `None` for a node only this process can run (host memory, host code).
pub(crate) fn server_spec(node: &Node) -> Option<GraphNodeSpec> {
    Some(match node {
        Node::Kernel { function, shape, args } => GraphNodeSpec::Kernel {
            spec: GraphKernelSpec {
                function: *function,
                dims: shape.dims(),
                args_len: args.len() as u32,
                _pad: 0,
            },
            args: args.clone(),
        },
        Node::Memset {
            dst,
            pitch,
            value,
            elem,
            width,
            height,
        } => {
            let span = (*pitch as u64) * (*height as u64 - 1) + (*width as u64) * (*elem as u64);
            if !on_device(*dst, span) {
                return None;
            }
            GraphNodeSpec::Memset(GraphMemsetSpec {
                dst: DevicePtr(*dst),
                pitch: *pitch as u64,
                width: *width as u64,
                height: *height as u64,
                value: *value,
                elem_size: *elem,
            })
        }
        Node::DtoD { dst, src, n } => GraphNodeSpec::Copy(device_copy(*src, 0, 0, *dst, 0, 0, [*n, 1, 1])?),
        Node::Copy2D(raw) => {
            let m: CUDA_MEMCPY2D = ffi::read(raw.as_ptr() as *const CUDA_MEMCPY2D).ok()?;
            let src = device_side(m.srcMemoryType, m.srcDevice, m.srcXInBytes, m.srcY, 0, m.srcPitch, 0)?;
            let dst = device_side(m.dstMemoryType, m.dstDevice, m.dstXInBytes, m.dstY, 0, m.dstPitch, 0)?;
            GraphNodeSpec::Copy(device_copy(
                src,
                m.srcPitch,
                0,
                dst,
                m.dstPitch,
                0,
                [m.WidthInBytes, m.Height, 1],
            )?)
        }
        Node::Copy3D(raw) => {
            let m: CUDA_MEMCPY3D = ffi::read(raw.as_ptr() as *const CUDA_MEMCPY3D).ok()?;
            if m.srcLOD != 0 || m.dstLOD != 0 {
                return None;
            }
            let src = device_side(
                m.srcMemoryType,
                m.srcDevice,
                m.srcXInBytes,
                m.srcY,
                m.srcZ,
                m.srcPitch,
                m.srcHeight,
            )?;
            let dst = device_side(
                m.dstMemoryType,
                m.dstDevice,
                m.dstXInBytes,
                m.dstY,
                m.dstZ,
                m.dstPitch,
                m.dstHeight,
            )?;
            let box3 = [m.WidthInBytes, m.Height.max(1), m.Depth.max(1)];
            GraphNodeSpec::Copy(device_copy(
                src,
                m.srcPitch,
                m.srcHeight,
                dst,
                m.dstPitch,
                m.dstHeight,
                box3,
            )?)
        }
        Node::Empty | Node::MemAlloc { .. } | Node::MemFree { .. } => GraphNodeSpec::Empty,
        Node::Child { graph } => GraphNodeSpec::Child { graph: GraphId(*graph) },
        Node::Conditional {
            handle,
            cond_type,
            bodies,
        } => GraphNodeSpec::Conditional {
            spec: GraphConditionalSpec {
                handle: *handle,
                cond_type: *cond_type,
                size: bodies.len() as u32,
            },
            bodies: bodies.iter().map(|&b| GraphId(b)).collect(),
        },
        Node::EventRecord(e) => GraphNodeSpec::EventRecord(*e),
        Node::EventWait(e) => GraphNodeSpec::EventWait(*e),
        Node::HtoD { .. } | Node::DtoH { .. } | Node::Host { .. } | Node::MemOps { .. } => return None,
    })
}

/// `CUgraphEdgeData` of a dependency on node `from`: the default edge, or a programmatic one out of a kernel
/// node (kept as a full dependency, which that edge allows too). Anything else is what the driver refuses.
pub(crate) fn check_edge(g: &Graphs, from: u64, e: CUgraphEdgeData) -> CuResult<()> {
    const PROGRAMMATIC: u8 = 1;
    if e.reserved != [0; 5] || e.to_port != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    match (e.type_, e.from_port) {
        (0, 0) => Ok(()),
        (PROGRAMMATIC, 1 | 2) => match g.node(local_handle(from)) {
            Ok((_, Node::Kernel { .. })) => Ok(()),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        },
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// A copy of `source` (a graph of plain nodes) as a new graph of its own, here and on the server: what a child
/// graph node holds.
pub(crate) fn copy_graph(g: &mut Graphs, source: u64) -> CuResult<u64> {
    let src = g.graphs.get(&source).ok_or(CUDA_ERROR_INVALID_VALUE)?.clone();
    if src.nodes.iter().any(|(_, n)| !n.owned_graphs().is_empty()) {
        return refuse(
            "a child graph node or cuGraphClone of a graph that has child or conditional nodes",
            CUDA_ERROR_NOT_SUPPORTED,
        )
        .map(|_| 0);
    }
    let clone = g.new_graph(None, false)?;
    let map: Vec<(u64, u64)> = src.nodes.iter().map(|(n, _)| (*n, state::new_id())).collect();
    let new_of = |old: u64| map.iter().find(|(o, _)| *o == old).map_or(0, |(_, n)| *n);
    if src.mirrored {
        let mut tail = Vec::with_capacity(map.len() * 16);
        for (old, new) in &map {
            tail.extend_from_slice(&old.to_le_bytes());
            tail.extend_from_slice(&new.to_le_bytes());
        }
        let call = GraphClone {
            source: GraphId(source),
            clone: GraphId(clone),
            count: map.len() as u32,
            _pad: 0,
        };
        client::post(0, &call, &tail)?;
    }
    if let Some(c) = g.graphs.get_mut(&clone) {
        c.nodes = src.nodes.iter().map(|(n, node)| (new_of(*n), node.clone())).collect();
        c.edges = src.edges.iter().map(|(a, b)| (new_of(*a), new_of(*b))).collect();
        c.clone_map = map.clone();
    }
    for (_, new) in &map {
        g.node_graph.insert(*new, clone);
    }
    Ok(clone)
}

/// Adds a child graph node: a copy of `child` (`CLONE`), or `child` itself, which the node takes over (`MOVE`).
fn add_child(out: *mut CUgraphNode, graph: CUgraph, deps: Vec<u64>, child: CUgraph, moved: bool) -> CuResult<()> {
    let mut g = graphs();
    g.graph(graph)?;
    let source = local_id(child);
    let c = g.graph(child)?;
    if source == local_id(graph) || c.owner.is_some() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if g.traits(source).1 {
        // Natively too: a graph with conditional nodes cannot be a child graph.
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let held = if moved { source } else { copy_graph(&mut g, source)? };
    let id = g.insert_node(local_id(graph), &deps, Node::Child { graph: held })?;
    if let Some(c) = g.graphs.get_mut(&held) {
        c.owner = Some(id);
    }
    ffi::write(out, local_handle(id))
}

/// Adds a conditional node: its body graphs are made with it (the server makes them too); the app gets their
/// handles through `phGraph_out`, written to `body_list`.
fn add_conditional(
    out: *mut CUgraphNode,
    graph: CUgraph,
    deps: Vec<u64>,
    p: CUDA_CONDITIONAL_NODE_PARAMS,
    body_list: *mut *mut CUgraph,
) -> CuResult<()> {
    use CUgraphConditionalNodeType as C;
    if !mirroring() {
        return refuse(
            "conditional graph nodes without a vGPU server that holds graphs (or with VGPU_GRAPHS=replay)",
            CUDA_ERROR_NOT_SUPPORTED,
        );
    }
    let size = p.size as usize;
    let size_ok = match p.type_ {
        C::CU_GRAPH_COND_TYPE_IF => matches!(size, 1 | 2),
        C::CU_GRAPH_COND_TYPE_WHILE => size == 1,
        C::CU_GRAPH_COND_TYPE_SWITCH => size > 0,
        _ => false,
    };
    if !size_ok {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if size > MAX_COND_BODIES {
        return refuse(
            "a SWITCH conditional node with more than 4096 bodies",
            CUDA_ERROR_NOT_SUPPORTED,
        );
    }
    let mut g = graphs();
    g.graph(graph)?;
    if !g.handles.contains_key(&p.handle) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let bodies: Vec<u64> = (0..size).map(|_| state::new_id()).collect();
    let node = Node::Conditional {
        handle: p.handle,
        cond_type: p.type_.0,
        bodies: bodies.clone().into_boxed_slice(),
    };
    let id = g.insert_node(local_id(graph), &deps, node)?;
    for b in &bodies {
        g.graphs.insert(
            *b,
            super::Graph {
                owner: Some(id),
                mirrored: true,
                ..Default::default()
            },
        );
    }
    // The array the app reads its body graphs from: the node's own, which does not move while the node lives.
    let list = match g.node(local_handle(id)) {
        Ok((_, Node::Conditional { bodies, .. })) => bodies.as_ptr() as *mut CUgraph,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    };
    ffi::write(body_list, list)?;
    ffi::write(out, local_handle(id))
}

/// A memory allocation node: the memory is allocated now (one round trip) and is the graph's.
fn add_alloc(
    out: *mut CUgraphNode,
    graph: CUgraph,
    deps: Vec<u64>,
    size: usize,
    dptr_out: *mut CUdeviceptr,
) -> CuResult<()> {
    let ctx = need_ctx()?;
    if size == 0 || out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    graphs().graph(graph)?;
    let device = state::read().contexts.get(&ctx).map(|c| c.device).unwrap_or(0);
    let dptr = client::call(0, &MemAlloc { size: size as u64 }, &[])?.dptr.get();
    state::write().device_ranges.insert(dptr, size as u64);
    let mut g = graphs();
    let added = g.graphs.contains_key(&local_id(graph)).then(|| {
        g.insert_node(
            local_id(graph),
            &deps,
            Node::MemAlloc {
                dptr,
                size: size as u64,
                device,
            },
        )
    });
    match added {
        Some(Ok(id)) => {
            if let Some(gr) = g.graphs.get_mut(&local_id(graph)) {
                gr.allocated.push(dptr);
            }
            drop(g);
            ffi::write(dptr_out, dptr)?;
            ffi::write(out, local_handle(id))
        }
        other => {
            drop(g);
            let route = crate::api::route_of_ptr(dptr);
            state::write().remove_device_range(dptr);
            client::call_to(route, 0, &MemFree { dptr: DevicePtr(dptr) }, &[])?;
            Err(other.map_or(CUDA_ERROR_INVALID_VALUE, |r| {
                r.err().unwrap_or(CUDA_ERROR_INVALID_VALUE)
            }))
        }
    }
}

/// A memory free node: of memory the same graph allocated (which then stays the graph's alone).
fn add_free(out: *mut CUgraphNode, graph: CUgraph, deps: Vec<u64>, dptr: CUdeviceptr) -> CuResult<()> {
    let mut g = graphs();
    g.graph(graph)?;
    if !g.own_allocation(local_id(graph), dptr) {
        return refuse(
            "a memory free node for memory the same graph did not allocate",
            CUDA_ERROR_NOT_SUPPORTED,
        );
    }
    let id = g.insert_node(local_id(graph), &deps, Node::MemFree { dptr })?;
    ffi::write(out, local_handle(id))
}

/// Where the live member of a `CUgraphNodeParams` union starts, in the app's struct.
fn member(params: *mut CUgraphNodeParams) -> *mut u8 {
    (params as *mut u8).wrapping_add(offset_of!(CUgraphNodeParams, __bindgen_anon_1))
}

/// `cuGraphAddNode`: the node kind `type_` names, its parameters read from that member of the union.
fn add_generic(
    out: *mut CUgraphNode,
    graph: CUgraph,
    deps: *const CUgraphNode,
    data: *const CUgraphEdgeData,
    n: usize,
    params: *mut CUgraphNodeParams,
) -> CuResult<()> {
    use CUgraphNodeType as T;
    let p: CUgraphNodeParams = ffi::read(params)?;
    if p.reserved0 != [0; 3] || p.reserved2 != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let at = member(params);
    let deps_list = {
        let g = graphs();
        g.graph(graph)?;
        read_deps(&g, deps, data, n)?
    };
    let plain = |node: Node| {
        let mut g = graphs();
        let id = g.insert_node(local_id(graph), &deps_list, node)?;
        ffi::write(out, local_handle(id))
    };
    match p.type_ {
        T::CU_GRAPH_NODE_TYPE_KERNEL => plain(kernel_node_v3(&ffi::read(at as *const CUDA_KERNEL_NODE_PARAMS_v3)?)?),
        T::CU_GRAPH_NODE_TYPE_MEMCPY => {
            let m: CUDA_MEMCPY_NODE_PARAMS = ffi::read(at as *const CUDA_MEMCPY_NODE_PARAMS)?;
            if m.flags != 0 || m.reserved != 0 {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let copy = at.wrapping_add(offset_of!(CUDA_MEMCPY_NODE_PARAMS, copyParams)) as *const CUDA_MEMCPY3D;
            plain(memcpy_node(copy)?)
        }
        T::CU_GRAPH_NODE_TYPE_MEMSET => {
            let m: CUDA_MEMSET_NODE_PARAMS_v2 = ffi::read(at as *const CUDA_MEMSET_NODE_PARAMS_v2)?;
            plain(memset(m.dst, m.pitch, m.value, m.elementSize, m.width, m.height)?)
        }
        T::CU_GRAPH_NODE_TYPE_HOST => plain(host_node(ffi::read(at as *const CUDA_HOST_NODE_PARAMS)?)?),
        T::CU_GRAPH_NODE_TYPE_EMPTY => plain(Node::Empty),
        T::CU_GRAPH_NODE_TYPE_GRAPH => {
            let c: CUDA_CHILD_GRAPH_NODE_PARAMS = ffi::read(at as *const CUDA_CHILD_GRAPH_NODE_PARAMS)?;
            let moved = match c.ownership {
                CUgraphChildGraphNodeOwnership::CU_GRAPH_CHILD_GRAPH_OWNERSHIP_CLONE => false,
                CUgraphChildGraphNodeOwnership::CU_GRAPH_CHILD_GRAPH_OWNERSHIP_MOVE => true,
                _ => return Err(CUDA_ERROR_INVALID_VALUE),
            };
            add_child(out, graph, deps_list, c.graph, moved)
        }
        T::CU_GRAPH_NODE_TYPE_EVENT_RECORD => {
            let e: CUDA_EVENT_RECORD_NODE_PARAMS = ffi::read(at as *const CUDA_EVENT_RECORD_NODE_PARAMS)?;
            plain(Node::EventRecord(event_id(e.event)?))
        }
        T::CU_GRAPH_NODE_TYPE_WAIT_EVENT => {
            let e: CUDA_EVENT_WAIT_NODE_PARAMS = ffi::read(at as *const CUDA_EVENT_WAIT_NODE_PARAMS)?;
            plain(Node::EventWait(event_id(e.event)?))
        }
        T::CU_GRAPH_NODE_TYPE_MEM_ALLOC => {
            let a: CUDA_MEM_ALLOC_NODE_PARAMS_v2 = ffi::read(at as *const CUDA_MEM_ALLOC_NODE_PARAMS_v2)?;
            let dptr_out = at.wrapping_add(offset_of!(CUDA_MEM_ALLOC_NODE_PARAMS_v2, dptr)) as *mut CUdeviceptr;
            add_alloc(out, graph, deps_list, a.bytesize, dptr_out)
        }
        T::CU_GRAPH_NODE_TYPE_MEM_FREE => {
            let f: CUDA_MEM_FREE_NODE_PARAMS = ffi::read(at as *const CUDA_MEM_FREE_NODE_PARAMS)?;
            add_free(out, graph, deps_list, f.dptr)
        }
        T::CU_GRAPH_NODE_TYPE_CONDITIONAL => {
            let c: CUDA_CONDITIONAL_NODE_PARAMS = ffi::read(at as *const CUDA_CONDITIONAL_NODE_PARAMS)?;
            let list = at.wrapping_add(offset_of!(CUDA_CONDITIONAL_NODE_PARAMS, phGraph_out)) as *mut *mut CUgraph;
            add_conditional(out, graph, deps_list, c, list)
        }
        T::CU_GRAPH_NODE_TYPE_EXT_SEMAS_SIGNAL | T::CU_GRAPH_NODE_TYPE_EXT_SEMAS_WAIT => {
            refuse("cuGraphAddNode of an external semaphore node", CUDA_ERROR_NOT_SUPPORTED)
        }
        T::CU_GRAPH_NODE_TYPE_BATCH_MEM_OP => refuse(
            "cuGraphAddNode of a batch memory operation node",
            CUDA_ERROR_NOT_SUPPORTED,
        ),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// Gives an existing node new parameters of the same kind (`cuGraph*NodeSetParams`), here and on the server.
fn set_node(node: CUgraphNode, new: Node) -> CuResult<()> {
    let mut g = graphs();
    let (graph, old) = g.node(node)?;
    if old.node_type() != new.node_type() || matches!(new, Node::Child { .. } | Node::Conditional { .. }) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mirrored = g.graphs.get(&graph).is_some_and(|gr| gr.mirrored);
    let (was, now) = (server_spec(old), server_spec(&new));
    if mirrored {
        match (&was, &now) {
            (Some(_), Some(spec)) => {
                let mut tail = Vec::new();
                spec.encode(&mut tail);
                let call = GraphNodeSetParams {
                    node: GraphNodeId(local_id(node)),
                    kind: spec.kind(),
                    _pad: 0,
                };
                client::post(0, &call, &tail)?;
            }
            (None, None) => {}
            _ => {
                return refuse(
                    "graph node parameters moving between device and host memory",
                    CUDA_ERROR_NOT_SUPPORTED,
                )
            }
        }
    }
    *g.node_mut(local_id(node))? = new;
    Ok(())
}

/// `cuGraphNodeSetParams` and `cuGraphExecNodeSetParams`: the new parameters of a node of a plain kind.
pub(crate) fn generic_node(params: *mut CUgraphNodeParams) -> CuResult<Node> {
    use CUgraphNodeType as T;
    let p: CUgraphNodeParams = ffi::read(params)?;
    let at = member(params);
    match p.type_ {
        T::CU_GRAPH_NODE_TYPE_KERNEL => kernel_node_v3(&ffi::read(at as *const CUDA_KERNEL_NODE_PARAMS_v3)?),
        T::CU_GRAPH_NODE_TYPE_MEMCPY => {
            memcpy_node(at.wrapping_add(offset_of!(CUDA_MEMCPY_NODE_PARAMS, copyParams)) as *const CUDA_MEMCPY3D)
        }
        T::CU_GRAPH_NODE_TYPE_MEMSET => {
            let m: CUDA_MEMSET_NODE_PARAMS_v2 = ffi::read(at as *const CUDA_MEMSET_NODE_PARAMS_v2)?;
            memset(m.dst, m.pitch, m.value, m.elementSize, m.width, m.height)
        }
        T::CU_GRAPH_NODE_TYPE_HOST => host_node(ffi::read(at as *const CUDA_HOST_NODE_PARAMS)?),
        T::CU_GRAPH_NODE_TYPE_EVENT_RECORD => Ok(Node::EventRecord(event_id(
            ffi::read(at as *const CUDA_EVENT_RECORD_NODE_PARAMS)?.event,
        )?)),
        T::CU_GRAPH_NODE_TYPE_WAIT_EVENT => Ok(Node::EventWait(event_id(
            ffi::read(at as *const CUDA_EVENT_WAIT_NODE_PARAMS)?.event,
        )?)),
        T::CU_GRAPH_NODE_TYPE_EMPTY => Ok(Node::Empty),
        _ => refuse("cuGraphNodeSetParams of this node kind", CUDA_ERROR_NOT_SUPPORTED).map(|_| Node::Empty),
    }
}

fn event_of(node: CUgraphNode, record: bool, out: *mut CUevent) -> CuResult<()> {
    let g = graphs();
    match (g.node(node)?.1, record) {
        (Node::EventRecord(e), true) | (Node::EventWait(e), false) => ffi::write(out, CUevent::of(*e)),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

entry! {
    cuGraphAddKernelNode_v2 => |f, out, graph, deps, n, params| {
        add_node(out, graph, deps, std::ptr::null(), n, kernel_node(params)?)
    }
    cuGraphAddMemsetNode => |f, out, graph, deps, n, params, _ctx| {
        add_node(out, graph, deps, std::ptr::null(), n, memset_node(params)?)
    }
    cuGraphAddMemcpyNode => |f, out, graph, deps, n, params, _ctx| {
        add_node(out, graph, deps, std::ptr::null(), n, memcpy_node(params)?)
    }
    cuGraphAddHostNode => |f, out, graph, deps, n, params| {
        add_node(out, graph, deps, std::ptr::null(), n, host_node(ffi::read(params)?)?)
    }
    cuGraphAddEmptyNode => |f, out, graph, deps, n| {
        add_node(out, graph, deps, std::ptr::null(), n, Node::Empty)
    }
    cuGraphAddEventRecordNode => |f, out, graph, deps, n, event| {
        add_node(out, graph, deps, std::ptr::null(), n, Node::EventRecord(event_id(event)?))
    }
    cuGraphAddEventWaitNode => |f, out, graph, deps, n, event| {
        add_node(out, graph, deps, std::ptr::null(), n, Node::EventWait(event_id(event)?))
    }
    cuGraphAddChildGraphNode => |f, out, graph, deps, n, child| {
        if out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let list = { let g = graphs(); g.graph(graph)?; read_deps(&g, deps, std::ptr::null(), n)? };
        add_child(out, graph, list, child, false)
    }
    cuGraphAddMemAllocNode => |f, out, graph, deps, n, params| {
        let p: CUDA_MEM_ALLOC_NODE_PARAMS = ffi::read(params)?;
        let list = { let g = graphs(); g.graph(graph)?; read_deps(&g, deps, std::ptr::null(), n)? };
        let dptr_out = (params as *mut u8).wrapping_add(offset_of!(CUDA_MEM_ALLOC_NODE_PARAMS, dptr)) as *mut CUdeviceptr;
        add_alloc(out, graph, list, p.bytesize, dptr_out)
    }
    cuGraphAddMemFreeNode => |f, out, graph, deps, n, dptr| {
        let list = { let g = graphs(); g.graph(graph)?; read_deps(&g, deps, std::ptr::null(), n)? };
        add_free(out, graph, list, dptr)
    }
    cuGraphAddNode => |f, out, graph, deps, n, params| {
        add_generic(out, graph, deps, std::ptr::null(), n, params)
    }
    cuGraphAddNode_v2 => |f, out, graph, deps, data, n, params| {
        add_generic(out, graph, deps, data, n, params)
    }
    cuGraphConditionalHandleCreate => |f, out, graph, _ctx, default_value, flags| {
        need_ctx()?;
        if out.is_null() || flags & !GRAPH_COND_ASSIGN_DEFAULT != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        graphs().graph(graph)?;
        if !mirroring() {
            return refuse(
                "cuGraphConditionalHandleCreate without a vGPU server that holds graphs (or with VGPU_GRAPHS=replay)",
                CUDA_ERROR_NOT_SUPPORTED,
            );
        }
        let call = GraphConditionalHandleCreate { graph: GraphId(local_id(graph)), default_value, flags };
        let handle = client::call(0, &call, &[])?.handle;
        graphs().handles.insert(handle, local_id(graph));
        ffi::write(out, handle)
    }
    cuGraphKernelNodeSetParams_v2 => |f, node, params| {
        set_node(node, kernel_node(params)?)
    }
    cuGraphMemsetNodeSetParams => |f, node, params| {
        set_node(node, memset_node(params)?)
    }
    cuGraphMemcpyNodeSetParams => |f, node, params| {
        set_node(node, memcpy_node(params)?)
    }
    cuGraphHostNodeSetParams => |f, node, params| {
        set_node(node, host_node(ffi::read(params)?)?)
    }
    cuGraphEventRecordNodeSetEvent => |f, node, event| {
        set_node(node, Node::EventRecord(event_id(event)?))
    }
    cuGraphEventWaitNodeSetEvent => |f, node, event| {
        set_node(node, Node::EventWait(event_id(event)?))
    }
    cuGraphNodeSetParams => |f, node, params| {
        set_node(node, generic_node(params)?)
    }
    cuGraphMemsetNodeGetParams => |f, node, out| {
        let g = graphs();
        match g.node(node)?.1 {
            Node::Memset { dst, pitch, value, elem, width, height } => ffi::write(out, CUDA_MEMSET_NODE_PARAMS {
                dst: *dst, pitch: *pitch, value: *value, elementSize: *elem, width: *width, height: *height,
            }),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    cuGraphHostNodeGetParams => |f, node, out| {
        let g = graphs();
        match g.node(node)?.1 {
            Node::Host { function, user } => ffi::write(out, CUDA_HOST_NODE_PARAMS {
                fn_: *function, userData: *user as *mut std::ffi::c_void,
            }),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    cuGraphEventRecordNodeGetEvent => |f, node, out| {
        event_of(node, true, out)
    }
    cuGraphEventWaitNodeGetEvent => |f, node, out| {
        event_of(node, false, out)
    }
    cuGraphMemAllocNodeGetParams => |f, node, out| {
        // What the node allocated: its size and address, from a pinned pool on its device (the only kind of
        // allocation node vGPU makes).
        let g = graphs();
        match g.node(node)?.1 {
            Node::MemAlloc { dptr, size, device } => {
                let mut p = CUDA_MEM_ALLOC_NODE_PARAMS::default();
                p.poolProps.allocType = CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
                p.poolProps.location.type_ = CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
                p.poolProps.location.id = *device;
                p.bytesize = *size as usize;
                p.dptr = *dptr;
                ffi::write(out, p)
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    cuGraphMemFreeNodeGetParams => |f, node, out| {
        let g = graphs();
        match g.node(node)?.1 {
            Node::MemFree { dptr } => ffi::write(out, *dptr),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
}
