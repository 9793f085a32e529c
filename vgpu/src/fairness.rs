//! `vgpu bench fairness`: tenant processes with fixed work on one GPU, natively (time-sliced), under MPS where its
//! control program exists, and through vGPU with equal and unequal shares and priority classes; prints fairness.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cuda::Cuda;
use crate::local::{through_shim, LocalServer};
use vgpu_cuda_sys::driver::CUfunction;

/// PTX of the tenants' kernels: an empty kernel (launch-bound work) and a naive SGEMM (compute-bound work).
const FAIR_PTX: &str = include_str!("fairness.ptx");

/// Simulated kernel time on the emulated backend (`VGPU_EMULATED_KERNEL_NS`): an empty launch 3.4 µs, a 1024² GEMM
/// (4096 blocks) about 1.6 ms. SIMULATED, not measured.
const EMULATED_COST: &str = "3000+400";

#[derive(clap::Subcommand, Debug)]
pub enum BenchWhat {
    /// Fairness and shares of several tenants on one GPU: native, MPS and vGPU side by side.
    Fairness(Args),
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Workloads: gemm, launch, mix (repeat the flag; default all three).
    #[arg(long = "workload")]
    workloads: Vec<String>,
    /// Tenants in the equal-share scenarios.
    #[arg(long, default_value_t = 8)]
    tenants: usize,
    /// Target length of each contended scenario, in seconds (its fixed work is sized from the alone rate).
    #[arg(long, default_value_t = 6.0)]
    seconds: f64,
    /// Scenarios: native, mps, vgpu-off, equal, unequal, priority (repeat; default: all for gemm; native, vgpu-off
    /// and equal for launch and mix).
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Backend for the vGPU side (auto, real, emulated).
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Transport of the vGPU tenants: shm or tcp.
    #[arg(long, default_value = "shm")]
    transport: String,
    /// GEMM size (n × n floats).
    #[arg(long, default_value_t = 1024)]
    gemm_n: u32,
    /// MPS rows: auto (start a private MPS daemon where nvidia-cuda-mps-control exists) or off.
    #[arg(long, default_value = "auto")]
    mps: String,
    /// Also write everything (every tenant's iteration times) as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// `vgpu __fair-tenant`: one tenant's process.
#[derive(clap::Args, Debug)]
pub struct TenantArgs {
    #[arg(long)]
    kind: String,
    /// Stop after this many iterations...
    #[arg(long, default_value_t = u64::MAX)]
    iters: u64,
    /// ... or after this many seconds, whichever comes first.
    #[arg(long, default_value_t = 3600.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1024)]
    gemm_n: u32,
}

/// One iteration of a workload: its launches, then a synchronisation.
fn iteration(
    cuda: &Cuda,
    kind: &str,
    empty: CUfunction,
    gemm: CUfunction,
    n: u32,
    bufs: &mut [u64; 3],
) -> Result<(), String> {
    let null = std::ptr::null_mut();
    let launch_empty = |count: u32| -> Result<(), String> {
        for _ in 0..count {
            // SAFETY: an argument-less kernel, one thread, on the NULL stream.
            let r = unsafe { cuda.cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, null, null as _, null as _) };
            cuda.check("cuLaunchKernel", r)?;
        }
        Ok(())
    };
    let mut nn = n;
    let mut args = [
        &mut nn as *mut u32 as *mut std::ffi::c_void,
        &mut bufs[0] as *mut u64 as *mut std::ffi::c_void,
        &mut bufs[1] as *mut u64 as *mut std::ffi::c_void,
        &mut bufs[2] as *mut u64 as *mut std::ffi::c_void,
    ];
    let grid = n.div_ceil(16);
    let mut launch_gemm = || -> Result<(), String> {
        // SAFETY: fair_gemm's four parameters point at locals that outlive the call; the buffers hold n² floats.
        let r = unsafe { cuda.cuLaunchKernel(gemm, grid, grid, 1, 16, 16, 1, 0, null, args.as_mut_ptr(), null as _) };
        cuda.check("cuLaunchKernel", r)
    };
    match kind {
        "launch" => launch_empty(100)?,
        "gemm" => launch_gemm()?,
        "mix" => {
            launch_gemm()?;
            launch_empty(50)?;
        }
        other => return Err(format!("unknown workload {other}: use gemm, launch or mix")),
    }
    // SAFETY: documented driver call.
    cuda.check("cuCtxSynchronize", unsafe { cuda.cuCtxSynchronize() })
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The tenant: sets up, prints `ready`, reads the start time (Unix ms) from stdin, runs, prints its iteration times.
pub fn tenant(a: TenantArgs) -> Result<(), String> {
    let cuda = Cuda::load()?;
    cuda.open_device()?;
    let empty = cuda.kernel(FAIR_PTX, "fair_empty")?;
    let gemm = cuda.kernel(FAIR_PTX, "fair_gemm")?;
    let n = a.gemm_n.clamp(16, 8192);
    let bytes = (n as usize) * (n as usize) * 4;
    let ones = vec![1.0f32; (n as usize) * (n as usize)];
    let mut bufs = [0u64; 3];
    for b in bufs.iter_mut() {
        // SAFETY: out-pointer to a local; `ones` holds `bytes` bytes.
        unsafe {
            cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(b, bytes))?;
            cuda.check("cuMemcpyHtoD", cuda.cuMemcpyHtoD_v2(*b, ones.as_ptr() as _, bytes))?;
        }
    }
    // One untimed iteration: module, code and caches warm.
    iteration(&cuda, &a.kind, empty, gemm, n, &mut bufs)?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| e.to_string())?;
    let start_at: f64 = line.trim().parse().map_err(|_| format!("bad start time {line:?}"))?;
    while unix_ms() < start_at {
        std::thread::sleep(Duration::from_micros(200));
    }
    let t0 = Instant::now();
    let mut times = Vec::new();
    while (times.len() as u64) < a.iters && t0.elapsed().as_secs_f64() < a.seconds {
        iteration(&cuda, &a.kind, empty, gemm, n, &mut bufs)?;
        times.push((t0.elapsed().as_secs_f64() * 1e3 * 1000.0).round() / 1000.0);
    }
    println!(
        "{}",
        json!({"kind": a.kind, "times_ms": times, "device": cuda.device_name(), "backend": cuda.vgpu_backend()})
    );
    Ok(())
}

