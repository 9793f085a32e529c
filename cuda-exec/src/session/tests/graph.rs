//! CUDA graphs over the wire on the emulated backend: nodes built, instantiated and launched on the server,
//! conditional nodes by their handle's value, updates in place, copies, and hostile node bytes.

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;
use vgpu_dataplane::Transport;

use super::{emulated_session, pattern, Client};
use crate::session::Limits;

/// A kernel that ends a WHILE loop from device code (`cudaGraphSetConditional`), as nvcc 13.0 writes it: the
/// emulator loads it (the `.extern .func` is the driver's to resolve) and counts its launches.
const WHILE_STEP_PTX: &str = r#"
.version 9.0
.target sm_80
.address_size 64
.extern .func cudaGraphSetConditional
(
	.param .b64 cudaGraphSetConditional_param_0,
	.param .b32 cudaGraphSetConditional_param_1
)
;
.visible .entry while_step(
	.param .u64 while_step_param_0,
	.param .u64 while_step_param_1,
	.param .u32 while_step_param_2
)
{
	ret;
}
"#;

const MODULE: ModuleId = ModuleId(0x50);
const STEP: FunctionId = FunctionId(0x51);

fn add(c: &mut Client, graph: u64, node: u64, deps: &[u64], spec: GraphNodeSpec) {
    let mut tail = Vec::new();
    for d in deps {
        tail.extend_from_slice(&d.to_le_bytes());
    }
    spec.encode(&mut tail);
    let call = GraphAddNode {
        graph: GraphId(graph),
        node: GraphNodeId(node),
        kind: spec.kind(),
        dep_count: deps.len() as u32,
    };
    c.send(&call, &tail);
}

fn memset(dst: u64, n: u64, value: u8) -> GraphNodeSpec {
    GraphNodeSpec::Memset(GraphMemsetSpec {
        dst: DevicePtr(dst),
        pitch: n,
        width: n,
        height: 1,
        value: value as u32,
        elem_size: 1,
    })
}

fn copy(dst: u64, src: u64, n: u64) -> GraphNodeSpec {
    GraphNodeSpec::Copy(GraphCopySpec {
        src: DevicePtr(src),
        dst: DevicePtr(dst),
        width: n,
        height: 1,
        depth: 1,
        ..Default::default()
    })
}

fn launch(c: &mut Client, exec: u64) {
    c.post(&GraphLaunch {
        exec: GraphExecId(exec),
        stream: StreamId::NULL,
    });
    c.ok(&StreamSynchronize { stream: StreamId::NULL });
}

fn kernel_spec(args: &[u8]) -> GraphNodeSpec {
    GraphNodeSpec::Kernel {
        spec: GraphKernelSpec {
            function: STEP,
            dims: LaunchDims {
                grid: [1, 1, 1],
                block: [1, 1, 1],
                shared_mem: 0,
                cooperative: 0,
            },
            args_len: args.len() as u32,
            _pad: 0,
        },
        args: args.to_vec(),
    }
}

