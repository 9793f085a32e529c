//! One rank's collective (`CollRun`) as a hostile or mistaken client sends it: every bad number is refused with the
//! driver's error for a bad argument, latched as an asynchronous call's, and the channel serves on; a one-rank
//! collective runs without any peer. And collectives off the channel (`lane.rs`): one waiting for its peer holds
//! its stream, not the channel; work queued on that stream after it sees what it received; a failed one reports
//! at its stream's synchronize.

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

/// Sends `call` with `tail` and returns the error a synchronize of its stream reports (Ok: none): a bad call's at
/// once, a failed run's once its lane is done.
fn outcome(c: &mut Client, call: &CollRun, tail: &str) -> Result<(), CUresult> {
    c.send(call, tail.as_bytes());
    c.call(&StreamSynchronize { stream: call.stream }, &[]).map(|_| ())
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

/// A session linked to a registry (for the grants of arriving senders), waiting `wait` for them.
fn receiving_session(wait: Duration) -> (Arc<crate::registry::Registry>, Arc<Session>) {
    let r = crate::registry::Registry::new();
    let s = super::peer::session(&r, 5, Vec::new(), wait);
    (r, s)
}

/// Rank 0 of two receiving `N` bytes from rank 1 into `dst` on `stream` (a send/recv with nothing to send).
fn receive_only(dst: u64, stream: StreamId) -> CollRun {
    CollRun {
        kind: coll::KIND_SEND_RECV,
        dtype: coll::DTYPE_U8,
        send_peer: coll::NO_PEER,
        recv_peer: 1,
        count: 0,
        recv_count: N,
        dst: DevicePtr(dst),
        stream,
        ..all_reduce(0, 0, 2, 0)
    }
}

/// Rank 1's server for `call` (a `receive_only` of rank 0), played by the test: once the lane asked for its
/// connection, it waits `delay`, delivers its connection against the grant and sends `sent`, acknowledged.
fn play_rank_one(r: &crate::registry::Registry, s: &Arc<Session>, call: &CollRun, sent: &[u8], delay: Duration) {
    use vgpu_dataplane::Transport;
    use zerocopy::IntoBytes;
    let token = coll::token(&call.secret, coll::Series::PointToPoint, 1, 0, 0);
    assert!(
        r.take_peer_grant(5, &token, Duration::from_secs(10)),
        "the lane asked for rank 1's connection"
    );
    std::thread::sleep(delay);
    let (mut sender, receiver) = super::peer::pair();
    s.deliver_peer(token, Box::new(receiver));
    assert_eq!(super::peer::word(&mut sender), 0, "the receiver is ready");
    let header = PeerHeader {
        status: 0,
        _pad: 0,
        size: sent.len() as u64,
    };
    sender
        .send(&[header.as_bytes(), sent, &0u32.to_le_bytes()])
        .expect("send");
    assert_eq!(super::peer::word(&mut sender), 0, "acknowledged");
}

#[test]
fn a_collective_waiting_for_its_peer_holds_its_stream_not_its_channel() {
    let (r, s) = receiving_session(Duration::from_secs(20));
    let mut c = Client::connect(&s);
    let dst = c.ok(&MemAlloc { size: N }).dptr.get();
    let copy = c.ok(&MemAlloc { size: N }).dptr.get();
    let other = c.ok(&MemAlloc { size: N }).dptr.get();
    let stream = StreamId(0x100);
    c.post(&StreamCreate {
        stream,
        flags: 1,
        priority: 0,
    });
    let call = receive_only(dst, stream);
    // As the NCCL shim sends a collective issued inside a group.
    c.send_flagged(&call, &[], FLAG_COLL_LANE);
    // The collective waits for rank 1; its stream is busy, the channel is not.
    assert_eq!(c.err(&StreamQuery { stream }), CUDA_ERROR_NOT_READY);
    let started = std::time::Instant::now();
    let data = pattern(N as usize, 21);
    c.htod(other, &data).expect("upload on the NULL stream");
    assert_eq!(c.dtoh(other, N).expect("read back"), data);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "other work went on while the collective waited"
    );
    // Queued behind the collective on its stream: runs on what it received.
    c.post(&MemcpyDtoDAsync {
        dst: DevicePtr(copy),
        src: DevicePtr(dst),
        size: N,
        stream,
    });
    // Rank 1's server, played here: its connection arrives against the grant, with the bytes.
    let sent = pattern(N as usize, 33);
    play_rank_one(&r, &s, &call, &sent, Duration::ZERO);
    assert_eq!(c.call(&StreamSynchronize { stream }, &[]).map(|_| ()), Ok(()));
    assert_eq!(c.dtoh(dst, N).expect("read back"), sent);
    assert_eq!(
        c.dtoh(copy, N).expect("read back"),
        sent,
        "the later copy ran after the collective"
    );
}

