//! One conformance suite for every transport: each case is a function over a connected (client, server) pair and
//! runs against TCP and TLS over loopback, shared memory over a temporary rendezvous socket and, where a test network
//! with RDMA devices exists (tests/rdma/run-vm.sh), RDMA between two network namespaces.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use vgpu_dataplane::transport::{Endpoint, Transport, TransportError};
use vgpu_transports::shm::{self, ShmConfig, ShmTransport};
use vgpu_transports::tcp::TcpTransport;
use vgpu_transports::{connect, read_raw_hello};

type Boxed = Box<dyn Transport>;
/// Makes a connected (client, server) pair of one transport.
type MakePair = fn() -> (Boxed, Boxed);

use common::{framed_hello, HELLO};

/// Runs `f` on its own thread and fails the test if it takes longer than `secs` (times `VGPU_TEST_TIME_SCALE`, for
/// slow emulated machines such as the RDMA VM), so a hang is a failure.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let scale: u64 = std::env::var("VGPU_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let secs = secs * scale.max(1);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(e) => panic!("{what}: no outcome within {secs} s ({e})"),
    }
}

/// A cheap deterministic pattern that differs per message and per position.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn tcp_pair() -> (Boxed, Boxed) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let hello = read_raw_hello(&mut s, 1024).expect("hello");
        assert_eq!(hello, HELLO);
        TcpTransport::from_stream(s).expect("server transport")
    });
    let client = connect(&Endpoint::Tcp(addr), &framed_hello()).expect("connect");
    let server = server.join().expect("server thread");
    assert_eq!((client.kind(), server.kind()), ("tcp", "tcp"));
    (client, Box::new(server))
}

/// A TLS pair as the server makes one: the listener completes the handshake and reads the hello, then hands the
/// socket and the record state on (here to the same process, through the encoded state a worker would get).
fn tls_pair() -> (Boxed, Boxed) {
    use vgpu_transports::tls::{self, pki_types::PrivateKeyDer, ResumeState, TlsAcceptor, TlsTransport};
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    let key = PrivateKeyDer::try_from(ck.key_pair.serialize_der()).expect("key");
    let acceptor = TlsAcceptor::new(vec![ck.cert.der().clone()], key, None).expect("acceptor");
    let pin = acceptor.fingerprint().to_string();
    assert_eq!(pin, tls::fingerprint(ck.cert.der()));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let mut t = acceptor
            .accept(s, Instant::now() + Duration::from_secs(10))
            .expect("handshake");
        assert_eq!(t.recv_hello(1024).expect("hello"), HELLO);
        let (stream, state) = t.into_resume().expect("hand-over");
        let state = ResumeState::decode(&state.encode()).expect("state");
        TlsTransport::resume(stream, &state).expect("server transport")
    });
    let client = connect(
        &Endpoint::Tls {
            addr,
            sha256: Some(pin),
        },
        &framed_hello(),
    )
    .expect("connect");
    let server = server.join().expect("server thread");
    assert_eq!((client.kind(), server.kind()), ("tls", "tls"));
    (client, Box::new(server))
}

fn temp_sock() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "vgpu-conf-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&p);
    p
}

/// A shared-memory pair with a given ring size, both ends unboxed: (client, server).
fn shm_pair_raw(ring: usize) -> (ShmTransport, ShmTransport) {
    let cfg = ShmConfig {
        ring_bytes: ring,
        spin: Duration::from_micros(50),
    };
    let (c, s) = shm_rendezvous(move |path| shm::connect_with(path, &framed_hello(), &cfg).expect("connect"));
    (c, s)
}

/// Runs a server that accepts one shared-memory client at a fresh path, and `client` against it.
fn shm_rendezvous<C>(client: impl FnOnce(&std::path::Path) -> C) -> (C, ShmTransport) {
    let path = temp_sock();
    let listener = UnixListener::bind(&path).expect("bind unix");
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let hello = read_raw_hello(&mut s, 1024).expect("hello");
        assert_eq!(hello, HELLO);
        ShmTransport::accept_with(s, Duration::from_micros(50)).expect("server transport")
    });
    let c = client(&path);
    let server = server.join().expect("server thread");
    let _ = std::fs::remove_file(&path);
    (c, server)
}

