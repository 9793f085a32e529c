//! CUDA graph nodes as they travel: the parameters of one node (`GraphNodeSpec`), encoded after a call's fixed
//! body (`GraphAddNode`, `GraphNodeSetParams`, `GraphExecNodeSetParams`), and the replies of the graph calls.
//!
//! Only nodes the server can run by itself travel (kernels, memsets, device-to-device copies, empty nodes, child
//! graphs, conditional nodes, event records and waits); nodes that touch the client's host memory or run its
//! code stay with the client, which sends an empty node in their place (see the shim's `graph` module).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DevicePtr, EventId, FunctionId, GraphId, GraphNodeId, LaunchDims, WireError, MAX_ARGS};

/// `CUgraphNodeType` values of the kinds that travel.
pub const GRAPH_NODE_KERNEL: u32 = 0;
pub const GRAPH_NODE_MEMCPY: u32 = 1;
pub const GRAPH_NODE_MEMSET: u32 = 2;
pub const GRAPH_NODE_GRAPH: u32 = 4;
pub const GRAPH_NODE_EMPTY: u32 = 5;
pub const GRAPH_NODE_WAIT_EVENT: u32 = 6;
pub const GRAPH_NODE_EVENT_RECORD: u32 = 7;
pub const GRAPH_NODE_CONDITIONAL: u32 = 13;

/// `CUgraphConditionalNodeType` values.
pub const GRAPH_COND_IF: u32 = 0;
pub const GRAPH_COND_WHILE: u32 = 1;
pub const GRAPH_COND_SWITCH: u32 = 2;
/// `CU_GRAPH_COND_ASSIGN_DEFAULT`: the handle's default value is set at every launch.
pub const GRAPH_COND_ASSIGN_DEFAULT: u32 = 1;

/// Most dependencies one node names on the wire (the driver has no documented limit; XLA's nodes have a few).
pub const MAX_GRAPH_DEPS: usize = 8192;
/// Most body graphs one conditional node has (a SWITCH's `size`).
pub const MAX_COND_BODIES: usize = 4096;
/// Most nodes one graph holds on the server: a clone's node map is at most this long.
pub const MAX_GRAPH_NODES: usize = 1 << 16;
/// Most edges one `GraphEdges` call adds or removes.
pub const MAX_GRAPH_EDGES: usize = 8192;

/// Largest tail of `GraphAddNode` (its dependencies, then the node) and of the set-params calls.
pub const MAX_GRAPH_NODE: usize = MAX_GRAPH_DEPS * 8
    + 128
    + if MAX_ARGS > MAX_COND_BODIES * 8 {
        MAX_ARGS
    } else {
        MAX_COND_BODIES * 8
    };
/// Largest tail of `GraphEdges`: (from, to) pairs.
pub const MAX_GRAPH_EDGE_BYTES: usize = MAX_GRAPH_EDGES * 16;
/// Largest tail of `GraphClone`: (original node, its clone) pairs.
pub const MAX_GRAPH_CLONE_BYTES: usize = MAX_GRAPH_NODES * 16;

/// The fixed part of a kernel node; its packed arguments follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct GraphKernelSpec {
    pub function: FunctionId,
    pub dims: LaunchDims,
    pub args_len: u32,
    pub _pad: u32,
}

/// A memset node: `width` elements of `elem_size` bytes per row, `height` rows `pitch` apart.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct GraphMemsetSpec {
    pub dst: DevicePtr,
    pub pitch: u64,
    pub width: u64,
    pub height: u64,
    pub value: u32,
    pub elem_size: u32,
}

/// A device-to-device copy node: a box of `width` bytes x `height` rows x `depth` slices, each side with its
/// row pitch and rows per slice, its address already at the box's first byte.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct GraphCopySpec {
    pub src: DevicePtr,
    pub src_pitch: u64,
    pub src_height: u64,
    pub dst: DevicePtr,
    pub dst_pitch: u64,
    pub dst_height: u64,
    pub width: u64,
    pub height: u64,
    pub depth: u64,
}

impl GraphCopySpec {
    /// The bytes each side spans, from its first byte to its last (`None`: an empty box, or an overflow).
    pub fn spans(&self) -> Option<(u64, u64)> {
        if self.width == 0 || self.height == 0 || self.depth == 0 {
            return None;
        }
        let span = |pitch: u64, rows: u64| -> Option<u64> {
            let slice = pitch.checked_mul(rows)?;
            slice
                .checked_mul(self.depth - 1)?
                .checked_add(pitch.checked_mul(self.height - 1)?)?
                .checked_add(self.width)
        };
        Some((
            span(self.src_pitch, self.src_height)?,
            span(self.dst_pitch, self.dst_height)?,
        ))
    }
}

