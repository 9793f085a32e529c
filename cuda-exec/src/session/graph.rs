//! Handlers: CUDA graphs the client builds and launches here (`wire::graph`). The session keeps which graphs,
//! nodes and executable graphs each client id names and which graphs belong to a node (a child node's graph, a
//! conditional node's bodies), and checks every node's function, ranges, events and handle before the backend
//! sees it, as it does for the same operation queued on a stream.

use std::collections::{HashMap, HashSet};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::channel::{Channel, Cx, Serve, Served};
use super::objects::Objects;
use super::ChannelEnd;
use crate::backend::*;

#[derive(Default)]
pub(super) struct GraphObjects {
    graphs: HashMap<GraphId, GraphRec>,
    nodes: HashMap<GraphNodeId, NodeRec>,
    execs: HashMap<GraphExecId, GraphExec>,
    /// Backend node → client id (the nodes `cuGraphExecUpdate` names).
    node_ids: HashMap<GraphNode, GraphNodeId>,
    /// Conditional handles this session created (kernels get them by value, like texture objects), with the
    /// graph each belongs to.
    handles: HashMap<u64, GraphId>,
}

struct GraphRec {
    handle: Graph,
    nodes: Vec<GraphNodeId>,
    /// The node that owns this graph (a child node's graph, a conditional node's body): it goes with the node.
    owner: Option<GraphNodeId>,
}

struct NodeRec {
    graph: GraphId,
    handle: GraphNode,
    owns: Vec<GraphId>,
}

impl GraphObjects {
    /// Forgets a graph, its nodes and the graphs they own.
    fn forget_graph(&mut self, id: GraphId) {
        if let Some(g) = self.graphs.remove(&id) {
            for n in g.nodes {
                self.forget_node(n);
            }
            self.handles.retain(|_, g| *g != id);
        }
    }

    fn forget_node(&mut self, id: GraphNodeId) {
        if let Some(n) = self.nodes.remove(&id) {
            self.node_ids.remove(&n.handle);
            for g in n.owns {
                self.forget_graph(g);
            }
        }
    }

    fn graph(&self, id: GraphId) -> CuResult<Graph> {
        self.graphs.get(&id).map(|g| g.handle).ok_or(CUDA_ERROR_INVALID_VALUE)
    }
}

fn graphs(o: &Objects) -> &GraphObjects {
    &o.graphs
}

