//! Striped channels (issue 21): a TCP or TLS channel that moves bulk data opens lanes to its server and both ends
//! spread large transfers over them. Through the shim: bytes read back right with any stream count, never on
//! compressed or shared-memory channels. On the wire: a lane needs its session's secret and a well-formed hello, a
//! join names lanes that came and of the channel's kind, and after a join both ends speak the striped framing.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use vgpu_dataplane::handshake::*;
use vgpu_dataplane::wire::{request_header, Call, LanesJoin, MemGetInfo, ReplyHeader};
use vgpu_dataplane::{Endpoint, Transport};
use vgpu_transports::tcp::TcpTransport;
use zerocopy::{FromBytes, IntoBytes};

mod common;

use common::{start, VGPU};

/// `vgpu run --server ENDPOINT -- vgpu __copy-data` with `env`: its stdout and stderr (the run must succeed).
fn copy_data(endpoint: &str, env: &[(&str, &str)]) -> (String, String) {
    let out = Command::new(VGPU)
        .args(["run", "--server", endpoint, "--", VGPU, "__copy-data"])
        .args(["--kind", "ids", "--mib", "24", "--reps", "1"])
        .env_remove("VGPU_TCP_STREAMS")
        .env_remove("VGPU_COMPRESS")
        .envs(env.iter().copied())
        .output()
        .expect("vgpu run");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{endpoint} {env:?}: {stdout}\n{stderr}");
    assert!(stdout.contains("(verified)"), "{stdout}");
    (stdout, stderr)
}

fn striped_channels(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("striped_channels "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no striped_channels line in {stdout}"))
}

#[test]
fn bulk_copies_read_back_right_striped_or_not_and_lanes_are_only_plain_tcp() {
    let server = start(&[]);
    let tcp = server.tcp_url();
    let (out, _) = copy_data(&tcp, &[]);
    assert_eq!(
        striped_channels(&out),
        1,
        "the default stripes the copying channel: {out}"
    );
    for streams in ["2", "16"] {
        let (out, _) = copy_data(&tcp, &[("VGPU_TCP_STREAMS", streams)]);
        assert_eq!(striped_channels(&out), 1, "{streams} streams: {out}");
    }
    // The client striping its sends from 512 KiB: short segments cut into fine pieces, one a stream.
    let (out, _) = copy_data(&tcp, &[("VGPU_STRIPE_MIN_KB", "512")]);
    assert_eq!(striped_channels(&out), 1, "striped from 512 KiB: {out}");
    let (out, _) = copy_data(&tcp, &[("VGPU_TCP_STREAMS", "1")]);
    assert_eq!(striped_channels(&out), 0, "one stream is no lanes: {out}");
    let (out, err) = copy_data(&tcp, &[("VGPU_TCP_STREAMS", "99")]);
    assert!(err.contains("VGPU_TCP_STREAMS=\"99\""), "a bad value is named: {err}");
    assert_eq!(striped_channels(&out), 1, "and the default used: {out}");
    // TLS channels stripe over TLS lanes (each its own session keys); never compressed or shared-memory ones.
    let (out, _) = copy_data(&server.tls, &[]);
    assert_eq!(striped_channels(&out), 1, "TLS: {out}");
    let (out, _) = copy_data(&tcp, &[("VGPU_COMPRESS", "lz4")]);
    assert_eq!(striped_channels(&out), 0, "compressed: {out}");
    let (out, _) = copy_data(&server.shm, &[]);
    assert_eq!(striped_channels(&out), 0, "shm: {out}");
}

/// The hello of `mode` for `session`/`secret` with `credential`.
fn hello_bytes(mode: u32, session: u64, secret: [u8; 16], credential: &[u8]) -> Vec<u8> {
    let h = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        capabilities: CAPABILITIES,
        mode,
        pid: 7,
        session_id: session,
        secret,
        ..Default::default()
    };
    encode_hello(&h, credential).to_vec()
}

/// A raw TCP client (reads give up after 20 s): a hello of `mode` for `session`/`secret` with `credential`; the
/// welcome and the connection.
fn raw_hello(
    addr: &str,
    mode: u32,
    session: u64,
    secret: [u8; 16],
    credential: &[u8],
) -> (Welcome, String, TcpTransport) {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut t = TcpTransport::from_stream(s).expect("tcp");
    // A refused client may find the socket shut before it has written everything: the welcome says why.
    let _ = t.send(&[&hello_bytes(mode, session, secret, credential)]);
    let (w, msg) = welcome_on(&mut t);
    (w, msg, t)
}

