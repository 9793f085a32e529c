//! The control-plane attacks of issue 14, repeated: each asserts a clear refusal and that others are still
//! served. (Before the fixes each of these succeeded: the signing key lay in the sled store, GPUs and server
//! names could be taken over, argon2 ran under a store-wide lock without back-off, usage and capacities
//! overflowed, and the contract was looser than the server.)
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use vgpu_control::api::Config;

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Finding 4 and 7: the signing key is its own 0600 file (not in sled), the data folder is 0700, and the API
/// is served over HTTPS that a client verifies by the certificate's pinned SHA-256.
#[test]
fn signing_key_file_data_folder_and_https() {
    let dir = std::env::temp_dir().join(format!("vgpu-sec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cp = vgpu_control::server::spawn_control(vgpu_control::ControlArgs::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.clone(),
        vgpu_control::store::Backend::Sled,
    ))
    .unwrap();
    assert_eq!(mode(&dir), 0o700);
    let keys = dir.join("signing-keys.json");
    assert_eq!(mode(&keys), 0o600);
    assert!(std::fs::read_to_string(&keys).unwrap().contains("PRIVATE KEY"));
    for f in ["admin.key", "node.token", "tls/key.pem"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    // No private key anywhere in the sled files.
    for e in std::fs::read_dir(dir.join("sled")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"), "{}", p.display());
        }
    }
    let url = cp.url();
    assert!(url.starts_with("https://") && url.contains("#sha256="), "{url}");
    let c = vgpu_control::client::Client::new(&url, None);
    assert_eq!(c.call("GET", "/v1/health", None).unwrap()["status"], "ok");
    // A wrong pin is refused, and so is plain HTTP on the TLS port.
    let wrong = format!("https://{}#sha256={}", cp.addr, "00".repeat(32));
    let e = vgpu_control::client::Client::new(&wrong, None)
        .call("GET", "/v1/health", None)
        .unwrap_err();
    assert_eq!(e.status, None, "{e}");
    assert!(vgpu_control::client::Client::new(&format!("http://{}", cp.addr), None)
        .call("GET", "/v1/health", None)
        .is_err());
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 8: a heartbeat or registration listing another server's GPU is refused, re-registering a name
/// with the node token does not take it over, and a server bills only for its own GPUs.
#[test]
fn a_server_cannot_take_another_servers_gpus_or_name() {
    let h = H::new();
    let (victim, vtok) = h.server("victim", 1);
    let (imp, itok) = h.server("impostor", 1);
    let (t, _, key) = h.tenant("a");
    h.assign(&t, "GPU-victim-0", None, None);
    let sess = h.ok(201, "POST", "/v1/tickets", Some(&key), None)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let steal = json!({"gpus": [{"uuid": "GPU-victim-0", "index": 0, "name": "H100", "memory_total_mib": 81920}]});
    let (st, v) = h.call(
        "POST",
        &format!("/v1/servers/{imp}/heartbeat"),
        Some(&itok),
        Some(steal),
    );
    assert_eq!((st, v["error"]["code"].as_str()), (409, Some("gpu_owned")));
    let g = h.ok(200, "GET", "/v1/gpus", Some(ADMIN_KEY), None);
    let owner = g["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["uuid"] == "GPU-victim-0")
        .unwrap()["server_id"]
        .clone();
    assert_eq!(owner, json!(victim));
    let (st, _) = h.register("victim", 1, None);
    assert_eq!(st, 409, "the node token alone does not take over an enrolled name");
    let (st, _) = h.register("victim", 1, Some(&itok));
    assert_eq!(st, 409, "another server's credential cannot rename itself onto it");
    let n = vgpu_control::auth::now();
    let bill = json!({"records": [{"session_id": sess, "gpu_uuid": "GPU-victim-0", "period_start": n - 10, "period_end": n, "gpu_seconds": 5.0}]});
    assert_eq!(h.call("POST", "/v1/usage", Some(&itok), Some(bill.clone())).0, 403);
    assert_eq!(h.call("POST", "/v1/usage", Some(&vtok), Some(bill)).0, 202);
    // A forged credential naming the victim is refused.
    let forged = format!("vgpus_{victim}_{}", "x".repeat(40));
    assert_eq!(
        h.call(
            "POST",
            &format!("/v1/servers/{victim}/heartbeat"),
            Some(&forged),
            Some(json!({}))
        )
        .0,
        401
    );
}

/// Finding 9: failed sign-ins back off per key id and per address, unknown and known key ids cost the same,
/// and a flood of wrong secrets does not stall others (no store-wide lock around argon2).
#[test]
fn failed_logins_back_off_and_do_not_stall_others() {
    let h = std::sync::Arc::new(H::with_config(Config {
        auth_fail_per_addr: 1000,
        ..Config::default()
    }));
    let (_, kid, key) = h.tenant("a");
    let wrong = format!("vgpu_{kid}_{}", "w".repeat(40));
    for _ in 0..5 {
        assert_eq!(h.call("GET", "/v1/me", Some(&wrong), None).0, 401);
    }
    let r = h.raw("GET", "/v1/me", Some(&wrong), None);
    assert_eq!(r.status, 429);
    assert!(r.header("Retry-After").is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    // The block is per key id: the genuine key waits too unless this replica verified it recently.
    assert_eq!(h.call("GET", "/v1/me", Some(&key), None).0, 429);

    // Per address: a low limit for one source address.
    let h2 = H::with_config(Config {
        auth_fail_per_addr: 3,
        ..Config::default()
    });
    let addr: std::net::IpAddr = "10.9.8.7".parse().unwrap();
    let req = |k: &str| vgpu_control::api::Request {
        method: "GET".into(),
        path: "/v1/me".into(),
        authorization: Some(format!("Bearer {k}")),
        remote: Some(addr),
        ..Default::default()
    };
    for i in 0..3 {
        let k = format!("vgpu_guess{i}_{}", "g".repeat(40));
        assert_eq!(h2.app.handle(&req(&k)).status, 401);
    }
    assert_eq!(
        h2.app.handle(&req(&format!("vgpu_guess9_{}", "g".repeat(40)))).status,
        429
    );
    assert_eq!(
        h2.call("GET", "/v1/me", Some(ADMIN_KEY), None).0,
        200,
        "other addresses are served"
    );

    // Uniform timing: an unknown key id runs one argon2 verification like a known one.
    let h3 = H::new();
    let (_, kid3, _) = h3.tenant("b");
    let median = |k: &str| {
        let mut v: Vec<Duration> = (0..5)
            .map(|i| {
                let t = Instant::now();
                let _ = h3.call(
                    "POST",
                    "/v1/auth/token",
                    None,
                    Some(json!({"api_key": format!("{k}{i}")})),
                );
                t.elapsed()
            })
            .collect();
        v.sort();
        v[2]
    };
    let known = median(&format!("vgpu_{kid3}_{}", "k".repeat(39)));
    let unknown = median(&format!("vgpu_nosuchid_{}", "k".repeat(39)));
    let ratio = known.as_secs_f64() / unknown.as_secs_f64();
    assert!((0.4..2.5).contains(&ratio), "known {known:?} vs unknown {unknown:?}");

    // 32 threads of wrong secrets (distinct ids, so no back-off hides the cost) while health is timed.
    let t_health = |h: &H| {
        let mut v: Vec<Duration> = (0..20)
            .map(|_| {
                let t = Instant::now();
                h.ok(200, "GET", "/v1/health", None, None);
                t.elapsed()
            })
            .collect();
        v.sort();
        v[10]
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..32)
        .map(|i| {
            let (h, stop) = (h.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = format!("vgpu_flood{i}x{n}_{}", "f".repeat(40));
                    let _ = h.call("POST", "/v1/tenants", Some(&k), Some(json!({"name": "x"})));
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let during = t_health(&h);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flood {
        f.join().unwrap();
    }
    assert!(
        during < Duration::from_millis(50),
        "health p50 {during:?} during the flood"
    );
}

/// Finding 10: implausible usage is refused and totals stay finite numbers; capacity sums cannot wrap.
#[test]
fn implausible_usage_and_wrapping_capacities_are_refused() {
    let h = H::new();
    let (_, stok) = h.server("n", 1);
    let (t, _, key) = h.tenant("a");
    h.assign(&t, "GPU-n-0", Some(1024), None);
    let sess = h.ok(201, "POST", "/v1/tickets", Some(&key), None)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let n = vgpu_control::auth::now();
    for (field, v) in [
        ("gpu_seconds", json!(1.7e308)),
        ("gpu_seconds", json!(61.0 * 100.0)),
        ("gpu_busy_seconds", json!(-1.0)),
        ("memory_gib_hours", json!(1e9)),
    ] {
        let mut rec = json!({"session_id": sess, "gpu_uuid": "GPU-n-0", "period_start": n - 60, "period_end": n});
        rec[field] = v;
        assert_eq!(
            h.call("POST", "/v1/usage", Some(&stok), Some(json!({"records": [rec]})))
                .0,
            400,
            "{field}"
        );
    }
    let future =
        json!({"records": [{"session_id": sess, "gpu_uuid": "GPU-n-0", "period_start": n, "period_end": n + 86400}]});
    assert_eq!(h.call("POST", "/v1/usage", Some(&stok), Some(future)).0, 400);
    let u = h.ok(200, "GET", "/v1/usage", Some(ADMIN_KEY), None);
    assert!(
        u["tenants"][0]["gpu_seconds"].is_number() && u["tenants"][0]["cost"].is_number(),
        "{u}"
    );

    // Two slices whose memory sums past 2^64: the second is refused (and the first never fits either).
    let (t2, _, _) = h.tenant("b");
    let (st, _) = h.call(
        "POST",
        "/v1/assignments",
        Some(ADMIN_KEY),
        Some(json!({"tenant_id": t2, "gpu_uuid": "GPU-n-0", "memory_limit_mib": u64::MAX - 1, "compute_share": 0.1})),
    );
    assert_eq!(st, 400);
    let (st, _) = h.call(
        "POST",
        "/v1/assignments",
        Some(ADMIN_KEY),
        Some(json!({"tenant_id": t2, "gpu_uuid": "GPU-n-0", "memory_limit_mib": 81920, "compute_share": 0.1})),
    );
    assert_eq!(st, 409, "1 GiB already taken: 80 GiB more does not fit");
    // A GPU reporting an absurd size is refused at the door.
    let huge = json!({"gpus": [{"uuid": "GPU-huge", "index": 0, "name": "x", "memory_total_mib": u64::MAX}]});
    let (st, _) = h.call(
        "POST",
        "/v1/servers",
        None,
        Some(json!({"name": "huge", "address": "h:1", "node_token": NODE_TOKEN, "gpus": huge["gpus"]})),
    );
    assert_eq!(st, 400);
}

/// Finding 11: PATCH refuses a taken name, the last admin key cannot be rotated or revoked, 405 carries
/// Allow, and the server is as strict as the contract (enum query values, object bodies).
#[test]
fn smaller_findings() {
    let h = H::new();
    let (a, _, _) = h.tenant("alpha");
    h.tenant("beta");
    let (_, _, tenant_key) = h.tenant("gamma");
    let (st, v) = h.call(
        "PATCH",
        &format!("/v1/tenants/{a}"),
        Some(ADMIN_KEY),
        Some(json!({"name": "beta"})),
    );
    assert_eq!((st, v["error"]["code"].as_str()), (409, Some("name_taken")));
    for (m, p) in [("POST", "/v1/keys/admin01/rotate"), ("DELETE", "/v1/keys/admin01")] {
        let (st, v) = h.call(m, p, Some(ADMIN_KEY), None);
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (409, Some("last_admin_key")),
            "{m} {p}"
        );
    }
    assert_eq!(
        h.call("GET", "/v1/me", Some(ADMIN_KEY), None).0,
        200,
        "the admin is not locked out"
    );
    // With a second admin key the first can go.
    let second = h.ok(201, "POST", "/v1/admin-keys", Some(ADMIN_KEY), Some(json!({})))["secret"]
        .as_str()
        .unwrap()
        .to_string();
    h.ok(200, "DELETE", "/v1/keys/admin01", Some(&second), None);
    assert_eq!(h.call("GET", "/v1/me", Some(&second), None).0, 200);
    let r = h.raw("PUT", "/v1/tenants", Some(&second), None);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET, POST"));
    assert_eq!(h.call("GET", "/v1/sessions?status=AAA", Some(&second), None).0, 400);
    for p in ["/v1/tenants", "/v1/auth/token", "/v1/plans", "/v1/admin-keys"] {
        assert_eq!(h.call("POST", p, Some(&second), Some(json!([]))).0, 400, "{p} with []");
    }
    assert_eq!(
        h.call("POST", "/v1/tickets", Some(&tenant_key), Some(json!([]))).0,
        400,
        "tickets with []"
    );
    // The audit log recorded the admin actions, in order, paged.
    let log = h.ok(200, "GET", "/v1/audit?limit=2", Some(&second), None);
    assert_eq!(log["events"].as_array().unwrap().len(), 2);
    assert!(log["next_cursor"].is_string());
    let all = h
        .ok(200, "GET", "/v1/audit?limit=1000", Some(&second), None)
        .to_string();
    for action in ["tenant.create", "key.create", "admin_key.create", "key.revoke"] {
        assert!(all.contains(action), "{action} missing from {all}");
    }
}