/// A memset, then a device-to-device copy after it, launched twice; an update of the memset in the executable
/// graph changes the next launch only.
#[test]
fn graphs_run_on_the_server_and_update_in_place() {
    let (_b, session) = emulated_session(Limits::default());
    let mut c = Client::connect(&session);
    let a = c.ok(&MemAlloc { size: 256 }).dptr.0;
    let b = c.ok(&MemAlloc { size: 256 }).dptr.0;
    c.htod(b, &pattern(256, 1)).expect("fill b");
    c.post(&GraphCreate { graph: GraphId(1) });
    add(&mut c, 1, 10, &[], memset(a, 128, 0x5a));
    add(&mut c, 1, 11, &[10], copy(b + 64, a, 100));
    c.ok(&GraphInstantiate {
        graph: GraphId(1),
        exec: GraphExecId(2),
        flags: 0,
    });
    launch(&mut c, 2);
    let got = c.dtoh(b, 256).expect("read b");
    let want = pattern(256, 1);
    assert_eq!(&got[..64], &want[..64]);
    assert!(got[64..164].iter().all(|&x| x == 0x5a), "the copy ran after the memset");
    assert_eq!(&got[164..], &want[164..]);
    // The executable graph's memset now writes 0x11; the graph's own node keeps 0x5a.
    let mut tail = Vec::new();
    memset(a, 128, 0x11).encode(&mut tail);
    let set = GraphExecNodeSetParams {
        exec: GraphExecId(2),
        node: GraphNodeId(10),
        kind: GRAPH_NODE_MEMSET,
        _pad: 0,
    };
    c.send(&set, &tail);
    launch(&mut c, 2);
    assert!(c.dtoh(b + 64, 100).expect("read").iter().all(|&x| x == 0x11));
    // cuGraphExecUpdate from a graph of the same shape whose memset writes 0x22.
    c.post(&GraphCreate { graph: GraphId(3) });
    add(&mut c, 3, 30, &[], memset(a, 128, 0x22));
    add(&mut c, 3, 31, &[30], copy(b + 64, a, 100));
    let r = c.ok(&GraphExecUpdate {
        exec: GraphExecId(2),
        graph: GraphId(3),
    });
    assert_eq!(r.update_result, 0);
    launch(&mut c, 2);
    assert!(c.dtoh(b + 64, 100).expect("read").iter().all(|&x| x == 0x22));
    // A graph of another shape is refused, with the reason in the reply's tail.
    c.post(&GraphCreate { graph: GraphId(4) });
    add(&mut c, 4, 40, &[], memset(a, 128, 0x33));
    c.send(
        &GraphExecUpdate {
            exec: GraphExecId(2),
            graph: GraphId(4),
        },
        &[],
    );
    let (code, tail) = c.reply();
    assert_eq!(CUresult::from_code(code), CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE);
    let (info, _) = <GraphExecUpdateReply as zerocopy::FromBytes>::read_from_prefix(&tail).expect("update info");
    assert_eq!(info.update_result, 2, "CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED");
    c.post(&GraphExecDestroy { exec: GraphExecId(2) });
    c.post(&GraphDestroy { graph: GraphId(1) });
    assert!(c.call(&Ping {}, &[]).is_ok());
    c.close();
}

/// IF, SWITCH and WHILE nodes run their bodies by the handle's value (the default each launch sets); device
/// code does not run here, so a WHILE body runs once.
#[test]
fn conditional_nodes_follow_their_handle() {
    let (backend, session) = emulated_session(Limits::default());
    let mut c = Client::connect(&session);
    let out = c.ok(&MemAlloc { size: 64 }).dptr.0;
    c.ok(&MemsetOf::zero(out, 64));
    c.call(&ModuleLoad { module: MODULE }, WHILE_STEP_PTX.as_bytes())
        .expect("module with an extern function");
    c.send(
        &ModuleGetFunction {
            module: MODULE,
            function: STEP,
        },
        b"while_step",
    );
    c.post(&GraphCreate { graph: GraphId(100) });
    let handle = |c: &mut Client, value: u32| {
        c.ok(&GraphConditionalHandleCreate {
            graph: GraphId(100),
            default_value: value,
            flags: GRAPH_COND_ASSIGN_DEFAULT,
        })
        .handle
    };
    let (yes, no, two, loops) = (
        handle(&mut c, 1),
        handle(&mut c, 0),
        handle(&mut c, 1),
        handle(&mut c, 1),
    );
    let cond = |handle: u64, cond_type: u32, bodies: &[u64]| GraphNodeSpec::Conditional {
        spec: GraphConditionalSpec {
            handle,
            cond_type,
            size: bodies.len() as u32,
        },
        bodies: bodies.iter().map(|&b| GraphId(b)).collect(),
    };
    // IF true (then: byte 0 = 1), IF false with an else (else: byte 1 = 2), SWITCH on 1 (byte 2 = 3 in body 1,
    // byte 3 = 9 in body 0, which must not run), WHILE (byte 4 = 5 and a kernel that would end the loop).
    add(&mut c, 100, 101, &[], cond(yes, GRAPH_COND_IF, &[110]));
    add(&mut c, 110, 111, &[], memset(out, 1, 1));
    add(&mut c, 100, 102, &[101], cond(no, GRAPH_COND_IF, &[120, 121]));
    add(&mut c, 120, 122, &[], memset(out + 1, 1, 7));
    add(&mut c, 121, 123, &[], memset(out + 1, 1, 2));
    add(&mut c, 100, 103, &[102], cond(two, GRAPH_COND_SWITCH, &[130, 131]));
    add(&mut c, 130, 132, &[], memset(out + 3, 1, 9));
    add(&mut c, 131, 133, &[], memset(out + 2, 1, 3));
    add(&mut c, 100, 104, &[103], cond(loops, GRAPH_COND_WHILE, &[140]));
    add(&mut c, 140, 141, &[], memset(out + 4, 1, 5));
    let mut args = Vec::new();
    args.extend_from_slice(&loops.to_le_bytes());
    args.extend_from_slice(&(out + 8).to_le_bytes());
    args.extend_from_slice(&3u32.to_le_bytes());
    args.extend_from_slice(&[0; 4]);
    add(&mut c, 140, 142, &[141], kernel_spec(&args[..20]));
    c.ok(&GraphInstantiate {
        graph: GraphId(100),
        exec: GraphExecId(150),
        flags: 0,
    });
    let before = backend.launches();
    launch(&mut c, 150);
    assert_eq!(c.dtoh(out, 5).expect("read"), vec![1, 2, 3, 0, 5]);
    assert_eq!(backend.launches() - before, 1, "the WHILE body ran once");
    // A handle of another session's making, or a body id in use, is refused (latched: the next sync call says).
    add(&mut c, 100, 105, &[], cond(0xdead, GRAPH_COND_IF, &[160]));
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_INVALID_VALUE);
    add(&mut c, 100, 106, &[], cond(yes, GRAPH_COND_IF, &[110]));
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_INVALID_VALUE);
    // A body graph goes with its node: it cannot be destroyed on its own.
    c.post(&GraphDestroy { graph: GraphId(110) });
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_INVALID_VALUE);
    c.close();
}

