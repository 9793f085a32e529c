//! `vgpu bench`: the same probe (driver-API micro-benchmarks) run natively and through vGPU over TCP and
//! shared memory in one run on the same GPU, printed as a table of ratios and written as JSON.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::time::Instant;

use serde_json::{json, Value};

use crate::cuda::{Cuda, PTX};
use crate::local::{through_shim, LocalServer};

/// (key, label, unit, higher_is_better)
const METRICS: &[(&str, &str, &str, bool)] = &[
    ("launch_async_us", "empty kernel launch, async, per launch", "µs", false),
    ("launch_sync_us", "launch + stream synchronize", "µs", false),
    ("memgetinfo_us", "cuMemGetInfo", "µs", false),
    ("malloc_free_1mib_us", "cuMemAlloc + cuMemFree, 1 MiB", "µs", false),
    ("h2d_4b_us", "cuMemcpyHtoD 4 B", "µs", false),
    ("d2h_4b_us", "cuMemcpyDtoH 4 B", "µs", false),
    ("h2d_pageable_64mib_gbps", "pageable H→D 64 MiB", "GB/s", true),
    ("d2h_pageable_64mib_gbps", "pageable D→H 64 MiB", "GB/s", true),
    ("h2d_pinned_64mib_gbps", "pinned H→D 64 MiB", "GB/s", true),
    ("d2h_pinned_64mib_gbps", "pinned D→H 64 MiB", "GB/s", true),
    ("h2d_pageable_1gib_gbps", "pageable H→D 1 GiB", "GB/s", true),
    ("d2h_pageable_1gib_gbps", "pageable D→H 1 GiB", "GB/s", true),
    ("h2d_pinned_1gib_gbps", "pinned H→D 1 GiB", "GB/s", true),
    ("d2h_pinned_1gib_gbps", "pinned D→H 1 GiB", "GB/s", true),
];

