//! RDMA-only transport tests beyond the shared conformance suite: a full send queue (also mid-way through a large
//! copy) and an exhausted receive queue wait instead of failing, a peer process killed mid-transfer (also while its
//! memory is being read) ends the channel, broken remote keys fail cleanly, bad setups are refused, and bytes read
//! in place (pulled from the peer's ring, offered from registered memory) cross without a copy, shown by the
//! channels' counters, whatever the boundaries. Those that need devices run in the Soft-RoCE VM.
#![cfg(feature = "rdma")]

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{framed_hello, rdma_env, rdma_pair_raw, skip};
use vgpu_dataplane::transport::{Transport, TransportError};
use vgpu_transports::rdma::{self, RdmaConfig, RdmaTransport};

fn scale() -> u64 {
    std::env::var("VGPU_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1u64)
        .max(1)
}

/// Runs `f` on its own thread and fails if it takes longer than `secs` (scaled), so a hang is a failure.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let secs = secs * scale();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(e) => panic!("{what}: no outcome within {secs} s ({e})"),
    }
}

/// Bytes listed as pinned (`vgpu_dataplane::pinned`) while this lives, as an app's pinned buffer or a server's
/// staging is: the transport may register them and read or offer them in place.
struct Listed(Vec<u8>);

impl Listed {
    fn new(bytes: Vec<u8>) -> Listed {
        vgpu_dataplane::pinned::add(bytes.as_ptr() as usize, bytes.len()).expect("listed");
        Listed(bytes)
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        vgpu_dataplane::pinned::remove(self.0.as_ptr() as usize);
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn rdma_full_send_queue_and_exhausted_receive_queue_wait() {
    if rdma_env().is_none() {
        return skip("rdma_full_send_queue_and_exhausted_receive_queue_wait");
    }
    within(60, "full queues", || {
        // Two writes in flight at most, four receives posted at the peer: 600 sends must all get through in order
        // while the receiver does not poll for the first 300 ms (its NIC answers "not ready", ours retries).
        let cfg = RdmaConfig {
            ring_bytes: 64 * 1024,
            sq_depth: 2,
            rq_depth: 4,
            ..Default::default()
        };
        let (mut c, mut s) = rdma_pair_raw(&cfg);
        let reader = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            for i in 0..600u64 {
                let mut got = vec![0u8; 100 + (i as usize % 50)];
                s.recv_exact(&mut got).expect("recv");
                assert!(got == pattern(i, got.len()), "message {i} differs");
            }
            s
        });
        for i in 0..600u64 {
            c.send(&[&pattern(i, 100 + (i as usize % 50))])
                .expect("a full queue must wait, not fail");
        }
        drop(reader.join().expect("reader"));
    });
}

#[test]
fn rdma_full_send_queue_during_a_large_copy_waits() {
    if rdma_env().is_none() {
        return skip("rdma_full_send_queue_during_a_large_copy_waits");
    }
    within(120, "large copy with a full send queue", || {
        // As a large cuMemcpyHtoD and the DtoH after it: one 6 MiB send each way. A 64 KiB ring is written in 8 KiB
        // chunks, so with two writes in flight the send queue (not the ring) is what fills, in the middle of one
        // send, and the receiver's credit writes compete for the same two slots; the receiver starts late.
        let cfg = RdmaConfig {
            ring_bytes: 64 * 1024,
            sq_depth: 2,
            ..Default::default()
        };
        let (mut c, mut s) = rdma_pair_raw(&cfg);
        let len = 6 << 20;
        let server = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            let mut got = vec![0u8; len];
            for piece in got.chunks_mut(100_003) {
                s.recv_exact(piece).expect("server recv");
            }
            assert!(got == pattern(11, len), "the 6 MiB copy to the server differs");
            s.send(&[&got[..3], &got[3..]])
                .expect("a full send queue must wait, not fail");
            s
        });
        c.send(&[&pattern(11, len)])
            .expect("a full send queue must wait, not fail");
        thread::sleep(Duration::from_millis(300));
        let mut back = vec![0u8; len];
        c.recv_exact(&mut back).expect("client recv");
        assert!(back == pattern(11, len), "the 6 MiB copy back differs");
        drop(server.join().expect("server"));
    });
}

