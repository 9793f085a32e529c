//! Emulated backend: CUDA graphs. A graph is its nodes (with the backend's parameters) and edges; an executable
//! graph is a snapshot of that tree taken at instantiation, run node by node in dependency order on the launch
//! stream through the backend's own operations (kernels checked and counted, memsets and copies real).
//!
//! Conditional nodes read their handle's value. No device code runs here, so `cudaGraphSetConditional` from a
//! kernel has no effect: a handle keeps its default (set at every launch with `CU_GRAPH_COND_ASSIGN_DEFAULT`,
//! else once, at creation). A WHILE node whose value is non-zero runs its body once and then ends as if device
//! code had set 0, since a loop only a kernel could end would never end here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use vgpu_cuda_sys::driver::CUgraphExecUpdateResult as UpdateResult;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::{
    GraphCopySpec, GRAPH_COND_ASSIGN_DEFAULT, GRAPH_COND_IF, GRAPH_COND_SWITCH, GRAPH_COND_WHILE,
};

use super::EmulatedBackend;
use crate::backend::*;

#[derive(Default)]
pub(super) struct Graphs {
    graphs: HashMap<u64, EmuGraph>,
    /// node → its graph.
    nodes: HashMap<u64, u64>,
    execs: HashMap<u64, Tree>,
    handles: HashMap<u64, CondHandle>,
}

#[derive(Default)]
struct EmuGraph {
    /// In creation order: node, parameters, graphs it owns (a child node's graph, a conditional node's bodies).
    nodes: Vec<(u64, NodeParams, Vec<u64>)>,
    edges: Vec<(u64, u64)>,
}

struct CondHandle {
    graph: u64,
    default_value: u32,
    flags: u32,
    value: u32,
}

/// A graph as an executable graph holds it: nodes in creation order with their sub-graphs, edges by index, and
/// an order to run them in that respects every edge.
#[derive(Clone)]
struct Tree {
    nodes: Vec<TreeNode>,
    edges: Vec<(usize, usize)>,
    order: Vec<usize>,
    /// The conditional handles whose defaults a launch applies (those of the graph instantiated).
    handles: Vec<u64>,
}

#[derive(Clone)]
struct TreeNode {
    handle: u64,
    params: NodeParams,
    subs: Vec<Tree>,
}

