//! CUDA graphs: built here (by stream capture or node by node), kept here as a list of operations with their
//! dependencies, and mirrored on the server when it holds graphs (`CAP_GRAPHS`): every node that the server can
//! run by itself (kernels, memsets and copies of device memory, child graphs, conditional nodes, events) is added
//! to a real graph there as the app adds it; nodes that touch this process (host functions, copies to or from
//! host memory, memory allocated in the graph) are an empty node there.
//!
//! An executable graph runs on the server in one message when all its nodes can (`exec.rs`); otherwise it is
//! replayed here, node by node onto the stream through the usual paths, which orders nodes at least as strictly
//! as their dependencies ask. Conditional nodes need the server (device code sets their condition), so a graph
//! with a conditional node and a node of this process is refused at instantiation. `capture.rs` holds stream
//! capture, `params.rs` the node kinds and their parameters, `exec.rs` executable graphs.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use vgpu_cuda_sys::driver::{CUgraph, CUgraphEdgeData, CUgraphNode, CUgraphNodeType, CUhostFn};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::CAP_GRAPHS;
use vgpu_dataplane::wire::*;

use crate::{client, ffi, state};

mod capture;
mod exec;
mod params;
mod query;

pub(crate) use capture::{
    capture, capture_alloc, capture_free, capture_info, capture_status, is_capturing, key, record_event, refuse_sync,
    wait_event,
};

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
    /// A child graph node: the graph it owns (a copy of the app's graph, or the app's own, moved in).
    Child {
        graph: u64,
    },
    /// A conditional node on `handle`: `bodies` holds its body graphs' handles, the array `phGraph_out` gives the
    /// app (it lives as long as the node: a boxed slice does not move).
    Conditional {
        handle: u64,
        cond_type: u32,
        bodies: Box<[u64]>,
    },
    EventRecord(EventId),
    EventWait(EventId),
    /// A memory allocation node: the memory was allocated when the node was made (on `device`), and is the graph's.
    MemAlloc {
        dptr: u64,
        size: u64,
        device: i32,
    },
    MemFree {
        dptr: u64,
    },
}

impl Node {
    pub(crate) fn node_type(&self) -> CUgraphNodeType {
        use CUgraphNodeType as T;
        match self {
            Node::Kernel { .. } => T::CU_GRAPH_NODE_TYPE_KERNEL,
            Node::Memset { .. } => T::CU_GRAPH_NODE_TYPE_MEMSET,
            Node::HtoD { .. } | Node::DtoH { .. } | Node::DtoD { .. } | Node::Copy2D(_) | Node::Copy3D(_) => {
                T::CU_GRAPH_NODE_TYPE_MEMCPY
            }
            Node::Host { .. } => T::CU_GRAPH_NODE_TYPE_HOST,
            Node::MemOps { .. } => T::CU_GRAPH_NODE_TYPE_BATCH_MEM_OP,
            Node::Empty => T::CU_GRAPH_NODE_TYPE_EMPTY,
            Node::Child { .. } => T::CU_GRAPH_NODE_TYPE_GRAPH,
            Node::Conditional { .. } => T::CU_GRAPH_NODE_TYPE_CONDITIONAL,
            Node::EventRecord(_) => T::CU_GRAPH_NODE_TYPE_EVENT_RECORD,
            Node::EventWait(_) => T::CU_GRAPH_NODE_TYPE_WAIT_EVENT,
            Node::MemAlloc { .. } => T::CU_GRAPH_NODE_TYPE_MEM_ALLOC,
            Node::MemFree { .. } => T::CU_GRAPH_NODE_TYPE_MEM_FREE,
        }
    }

    /// The graphs this node owns.
    fn owned_graphs(&self) -> Vec<u64> {
        match self {
            Node::Child { graph } => vec![*graph],
            Node::Conditional { bodies, .. } => bodies.to_vec(),
            _ => Vec::new(),
        }
    }
}

#[derive(Default, Clone)]
pub(crate) struct Graph {
    pub(crate) nodes: Vec<(u64, Node)>,
    pub(crate) edges: Vec<(u64, u64)>,
    /// Stream-ordered allocations made while capturing into this graph (`cuMemAllocAsync`) and allocation nodes:
    /// natively the graph's. Here they are allocated once, at capture (or node creation). One the graph does not
    /// free outlives the graph, as natively (the app frees it like any allocation).
    allocated: Vec<u64>,
    /// The subset freed in the graph too: memory the graph's launches use and nothing else sees, kept until the
    /// graph and every executable made from it are gone.
    owned: Vec<u64>,
    /// The node that owns this graph (a child node's graph, a conditional node's body).
    owner: Option<u64>,
    /// Whether the server holds this graph too.
    mirrored: bool,
    /// For a copy (`cuGraphClone`, a child node's graph): each original node with its copy.
    clone_map: Vec<(u64, u64)>,
}

