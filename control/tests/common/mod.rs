//! Shared test harness: an in-process control plane over the in-memory store, request helpers, a tour that
//! calls every route, and JSON normalization for snapshots.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::{json, Value};
use vgpu_control::api::{App, Bootstrap, Config, Request, Response};
use vgpu_control::store::MemStore;

pub const ADMIN_KEY: &str = "vgpu_admin01_0123456789abcdefghijklmnopqrstuv";
pub const NODE_TOKEN: &str = "vgpun_node_0123456789abcdefghij";

pub struct H {
    pub app: App,
}

/// One request and its answer, as the OpenAPI test and the snapshot see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exchange {
    pub method: String,
    pub route: String,
    pub status: u16,
    pub body: Value,
}

impl H {
    pub fn new() -> H {
        Self::with_config(Config::default())
    }

    pub fn with_config(cfg: Config) -> H {
        let (app, _) = App::open(
            Box::new(MemStore::default()),
            cfg,
            Bootstrap {
                admin_key: Some(ADMIN_KEY.into()),
                node_token: Some(NODE_TOKEN.into()),
            },
        )
        .expect("open app");
        H { app }
    }

    pub fn raw(&self, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> Response {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (path.to_string(), String::new()),
        };
        self.app.handle(&Request {
            method: method.into(),
            path,
            query,
            authorization: auth.map(|a| format!("Bearer {a}")),
            body: body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default(),
            remote: None,
        })
    }

    /// Sends a request and returns (status, JSON body).
    pub fn call(&self, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let r = self.raw(method, path, auth, body);
        (r.status, r.json())
    }