/// A child graph node takes over a copy of a graph (`GraphClone`): later changes to the original do not reach
/// it; nodes name only their own graph's nodes and the session's memory.
#[test]
fn child_nodes_hold_copies_and_nodes_are_checked() {
    let (_b, session) = emulated_session(Limits::default());
    let mut c = Client::connect(&session);
    let a = c.ok(&MemAlloc { size: 64 }).dptr.0;
    c.post(&GraphCreate { graph: GraphId(200) });
    add(&mut c, 200, 201, &[], memset(a, 16, 0x42));
    let mut pairs = Vec::new();
    pairs.extend_from_slice(&201u64.to_le_bytes());
    pairs.extend_from_slice(&211u64.to_le_bytes());
    let clone = GraphClone {
        source: GraphId(200),
        clone: GraphId(210),
        count: 1,
        _pad: 0,
    };
    c.send(&clone, &pairs);
    c.post(&GraphCreate { graph: GraphId(220) });
    add(&mut c, 220, 221, &[], GraphNodeSpec::Child { graph: GraphId(210) });
    // The original changes afterwards; the copy does not.
    let mut tail = Vec::new();
    memset(a, 16, 0x77).encode(&mut tail);
    c.send(
        &GraphNodeSetParams {
            node: GraphNodeId(201),
            kind: GRAPH_NODE_MEMSET,
            _pad: 0,
        },
        &tail,
    );
    c.ok(&GraphInstantiate {
        graph: GraphId(220),
        exec: GraphExecId(230),
        flags: 0,
    });
    launch(&mut c, 230);
    assert!(c.dtoh(a, 16).expect("read").iter().all(|&x| x == 0x42));
    // A memset past the end of the allocation, a dependency from another graph, an unknown event.
    add(&mut c, 220, 222, &[], memset(a + 60, 16, 0));
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_INVALID_VALUE);
    add(&mut c, 220, 223, &[201], GraphNodeSpec::Empty);
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_INVALID_VALUE);
    add(&mut c, 220, 224, &[], GraphNodeSpec::EventRecord(EventId(0x999)));
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_INVALID_HANDLE);
    // The child's graph is the node's: no second node may take it over.
    add(&mut c, 220, 225, &[], GraphNodeSpec::Child { graph: GraphId(210) });
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_INVALID_VALUE);
    c.close();
}

/// Bytes that do not make a node end the channel (the session goes on for its other channels).
#[test]
fn malformed_nodes_end_the_channel() {
    let (_b, session) = emulated_session(Limits::default());
    let mut c = Client::connect(&session);
    c.post(&GraphCreate { graph: GraphId(300) });
    let call = GraphAddNode {
        graph: GraphId(300),
        node: GraphNodeId(301),
        kind: GRAPH_NODE_MEMSET,
        dep_count: 0,
    };
    c.send(&call, &[1, 2, 3]);
    let mut head = [0u8; 16];
    assert!(c.t.recv_exact(&mut head).is_err(), "the channel was closed");
    c.close();
    let mut d = Client::connect(&session);
    assert!(d.call(&Ping {}, &[]).is_ok());
    d.close();
}

/// A zero-filling memset, as a helper for the tests above.
struct MemsetOf;

impl MemsetOf {
    fn zero(dst: u64, n: u64) -> Memset {
        Memset {
            dst: DevicePtr(dst),
            pitch: n,
            width: n,
            height: 1,
            value: 0,
            elem_size: 1,
        }
    }
}
