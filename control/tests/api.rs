//! Route-by-route tests of the REST API, in process (no sockets), plus one insta snapshot of a tour that
//! calls every route, with generated ids, secrets and times redacted.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::json;

#[test]
fn tour_snapshot() {
    let t: Vec<serde_json::Value> = tour()
        .iter()
        .map(|e| json!({"call": format!("{} {}", e.method, e.route), "status": e.status, "body": normalize(&e.body)}))
        .collect();
    insta::assert_json_snapshot!("tour", t);
}

#[test]
fn health_and_public_key_need_no_auth() {
    let h = H::new();
    let v = h.ok(200, "GET", "/v1/health", None, None);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["store"], "memory");
    let v = h.ok(200, "GET", "/v1/public-key", None, None);
    assert!(v["public_key_pem"].as_str().unwrap().contains("BEGIN PUBLIC KEY"));
}

#[test]
fn tenants_crud() {
    let h = H::new();
    let a = Some(ADMIN_KEY);
    let t = h.ok(201, "POST", "/v1/tenants", a, Some(json!({"name": "lab"})));
    let id = t["id"].as_str().unwrap();
    assert_eq!(h.call("POST", "/v1/tenants", a, Some(json!({"name": "lab"}))).0, 409);
    assert_eq!(h.call("POST", "/v1/tenants", a, Some(json!({"name": ""}))).0, 400);
    assert_eq!(
        h.call(
            "POST",
            "/v1/tenants",
            a,
            Some(json!({"name": "x", "plan_id": "p_nope"}))
        )
        .0,
        400
    );
    let p = h.ok(
        201,
        "POST",
        "/v1/plans",
        a,
        Some(json!({"name": "std", "rates": [{"gpu_model": "*", "per_gpu_hour": 1.0, "per_gib_hour": 0.0}]})),
    );
    let pid = p["id"].as_str().unwrap();
    let t = h.ok(
        200,
        "PATCH",
        &format!("/v1/tenants/{id}"),
        a,
        Some(json!({"plan_id": pid, "name": "lab2"})),
    );
    assert_eq!(t["plan_id"], pid);
    assert_eq!(t["name"], "lab2");
    assert_eq!(h.call("DELETE", &format!("/v1/plans/{pid}"), a, None).0, 409);
    let t = h.ok(
        200,
        "PATCH",
        &format!("/v1/tenants/{id}"),
        a,
        Some(json!({"plan_id": ""})),
    );
    assert!(t["plan_id"].is_null());
    h.ok(200, "DELETE", &format!("/v1/plans/{pid}"), a, None);
    assert_eq!(
        h.ok(200, "GET", "/v1/tenants", a, None)["tenants"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    h.ok(200, "DELETE", &format!("/v1/tenants/{id}"), a, None);
    assert_eq!(h.call("GET", &format!("/v1/tenants/{id}"), a, None).0, 404);
}

#[test]
fn keys_create_rotate_revoke() {
    let h = H::new();
    let (tid, kid, key) = h.tenant("lab");
    assert!(key.starts_with(&format!("vgpu_{kid}_")));
    let list = h.ok(200, "GET", &format!("/v1/tenants/{tid}/keys"), Some(&key), None);
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&key), "a listing never shows a secret");
    assert!(!list.to_string().contains("argon2"), "nor a hash");
    let r = h.ok(201, "POST", &format!("/v1/keys/{kid}/rotate"), Some(&key), None);
    let new = r["secret"].as_str().unwrap();
    assert_eq!(
        h.call("GET", "/v1/me", Some(&key), None).0,
        401,
        "the rotated key is dead"
    );
    assert_eq!(h.ok(200, "GET", "/v1/me", Some(new), None)["tenant_id"], tid.as_str());
    let nid = r["key"]["id"].as_str().unwrap();
    let v = h.ok(200, "DELETE", &format!("/v1/keys/{nid}"), Some(ADMIN_KEY), None);
    assert!(v["revoked_at"].is_u64());
    assert_eq!(h.call("GET", "/v1/me", Some(new), None).0, 401);
    // The last admin key cannot be revoked, only rotated.
    assert_eq!(h.call("DELETE", "/v1/keys/admin01", Some(ADMIN_KEY), None).0, 409);
}