/// How tenant processes reach the GPU.
#[derive(Clone)]
enum Route {
    Native,
    /// Natively, as clients of the MPS daemon at this pipe directory.
    Mps(String),
    /// Through vGPU: endpoint and key.
    Vgpu(String, String),
}

/// What one tenant process reported.
struct Run {
    times_ms: Vec<f64>,
}

impl Run {
    fn done_ms(&self) -> f64 {
        self.times_ms.last().copied().unwrap_or(0.0)
    }
    fn rate(&self) -> f64 {
        let d = self.done_ms();
        if d > 0.0 {
            self.times_ms.len() as f64 / (d / 1e3)
        } else {
            0.0
        }
    }
}

/// Starts one process per (route, iterations, seconds), all starting together; returns their reports.
fn run_tenants(kind: &str, gemm_n: u32, plan: &[(Route, u64, f64)]) -> Result<Vec<Run>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children: Vec<Child> = Vec::new();
    for (route, iters, seconds) in plan {
        let mut cmd = match route {
            Route::Native | Route::Mps(_) => {
                let mut c = Command::new(&exe);
                c.env_remove("LD_LIBRARY_PATH");
                c
            }
            Route::Vgpu(endpoint, key) => {
                let mut c = through_shim(&exe, Some(endpoint))?;
                c.env("VGPU_KEY", key);
                c
            }
        };
        if let Route::Mps(dir) = route {
            cmd.env("CUDA_MPS_PIPE_DIRECTORY", dir);
        }
        cmd.args(["__fair-tenant", "--kind", kind, "--gemm-n", &gemm_n.to_string()])
            .args(["--iters", &iters.to_string(), "--seconds", &seconds.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(cmd.spawn().map_err(|e| format!("cannot start a tenant: {e}"))?);
    }
    let mut readers = Vec::new();
    for c in children.iter_mut() {
        let out = c.stdout.take().ok_or("no tenant stdout")?;
        let mut lines = BufReader::new(out).lines();
        match lines.next() {
            Some(Ok(l)) if l == "ready" => readers.push(lines),
            other => {
                for c in children.iter_mut() {
                    let _ = c.kill();
                }
                let why = other.and_then(Result::ok).unwrap_or_default();
                return Err(format!("a tenant did not start ({why})"));
            }
        }
    }
    let start = unix_ms() + 200.0;
    for c in children.iter_mut() {
        let mut stdin = c.stdin.take().ok_or("no tenant stdin")?;
        writeln!(stdin, "{start}").map_err(|e| e.to_string())?;
    }
    let mut runs = Vec::new();
    for (c, lines) in children.into_iter().zip(readers) {
        let text: Vec<String> = lines.map_while(Result::ok).collect();
        let out = c.wait_with_output().map_err(|e| e.to_string())?;
        let report = text
            .iter()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .ok_or_else(|| format!("a tenant failed: {}", String::from_utf8_lossy(&out.stderr).trim()))?;
        let times_ms = report["times_ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        runs.push(Run { times_ms });
    }
    Ok(runs)
}

/// Jain's fairness index.
fn jain(x: &[f64]) -> f64 {
    let s: f64 = x.iter().sum();
    let q: f64 = x.iter().map(|v| v * v).sum();
    if q == 0.0 {
        0.0
    } else {
        s * s / (x.len() as f64 * q)
    }
}

/// Each tenant's share of the GPU per whole second while all were running: its part of the iterations all tenants
/// finished in that second. The tenants of a scenario run the same program, so iterations stand for GPU time (a
/// saturated GPU; the sum is 1 by construction, and `aggregate` says how busy the GPU was).
fn window_shares(runs: &[Run]) -> Vec<Vec<f64>> {
    let all_busy_ms = runs.iter().map(Run::done_ms).fold(f64::MAX, f64::min);
    let windows = (all_busy_ms / 1000.0).floor().max(0.0) as usize;
    let count = |r: &Run, w: usize| {
        let (a, b) = (w as f64 * 1000.0, (w + 1) as f64 * 1000.0);
        r.times_ms.iter().filter(|&&t| t > a && t <= b).count() as f64
    };
    let totals: Vec<f64> = (0..windows).map(|w| runs.iter().map(|r| count(r, w)).sum()).collect();
    runs.iter()
        .map(|r| {
            (0..windows)
                .map(|w| if totals[w] > 0.0 { count(r, w) / totals[w] } else { 0.0 })
                .collect()
        })
        .collect()
}

/// Figures of one contended scenario.
fn summarize(name: &str, runs: &[Run], targets: &[f64], alone: f64) -> Value {
    let done: Vec<f64> = runs.iter().map(Run::done_ms).collect();
    let norm: Vec<f64> = runs
        .iter()
        .zip(targets)
        .map(|(r, t)| if alone > 0.0 { r.rate() / alone / t } else { 0.0 })
        .collect();
    let makespan = done.iter().cloned().fold(0.0, f64::max);
    let iters: usize = runs.iter().map(|r| r.times_ms.len()).sum();
    let windows = window_shares(runs);
    let worst_points = windows
        .iter()
        .zip(targets)
        .flat_map(|(w, t)| w.iter().map(move |s| (s - t).abs() * 100.0))
        .fold(0.0, f64::max);
    json!({
        "scenario": name,
        "tenants": runs.len(),
        "targets": targets,
        "jain": jain(&norm),
        "slowest_over_fastest": done.iter().cloned().fold(0.0, f64::max) / done.iter().cloned().fold(f64::MAX, f64::min).max(1e-9),
        "aggregate_iters_per_s": if makespan > 0.0 { iters as f64 / (makespan / 1e3) } else { 0.0 },
        "rates": runs.iter().map(Run::rate).collect::<Vec<_>>(),
        "window_shares": windows,
        "worst_window_points_off_target": worst_points,
        "times_ms": runs.iter().map(|r| &r.times_ms).collect::<Vec<_>>(),
    })
}

/// A private MPS daemon for the MPS rows, quit on drop.
struct MpsDaemon {
    control: String,
    pipe: String,
    log: String,
}

impl MpsDaemon {
    fn start() -> Result<MpsDaemon, String> {
        let control = std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("nvidia-cuda-mps-control"))
                    .find(|f| f.exists())
            })
            .ok_or("nvidia-cuda-mps-control is not on PATH")?
            .display()
            .to_string();
        let base = std::env::temp_dir().join(format!("vgpu-bench-mps-{}", std::process::id()));
        let (pipe, log) = (base.join("pipe"), base.join("log"));
        for d in [&pipe, &log] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let d = MpsDaemon {
            control,
            pipe: pipe.display().to_string(),
            log: log.display().to_string(),
        };
        let ok = Command::new(&d.control)
            .arg("-d")
            .env("CUDA_MPS_PIPE_DIRECTORY", &d.pipe)
            .env("CUDA_MPS_LOG_DIRECTORY", &d.log)
            .status()
            .map_err(|e| format!("cannot start the MPS daemon: {e}"))?;
        if !ok.success() {
            return Err(format!("nvidia-cuda-mps-control -d failed ({ok})"));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(d)
    }
}

