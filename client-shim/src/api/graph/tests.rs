//! Tests of the graph model that need no server: capture bookkeeping, ordering, edge data, executable shapes.

use vgpu_cuda_sys::driver::{CUgraphEdgeData, CUstreamCaptureStatus};

use super::capture::{begin_for_test, end_for_test};
use super::*;

fn op(key: StreamId) {
    assert_eq!(capture(key, Node::Empty), Some(Ok(())));
}

/// The fork/join capture of tests/cuda/graphs.cu: 7 nodes and 7 edges, as the driver builds it.
#[test]
fn capture_follows_stream_order_and_events() {
    let (s, s2) = (StreamId(0x7000_0010), StreamId(0x7000_0020));
    let (fork, join) = (EventId(0x7000_0030), EventId(0x7000_0040));
    let graph = begin_for_test(s);
    op(s); // H2D copy
    assert!(record_event(s, fork));
    assert!(wait_event(s2, fork)); // s2 joins the capture
    op(s2); // memset
    op(s2); // kernel
    assert!(record_event(s2, join));
    op(s); // kernel
    assert!(wait_event(s, join));
    op(s); // kernel after the join
    op(s); // host function
    op(s); // D2H copy
    let g = graphs();
    let gr = &g.graphs[&graph];
    assert_eq!(gr.nodes.len(), 7);
    assert_eq!(gr.edges.len(), 7);
    let order = ordered(gr).expect("acyclic");
    let pos = |id: u64| order.iter().position(|(n, _)| *n == id).unwrap_or(usize::MAX);
    for (from, to) in &gr.edges {
        assert!(pos(*from) < pos(*to), "edge {from:#x} -> {to:#x} out of order");
    }
    drop(g);
    // The capture's dependencies as cuStreamGetCaptureInfo_v3 hands them out: the last node, default edge.
    let (status, id, handle, deps) = capture_info(s);
    assert_eq!(status, CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE);
    assert_ne!(id, graph, "the capture id is the sequence's own");
    assert_eq!(local_id(handle), graph);
    let (nodes, edges, n) = deps.expect("dependencies");
    assert_eq!(n, 1);
    assert!(!nodes.is_null() && !edges.is_null());
    // A synchronizing call invalidates the capture; its streams stay in it until it ends.
    assert_eq!(refuse_sync(s2), Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED));
    assert_eq!(
        capture_status(s).0,
        CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_INVALIDATED
    );
    assert_eq!(
        capture(s, Node::Empty),
        Some(Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED))
    );
    end_for_test(graph);
    assert_eq!(capture(s, Node::Empty), None);
}

#[test]
fn cycles_are_refused() {
    let g = Graph {
        nodes: vec![(1, Node::Empty), (2, Node::Empty)],
        edges: vec![(1, 2), (2, 1)],
        ..Default::default()
    };
    assert!(ordered(&g).is_err());
}

