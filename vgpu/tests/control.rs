//! The control plane and the GPU server together (emulated backend): a tenant's key yields a ticket that names the
//! server's TLS endpoint and certificate fingerprint (the shim pins it; no fingerprint is given), the server
//! shows only the assigned GPU, enforces the slice's memory limit, reports usage that then shows in the API, and
//! ends the session when the assignment is revoked. Also `vgpu admin` against a live control plane.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vgpu_control::client::Client;

mod common;

const VGPU: &str = env!("CARGO_BIN_EXE_vgpu");
const ADMIN_KEY: &str = "vgpu_testadmin_0123456789abcdefghijklmnop";
const NODE_TOKEN: &str = "node-token-for-tests-0123456789";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd`, reads its stdout until a line contains `marker`, and returns that line with the child.
fn start_until(mut cmd: Command, marker: &str) -> (Killed, String, Vec<String>) {
    let mut child = Killed(cmd.stdout(Stdio::piped()).spawn().expect("starts"));
    let out = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("exited before '{marker}': {seen:?}"))
            .expect("output");
        if line.contains(marker) {
            std::thread::spawn(move || for _ in lines {});
            return (child, line, seen);
        }
        seen.push(line);
    }
}

fn control_plane() -> (Killed, String) {
    // One data folder per control plane: the tests run at once, and two control planes generating their HTTPS
    // certificate into one folder read each other's half-written files.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vgpu-control-test-{}-{n}", std::process::id()));
    let mut cmd = Command::new(VGPU);
    cmd.args(["control", "--listen", "127.0.0.1:0", "--store", "memory", "--data-dir"])
        .arg(&dir)
        .env("VGPU_ADMIN_KEY", ADMIN_KEY)
        .env("VGPU_NODE_TOKEN", NODE_TOKEN);
    let (child, line, _) = start_until(cmd, "listening on ");
    let url = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("url")
        .to_string();
    (child, url)
}

/// A folder removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A GPU server registered with the control plane at `url`, serving TLS on loopback (which it advertises): the
/// server, its start-up lines and its certificate's fingerprint.
fn gpu_server(url: &str, shm: &str, state: &TempDir) -> (Killed, Vec<String>, String) {
    gpu_server_as(url, shm, state, "test-node", &[])
}

/// `gpu_server` registered under `name`, with `extra` arguments.
fn gpu_server_as(url: &str, shm: &str, state: &TempDir, name: &str, extra: &[&str]) -> (Killed, Vec<String>, String) {
    let mut cmd = Command::new(VGPU);
    cmd.args(["server", "--backend", "emulated", "--tcp", "127.0.0.1:0", "--shm", shm])
        .args(["--tls", "127.0.0.1:0", "--state-dir"])
        .arg(&state.0)
        .args(["--control", url, "--name", name])
        .args(extra)
        .env("VGPU_NODE_TOKEN", NODE_TOKEN)
        // The server's own credential, in the test's temp folder rather than the user's state folder.
        .env(
            "VGPU_SERVER_CREDENTIAL",
            std::env::temp_dir().join(format!("{shm}.credential")),
        );
    let (child, _, banner) = start_until(cmd, "ready on ");
    let pin = banner
        .iter()
        .find_map(|l| l.split("TLS certificate sha256=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .expect("the server prints its TLS fingerprint")
        .to_string();
    (child, banner, pin)
}

/// Runs `vgpu __memcheck` through the shim as the tenant. The client is given no TLS fingerprint: over `tls://` it
/// pins the one the ticket carries (the server registered it), or refuses to connect.
fn memcheck(url: &str, key: &str, server: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(VGPU);
    cmd.args(["run", "--control", url, "--"])
        .arg(VGPU)
        .arg("__memcheck")
        .args(args)
        .env("VGPU_KEY", key)
        .env_remove("VGPU_TLS_FINGERPRINT")
        .env_remove("VGPU_SERVER")
        .env_remove("VGPU_TICKET");
    if let Some(s) = server {
        cmd.env("VGPU_SERVER", s);
    }
    cmd.output().expect("vgpu run")
}

fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name).map(str::trim))
        .unwrap_or_else(|| panic!("no '{name}' in: {out}"))
}

/// Polls `f` until it returns Some, for up to `secs` seconds.
fn wait_for<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Setup {
    _control: Killed,
    _server: Killed,
    url: String,
    shm: String,
    admin: Client,
    tenant_id: String,
    key: String,
    assignment_id: String,
    banner: Vec<String>,
    /// The server's TLS certificate fingerprint.
    pin: String,
    _state: TempDir,
}