impl Channel {
    fn graph_handle(&self, id: GraphId) -> CuResult<Graph> {
        self.s()
            .await_object(|o| graphs(o).graph(id).ok())
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    fn graph_node(&self, id: GraphNodeId) -> CuResult<(GraphId, GraphNode)> {
        self.s()
            .await_object(|o| graphs(o).nodes.get(&id).map(|n| (n.graph, n.handle)))
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    fn graph_exec(&self, id: GraphExecId) -> CuResult<GraphExec> {
        self.s()
            .await_object(|o| graphs(o).execs.get(&id).copied())
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    /// The backend's form of a node the client sent, every id, range and handle checked. A child node's graph
    /// and a conditional node's handle are checked by the caller, which knows the graph the node goes into.
    fn node_params(&self, spec: &GraphNodeSpec) -> CuResult<NodeParams> {
        Ok(match spec {
            GraphNodeSpec::Kernel { spec, args } => {
                let f = self.function(spec.function)?;
                if args.len() != f.args_size {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                NodeParams::Kernel {
                    function: f.callable,
                    shape: LaunchShape::from_dims(spec.dims, [1, 1, 1]),
                    args: args.clone(),
                    params: f.params.to_vec(),
                }
            }
            GraphNodeSpec::Memset(m) => {
                if m.width == 0 || m.height == 0 || !matches!(m.elem_size, 1 | 2 | 4) {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                let row = m
                    .width
                    .checked_mul(m.elem_size as u64)
                    .ok_or(CUDA_ERROR_INVALID_VALUE)?;
                if m.height > 1 && m.pitch < row {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                let span = m
                    .pitch
                    .checked_mul(m.height - 1)
                    .and_then(|s| s.checked_add(row))
                    .ok_or(CUDA_ERROR_INVALID_VALUE)?;
                self.check_range(m.dst, span)?;
                NodeParams::Memset {
                    dst: m.dst,
                    fill: Fill {
                        value: m.value,
                        elem_size: m.elem_size,
                        width: m.width,
                        height: m.height,
                        pitch: m.pitch,
                    },
                }
            }
            GraphNodeSpec::Copy(c) => {
                let many_rows = c.height > 1 || c.depth > 1;
                if many_rows && (c.src_pitch < c.width || c.dst_pitch < c.width) {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                if c.depth > 1 && (c.src_height < c.height || c.dst_height < c.height) {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                let (src_span, dst_span) = c.spans().ok_or(CUDA_ERROR_INVALID_VALUE)?;
                self.check_range(c.src, src_span)?;
                self.check_range(c.dst, dst_span)?;
                NodeParams::Copy(*c)
            }
            GraphNodeSpec::Empty => NodeParams::Empty,
            GraphNodeSpec::EventRecord(e) => NodeParams::EventRecord(self.event(*e)?),
            GraphNodeSpec::EventWait(e) => NodeParams::EventWait(self.event(*e)?),
            GraphNodeSpec::Child { .. } | GraphNodeSpec::Conditional { .. } => return Err(CUDA_ERROR_INVALID_VALUE),
        })
    }

    fn add_node(&mut self, c: GraphAddNode) -> Result<CuResult<()>, ChannelEnd> {
        let deps = c.dep_count as usize;
        if deps > MAX_GRAPH_DEPS {
            return Err(ChannelEnd::Malformed(format!("{deps} graph node dependencies")));
        }
        let (dep_ids, rest) = take_words(&self.tail, deps)?;
        let spec = GraphNodeSpec::decode(c.kind, rest)?;
        let s = self.session.clone();
        if let Err(e) = s.check_cap(|o| graphs(o).nodes.len(), |c| c.graph_nodes) {
            return Ok(Err(e));
        }
        let graph = match self.graph_handle(c.graph) {
            Ok(g) => g,
            Err(e) => return Ok(Err(e)),
        };
        // What the node refers to beyond the plain kinds: the graph a child node takes over, the bodies a
        // conditional node gets.
        let (params, child, bodies) = match &spec {
            GraphNodeSpec::Child { graph: child } => {
                let o = s.objects();
                match graphs(&o).graphs.get(child) {
                    Some(g) if g.owner.is_none() && *child != c.graph => {
                        (NodeParams::Child(g.handle), Some(*child), None)
                    }
                    _ => return Ok(Err(CUDA_ERROR_INVALID_VALUE)),
                }
            }
            GraphNodeSpec::Conditional { spec, bodies } => {
                let o = s.objects();
                let g = graphs(&o);
                let fresh: HashSet<&GraphId> = bodies.iter().collect();
                if !g.handles.contains_key(&spec.handle)
                    || fresh.len() != bodies.len()
                    || bodies.iter().any(|b| g.graphs.contains_key(b))
                {
                    return Ok(Err(CUDA_ERROR_INVALID_VALUE));
                }
                if g.graphs.len() + bodies.len() > s.limits.caps.graphs {
                    return Ok(Err(CUDA_ERROR_OUT_OF_MEMORY));
                }
                let params = NodeParams::Conditional {
                    handle: spec.handle,
                    cond_type: spec.cond_type,
                    size: spec.size,
                };
                (params, None, Some(bodies.clone()))
            }
            other => match self.node_params(other) {
                Ok(p) => (p, None, None),
                Err(e) => return Ok(Err(e)),
            },
        };
        let dep_handles: CuResult<Vec<GraphNode>> = {
            let o = s.objects();
            let g = graphs(&o);
            if g.nodes.contains_key(&c.node) {
                return Ok(Err(CUDA_ERROR_INVALID_VALUE));
            }
            dep_ids
                .iter()
                .map(|&d| match g.nodes.get(&GraphNodeId(d)) {
                    Some(n) if n.graph == c.graph => Ok(n.handle),
                    _ => Err(CUDA_ERROR_INVALID_VALUE),
                })
                .collect()
        };
        let dep_handles = match dep_handles {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let (handle, body_handles) = match self.b().graph_add_node(graph, &dep_handles, &params) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let mut o = s.objects();
        let g = &mut o.graphs;
        let mut owns = Vec::new();
        if let Some(child) = child {
            if let Some(rec) = g.graphs.get_mut(&child) {
                rec.owner = Some(c.node);
            }
            owns.push(child);
        }
        for (id, h) in bodies.unwrap_or_default().into_iter().zip(body_handles) {
            g.graphs.insert(
                id,
                GraphRec {
                    handle: h,
                    nodes: Vec::new(),
                    owner: Some(c.node),
                },
            );
            owns.push(id);
        }
        g.nodes.insert(
            c.node,
            NodeRec {
                graph: c.graph,
                handle,
                owns,
            },
        );
        g.node_ids.insert(handle, c.node);
        if let Some(rec) = g.graphs.get_mut(&c.graph) {
            rec.nodes.push(c.node);
        }
        Ok(Ok(()))
    }
}

impl Serve<GraphCreate> for Channel {
    fn serve(&mut self, c: GraphCreate, _cx: &mut Cx<'_>) -> Served<Empty> {
        let s = self.session.clone();
        if let Err(e) = s.check_cap(|o| graphs(o).graphs.len(), |c| c.graphs) {
            return Ok(Err(e));
        }
        if s.objects().graphs.graphs.contains_key(&c.graph) {
            return Ok(Err(CUDA_ERROR_INVALID_VALUE));
        }
        Ok(self.b().graph_create().map(|handle| {
            s.objects().graphs.graphs.insert(
                c.graph,
                GraphRec {
                    handle,
                    nodes: Vec::new(),
                    owner: None,
                },
            );
            Empty {}
        }))
    }
}

impl Serve<GraphDestroy> for Channel {
    fn serve(&mut self, c: GraphDestroy, _cx: &mut Cx<'_>) -> Served<Empty> {
        let s = self.session.clone();
        let handle = match s.objects().graphs.graphs.get(&c.graph) {
            Some(g) if g.owner.is_none() => g.handle,
            _ => return Ok(Err(CUDA_ERROR_INVALID_VALUE)),
        };
        let r = self.b().graph_destroy(handle);
        s.objects().graphs.forget_graph(c.graph);
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<GraphAddNode> for Channel {
    fn serve(&mut self, c: GraphAddNode, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.add_node(c)?.map(|_| Empty {}))
    }
}

impl Serve<GraphConditionalHandleCreate> for Channel {
    fn serve(&mut self, c: GraphConditionalHandleCreate, _cx: &mut Cx<'_>) -> Served<GraphHandleReply> {
        let r = self
            .graph_handle(c.graph)
            .and_then(|g| self.b().graph_conditional_handle(g, c.default_value, c.flags));
        Ok(r.map(|handle| {
            self.s().objects().graphs.handles.insert(handle, c.graph);
            GraphHandleReply { handle }
        }))
    }
}

impl Serve<GraphInstantiate> for Channel {
    fn serve(&mut self, c: GraphInstantiate, _cx: &mut Cx<'_>) -> Served<Empty> {
        let s = self.session.clone();
        if let Err(e) = s.check_cap(|o| graphs(o).execs.len(), |c| c.graph_execs) {
            return Ok(Err(e));
        }
        if s.objects().graphs.execs.contains_key(&c.exec) {
            return Ok(Err(CUDA_ERROR_INVALID_VALUE));
        }
        let r = self
            .graph_handle(c.graph)
            .and_then(|g| self.b().graph_instantiate(g, c.flags));
        Ok(r.map(|exec| {
            s.objects().graphs.execs.insert(c.exec, exec);
            Empty {}
        }))
    }
}

impl Serve<GraphLaunch> for Channel {
    fn serve(&mut self, c: GraphLaunch, cx: &mut Cx<'_>) -> Served<Empty> {
        let r = self.graph_exec(c.exec).and_then(|exec| {
            let stream = self.stream(c.stream, cx.per_thread)?;
            self.gate.submit(stream.0, crate::sched::Work::Launch);
            self.b().graph_launch(exec, stream)
        });
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<GraphUpload> for Channel {
    fn serve(&mut self, c: GraphUpload, cx: &mut Cx<'_>) -> Served<Empty> {
        let r = self.graph_exec(c.exec).and_then(|exec| {
            let stream = self.stream(c.stream, cx.per_thread)?;
            self.b().graph_upload(exec, stream)
        });
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<GraphExecDestroy> for Channel {
    fn serve(&mut self, c: GraphExecDestroy, _cx: &mut Cx<'_>) -> Served<Empty> {
        let exec = self.s().objects().graphs.execs.remove(&c.exec);
        Ok(exec
            .ok_or(CUDA_ERROR_INVALID_VALUE)
            .and_then(|e| self.b().graph_exec_destroy(e))
            .map(|_| Empty {}))
    }
}

impl Serve<GraphNodeSetParams> for Channel {
    fn serve(&mut self, c: GraphNodeSetParams, _cx: &mut Cx<'_>) -> Served<Empty> {
        let spec = GraphNodeSpec::decode(c.kind, &self.tail)?;
        let r = self.graph_node(c.node).and_then(|(_, node)| {
            let params = self.node_params(&spec)?;
            self.b().graph_node_set_params(node, &params)
        });
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<GraphExecNodeSetParams> for Channel {
    fn serve(&mut self, c: GraphExecNodeSetParams, _cx: &mut Cx<'_>) -> Served<Empty> {
        let spec = GraphNodeSpec::decode(c.kind, &self.tail)?;
        let r = self.graph_exec(c.exec).and_then(|exec| {
            let (_, node) = self.graph_node(c.node)?;
            let params = self.node_params(&spec)?;
            self.b().graph_exec_node_set_params(exec, node, &params)
        });
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<GraphExecUpdate> for Channel {
    fn serve(&mut self, c: GraphExecUpdate, cx: &mut Cx<'_>) -> Served<GraphExecUpdateReply> {
        let (exec, graph) = match (self.graph_exec(c.exec), self.graph_handle(c.graph)) {
            (Ok(e), Ok(g)) => (e, g),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
        };
        let (r, info) = match self.b().graph_exec_update(exec, graph) {
            Ok(info) => (Ok(()), info),
            Err((r, info)) => (r, info),
        };
        let o = self.s().objects();
        let id = |n: Option<GraphNode>| n.and_then(|n| o.graphs.node_ids.get(&n).copied()).unwrap_or_default();
        let reply = GraphExecUpdateReply {
            update_result: info.result,
            _pad: 0,
            error_node: id(info.error_node),
            error_from_node: id(info.error_from_node),
        };
        drop(o);
        // The failure's details matter as much as its code: they travel in the reply's tail.
        if let Err(e) = r {
            cx.reply_tail = zerocopy::IntoBytes::as_bytes(&reply).to_vec();
            return Ok(Err(e));
        }
        Ok(Ok(reply))
    }
}

impl Serve<GraphDestroyNode> for Channel {
    fn serve(&mut self, c: GraphDestroyNode, _cx: &mut Cx<'_>) -> Served<Empty> {
        let r = self.graph_node(c.node).and_then(|(graph, node)| {
            self.b().graph_destroy_node(node)?;
            let mut o = self.s().objects();
            if let Some(g) = o.graphs.graphs.get_mut(&graph) {
                g.nodes.retain(|n| *n != c.node);
            }
            o.graphs.forget_node(c.node);
            Ok(())
        });
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<GraphEdges> for Channel {
    fn serve(&mut self, c: GraphEdges, _cx: &mut Cx<'_>) -> Served<Empty> {
        let count = c.count as usize;
        if count > MAX_GRAPH_EDGES || self.tail.len() != count * 16 {
            return Err(ChannelEnd::Malformed(format!(
                "{count} graph edges in {} bytes",
                self.tail.len()
            )));
        }
        let (words, _) = take_words(&self.tail, count * 2)?;
        let r = self.graph_handle(c.graph).and_then(|graph| {
            let (mut from, mut to) = (Vec::with_capacity(count), Vec::with_capacity(count));
            {
                let o = self.s().objects();
                let node = |id: u64| match o.graphs.nodes.get(&GraphNodeId(id)) {
                    Some(n) if n.graph == c.graph => Ok(n.handle),
                    _ => Err(CUDA_ERROR_INVALID_VALUE),
                };
                for pair in words.chunks_exact(2) {
                    from.push(node(pair[0])?);
                    to.push(node(pair[1])?);
                }
            }
            self.b().graph_edges(graph, &from, &to, c.remove != 0)
        });
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<GraphExecChildSetParams> for Channel {
    fn serve(&mut self, c: GraphExecChildSetParams, _cx: &mut Cx<'_>) -> Served<Empty> {
        let r = self.graph_exec(c.exec).and_then(|exec| {
            let (_, node) = self.graph_node(c.node)?;
            let child = self.graph_handle(c.child)?;
            self.b().graph_exec_child_set_params(exec, node, child)
        });
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<GraphClone> for Channel {
    fn serve(&mut self, c: GraphClone, _cx: &mut Cx<'_>) -> Served<Empty> {
        let count = c.count as usize;
        if count > MAX_GRAPH_NODES || self.tail.len() != count * 16 {
            return Err(ChannelEnd::Malformed(format!(
                "{count} cloned nodes in {} bytes",
                self.tail.len()
            )));
        }
        let (words, _) = take_words(&self.tail, count * 2)?;
        let s = self.session.clone();
        if let Err(e) = s.check_cap(|o| graphs(o).graphs.len(), |c| c.graphs) {
            return Ok(Err(e));
        }
        // Every node of the source once, each copy a fresh id; the source owns no graph (the client copies only
        // such graphs).
        let checked: CuResult<(Graph, Vec<GraphNode>)> = (|| {
            let o = s.objects();
            let g = &o.graphs;
            let src = g.graphs.get(&c.source).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            if g.graphs.contains_key(&c.clone) || src.nodes.len() != count {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let mut originals = Vec::with_capacity(count);
            let mut seen = HashSet::new();
            for pair in words.chunks_exact(2) {
                let (old, new) = (GraphNodeId(pair[0]), GraphNodeId(pair[1]));
                let n = g.nodes.get(&old).filter(|n| n.graph == c.source && n.owns.is_empty());
                let n = n.ok_or(CUDA_ERROR_INVALID_VALUE)?;
                if !seen.insert(old) || !seen.insert(new) || g.nodes.contains_key(&new) {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                originals.push(n.handle);
            }
            Ok((src.handle, originals))
        })();
        let r = checked.and_then(|(src, originals)| self.b().graph_clone(src, &originals));
        Ok(r.map(|(clone, copies)| {
            let mut o = s.objects();
            let g = &mut o.graphs;
            let mut ids = Vec::with_capacity(count);
            for (pair, handle) in words.chunks_exact(2).zip(copies) {
                let id = GraphNodeId(pair[1]);
                g.nodes.insert(
                    id,
                    NodeRec {
                        graph: c.clone,
                        handle,
                        owns: Vec::new(),
                    },
                );
                g.node_ids.insert(handle, id);
                ids.push(id);
            }
            g.graphs.insert(
                c.clone,
                GraphRec {
                    handle: clone,
                    nodes: ids,
                    owner: None,
                },
            );
            Empty {}
        }))
    }
}
