//! The graph operations a backend offers: CUDA graphs held on the server, built node by node as the client
//! sends them, instantiated, launched whole and updated in place. Both backends implement them: the real one
//! with the driver's graph API (conditional nodes evaluated on the GPU), the emulated one with its own model.

use vgpu_dataplane::cuerr::{CuResult, CUDA_ERROR_NOT_SUPPORTED};
use vgpu_dataplane::ids::DevicePtr;
use vgpu_dataplane::wire::{GraphCopySpec, LaunchShape};

use crate::backend::Fill;
use crate::handles::*;

/// One node's parameters with the backend's own handles (the session mapped and checked the client's).
#[derive(Debug, Clone)]
pub enum NodeParams {
    /// A kernel, its arguments packed at the offsets of `params` (the function's layout).
    Kernel {
        function: Callable,
        shape: LaunchShape,
        args: Vec<u8>,
        params: Vec<(u32, u32)>,
    },
    Memset {
        dst: DevicePtr,
        fill: Fill,
    },
    /// A device-to-device copy, both ranges checked.
    Copy(GraphCopySpec),
    Empty,
    /// A child graph node that takes over `graph` (a copy the session made for it).
    Child(Graph),
    /// A conditional node on a handle the session created: its `size` body graphs are the driver's to make.
    Conditional {
        handle: u64,
        cond_type: u32,
        size: u32,
    },
    EventRecord(Event),
    EventWait(Event),
}

/// What `cuGraphExecUpdate` reports: its `CUgraphExecUpdateResult` and the nodes it blames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecUpdateInfo {
    pub result: u32,
    pub error_node: Option<GraphNode>,
    pub error_from_node: Option<GraphNode>,
}

/// Graph operations; a backend without graphs refuses every one (the client then never sends them: it learns
/// from the handshake).
pub trait GraphOps {
    fn graph_create(&self) -> CuResult<Graph> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// Destroys a graph with its nodes and the graphs they own (child graphs, conditional bodies).
    fn graph_destroy(&self, _graph: Graph) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// Adds a node after `deps`; returns it and, for a conditional node, its body graphs in order.
    fn graph_add_node(
        &self,
        _graph: Graph,
        _deps: &[GraphNode],
        _node: &NodeParams,
    ) -> CuResult<(GraphNode, Vec<Graph>)> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuGraphConditionalHandleCreate` in the calling thread's current context.
    fn graph_conditional_handle(&self, _graph: Graph, _default_value: u32, _flags: u32) -> CuResult<u64> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    fn graph_instantiate(&self, _graph: Graph, _flags: u64) -> CuResult<GraphExec> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    fn graph_launch(&self, _exec: GraphExec, _stream: Stream) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    fn graph_upload(&self, _exec: GraphExec, _stream: Stream) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    fn graph_exec_destroy(&self, _exec: GraphExec) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    fn graph_node_set_params(&self, _node: GraphNode, _params: &NodeParams) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    fn graph_exec_node_set_params(&self, _exec: GraphExec, _node: GraphNode, _params: &NodeParams) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuGraphExecUpdate`: `Ok` when it updated; `Err` carries the driver's error and what it reported.
    fn graph_exec_update(
        &self,
        _exec: GraphExec,
        _graph: Graph,
    ) -> Result<ExecUpdateInfo, (CuResult<()>, ExecUpdateInfo)> {
        Err((Err(CUDA_ERROR_NOT_SUPPORTED), ExecUpdateInfo::default()))
    }
    fn graph_destroy_node(&self, _node: GraphNode) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// Adds (or with `remove`, removes) the edges `from[i]` → `to[i]`.
    fn graph_edges(&self, _graph: Graph, _from: &[GraphNode], _to: &[GraphNode], _remove: bool) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    fn graph_exec_child_set_params(&self, _exec: GraphExec, _node: GraphNode, _child: Graph) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// A copy of `source`, and the copies of `nodes` (nodes of `source`) in it, in the same order.
    fn graph_clone(&self, _source: Graph, _nodes: &[GraphNode]) -> CuResult<(Graph, Vec<GraphNode>)> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
}