#[test]
fn servers_heartbeat_and_gpus() {
    let h = H::new();
    let (sid, stok) = h.server("n1", 2);
    let (st, again) = h.register("n1", 2, Some(&stok));
    assert_eq!(st, 201, "{again}");
    assert_eq!(
        again["server"]["id"],
        json!(sid),
        "re-registration with its credential keeps the id"
    );
    let (st, taken) = h.register("n1", 2, None);
    assert_eq!(
        (st, taken["error"]["code"].as_str()),
        (409, Some("name_taken")),
        "node token alone never takes it over"
    );
    let s = h.ok(200, "GET", &format!("/v1/servers/{sid}"), Some(ADMIN_KEY), None);
    assert_eq!(s["status"], "online");
    assert_eq!(s["gpus"].as_array().unwrap().len(), 2);
    let hb = h.ok(
        200,
        "POST",
        &format!("/v1/servers/{sid}/heartbeat"),
        Some(&stok),
        Some(json!({"gpus": [{"uuid": "GPU-n1-0", "index": 0, "name": "H100", "memory_total_mib": 81920, "memory_used_mib": 5000, "utilization_pct": 99.0}]})),
    );
    assert_eq!(hb["end_sessions"], json!([]));
    let s = h.ok(200, "GET", &format!("/v1/servers/{sid}"), Some(ADMIN_KEY), None);
    assert_eq!(s["gpus"][0]["utilization_pct"], 99.0);
    assert_eq!(h.call("POST", &format!("/v1/servers/{sid}/heartbeat"), Some(&stok), Some(json!({"gpus": [{"uuid": "GPU-n1-0", "index": 0, "name": "H100", "memory_total_mib": 1, "utilization_pct": 101.0}]}))).0, 400);
    let (_, other) = h.server("n2", 1);
    assert_eq!(
        h.call(
            "POST",
            &format!("/v1/servers/{sid}/heartbeat"),
            Some(&other),
            Some(json!({}))
        )
        .0,
        403
    );
    let g = h.ok(200, "GET", "/v1/gpus", Some(ADMIN_KEY), None);
    assert_eq!(g["gpus"].as_array().unwrap().len(), 2, "n1 now reports one GPU, n2 one");
    // A GPU that vanishes from the inventory stays listed only while it is assigned.
    let (t, _, _) = h.tenant("a");
    h.assign(&t, "GPU-n1-0", None, None);
    h.ok(
        200,
        "POST",
        &format!("/v1/servers/{sid}/heartbeat"),
        Some(&stok),
        Some(json!({"gpus": []})),
    );
    let g = h.ok(200, "GET", "/v1/gpus", Some(ADMIN_KEY), None).to_string();
    assert!(g.contains("GPU-n1-0") && !g.contains("GPU-n1-1"), "{g}");
}

#[test]
fn offline_after_missed_heartbeats() {
    let h = H::with_config(vgpu_control::api::Config {
        heartbeat_timeout_s: 0,
        ..Default::default()
    });
    let (sid, _) = h.server("n1", 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        h.ok(200, "GET", &format!("/v1/servers/{sid}"), Some(ADMIN_KEY), None)["status"],
        "offline"
    );
}

