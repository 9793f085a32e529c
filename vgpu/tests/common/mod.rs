//! What the `vgpu` integration tests share: a `vgpu server` on the emulated backend, started on a free port and a
//! fresh shared-memory name, killed when dropped.

#![allow(dead_code)] // each test file uses a different part

use std::io::Read;
use std::process::{Child, Command, Stdio};

pub const VGPU: &str = env!("CARGO_BIN_EXE_vgpu");

pub struct Server {
    child: Child,
    /// `host:port` of the TCP endpoint (`tcp_url` adds the scheme).
    pub tcp: String,
    /// The `shm://` endpoint.
    pub shm: String,
}

impl Server {
    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.tcp)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `vgpu server --backend emulated` with `extra` arguments; returns once it says it is ready. The shim
/// folder is kept off its LD_LIBRARY_PATH: the server must load no shim, whatever the test process has.
pub fn start(extra: &[&str]) -> Server {
    let shm = format!("test-{}-{}", std::process::id(), rand_tag());
    let mut child = Command::new(VGPU)
        .args(["server", "--tcp", "127.0.0.1:0", "--shm", &shm, "--backend", "emulated"])
        .args(extra)
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .spawn()
        .expect("vgpu server starts");
    let mut out = child.stdout.take().expect("stdout");
    let mut text = String::new();
    let mut buf = [0u8; 256];
    while !text.contains("ready on") || !text.ends_with('\n') {
        let n = out.read(&mut buf).expect("server output");
        assert!(n > 0, "server exited before it was ready: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    std::thread::spawn(move || while out.read(&mut buf).is_ok_and(|n| n > 0) {});
    let tcp = text
        .split("ready on tcp://")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("tcp endpoint")
        .trim()
        .to_string();
    Server {
        child,
        tcp,
        shm: format!("shm://{shm}"),
    }
}

/// A number that differs between runs, for unique names.
pub fn rand_tag() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7)
}
