//! Real backend: CUDA graphs built with the driver's own graph API, node by node as the client sends them
//! (`cuGraphAddNode_v2` with `CUgraphNodeParams`), so conditional nodes are evaluated by the GPU: the kernels that
//! call `cudaGraphSetConditional` receive the driver's own handles.

use std::ffi::c_void;

use vgpu_cuda_sys::driver::*;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::GraphCopySpec;

use super::{RealBackend, ToDriver};
use crate::backend::*;

impl ToDriver<CUgraph> for Graph {
    fn to_driver(self) -> CUgraph {
        self.0 as usize as CUgraph
    }
}

impl ToDriver<CUgraphNode> for GraphNode {
    fn to_driver(self) -> CUgraphNode {
        self.0 as usize as CUgraphNode
    }
}

impl ToDriver<CUgraphExec> for GraphExec {
    fn to_driver(self) -> CUgraphExec {
        self.0 as usize as CUgraphExec
    }
}

fn node_of(n: CUgraphNode) -> GraphNode {
    GraphNode(n as usize as u64)
}

/// A node's parameters in the driver's form, with what its pointers point into (kept alive beside it).
struct DriverNode {
    params: CUgraphNodeParams,
    /// The kernel's arguments and one pointer per parameter into them (`kernelParams`).
    _args: Vec<u8>,
    _ptrs: Vec<*mut c_void>,
}

fn copy_params(c: &GraphCopySpec) -> CUDA_MEMCPY3D {
    CUDA_MEMCPY3D {
        srcMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcDevice: c.src.0,
        srcPitch: c.src_pitch as usize,
        srcHeight: c.src_height as usize,
        dstMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstDevice: c.dst.0,
        dstPitch: c.dst_pitch as usize,
        dstHeight: c.dst_height as usize,
        WidthInBytes: c.width as usize,
        Height: c.height as usize,
        Depth: c.depth as usize,
        ..Default::default()
    }
}

impl RealBackend {
    fn current_ctx(&self) -> CUcontext {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        unsafe { self.driver.cuCtxGetCurrent(&mut ctx) };
        ctx
    }

    /// `CUgraphNodeParams` for `node`, in the calling thread's current context.
    fn driver_node(&self, node: &NodeParams) -> DriverNode {
        let mut params = CUgraphNodeParams::default();
        let mut args = Vec::new();
        let mut ptrs = Vec::new();
        let ctx = self.current_ctx();
        match node {
            NodeParams::Kernel {
                function,
                shape,
                args: packed,
                params: layout,
            } => {
                args = packed.clone();
                ptrs = layout
                    .iter()
                    .map(|&(offset, _)| args.as_mut_ptr().wrapping_add(offset as usize) as *mut c_void)
                    .collect();
                let mut k = CUDA_KERNEL_NODE_PARAMS_v3 {
                    gridDimX: shape.grid[0],
                    gridDimY: shape.grid[1],
                    gridDimZ: shape.grid[2],
                    blockDimX: shape.block[0],
                    blockDimY: shape.block[1],
                    blockDimZ: shape.block[2],
                    sharedMemBytes: shape.shared_mem,
                    kernelParams: if ptrs.is_empty() {
                        std::ptr::null_mut()
                    } else {
                        ptrs.as_mut_ptr()
                    },
                    ..Default::default()
                };
                match function {
                    Callable::Function(f) => k.func = (*f).to_driver(),
                    Callable::Kernel(kernel) => {
                        k.kern = (*kernel).to_driver();
                        k.ctx = ctx;
                    }
                }
                params.type_ = CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL;
                params.__bindgen_anon_1.kernel = k;
            }
            NodeParams::Memset { dst, fill } => {
                params.type_ = CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEMSET;
                params.__bindgen_anon_1.memset = CUDA_MEMSET_NODE_PARAMS_v2 {
                    dst: dst.0,
                    pitch: fill.pitch as usize,
                    value: fill.value,
                    elementSize: fill.elem_size,
                    width: fill.width as usize,
                    height: fill.height as usize,
                    ctx,
                };
            }
            NodeParams::Copy(c) => {
                params.type_ = CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEMCPY;
                params.__bindgen_anon_1.memcpy = CUDA_MEMCPY_NODE_PARAMS {
                    flags: 0,
                    reserved: 0,
                    copyCtx: ctx,
                    copyParams: copy_params(c),
                };
            }
            NodeParams::Empty => params.type_ = CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY,
            NodeParams::Child(g) => {
                params.type_ = CUgraphNodeType::CU_GRAPH_NODE_TYPE_GRAPH;
                params.__bindgen_anon_1.graph = CUDA_CHILD_GRAPH_NODE_PARAMS {
                    graph: (*g).to_driver(),
                    // The session made this graph for the node (a copy of the app's): the node takes it over, so
                    // its nodes keep the handles the session knows them by.
                    ownership: CUgraphChildGraphNodeOwnership::CU_GRAPH_CHILD_GRAPH_OWNERSHIP_MOVE,
                };
            }
            NodeParams::Conditional {
                handle,
                cond_type,
                size,
            } => {
                params.type_ = CUgraphNodeType::CU_GRAPH_NODE_TYPE_CONDITIONAL;
                params.__bindgen_anon_1.conditional = CUDA_CONDITIONAL_NODE_PARAMS {
                    handle: *handle,
                    type_: CUgraphConditionalNodeType(*cond_type),
                    size: *size,
                    phGraph_out: std::ptr::null_mut(),
                    ctx,
                };
            }
            NodeParams::EventRecord(e) => {
                params.type_ = CUgraphNodeType::CU_GRAPH_NODE_TYPE_EVENT_RECORD;
                params.__bindgen_anon_1.eventRecord = CUDA_EVENT_RECORD_NODE_PARAMS {
                    event: (*e).to_driver(),
                };
            }
            NodeParams::EventWait(e) => {
                params.type_ = CUgraphNodeType::CU_GRAPH_NODE_TYPE_WAIT_EVENT;
                params.__bindgen_anon_1.eventWait = CUDA_EVENT_WAIT_NODE_PARAMS {
                    event: (*e).to_driver(),
                };
            }
        }
        DriverNode {
            params,
            _args: args,
            _ptrs: ptrs,
        }
    }
}