#[test]
fn assignments_capacity_and_slices() {
    let h = H::new();
    h.server("n1", 2);
    let (t1, _, _) = h.tenant("a");
    let (t2, _, _) = h.tenant("b");
    let (t3, _, _) = h.tenant("c");
    let a1 = h.assign(&t1, "GPU-n1-0", Some(40960), None);
    assert_eq!(a1["compute_share"], 0.5);
    let a2 = h.assign(&t2, "GPU-n1-0", None, Some(0.5));
    assert_eq!(a2["memory_limit_mib"], 40960);
    let (s, v) = h.call(
        "POST",
        "/v1/assignments",
        Some(ADMIN_KEY),
        Some(json!({"tenant_id": t3, "gpu_uuid": "GPU-n1-0", "memory_limit_mib": 1})),
    );
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("gpu_capacity")));
    // Whole GPU by default.
    let w = h.assign(&t3, "GPU-n1-1", None, None);
    assert_eq!(
        (w["memory_limit_mib"].as_u64(), w["compute_share"].as_f64()),
        (Some(81920), Some(1.0))
    );
    // Moving t1's slice onto the full GPU fails; shrinking t2 and growing t1 works.
    let a1id = a1["id"].as_str().unwrap();
    assert_eq!(
        h.call(
            "PATCH",
            &format!("/v1/assignments/{a1id}"),
            Some(ADMIN_KEY),
            Some(json!({"gpu_uuid": "GPU-n1-1"}))
        )
        .0,
        409
    );
    let a2id = a2["id"].as_str().unwrap();
    h.ok(
        200,
        "PATCH",
        &format!("/v1/assignments/{a2id}"),
        Some(ADMIN_KEY),
        Some(json!({"memory_limit_mib": 20480, "compute_share": 0.25})),
    );
    h.ok(
        200,
        "PATCH",
        &format!("/v1/assignments/{a1id}"),
        Some(ADMIN_KEY),
        Some(json!({"memory_limit_mib": 61440, "compute_share": 0.75})),
    );
    for bad in [
        json!({"compute_share": 0.0}),
        json!({"compute_share": -1}),
        json!({"memory_limit_mib": 0}),
        json!({"bogus": 1}),
    ] {
        assert_eq!(
            h.call("PATCH", &format!("/v1/assignments/{a1id}"), Some(ADMIN_KEY), Some(bad))
                .0,
            400
        );
    }
    let l = h.ok(
        200,
        "GET",
        &format!("/v1/assignments?tenant_id={t1}"),
        Some(ADMIN_KEY),
        None,
    );
    assert_eq!(l["assignments"].as_array().unwrap().len(), 1);
}

#[test]
fn ticket_names_gpus_and_limits_and_verifies_offline() {
    let h = H::new();
    h.server("n1", 2);
    let (t1, _, key) = h.tenant("a");
    assert_eq!(
        h.call("POST", "/v1/tickets", Some(&key), None).1["error"]["code"],
        "no_assignment"
    );
    h.assign(&t1, "GPU-n1-1", Some(8192), Some(0.25));
    let g = h.ok(201, "POST", "/v1/tickets", Some(&key), None);
    let pem = h.ok(200, "GET", "/v1/public-key", None, None)["public_key_pem"]
        .as_str()
        .unwrap()
        .to_string();
    let c = vgpu_control::verify_ticket(pem.as_bytes(), g["ticket"].as_str().unwrap()).unwrap();
    assert_eq!(c.tenant_id(), t1);
    assert_eq!(c.session_id(), g["session_id"].as_str().unwrap());
    assert_eq!(c.gpus.len(), 1);
    assert_eq!(c.gpus[0].gpu_uuid, "GPU-n1-1");
    assert_eq!(c.gpus[0].gpu_index, 1);
    assert_eq!(c.gpus[0].memory_limit_mib, 8192);
    assert_eq!(c.gpus[0].compute_share, 0.25);
    assert_eq!(c.gpus[0].server_address, "n1.local:7000");
}

#[test]
fn revoking_an_assignment_ends_live_sessions_and_tells_the_server() {
    let h = H::new();
    let (sid, stok) = h.server("n1", 1);
    let (t1, _, key) = h.tenant("a");
    let a = h.assign(&t1, "GPU-n1-0", None, None);
    let g = h.ok(201, "POST", "/v1/tickets", Some(&key), None);
    let sess = g["session_id"].as_str().unwrap();
    let hb = h.ok(
        200,
        "POST",
        &format!("/v1/servers/{sid}/heartbeat"),
        Some(&stok),
        Some(json!({})),
    );
    assert!(hb["end_sessions"].as_array().unwrap().is_empty());
    h.ok(
        200,
        "DELETE",
        &format!("/v1/assignments/{}", a["id"].as_str().unwrap()),
        Some(ADMIN_KEY),
        None,
    );
    let s = h.ok(200, "GET", "/v1/sessions", Some(&key), None);
    assert_eq!(s["sessions"][0]["status"], "ended");
    assert_eq!(s["sessions"][0]["end_reason"], "assignment revoked");
    let hb = h.ok(
        200,
        "POST",
        &format!("/v1/servers/{sid}/heartbeat"),
        Some(&stok),
        Some(json!({})),
    );
    assert_eq!(hb["end_sessions"], json!([sess]));
}

