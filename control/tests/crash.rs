//! Crash test: writers create tenants and keys through the API of a child control plane on sled, which is
//! killed with SIGKILL mid-writes and restarted, round after round; every acknowledged write must survive.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vgpu_control::client::Client;

const ADMIN: &str = "vgpu_admincrash_0123456789abcdefghijklmnop";
/// Rounds per run; `VGPU_CRASH_ROUNDS` raises it for a soak.
fn rounds() -> usize {
    std::env::var("VGPU_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}
const WRITERS: usize = 4;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &std::path::Path, port: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_vgpu-control"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            "sled",
            // Loopback only: the TLS path is covered by tests/security.rs and tests/replicas.rs.
            "--insecure-http",
            "--data-dir",
        ])
        .arg(dir)
        .env("VGPU_ADMIN_KEY", ADMIN)
        .env("VGPU_NODE_TOKEN", "vgpun_crash_0123456789abcdef")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Client::new(&url, None).call("GET", "/v1/health", None).is_err() {
        assert!(
            Instant::now() < deadline,
            "control plane did not come up (or failed to reopen its store)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Asserts every acknowledged tenant and key is present.
fn check(url: &str, tenants: &[String], keys: &[(String, String)], round: usize) {
    // One token for all checks: the admin key itself would cost an argon2 verification per request.
    let tok = Client::new(url, None)
        .call("POST", "/v1/auth/token", Some(&serde_json::json!({"api_key": ADMIN})))
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let c = Client::new(url, Some(&tok));
    for t in tenants {
        assert!(
            c.call("GET", &format!("/v1/tenants/{t}"), None).is_ok(),
            "after kill {round}: acknowledged tenant {t} lost"
        );
    }
    for (t, k) in keys {
        let listed = c
            .call("GET", &format!("/v1/tenants/{t}/keys"), None)
            .unwrap()
            .to_string();
        assert!(
            listed.contains(k.as_str()),
            "after kill {round}: acknowledged key {k} lost"
        );
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let dir = std::env::temp_dir().join(format!("vgpu-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // (tenant id, key id) of every acknowledged create.
    let acked_tenants = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked_keys = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let mut keys_checked = 0;
    for round in 0..rounds() {
        let port = free_port();
        let mut child = start(&dir, port);
        let url = format!("http://127.0.0.1:{port}");
        // Everything acknowledged in earlier rounds survived the kill: every tenant, and the keys of the last
        // round (all keys are checked once more at the end; checking all of them every round is quadratic).
        check(
            &url,
            &acked_tenants.lock().unwrap(),
            &acked_keys.lock().unwrap()[keys_checked..],
            round,
        );
        keys_checked = acked_keys.lock().unwrap().len();
        let stop = Arc::new(AtomicBool::new(false));
        let tok = Client::new(&url, None)
            .call("POST", "/v1/auth/token", Some(&serde_json::json!({"api_key": ADMIN})))
            .unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (url, stop, at, ak, tok) = (
                    url.clone(),
                    stop.clone(),
                    acked_tenants.clone(),
                    acked_keys.clone(),
                    tok.clone(),
                );
                std::thread::spawn(move || {
                    let c = Client::new(&url, Some(&tok));
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(t) = c.call(
                            "POST",
                            "/v1/tenants",
                            Some(&serde_json::json!({"name": format!("r{round}-w{w}-{i}")})),
                        ) else {
                            break;
                        };
                        let tid = t["id"].as_str().unwrap().to_string();
                        at.lock().unwrap().push(tid.clone());
                        let Ok(k) = c.call("POST", &format!("/v1/tenants/{tid}/keys"), Some(&serde_json::json!({})))
                        else {
                            break;
                        };
                        ak.lock()
                            .unwrap()
                            .push((tid, k["key"]["id"].as_str().unwrap().to_string()));
                        i += 1;
                    }
                })
            })
            .collect();
        // Kill at a different point of the write stream each round.
        std::thread::sleep(Duration::from_millis(250 + 137 * (round % 7) as u64));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }
    // Final check after the last kill.
    let port = free_port();
    let mut child = start(&dir, port);
    let at = acked_tenants.lock().unwrap();
    check(
        &format!("http://127.0.0.1:{port}"),
        &at,
        &acked_keys.lock().unwrap(),
        rounds(),
    );
    assert!(at.len() > 20, "too few writes to mean anything: {}", at.len());
    eprintln!(
        "crash test: {} tenants and their keys acknowledged across {} kills, none lost",
        at.len(),
        rounds()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
