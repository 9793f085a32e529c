//! End-to-end tests of `vgpu server` on the emulated backend: the bundled sample over every transport, and the
//! server's handling of bad clients (wrong version, wrong key, malformed frames) without harm to other sessions.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use vgpu_dataplane::handshake::*;
use zerocopy::{FromBytes, IntoBytes};

mod common;

use common::{start, VGPU};

fn sample(endpoint: &str, key: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(VGPU);
    cmd.args(["run", "--server", endpoint, "--", VGPU, "sample"]);
    if let Some(k) = key {
        cmd.env("VGPU_KEY", k);
    }
    cmd.output().expect("vgpu run")
}

#[test]
fn sample_runs_over_tcp_tls_and_shared_memory() {
    let server = start(&[]);
    for endpoint in [server.tcp_url(), server.tls.clone(), server.shm.clone()] {
        let out = sample(&endpoint, None);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{endpoint}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("emulated backend") && text.contains("verified byte for byte"),
            "{endpoint}: {text}"
        );
    }
}

/// Sends a raw hello; returns the server's welcome header and message.
fn hello(addr: &str, version: u32, credential: &[u8]) -> (Welcome, String, TcpStream) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let h = Hello {
        magic: MAGIC,
        version,
        mode: MODE_NEW_SESSION,
        pid: 1,
        ..Default::default()
    };
    s.write_all(&encode_hello(&h, credential)).expect("send hello");
    let mut head = [0u8; std::mem::size_of::<Welcome>()];
    s.read_exact(&mut head).expect("welcome");
    let w = Welcome::read_from_bytes(&head[..]).expect("welcome layout");
    let mut tail = vec![0u8; welcome_tail_len(&w).expect("sane welcome")];
    s.read_exact(&mut tail).expect("welcome tail");
    let (_, msg) = decode_welcome_tail(&w, &tail).expect("tail");
    (w, msg, s)
}

#[test]
fn version_mismatch_and_wrong_key_are_refused_clearly() {
    let server = start(&["--key", "s3cret"]);
    let (w, msg, _) = hello(&server.tcp, PROTOCOL_VERSION + 1, b"s3cret");
    assert_eq!(w.status, STATUS_VERSION_MISMATCH);
    assert!(msg.contains("version"), "{msg}");
    let (w, msg, _) = hello(&server.tcp, PROTOCOL_VERSION, b"wrong");
    assert_eq!(w.status, STATUS_UNAUTHORIZED, "{msg}");
    let out = sample(&server.tcp_url(), Some("wrong"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sample(&server.tcp_url(), Some("s3cret"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn malformed_frame_ends_only_that_session() {
    let server = start(&[]);
    let (w, _, mut s) = hello(&server.tcp, PROTOCOL_VERSION, b"");
    assert_eq!(w.status, STATUS_OK);
    assert_eq!(w.backend, BACKEND_EMULATED);
    // A frame whose header names an unknown operation.
    let bad = vgpu_dataplane::wire::RequestHeader {
        len: 0,
        op: 0x7777,
        flags: 0,
        body_len: 0,
        seq: 1,
    };
    s.write_all(bad.as_bytes()).expect("send");
    let mut one = [0u8; 1];
    let n = s.read(&mut one).unwrap_or(0);
    assert_eq!(n, 0, "the server must close a session that sent a malformed frame");
    // Another client is unaffected.
    let out = sample(&server.tcp_url(), None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn unreachable_server_gives_no_device_and_a_clear_message() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = sample(&format!("tcp://127.0.0.1:{port}"), None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the GPU server"), "{err}");
    assert!(err.contains("CUDA_ERROR_NO_DEVICE"), "{err}");
}
