//! Load generator for the control plane (`vgpu-control-bench`): the scenarios of issue 17's goals table
//! (ticket issuance, a fleet of simulated servers heartbeating plus tickets, a store seeded with a million
//! ended sessions, kill -9 of one of two replicas, cross-replica revocation). Every run is bounded in time.

use crate::client::Client;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Latency samples kept per operation kind (enough for a p99 of a 10-minute run).
const MAX_SAMPLES: usize = 2_000_000;

#[derive(Default)]
pub struct Samples {
    lat: Mutex<Vec<Duration>>,
    errors: AtomicU64,
}

impl Samples {
    pub fn ok(&self, d: Duration) {
        let mut v = self.lat.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < MAX_SAMPLES {
            v.push(d);
        }
    }
    pub fn err(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    /// {count, per_s, p50_ms, p99_ms, max_ms, errors} over `secs`.
    pub fn summary(&self, secs: f64) -> Value {
        let mut v = self.lat.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v.sort();
        let pct = |p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
            v[i].as_secs_f64() * 1000.0
        };
        json!({
            "count": v.len(), "per_s": (v.len() as f64 / secs.max(1e-9)).round(),
            "p50_ms": round3(pct(0.50)), "p99_ms": round3(pct(0.99)),
            "max_ms": round3(v.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)),
            "errors": self.errors.load(Ordering::Relaxed),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn timed(s: &Samples, f: impl FnOnce() -> bool) {
    let t = Instant::now();
    if f() {
        s.ok(t.elapsed());
    } else {
        s.err();
    }
}

/// What the scenarios need set up: a tenant with a key and a GPU assigned on an enrolled server.
pub struct Setup {
    pub tenant_id: String,
    pub tenant_key: String,
    pub server_id: String,
    pub server_token: String,
}

fn gpus(server: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"uuid": format!("GPU-{server}-{i}"), "index": i, "name": "NVIDIA H100 80GB HBM3", "model": "H100",
                   "memory_total_mib": 81920, "memory_used_mib": 0, "utilization_pct": 0.0})
        })
        .collect()
}

/// Enrolls server `name` with `n_gpus` GPUs; returns (id, credential).
pub fn enroll(urls: &str, node_token: &str, name: &str, n_gpus: usize) -> Result<(String, String), String> {
    let v = Client::new(urls, None)
        .call(
            "POST",
            "/v1/servers",
            Some(&json!({"name": name, "address": format!("{name}:7070"), "node_token": node_token, "gpus": gpus(name, n_gpus)})),
        )
        .map_err(|e| format!("enroll {name}: {e}"))?;
    Ok((
        v["server"]["id"].as_str().unwrap_or_default().to_string(),
        v["server_token"].as_str().unwrap_or_default().to_string(),
    ))
}

pub fn setup(urls: &str, admin_key: &str, node_token: &str, tag: &str) -> Result<Setup, String> {
    let admin = Client::new(urls, Some(admin_key));
    let e = |e: crate::client::ClientError| e.to_string();
    let t = admin
        .call("POST", "/v1/tenants", Some(&json!({"name": format!("bench-{tag}")})))
        .map_err(e)?;
    let tenant_id = t["id"].as_str().unwrap_or_default().to_string();
    let k = admin
        .call("POST", &format!("/v1/tenants/{tenant_id}/keys"), Some(&json!({})))
        .map_err(e)?;
    let (server_id, server_token) = enroll(urls, node_token, &format!("bench-{tag}"), 8)?;
    admin
        .call(
            "POST",
            "/v1/assignments",
            Some(&json!({"tenant_id": tenant_id, "gpu_uuid": format!("GPU-bench-{tag}-0"), "compute_share": 0.5})),
        )
        .map_err(e)?;
    Ok(Setup {
        tenant_id,
        tenant_key: k["secret"].as_str().unwrap_or_default().to_string(),
        server_id,
        server_token,
    })
}

