//! The same suite on every store: sled, PostgreSQL (a real server, started by the harness) and memory. First
//! the key-value contract (conditional commits, ranges), then the API's rules over each backend (uniqueness
//! under concurrency, capacity, ending sessions, idempotent usage, pruning, paging).
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/pg.rs"]
mod pg;

use common::{ADMIN_KEY, NODE_TOKEN};
use serde_json::{json, Value};
use std::sync::Arc;
use vgpu_control::api::{App, Bootstrap, Config, Request};
use vgpu_control::store::{open_backend, Backend, Batch, KvStore, MemStore, StoreError, WriteOp};

fn put(k: &str, v: &str) -> WriteOp {
    WriteOp::Put(k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

fn kv_contract(kv: &dyn KvStore) {
    let b = |ops: Vec<WriteOp>, expect: Vec<(&str, Option<&str>)>| Batch {
        ops,
        expect: expect
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect(),
        durable: true,
    };
    kv.commit(b(vec![put("a/1", "one"), put("a/2", "two"), put("b/1", "x")], vec![]))
        .unwrap();
    assert_eq!(kv.get(b"a/1").unwrap().as_deref(), Some(&b"one"[..]));
    let r = kv.range(b"a/", b"a0", 10).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(kv.range(b"a/", b"a0", 1).unwrap().len(), 1, "limit");
    // Conditions: absent, exact value; a failed condition writes nothing.
    assert!(matches!(
        kv.commit(b(vec![put("a/1", "uno"), put("c/1", "y")], vec![("a/1", None)])),
        Err(StoreError::Conflict)
    ));
    assert_eq!(kv.get(b"c/1").unwrap(), None, "nothing of a refused batch is written");
    assert!(matches!(
        kv.commit(b(vec![put("a/1", "uno")], vec![("a/1", Some("wrong"))])),
        Err(StoreError::Conflict)
    ));
    kv.commit(b(vec![put("a/1", "uno")], vec![("a/1", Some("one"))]))
        .unwrap();
    kv.commit(b(vec![put("n/1", "new")], vec![("n/1", None)])).unwrap();
    assert!(matches!(
        kv.commit(b(vec![put("n/1", "again")], vec![("n/1", None)])),
        Err(StoreError::Conflict)
    ));
    // Delete, and the same key put then deleted in one batch.
    kv.commit(b(
        vec![
            WriteOp::Delete(b"a/2".to_vec()),
            put("d/1", "z"),
            WriteOp::Delete(b"d/1".to_vec()),
        ],
        vec![],
    ))
    .unwrap();
    assert_eq!(kv.get(b"a/2").unwrap(), None);
    assert_eq!(kv.get(b"d/1").unwrap(), None);
    // Byte order is the key order (paging relies on it).
    kv.commit(b(vec![put("o/a", "1"), put("o/b", "2"), put("o/a\u{7f}", "3")], vec![]))
        .unwrap();
    let keys: Vec<Vec<u8>> = kv
        .range(b"o/", b"o0", 10)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec![b"o/a".to_vec(), b"o/a\x7f".to_vec(), b"o/b".to_vec()]);
}

fn app(kv: Box<dyn KvStore>, cfg: Config) -> App {
    App::open(
        kv,
        cfg,
        Bootstrap {
            admin_key: Some(ADMIN_KEY.into()),
            node_token: Some(NODE_TOKEN.into()),
        },
    )
    .unwrap()
    .0
}

fn call(app: &App, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let (path, query) = path
        .split_once('?')
        .map_or((path.to_string(), String::new()), |(p, q)| (p.into(), q.into()));
    let r = app.handle(&Request {
        method: method.into(),
        path,
        query,
        authorization: auth.map(|a| format!("Bearer {a}")),
        body: body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default(),
        remote: None,
    });
    (r.status, r.json())
}

fn api_rules(app: Arc<App>) {
    let a = Some(ADMIN_KEY);
    let admin_tok = call(
        &app,
        "POST",
        "/v1/auth/token",
        None,
        Some(json!({"api_key": ADMIN_KEY})),
    )
    .1["token"]
        .as_str()
        .unwrap()
        .to_string();
    let at = Some(admin_tok.as_str());
    // Uniqueness holds under concurrency: 8 threads create the same name, exactly one wins.
    let winners: usize = (0..8)
        .map(|_| {
            let app = app.clone();
            let tok = admin_tok.clone();
            std::thread::spawn(move || call(&app, "POST", "/v1/tenants", Some(&tok), Some(json!({"name": "same"}))).0)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|s| *s == 201)
        .count();
    assert_eq!(winners, 1);
    let (_, t) = call(&app, "POST", "/v1/tenants", at, Some(json!({"name": "lab"})));
    let tid = t["id"].as_str().unwrap().to_string();
    let (_, k) = call(&app, "POST", &format!("/v1/tenants/{tid}/keys"), a, Some(json!({})));
    let key = k["secret"].as_str().unwrap().to_string();
    // Enroll a server; its GPU's capacity holds under concurrent slices: 8 threads ask for 30% each.
    let gpus = json!([{"uuid": "GPU-s0", "index": 0, "name": "H100", "memory_total_mib": 81920}]);
    let (st, reg) = call(
        &app,
        "POST",
        "/v1/servers",
        None,
        Some(json!({"name": "s", "address": "s:1", "node_token": NODE_TOKEN, "gpus": gpus})),
    );
    assert_eq!(st, 201, "{reg}");
    let sid = reg["server"]["id"].as_str().unwrap().to_string();
    let stok = reg["server_token"].as_str().unwrap().to_string();
    let mut tenants = vec![tid.clone()];
    for i in 0..7 {
        let (_, t) = call(&app, "POST", "/v1/tenants", at, Some(json!({"name": format!("t{i}")})));
        tenants.push(t["id"].as_str().unwrap().to_string());
    }
    let ok: usize = tenants
        .iter()
        .map(|t| {
            let app = app.clone();
            let (t, tok) = (t.clone(), admin_tok.clone());
            std::thread::spawn(move || {
                call(
                    &app,
                    "POST",
                    "/v1/assignments",
                    Some(&tok),
                    Some(json!({"tenant_id": t, "gpu_uuid": "GPU-s0", "compute_share": 0.3})),
                )
                .0
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|s| *s == 201)
        .count();
    assert_eq!(ok, 3, "three slices of 0.3 fit, a fourth does not");
    let (_, g) = call(&app, "GET", "/v1/gpus", a, None);
    assert!(
        (g["gpus"][0]["assigned_share"].as_f64().unwrap() - 0.9).abs() < 1e-9,
        "{g}"
    );
    // The tenant with a slice gets a ticket; revoking its assignment ends the session and the server hears it.
    let (_, asg) = call(&app, "GET", "/v1/assignments?gpu_uuid=GPU-s0&limit=1000", a, None);
    let mine = asg["assignments"].as_array().unwrap()[0].clone();
    let owner = mine["tenant_id"].as_str().unwrap().to_string();
    let (_, k2) = call(&app, "POST", &format!("/v1/tenants/{owner}/keys"), a, Some(json!({})));
    let key2 = k2["secret"].as_str().unwrap().to_string();
    let (st, grant) = call(&app, "POST", "/v1/tickets", Some(&key2), None);
    assert_eq!(st, 201, "{grant}");
    let sess = grant["session_id"].as_str().unwrap().to_string();
    call(
        &app,
        "DELETE",
        &format!("/v1/assignments/{}", mine["id"].as_str().unwrap()),
        a,
        None,
    );
    let (_, hb) = call(
        &app,
        "POST",
        &format!("/v1/servers/{sid}/heartbeat"),
        Some(&stok),
        Some(json!({})),
    );
    assert_eq!(hb["end_sessions"], json!([sess]));
    // Usage with a report id is counted once however often it is sent.
    let (_, g2) = call(&app, "POST", "/v1/tickets", Some(&key2), None);
    assert_eq!(g2["error"]["code"], "no_assignment");
    let n = vgpu_control::auth::now();
    let report = json!({"report_id": "r1", "records": [{"session_id": sess, "gpu_uuid": "GPU-s0", "period_start": n - 100, "period_end": n, "gpu_seconds": 50.0}]});
    for _ in 0..3 {
        assert_eq!(
            call(&app, "POST", "/v1/usage", Some(&stok), Some(report.clone())).0,
            202
        );
    }
    let (_, u) = call(&app, "GET", &format!("/v1/usage?tenant_id={owner}"), a, None);
    assert_eq!(u["tenants"][0]["gpu_seconds"], 50.0);
    // Paging walks every tenant once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, p) = call(&app, "GET", &format!("/v1/tenants?limit=3&cursor={cursor}"), a, None);
        seen.extend(
            p["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string()),
        );
        match p["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let mut dedup = seen.clone();
    dedup.dedup();
    assert_eq!((seen.len(), dedup.len()), (9, 9));
    // An ended session is pruned after the retention time (0 here): gone from the store and its listings.
    let pruned = app.maintain();
    assert!(pruned.sessions >= 1, "{pruned:?}");
    assert_eq!(call(&app, "DELETE", &format!("/v1/sessions/{sess}"), a, None).0, 404);
    let (_, ss) = call(&app, "GET", &format!("/v1/sessions?tenant_id={owner}"), a, None);
    assert_eq!(ss["sessions"], json!([]));
    let _ = key;
}

fn zero_retention() -> Config {
    Config {
        session_retention_s: 0,
        ..Config::default()
    }
}

#[test]
fn memory_store() {
    kv_contract(&MemStore::default());
    api_rules(Arc::new(app(Box::new(MemStore::default()), zero_retention())));
}

#[test]
fn sled_store() {
    let dir = std::env::temp_dir().join(format!("vgpu-stores-sled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    kv_contract(open_backend(&Backend::Sled, &dir.join("kv")).unwrap().as_ref());
    api_rules(Arc::new(app(
        open_backend(&Backend::Sled, &dir.join("api")).unwrap(),
        zero_retention(),
    )));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn postgres_store() {
    let url = pg::fresh_db();
    kv_contract(
        open_backend(&Backend::Postgres(url), std::path::Path::new("/nonexistent"))
            .unwrap()
            .as_ref(),
    );
    let url = pg::fresh_db();
    api_rules(Arc::new(app(
        open_backend(&Backend::Postgres(url.clone()), std::path::Path::new("/nonexistent")).unwrap(),
        zero_retention(),
    )));
    // Migrations are versioned and applied once: opening again finds them done.
    open_backend(&Backend::Postgres(url.clone()), std::path::Path::new("/nonexistent")).unwrap();
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let n: i64 = c.query_one("SELECT count(*) FROM vgpu_migrations", &[]).unwrap().get(0);
    assert_eq!(n, 1);
}