/// The probe: runs every measurement in this process against whatever libcuda.so.1 loads; prints JSON.
pub fn probe(quick: bool) -> Result<(), String> {
    let cuda = Cuda::load()?;
    cuda.open_device()?;
    let scale = if quick { 10 } else { 1 };
    let mut out = BTreeMap::new();
    let f = cuda.kernel(PTX, "empty")?;
    let null = std::ptr::null_mut();
    let launch = || {
        // SAFETY: an argument-less kernel launched with no parameters on the NULL stream.
        unsafe { (cuda.launch_kernel)(f, 1, 1, 1, 1, 1, 1, 0, null, std::ptr::null_mut(), std::ptr::null_mut()) }
    };
    for _ in 0..1000 {
        cuda.check("cuLaunchKernel", launch())?;
    }
    // SAFETY: documented driver call.
    cuda.check("cuCtxSynchronize", unsafe { (cuda.ctx_synchronize)() })?;
    let n = 100_000 / scale;
    let t = Instant::now();
    for _ in 0..n {
        cuda.check("cuLaunchKernel", launch())?;
    }
    // SAFETY: documented driver call.
    cuda.check("cuCtxSynchronize", unsafe { (cuda.ctx_synchronize)() })?;
    out.insert("launch_async_us", t.elapsed().as_secs_f64() / n as f64 * 1e6);
    let n = 10_000 / scale;
    let t = Instant::now();
    for _ in 0..n {
        cuda.check("cuLaunchKernel", launch())?;
        // SAFETY: documented driver call on the NULL stream.
        cuda.check("cuStreamSynchronize", unsafe { (cuda.stream_synchronize)(null) })?;
    }
    out.insert("launch_sync_us", t.elapsed().as_secs_f64() / n as f64 * 1e6);
    let (mut free, mut total) = (0usize, 0usize);
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: out-pointers to locals.
        cuda.check("cuMemGetInfo", unsafe { (cuda.mem_get_info)(&mut free, &mut total) })?;
    }
    out.insert("memgetinfo_us", t.elapsed().as_secs_f64() / n as f64 * 1e6);
    let m = 2000 / scale;
    let t = Instant::now();
    for _ in 0..m {
        let mut d = 0u64;
        // SAFETY: out-pointer to a local; the allocation is freed at once.
        unsafe {
            cuda.check("cuMemAlloc", (cuda.mem_alloc)(&mut d, 1 << 20))?;
            cuda.check("cuMemFree", (cuda.mem_free)(d))?;
        }
    }
    out.insert("malloc_free_1mib_us", t.elapsed().as_secs_f64() / m as f64 * 1e6);
    let big = 1usize << 30;
    let mut dev = 0u64;
    // SAFETY: out-pointer to a local.
    cuda.check("cuMemAlloc", unsafe { (cuda.mem_alloc)(&mut dev, big) })?;
    let mut word = 1u32;
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: 4 bytes from a local into a 1 GiB allocation.
        cuda.check("cuMemcpyHtoD", unsafe {
            (cuda.memcpy_htod)(dev, &word as *const u32 as *const c_void, 4)
        })?;
    }
    out.insert("h2d_4b_us", t.elapsed().as_secs_f64() / n as f64 * 1e6);
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: 4 bytes into a local.
        cuda.check("cuMemcpyDtoH", unsafe {
            (cuda.memcpy_dtoh)(&mut word as *mut u32 as *mut c_void, dev, 4)
        })?;
    }
    out.insert("d2h_4b_us", t.elapsed().as_secs_f64() / n as f64 * 1e6);
    for (size, label, reps) in [
        (64usize << 20, "64mib", 10 / scale.min(5)),
        (big, "1gib", 3 / scale.min(3)),
    ] {
        let reps = reps.max(1);
        let mut pageable = vec![1u8; size];
        let mut pinned: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; freed below.
        cuda.check("cuMemAllocHost", unsafe { (cuda.mem_alloc_host)(&mut pinned, size) })?;
        // SAFETY: pinned holds `size` bytes.
        unsafe { std::ptr::write_bytes(pinned as *mut u8, 1, size) };
        for (kind, host) in [("pageable", pageable.as_mut_ptr() as *mut c_void), ("pinned", pinned)] {
            // SAFETY (both loops): `size` bytes between a host buffer of that size and a 1 GiB allocation.
            cuda.check("cuMemcpyHtoD", unsafe { (cuda.memcpy_htod)(dev, host, size) })?;
            let t = Instant::now();
            for _ in 0..reps {
                cuda.check("cuMemcpyHtoD", unsafe { (cuda.memcpy_htod)(dev, host, size) })?;
            }
            out.insert(
                leak(format!("h2d_{kind}_{label}_gbps")),
                (size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9,
            );
            let t = Instant::now();
            for _ in 0..reps {
                cuda.check("cuMemcpyDtoH", unsafe { (cuda.memcpy_dtoh)(host, dev, size) })?;
            }
            out.insert(
                leak(format!("d2h_{kind}_{label}_gbps")),
                (size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9,
            );
        }
        // SAFETY: allocated above by cuMemAllocHost.
        cuda.check("cuMemFreeHost", unsafe { (cuda.mem_free_host)(pinned) })?;
    }
    // SAFETY: allocated above.
    cuda.check("cuMemFree", unsafe { (cuda.mem_free)(dev) })?;
    let report = json!({ "device": cuda.device_name(), "vgpu_backend": cuda.vgpu_backend(), "metrics": out });
    println!("{report}");
    Ok(())
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Runs the probe in a child with the given environment and parses its JSON line.
fn run_probe(mut cmd: std::process::Command, quick: bool) -> Result<Value, String> {
    cmd.arg("__probe");
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd.output().map_err(|e| format!("cannot run the probe: {e}"))?;
    if !out.status.success() {
        return Err(format!("probe failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("probe printed no JSON")?;
    serde_json::from_str(line).map_err(|e| format!("probe output: {e}"))
}

pub fn run(quick: bool, json_path: Option<&std::path::Path>, backend: &str) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut native_cmd = std::process::Command::new(&exe);
    native_cmd.env_remove("LD_LIBRARY_PATH");
    let native = run_probe(native_cmd, quick);
    if let Err(e) = &native {
        eprintln!("vgpu bench: no native run ({e}); ratios are left out");
    }
    let server = LocalServer::start(backend, &[])?;
    let tcp = run_probe(through_shim(&exe, Some(&server.tcp))?, quick)?;
    let shm = run_probe(through_shim(&exe, Some(&server.shm))?, quick)?;
    drop(server);
    let floors = json!({
        "tcp_pingpong_us": vgpu_transports::floor::tcp_pingpong_us(2000).ok(),
        "tcp_bulk_gbps": vgpu_transports::floor::tcp_bulk_gbps(1 << 30).ok(),
        "shm_pingpong_us": vgpu_transports::floor::shm_pingpong_us(20000).ok(),
        "shm_bulk_gbps": vgpu_transports::floor::shm_bulk_gbps(1 << 30).ok(),
    });
    let native = native.ok();
    let get = |v: Option<&Value>, k: &str| v.and_then(|v| v["metrics"][k].as_f64());
    let device = tcp["device"].as_str().unwrap_or("?").to_string();
    let emulated = tcp["vgpu_backend"].as_i64() == Some(1);
    println!(
        "vgpu bench on {device}{}",
        if emulated {
            " (vGPU side: EMULATED backend, not a GPU)"
        } else {
            ""
        }
    );
    println!(
        "{:<40} {:>10} {:>10} {:>8} {:>10} {:>8}",
        "metric", "native", "vgpu tcp", "ratio", "vgpu shm", "ratio"
    );
    let mut rows = Vec::new();
    for &(key, label, unit, higher_better) in METRICS {
        let n = get(native.as_ref(), key);
        let t = get(Some(&tcp), key);
        let s = get(Some(&shm), key);
        // Ratios are vGPU ÷ native in time (so > 1 is slower) for both kinds of metric.
        let ratio = |v: Option<f64>| match (v, n) {
            (Some(v), Some(n)) if v > 0.0 && n > 0.0 => Some(if higher_better { n / v } else { v / n }),
            _ => None,
        };
        let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<40} {:>10} {:>10} {:>8} {:>10} {:>8}",
            format!("{label} ({unit})"),
            f(n),
            f(t),
            f(ratio(t)),
            f(s),
            f(ratio(s))
        );
        rows.push(
            json!({"metric": key, "label": label, "unit": unit, "native": n, "tcp": t, "shm": s,
            "tcp_time_ratio": ratio(t), "shm_time_ratio": ratio(s)}),
        );
    }
    println!("(ratio = vGPU time ÷ native time; for bandwidths, native GB/s ÷ vGPU GB/s)");
    println!("transport floors: {floors}");
    if let Some(path) = json_path {
        let doc = json!({ "device": device, "vgpu_emulated": emulated, "quick": quick, "rows": rows,
            "floors": floors, "native_raw": native, "tcp_raw": tcp, "shm_raw": shm });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