#[test]
fn rdma_ring_full_waits_for_credits() {
    if rdma_env().is_none() {
        return skip("rdma_ring_full_waits_for_credits");
    }
    within(60, "ring full", || {
        let cfg = RdmaConfig {
            ring_bytes: 4096,
            ..Default::default()
        };
        let (mut c, mut s) = rdma_pair_raw(&cfg);
        let data = pattern(5, 300 * 1024);
        let expect = data.clone();
        let sender = thread::spawn(move || {
            c.send(&[&data[..1], &data[1..5000], &data[5000..]]).expect("send");
            c
        });
        thread::sleep(Duration::from_millis(200));
        let mut got = vec![0u8; expect.len()];
        for piece in got.chunks_mut(777) {
            s.recv_exact(piece).expect("recv");
        }
        assert!(got == expect, "stream through a 4 KiB ring differs");
        drop(sender.join().expect("sender"));
    });
}

#[test]
fn rdma_broken_remote_key_fails_cleanly() {
    if rdma_env().is_none() {
        return skip("rdma_broken_remote_key_fails_cleanly");
    }
    within(60, "broken key", || {
        let (mut c, mut s) = rdma_pair_raw(&RdmaConfig::default());
        c.send(&[b"fine"]).expect("send");
        let mut buf = [0u8; 4];
        s.recv_exact(&mut buf).expect("recv");
        c.debug_break_peer_key();
        // Posting succeeds; the failed write shows at the next call that polls, and stays.
        let first = c.send(&[&[1u8; 1000]]);
        let mut one = [0u8; 1];
        let err = match first {
            Err(e) => e,
            Ok(()) => c.recv_exact(&mut one).expect_err("a write with a wrong key must fail"),
        };
        assert!(matches!(err, TransportError::Io(_)), "got {err:?}");
        assert!(c.send(&[b"x"]).is_err(), "a broken channel stays broken");
        // The server's end fails too: its queue pair saw the access violation (rxe moves it to the error state), or
        // the client went away once it dropped its end.
        drop(c);
        let err = s.recv_exact(&mut one).expect_err("peer gone");
        assert!(
            matches!(err, TransportError::Closed | TransportError::Io(_)),
            "got {err:?}"
        );
    });
}