/// A shared-memory pair; `ring` None goes through the public `connect` with the default configuration.
fn shm_pair(ring: Option<usize>) -> (Boxed, Boxed) {
    let (client, server): (Boxed, ShmTransport) = match ring {
        Some(bytes) => {
            let (c, s) = shm_pair_raw(bytes);
            (Box::new(c), s)
        }
        None => shm_rendezvous(|path| {
            connect(&Endpoint::Shm(path.to_string_lossy().into_owned()), &framed_hello()).expect("connect")
        }),
    };
    assert_eq!((client.kind(), server.kind()), ("shm", "shm"));
    (client, Box::new(server))
}

/// An RDMA pair through the public `connect` (default configuration) or with a small ring.
fn rdma_pair(ring: Option<usize>) -> (Boxed, Boxed) {
    let (client, server): (Boxed, Boxed) = match ring {
        Some(bytes) => {
            let cfg = vgpu_transports::rdma::RdmaConfig {
                ring_bytes: bytes,
                ..Default::default()
            };
            let (c, s) = common::rdma_pair_raw(&cfg);
            (Box::new(c), Box::new(s))
        }
        None => {
            let (listener, dial) = common::rdma_listener();
            let server = common::rdma_accept(listener, Default::default());
            let c = connect(&Endpoint::Rdma(dial), &framed_hello()).expect("connect");
            (c, Box::new(server.join().expect("server thread")))
        }
    };
    assert_eq!((client.kind(), server.kind()), ("rdma", "rdma"));
    (client, server)
}

/// Every transport under test, with the pair factory each case uses. RDMA joins where a test network exists;
/// `VGPU_TEST_ONLY=rdma` keeps only the transports whose name starts with that (the VM runs only RDMA).
fn transports() -> Vec<(&'static str, MakePair)> {
    let mut all: Vec<(&'static str, MakePair)> = vec![
        ("tcp", tcp_pair),
        ("tls", tls_pair),
        ("shm", || shm_pair(None)),
        ("shm-64k", || shm_pair(Some(64 * 1024))),
    ];
    if common::rdma_env().is_some() {
        all.push(("rdma", || rdma_pair(None)));
        all.push(("rdma-64k", || rdma_pair(Some(64 * 1024))));
    }
    if let Ok(only) = std::env::var("VGPU_TEST_ONLY") {
        all.retain(|(name, _)| name.starts_with(only.as_str()));
    }
    all
}

fn for_each(secs: u64, case: fn(Boxed, Boxed)) {
    for (name, make) in transports() {
        within(secs, name, move || {
            let (a, b) = make();
            case(a, b);
        });
    }
}

// ---- cases ----

fn small_pingpong(mut a: Boxed, mut b: Boxed) {
    let echo = thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..500 {
            b.recv_exact(&mut buf).expect("echo recv");
            for x in buf.iter_mut() {
                *x = x.wrapping_add(1);
            }
            b.send(&[&buf[..10], &buf[10..]]).expect("echo send");
        }
    });
    for i in 0..500u64 {
        let msg = pattern(i, 64);
        a.send(&[&msg]).expect("send");
        let mut back = [0u8; 64];
        a.recv_exact(&mut back).expect("recv");
        let want: Vec<u8> = msg.iter().map(|x| x.wrapping_add(1)).collect();
        assert_eq!(&back[..], &want[..], "round trip {i}");
    }
    echo.join().expect("echo thread");
}

const SIZES: &[usize] = &[
    1,
    2,
    7,
    63,
    64,
    65,
    4095,
    4096,
    4097,
    65535,
    65536,
    65537,
    (1 << 20) + 3,
    (3 << 20) + 7,
    64 << 20,
];

fn mixed_sizes(mut a: Boxed, mut b: Boxed) {
    let sender = thread::spawn(move || {
        for (i, &n) in SIZES.iter().enumerate() {
            let data = pattern(i as u64, n);
            // A header/body/tail split like the wire layer's, with the tail sent uncopied.
            let cut1 = n.min(3);
            let cut2 = n.min(cut1 + 100);
            a.send(&[&data[..cut1], &data[cut1..cut2], &data[cut2..]])
                .expect("send");
        }
        a
    });
    for (i, &n) in SIZES.iter().enumerate() {
        let mut got = vec![0u8; n];
        b.recv_exact(&mut got).expect("recv");
        assert!(got == pattern(i as u64, n), "message {i} of {n} bytes differs");
    }
    drop(sender.join().expect("sender"));
}

fn larger_than_ring(a: Boxed, b: Boxed) {
    stream_one(a, b, 3 * 64 * 1024 + 123);
    let (a, b) = shm_pair(Some(4096));
    stream_one(a, b, (1 << 20) + 5);
}