#[test]
fn usage_and_cost_by_plan() {
    let h = H::new();
    let (_, stok) = h.server("n1", 1);
    let p = h.ok(201, "POST", "/v1/plans", Some(ADMIN_KEY), Some(json!({"name": "p", "rates": [
        {"gpu_model": "H100", "per_gpu_hour": 3.0, "per_gib_hour": 0.5}, {"gpu_model": "*", "per_gpu_hour": 1.0, "per_gib_hour": 0.0}]})));
    let (t1, _, key) = h.tenant("a");
    h.ok(
        200,
        "PATCH",
        &format!("/v1/tenants/{t1}"),
        Some(ADMIN_KEY),
        Some(json!({"plan_id": p["id"]})),
    );
    h.assign(&t1, "GPU-n1-0", None, None);
    let sess = h.ok(201, "POST", "/v1/tickets", Some(&key), None)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let rec = |start: u64, secs: f64, gib: f64, ended: bool| {
        json!({"session_id": sess, "gpu_uuid": "GPU-n1-0", "period_start": start, "period_end": start + 600,
               "gpu_seconds": secs, "memory_gib_hours": gib, "bytes_moved": 10, "session_ended": ended})
    };
    let n = vgpu_control::auth::now();
    h.ok(
        202,
        "POST",
        "/v1/usage",
        Some(&stok),
        Some(json!({"records": [rec(n - 300, 540.0, 0.1, false), rec(n - 300, 360.0, 0.0, true)]})),
    );
    let bad =
        json!({"records": [{"session_id": sess, "gpu_uuid": "GPU-n1-0", "period_start": n, "period_end": n - 1}]});
    assert_eq!(h.call("POST", "/v1/usage", Some(&stok), Some(bad)).0, 400);
    let neg = json!({"records": [{"session_id": sess, "gpu_uuid": "GPU-n1-0", "period_start": n, "period_end": n + 1, "gpu_seconds": -1.0}]});
    assert_eq!(h.call("POST", "/v1/usage", Some(&stok), Some(neg)).0, 400);
    let u = h.ok(
        200,
        "GET",
        &format!("/v1/usage?from={}&to={}", n - 86400, n + 86400),
        Some(&key),
        None,
    );
    let t = &u["tenants"][0];
    assert_eq!(t["gpu_hours"], 0.25);
    assert!(
        (t["cost"].as_f64().unwrap() - (0.25 * 3.0 + 0.1 * 0.5)).abs() < 1e-9,
        "{t}"
    );
    assert_eq!(t["bytes_moved"], 20);
    assert!(!t["daily"].as_array().unwrap().is_empty());
    // The server said the session ended with its last record.
    assert_eq!(
        h.ok(200, "GET", "/v1/sessions", Some(&key), None)["sessions"][0]["status"],
        "ended"
    );
    // Outside the period: nothing.
    let u = h.ok(200, "GET", "/v1/usage?from=0&to=1000", Some(ADMIN_KEY), None);
    assert_eq!(u["tenants"][0]["gpu_hours"], 0.0);
    assert_eq!(h.call("GET", "/v1/usage?from=5&to=1", Some(ADMIN_KEY), None).0, 400);
}

#[test]
fn metrics_count_requests() {
    let h = H::new();
    h.ok(200, "GET", "/v1/health", None, None);
    let r = h.raw("GET", "/metrics", None, None);
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.contains(r#"vgpu_control_http_requests_total{method="GET",route="/v1/health",status="200"} 1"#),
        "{text}"
    );
    assert!(text.contains("vgpu_control_tenants 0"));
}

#[test]
fn garbage_input_never_panics() {
    let h = H::new();
    let bodies: &[&[u8]] = &[b"", b"{", b"null", b"[]", b"\xff\xfe", b"{\"name\": 5}", &[b'a'; 5000]];
    for (m, tpl) in vgpu_control::api::ROUTES {
        let path = tpl.replace('{', "x").replace('}', "");
        for b in bodies {
            for auth in [
                None,
                Some(format!("Bearer {ADMIN_KEY}")),
                Some("Bearer garbage.garbage.garbage".into()),
                Some("Basic x".into()),
            ] {
                let r = h.app.handle(&vgpu_control::api::Request {
                    method: m.to_string(),
                    path: path.clone(),
                    query: "from=x&&=&to".into(),
                    authorization: auth,
                    body: b.to_vec(),
                    remote: None,
                });
                assert!(r.status < 500, "{m} {path}: {}", String::from_utf8_lossy(&r.body));
            }
        }
    }
}
