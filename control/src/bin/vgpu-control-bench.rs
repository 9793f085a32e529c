//! `vgpu-control-bench`: drives the control plane's load scenarios (see `vgpu_control::bench` and
//! bench/control/run.sh) and prints one JSON object per scenario. Every scenario stops by itself.

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vgpu_control::bench;
use vgpu_control::client::{self, Client};

#[derive(Parser)]
#[command(name = "vgpu-control-bench", about = "Load scenarios for the vGPU control plane")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Control plane URL(s), comma-separated.
    #[arg(long)]
    url: String,
    #[arg(long, env = "VGPU_ADMIN_KEY")]
    admin_key: String,
    #[arg(long, env = "VGPU_NODE_TOKEN")]
    node_token: String,
}

#[derive(clap::Args, Clone)]
struct Replicas {
    /// The vgpu-control binary to run as replicas.
    #[arg(long)]
    control_bin: PathBuf,
    /// postgres:// URL both replicas share.
    #[arg(long)]
    store: String,
    /// Folder for the replicas' data directories and shared secret.
    #[arg(long)]
    work: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Ticket issuance with an API key on every request.
    Tickets {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Simulated GPU servers heartbeating plus a steady rate of tickets.
    Fleet {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 10_000)]
        servers: usize,
        #[arg(long, default_value_t = 8)]
        gpus: usize,
        #[arg(long, default_value_t = 5.0)]
        beat: f64,
        #[arg(long, default_value_t = 500.0)]
        tickets_per_s: f64,
        #[arg(long, default_value_t = 96)]
        workers: usize,
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
    },
    /// Writes ended sessions straight into a store (the control plane must be stopped).
    Seed {
        /// `sled` (in --data-dir) or a postgres:// URL.
        #[arg(long)]
        store: String,
        #[arg(long, default_value = "vgpu-control-data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        sessions: usize,
    },
    /// Two replicas on PostgreSQL; writers through both URLs; kill -9 of one during the load.
    Failover {
        #[command(flatten)]
        r: Replicas,
        #[arg(long, default_value_t = 16)]
        writers: usize,
        #[arg(long, default_value_t = 15.0)]
        seconds: f64,
        #[arg(long, default_value_t = 5.0)]
        kill_after: f64,
    },
    /// Two replicas on PostgreSQL: revoke on A, time until a server heartbeating on B is told.
    Revocation {
        #[command(flatten)]
        r: Replicas,
        /// Heartbeat period of the simulated server, seconds.
        #[arg(long, default_value_t = 5.0)]
        beat: f64,
    },
}

const ADMIN: &str = "vgpu_adminbench_0123456789abcdefghijklmnop";
const NODE: &str = "vgpun_bench_0123456789abcdefghij";

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

