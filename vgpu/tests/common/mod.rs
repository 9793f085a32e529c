//! What the `vgpu` integration tests share: a `vgpu server` on the emulated backend, started on free TCP and TLS
//! ports, a fresh shared-memory name and a fresh state folder (its TLS identity), killed when dropped.

#![allow(dead_code)] // each test file uses a different part

use std::io::Read;
use std::process::{Child, Command, Stdio};

pub const VGPU: &str = env!("CARGO_BIN_EXE_vgpu");

pub struct Server {
    child: Child,
    /// `host:port` of the TCP endpoint (`tcp_url` adds the scheme).
    pub tcp: String,
    /// The `tls://host:port#sha256=…` endpoint.
    pub tls: String,
    /// The server's state folder (removed when dropped).
    pub state_dir: std::path::PathBuf,
    /// The `shm://` endpoint.
    pub shm: String,
}

impl Server {
    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.tcp)
    }
}

impl Server {
    /// The server's process id (its session workers are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// `host:port` of the TLS endpoint.
    pub fn tls_addr(&self) -> String {
        let rest = self.tls.trim_start_matches("tls://");
        rest.split('#').next().unwrap_or(rest).to_string()
    }
    /// The fingerprint the TLS endpoint pins.
    pub fn tls_sha256(&self) -> String {
        self.tls
            .split_once("#sha256=")
            .map(|(_, p)| p.to_string())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Starts `vgpu server --backend emulated` with `extra` arguments; returns once it says it is ready. The shim
/// folder is kept off its LD_LIBRARY_PATH: the server must load no shim, whatever the test process has.
pub fn start(extra: &[&str]) -> Server {
    start_named(&shm_name(), extra)
}

/// A fresh shared-memory endpoint name (for a server whose name others must know before it starts).
pub fn shm_name() -> String {
    format!("test-{}-{}", std::process::id(), rand_tag())
}

/// `start` with the shared-memory endpoint `shm://{shm}`.
pub fn start_named(shm: &str, extra: &[&str]) -> Server {
    start_with_env(shm, extra, &[])
}

/// `start_named` with these environment variables set for the server (`VGPU_EMULATED_DEVICES`, ...).
pub fn start_with_env(shm: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let shm = shm.to_string();
    let state_dir = std::env::temp_dir().join(format!("vgpu-test-state-{shm}"));
    let mut child = Command::new(VGPU)
        .args(["server", "--tcp", "127.0.0.1:0", "--tls", "127.0.0.1:0", "--shm", &shm])
        .args(["--backend", "emulated", "--state-dir"])
        .arg(&state_dir)
        .args(extra)
        .envs(env.iter().copied())
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
    let endpoint = |scheme: &str| {
        text.split("ready on ")
            .nth(1)
            .and_then(|r| r.split(", ").find(|e| e.starts_with(scheme)))
            .map(|e| e.trim().to_string())
    };
    let (Some(tcp), Some(tls)) = (endpoint("tcp://"), endpoint("tls://")) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server printed no tcp:// or tls:// endpoint: {text}");
    };
    let tcp = tcp.trim_start_matches("tcp://").to_string();
    Server {
        child,
        tcp,
        tls,
        state_dir,
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

/// The client bytes `vgpu __multi-check --bench-mib N` reports for its timed copies of device 0 to device 1.
pub fn bench_bytes<S: AsRef<str>>(lines: &[S]) -> u64 {
    lines
        .iter()
        .find_map(|l| l.as_ref().split("client transport bytes during it: ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no bench line in {:?}",
                lines.iter().map(|l| l.as_ref()).collect::<Vec<_>>()
            )
        })
}

/// A new tenant named `name` and an API key of it: (tenant id, key secret).
pub fn tenant_with_key(admin: &vgpu_control::client::Client, name: &str) -> (String, String) {
    let tenant = admin
        .call("POST", "/v1/tenants", Some(&serde_json::json!({ "name": name })))
        .expect("tenant");
    let tenant_id = tenant["id"].as_str().expect("id").to_string();
    let key = admin
        .call(
            "POST",
            &format!("/v1/tenants/{tenant_id}/keys"),
            Some(&serde_json::json!({})),
        )
        .expect("key")["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    (tenant_id, key)
}