/// Ticket issuance with the tenant's API key on every request (what the CUDA shim does), `clients` threads
/// back to back for `secs`.
pub fn tickets(urls: &str, key: &str, clients: usize, secs: f64) -> Value {
    let s = Arc::new(Samples::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (s, stop, c) = (s.clone(), stop.clone(), Client::new(urls, Some(key)));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    timed(&s, || c.call("POST", "/v1/tickets", Some(&json!({}))).is_ok());
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    json!({"scenario": "tickets", "clients": clients, "seconds": secs, "tickets": s.summary(secs)})
}

/// Shape of the `fleet` scenario.
#[derive(Clone, Copy)]
pub struct Fleet {
    pub gpus_per_server: usize,
    /// Heartbeat period of each server, seconds.
    pub beat_s: f64,
    pub tickets_per_s: f64,
    /// Threads sending heartbeats.
    pub workers: usize,
    pub secs: f64,
}

/// Simulated GPU servers (enrolled beforehand, `creds`) heartbeating every `beat_s` with their full inventory
/// and load, plus `tickets_per_s` ticket requests with `key`, for `secs`.
pub fn fleet(urls: &str, creds: &[(String, String)], key: &str, f: &Fleet) -> Value {
    let Fleet {
        gpus_per_server,
        beat_s,
        tickets_per_s,
        workers,
        secs,
    } = *f;
    let hb = Arc::new(Samples::default());
    let tk = Arc::new(Samples::default());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let creds = Arc::new(creds.to_vec());
    let mut threads = Vec::new();
    for w in 0..workers {
        let (hb, creds, urls) = (hb.clone(), creds.clone(), urls.to_string());
        threads.push(std::thread::spawn(move || {
            let client = Client::with_timeout(&urls, None, Duration::from_secs(10));
            let mine: Vec<usize> = (w..creds.len()).step_by(workers).collect();
            if mine.is_empty() {
                return;
            }
            // Each server beats every `beat_s`, spread evenly over the period.
            let gap = beat_s / mine.len() as f64;
            let mut k = 0usize;
            loop {
                let due = start + Duration::from_secs_f64(gap * k as f64 + (w as f64 / workers as f64) * gap);
                if due >= end {
                    return;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let (id, tok) = &creds[mine[k % mine.len()]];
                let c = client.with_credential(Some(tok));
                let mut g = gpus(&format!("fleet{}", mine[k % mine.len()]), gpus_per_server);
                for (i, x) in g.iter_mut().enumerate() {
                    x["utilization_pct"] = json!(((k + i) % 100) as f64);
                }
                timed(&hb, || {
                    c.call(
                        "POST",
                        &format!("/v1/servers/{id}/heartbeat"),
                        Some(&json!({"gpus": g})),
                    )
                    .is_ok()
                });
                k += 1;
            }
        }));
    }
    let ticket_threads = 8usize;
    for t in 0..ticket_threads {
        let (tk, urls, key) = (tk.clone(), urls.to_string(), key.to_string());
        threads.push(std::thread::spawn(move || {
            let c = Client::new(&urls, Some(&key));
            let gap = ticket_threads as f64 / tickets_per_s;
            let mut k = 0usize;
            loop {
                let due = start + Duration::from_secs_f64(gap * k as f64 + t as f64 * gap / ticket_threads as f64);
                if due >= end {
                    return;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                timed(&tk, || c.call("POST", "/v1/tickets", Some(&json!({}))).is_ok());
                k += 1;
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    let took = start.elapsed().as_secs_f64();
    json!({"scenario": "fleet", "servers": creds.len(), "gpus": creds.len() * gpus_per_server, "beat_s": beat_s,
           "tickets_per_s_asked": tickets_per_s, "heartbeats_per_s_asked": creds.len() as f64 / beat_s,
           "seconds": took, "heartbeat": hb.summary(took), "ticket": tk.summary(took)})
}

/// Writes `n` ended sessions of a new tenant straight into a store (the control plane must not be running
/// on it), as the API would have left them: ended a day ago, pruned only after the retention time.
pub fn seed_sessions(kv: Box<dyn crate::store::KvStore>, n: usize, retention_s: u64) -> Result<Value, String> {
    use crate::layout;
    use crate::model::{Session, Tenant};
    use crate::store::{Db, Tx};
    let db = Db::new(kv);
    layout::open(&db, retention_s).map_err(|e| e.to_string())?;
    let now = crate::auth::now();
    let t = Tenant {
        id: crate::auth::new_id("t"),
        name: format!("seeded-{now}"),
        plan_id: None,
        created_at: now,
    };
    let mut tx = Tx::default();
    tx.put(&layout::tenant(&t.id), &t).map_err(|e| e.to_string())?;
    tx.put(&layout::tenant_name(&t.name), &t.id)
        .map_err(|e| e.to_string())?;
    db.commit(tx).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let mut tx = Tx::default();
        for _ in 0..(n - done).min(2000) {
            let ended = now - 86400;
            let s = Session {
                id: crate::auth::new_id("sess"),
                tenant_id: t.id.clone(),
                gpu_uuids: vec!["GPU-seeded".into()],
                created_at: ended - 60,
                expires_at: ended + 3600,
                ended_at: Some(ended),
                end_reason: Some("closed by server".into()),
                server_ids: vec![],
                gc_at: ended + retention_s,
            };
            layout::put_session(&mut tx, &s, None).map_err(|e| e.to_string())?;
            done += 1;
        }
        db.commit(tx).map_err(|e| e.to_string())?;
    }
    Ok(json!({"scenario": "seed", "sessions": n, "tenant_id": t.id, "seconds": started.elapsed().as_secs_f64()}))
}

/// Writers through a client that knows both replicas; `kill` runs after `kill_after` seconds (it kills one
/// replica). Measures the longest time any writer went without a success after the kill, and checks every
/// acknowledged write is readable afterwards.
pub fn failover(urls: &str, admin_key: &str, writers: usize, secs: f64, kill_after: f64, kill: impl FnOnce()) -> Value {
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::new(Samples::default());
    let killed_at = Arc::new(Mutex::new(None::<Instant>));
    let recovered = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (acked, stop, s, killed_at, recovered) = (
                acked.clone(),
                stop.clone(),
                s.clone(),
                killed_at.clone(),
                recovered.clone(),
            );
            let c = Client::with_timeout(urls, Some(admin_key), Duration::from_secs(5));
            std::thread::spawn(move || {
                let mut n = 0;
                let mut waiting = false;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match c.call("POST", "/v1/tenants", Some(&json!({"name": format!("fo-{w}-{n}")}))) {
                        Ok(v) => {
                            s.ok(t.elapsed());
                            if let Some(id) = v["id"].as_str() {
                                acked.lock().unwrap_or_else(|p| p.into_inner()).push(id.to_string());
                            }
                            let k = *killed_at.lock().unwrap_or_else(|p| p.into_inner());
                            if let (Some(k), false) = (k, waiting) {
                                // First success after the kill.
                                recovered.lock().unwrap_or_else(|p| p.into_inner()).push(k.elapsed());
                                waiting = true;
                            }
                        }
                        Err(_) => s.err(),
                    }
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(kill_after));
    *killed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    kill();
    std::thread::sleep(Duration::from_secs_f64((secs - kill_after).max(1.0)));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let ids = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let c = Client::new(urls, Some(admin_key));
    let lost = ids
        .iter()
        .filter(|id| c.call("GET", &format!("/v1/tenants/{id}"), None).is_err())
        .count();
    let rec = recovered.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let worst = rec.iter().max().map_or(-1.0, |d| d.as_secs_f64());
    json!({"scenario": "failover", "writers": writers, "seconds": secs, "acknowledged_writes": ids.len(),
           "lost_after_kill": lost, "writers_served_again": rec.len(), "worst_seconds_to_next_success": round3(worst),
           "writes": s.summary(secs)})
}