/// A TLS client: a hello of `mode` for the session of `w` (none: a new one) with `credential`; the connection.
fn tls_hello(endpoint: &Endpoint, mode: u32, w: Option<&Welcome>, credential: &[u8]) -> Box<dyn Transport> {
    let (session, secret) = w.map_or((0, [0; 16]), |w| (w.session_id, w.secret));
    vgpu_transports::connect(endpoint, &hello_bytes(mode, session, secret, credential)).expect("tls connect")
}

/// The welcome on a connection whose hello was sent.
fn welcome_on(t: &mut dyn Transport) -> (Welcome, String) {
    let mut head = [0u8; std::mem::size_of::<Welcome>()];
    t.recv_exact(&mut head).expect("a welcome or a refusal");
    let w = Welcome::read_from_bytes(&head[..]).expect("welcome layout");
    let mut tail = vec![0u8; welcome_tail_len(&w).expect("sane welcome")];
    t.recv_exact(&mut tail).expect("welcome tail");
    let (_, msg) = decode_welcome_tail(&w, &tail).expect("tail");
    (w, msg)
}

/// A raw TCP lane of `w`'s session, index 0 of join `token`: its welcome and the connection.
fn lane_hello(addr: &str, w: &Welcome, token: [u8; 16]) -> (Welcome, String, TcpTransport) {
    raw_hello(addr, MODE_LANE, w.session_id, w.secret, &lane_credential(token, 0))
}

fn lane_credential(token: [u8; 16], index: u32) -> Vec<u8> {
    [&token[..], &index.to_le_bytes()[..]].concat()
}

/// Sends `LanesJoin` as request `seq` (unstriped) and returns the reply's status.
fn join(t: &mut dyn Transport, seq: u32, token: [u8; 16], count: u32) -> u32 {
    join_with(t, seq, token, count, 0)
}

/// As `join`, with `flags`.
fn join_with(t: &mut dyn Transport, seq: u32, token: [u8; 16], count: u32, flags: u32) -> u32 {
    let call = LanesJoin { token, count, flags };
    t.send(&[request_header::<LanesJoin>(seq, 0, 0).as_bytes(), call.as_bytes()])
        .expect("join");
    let mut head = ReplyHeader::default();
    t.recv_exact(head.as_mut_bytes()).expect("reply");
    assert_eq!(head.seq, seq);
    let mut rest = vec![0u8; head.len as usize];
    t.recv_exact(&mut rest).expect("reply body");
    head.result
}

/// On a striped channel, by hand: `call` as request `seq` in an inline segment, and the reply's header, which must
/// come back in an inline segment too.
fn striped_call<C: Call>(t: &mut dyn Transport, seq: u32, call: &C) -> ReplyHeader {
    let request = [request_header::<C>(seq, 0, 0).as_bytes(), call.as_bytes()].concat();
    t.send(&[&(request.len() as u32).to_le_bytes(), &request])
        .expect("request");
    let mut word = [0u8; 4];
    t.recv_exact(&mut word).expect("segment word");
    let word = u32::from_le_bytes(word);
    assert_eq!(word >> 31, 0, "a small reply is inline");
    let mut reply = vec![0u8; word as usize];
    t.recv_exact(&mut reply).expect("reply");
    ReplyHeader::read_from_prefix(&reply).expect("reply header").0
}

