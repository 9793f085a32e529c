//! CUDA IPC through `vgpu server` (emulated backend), process to process through the shim: memory one process
//! exports is opened by another of the same tenant (over either transport, the worker processes sharing it
//! through the server's IPC registry), and refused to a process of another tenant (control-plane tickets).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use serde_json::json;
use vgpu_control::client::Client;

mod common;

use common::{start, VGPU};

const ADMIN_KEY: &str = "vgpu_testadmin_0123456789abcdefghijklmnop";
const NODE_TOKEN: &str = "node-token-for-tests-0123456789";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vgpu run ... -- vgpu __ipccheck ARGS` with the given environment.
fn ipccheck(server: &str, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(VGPU);
    cmd.args(["run", "--server", server, "--", VGPU, "__ipccheck"])
        .args(args)
        .env_remove("VGPU_KEY")
        .env_remove("VGPU_TICKET")
        .env_remove("VGPU_CONTROL_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// An exporting process, running until it is told to finish, and its handle.
struct Exporter {
    child: Killed,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    handle: String,
}

impl Exporter {
    fn start(mut cmd: Command) -> Exporter {
        let mut child = Killed(
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("exporter starts"),
        );
        let mut lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
        let first = lines.next().expect("a line").expect("output");
        let handle = first
            .strip_prefix("handle ")
            .unwrap_or_else(|| panic!("no handle: {first}"))
            .to_string();
        Exporter { child, lines, handle }
    }

    /// Tells the exporter to finish; returns what its memory held then.
    fn finish(mut self) -> String {
        let mut stdin = self.child.0.stdin.take().expect("stdin");
        stdin.write_all(b"done\n").expect("tell the exporter");
        drop(stdin);
        let last = self.lines.next().expect("a line").expect("output");
        let status = self.child.0.wait().expect("exporter exits");
        assert!(status.success(), "exporter: {last}");
        last
    }
}

fn open(cmd: &mut Command) -> String {
    let out = cmd.output().expect("opener runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn memory_is_shared_between_processes_over_both_transports() {
    let server = start(&[]);
    let exporter = Exporter::start(ipccheck(&server.tcp_url(), &[], &["export"]));
    // The first opener reads the exporter's bytes and writes its own; the second reads those.
    for (endpoint, seen) in [(server.shm.clone(), "exported"), (server.tcp_url(), "opened!!")] {
        let text = open(&mut ipccheck(&endpoint, &[], &["open", &exporter.handle]));
        assert!(text.contains("open ok"), "{endpoint}: {text}");
        assert!(text.contains(&format!("read {seen}")), "{endpoint}: {text}");
        assert!(text.contains("close ok"), "{endpoint}: {text}");
    }
    // What the openers wrote is in the exporter's memory.
    let handle = exporter.handle.clone();
    assert_eq!(exporter.finish(), "after opened!!");
    // Once the exporting process is gone (its session ends when its worker sees the connection close), its handle
    // opens nowhere: the registry withdrew the export with the session.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = open(&mut ipccheck(&server.tcp_url(), &[], &["open", &handle]));
        if text.contains("open cuIpcOpenMemHandle failed: CUDA_ERROR_INVALID_VALUE") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the exporter's handle still opens after it exited: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // A handle that no server issued.
    let bogus = "00".repeat(64);
    let text = open(&mut ipccheck(&server.tcp_url(), &[], &["open", &bogus]));
    assert!(text.contains("CUDA_ERROR_INVALID_VALUE"), "{text}");
}

fn start_until(mut cmd: Command, marker: &str) -> (Killed, String) {
    let mut child = Killed(cmd.stdout(Stdio::piped()).spawn().expect("starts"));
    let mut lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    loop {
        let line = lines.next().expect("a line before the marker").expect("output");
        if line.contains(marker) {
            std::thread::spawn(move || for _ in lines {});
            return (child, line);
        }
    }
}

#[test]
fn another_tenants_process_cannot_open_the_memory() {
    let dir = std::env::temp_dir().join(format!("vgpu-ipc-test-{}", std::process::id()));
    let mut cmd = Command::new(VGPU);
    cmd.args(["control", "--listen", "127.0.0.1:0", "--store", "memory", "--data-dir"])
        .arg(&dir)
        .env("VGPU_ADMIN_KEY", ADMIN_KEY)
        .env("VGPU_NODE_TOKEN", NODE_TOKEN);
    let (_control, line) = start_until(cmd, "listening on ");
    let url = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("url")
        .to_string();
    let shm = format!("ipc-test-{}", std::process::id());
    let mut cmd = Command::new(VGPU);
    // TLS on loopback, its certificate and the server's credential in the test's own folder.
    cmd.args(["server", "--backend", "emulated", "--tcp", "127.0.0.1:0", "--shm", &shm])
        .args(["--tls", "127.0.0.1:0", "--state-dir"])
        .arg(dir.join("server-state"))
        .args(["--control", &url, "--name", "ipc-node"])
        .env("VGPU_NODE_TOKEN", NODE_TOKEN)
        .env("VGPU_SERVER_CREDENTIAL", dir.join("server.credential"));
    let (_server, _) = start_until(cmd, "ready on ");

    let admin = Client::new(&url, Some(ADMIN_KEY));
    let gpus = admin.call("GET", "/v1/gpus", None).expect("gpus");
    let gpu = gpus["gpus"][0]["uuid"].clone();
    let mut keys = Vec::new();
    for name in ["alice", "bob"] {
        let (id, key) = common::tenant_with_key(&admin, name);
        let slice = json!({"tenant_id": id, "gpu_uuid": gpu, "memory_limit_mib": 256, "compute_share": 0.4});
        admin.call("POST", "/v1/assignments", Some(&slice)).expect("assignment");
        keys.push(key);
    }
    let endpoint = format!("shm://{shm}");
    let as_tenant =
        |key: &str, args: &[&str]| ipccheck(&endpoint, &[("VGPU_KEY", key), ("VGPU_CONTROL_URL", &url)], args);
    let exporter = Exporter::start(as_tenant(&keys[0], &["export"]));
    let bob = open(&mut as_tenant(&keys[1], &["open", &exporter.handle]));
    assert!(
        bob.contains("open cuIpcOpenMemHandle failed: CUDA_ERROR_INVALID_VALUE"),
        "another tenant: {bob}"
    );
    let alice = open(&mut as_tenant(&keys[0], &["open", &exporter.handle]));
    assert!(alice.contains("open ok") && alice.contains("read exported"), "{alice}");
    assert_eq!(exporter.finish(), "after opened!!");
    let _ = std::fs::remove_dir_all(dir);
}