/// Runs only as the child of `rdma_peer_killed_mid_transfer_ends_the_channel`: streams to the parent's server
/// (mode "send") or reads from it slowly (mode "recv") until killed.
#[test]
#[ignore = "helper: run as a child process by another test"]
fn rdma_child_process_peer() {
    let (Ok(dial), Ok(mode)) = (
        std::env::var("VGPU_TEST_RDMA_CHILD"),
        std::env::var("VGPU_TEST_RDMA_MODE"),
    ) else {
        return;
    };
    let cfg = RdmaConfig {
        ring_bytes: 256 * 1024,
        ..Default::default()
    };
    let mut c = rdma::connect_with(&dial, &framed_hello(), &cfg).expect("child connect");
    let chunk = pattern(1, 64 * 1024);
    let mut buf = vec![0u8; 4096];
    let offered = Listed::new(pattern(2, 8 << 20));
    loop {
        if mode == "offer" {
            // Larger than the ring and listed: offered in place, so the parent reads this process's memory.
            c.send(&[&offered.0]).expect("child send");
        } else if mode == "send" {
            c.send(&[&chunk]).expect("child send");
        } else {
            c.recv_exact(&mut buf).expect("child recv");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn rdma_peer_killed_mid_transfer_ends_the_channel() {
    if rdma_env().is_none() {
        return skip("rdma_peer_killed_mid_transfer_ends_the_channel");
    }
    for mode in ["send", "recv", "offer"] {
        within(90, mode, move || {
            let (listener, dial) = common::rdma_listener();
            let server = common::rdma_accept(listener, RdmaConfig::default());
            let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
                .args(["--exact", "rdma_child_process_peer", "--ignored", "--nocapture"])
                .env("VGPU_TEST_RDMA_CHILD", &dial)
                .env("VGPU_TEST_RDMA_MODE", mode)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn child");
            let mut s = server.join().expect("server end");
            let mut buf = vec![0u8; 64 * 1024];
            if mode != "recv" {
                // Take 2 MiB of the child's stream, then kill it mid-transfer.
                for _ in 0..32 {
                    s.recv_exact(&mut buf).expect("recv from child");
                }
            } else {
                for _ in 0..8 {
                    s.send(&[&buf]).expect("send to child");
                }
            }
            child.kill().expect("kill");
            let _ = child.wait();
            let t0 = Instant::now();
            let err = loop {
                // The reader drains what already arrived, then fails; the writer fails once the ring is full or a
                // write is not acknowledged.
                let r = if mode != "recv" {
                    s.recv_exact(&mut buf)
                } else {
                    s.send(&[&buf])
                };
                if let Err(e) = r {
                    break e;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20 * scale()),
                    "no error after the peer died"
                );
            };
            assert!(
                matches!(err, TransportError::Closed | TransportError::Io(_)),
                "got {err:?}"
            );
            eprintln!(
                "rdma peer killed while it {mode}s: noticed in {:?} ({err})",
                t0.elapsed()
            );
        });
    }
}

#[test]
fn rdma_garbage_setup_is_refused() {
    // No device needed: the setup message is checked before any device is opened.
    within(10, "garbage setup", || {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        c.write_all(&[0xee; 64]).expect("write");
        let (s, _) = l.accept().expect("accept");
        let err = RdmaTransport::accept_with(s, &RdmaConfig::default())
            .err()
            .expect("must refuse");
        assert!(matches!(err, TransportError::Protocol(_)), "got {err:?}");
        // A client that hangs up during the setup is an error, not a hang.
        let mut c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        c.write_all(b"VGPURDM1").expect("write");
        drop(c);
        let (s, _) = l.accept().expect("accept");
        let err = RdmaTransport::accept_with(s, &RdmaConfig::default())
            .err()
            .expect("must refuse");
        assert!(matches!(err, TransportError::Closed), "got {err:?}");
    });
}

#[test]
fn rdma_bad_ring_sizes_and_missing_servers_are_errors() {
    let cfg = RdmaConfig {
        ring_bytes: 5000,
        ..Default::default()
    };
    let err = rdma::connect_with("127.0.0.1:1", &framed_hello(), &cfg)
        .err()
        .expect("not a power of two");
    assert!(
        matches!(err, TransportError::Io(ref e) if e.kind() == std::io::ErrorKind::InvalidInput),
        "{err:?}"
    );
    // Nobody listens on port 1: a plain connection error, before any RDMA resource is made.
    let err = rdma::connect_with("127.0.0.1:1", &framed_hello(), &RdmaConfig::default())
        .err()
        .expect("no server");
    assert!(matches!(err, TransportError::Io(_)), "{err:?}");
}

#[test]
fn rdma_offered_and_pulled_bytes_are_read_in_place() {
    if rdma_env().is_none() {
        return skip("rdma_offered_and_pulled_bytes_are_read_in_place");
    }
    within(180, "in-place reads", || {
        let cfg = RdmaConfig {
            ring_bytes: 1 << 20,
            ..Default::default()
        };
        let (mut c, mut s) = rdma_pair_raw(&cfg);
        // 16 MiB from listed memory into listed memory: offered in place, read by the server's NIC in odd pieces.
        let len = 16 << 20;
        let src = Listed::new(pattern(21, len));
        let server = thread::spawn(move || {
            let mut dst = Listed::new(vec![0u8; len]);
            for piece in dst.0.chunks_mut(1_000_003) {
                s.recv_exact(piece).expect("server recv");
            }
            (s, dst)
        });
        c.send(&[&src.0]).expect("offer");
        let (mut s, dst) = server.join().expect("server");
        assert!(dst.0 == src.0, "the offered bytes differ");
        let (cc, sc) = (c.channel_counters(), s.channel_counters());
        assert_eq!(
            (cc.offered_in_place, cc.ring_copied_in),
            (len as u64, 0),
            "client {cc:?}"
        );
        assert_eq!(
            (sc.pulled_in_place, sc.pulled_bounced, sc.ring_copied_out),
            (len as u64, 0, 0),
            "server {sc:?}"
        );
        // Back: 256 KiB of unlisted memory (copied into the server's ring, pulled by the client) into listed memory,
        // the same into unlisted memory (read through the bounce buffer), and 100 bytes written as before.
        let back = pattern(22, 256 << 10);
        s.send(&[&back, &back, &back[..100]]).expect("server send");
        let mut listed = Listed::new(vec![0u8; back.len()]);
        let mut plain = vec![0u8; back.len()];
        let mut small = [0u8; 100];
        c.recv_exact(&mut listed.0).expect("recv in place");
        c.recv_exact(&mut plain).expect("recv bounced");
        c.recv_exact(&mut small).expect("recv written");
        assert!(
            listed.0 == back && plain == back && small[..] == back[..100],
            "bytes back differ"
        );
        let (cc, sc) = (c.channel_counters(), s.channel_counters());
        assert_eq!(sc.ring_copied_in, 2 * back.len() as u64 + 100, "server {sc:?}");
        assert_eq!(
            (cc.pulled_in_place, cc.pulled_bounced, cc.ring_copied_out),
            (back.len() as u64, back.len() as u64, back.len() as u64 + 100),
            "client {cc:?}"
        );
        assert!(rdma::counters().registrations >= 2, "{:?}", rdma::counters());
    });
}

#[test]
fn rdma_stable_sends_are_read_in_place_unwaited_and_awaited_ones_in_place_waited() {
    if rdma_env().is_none() {
        return skip("rdma_stable_sends_are_read_in_place_unwaited_and_awaited_ones_in_place_waited");
    }
    within(180, "stable and awaited sends", || {
        let cfg = RdmaConfig {
            ring_bytes: 1 << 20,
            ..Default::default()
        };
        let (mut c, mut s) = rdma_pair_raw(&cfg);
        // An async copy from pinned memory (`send_stable`): 256 KiB, smaller than the ring, offered in place and not
        // waited for: the send returns before the server reads anything (it waits for `go`; a send that waited for
        // its read would hang here).
        let len = 256 << 10;
        let src = Listed::new(pattern(61, len));
        let (go, wait_go) = mpsc::channel::<()>();
        let server = thread::spawn(move || {
            wait_go.recv().expect("go");
            let mut dst = Listed::new(vec![0u8; len]);
            s.recv_exact(&mut dst.0).expect("server recv");
            let mut tail = [0u8; 10];
            s.recv_exact(&mut tail).expect("server recv tail");
            (s, dst)
        });
        c.send_stable(&[&src.0]).expect("stable send");
        let cc = c.channel_counters();
        assert_eq!(
            (cc.offered_in_place, cc.offered_unwaited, cc.ring_copied_in),
            (len as u64, len as u64, 0),
            "client {cc:?}"
        );
        // The app frees its buffer before the copy ran (the memory stays mapped here): the registration must
        // outlive the unlisting until the server has read the offer, though the next send sweeps unlisted ranges.
        vgpu_dataplane::pinned::remove(src.0.as_ptr() as usize);
        c.send(&[&[7u8; 10]]).expect("a send that sweeps");
        go.send(()).expect("go");
        let (mut s, dst) = server.join().expect("server");
        assert!(dst.0 == src.0, "the offered bytes differ");
        assert_eq!(s.channel_counters().pulled_in_place, len as u64);
        drop(src);
        // A synchronous copy's reply (`send_awaited`): the client is receiving, so 128 KiB of listed staging is
        // offered and read in place, the send returning once read; a plain send of the same goes through the ring.
        let staging = Listed::new(pattern(62, 128 << 10));
        let back = staging.0.clone();
        let client = thread::spawn(move || {
            let mut got = Listed::new(vec![0u8; 2 * back.len()]);
            c.recv_exact(&mut got.0).expect("client recv");
            assert!(
                got.0[..back.len()] == back[..] && got.0[back.len()..] == back[..],
                "bytes back differ"
            );
            c
        });
        s.send_awaited(&[&staging.0]).expect("awaited send");
        let sc = s.channel_counters();
        assert_eq!(
            (sc.offered_in_place, sc.offered_unwaited, sc.ring_copied_in),
            (128 << 10, 0, 0),
            "{sc:?}"
        );
        s.send(&[&staging.0]).expect("plain send");
        let mut c = client.join().expect("client");
        assert_eq!(s.channel_counters().ring_copied_in, 128 << 10);
        assert_eq!(c.channel_counters().pulled_in_place, 256 << 10);
        // A channel closed right after a stable send waits for the peer's read: the copy is not lost.
        let last = Listed::new(pattern(63, len));
        let expect = last.0.clone();
        let reader = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            let mut got = vec![0u8; len];
            s.recv_exact(&mut got).expect("read after the sender closed");
            assert!(got == expect, "the last copy differs");
        });
        c.send_stable(&[&last.0]).expect("stable send");
        drop(c);
        reader.join().expect("reader");
    });
}