#[test]
fn a_lone_collective_holds_its_channel_until_it_ends() {
    let (r, s) = receiving_session(Duration::from_secs(20));
    let mut c = Client::connect(&s);
    let dst = c.ok(&MemAlloc { size: N }).dptr.get();
    let stream = StreamId(0x100);
    c.post(&StreamCreate {
        stream,
        flags: 1,
        priority: 0,
    });
    // Without FLAG_COLL_LANE (a collective outside any NCCL group) the channel waits for it: the query behind it is
    // answered once rank 1 (played by this thread) has delivered, and finds the stream idle.
    let call = receive_only(dst, stream);
    c.send(&call, &[]);
    let sent = pattern(N as usize, 44);
    let rank1 = {
        let (r, s, sent) = (r.clone(), s.clone(), sent.clone());
        std::thread::spawn(move || play_rank_one(&r, &s, &call, &sent, Duration::from_millis(300)))
    };
    let started = std::time::Instant::now();
    assert_eq!(
        c.call(&StreamQuery { stream }, &[]).map(|_| ()),
        Ok(()),
        "done when answered"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the channel waited for the collective"
    );
    rank1.join().expect("rank 1");
    assert_eq!(c.dtoh(dst, N).expect("read back"), sent);
}

#[test]
fn a_failed_collective_reports_at_its_streams_synchronize_once() {
    let (_r, s) = receiving_session(Duration::from_millis(200));
    let mut c = Client::connect(&s);
    let dst = c.ok(&MemAlloc { size: N }).dptr.get();
    let stream = StreamId(0x100);
    c.post(&StreamCreate {
        stream,
        flags: 0,
        priority: 0,
    });
    // Rank 1 never comes: the lane gives up after the session's wait.
    c.send(&receive_only(dst, stream), &[]);
    assert_eq!(
        c.call(&StreamSynchronize { stream }, &[]).map(|_| ()),
        Err(CUDA_ERROR_UNKNOWN)
    );
    assert_eq!(
        c.call(&StreamSynchronize { stream }, &[]).map(|_| ()),
        Ok(()),
        "reported once"
    );
    // The stream serves on: a second collective on it, then a copy.
    c.send(&receive_only(dst, stream), &[]);
    assert_eq!(c.call(&CtxSynchronize {}, &[]).map(|_| ()), Err(CUDA_ERROR_UNKNOWN));
    c.htod(dst, &[7; N as usize]).expect("the channel still works");
}

#[test]
fn a_session_gets_at_most_sixteen_lanes_and_the_seventeenth_stream_is_refused() {
    let s = Session::new(Arc::new(EmulatedBackend::new()), Limits::default());
    let mut c = Client::connect(&s);
    let src = c.ok(&MemAlloc { size: N }).dptr.get();
    let dst = c.ok(&MemAlloc { size: N }).dptr.get();
    for i in 0..17u64 {
        let stream = StreamId(0x100 + i);
        c.post(&StreamCreate {
            stream,
            flags: 1,
            priority: 0,
        });
        // A one-rank all-reduce needs no peer, but runs on its stream's lane all the same.
        let call = CollRun {
            stream,
            ..all_reduce(src, dst, 1, 0)
        };
        let got = outcome(&mut c, &call, "");
        if i < 16 {
            assert_eq!(got, Ok(()), "lane {i}");
        } else {
            assert_eq!(
                got,
                Err(CUDA_ERROR_OUT_OF_MEMORY),
                "a seventeenth stream carrying collectives"
            );
        }
    }
    // The sixteen lanes still serve.
    let again = CollRun {
        stream: StreamId(0x100),
        ..all_reduce(src, dst, 1, 0)
    };
    assert_eq!(outcome(&mut c, &again, ""), Ok(()));
}