#[test]
fn lanes_need_their_session_and_a_join_names_lanes_that_came() {
    let server = start(&[]);
    let (w, msg, mut main) = raw_hello(&server.tcp, MODE_NEW_SESSION, 0, [0; 16], &[]);
    assert_eq!(w.status, STATUS_OK, "{msg}");
    assert!(w.capabilities & CAP_LANES != 0);
    let token = [7u8; 16];
    // A wrong secret, a made-up session, a short credential: refused.
    let (r, msg, _) = raw_hello(
        &server.tcp,
        MODE_LANE,
        w.session_id,
        [1; 16],
        &lane_credential(token, 0),
    );
    assert_eq!(r.status, STATUS_NO_SUCH_SESSION, "{msg}");
    let (r, msg, _) = raw_hello(
        &server.tcp,
        MODE_LANE,
        w.session_id ^ 1,
        w.secret,
        &lane_credential(token, 0),
    );
    assert_eq!(r.status, STATUS_NO_SUCH_SESSION, "{msg}");
    let (r, msg, _) = raw_hello(&server.tcp, MODE_LANE, w.session_id, w.secret, &[1, 2, 3]);
    assert_eq!(r.status, STATUS_VERSION_MISMATCH, "{msg}");
    let (r, msg, lane) = lane_hello(&server.tcp, &w, token);
    assert_eq!(r.status, STATUS_OK, "{msg}");
    // A join naming lanes that never came: refused after a short wait; the channel serves on, unstriped.
    let t = Instant::now();
    assert_eq!(join(&mut main, 1, [9; 16], 1), 801, "CUDA_ERROR_NOT_SUPPORTED");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(join(&mut main, 2, token, 2), 801, "two lanes asked, one came");
    // The lane that came was dropped with that refused join: joining it now finds nothing.
    assert_eq!(join(&mut main, 3, token, 1), 801);
    // A join with flags this server does not know: refused at once.
    assert_eq!(join_with(&mut main, 4, token, 1, 2), 801, "unknown join flags");
    drop(lane);
    let (r, msg, mut lane) = lane_hello(&server.tcp, &w, token);
    assert_eq!(r.status, STATUS_OK, "{msg}");
    assert_eq!(
        join_with(&mut main, 5, token, 1, LANES_FINE),
        0,
        "the lane joins, with fine pieces"
    );
    // From here on both ways are striped frames. No context is current on this raw channel: the driver's
    // CUDA_ERROR_INVALID_CONTEXT, answered striped.
    let head = striped_call(&mut main, 6, &MemGetInfo {});
    assert_eq!(
        (head.seq, head.result),
        (6, 201),
        "MemGetInfo answered on the striped channel"
    );
    // A second join on a striped channel is refused (one per channel), in striped framing.
    let head = striped_call(
        &mut main,
        7,
        &LanesJoin {
            token,
            count: 1,
            flags: 0,
        },
    );
    assert_eq!((head.seq, head.result), (7, 801));
    // The lane carries nothing unasked: nothing is waiting on it.
    lane.stream()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut probe = [0u8; 1];
    assert!(lane.recv_exact(&mut probe).is_err(), "the server wrote on an idle lane");
}

#[test]
fn a_clear_lane_cannot_join_an_encrypted_channel_but_a_tls_lane_can() {
    let server = start(&[]);
    let tls = Endpoint::parse(&server.tls).expect("tls endpoint");
    let mut main = tls_hello(&tls, MODE_NEW_SESSION, None, &[]);
    let (w, msg) = welcome_on(&mut *main);
    assert_eq!(w.status, STATUS_OK, "{msg}");
    let token = [5u8; 16];
    // A plain TCP lane with the session's secret is admitted (the secret is the same)...
    let (r, msg, _clear) = lane_hello(&server.tcp, &w, token);
    assert_eq!(r.status, STATUS_OK, "{msg}");
    // ...but cannot join the TLS channel: its bytes would travel in clear.
    assert_eq!(join(&mut *main, 1, token, 1), 801);
    let token = [6u8; 16];
    let mut lane = tls_hello(&tls, MODE_LANE, Some(&w), &lane_credential(token, 0));
    let (r, msg) = welcome_on(&mut *lane);
    assert_eq!(r.status, STATUS_OK, "{msg}");
    assert_eq!(join(&mut *main, 2, token, 1), 0, "a TLS lane joins a TLS channel");
}

/// A further connection of a session (a thread's channel, a lane) can come the moment the welcome arrives: the
/// listener lists the session before the worker can welcome its client (sync_scope's threads once found "no such
/// session" on a loaded host).
#[test]
fn a_thread_attaching_the_moment_the_welcome_arrives_finds_its_session() {
    let server = start(&[]);
    let tcp = server.tcp.clone();
    // Several clients at once keep the listener's threads busy, which is when the window used to open.
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let tcp = tcp.clone();
            std::thread::spawn(move || {
                for round in 0..40 {
                    let (w, msg, main) = raw_hello(&tcp, MODE_NEW_SESSION, 0, [0; 16], &[]);
                    assert_eq!(w.status, STATUS_OK, "{msg}");
                    let (r, msg, attached) = raw_hello(&tcp, MODE_ATTACH, w.session_id, w.secret, &[]);
                    assert_eq!(r.status, STATUS_OK, "client {client} round {round}: {msg}");
                    drop((attached, main));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client found its session");
    }
}