impl GraphOps for RealBackend {
    fn graph_create(&self) -> CuResult<Graph> {
        let mut g = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; no flags.
        unsafe { self.driver.cuGraphCreate(&mut g, 0) }.result()?;
        Ok(Graph(g as usize as u64))
    }

    fn graph_destroy(&self, graph: Graph) -> CuResult<()> {
        // SAFETY: a graph this session created and does not use again.
        unsafe { self.driver.cuGraphDestroy(graph.to_driver()) }.result()
    }

    fn graph_add_node(&self, graph: Graph, deps: &[GraphNode], node: &NodeParams) -> CuResult<(GraphNode, Vec<Graph>)> {
        let mut n = self.driver_node(node);
        let deps: Vec<CUgraphNode> = deps.iter().map(|d| (*d).to_driver()).collect();
        let mut out = std::ptr::null_mut();
        // SAFETY: `n.params` is a complete CUgraphNodeParams whose pointers (kernel arguments) live in `n` until
        // the call returns (the driver copies them); the dependencies are nodes of this graph (the session
        // checked); NULL edge data means default edges.
        unsafe {
            self.driver.cuGraphAddNode_v2(
                &mut out,
                graph.to_driver(),
                deps.as_ptr(),
                std::ptr::null(),
                deps.len(),
                &mut n.params,
            )
        }
        .result()?;
        let mut bodies = Vec::new();
        if let NodeParams::Conditional { size, .. } = node {
            // SAFETY: the union's conditional member is the one written above; the driver filled phGraph_out
            // with an array of `size` graphs that lives as long as the node.
            let list = unsafe { n.params.__bindgen_anon_1.conditional.phGraph_out };
            if list.is_null() {
                return Err(CUDA_ERROR_UNKNOWN);
            }
            for i in 0..*size as usize {
                // SAFETY: within the `size` entries the driver wrote.
                bodies.push(Graph(unsafe { *list.add(i) } as usize as u64));
            }
        }
        Ok((node_of(out), bodies))
    }

    fn graph_conditional_handle(&self, graph: Graph, default_value: u32, flags: u32) -> CuResult<u64> {
        let mut h: CUgraphConditionalHandle = 0;
        // SAFETY: out-pointer to a local; the graph is this session's, the context the thread's current one.
        unsafe {
            self.driver.cuGraphConditionalHandleCreate(
                &mut h,
                graph.to_driver(),
                self.current_ctx(),
                default_value,
                flags,
            )
        }
        .result()?;
        Ok(h)
    }

    fn graph_instantiate(&self, graph: Graph, flags: u64) -> CuResult<GraphExec> {
        let mut e = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; the graph is this session's.
        unsafe {
            self.driver
                .cuGraphInstantiateWithFlags(&mut e, graph.to_driver(), flags)
        }
        .result()?;
        Ok(GraphExec(e as usize as u64))
    }

    fn graph_launch(&self, exec: GraphExec, stream: Stream) -> CuResult<()> {
        // SAFETY: handles this session obtained.
        unsafe { self.driver.cuGraphLaunch(exec.to_driver(), stream.to_driver()) }.result()
    }