/// Starts a replica over plain HTTP on loopback (the figures measure the store, not TLS).
fn replica(r: &Replicas, name: &str) -> Result<Replica, String> {
    let dir = r.work.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(dir.join("control.url"));
    let child = Command::new(&r.control_bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--store",
            &r.store,
            "--secret-file",
        ])
        .arg(r.work.join("secret.key"))
        .arg("--data-dir")
        .arg(&dir)
        .env("VGPU_ADMIN_KEY", ADMIN)
        .env("VGPU_NODE_TOKEN", NODE)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{}: {e}", r.control_bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        if let Ok(u) = std::fs::read_to_string(dir.join("control.url")) {
            if u.ends_with('\n') {
                break u.trim().to_string();
            }
        }
        if Instant::now() > deadline {
            return Err(format!("replica {name} did not start"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rep = Replica { child, url };
    while Client::new(&rep.url, None).call("GET", "/v1/health", None).is_err() {
        if Instant::now() > deadline {
            return Err(format!("replica {name} does not answer"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(rep)
}

/// (server id, credential) of one enrolled server, with its index.
type Enrolled = (usize, (String, String));

fn enroll_many(url: &str, node: &str, n: usize, gpus: usize) -> Result<Vec<(String, String)>, String> {
    let threads = 8;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (url, node) = (url.to_string(), node.to_string());
            std::thread::spawn(move || -> Result<Vec<Enrolled>, String> {
                (t..n)
                    .step_by(threads)
                    .map(|i| Ok((i, bench::enroll(&url, &node, &format!("fleet{i}"), gpus)?)))
                    .collect()
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| "enroll thread panicked")??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, c)| c).collect())
}

fn run(cmd: Cmd) -> Result<Value, String> {
    match cmd {
        Cmd::Tickets { t, clients, seconds } => {
            let s = bench::setup(
                &t.url,
                &t.admin_key,
                &t.node_token,
                &format!("t{}", vgpu_control::auth::now()),
            )?;
            Ok(bench::tickets(&t.url, &s.tenant_key, clients, seconds))
        }
        Cmd::Fleet {
            t,
            servers,
            gpus,
            beat,
            tickets_per_s,
            workers,
            seconds,
        } => {
            let s = bench::setup(
                &t.url,
                &t.admin_key,
                &t.node_token,
                &format!("f{}", vgpu_control::auth::now()),
            )?;
            let started = Instant::now();
            let creds = enroll_many(&t.url, &t.node_token, servers, gpus)?;
            let enroll_s = started.elapsed().as_secs_f64();
            let shape = bench::Fleet {
                gpus_per_server: gpus,
                beat_s: beat,
                tickets_per_s,
                workers,
                secs: seconds,
            };
            let mut v = bench::fleet(&t.url, &creds, &s.tenant_key, &shape);
            v["enroll_seconds"] = json!(enroll_s);
            Ok(v)
        }
        Cmd::Seed {
            store,
            data_dir,
            sessions,
        } => {
            let backend: vgpu_control::store::Backend = store.parse()?;
            vgpu_control::server::private_dir(&data_dir)?;
            let kv = vgpu_control::store::open_backend(&backend, &data_dir).map_err(|e| e.to_string())?;
            bench::seed_sessions(kv, sessions, 7 * 86400)
        }
        Cmd::Failover {
            r,
            writers,
            seconds,
            kill_after,
        } => {
            let a = replica(&r, "a")?;
            let b = replica(&r, "b")?;
            let both = format!("{},{}", a.url, b.url);
            // A usage report acknowledged by A before the kill, retried after it (it lands on B).
            let s = bench::setup(&a.url, ADMIN, NODE, "fo")?;
            let grant = client::request_ticket(&a.url, &s.tenant_key).map_err(|e| e.to_string())?;
            let n = vgpu_control::auth::now();
            let rec = client::UsageSample {
                session_id: grant.session_id,
                gpu_uuid: "GPU-bench-fo-0".into(),
                period_start: n - 60,
                period_end: n,
                gpu_seconds: 30.0,
                gpu_busy_seconds: 30.0,
                memory_gib_hours: 0.0,
                bytes_moved: 0,
                session_ended: false,
            };
            client::report_usage(&a.url, &s.server_token, "fo-report-1", std::slice::from_ref(&rec))
                .map_err(|e| e.to_string())?;
            let mut a = Some(a);
            let mut v = bench::failover(&both, ADMIN, writers, seconds, kill_after, || {
                if let Some(mut a) = a.take() {
                    let _ = a.child.kill();
                    let _ = a.child.wait();
                }
            });
            client::report_usage(&both, &s.server_token, "fo-report-1", std::slice::from_ref(&rec))
                .map_err(|e| e.to_string())?;
            let u = Client::new(&b.url, Some(ADMIN))
                .call("GET", &format!("/v1/usage?tenant_id={}", s.tenant_id), None)
                .map_err(|e| e.to_string())?;
            v["usage_report_sent_twice_gpu_seconds"] = u["tenants"][0]["gpu_seconds"].clone();
            Ok(v)
        }
        Cmd::Revocation { r, beat } => {
            let a = replica(&r, "a")?;
            let b = replica(&r, "b")?;
            let s = bench::setup(&a.url, ADMIN, NODE, "rv")?;
            let grant = client::request_ticket(&a.url, &s.tenant_key).map_err(|e| e.to_string())?;
            let asg = Client::new(&a.url, Some(ADMIN))
                .call("GET", &format!("/v1/assignments?tenant_id={}", s.tenant_id), None)
                .map_err(|e| e.to_string())?;
            let aid = asg["assignments"][0]["id"].as_str().unwrap_or_default().to_string();
            // The server beats on B at 0, beat, 2 beat...; the revocation lands on A in between.
            let phase = Duration::from_secs_f64(beat * ((vgpu_control::auth::now() % 89) as f64 + 5.0) / 100.0);
            let t0 = Instant::now();
            let first = client::heartbeat(&b.url, &s.server_token, &s.server_id, &[]).map_err(|e| e.to_string())?;
            if first.end_sessions.contains(&grant.session_id) {
                return Err("the session was ended before the revocation".into());
            }
            std::thread::sleep(phase.saturating_sub(t0.elapsed()));
            Client::new(&a.url, Some(ADMIN))
                .call("DELETE", &format!("/v1/assignments/{aid}"), None)
                .map_err(|e| e.to_string())?;
            let revoked = Instant::now();
            // Visible on B at once: nothing is cached per replica.
            let probe = client::heartbeat(&b.url, &s.server_token, &s.server_id, &[]).map_err(|e| e.to_string())?;
            let visible_at_once = probe.end_sessions.contains(&grant.session_id);
            std::thread::sleep(Duration::from_secs_f64(beat).saturating_sub(t0.elapsed()));
            let next = client::heartbeat(&b.url, &s.server_token, &s.server_id, &[]).map_err(|e| e.to_string())?;
            Ok(json!({"scenario": "revocation", "beat_s": beat,
                "visible_on_b_immediately": visible_at_once,
                "told_at_next_heartbeat": next.end_sessions.contains(&grant.session_id),
                "seconds_from_revocation_to_server_told": revoked.elapsed().as_secs_f64()}))
        }
    }
}

fn main() {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("vgpu-control-bench: {e}");
            std::process::exit(1);
        }
    }
}