fn setup(slice_mib: u64) -> Setup {
    let (control, url) = control_plane();
    let shm = format!("ctl-test-{}-{slice_mib}", std::process::id());
    let state = TempDir(std::env::temp_dir().join(format!("vgpu-control-test-state-{shm}")));
    let (server, banner, pin) = gpu_server(&url, &shm, &state);
    let admin = Client::new(&url, Some(ADMIN_KEY));
    let (tenant_id, key) = common::tenant_with_key(&admin, "alice");
    let gpus = admin.call("GET", "/v1/gpus", None).expect("gpus");
    let gpu = gpus["gpus"][0].clone();
    assert_eq!(gpu["server_name"], "test-node", "{gpus}");
    assert!(gpu["uuid"].as_str().expect("uuid").starts_with("GPU-"), "{gpu}");
    let assignment = admin
        .call(
            "POST",
            "/v1/assignments",
            Some(
                &json!({"tenant_id": tenant_id, "gpu_uuid": gpu["uuid"], "memory_limit_mib": slice_mib,
                         "compute_share": 0.5}),
            ),
        )
        .expect("assignment");
    Setup {
        _control: control,
        _server: server,
        url,
        shm: format!("shm://{shm}"),
        admin,
        assignment_id: assignment["id"].as_str().expect("id").to_string(),
        tenant_id,
        key,
        banner,
        pin,
        _state: state,
    }
}

#[test]
fn tenant_key_ticket_memory_limit_and_usage_end_to_end() {
    let s = setup(256);
    assert!(
        s.banner.iter().any(|l| l.contains("registered with the control plane")),
        "{:?}",
        s.banner
    );

    // The server registered its TLS certificate's fingerprint; the tenant's tickets carry it with the address.
    let servers = s.admin.call("GET", "/v1/servers", None).expect("servers");
    assert_eq!(servers["servers"][0]["tls_cert_sha256"], s.pin.as_str(), "{servers}");
    let grant = Client::new(&s.url, Some(&s.key))
        .call("POST", "/v1/tickets", Some(&json!({})))
        .expect("ticket");
    assert_eq!(grant["gpus"][0]["tls_cert_sha256"], s.pin.as_str(), "{grant}");
    assert!(
        grant["gpus"][0]["server_address"]
            .as_str()
            .is_some_and(|a| a.starts_with("tls://127.0.0.1:")),
        "{grant}"
    );

    // Over TLS, the server and its pin come from the ticket; over shared memory, VGPU_SERVER picks the endpoint.
    for server in [None, Some(s.shm.as_str())] {
        let out = memcheck(&s.url, &s.key, server, &["200", "100", "40"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{server:?}: {text} {err}");
        assert_eq!(field(&text, "devices"), "1", "{text}");
        assert_eq!(
            field(&text, "total_mib"),
            "256",
            "cuMemGetInfo reports the slice: {text}"
        );
        assert_eq!(field(&text, "free_mib"), "256", "{text}");
        let allocs: Vec<&str> = text.lines().filter(|l| l.starts_with("alloc ")).collect();
        assert_eq!(
            allocs,
            [
                "alloc 200 ok",
                "alloc 100 cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY",
                "alloc 40 ok"
            ],
            "{text}"
        );
    }

    // Both sessions ended; the server reports their usage at once.
    let usage = wait_for(20, || {
        let sessions = s
            .admin
            .call(
                "GET",
                &format!("/v1/sessions?tenant_id={}&status=ended", s.tenant_id),
                None,
            )
            .ok()?;
        let u = s
            .admin
            .call("GET", &format!("/v1/usage?tenant_id={}", s.tenant_id), None)
            .ok()?;
        (sessions["sessions"].as_array()?.len() == 2 && u["tenants"][0]["gpu_seconds"].as_f64()? > 0.0).then_some(u)
    })
    .expect("usage of both sessions reaches the control plane");
    let t = &usage["tenants"][0];
    assert!(t["gpu_seconds"].as_f64().expect("gpu_seconds") > 0.0, "{usage}");
    assert!(t["memory_gib_hours"].as_f64().expect("memory") >= 0.0, "{usage}");

    // The tenant sees its own usage with its key (exchanged for an access token).
    let tenant = Client::new(&s.url, Some(&s.key));
    let own = tenant.call("GET", "/v1/usage", None).expect("tenant's usage");
    assert_eq!(own["tenants"][0]["tenant_id"], s.tenant_id.as_str(), "{own}");
}

#[test]
fn bad_credentials_are_refused_with_the_reason() {
    let s = setup(128);
    // A key the control plane does not know: no ticket, cuInit fails with NOT_PERMITTED and says why.
    let out = memcheck(&s.url, "vgpu_nosuchkey_0123456789abcdefghij", None, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused VGPU_KEY"), "{err}");
    assert!(err.contains("CUDA_ERROR_NOT_PERMITTED"), "{err}");

    // A static key instead of a ticket, straight to the server.
    let mut cmd = Command::new(VGPU);
    let out = cmd
        .args(["run", "--server", &s.shm, "--"])
        .arg(VGPU)
        .arg("__memcheck")
        .env("VGPU_KEY", "some-static-key")
        .env_remove("VGPU_CONTROL_URL")
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("takes control-plane tickets"),
        "{err}"
    );

    // A forged ticket (valid shape, wrong signature).
    let forged = "eyJhbGciOiJFZERTQSJ9.eyJ0eXAiOiJ2Z3B1LXRpY2tldCJ9.c2lnbmF0dXJl";
    let out = Command::new(VGPU)
        .args(["run", "--server", &s.shm, "--"])
        .arg(VGPU)
        .arg("__memcheck")
        .env("VGPU_TICKET", forged)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("ticket was refused"), "{err}");

    // A ticket opens one session only.
    let grant = vgpu_control::client::request_ticket(&s.url, &s.key).expect("ticket");
    let run_with_ticket = || {
        Command::new(VGPU)
            .args(["run", "--server", &s.shm, "--"])
            .arg(VGPU)
            .arg("__memcheck")
            .env("VGPU_TICKET", &grant.ticket)
            .output()
            .expect("runs")
    };
    let first = run_with_ticket();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let second = run_with_ticket();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && err.contains("already opened a session"),
        "{err}"
    );
}