    fn graph_upload(&self, exec: GraphExec, stream: Stream) -> CuResult<()> {
        // SAFETY: handles this session obtained.
        unsafe { self.driver.cuGraphUpload(exec.to_driver(), stream.to_driver()) }.result()
    }

    fn graph_exec_destroy(&self, exec: GraphExec) -> CuResult<()> {
        // SAFETY: an executable graph of this session, not used again.
        unsafe { self.driver.cuGraphExecDestroy(exec.to_driver()) }.result()
    }

    fn graph_node_set_params(&self, node: GraphNode, params: &NodeParams) -> CuResult<()> {
        let mut n = self.driver_node(params);
        // SAFETY: a node of this session; the parameters' pointers live in `n` for the call.
        unsafe { self.driver.cuGraphNodeSetParams(node.to_driver(), &mut n.params) }.result()
    }

    fn graph_exec_node_set_params(&self, exec: GraphExec, node: GraphNode, params: &NodeParams) -> CuResult<()> {
        let mut n = self.driver_node(params);
        // SAFETY: as above, with an executable graph of this session.
        unsafe {
            self.driver
                .cuGraphExecNodeSetParams(exec.to_driver(), node.to_driver(), &mut n.params)
        }
        .result()
    }

    fn graph_exec_update(
        &self,
        exec: GraphExec,
        graph: Graph,
    ) -> Result<ExecUpdateInfo, (CuResult<()>, ExecUpdateInfo)> {
        let mut info = CUgraphExecUpdateResultInfo {
            result: CUgraphExecUpdateResult::CU_GRAPH_EXEC_UPDATE_SUCCESS,
            errorNode: std::ptr::null_mut(),
            errorFromNode: std::ptr::null_mut(),
        };
        // SAFETY: handles of this session; out-pointer to a local.
        let r = unsafe {
            self.driver
                .cuGraphExecUpdate_v2(exec.to_driver(), graph.to_driver(), &mut info)
        }
        .result();
        let some = |n: CUgraphNode| (!n.is_null()).then(|| node_of(n));
        let out = ExecUpdateInfo {
            result: info.result.0,
            error_node: some(info.errorNode),
            error_from_node: some(info.errorFromNode),
        };
        match r {
            Ok(()) => Ok(out),
            Err(e) => Err((Err(e), out)),
        }
    }

    fn graph_destroy_node(&self, node: GraphNode) -> CuResult<()> {
        // SAFETY: a node of this session, not used again.
        unsafe { self.driver.cuGraphDestroyNode(node.to_driver()) }.result()
    }

    fn graph_edges(&self, graph: Graph, from: &[GraphNode], to: &[GraphNode], remove: bool) -> CuResult<()> {
        let from: Vec<CUgraphNode> = from.iter().map(|n| (*n).to_driver()).collect();
        let to: Vec<CUgraphNode> = to.iter().map(|n| (*n).to_driver()).collect();
        let n = from.len().min(to.len());
        // SAFETY: two arrays of `n` nodes of this graph; NULL edge data means default edges.
        unsafe {
            if remove {
                self.driver.cuGraphRemoveDependencies_v2(
                    graph.to_driver(),
                    from.as_ptr(),
                    to.as_ptr(),
                    std::ptr::null(),
                    n,
                )
            } else {
                self.driver.cuGraphAddDependencies_v2(
                    graph.to_driver(),
                    from.as_ptr(),
                    to.as_ptr(),
                    std::ptr::null(),
                    n,
                )
            }
        }
        .result()
    }

    fn graph_exec_child_set_params(&self, exec: GraphExec, node: GraphNode, child: Graph) -> CuResult<()> {
        // SAFETY: handles of this session.
        unsafe {
            self.driver
                .cuGraphExecChildGraphNodeSetParams(exec.to_driver(), node.to_driver(), child.to_driver())
        }
        .result()
    }

    fn graph_clone(&self, source: Graph, nodes: &[GraphNode]) -> CuResult<(Graph, Vec<GraphNode>)> {
        let mut clone = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; the source is this session's.
        unsafe { self.driver.cuGraphClone(&mut clone, source.to_driver()) }.result()?;
        let mut copies = Vec::with_capacity(nodes.len());
        for n in nodes {
            let mut c = std::ptr::null_mut();
            // SAFETY: a node of the source graph and the clone just made of it.
            let found = unsafe { self.driver.cuGraphNodeFindInClone(&mut c, (*n).to_driver(), clone) }.result();
            if let Err(e) = found {
                // SAFETY: the clone made above, not handed out.
                unsafe { self.driver.cuGraphDestroy(clone) };
                return Err(e);
            }
            copies.push(node_of(c));
        }
        Ok((Graph(clone as usize as u64), copies))
    }
}