fn stream_one(mut a: Boxed, mut b: Boxed, n: usize) {
    let data = pattern(99, n);
    let expect = data.clone();
    let sender = thread::spawn(move || {
        a.send(&[&data]).expect("send");
        a
    });
    let mut got = vec![0u8; n];
    b.recv_exact(&mut got).expect("recv");
    assert!(got == expect, "{n}-byte stream differs");
    drop(sender.join().expect("sender"));
}

fn both_directions(a: Boxed, b: Boxed) {
    fn side(mut t: Boxed, me: u64, peer: u64) -> Boxed {
        for i in 0..150u64 {
            let n = 1 + ((i * 7919) % (32 * 1024)) as usize;
            t.send(&[&pattern(me * 1000 + i, n)]).expect("send");
            let m = 1 + ((i * 7919) % (32 * 1024)) as usize;
            let mut got = vec![0u8; m];
            t.recv_exact(&mut got).expect("recv");
            assert!(
                got == pattern(peer * 1000 + i, m),
                "message {i} from side {peer} differs"
            );
        }
        t
    }
    let ta = thread::spawn(move || side(a, 1, 2));
    let tb = thread::spawn(move || side(b, 2, 1));
    drop(ta.join().expect("side a"));
    drop(tb.join().expect("side b"));
}

fn many_small_then_one_recv(mut a: Boxed, mut b: Boxed) {
    let mut all = Vec::new();
    for i in 0..5000u64 {
        let n = 1 + (i % 13) as usize;
        let m = pattern(i, n);
        a.send(&[&m]).expect("send");
        all.extend_from_slice(&m);
    }
    let mut got = vec![0u8; all.len()];
    b.recv_exact(&mut got).expect("recv");
    assert!(got == all, "concatenation of small sends differs");
}

fn is_gone(e: &TransportError) -> bool {
    matches!(e, TransportError::Closed | TransportError::Io(_))
}