#[derive(Default)]
pub(crate) struct Graphs {
    graphs: HashMap<u64, Graph>,
    /// The graph each node is in.
    node_graph: HashMap<u64, u64>,
    execs: HashMap<u64, exec::Exec>,
    captures: HashMap<StreamId, capture::Capture>,
    /// Events recorded in a capture: the graph and the nodes a waiting stream must follow.
    events: HashMap<EventId, (u64, Vec<u64>)>,
    /// How many graphs and executables hold each graph-owned allocation.
    holders: HashMap<u64, u32>,
    /// Conditional handles: handle → the graph it was made for.
    handles: HashMap<u64, u64>,
    /// Kernel node attributes set (`cuGraphKernelNodeSetAttribute`): (node, attribute) → value bytes.
    kernel_attrs: HashMap<(u64, u32), Vec<u8>>,
}

pub(crate) fn graphs() -> MutexGuard<'static, Graphs> {
    static G: OnceLock<Mutex<Graphs>> = OnceLock::new();
    G.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Whether graphs are mirrored on the server: it must hold graphs, and `VGPU_GRAPHS=replay` (for A/B
/// measurements, or to fall back) keeps every graph here, replayed call by call (conditional nodes refused).
fn mirroring() -> bool {
    static REPLAY_ONLY: OnceLock<bool> = OnceLock::new();
    let replay_only = *REPLAY_ONLY.get_or_init(|| std::env::var("VGPU_GRAPHS").is_ok_and(|v| v == "replay"));
    !replay_only && client::session().is_ok_and(|s| s.capabilities & CAP_GRAPHS != 0)
}

/// Says once on stderr what vGPU cannot do with a graph, naming the call (the app then sees `code`).
pub(crate) fn refuse(what: &str, code: CUresult) -> CuResult<()> {
    crate::log::log!(crate::log::WARN, "{what}: not supported by vGPU");
    Err(code)
}

/// Graphs, executable graphs and graph nodes live in the client: their handles carry client-local ids.
pub(crate) fn local_id<T>(handle: *mut T) -> u64 {
    handle as u64
}

pub(crate) fn local_handle<T>(id: u64) -> *mut T {
    id as *mut T
}

impl Graphs {
    pub(crate) fn graph(&self, graph: CUgraph) -> CuResult<&Graph> {
        self.graphs.get(&local_id(graph)).ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    /// A node by handle: (its graph, the node).
    pub(crate) fn node(&self, node: CUgraphNode) -> CuResult<(u64, &Node)> {
        let id = local_id(node);
        let graph = *self.node_graph.get(&id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let g = self.graphs.get(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let n = g.nodes.iter().find(|(n, _)| *n == id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        Ok((graph, &n.1))
    }

    pub(crate) fn node_mut(&mut self, node: u64) -> CuResult<&mut Node> {
        let graph = *self.node_graph.get(&node).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let g = self.graphs.get_mut(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        g.nodes
            .iter_mut()
            .find(|(n, _)| *n == node)
            .map(|(_, n)| n)
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    /// A new, empty graph; `owner`: the node it belongs to. The server is told of the app's own graphs here
    /// (a conditional node's bodies come into being with the node there, copies with `GraphClone`).
    pub(crate) fn new_graph(&mut self, owner: Option<u64>, tell_server: bool) -> CuResult<u64> {
        let id = state::new_id();
        let mirrored = mirroring();
        if mirrored && tell_server {
            client::post(0, &GraphCreate { graph: GraphId(id) }, &[])?;
        }
        self.graphs.insert(
            id,
            Graph {
                owner,
                mirrored,
                ..Default::default()
            },
        );
        Ok(id)
    }

    /// Adds `node` to `graph` after `deps` (nodes of that graph), here and on the server; returns its id.
    pub(crate) fn insert_node(&mut self, graph: u64, deps: &[u64], node: Node) -> CuResult<u64> {
        let g = self.graphs.get(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if deps.iter().any(|d| self.node_graph.get(d) != Some(&graph)) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut unique = deps.to_vec();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != deps.len() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mirrored = g.mirrored;
        let id = state::new_id();
        if mirrored {
            let spec = params::server_spec(&node).unwrap_or(GraphNodeSpec::Empty);
            let mut tail = Vec::with_capacity(deps.len() * 8 + 64);
            for d in deps {
                tail.extend_from_slice(&d.to_le_bytes());
            }
            spec.encode(&mut tail);
            let call = GraphAddNode {
                graph: GraphId(graph),
                node: GraphNodeId(id),
                kind: spec.kind(),
                dep_count: deps.len() as u32,
            };
            client::post(0, &call, &tail)?;
        }
        if let Some(g) = self.graphs.get_mut(&graph) {
            g.nodes.push((id, node));
            g.edges.extend(deps.iter().map(|&d| (d, id)));
        }
        self.node_graph.insert(id, graph);
        Ok(id)
    }

    /// Forgets a node and the graphs it owns (the server is told by the caller).
    fn forget_node(&mut self, node: u64) {
        let Some(graph) = self.node_graph.remove(&node) else {
            return;
        };
        self.kernel_attrs.retain(|(n, _), _| *n != node);
        let mut owned = Vec::new();
        if let Some(g) = self.graphs.get_mut(&graph) {
            if let Some(at) = g.nodes.iter().position(|(n, _)| *n == node) {
                owned = g.nodes.remove(at).1.owned_graphs();
            }
            g.edges.retain(|(a, b)| *a != node && *b != node);
        }
        for o in owned {
            self.forget_graph(o);
        }
    }

    /// Forgets a graph, its nodes and the graphs they own; returns the graph-owned allocations it held.
    fn forget_graph(&mut self, graph: u64) -> Vec<u64> {
        let Some(g) = self.graphs.remove(&graph) else {
            return Vec::new();
        };
        let mut owned = g.owned;
        for (n, node) in g.nodes {
            self.node_graph.remove(&n);
            self.kernel_attrs.retain(|(k, _), _| *k != n);
            for o in node.owned_graphs() {
                owned.extend(self.forget_graph(o));
            }
        }
        self.handles.retain(|_, g| *g != graph);
        owned
    }

    /// Whether `graph` (and the graphs its nodes own) has a node that only this process can run, or a
    /// conditional node: (client-only, conditional).
    pub(crate) fn traits(&self, graph: u64) -> (bool, bool) {
        let Some(g) = self.graphs.get(&graph) else {
            return (false, false);
        };
        let mut out = (false, false);
        for (_, n) in &g.nodes {
            out.0 |= params::server_spec(n).is_none();
            out.1 |= matches!(n, Node::Conditional { .. });
            for o in n.owned_graphs() {
                let (c, k) = self.traits(o);
                out.0 |= c;
                out.1 |= k;
            }
        }
        out
    }
}

/// Drops one hold on each allocation; those nobody holds any more are freed (synchronously, as `cuMemFree` is:
/// a launch of the graph may still be using them).
pub(crate) fn release_owned(mut g: MutexGuard<'static, Graphs>, owned: Vec<u64>) -> CuResult<()> {
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
        let route = crate::api::route_of_ptr(dptr);
        if state::write().remove_device_range(dptr).is_some() {
            client::call_to(route, 0, &MemFree { dptr: DevicePtr(dptr) }, &[])?;
        }
    }
    Ok(())
}

/// The dependencies an app passes (`count` node handles), with their edge data checked: the default edge, or
/// a programmatic one out of a kernel node, which is kept as a full dependency (the downstream kernel then
/// starts after the upstream one ends: an order the programmatic edge allows too).
pub(crate) fn read_deps(
    g: &Graphs,
    deps: *const CUgraphNode,
    data: *const CUgraphEdgeData,
    count: usize,
) -> CuResult<Vec<u64>> {
    if count > MAX_GRAPH_DEPS {
        return refuse(
            "a graph node with more than 8192 dependencies",
            CUDA_ERROR_NOT_SUPPORTED,
        )
        .map(|_| Vec::new());
    }
    if count > 0 && deps.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let d = local_id(ffi::read(deps.wrapping_add(i))?);
        if !data.is_null() {
            params::check_edge(g, d, ffi::read(data.wrapping_add(i))?)?;
        }
        out.push(d);
    }
    Ok(out)
}

/// Adds a node built by hand, after `deps`, and hands out its handle.
pub(crate) fn add_node(
    out: *mut CUgraphNode,
    graph: CUgraph,
    deps: *const CUgraphNode,
    data: *const CUgraphEdgeData,
    n: usize,
    node: Node,
) -> CuResult<()> {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut g = graphs();
    g.graph(graph)?;
    let deps = read_deps(&g, deps, data, n)?;
    let id = g.insert_node(local_id(graph), &deps, node)?;
    ffi::write(out, local_handle(id))
}

/// The nodes of `graph` in an order that respects its edges (Kahn's algorithm; ties in insertion order).
pub(crate) fn ordered(graph: &Graph) -> CuResult<Vec<(u64, Node)>> {
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

#[cfg(test)]
mod tests;