#[test]
fn rdma_written_pulled_and_offered_parts_interleave_across_ring_ends() {
    if rdma_env().is_none() {
        return skip("rdma_written_pulled_and_offered_parts_interleave_across_ring_ends");
    }
    within(240, "interleaved parts", || {
        let cap = 64 * 1024;
        let cfg = RdmaConfig {
            ring_bytes: cap,
            ..Default::default()
        };
        let (mut c, mut s) = rdma_pair_raw(&cfg);
        // A written part that leaves fewer than an offer's 24 positions before the ring's end (so the offer skips
        // them), an offered part, a pulled one, and a written tail; three times, each shifted by a few bytes.
        let offered = Listed::new(pattern(31, (2 << 20) + 12_345));
        let pulled = pattern(32, 100_000);
        let mut expect = Vec::new();
        let mut sends = Vec::new();
        for round in 0..3 {
            let lead = pattern(33 + round, cap - 10 - round as usize * 3);
            let tail = pattern(40 + round, 7 + round as usize);
            expect.extend_from_slice(&lead);
            expect.extend_from_slice(&offered.0);
            expect.extend_from_slice(&pulled);
            expect.extend_from_slice(&tail);
            sends.push((lead, tail));
        }
        let total = expect.len();
        let reader = thread::spawn(move || {
            let mut got = Listed::new(vec![0u8; total]);
            for piece in got.0.chunks_mut(4099) {
                s.recv_exact(piece).expect("recv");
            }
            (s, got)
        });
        for (lead, tail) in &sends {
            c.send(&[lead, &offered.0, &pulled, tail]).expect("send");
        }
        let (s, got) = reader.join().expect("reader");
        assert!(got.0 == expect, "the interleaved stream differs");
        let cc = c.channel_counters();
        assert_eq!(cc.offered_in_place, 3 * offered.0.len() as u64, "{cc:?}");
        assert!(s.channel_counters().pulled_in_place >= 3 * (offered.0.len() + pulled.len()) as u64);
    });
}