#[test]
fn revoking_the_assignment_ends_the_live_session() {
    let s = setup(512);
    let mut cmd = Command::new(VGPU);
    cmd.args(["run", "--control", &s.url, "--"])
        .arg(VGPU)
        .args(["__memcheck", "--hold-ms", "12000", "64"])
        .env("VGPU_KEY", &s.key)
        .env_remove("VGPU_TLS_FINGERPRINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("runs");
    // The server's heartbeat shows the session's 64 MiB on the GPU while it holds them...
    let used = |mib: u64| {
        wait_for(15, || {
            let v = s.admin.call("GET", "/v1/gpus", None).ok()?;
            (v["gpus"][0]["memory_used_mib"].as_u64()? == mib).then_some(())
        })
    };
    used(64).expect("the GPU shows the session's memory");
    s.admin
        .call("DELETE", &format!("/v1/assignments/{}", s.assignment_id), None)
        .expect("revoke");
    // ...and none once the revocation reached the server (at its next heartbeat) and it ended the worker.
    used(0).expect("the server ended the session and freed its memory");
    let status = wait_for(30, || child.try_wait().ok().flatten()).expect("the program ends");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert!(out.contains("alloc 64 ok"), "{out}");
    // The program wakes from its hold to a session that is gone: its next call fails.
    assert!(
        !out.contains("after_hold ok"),
        "the session outlived its revoked assignment: {out} {err} {status:?}"
    );
}

#[test]
fn admin_cli_talks_to_a_live_control_plane() {
    let (_control, url) = control_plane();
    let out = Command::new(VGPU)
        .args(["admin", "--url", &url, "tenant", "create", "bob"])
        .env("VGPU_ADMIN_KEY", ADMIN_KEY)
        .output()
        .expect("vgpu admin");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["name"], "bob");
    let out = Command::new(VGPU)
        .args(["admin", "--url", &url, "tenant", "list"])
        .env("VGPU_ADMIN_KEY", "vgpu_wrong_0123456789abcdefghijklmnop")
        .output()
        .expect("vgpu admin");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");
}

#[test]
fn a_ticket_over_two_servers_lets_them_copy_to_each_other_directly() {
    let (_control, url) = control_plane();
    let tag = std::process::id();
    let names = [format!("ctl-peer-a-{tag}"), format!("ctl-peer-b-{tag}")];
    let states = names
        .clone()
        .map(|n| TempDir(std::env::temp_dir().join(format!("vgpu-control-test-state-{n}"))));
    // Neither server lists the other (no --peer): only the ticket, signed by the control plane, lets them.
    let _a = gpu_server_as(&url, &names[0], &states[0], "node-a", &["--device-identity", "1"]);
    let _b = gpu_server_as(&url, &names[1], &states[1], "node-b", &["--device-identity", "2"]);
    let admin = Client::new(&url, Some(ADMIN_KEY));
    let (tenant_id, key) = common::tenant_with_key(&admin, "bob");
    for node in ["node-a", "node-b"] {
        let gpus = wait_for(10, || {
            let all = admin.call("GET", "/v1/gpus", None).ok()?;
            all["gpus"]
                .as_array()?
                .iter()
                .find(|g| g["server_name"] == node)
                .cloned()
        })
        .unwrap_or_else(|| panic!("{node} registered no GPU"));
        admin
            .call(
                "POST",
                "/v1/assignments",
                Some(
                    &json!({"tenant_id": tenant_id, "gpu_uuid": gpus["uuid"], "memory_limit_mib": 256,
                             "compute_share": 0.5}),
                ),
            )
            .expect("assignment");
    }
    let out = Command::new(VGPU)
        .args(["run", "--control", &url, "--"])
        .arg(VGPU)
        .args(["__multi-check", "--bench-mib", "16"])
        .env("VGPU_KEY", &key)
        .env_remove("VGPU_TLS_FINGERPRINT")
        .env_remove("VGPU_SERVER")
        .env_remove("VGPU_TICKET")
        .output()
        .expect("vgpu run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("devices: 2"), "{text}");
    for (x, y) in [(0, 1), (1, 0)] {
        let want = format!("peer copy {x} -> {y}: CUDA_SUCCESS verified");
        assert!(text.lines().any(|l| l == want), "no '{want}' in {text}");
    }
    let lines: Vec<&str> = text.lines().collect();
    let bytes = common::bench_bytes(&lines);
    assert!(
        bytes < 64 << 10,
        "{bytes} client bytes: the copies were relayed through the client"
    );
}
