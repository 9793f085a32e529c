//! Attacks on `vgpu server` before and just after authentication (emulated backend), each asserting a clear
//! refusal, that the server keeps serving other clients, and that nothing is kept (threads, workers):
//! slow hellos (plain and TLS), a flood of idle connections, guessing keys, too many sessions for one tenant,
//! a client that stops in the middle of a frame, peer connections (another server delivering a copy) without a grant;
//! and the TLS policy (pinning, plain TCP only on loopback).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use vgpu_dataplane::handshake::*;
use vgpu_dataplane::wire::{request_header, MemGetInfo, ReplyHeader};
use zerocopy::{FromBytes, IntoBytes};

mod common;

use common::{start, Server, VGPU};

/// Runs the bundled sample through the shim against `endpoint`; whether it succeeded, and its stderr.
fn sample(endpoint: &str, key: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(VGPU);
    cmd.args(["run", "--server", endpoint, "--", VGPU, "sample"]);
    if let Some(k) = key {
        cmd.env("VGPU_KEY", k);
    }
    let out = cmd.output().expect("vgpu run");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The welcome a raw plain-TCP client gets for a hello with `credential` (or a refusal sent before reading it).
fn hello(addr: &str, credential: &[u8]) -> (Welcome, String, TcpStream) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let h = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        mode: MODE_NEW_SESSION,
        pid: 7,
        ..Default::default()
    };
    // A refused client may find the socket shut before it has written everything: that is the refusal.
    let _ = s.write_all(&encode_hello(&h, credential));
    let (w, msg) = read_welcome(&mut s);
    (w, msg, s)
}

fn read_welcome(s: &mut TcpStream) -> (Welcome, String) {
    let mut head = [0u8; std::mem::size_of::<Welcome>()];
    s.read_exact(&mut head).expect("a welcome or a refusal");
    let w = Welcome::read_from_bytes(&head[..]).expect("welcome layout");
    let mut tail = vec![0u8; welcome_tail_len(&w).expect("sane welcome")];
    s.read_exact(&mut tail).expect("welcome tail");
    let (_, msg) = decode_welcome_tail(&w, &tail).expect("tail");
    (w, msg)
}

/// Threads of a process.
fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Child processes (session workers, and the spare one) of a process.
fn children(pid: u32) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).ok().and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok())
            }) == Some(pid)
        })
        .count()
}

/// Waits until `f` holds, for up to `secs`; returns whether it did.
fn eventually(secs: f64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the server has closed `s` (a read sees end-of-stream or an error, not a timeout).
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn baseline(server: &Server) -> (usize, usize) {
    // A finished session first, so the spare worker and every lazily started thread exist.
    let (ok, err) = sample(&server.tcp_url(), None);
    assert!(ok, "{err}");
    assert!(eventually(10.0, || children(server.pid()) <= 1));
    (threads(server.pid()), children(server.pid()))
}

#[test]
fn a_hello_trickled_byte_by_byte_is_cut_at_the_whole_hello_deadline() {
    let server = start(&["--hello-timeout-s", "1"]);
    let (base_threads, _) = baseline(&server);
    // Plain TCP: a length prefix, then a byte every 200 ms. Each read is quick; the hello as a whole is not.
    let mut plain = TcpStream::connect(&server.tcp).expect("connect");
    plain.write_all(&200u32.to_le_bytes()).expect("prefix");
    // TLS: the start of a ClientHello record, then the same trickle.
    let mut tls = TcpStream::connect(server.tls_addr()).expect("connect");
    tls.write_all(&[22, 3, 1, 2, 0]).expect("record header");
    let t0 = Instant::now();
    let mut cut = [None, None];
    while cut.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(8) {
        for (i, s) in [&mut plain, &mut tls].into_iter().enumerate() {
            if cut[i].is_none() && (s.write_all(&[1]).is_err() || closed_by_server(s, Duration::from_millis(200))) {
                cut[i] = Some(t0.elapsed());
            }
        }
    }
    for (name, when) in ["plain", "tls"].iter().zip(cut) {
        let when = when.unwrap_or_else(|| panic!("{name}: a trickling hello kept its connection for 8 s"));
        assert!(when < Duration::from_millis(2500), "{name}: cut only after {when:?}");
    }
    // Others are served, and the two threads those connections held are gone.
    let (ok, err) = sample(&server.tls, None);
    assert!(ok, "{err}");
    assert!(
        eventually(5.0, || threads(server.pid()) <= base_threads),
        "{} threads, {base_threads} before",
        threads(server.pid())
    );
}

#[test]
fn a_flood_of_idle_connections_holds_a_bounded_number_of_threads() {
    let server = start(&["--max-pending", "4", "--hello-timeout-s", "2"]);
    let (base_threads, _) = baseline(&server);
    // A session opened before the flood keeps working through it.
    let (w, _, mut live) = hello(&server.tcp, b"");
    assert_eq!(w.status, STATUS_OK);
    let mut flood: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&server.tcp).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let during = threads(server.pid());
    assert!(
        during <= base_threads + 4 + 2,
        "{during} threads during the flood, {base_threads} before: one per idle connection?"
    );
    // Connections past the bound were refused at once, with the reason.
    let mut busy = 0;
    for s in flood.iter_mut().skip(4) {
        s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        let mut head = [0u8; std::mem::size_of::<Welcome>()];
        if s.read_exact(&mut head).is_ok() {
            let w = Welcome::read_from_bytes(&head[..]).expect("welcome");
            assert_eq!(w.status, STATUS_BUSY);
            let mut tail = vec![0u8; welcome_tail_len(&w).expect("tail")];
            s.read_exact(&mut tail).expect("tail");
            let (_, msg) = decode_welcome_tail(&w, &tail).expect("msg");
            assert!(msg.contains("too many connections awaiting authentication"), "{msg}");
            busy += 1;
        }
    }
    assert!(busy >= 30, "only {busy} of 36 connections over the bound got a refusal");
    let request = request_header::<MemGetInfo>(1, 0, 0);
    live.write_all(request.as_bytes()).expect("request on the live session");
    let mut reply = [0u8; std::mem::size_of::<ReplyHeader>()];
    live.read_exact(&mut reply)
        .expect("the live session is served during the flood");
    // Once the idle ones reach their deadline, newcomers are admitted again, and the threads are gone.
    assert!(
        eventually(6.0, || sample(&server.tls, None).0),
        "no new session after the idle connections timed out"
    );
    drop(flood);
    // What remains is the live session's own: a listener thread for its worker and its link to the IPC registry.
    assert!(
        eventually(5.0, || threads(server.pid()) <= base_threads + 2),
        "{} threads after the flood, {base_threads} before",
        threads(server.pid())
    );
}