#[test]
fn rdma_registration_bound_and_broken_read_keys() {
    if rdma_env().is_none() {
        return skip("rdma_registration_bound_and_broken_read_keys");
    }
    within(120, "registration bound", || {
        // A bound smaller than the listed source: nothing is registered for it, the bytes go through the ring.
        let cfg = RdmaConfig {
            ring_bytes: 1 << 20,
            reg_max_bytes: 1 << 20,
            ..Default::default()
        };
        let (mut c, mut s) = rdma_pair_raw(&cfg);
        let src = Listed::new(pattern(51, 4 << 20));
        let expect = src.0.clone();
        let reader = thread::spawn(move || {
            let mut got = vec![0u8; expect.len()];
            s.recv_exact(&mut got).expect("recv");
            assert!(got == expect, "bytes differ");
            s
        });
        c.send(&[&src.0]).expect("send");
        let mut s = reader.join().expect("reader");
        let cc = c.channel_counters();
        assert_eq!((cc.offered_in_place, cc.ring_copied_in), (0, 4 << 20), "{cc:?}");
        // A pulled read with a wrong key fails on the reading side with a clear error, and the channel stays broken.
        s.debug_break_peer_tx_key();
        c.send(&[&pattern(52, 300 << 10)])
            .expect("fits the ring: no wait for the reader");
        let mut buf = vec![0u8; 300 << 10];
        let err = s.recv_exact(&mut buf).expect_err("a read with a wrong key must fail");
        assert!(matches!(err, TransportError::Io(_)), "got {err:?}");
        assert!(s.recv_exact(&mut buf[..1]).is_err(), "a broken channel stays broken");
        // Pulls can be turned off: every byte is written into the peer's ring, as before.
        let off = RdmaConfig {
            pull_min: 0,
            ..Default::default()
        };
        let (mut c, mut s) = rdma_pair_raw(&off);
        let data = pattern(53, 2 << 20);
        c.send(&[&data]).expect("send");
        let mut got = Listed::new(vec![0u8; data.len()]);
        s.recv_exact(&mut got.0).expect("recv");
        assert!(got.0 == data);
        assert_eq!(s.channel_counters().pulled_in_place, 0);
        assert_eq!(s.channel_counters().ring_copied_out, data.len() as u64);
    });
}