fn peer_dropped_mid_stream(mut a: Boxed, mut b: Boxed) {
    a.send(&[&[7u8; 500]]).expect("half a message");
    drop(a);
    let mut buf = [0u8; 1000];
    let t0 = Instant::now();
    let err = b.recv_exact(&mut buf).expect_err("recv from a dropped peer must fail");
    assert!(matches!(err, TransportError::Closed), "got {err:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    // Sending to the dead peer fails too (after buffers fill), never hangs.
    let chunk = vec![1u8; 1 << 20];
    let mut failed = None;
    for _ in 0..64 {
        if let Err(e) = b.send(&[&chunk]) {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("send to a dropped peer must eventually fail");
    assert!(is_gone(&e), "got {e:?}");
}

// ---- tests ----

#[test]
fn conformance_small_pingpong() {
    for_each(15, small_pingpong);
}

#[test]
fn conformance_mixed_sizes_up_to_64_mib() {
    for_each(30, mixed_sizes);
}

#[test]
fn conformance_send_larger_than_ring() {
    for_each(15, larger_than_ring);
}

#[test]
fn conformance_both_directions_at_once() {
    for_each(15, both_directions);
}

#[test]
fn conformance_many_small_sends_one_recv() {
    for_each(15, many_small_then_one_recv);
}

#[test]
fn conformance_peer_dropped_mid_stream() {
    for_each(10, peer_dropped_mid_stream);
}

#[test]
fn bad_hello_length_is_refused() {
    let mut framed = (1u32 << 30).to_le_bytes().to_vec();
    framed.extend_from_slice(b"tiny");
    // Over a real TCP socket and a real Unix socket, as the server reads it.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    c.write_all(&framed).expect("write");
    let (mut s, _) = listener.accept().expect("accept");
    assert_eq!(
        read_raw_hello(&mut s, 4096).expect_err("too long").kind(),
        std::io::ErrorKind::InvalidData
    );

    let (mut c, mut s) = UnixStream::pair().expect("pair");
    c.write_all(&framed).expect("write");
    assert_eq!(
        read_raw_hello(&mut s, 4096).expect_err("too long").kind(),
        std::io::ErrorKind::InvalidData
    );

    // A hello cut short by a vanished client is an error, not a hang.
    let (mut c, mut s) = UnixStream::pair().expect("pair");
    c.write_all(&10u32.to_le_bytes()).expect("write");
    c.write_all(b"abc").expect("write");
    drop(c);
    assert_eq!(
        read_raw_hello(&mut s, 4096).expect_err("short").kind(),
        std::io::ErrorKind::UnexpectedEof
    );
}

#[test]
fn shm_corrupted_incoming_head_is_a_protocol_error() {
    within(10, "corrupt head", || {
        let (mut c, s) = shm_pair_raw(64 * 1024);
        c.send(&[b"fine"]).expect("send");
        s.debug_set_peer_indices(Some(u64::MAX / 2), None);
        let mut s = s;
        let mut buf = [0u8; 4];
        let err = s.recv_exact(&mut buf).expect_err("bad head");
        assert!(matches!(err, TransportError::Protocol(_)), "got {err:?}");

        // Head moving backwards is refused too.
        let (mut c, mut s) = shm_pair_raw(64 * 1024);
        c.send(&[&[1u8; 100]]).expect("send");
        let mut buf = [0u8; 100];
        s.recv_exact(&mut buf).expect("recv");
        s.debug_set_peer_indices(Some(10), None);
        let err = s.recv_exact(&mut buf[..1]).expect_err("head went back");
        assert!(matches!(err, TransportError::Protocol(_)), "got {err:?}");
    });
}

#[test]
fn shm_corrupted_outgoing_tail_is_a_protocol_error() {
    within(10, "corrupt tail", || {
        let (mut c, _s) = shm_pair_raw(64 * 1024);
        c.debug_set_peer_indices(None, Some(u64::MAX / 3));
        let err = c.send(&[&vec![0u8; 64 * 1024 + 1]]).expect_err("bad tail");
        assert!(matches!(err, TransportError::Protocol(_)), "got {err:?}");
    });
}

#[test]
fn shm_crashed_peer_is_detected_through_the_socket() {
    within(10, "crashed peer", || {
        let (mut c, s) = shm_pair_raw(64 * 1024);
        s.debug_vanish();
        let t0 = Instant::now();
        let mut buf = [0u8; 8];
        let err = c.recv_exact(&mut buf).expect_err("peer vanished");
        assert!(matches!(err, TransportError::Closed), "got {err:?}");
        assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
        // The writer blocked on a full ring notices as well.
        let (mut c, s) = shm_pair_raw(64 * 1024);
        s.debug_vanish();
        let err = c.send(&[&vec![0u8; 256 * 1024]]).expect_err("ring full, peer gone");
        assert!(matches!(err, TransportError::Closed), "got {err:?}");
    });
}

#[test]
fn shm_client_does_not_wait_for_a_slow_server() {
    within(10, "slow server", || {
        let path = temp_sock();
        let listener = UnixListener::bind(&path).expect("bind");
        let cfg = ShmConfig {
            ring_bytes: 64 * 1024,
            spin: Duration::from_micros(10),
        };
        // Connect and send before the server has even accepted.
        let mut c = shm::connect_with(&path, &framed_hello(), &cfg).expect("connect");
        c.send(&[b"early bytes"]).expect("send before accept");
        thread::sleep(Duration::from_millis(100));
        let (mut s, _) = listener.accept().expect("accept");
        assert_eq!(read_raw_hello(&mut s, 1024).expect("hello"), HELLO);
        // The server hands the socket on (here: to a thread, after a pause) before accepting the memfd.
        thread::sleep(Duration::from_millis(100));
        let mut st = ShmTransport::accept_with(s, Duration::ZERO).expect("accept memfd");
        assert_eq!(st.ring_bytes(), 64 * 1024);
        let mut buf = [0u8; 11];
        st.recv_exact(&mut buf).expect("recv");
        assert_eq!(&buf, b"early bytes");
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn shm_setup_without_a_memfd_is_refused() {
    within(10, "no memfd", || {
        let (mut c, s) = UnixStream::pair().expect("pair");
        c.write_all(&[0u8; 16]).expect("write");
        let err = ShmTransport::accept_with(s, Duration::ZERO).err().expect("must refuse");
        assert!(matches!(err, TransportError::Protocol(_)), "got {err:?}");

        // A descriptor that is not a sealed memfd (a socket) is refused as well.
        let (c2, s2) = UnixStream::pair().expect("pair");
        let mut setup = *b"VGPUSHM1\0\0\x01\0\0\0\0\0";
        setup[8..].copy_from_slice(&65536u64.to_le_bytes());
        use std::os::fd::AsRawFd;
        vgpu_transports::fdpass::send_with_fds(&c2, &setup, &[c.as_raw_fd()]).expect("send");
        let err = ShmTransport::accept_with(s2, Duration::ZERO)
            .err()
            .expect("must refuse");
        assert!(matches!(err, TransportError::Protocol(_)), "got {err:?}");
    });
}

#[test]
fn shm_rejects_bad_ring_sizes() {
    let cfg = ShmConfig {
        ring_bytes: 5000,
        spin: Duration::ZERO,
    };
    let err = shm::connect_with(&temp_sock(), &framed_hello(), &cfg)
        .err()
        .expect("not a power of two");
    assert!(
        matches!(err, TransportError::Io(ref e) if e.kind() == std::io::ErrorKind::InvalidInput),
        "{err:?}"
    );
}

/// Runs only as the child of `shm_works_across_processes_and_notices_a_killed_peer`.
#[test]
#[ignore = "helper: run as a child process by another test"]
fn shm_child_process_client() {
    let Some(path) = std::env::var_os("VGPU_TEST_SHM_CHILD") else {
        return;
    };
    let cfg = ShmConfig {
        ring_bytes: 64 * 1024,
        spin: Duration::from_micros(20),
    };
    let mut c = shm::connect_with(std::path::Path::new(&path), &framed_hello(), &cfg).expect("child connect");
    let data = pattern(7, 300 * 1024);
    c.send(&[&data]).expect("child send");
    let mut back = vec![0u8; data.len()];
    c.recv_exact(&mut back).expect("child recv");
    assert!(back == data, "echo differs");
    // Then wait to be killed: the parent checks that a dead process (no goodbye) is noticed.
    let mut one = [0u8; 1];
    let _ = c.recv_exact(&mut one);
}

#[test]
fn shm_works_across_processes_and_notices_a_killed_peer() {
    within(15, "cross-process", || {
        let path = temp_sock();
        let listener = UnixListener::bind(&path).expect("bind");
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", "shm_child_process_client", "--ignored", "--nocapture"])
            .env("VGPU_TEST_SHM_CHILD", &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        let (mut s, _) = listener.accept().expect("accept");
        assert_eq!(read_raw_hello(&mut s, 1024).expect("hello"), HELLO);
        let mut st = ShmTransport::accept_with(s, Duration::from_micros(20)).expect("accept memfd");
        let mut buf = vec![0u8; 300 * 1024];
        st.recv_exact(&mut buf).expect("recv from child");
        assert!(buf == pattern(7, buf.len()), "child's bytes differ");
        st.send(&[&buf]).expect("echo to child");
        // Give the child time to read the echo and block, then kill it without warning.
        thread::sleep(Duration::from_millis(200));
        child.kill().expect("kill");
        let _ = child.wait();
        let t0 = Instant::now();
        let err = st.recv_exact(&mut buf[..1]).expect_err("peer was killed");
        assert!(matches!(err, TransportError::Closed), "got {err:?}");
        assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn shm_passes_descriptors_in_order_and_checks_their_tags() {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    within(15, "descriptor passing", || {
        let (mut client, mut server) = shm_pair(Some(64 * 1024));
        let mut file = tempfile_with(b"region contents");
        client.send_fd(file.as_fd(), 7).expect("send fd");
        client.send(&[b"after"]).expect("send bytes");
        let fd = server.recv_fd(7).expect("recv fd");
        let mut got = std::fs::File::from(fd);
        got.rewind().expect("rewind");
        let mut text = String::new();
        got.read_to_string(&mut text).expect("read");
        assert_eq!(text, "region contents");
        let mut buf = [0u8; 5];
        server.recv_exact(&mut buf).expect("bytes after the descriptor");
        assert_eq!(&buf, b"after");
        // A descriptor with the wrong tag is a protocol violation, not a silent mix-up.
        file.write_all(b"!").expect("write");
        client.send_fd(file.as_fd(), 8).expect("send fd");
        let err = server.recv_fd(9).expect_err("wrong tag");
        assert!(matches!(err, TransportError::Protocol(_)), "got {err:?}");
    });
    // TCP cannot pass descriptors and says so.
    let (mut a, _b) = tcp_pair();
    let file = tempfile_with(b"x");
    assert!(matches!(a.send_fd(file.as_fd(), 1), Err(TransportError::Protocol(_))));
}

fn tempfile_with(contents: &[u8]) -> std::fs::File {
    use std::io::Write;
    let path = std::env::temp_dir().join(format!("vgpu-fd-{}-{}", std::process::id(), contents.len()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("temp file");
    f.write_all(contents).expect("write");
    let _ = std::fs::remove_file(&path);
    f
}