impl Graphs {
    /// A snapshot of `graph` and the graphs its nodes own.
    fn snapshot(&self, graph: u64) -> CuResult<Tree> {
        let g = self.graphs.get(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let index: HashMap<u64, usize> = g.nodes.iter().enumerate().map(|(i, n)| (n.0, i)).collect();
        let edges: Vec<(usize, usize)> = g
            .edges
            .iter()
            .filter_map(|(a, b)| Some((*index.get(a)?, *index.get(b)?)))
            .collect();
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for (handle, params, owned) in &g.nodes {
            let subs = owned.iter().map(|&o| self.snapshot(o)).collect::<CuResult<Vec<_>>>()?;
            nodes.push(TreeNode {
                handle: *handle,
                params: params.clone(),
                subs,
            });
        }
        let order = topological(nodes.len(), &edges).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let handles = self
            .handles
            .iter()
            .filter(|(_, h)| h.graph == graph)
            .map(|(&k, _)| k)
            .collect();
        Ok(Tree {
            nodes,
            edges,
            order,
            handles,
        })
    }

    fn node_mut(&mut self, node: u64) -> CuResult<&mut (u64, NodeParams, Vec<u64>)> {
        let graph = *self.nodes.get(&node).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        self.graphs
            .get_mut(&graph)
            .and_then(|g| g.nodes.iter_mut().find(|n| n.0 == node))
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    /// Forgets a graph, its nodes and the graphs they own.
    fn remove_graph(&mut self, graph: u64) {
        if let Some(g) = self.graphs.remove(&graph) {
            for (node, _, owned) in g.nodes {
                self.nodes.remove(&node);
                for o in owned {
                    self.remove_graph(o);
                }
            }
            self.handles.retain(|_, h| h.graph != graph);
        }
    }
}

/// Kahn's algorithm over `n` nodes; ties in creation order. `None`: a cycle.
fn topological(n: usize, edges: &[(usize, usize)]) -> Option<Vec<usize>> {
    let mut indegree = vec![0usize; n];
    for &(_, b) in edges {
        indegree[b] += 1;
    }
    let mut order = Vec::with_capacity(n);
    let mut done = vec![false; n];
    while order.len() < n {
        let next = (0..n).find(|&i| !done[i] && indegree[i] == 0)?;
        done[next] = true;
        order.push(next);
        for &(a, b) in edges {
            if a == next {
                indegree[b] -= 1;
            }
        }
    }
    Some(order)
}

fn same_kind(a: &NodeParams, b: &NodeParams) -> bool {
    match (a, b) {
        (
            NodeParams::Conditional {
                cond_type: t1,
                size: s1,
                ..
            },
            NodeParams::Conditional {
                cond_type: t2,
                size: s2,
                ..
            },
        ) => t1 == t2 && s1 == s2,
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

/// Whether `new` has `old`'s shape (nodes, kinds, edges, sub-graphs), as `cuGraphExecUpdate` requires; the
/// result code of the first difference otherwise, with the node it concerns.
fn same_shape(old: &Tree, new: &Tree) -> Result<(), (UpdateResult, Option<u64>)> {
    if old.nodes.len() != new.nodes.len() {
        return Err((UpdateResult::CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED, None));
    }
    let mut a = old.edges.clone();
    let mut b = new.edges.clone();
    a.sort_unstable();
    b.sort_unstable();
    if a != b {
        return Err((UpdateResult::CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED, None));
    }
    for (o, n) in old.nodes.iter().zip(&new.nodes) {
        if !same_kind(&o.params, &n.params) {
            return Err((
                UpdateResult::CU_GRAPH_EXEC_UPDATE_ERROR_NODE_TYPE_CHANGED,
                Some(n.handle),
            ));
        }
        if o.subs.len() != n.subs.len() {
            return Err((
                UpdateResult::CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED,
                Some(n.handle),
            ));
        }
        for (so, sn) in o.subs.iter().zip(&n.subs) {
            same_shape(so, sn)?;
        }
    }
    Ok(())
}

/// Gives `old` (an executable graph's tree) the parameters of `new`, of the same shape; `old` keeps its handles.
fn take_params(old: &mut Tree, new: &Tree) {
    for (o, n) in old.nodes.iter_mut().zip(&new.nodes) {
        if !matches!(o.params, NodeParams::Child(_)) {
            o.params = n.params.clone();
        }
        for (so, sn) in o.subs.iter_mut().zip(&n.subs) {
            take_params(so, sn);
        }
    }
}

fn find_in_tree(tree: &mut Tree, node: u64) -> Option<&mut TreeNode> {
    for n in tree.nodes.iter_mut() {
        if n.handle == node {
            return Some(n);
        }
        for sub in n.subs.iter_mut() {
            if let Some(found) = find_in_tree(sub, node) {
                return Some(found);
            }
        }
    }
    None
}

/// Logged once per process: WHILE loops end after one pass here.
static WHILE_NOTED: AtomicBool = AtomicBool::new(false);

impl EmulatedBackend {
    fn graphs(&self) -> std::sync::MutexGuard<'_, Graphs> {
        self.graphs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The checks the driver makes when a node is added or given new parameters.
    fn check_node(&self, node: &NodeParams) -> CuResult<()> {
        match node {
            NodeParams::Kernel {
                function, shape, args, ..
            } => {
                super::launch::check_shape(&self.devices[0], shape)?;
                let size = *self
                    .state()
                    .functions
                    .get(&function.raw())
                    .ok_or(CUDA_ERROR_INVALID_VALUE)?;
                if args.len() != size {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                Ok(())
            }
            NodeParams::Memset { fill, .. } if !matches!(fill.elem_size, 1 | 2 | 4) => Err(CUDA_ERROR_INVALID_VALUE),
            NodeParams::EventRecord(e) | NodeParams::EventWait(e) => {
                if self.state().events.contains_key(&e.0) {
                    Ok(())
                } else {
                    Err(CUDA_ERROR_INVALID_VALUE)
                }
            }
            NodeParams::Conditional {
                handle,
                cond_type,
                size,
            } => {
                let size_ok = match *cond_type {
                    GRAPH_COND_IF => matches!(size, 1 | 2),
                    GRAPH_COND_WHILE => *size == 1,
                    GRAPH_COND_SWITCH => *size > 0,
                    _ => false,
                };
                if !size_ok || !self.graphs().handles.contains_key(handle) {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Runs a tree's nodes in order on `stream`.
    fn run_tree(&self, tree: &Tree, stream: Stream) -> CuResult<()> {
        for &i in &tree.order {
            let node = &tree.nodes[i];
            match &node.params {
                NodeParams::Kernel {
                    function,
                    shape,
                    args,
                    params,
                } => {
                    let mut args = args.clone();
                    self.launch(*function, stream, shape, &mut args, params)?;
                }
                NodeParams::Memset { dst, fill } => self.memset(dst.0, *fill)?,
                NodeParams::Copy(c) => self.copy_box(c)?,
                NodeParams::Empty => {}
                NodeParams::EventRecord(e) => self.event_record(*e, stream)?,
                NodeParams::EventWait(e) => self.stream_wait_event(stream, *e, 0)?,
                NodeParams::Child(_) => {
                    if let Some(sub) = node.subs.first() {
                        self.run_tree(sub, stream)?;
                    }
                }
                NodeParams::Conditional { handle, cond_type, .. } => {
                    self.run_conditional(*handle, *cond_type, &node.subs, stream)?
                }
            }
        }
        Ok(())
    }

    fn handle_value(&self, handle: u64) -> CuResult<u32> {
        self.graphs()
            .handles
            .get(&handle)
            .map(|h| h.value)
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    fn run_conditional(&self, handle: u64, cond_type: u32, bodies: &[Tree], stream: Stream) -> CuResult<()> {
        let value = self.handle_value(handle)?;
        match cond_type {
            GRAPH_COND_IF => match (value != 0, bodies) {
                (true, [then, ..]) => self.run_tree(then, stream),
                (false, [_, otherwise]) => self.run_tree(otherwise, stream),
                _ => Ok(()),
            },
            GRAPH_COND_SWITCH => match bodies.get(value as usize) {
                Some(body) => self.run_tree(body, stream),
                None => Ok(()),
            },
            GRAPH_COND_WHILE => {
                if value == 0 {
                    return Ok(());
                }
                if let Some(body) = bodies.first() {
                    self.run_tree(body, stream)?;
                }
                if !WHILE_NOTED.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "emulated backend: a WHILE conditional node ran its body once (kernels do not run here, so \
                         only the default value set at launch decides; a loop device code would end is ended)"
                    );
                }
                if let Some(h) = self.graphs().handles.get_mut(&handle) {
                    h.value = 0;
                }
                Ok(())
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    /// A device-to-device copy of a box, row by row (the session checked both spans).
    fn copy_box(&self, c: &GraphCopySpec) -> CuResult<()> {
        for z in 0..c.depth {
            for y in 0..c.height {
                let src = c.src.0 + z * c.src_pitch * c.src_height + y * c.src_pitch;
                let dst = c.dst.0 + z * c.dst_pitch * c.dst_height + y * c.dst_pitch;
                let row = self.with_range(src, c.width, |s| s.to_vec())?;
                self.with_range(dst, c.width, |d| d.copy_from_slice(&row))?;
            }
        }
        Ok(())
    }
}

impl GraphOps for EmulatedBackend {
    fn graph_create(&self) -> CuResult<Graph> {
        let g = self.handle();
        self.graphs().graphs.insert(g, EmuGraph::default());
        Ok(Graph(g))
    }

    fn graph_destroy(&self, graph: Graph) -> CuResult<()> {
        let mut gs = self.graphs();
        if !gs.graphs.contains_key(&graph.0) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        gs.remove_graph(graph.0);
        Ok(())
    }

    fn graph_add_node(&self, graph: Graph, deps: &[GraphNode], node: &NodeParams) -> CuResult<(GraphNode, Vec<Graph>)> {
        self.check_node(node)?;
        let mut owned = Vec::new();
        match node {
            NodeParams::Conditional { size, .. } => {
                for _ in 0..*size {
                    owned.push(self.handle());
                }
            }
            NodeParams::Child(g) => owned.push(g.0),
            _ => {}
        }
        let handle = self.handle();
        let mut gs = self.graphs();
        let g = gs.graphs.get(&graph.0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if deps.iter().any(|d| !g.nodes.iter().any(|n| n.0 == d.0)) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if let NodeParams::Child(child) = node {
            if !gs.graphs.contains_key(&child.0) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
        }
        let bodies: Vec<Graph> = match node {
            NodeParams::Conditional { .. } => owned.iter().map(|&b| Graph(b)).collect(),
            _ => Vec::new(),
        };
        for b in &bodies {
            gs.graphs.insert(b.0, EmuGraph::default());
        }
        if let Some(g) = gs.graphs.get_mut(&graph.0) {
            g.edges.extend(deps.iter().map(|d| (d.0, handle)));
            g.nodes.push((handle, node.clone(), owned));
        }
        gs.nodes.insert(handle, graph.0);
        Ok((GraphNode(handle), bodies))
    }

    fn graph_conditional_handle(&self, graph: Graph, default_value: u32, flags: u32) -> CuResult<u64> {
        self.require_ctx()?;
        if flags & !GRAPH_COND_ASSIGN_DEFAULT != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let h = self.handle();
        let mut gs = self.graphs();
        if !gs.graphs.contains_key(&graph.0) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        gs.handles.insert(
            h,
            CondHandle {
                graph: graph.0,
                default_value,
                flags,
                value: default_value,
            },
        );
        Ok(h)
    }

    fn graph_instantiate(&self, graph: Graph, _flags: u64) -> CuResult<GraphExec> {
        let tree = self.graphs().snapshot(graph.0)?;
        let e = self.handle();
        self.graphs().execs.insert(e, tree);
        Ok(GraphExec(e))
    }

    fn graph_launch(&self, exec: GraphExec, stream: Stream) -> CuResult<()> {
        self.check_stream(stream)?;
        let tree = {
            let mut gs = self.graphs();
            let tree = gs.execs.get(&exec.0).cloned().ok_or(CUDA_ERROR_INVALID_VALUE)?;
            for h in &tree.handles {
                if let Some(h) = gs.handles.get_mut(h) {
                    if h.flags & GRAPH_COND_ASSIGN_DEFAULT != 0 {
                        h.value = h.default_value;
                    }
                }
            }
            tree
        };
        self.run_tree(&tree, stream)
    }

    fn graph_upload(&self, exec: GraphExec, stream: Stream) -> CuResult<()> {
        self.check_stream(stream)?;
        if self.graphs().execs.contains_key(&exec.0) {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    }

    fn graph_exec_destroy(&self, exec: GraphExec) -> CuResult<()> {
        self.graphs()
            .execs
            .remove(&exec.0)
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    fn graph_node_set_params(&self, node: GraphNode, params: &NodeParams) -> CuResult<()> {
        self.check_node(params)?;
        let mut gs = self.graphs();
        let slot = gs.node_mut(node.0)?;
        if !same_kind(&slot.1, params) || matches!(params, NodeParams::Conditional { .. } | NodeParams::Child(_)) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        slot.1 = params.clone();
        Ok(())
    }

    fn graph_exec_node_set_params(&self, exec: GraphExec, node: GraphNode, params: &NodeParams) -> CuResult<()> {
        self.check_node(params)?;
        let mut gs = self.graphs();
        let tree = gs.execs.get_mut(&exec.0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let slot = find_in_tree(tree, node.0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if !same_kind(&slot.params, params) || matches!(params, NodeParams::Conditional { .. } | NodeParams::Child(_)) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        slot.params = params.clone();
        Ok(())
    }

    fn graph_exec_update(
        &self,
        exec: GraphExec,
        graph: Graph,
    ) -> Result<ExecUpdateInfo, (CuResult<()>, ExecUpdateInfo)> {
        let mut gs = self.graphs();
        let failed = |result: UpdateResult, node: Option<u64>| {
            (
                Err(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE),
                ExecUpdateInfo {
                    result: result.0,
                    error_node: node.map(GraphNode),
                    error_from_node: None,
                },
            )
        };
        let new = gs.snapshot(graph.0).map_err(|e| (Err(e), ExecUpdateInfo::default()))?;
        let old = gs
            .execs
            .get_mut(&exec.0)
            .ok_or((Err(CUDA_ERROR_INVALID_VALUE), ExecUpdateInfo::default()))?;
        same_shape(old, &new).map_err(|(r, n)| failed(r, n))?;
        take_params(old, &new);
        Ok(ExecUpdateInfo::default())
    }

    fn graph_destroy_node(&self, node: GraphNode) -> CuResult<()> {
        let mut gs = self.graphs();
        let graph = gs.nodes.remove(&node.0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut owned = Vec::new();
        if let Some(g) = gs.graphs.get_mut(&graph) {
            if let Some(at) = g.nodes.iter().position(|n| n.0 == node.0) {
                owned = g.nodes.remove(at).2;
            }
            g.edges.retain(|(a, b)| *a != node.0 && *b != node.0);
        }
        for o in owned {
            gs.remove_graph(o);
        }
        Ok(())
    }

    fn graph_edges(&self, graph: Graph, from: &[GraphNode], to: &[GraphNode], remove: bool) -> CuResult<()> {
        let mut gs = self.graphs();
        let g = gs.graphs.get_mut(&graph.0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        for (a, b) in from.iter().zip(to) {
            let known = |n: &GraphNode| g.nodes.iter().any(|x| x.0 == n.0);
            if !known(a) || !known(b) || a == b {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let at = g.edges.iter().position(|e| *e == (a.0, b.0));
            match (remove, at) {
                (false, None) => g.edges.push((a.0, b.0)),
                (true, Some(i)) => {
                    g.edges.remove(i);
                }
                _ => return Err(CUDA_ERROR_INVALID_VALUE),
            }
        }
        Ok(())
    }

    fn graph_exec_child_set_params(&self, exec: GraphExec, node: GraphNode, child: Graph) -> CuResult<()> {
        let mut gs = self.graphs();
        let new = gs.snapshot(child.0)?;
        let tree = gs.execs.get_mut(&exec.0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let slot = find_in_tree(tree, node.0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        match (&slot.params, slot.subs.first_mut()) {
            (NodeParams::Child(_), Some(old)) => {
                same_shape(old, &new).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
                take_params(old, &new);
                Ok(())
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    fn graph_clone(&self, source: Graph, nodes: &[GraphNode]) -> CuResult<(Graph, Vec<GraphNode>)> {
        let mut gs = self.graphs();
        let src = gs.graphs.get(&source.0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if src
            .nodes
            .iter()
            .any(|n| matches!(n.1, NodeParams::Conditional { .. }) || !n.2.is_empty())
        {
            // Graphs with conditional or child nodes cannot be cloned here (natively: not those with
            // conditional nodes).
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let mut map = HashMap::new();
        for n in &src.nodes {
            map.insert(n.0, self.handle());
        }
        let copy = EmuGraph {
            nodes: src.nodes.iter().map(|n| (map[&n.0], n.1.clone(), Vec::new())).collect(),
            edges: src.edges.iter().map(|(a, b)| (map[a], map[b])).collect(),
        };
        let copies = nodes
            .iter()
            .map(|n| map.get(&n.0).copied().map(GraphNode).ok_or(CUDA_ERROR_INVALID_VALUE))
            .collect::<CuResult<Vec<_>>>()?;
        let clone = self.handle();
        for &c in map.values() {
            gs.nodes.insert(c, clone);
        }
        gs.graphs.insert(clone, copy);
        Ok((Graph(clone), copies))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topological_order_respects_edges_and_refuses_cycles() {
        let order = topological(4, &[(2, 0), (0, 1), (3, 1)]).expect("acyclic");
        let pos = |i: usize| order.iter().position(|&x| x == i).unwrap_or(usize::MAX);
        assert!(pos(2) < pos(0) && pos(0) < pos(1) && pos(3) < pos(1));
        assert_eq!(topological(2, &[(0, 1), (1, 0)]), None);
    }
}