#[test]
fn rdma_fetch_and_add_against_write_with_immediate() {
    if rdma_env().is_none() {
        return skip("rdma_fetch_and_add_against_write_with_immediate");
    }
    within(120, "atomics probe", || {
        // Under Soft-RoCE these times rank the two operations; they say nothing about a real NIC's (bench/NOTES.md §18).
        let (mut c, mut s) = rdma_pair_raw(&RdmaConfig::default());
        let n = 300u32;
        let (atomic, last) = c.probe_fetch_add(n).expect("fetch-and-add");
        assert_eq!(last, u64::from(n) - 1, "each add saw the one before");
        assert_eq!(s.counter(), u64::from(n), "the peer's counter holds every add");
        // One byte each way, n times: two writes with immediate and two completions per round trip.
        let echo = thread::spawn(move || {
            let mut b = [0u8; 1];
            for _ in 0..n {
                s.recv_exact(&mut b).expect("echo recv");
                s.send(&[&b]).expect("echo send");
            }
            s
        });
        let started = Instant::now();
        let mut b = [7u8; 1];
        for _ in 0..n {
            c.send(&[&b]).expect("ping");
            c.recv_exact(&mut b).expect("pong");
        }
        let ping_pong = started.elapsed();
        drop(echo.join().expect("echo"));
        let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
        eprintln!(
            "rdma atomics probe: fetch-and-add round trip {:.1} us; write-with-immediate ping-pong {:.1} us (one way {:.1} us)",
            per(atomic),
            per(ping_pong),
            per(ping_pong) / 2.0
        );
    });
}

/// Device memory as the emulated backend exports it for GPUDirect RDMA: a shared-memory file, listed in
/// `pinned::DEVICE` at an address no host pointer has (so nothing but the NIC's registration can reach its bytes),
/// mapped here only to check them.
struct FakeDevice {
    addr: usize,
    map: memmap2::MmapMut,
}

/// The fake devices' files by listed address, which the process's exporter (set once) hands out.
static FAKE_DEVICES: std::sync::Mutex<Vec<(usize, std::fs::File)>> = std::sync::Mutex::new(Vec::new());