/// A conditional node: its handle, `CUgraphConditionalNodeType`, and the ids its `size` body graphs get (they
/// follow, one `GraphId` each).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct GraphConditionalSpec {
    pub handle: u64,
    pub cond_type: u32,
    pub size: u32,
}

/// One node's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphNodeSpec {
    Kernel {
        spec: GraphKernelSpec,
        args: Vec<u8>,
    },
    Memset(GraphMemsetSpec),
    Copy(GraphCopySpec),
    Empty,
    /// A child graph node owning `graph` (the client made it a clone of the app's graph first, `GraphClone`).
    Child {
        graph: GraphId,
    },
    Conditional {
        spec: GraphConditionalSpec,
        bodies: Vec<GraphId>,
    },
    EventRecord(EventId),
    EventWait(EventId),
}

fn put<T: IntoBytes + Immutable>(out: &mut Vec<u8>, v: &T) {
    out.extend_from_slice(v.as_bytes());
}

/// Reads a `T` at the start of `bytes`; the rest follows.
fn take<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Result<(T, &[u8]), WireError> {
    T::read_from_prefix(bytes).map_err(|_| WireError::Malformed("graph node parameters cut short"))
}

/// `count` u64 words (ids) at the start of `bytes`.
pub fn take_words(bytes: &[u8], count: usize) -> Result<(Vec<u64>, &[u8]), WireError> {
    let len = count
        .checked_mul(8)
        .filter(|&l| l <= bytes.len())
        .ok_or(WireError::Malformed("graph id list cut short"))?;
    let words = bytes[..len]
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .collect();
    Ok((words, &bytes[len..]))
}

impl GraphNodeSpec {
    /// The node's `CUgraphNodeType`.
    pub fn kind(&self) -> u32 {
        match self {
            GraphNodeSpec::Kernel { .. } => GRAPH_NODE_KERNEL,
            GraphNodeSpec::Memset(_) => GRAPH_NODE_MEMSET,
            GraphNodeSpec::Copy(_) => GRAPH_NODE_MEMCPY,
            GraphNodeSpec::Empty => GRAPH_NODE_EMPTY,
            GraphNodeSpec::Child { .. } => GRAPH_NODE_GRAPH,
            GraphNodeSpec::Conditional { .. } => GRAPH_NODE_CONDITIONAL,
            GraphNodeSpec::EventRecord(_) => GRAPH_NODE_EVENT_RECORD,
            GraphNodeSpec::EventWait(_) => GRAPH_NODE_WAIT_EVENT,
        }
    }

    /// Appends the node's bytes (the kind travels in the call's body).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            GraphNodeSpec::Kernel { spec, args } => {
                put(out, spec);
                out.extend_from_slice(args);
            }
            GraphNodeSpec::Memset(m) => put(out, m),
            GraphNodeSpec::Copy(c) => put(out, c),
            GraphNodeSpec::Empty => {}
            GraphNodeSpec::Child { graph } => put(out, graph),
            GraphNodeSpec::Conditional { spec, bodies } => {
                put(out, spec);
                for b in bodies {
                    put(out, b);
                }
            }
            GraphNodeSpec::EventRecord(e) | GraphNodeSpec::EventWait(e) => put(out, e),
        }
    }

    /// Reads a node of `kind` that fills `bytes` exactly.
    pub fn decode(kind: u32, bytes: &[u8]) -> Result<GraphNodeSpec, WireError> {
        let (spec, rest) = match kind {
            GRAPH_NODE_KERNEL => {
                let (spec, rest) = take::<GraphKernelSpec>(bytes)?;
                let n = spec.args_len as usize;
                if n > MAX_ARGS || rest.len() < n {
                    return Err(WireError::Malformed("kernel node arguments cut short"));
                }
                let node = GraphNodeSpec::Kernel {
                    spec,
                    args: rest[..n].to_vec(),
                };
                (node, &rest[n..])
            }
            GRAPH_NODE_MEMSET => take::<GraphMemsetSpec>(bytes).map(|(m, r)| (GraphNodeSpec::Memset(m), r))?,
            GRAPH_NODE_MEMCPY => take::<GraphCopySpec>(bytes).map(|(c, r)| (GraphNodeSpec::Copy(c), r))?,
            GRAPH_NODE_EMPTY => (GraphNodeSpec::Empty, bytes),
            GRAPH_NODE_GRAPH => take::<GraphId>(bytes).map(|(graph, r)| (GraphNodeSpec::Child { graph }, r))?,
            GRAPH_NODE_CONDITIONAL => {
                let (spec, rest) = take::<GraphConditionalSpec>(bytes)?;
                if spec.size == 0 || spec.size as usize > MAX_COND_BODIES {
                    return Err(WireError::Malformed("conditional node body count"));
                }
                let (ids, rest) = take_words(rest, spec.size as usize)?;
                let bodies = ids.into_iter().map(GraphId).collect();
                (GraphNodeSpec::Conditional { spec, bodies }, rest)
            }
            GRAPH_NODE_EVENT_RECORD => take::<EventId>(bytes).map(|(e, r)| (GraphNodeSpec::EventRecord(e), r))?,
            GRAPH_NODE_WAIT_EVENT => take::<EventId>(bytes).map(|(e, r)| (GraphNodeSpec::EventWait(e), r))?,
            _ => return Err(WireError::Malformed("unknown graph node kind")),
        };
        if !rest.is_empty() {
            return Err(WireError::Malformed("trailing bytes after a graph node"));
        }
        Ok(spec)
    }
}

