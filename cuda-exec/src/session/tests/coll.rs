//! One rank's collective (`CollRun`) as a hostile or mistaken client sends it: every bad number is refused with the
//! driver's error for a bad argument, latched as an asynchronous call's, and the channel serves on; a one-rank
//! collective runs without any peer.

use std::sync::Arc;
use std::time::Duration;

use vgpu_dataplane::coll;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::StreamId;
use vgpu_dataplane::wire::*;
use vgpu_dataplane::Endpoint;

use super::{pattern, Client};
use crate::emulated::EmulatedBackend;
use crate::session::{Limits, Session};

const N: u64 = 4096;

fn all_reduce(src: u64, dst: u64, nranks: u32, rank: u32) -> CollRun {
    CollRun {
        kind: coll::KIND_ALL_REDUCE,
        dtype: coll::DTYPE_F32,
        op: coll::OP_SUM,
        nranks,
        rank,
        root: 0,
        send_peer: (rank + 1) % nranks.max(1),
        recv_peer: (rank + nranks.max(1) - 1) % nranks.max(1),
        count: N / 4,
        recv_count: 0,
        src: DevicePtr(src),
        dst: DevicePtr(dst),
        scratch: DevicePtr(0),
        scratch_size: 0,
        stream: StreamId::NULL,
        send_session: 1,
        seq: 0,
        seq2: 0,
        secret: [9; 16],
    }
}

/// Sends `call` with `tail` and returns the error the next synchronous call reports (Ok: none).
fn outcome(c: &mut Client, call: &CollRun, tail: &str) -> Result<(), CUresult> {
    c.send(call, tail.as_bytes());
    c.call(&Ping {}, &[]).map(|_| ())
}

#[test]
fn bad_collectives_are_refused_and_the_channel_serves_on() {
    let s = Session::new(Arc::new(EmulatedBackend::new()), Limits::default());
    s.allow_peers(
        vec![Endpoint::parse("tcp://127.0.0.1:1").expect("endpoint")],
        Duration::from_millis(200),
    );
    let mut c = Client::connect(&s);
    let src = c.ok(&MemAlloc { size: N }).dptr.get();
    let dst = c.ok(&MemAlloc { size: N }).dptr.get();
    let data = pattern(N as usize, 5);
    c.htod(src, &data).expect("upload");
    let ok = all_reduce(src, dst, 2, 0);
    let bad = [
        CollRun { dtype: 10, ..ok },
        CollRun { op: 5, ..ok },
        CollRun { nranks: 0, ..ok },
        CollRun { rank: 2, ..ok },
        CollRun { kind: 99, ..ok },
        CollRun {
            count: u64::MAX / 2,
            ..ok
        },
        // The source runs past its allocation.
        CollRun { count: N, ..ok },
        CollRun {
            src: DevicePtr(0x10),
            ..ok
        },
        // Reduce-scatter needs scratch of nranks × count elements; none was lent.
        CollRun {
            kind: coll::KIND_REDUCE_SCATTER,
            count: 8,
            ..ok
        },
        CollRun {
            kind: coll::KIND_BROADCAST,
            root: 7,
            ..ok
        },
    ];
    for call in &bad {
        let got = outcome(&mut c, call, "tcp://127.0.0.1:1");
        assert!(matches!(got, Err(CUDA_ERROR_INVALID_VALUE)), "{call:?}: {got:?}");
    }
    // A collective that sends: only to a server the operator listed, named as an endpoint.
    assert_eq!(
        outcome(&mut c, &ok, "tcp://10.1.2.3:7070"),
        Err(CUDA_ERROR_NOT_PERMITTED)
    );
    assert_eq!(outcome(&mut c, &ok, "no endpoint"), Err(CUDA_ERROR_INVALID_VALUE));
    // Listed but nobody there: a broadcast's root only sends; its connection fails, reported as a lost peer.
    let broadcast = CollRun {
        kind: coll::KIND_BROADCAST,
        ..ok
    };
    assert_eq!(
        outcome(&mut c, &broadcast, "tcp://127.0.0.1:1"),
        Err(CUDA_ERROR_UNKNOWN)
    );
    // Through all of it the channel serves, and nothing was written to the destination's neighbours.
    assert_eq!(c.dtoh(src, N).expect("read back"), data);
}

#[test]
fn a_one_rank_collective_needs_no_peer() {
    let s = Session::new(Arc::new(EmulatedBackend::new()), Limits::default());
    let mut c = Client::connect(&s);
    let src = c.ok(&MemAlloc { size: N }).dptr.get();
    let dst = c.ok(&MemAlloc { size: N }).dptr.get();
    let data = pattern(N as usize, 11);
    c.htod(src, &data).expect("upload");
    // No tail: a one-rank plan sends nothing.
    assert_eq!(outcome(&mut c, &all_reduce(src, dst, 1, 0), ""), Ok(()));
    assert_eq!(
        c.dtoh(dst, N).expect("read back"),
        data,
        "the sum over one rank is its input"
    );
    let gather = CollRun {
        kind: coll::KIND_ALL_GATHER,
        ..all_reduce(src, dst, 1, 0)
    };
    c.htod(dst, &[0; N as usize]).expect("clear");
    assert_eq!(outcome(&mut c, &gather, ""), Ok(()));
    assert_eq!(c.dtoh(dst, N).expect("read back"), data);
}