impl FakeDevice {
    fn new(addr: usize, len: usize) -> FakeDevice {
        use vgpu_dataplane::pinned::{self, DeviceExport, DeviceExportKind};
        pinned::set_device_exporter(Box::new(|addr, len| {
            let devices = FAKE_DEVICES.lock().map_err(|e| e.to_string())?;
            let (_, file) = devices
                .iter()
                .find(|(a, _)| *a == addr)
                .ok_or("no such fake device range")?;
            Ok(DeviceExport {
                kind: DeviceExportKind::HostFile,
                fd: file.try_clone().map_err(|e| e.to_string())?.into(),
                offset: 0,
                len,
            })
        }));
        // SAFETY: memfd_create with a static NUL-terminated name; the result is checked.
        let raw = unsafe { libc::memfd_create(c"fake-device".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0, "memfd_create");
        // SAFETY: a fresh descriptor nothing else owns.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        file.set_len(len as u64).expect("size");
        // SAFETY: the file is ours and keeps its size while mapped.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("map");
        FAKE_DEVICES.lock().expect("devices").push((addr, file));
        pinned::DEVICE.add(addr, len).expect("listed");
        FakeDevice { addr, map }
    }
}

impl Drop for FakeDevice {
    fn drop(&mut self) {
        vgpu_dataplane::pinned::DEVICE.remove(self.addr);
        FAKE_DEVICES.lock().expect("devices").retain(|(a, _)| *a != self.addr);
    }
}

#[test]
fn rdma_device_memory_is_read_into_and_offered_in_place() {
    if rdma_env().is_none() {
        return skip("rdma_device_memory_is_read_into_and_offered_in_place");
    }
    within(180, "GPUDirect path", || {
        let cfg = RdmaConfig {
            ring_bytes: 1 << 20,
            ..Default::default()
        };
        let (mut c, mut s) = rdma_pair_raw(&cfg);
        let mib = 1 << 20;
        let mut dev = FakeDevice::new(0x7e00_0000_0000, 8 * mib);
        // Upload: 6 MiB offered from listed host memory, 256 KiB pulled from the client's ring, 100 bytes written
        // into the server's ring; the first two land in device memory by RDMA READ, the last through `inline`.
        let (offered, pulled) = (Listed::new(pattern(61, 6 * mib)), pattern(62, 256 << 10));
        let small = pattern(63, 100);
        let total = offered.0.len() + pulled.len() + small.len();
        let (at, len) = (dev.addr as u64 + 4096, total);
        let server = thread::spawn(move || {
            let mut inlined = Vec::new();
            let mut inline = |off: usize, bytes: &[u8]| inlined.push((off, bytes.to_vec()));
            let direct = s.recv_device(at, len, &mut inline).expect("recv into device");
            (s, direct, inlined)
        });
        c.send(&[&offered.0, &pulled, &small]).expect("send");
        let (mut s, direct, inlined) = server.join().expect("server");
        assert!(direct, "listed device memory must be read into directly");
        let base = 4096;
        assert!(
            dev.map[base..base + offered.0.len()] == offered.0[..],
            "offered bytes differ"
        );
        let p = base + offered.0.len();
        assert!(dev.map[p..p + pulled.len()] == pulled[..], "pulled bytes differ");
        assert_eq!(
            inlined,
            vec![(offered.0.len() + pulled.len(), small.clone())],
            "written bytes go inline"
        );
        let sc = s.channel_counters();
        assert_eq!(
            (sc.device_read_in_place, sc.ring_copied_out, sc.pulled_in_place),
            ((offered.0.len() + pulled.len()) as u64, 100, 0),
            "server {sc:?}"
        );
        // Download: 3 MiB of device memory offered, read by the client into listed memory in place.
        dev.map[mib..4 * mib].copy_from_slice(&pattern(64, 3 * mib));
        let client = thread::spawn(move || {
            let mut got = Listed::new(vec![0u8; 3 * mib]);
            c.recv_exact(&mut got.0).expect("client recv");
            (c, got)
        });
        assert!(s
            .send_device(dev.addr as u64 + mib as u64, 3 * mib)
            .expect("offer device memory"));
        let (mut c, got) = client.join().expect("client");
        assert!(got.0 == dev.map[mib..4 * mib], "device bytes read by the client differ");
        assert_eq!(s.channel_counters().device_offered, 3 * mib as u64);
        assert_eq!(c.channel_counters().pulled_in_place, 3 * mib as u64);
        // Not done directly (nothing crosses, the stream stays whole): a part below the offer minimum, memory
        // outside any listed range, a range crossing the listed end, and a range no longer listed.
        assert!(!s.send_device(dev.addr as u64, 4096).expect("small"));
        assert!(!s.send_device(0x7f00_0000_0000, 2 * mib).expect("unlisted"));
        let mut none = |_: usize, _: &[u8]| panic!("nothing may arrive");
        assert!(!s
            .recv_device(dev.addr as u64 + 7 * mib as u64, 2 * mib, &mut none)
            .expect("crossing"));
        let addr = dev.addr as u64;
        drop(dev);
        assert!(!s.recv_device(addr, mib, &mut none).expect("unlisted now"));
        c.send(&[b"still in order"]).expect("send");
        let mut tail = [0u8; 14];
        s.recv_exact(&mut tail).expect("recv");
        assert_eq!(&tail, b"still in order");
        assert!(rdma::counters().device_read_in_place >= total as u64 - 100);
    });
}