#[test]
fn guessing_keys_is_locked_out_per_address_and_others_still_get_in() {
    let server = start(&["--key", "s3cret"]);
    for i in 0..6 {
        let (w, msg, _) = hello(&server.tcp, b"guess");
        assert_eq!(w.status, STATUS_UNAUTHORIZED, "attempt {i}: {msg}");
        assert!(msg.contains("refused the key"), "attempt {i}: {msg}");
    }
    // Locked out now: even the right key is not looked at, over plain TCP or TLS.
    let (w, msg, _) = hello(&server.tcp, b"s3cret");
    assert_eq!(w.status, STATUS_UNAUTHORIZED);
    assert!(msg.contains("too many failed attempts"), "{msg}");
    let (ok, err) = sample(&server.tls, Some("s3cret"));
    assert!(!ok && err.contains("too many failed attempts"), "{err}");
    // Another source (a local user over shared memory) is not affected.
    let (ok, err) = sample(&server.shm, Some("s3cret"));
    assert!(ok, "{err}");
    // After the lockout (1 s after the sixth failure) the right key works again.
    std::thread::sleep(Duration::from_millis(1200));
    let (w, msg, _) = hello(&server.tcp, b"s3cret");
    assert_eq!(w.status, STATUS_OK, "{msg}");
}

#[test]
fn a_tenant_cannot_open_more_than_its_sessions_and_a_closed_one_frees_its_place() {
    let server = start(&["--key", "k", "--max-sessions-per-tenant", "2"]);
    let (w1, _, first) = hello(&server.tcp, b"k");
    let (w2, _, _second) = hello(&server.tcp, b"k");
    assert_eq!((w1.status, w2.status), (STATUS_OK, STATUS_OK));
    let (w, msg, _) = hello(&server.tcp, b"k");
    assert_eq!(w.status, STATUS_BUSY, "{msg}");
    assert!(msg.contains("too many sessions") && msg.contains("at most 2"), "{msg}");
    let (ok, err) = sample(&server.shm, Some("k"));
    assert!(!ok && err.contains("too many sessions"), "{err}");
    // Ending one session (its worker is reaped) frees a place.
    drop(first);
    assert!(
        eventually(10.0, || hello(&server.tcp, b"k").0.status == STATUS_OK),
        "the place of an ended session was not freed"
    );
}