/// Reply of `GraphConditionalHandleCreate`: the driver's handle (kernels receive it by value).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct GraphHandleReply {
    pub handle: u64,
}

/// Reply of `GraphExecUpdate`: `CUgraphExecUpdateResult` and the nodes it names (0: none).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct GraphExecUpdateReply {
    pub update_result: u32,
    pub _pad: u32,
    pub error_node: GraphNodeId,
    pub error_from_node: GraphNodeId,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(spec: GraphNodeSpec) {
        let mut bytes = Vec::new();
        spec.encode(&mut bytes);
        assert_eq!(GraphNodeSpec::decode(spec.kind(), &bytes), Ok(spec.clone()));
        // One byte more or less is malformed (except for the empty node, which has none to lose).
        bytes.push(0);
        assert!(
            GraphNodeSpec::decode(spec.kind(), &bytes).is_err(),
            "{spec:?} with a trailing byte"
        );
        bytes.truncate(bytes.len().saturating_sub(2));
        if spec != GraphNodeSpec::Empty {
            assert!(
                GraphNodeSpec::decode(spec.kind(), &bytes).is_err(),
                "{spec:?} cut short"
            );
        }
    }

    #[test]
    fn every_node_kind_round_trips_and_short_or_long_bytes_are_refused() {
        round_trip(GraphNodeSpec::Kernel {
            spec: GraphKernelSpec {
                function: FunctionId(0x77),
                dims: LaunchDims {
                    grid: [4, 1, 1],
                    block: [128, 1, 1],
                    shared_mem: 256,
                    cooperative: 0,
                },
                args_len: 12,
                _pad: 0,
            },
            args: (0..12).collect(),
        });
        round_trip(GraphNodeSpec::Memset(GraphMemsetSpec {
            dst: DevicePtr(0x1000),
            pitch: 64,
            width: 16,
            height: 2,
            value: 7,
            elem_size: 4,
        }));
        round_trip(GraphNodeSpec::Copy(GraphCopySpec {
            src: DevicePtr(0x2000),
            dst: DevicePtr(0x3000),
            width: 100,
            height: 1,
            depth: 1,
            ..Default::default()
        }));
        round_trip(GraphNodeSpec::Empty);
        round_trip(GraphNodeSpec::Child { graph: GraphId(9) });
        round_trip(GraphNodeSpec::Conditional {
            spec: GraphConditionalSpec {
                handle: 0xabc,
                cond_type: GRAPH_COND_SWITCH,
                size: 3,
            },
            bodies: vec![GraphId(1), GraphId(2), GraphId(3)],
        });
        round_trip(GraphNodeSpec::EventRecord(EventId(5)));
        round_trip(GraphNodeSpec::EventWait(EventId(6)));
        assert!(GraphNodeSpec::decode(3, &[]).is_err(), "host nodes never travel");
    }

    #[test]
    fn hostile_counts_are_refused() {
        let mut bytes = Vec::new();
        put(
            &mut bytes,
            &GraphConditionalSpec {
                handle: 1,
                cond_type: GRAPH_COND_SWITCH,
                size: u32::MAX,
            },
        );
        assert!(GraphNodeSpec::decode(GRAPH_NODE_CONDITIONAL, &bytes).is_err());
        let mut bytes = Vec::new();
        put(
            &mut bytes,
            &GraphKernelSpec {
                args_len: u32::MAX,
                ..Default::default()
            },
        );
        assert!(GraphNodeSpec::decode(GRAPH_NODE_KERNEL, &bytes).is_err());
        assert!(take_words(&[0; 15], 2).is_err());
        assert!(take_words(&[0; 8], usize::MAX).is_err());
    }

    #[test]
    fn copy_spans_cover_the_box() {
        let c = GraphCopySpec {
            src_pitch: 256,
            src_height: 4,
            dst_pitch: 128,
            dst_height: 2,
            width: 100,
            height: 2,
            depth: 3,
            ..Default::default()
        };
        assert_eq!(c.spans(), Some((256 * 4 * 2 + 256 + 100, 128 * 2 * 2 + 128 + 100)));
        assert_eq!(GraphCopySpec { width: 0, ..c }.spans(), None);
        assert_eq!(
            GraphCopySpec {
                src_pitch: u64::MAX,
                ..c
            }
            .spans(),
            None
        );
    }
}