    /// Like `call`, but panics unless the status is `want`.
    pub fn ok(&self, want: u16, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, auth, body);
        assert_eq!(s, want, "{method} {path}: {v}");
        v
    }

    pub fn admin_token(&self) -> String {
        self.ok(200, "POST", "/v1/auth/token", None, Some(json!({"api_key": ADMIN_KEY})))["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Registers server `name` with GPUs `<name>-gpu0..n` of 80 GiB each; returns (server id, server token).
    pub fn server(&self, name: &str, n: u32) -> (String, String) {
        let (status, v) = self.register(name, n, None);
        assert_eq!(status, 201, "register {name}: {v}");
        (
            v["server"]["id"].as_str().unwrap().into(),
            v["server_token"].as_str().unwrap().into(),
        )
    }

    /// `POST /v1/servers` for `name` with `n` GPUs: with the node token, or with `credential` (the server's own).
    pub fn register(&self, name: &str, n: u32, credential: Option<&str>) -> (u16, Value) {
        let gpus: Vec<Value> = (0..n)
            .map(|i| {
                json!({"uuid": format!("GPU-{name}-{i}"), "index": i, "name": "NVIDIA H100 80GB HBM3", "model": "H100",
                       "memory_total_mib": 81920, "memory_used_mib": 1024, "utilization_pct": 12.5})
            })
            .collect();
        let mut body = json!({"name": name, "address": format!("{name}.local:7000"), "gpus": gpus});
        if credential.is_none() {
            body["node_token"] = json!(NODE_TOKEN);
        }
        self.call("POST", "/v1/servers", credential, Some(body))
    }

    /// Creates a tenant and a key; returns (tenant id, key id, key secret).
    pub fn tenant(&self, name: &str) -> (String, String, String) {
        let t = self.ok(201, "POST", "/v1/tenants", Some(ADMIN_KEY), Some(json!({"name": name})));
        let id = t["id"].as_str().unwrap().to_string();
        let k = self.ok(
            201,
            "POST",
            &format!("/v1/tenants/{id}/keys"),
            Some(ADMIN_KEY),
            Some(json!({"label": "laptop"})),
        );
        (
            id,
            k["key"]["id"].as_str().unwrap().into(),
            k["secret"].as_str().unwrap().into(),
        )
    }

    pub fn assign(&self, tenant: &str, gpu: &str, mem: Option<u64>, share: Option<f64>) -> Value {
        self.ok(
            201,
            "POST",
            "/v1/assignments",
            Some(ADMIN_KEY),
            Some(json!({"tenant_id": tenant, "gpu_uuid": gpu, "memory_limit_mib": mem, "compute_share": share})),
        )
    }
}

/// Calls every route of the API at least once, successes and typical failures, and returns the transcript.
pub fn tour() -> Vec<Exchange> {
    let h = H::new();
    let mut log = Vec::new();
    let mut go = |method: &str, path: &str, auth: Option<&str>, body: Option<Value>| -> Value {
        let r = h.raw(method, path, auth, body);
        let body = if r.content_type.starts_with("application/json") {
            r.json()
        } else {
            Value::Null
        };
        log.push(Exchange {
            method: method.into(),
            route: r.route.unwrap_or("unmatched").into(),
            status: r.status,
            body: body.clone(),
        });
        body
    };
    let a = Some(ADMIN_KEY);
    // Usage periods below end 20 s after this: the session is created later in the tour, and a period may not start
    // more than the server's clock slack before its session (on a loaded machine the tour crosses seconds).
    let now = vgpu_control::auth::now();
    go("GET", "/v1/health", None, None);
    go("GET", "/v1/public-key", None, None);
    let tok = go("POST", "/v1/auth/token", None, Some(json!({"api_key": ADMIN_KEY})))["token"]
        .as_str()
        .unwrap()
        .to_string();
    go(
        "POST",
        "/v1/auth/token",
        None,
        Some(json!({"api_key": "vgpu_nope_0123456789abcdefghij"})),
    );
    go("POST", "/v1/auth/token", None, Some(json!({"key": 1})));
    go("GET", "/v1/me", Some(&tok), None);
    go("GET", "/v1/me", None, None);
    let plan = go(
        "POST",
        "/v1/plans",
        a,
        Some(json!({"name": "research", "currency": "EUR", "rates": [
            {"gpu_model": "H100", "per_gpu_hour": 2.5, "per_gib_hour": 0.01},
            {"gpu_model": "*", "per_gpu_hour": 1.0, "per_gib_hour": 0.005}]})),
    );
    let plan_id = plan["id"].as_str().unwrap().to_string();
    go("POST", "/v1/plans", a, Some(json!({"name": "empty", "rates": []})));
    go("GET", "/v1/plans", a, None);
    let spare = go(
        "POST",
        "/v1/plans",
        a,
        Some(json!({"name": "spare", "rates": [{"gpu_model": "*", "per_gpu_hour": 1, "per_gib_hour": 0}]})),
    );
    go(
        "DELETE",
        &format!("/v1/plans/{}", spare["id"].as_str().unwrap()),
        a,
        None,
    );
    let t = go(
        "POST",
        "/v1/tenants",
        a,
        Some(json!({"name": "alice-lab", "plan_id": plan_id})),
    );
    let tid = t["id"].as_str().unwrap().to_string();
    go("POST", "/v1/tenants", a, Some(json!({"name": "alice-lab"})));
    go("DELETE", &format!("/v1/plans/{plan_id}"), a, None);
    go("GET", "/v1/tenants", a, None);
    go("GET", &format!("/v1/tenants/{tid}"), a, None);
    go("GET", "/v1/tenants/t_missing", a, None);
    go(
        "PATCH",
        &format!("/v1/tenants/{tid}"),
        a,
        Some(json!({"name": "alice-lab"})),
    );
    let k = go(
        "POST",
        &format!("/v1/tenants/{tid}/keys"),
        a,
        Some(json!({"label": "laptop"})),
    );
    let key = k["secret"].as_str().unwrap().to_string();
    let kid = k["key"]["id"].as_str().unwrap().to_string();
    go("GET", &format!("/v1/tenants/{tid}/keys"), a, None);
    go("POST", "/v1/tenants", Some(&key), Some(json!({"name": "sneaky"})));
    let rot = go("POST", &format!("/v1/keys/{kid}/rotate"), Some(&key), None);
    let key = rot["secret"].as_str().unwrap().to_string();
    go("POST", &format!("/v1/keys/{kid}/rotate"), a, None);
    let k2 = go("POST", &format!("/v1/tenants/{tid}/keys"), a, None);
    go(
        "DELETE",
        &format!("/v1/keys/{}", k2["key"]["id"].as_str().unwrap()),
        a,
        None,
    );
    go("DELETE", "/v1/keys/admin01", a, None);
    let gpus = json!([{"uuid": "GPU-aaaa", "index": 0, "name": "NVIDIA H100", "model": "H100", "memory_total_mib": 81920,
                       "memory_used_mib": 0, "utilization_pct": 0.0},
                      {"uuid": "GPU-bbbb", "index": 1, "name": "NVIDIA H100", "model": "H100", "memory_total_mib": 81920}]);
    let reg = go(
        "POST",
        "/v1/servers",
        None,
        Some(json!({"name": "node1", "address": "10.0.0.5:7000", "node_token": NODE_TOKEN, "gpus": gpus})),
    );
    go(
        "POST",
        "/v1/servers",
        None,
        Some(json!({"name": "node1", "address": "x:1", "node_token": "wrong"})),
    );
    let sid = reg["server"]["id"].as_str().unwrap().to_string();
    let stok = reg["server_token"].as_str().unwrap().to_string();
    go("GET", "/v1/servers", a, None);
    go("GET", &format!("/v1/servers/{sid}"), Some(&stok), None);
    go("GET", "/v1/servers", Some(&key), None);
    go("GET", "/v1/servers/s_missing", a, None);
    go(
        "POST",
        &format!("/v1/servers/{sid}/heartbeat"),
        Some(&stok),
        Some(json!({"gpus": [
        {"uuid": "GPU-aaaa", "index": 0, "name": "NVIDIA H100", "model": "H100", "memory_total_mib": 81920, "memory_used_mib": 2048, "utilization_pct": 55.0},
        {"uuid": "GPU-bbbb", "index": 1, "name": "NVIDIA H100", "model": "H100", "memory_total_mib": 81920}]})),
    );
    go(
        "POST",
        &format!("/v1/servers/{sid}/heartbeat"),
        Some(&stok),
        Some(json!({"gpus": [{"uuid": "GPU-aaaa"}]})),
    );
    go("POST", &format!("/v1/servers/{sid}/heartbeat"), a, Some(json!({})));
    go("GET", "/v1/gpus", a, None);
    go("POST", "/v1/tickets", Some(&key), None);
    let asg = go(
        "POST",
        "/v1/assignments",
        a,
        Some(json!({"tenant_id": tid, "gpu_uuid": "GPU-aaaa", "memory_limit_mib": 40960})),
    );
    let aid = asg["id"].as_str().unwrap().to_string();
    go(
        "POST",
        "/v1/assignments",
        a,
        Some(json!({"tenant_id": tid, "gpu_uuid": "GPU-aaaa"})),
    );
    go(
        "POST",
        "/v1/assignments",
        a,
        Some(json!({"tenant_id": tid, "gpu_uuid": "GPU-zzzz"})),
    );
    go(
        "POST",
        "/v1/assignments",
        a,
        Some(json!({"tenant_id": tid, "gpu_uuid": "GPU-bbbb", "compute_share": 1.5})),
    );
    go("GET", "/v1/assignments", a, None);
    go("GET", "/v1/gpus", Some(&key), None);
    let grant = go("POST", "/v1/tickets", Some(&key), None);
    let sess = grant["session_id"].as_str().unwrap().to_string();
    go("POST", "/v1/tickets", a, None);
    go("GET", "/v1/sessions", a, None);
    go(
        "POST",
        "/v1/usage",
        Some(&stok),
        Some(
            json!({"report_id": "r-1", "records": [{"session_id": sess, "gpu_uuid": "GPU-aaaa", "period_start": now - 280,
        "period_end": now + 20, "gpu_seconds": 270.0, "gpu_busy_seconds": 150.0, "memory_gib_hours": 1.0, "bytes_moved": 1_000_000u64}]}),
        ),
    );
    go(
        "POST",
        "/v1/usage",
        Some(&stok),
        Some(
            json!({"records": [{"session_id": "sess_nope", "gpu_uuid": "GPU-aaaa", "period_start": 0, "period_end": 1}]}),
        ),
    );
    // The same report again (a retry after a failover): acknowledged, counted once.
    go(
        "POST",
        "/v1/usage",
        Some(&stok),
        Some(
            json!({"report_id": "r-1", "records": [{"session_id": sess, "gpu_uuid": "GPU-aaaa", "period_start": now - 280,
        "period_end": now + 20, "gpu_seconds": 270.0, "gpu_busy_seconds": 150.0, "memory_gib_hours": 1.0, "bytes_moved": 1_000_000u64}]}),
        ),
    );
    // More GPU time than the period holds on one GPU.
    go(
        "POST",
        "/v1/usage",
        Some(&stok),
        Some(
            json!({"records": [{"session_id": sess, "gpu_uuid": "GPU-aaaa", "period_start": now - 10, "period_end": now, "gpu_seconds": 1.7e308}]}),
        ),
    );
    go("POST", "/v1/usage", Some(&key), Some(json!({"records": []})));
    go("GET", "/v1/usage", a, None);
    go("GET", &format!("/v1/usage?tenant_id={tid}"), Some(&key), None);
    go("GET", "/v1/usage?from=abc", a, None);
    go(
        "PATCH",
        &format!("/v1/assignments/{aid}"),
        a,
        Some(json!({"gpu_uuid": "GPU-bbbb"})),
    );
    go(
        "PATCH",
        &format!("/v1/assignments/{aid}"),
        a,
        Some(json!({"memory_limit_mib": 999999})),
    );
    go(
        "POST",
        &format!("/v1/servers/{sid}/heartbeat"),
        Some(&stok),
        Some(json!({})),
    );
    let grant = go("POST", "/v1/tickets", Some(&key), None);
    let sess2 = grant["session_id"].as_str().unwrap().to_string();
    go("DELETE", &format!("/v1/sessions/{sess2}"), Some(&key), None);
    go("DELETE", "/v1/sessions/sess_missing", a, None);
    go("GET", "/v1/sessions?status=ended", Some(&key), None);
    go("DELETE", &format!("/v1/assignments/{aid}"), a, None);
    go("DELETE", &format!("/v1/assignments/{aid}"), a, None);
    go("GET", "/metrics", None, None);
    go("GET", "/", None, None);
    go("GET", "/ui/app.js", None, None);
    go("GET", "/ui/style.css", None, None);
    go("GET", "/ui/nothing.txt", None, None);
    go("DELETE", &format!("/v1/tenants/{tid}"), a, None);
    let second = go("POST", "/v1/admin-keys", a, Some(json!({"label": "second admin"})));
    let second_id = second["key"]["id"].as_str().unwrap().to_string();
    go("DELETE", &format!("/v1/keys/{second_id}"), a, None);
    go("DELETE", "/v1/keys/admin01", a, None);
    go("GET", "/v1/signing-keys", a, None);
    go("POST", "/v1/signing-keys/rotate", a, Some(json!({"overlap_s": 120})));
    go("GET", "/v1/public-key", None, None);
    go("DELETE", &format!("/v1/servers/{sid}"), a, None);
    go("DELETE", "/v1/servers/s_missing", a, None);
    go("GET", "/v1/audit?limit=5", a, None);
    go("GET", "/v1/tenants?limit=0", a, None);
    go("GET", "/v1/nowhere", a, None);
    go("PUT", "/v1/tenants", a, None);
    log
}

/// Replaces generated ids, secrets and times with placeholders so snapshots are stable.
pub fn normalize(v: &Value) -> Value {
    fn walk(key: &str, v: &Value) -> Value {
        const REDACT: &[&str] = &[
            "id",
            "tenant_id",
            "key_id",
            "server_id",
            "session_id",
            "plan_id",
            "revoked_key_id",
            "prefix",
            "token",
            "server_token",
            "secret",
            "ticket",
            "public_key_pem",
            "version",
            "kid",
            "actor",
            "target",
            "new_key_id",
            "next_cursor",
            "detail",
        ];
        match v {
            Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), walk(k, x))).collect()),
            Value::Array(a) if ["end_sessions", "signing_kids", "server_ids"].contains(&key) => {
                Value::Array(a.iter().map(|_| json!("[id]")).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(key, x)).collect()),
            Value::Null => Value::Null,
            Value::String(_) if REDACT.contains(&key) => json!(format!("[{key}]")),
            Value::Number(_) if key.ends_with("_at") || ["from", "to", "day", "at"].contains(&key) => json!("[time]"),
            _ => v.clone(),
        }
    }
    walk("", v)
}
