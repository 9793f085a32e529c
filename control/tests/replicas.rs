//! Two `vgpu-control` replicas (separate processes, HTTPS with their own pinned certificates) on one real
//! PostgreSQL: state written through one is seen through the other (sessions, revocations, heartbeats,
//! failure counters, signing keys), usage retried on the other replica counts once, and clients fail over
//! when one replica is killed with SIGKILL.
#![allow(clippy::unwrap_used)]

#[path = "common/pg.rs"]
mod pg;

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vgpu_control::client::{self, Client};

const ADMIN: &str = "vgpu_adminrepl_0123456789abcdefghijklmnop";
const NODE: &str = "vgpun_repl_0123456789abcdefghij";

struct Replica {
    child: Child,
    url: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(store: &str, dir: &Path, secret: &Path) -> Replica {
    let _ = std::fs::remove_file(dir.join("control.url"));
    let child = Command::new(env!("CARGO_BIN_EXE_vgpu-control"))
        .args(["--listen", "127.0.0.1:0", "--store", store, "--secret-file"])
        .arg(secret)
        .arg("--data-dir")
        .arg(dir)
        .env("VGPU_ADMIN_KEY", ADMIN)
        .env("VGPU_NODE_TOKEN", NODE)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        if let Ok(u) = std::fs::read_to_string(dir.join("control.url")) {
            if u.ends_with('\n') {
                break u.trim().to_string();
            }
        }
        assert!(Instant::now() < deadline, "replica in {} did not start", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(url.starts_with("https://") && url.contains("#sha256="), "{url}");
    let r = Replica { child, url };
    while Client::new(&r.url, None).call("GET", "/v1/health", None).is_err() {
        assert!(Instant::now() < deadline, "replica at {} does not answer", r.url);
        std::thread::sleep(Duration::from_millis(50));
    }
    r
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vgpu-replicas-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn two_replicas_share_everything_and_clients_fail_over() {
    let store = pg::fresh_db();
    let secret = tmp("secret").join("store-secret.key");
    let a = start(&store, &tmp("a"), &secret);
    let b = start(&store, &tmp("b"), &secret);
    let both = format!("{},{}", a.url, b.url);
    let admin_a = Client::new(&a.url, Some(ADMIN));
    let admin_b = Client::new(&b.url, Some(ADMIN));

    // The tenant is created on A; the server enrolls and heartbeats on B.
    let t = admin_a
        .call("POST", "/v1/tenants", Some(&json!({"name": "lab"})))
        .unwrap();
    let tid = t["id"].as_str().unwrap().to_string();
    let key = admin_b
        .call("POST", &format!("/v1/tenants/{tid}/keys"), Some(&json!({})))
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let gpus = vec![client::GpuInfo {
        uuid: "GPU-r0".into(),
        index: 0,
        name: "H100".into(),
        model: None,
        memory_total_mib: 81920,
        memory_used_mib: 0,
        utilization_pct: 0.0,
    }];
    let reg = client::register_server(
        &b.url,
        &client::Enrollment {
            node_token: Some(NODE),
            credential: None,
            name: "node",
            address: "node:7070",
            gpus: &gpus,
            tls_cert_sha256: Some(&"ab".repeat(32)),
        },
    )
    .unwrap();
    let assignment = admin_a
        .call(
            "POST",
            "/v1/assignments",
            Some(&json!({"tenant_id": tid, "gpu_uuid": "GPU-r0", "priority": "burst"})),
        )
        .unwrap();

    // A ticket signed by A verifies with the keys B publishes (one sealed key set in the database).
    let grant = client::request_ticket(&a.url, &key).unwrap();
    assert_eq!(grant.gpus[0].priority, "burst");
    assert_eq!(grant.gpus[0].tls_cert_sha256.as_deref(), Some("ab".repeat(32).as_str()));
    let keys_b = client::fetch_public_keys(&b.url).unwrap();
    let verifier = vgpu_control::ticket::TicketVerifier::from_public_key_reply(&keys_b).unwrap();
    let claims = verifier.verify(&grant.ticket).unwrap();
    assert_eq!(claims.sid, grant.session_id);

    // Revocation on A ends the session on the server attached to B, at its next heartbeat.
    let revoked = Instant::now();
    admin_a
        .call(
            "DELETE",
            &format!("/v1/assignments/{}", assignment["id"].as_str().unwrap()),
            None,
        )
        .unwrap();
    let beat = client::heartbeat(&b.url, &reg.server_token, &reg.server_id, &gpus).unwrap();
    assert_eq!(beat.end_sessions, vec![grant.session_id.clone()]);
    eprintln!("revocation on A seen by a heartbeat on B {:?} later", revoked.elapsed());

    // Usage sent to B, then the same report "retried" on A after a failover: counted once.
    let n = vgpu_control::auth::now();
    let rec = client::UsageSample {
        session_id: grant.session_id.clone(),
        gpu_uuid: "GPU-r0".into(),
        period_start: n - 60,
        period_end: n,
        gpu_seconds: 30.0,
        gpu_busy_seconds: 20.0,
        memory_gib_hours: 0.01,
        bytes_moved: 100,
        session_ended: true,
    };
    client::report_usage(&b.url, &reg.server_token, "rep-1", std::slice::from_ref(&rec)).unwrap();
    client::report_usage(&a.url, &reg.server_token, "rep-1", std::slice::from_ref(&rec)).unwrap();
    let u = admin_b
        .call("GET", &format!("/v1/usage?tenant_id={tid}"), None)
        .unwrap();
    assert_eq!(u["tenants"][0]["gpu_seconds"], 30.0);
    assert_eq!(u["tenants"][0]["gpu_busy_seconds"], 20.0);

    // Failed sign-ins counted on A block the key id on B too.
    let wrong = format!("{}WRONGWRONGWRONG", &key[..key.len() - 15]);
    for _ in 0..6 {
        let _ = Client::new(&a.url, Some(&wrong)).call("GET", "/v1/me", None);
    }
    let err = Client::new(&b.url, Some(&wrong))
        .call("GET", "/v1/me", None)
        .unwrap_err();
    assert_eq!(err.status, Some(429), "{err}");

    // kill -9 of A: a client given both URLs is served by B at once.
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let t0 = Instant::now();
    let v = Client::new(&both, Some(ADMIN))
        .call("GET", &format!("/v1/tenants/{tid}"), None)
        .unwrap();
    assert_eq!(v["name"], "lab");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "failover took {:?}",
        t0.elapsed()
    );
    drop(b);
}
