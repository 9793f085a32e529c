//! Helpers shared by the transport test files: RDMA pairs across two network namespaces (as tests/rdma/run-vm.sh
//! sets them up), so the client and the server half of a pair sit on different "hosts" joined by a veth link.

#![allow(dead_code)]

use std::net::TcpListener;
use std::thread;

use vgpu_transports::rdma::{self, RdmaConfig, RdmaTransport};
use vgpu_transports::read_raw_hello;

pub const HELLO: &[u8] = b"conformance hello";

pub fn framed_hello() -> Vec<u8> {
    let mut v = (HELLO.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(HELLO);
    v
}

/// Where RDMA tests run: `VGPU_TEST_RDMA_ADDR` is the server half's IP address on an RDMA-capable interface
/// (rxe over veth in the VM), `VGPU_TEST_RDMA_NETNS` the network namespace (a file such as /run/netns/srv) that the
/// server half's thread joins first. Without the address, RDMA tests are skipped (no device on CI hosts).
pub fn rdma_env() -> Option<(String, Option<String>)> {
    let addr = std::env::var("VGPU_TEST_RDMA_ADDR").ok().filter(|a| !a.is_empty())?;
    let netns = std::env::var("VGPU_TEST_RDMA_NETNS").ok().filter(|n| !n.is_empty());
    Some((addr, netns))
}

/// Says that an RDMA test did not run, and why.
pub fn skip(test: &str) {
    eprintln!("{test}: skipped (no RDMA test network: set VGPU_TEST_RDMA_ADDR, see tests/rdma/run-vm.sh)");
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a descriptor we hold open; it changes only this thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// A listener for the server half: bound to the test address inside the server namespace. Returns it and the
/// `host:port` clients dial.
pub fn rdma_listener() -> (TcpListener, String) {
    let (addr, netns) = rdma_env().expect("RDMA test network");
    let (tx, rx) = std::sync::mpsc::channel();
    // Sockets belong to the namespace of the thread that creates them, so bind on a thread that joined it.
    thread::spawn(move || {
        if let Some(ns) = &netns {
            enter_netns(ns);
        }
        let l = TcpListener::bind((addr.as_str(), 0)).expect("bind rdma test listener");
        let _ = tx.send(l);
    });
    let l = rx.recv().expect("listener thread");
    let dial = l.local_addr().expect("addr").to_string();
    (l, dial)
}

/// Accepts one client on `listener` and sets up the server end, on a thread inside the server namespace (the
/// device is chosen by the connection's local address, so it is the server-side rxe link).
pub fn rdma_accept(listener: TcpListener, cfg: RdmaConfig) -> thread::JoinHandle<RdmaTransport> {
    let netns = rdma_env().and_then(|(_, n)| n);
    thread::spawn(move || {
        if let Some(ns) = &netns {
            enter_netns(ns);
        }
        let (mut s, _) = listener.accept().expect("accept");
        assert_eq!(read_raw_hello(&mut s, 1024).expect("hello"), HELLO);
        RdmaTransport::accept_with(s, &cfg).expect("server RDMA transport")
    })
}

/// A connected RDMA pair (client, server) with the given tunables (the server takes the client's ring size).
pub fn rdma_pair_raw(cfg: &RdmaConfig) -> (RdmaTransport, RdmaTransport) {
    let (listener, dial) = rdma_listener();
    let server = rdma_accept(listener, cfg.clone());
    let client = rdma::connect_with(&dial, &framed_hello(), cfg).expect("client RDMA connect");
    let server = server.join().expect("server thread");
    (client, server)
}