#[test]
fn a_client_stalled_mid_frame_is_cut_but_an_idle_one_is_not() {
    let server = start(&["--stall-timeout-s", "1"]);
    let (_, base_children) = baseline(&server);
    let (w, _, mut idle) = hello(&server.tcp, b"");
    assert_eq!(w.status, STATUS_OK);
    let (w, _, mut stalled) = hello(&server.tcp, b"");
    assert_eq!(w.status, STATUS_OK);
    // Half of a ModuleLoad's header announcing a large image, then nothing.
    let header = vgpu_dataplane::wire::RequestHeader {
        len: 8 + (64 << 20),
        op: vgpu_dataplane::wire::Op::ModuleLoad as u16,
        flags: 0,
        body_len: 8,
        seq: 1,
    };
    stalled.write_all(&header.as_bytes()[..10]).expect("half a header");
    let t0 = Instant::now();
    assert!(
        closed_by_server(&mut stalled, Duration::from_secs(5)),
        "a client stalled mid-frame kept its connection"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after {took:?}"
    );
    // The idle client, silent all along (longer than the stall timeout), is still served.
    std::thread::sleep(Duration::from_millis(500));
    let request = request_header::<MemGetInfo>(1, 0, 0);
    idle.write_all(request.as_bytes()).expect("request");
    let mut reply = [0u8; std::mem::size_of::<ReplyHeader>()];
    idle.read_exact(&mut reply).expect("an idle client is not cut");
    let reply = ReplyHeader::read_from_bytes(&reply[..]).expect("reply");
    assert_eq!(reply.seq, 1);
    // The stalled session's worker is gone; the idle one's remains until it closes.
    drop(idle);
    assert!(
        eventually(10.0, || children(server.pid()) <= base_children),
        "{} workers remain, {base_children} before",
        children(server.pid())
    );
}

#[test]
fn tls_clients_must_verify_the_server_and_a_wrong_pin_is_refused() {
    let server = start(&[]);
    let (ok, err) = sample(&server.tls, None);
    assert!(ok, "{err}");
    let bare = format!("tls://{}", server.tls_addr());
    let (ok, err) = sample(&bare, None);
    assert!(!ok && err.contains("must be verified"), "{err}");
    let wrong = format!("tls://{}#sha256={}", server.tls_addr(), "00".repeat(32));
    let (ok, err) = sample(&wrong, None);
    assert!(!ok && err.contains("not the pinned"), "{err}");
    // The fingerprint may also come from VGPU_TLS_FINGERPRINT.
    let out = Command::new(VGPU)
        .args(["run", "--server", &bare, "--", VGPU, "sample"])
        .env("VGPU_TLS_FINGERPRINT", server.tls_sha256())
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn plain_tcp_beyond_loopback_needs_to_be_asked_for() {
    let out = Command::new(VGPU)
        .args([
            "server",
            "--backend",
            "emulated",
            "--tcp",
            "0.0.0.0:0",
            "--no-tls",
            "--no-shm",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-plain-tcp"), "{err}");
}

/// A raw `MODE_PEER` hello (another server delivering a copy) for `session` with `token`.
fn peer_hello(addr: &str, session: u64, token: [u8; 16]) -> (Welcome, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let h = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        mode: MODE_PEER,
        session_id: session,
        secret: token,
        ..Default::default()
    };
    let _ = s.write_all(&encode_hello(&h, &[]));
    read_welcome(&mut s)
}

#[test]
fn a_peer_connection_needs_a_live_session_and_its_grant_and_cannot_lock_a_server_out() {
    let server = start(&["--key", "k", "--peer-wait-s", "0.3"]);
    let (w, msg, _session) = hello(&server.tcp, b"k");
    assert_eq!(w.status, STATUS_OK, "{msg}");
    // The live session, but a token it never granted: refused once the wait is over, and not held against the
    // sending server's address however often it happens.
    for i in 0..8 {
        let t = Instant::now();
        let (p, msg) = peer_hello(&server.tcp, w.session_id, [i; 16]);
        assert_eq!(p.status, STATUS_UNAUTHORIZED, "{msg}");
        assert!(msg.contains("no copy of this session awaits that token"), "{msg}");
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "answered before the grant could come"
        );
    }
    let (w2, msg, _) = hello(&server.tcp, b"k");
    assert_eq!(w2.status, STATUS_OK, "an honest client is still let in: {msg}");
    // A made-up session is an authentication failure like any other.
    let (p, msg) = peer_hello(&server.tcp, w.session_id ^ 1, [0; 16]);
    assert_eq!(p.status, STATUS_NO_SUCH_SESSION, "{msg}");
}