/// Edge data: the default edge; a programmatic edge out of a kernel node (kept as a full dependency); anything
/// else refused as the driver refuses it.
#[test]
fn edge_data_is_checked_as_the_driver_documents() {
    let mut g = Graphs::default();
    let graph = state::new_id();
    g.graphs.insert(graph, Graph::default());
    let empty = g.insert_node(graph, &[], Node::Empty).expect("empty node");
    let kernel = g
        .insert_node(
            graph,
            &[],
            Node::Kernel {
                function: FunctionId(1),
                shape: LaunchShape::default(),
                args: Vec::new(),
            },
        )
        .expect("kernel node");
    let edge = |from_port: u8, to_port: u8, type_: u8| CUgraphEdgeData {
        from_port,
        to_port,
        type_,
        reserved: [0; 5],
    };
    assert_eq!(params::check_edge(&g, empty, edge(0, 0, 0)), Ok(()));
    assert_eq!(params::check_edge(&g, kernel, edge(1, 0, 1)), Ok(()));
    assert_eq!(params::check_edge(&g, kernel, edge(2, 0, 1)), Ok(()));
    assert_eq!(
        params::check_edge(&g, empty, edge(1, 0, 1)),
        Err(CUDA_ERROR_INVALID_VALUE)
    );
    assert_eq!(
        params::check_edge(&g, kernel, edge(0, 1, 0)),
        Err(CUDA_ERROR_INVALID_VALUE)
    );
    assert_eq!(
        params::check_edge(&g, kernel, edge(0, 0, 7)),
        Err(CUDA_ERROR_INVALID_VALUE)
    );
    let mut reserved = edge(0, 0, 0);
    reserved.reserved[4] = 1;
    assert_eq!(params::check_edge(&g, empty, reserved), Err(CUDA_ERROR_INVALID_VALUE));
    // The same node twice, or a node of another graph, is no dependency list.
    assert_eq!(
        g.insert_node(graph, &[empty, empty], Node::Empty),
        Err(CUDA_ERROR_INVALID_VALUE)
    );
    let other = state::new_id();
    g.graphs.insert(other, Graph::default());
    assert_eq!(
        g.insert_node(other, &[empty], Node::Empty),
        Err(CUDA_ERROR_INVALID_VALUE)
    );
}

/// Which graphs need the server (a conditional node) and which must stay here (a host node), through child
/// graphs.
#[test]
fn graph_traits_look_through_owned_graphs() {
    let mut g = Graphs::default();
    let (top, child) = (state::new_id(), state::new_id());
    g.graphs.insert(top, Graph::default());
    g.graphs.insert(child, Graph::default());
    g.insert_node(
        child,
        &[],
        Node::Host {
            function: None,
            user: 0,
        },
    )
    .expect("host node");
    assert_eq!(g.traits(top), (false, false));
    g.insert_node(top, &[], Node::Child { graph: child })
        .expect("child node");
    assert_eq!(g.traits(top), (true, false));
    let body = state::new_id();
    g.graphs.insert(body, Graph::default());
    g.insert_node(
        top,
        &[],
        Node::Conditional {
            handle: 1,
            cond_type: GRAPH_COND_WHILE,
            bodies: vec![body].into_boxed_slice(),
        },
    )
    .expect("conditional node");
    assert_eq!(g.traits(top), (true, true));
    // Forgetting the top graph forgets what its nodes own.
    g.forget_graph(top);
    assert!(!g.graphs.contains_key(&child) && !g.graphs.contains_key(&body));
    assert!(g.node_graph.is_empty());
}

/// Host-memory nodes never go to the server; device ones do, with their exact parameters.
#[test]
fn server_specs_keep_host_work_here() {
    assert_eq!(
        params::server_spec(&Node::Host {
            function: None,
            user: 0
        }),
        None
    );
    assert_eq!(params::server_spec(&Node::HtoD { dst: 0, src: 0, n: 4 }), None);
    assert_eq!(
        params::server_spec(&Node::MemAlloc {
            dptr: 1,
            size: 2,
            device: 0
        }),
        Some(GraphNodeSpec::Empty)
    );
    let k = Node::Kernel {
        function: FunctionId(9),
        shape: LaunchShape {
            grid: [2, 1, 1],
            block: [64, 1, 1],
            ..Default::default()
        },
        args: vec![1, 2, 3, 4],
    };
    match params::server_spec(&k) {
        Some(GraphNodeSpec::Kernel { spec, args }) => {
            assert_eq!(spec.function, FunctionId(9));
            assert_eq!(spec.dims.grid, [2, 1, 1]);
            assert_eq!(spec.args_len, 4);
            assert_eq!(args, vec![1, 2, 3, 4]);
        }
        other => panic!("kernel spec: {other:?}"),
    }
    // A memset of memory the client does not know as device memory stays here.
    let m = Node::Memset {
        dst: 0x10,
        pitch: 4,
        value: 0,
        elem: 4,
        width: 1,
        height: 1,
    };
    assert_eq!(params::server_spec(&m), None);
}