impl Drop for MpsDaemon {
    fn drop(&mut self) {
        if let Ok(mut c) = Command::new(&self.control)
            .env("CUDA_MPS_PIPE_DIRECTORY", &self.pipe)
            .env("CUDA_MPS_LOG_DIRECTORY", &self.log)
            .stdin(Stdio::piped())
            .spawn()
        {
            if let Some(mut i) = c.stdin.take() {
                let _ = writeln!(i, "quit");
            }
            let _ = c.wait();
        }
    }
}

/// Keys of the bench's plans file: `eq0..` (equal), `u10 u50 u40` (unequal), `g` (guaranteed) and `p0..p3`
/// (preemptible), `solo`.
fn plans(tenants: usize) -> String {
    let mut s = String::from("solo 1.0\nu10 0.1\nu50 0.5\nu40 0.4\ng 0.5 guaranteed\n");
    for i in 0..4 {
        s.push_str(&format!("p{i} 0.125 preemptible\n"));
    }
    for i in 0..tenants {
        s.push_str(&format!("eq{i} {}\n", 1.0 / tenants as f64));
    }
    s
}

pub fn run(a: Args) -> Result<(), String> {
    let tenants = a.tenants.clamp(2, 64);
    let workloads = if a.workloads.is_empty() {
        vec!["gemm".to_string(), "launch".into(), "mix".into()]
    } else {
        a.workloads.clone()
    };
    let native_ok = Cuda::load().and_then(|c| c.open_device()).is_ok() && a.backend != "emulated";
    let plans_file = std::env::temp_dir().join(format!("vgpu-bench-plans-{}", std::process::id()));
    std::fs::write(&plans_file, plans(tenants)).map_err(|e| e.to_string())?;
    let plans_arg = plans_file.display().to_string();
    let mut env: Vec<(&str, &str)> = Vec::new();
    if a.backend == "emulated" || !native_ok {
        env.push(("VGPU_EMULATED_KERNEL_NS", EMULATED_COST));
    }
    let on = LocalServer::start_with_env(&a.backend, &["--plans", &plans_arg], &env)?;
    let mut env_off = env.clone();
    env_off.push(("VGPU_SCHED", "off"));
    let off = LocalServer::start_with_env(&a.backend, &["--plans", &plans_arg], &env_off)?;
    let emulated = on.banner.iter().any(|l| l.contains("emulated backend"));
    let endpoint = |s: &LocalServer| {
        if a.transport == "tcp" {
            s.tcp.clone()
        } else {
            s.shm.clone()
        }
    };
    let mps = if a.mps == "off" || !native_ok {
        Err("off".to_string())
    } else {
        MpsDaemon::start()
    };
    let t = a.seconds.clamp(1.0, 600.0);
    let calib = 2.0;
    let mut doc = json!({"emulated": emulated, "tenants": tenants, "seconds": t, "transport": a.transport,
        "server_banner": on.banner, "mps": mps.as_ref().map(|m| m.pipe.clone()).map_err(|e| e.clone()),
        "workloads": {}});
    println!(
        "vgpu bench fairness: {tenants} tenants, {t:.0} s per scenario, vGPU over {}{}",
        a.transport,
        if emulated {
            " — EMULATED backend: kernel times are SIMULATED (VGPU_EMULATED_KERNEL_NS), no GPU ran anything"
        } else {
            ""
        }
    );
    for kind in &workloads {
        let scenarios: Vec<String> = if !a.scenarios.is_empty() {
            a.scenarios.clone()
        } else if kind == "gemm" {
            ["native", "mps", "vgpu-off", "equal", "unequal", "priority"]
                .map(String::from)
                .to_vec()
        } else {
            ["native", "vgpu-off", "equal"].map(String::from).to_vec()
        };
        let alone = |route: Route| -> Result<f64, String> {
            let r = run_tenants(kind, a.gemm_n, &[(route, u64::MAX, calib)])?;
            Ok(r[0].times_ms.len() as f64 / calib)
        };
        let native_alone = if native_ok { Some(alone(Route::Native)?) } else { None };
        let on_alone = alone(Route::Vgpu(endpoint(&on), "solo".into()))?;
        let off_alone = alone(Route::Vgpu(endpoint(&off), "solo".into()))?;
        println!(
            "\n[{kind}] alone (iterations/s): native {}, vGPU scheduler on {on_alone:.1}, off {off_alone:.1} (on ÷ off = {:.3})",
            native_alone.map_or("-".into(), |v| format!("{v:.1}")),
            on_alone / off_alone.max(1e-9)
        );
        let base_rate = native_alone.unwrap_or(off_alone);
        let equal_iters = ((base_rate * t / tenants as f64).round() as u64).max(1);
        let mut rows: Vec<Value> = Vec::new();
        for sc in &scenarios {
            let eq = |route: &dyn Fn(usize) -> Route| -> Vec<(Route, u64, f64)> {
                (0..tenants).map(|i| (route(i), equal_iters, 4.0 * t)).collect()
            };
            let (plan, targets, alone_rate): (Vec<(Route, u64, f64)>, Vec<f64>, f64) = match sc.as_str() {
                "native" if native_ok => (eq(&|_| Route::Native), vec![1.0 / tenants as f64; tenants], base_rate),
                "mps" => match &mps {
                    Ok(m) => (
                        eq(&|_| Route::Mps(m.pipe.clone())),
                        vec![1.0 / tenants as f64; tenants],
                        base_rate,
                    ),
                    Err(why) => {
                        println!("  mps: skipped ({why})");
                        continue;
                    }
                },
                "vgpu-off" => (
                    eq(&|i| Route::Vgpu(endpoint(&off), format!("eq{i}"))),
                    vec![1.0 / tenants as f64; tenants],
                    off_alone,
                ),
                "equal" => (
                    eq(&|i| Route::Vgpu(endpoint(&on), format!("eq{i}"))),
                    vec![1.0 / tenants as f64; tenants],
                    on_alone,
                ),
                "unequal" => {
                    let shares = [0.1, 0.5, 0.4];
                    let plan = ["u10", "u50", "u40"]
                        .iter()
                        .zip(shares)
                        .map(|(k, s)| {
                            let n = ((on_alone * t * s).round() as u64).max(1);
                            (Route::Vgpu(endpoint(&on), k.to_string()), n, 4.0 * t)
                        })
                        .collect();
                    (plan, shares.to_vec(), on_alone)
                }
                "priority" => {
                    // The guaranteed tenant's work would take half the scenario alone; the preemptible ones run
                    // for the whole scenario, whatever they get.
                    let mut plan = vec![(
                        Route::Vgpu(endpoint(&on), "g".into()),
                        ((on_alone * t / 2.0).round() as u64).max(1),
                        4.0 * t,
                    )];
                    for i in 0..4 {
                        plan.push((Route::Vgpu(endpoint(&on), format!("p{i}")), u64::MAX, t));
                    }
                    (plan, vec![1.0, 0.0, 0.0, 0.0, 0.0], on_alone)
                }
                "native" => {
                    println!("  native: skipped (no NVIDIA driver here)");
                    continue;
                }
                other => return Err(format!("unknown scenario {other}")),
            };
            let runs = run_tenants(kind, a.gemm_n, &plan)?;
            let mut row = summarize(sc, &runs, &targets, alone_rate);
            if sc == "priority" {
                row["guaranteed_vs_alone"] = json!(runs[0].rate() / on_alone.max(1e-9));
                row["jain"] = Value::Null;
                row["slowest_over_fastest"] = Value::Null;
            }
            if sc == "unequal" || sc == "priority" {
                row["aggregate_iters_per_s"] = Value::Null;
                row["slowest_over_fastest"] = Value::Null;
            }
            if sc == "priority" {
                row["worst_window_points_off_target"] = Value::Null;
            }
            print_row(kind, &row);
            rows.push(row);
        }
        // Aggregate throughput of the equal-share runs against the same processes natively (or, without a GPU,
        // against vGPU with the scheduler off).
        let agg = |name: &str| {
            rows.iter()
                .find(|r| r["scenario"] == name)
                .and_then(|r| r["aggregate_iters_per_s"].as_f64())
        };
        let reference = if native_ok { agg("native") } else { agg("vgpu-off") };
        if let (Some(e), Some(n)) = (agg("equal"), reference) {
            println!(
                "  aggregate throughput, {tenants} tenants through vGPU with the scheduler ÷ {}: {:.3}",
                if native_ok {
                    "natively"
                } else {
                    "vGPU with the scheduler off (no GPU here)"
                },
                e / n
            );
        }
        doc["workloads"][kind] = json!({"alone": {"native": native_alone, "vgpu_on": on_alone, "vgpu_off": off_alone},
            "equal_iters": equal_iters, "scenarios": rows});
    }
    drop(mps);
    let _ = std::fs::remove_file(&plans_file);
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn print_row(kind: &str, r: &Value) {
    let f = |k: &str, digits: usize| r[k].as_f64().map_or("-".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "  {kind:<6} {:<9} tenants {:>2}  Jain {:>6}  slowest/fastest {:>6}  aggregate {:>9} it/s  worst window {:>5} points off target{}",
        r["scenario"].as_str().unwrap_or("?"),
        r["tenants"],
        f("jain", 4),
        f("slowest_over_fastest", 3),
        f("aggregate_iters_per_s", 1),
        f("worst_window_points_off_target", 1),
        r["guaranteed_vs_alone"]
            .as_f64()
            .map_or(String::new(), |g| format!("  guaranteed at {g:.3} of its rate alone"))
    );
    if let Some(ws) = r["window_shares"].as_array() {
        if r["scenario"] == "unequal" || r["scenario"] == "priority" {
            for (i, w) in ws.iter().enumerate() {
                let cells: Vec<String> = w
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).map(|v| format!("{v:.3}")).collect())
                    .unwrap_or_default();
                println!(
                    "      tenant {i} (target {}): share per 1 s window {}",
                    r["targets"][i],
                    cells.join(" ")
                );
            }
        }
    }
}
