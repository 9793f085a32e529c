//! `vgpu bench`: the same probe (driver-API micro-benchmarks) run natively and through vGPU over TCP, TLS and
//! shared memory in one run on the same GPU, printed as a table of ratios and written as JSON.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::time::Instant;

use serde_json::{json, Value};

use vgpu_transports::link::LinkShape;

use crate::cuda::{Cuda, PTX};
use crate::local::{through_shim, LocalServer};
use vgpu_cuda_sys::driver::CUfunction_attribute;

/// (key, label, unit, higher_is_better)
const METRICS: &[(&str, &str, &str, bool)] = &[
    (
        "session_start_ms",
        "session start: load + cuInit (connect, handshake, facts)",
        "ms",
        false,
    ),
    (
        "context_ms",
        "first primary context (cuDevicePrimaryCtxRetain)",
        "ms",
        false,
    ),
    (
        "rss_added_mib",
        "client resident memory added by the driver",
        "MiB",
        false,
    ),
    (
        "server_session_rss_mib",
        "server: resident memory of one session's worker",
        "MiB",
        false,
    ),
    ("launch_async_us", "empty kernel launch, async, per launch", "µs", false),
    ("launch_sync_us", "launch + stream synchronize", "µs", false),
    ("memgetinfo_us", "cuMemGetInfo", "µs", false),
    (
        "occupancy_us",
        "cuFuncSetAttribute (unchanged) + cuOccupancyMaxActiveBlocksPerMultiprocessor",
        "µs",
        false,
    ),
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
    (
        "launch_rate_16proc_per_s",
        "16 processes: aggregate async launches",
        "1/s",
        true,
    ),
];

/// Processes in the shared-GPU launch-rate test.
const PROCESSES: usize = 16;

/// Resident memory (VmRSS, MiB) of process `pid` (a number, or "self").
fn rss_of(pid: impl std::fmt::Display) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    kb.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<f64>()
        .ok()
        .map(|kb| kb / 1024.0)
}

/// The server-side host memory of one session: a client holds a session open (a context, 64 MiB of device
/// memory, a 64 MiB pageable round trip through the server's staging buffers), and the largest resident set among
/// the server's worker processes is read meanwhile (the other one, if any, is the idle spare worker).
fn server_session_rss(server: &LocalServer, cmd: std::process::Command) -> Result<f64, String> {
    let mut cmd = cmd;
    cmd.args(["__memcheck", "--hold-ms", "1500", "--copy-mib", "64", "64"]);
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start the memory check: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout from the memory check")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok);
    let holding = lines.any(|l| l == "holding");
    let workers: Vec<u32> = std::fs::read_dir("/proc")
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // /proc/PID/stat: "pid (comm) state ppid ...": the comm may hold spaces, so split after its ')'.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
            }) == Some(server.pid())
        })
        .collect();
    let rss = workers.into_iter().filter_map(rss_of).fold(0.0, f64::max);
    // Read to the end: the client still prints after its hold, into a pipe that must stay open.
    lines.for_each(drop);
    let _ = child.wait();
    if !holding || rss == 0.0 {
        return Err("the memory check did not hold a session".into());
    }
    Ok(rss)
}

/// One of the processes of the launch-rate test: waits for `start_at` (Unix ms, so all start together),
/// launches `n` empty kernels asynchronously, synchronizes, and prints launches per second.
pub fn launch_rate(n: u64, start_at_ms: u64) -> Result<(), String> {
    let cuda = Cuda::load()?;
    cuda.open_device()?;
    let f = cuda.kernel(PTX, "empty")?;
    let null = std::ptr::null_mut();
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    while now_ms() < start_at_ms {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: an argument-less kernel launched with no parameters on the NULL stream.
        let r = unsafe { cuda.cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, null, null as _, null as _) };
        cuda.check("cuLaunchKernel", r)?;
    }
    // SAFETY: documented driver call.
    cuda.check("cuCtxSynchronize", unsafe { cuda.cuCtxSynchronize() })?;
    println!("{}", json!({ "launches_per_s": n as f64 / t.elapsed().as_secs_f64() }));
    Ok(())
}

/// Starts `PROCESSES` launch-rate children made by `make` together and sums their rates.
fn aggregate_launch_rate(make: &dyn Fn() -> Result<std::process::Command, String>, quick: bool) -> Result<f64, String> {
    let n = if quick { 2_000 } else { 20_000 };
    let start_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64 + 3000)
        .unwrap_or(0);
    let mut children = Vec::new();
    for _ in 0..PROCESSES {
        let mut cmd = make()?;
        cmd.args(["__launch-rate", &n.to_string(), &start_at.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push(
            cmd.spawn()
                .map_err(|e| format!("cannot start a launch-rate process: {e}"))?,
        );
    }
    let mut total = 0.0;
    let mut failure = None;
    for child in children {
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        match serde_json::from_str::<Value>(text.trim())
            .ok()
            .and_then(|v| v["launches_per_s"].as_f64())
        {
            Some(r) if out.status.success() => total += r,
            _ => failure = Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        }
    }
    match failure {
        Some(why) => Err(format!("a launch-rate process failed: {why}")),
        None => Ok(total),
    }
}

/// How the probe sizes its loops: `quick` for a smoke run; `link` (the shape between the probe and the server)
/// bounds round-trip-bound loops and copy repetitions to about a second each on long or thin links.
#[derive(Clone, Default)]
pub struct ProbeOptions {
    pub quick: bool,
    pub link: Option<LinkShape>,
}

impl ProbeOptions {
    /// Iterations of a loop paying `trips` round trips each: `n`, or fewer where the link's RTT would make the loop
    /// take more than ~0.3 s (never fewer than 20).
    fn iterations(&self, n: usize, trips: f64) -> usize {
        match &self.link {
            Some(l) if !l.rtt.is_zero() => {
                let per = (l.rtt.as_secs_f64() * trips).max(1e-9);
                n.min(((0.3 / per) as usize).max(20))
            }
            _ => n,
        }
    }

    /// Repetitions of a `size`-byte copy: `reps`, or fewer where the link's rate would take more than `budget_s`.
    fn copies(&self, reps: usize, size: usize, budget_s: f64) -> usize {
        match self.link.as_ref().and_then(LinkShape::bytes_per_s) {
            Some(rate) => reps.min((budget_s * rate / size as f64) as usize).max(1),
            None => reps.max(1),
        }
    }
}

/// Traffic through the shim over one measured loop, per operation (absent natively).
struct Traffic<'a> {
    cuda: &'a Cuda,
    before: Option<Vec<(String, u64)>>,
}

impl<'a> Traffic<'a> {
    fn start(cuda: &'a Cuda) -> Traffic<'a> {
        Traffic {
            cuda,
            before: cuda.vgpu_stats(),
        }
    }

    /// The counters' growth since `start`, divided by `ops`, as JSON by counter name.
    fn per_op(self, ops: usize) -> Value {
        match (self.before, self.cuda.vgpu_stats()) {
            (Some(a), Some(b)) => {
                let mut m = serde_json::Map::new();
                for ((name, after), (_, before)) in b.into_iter().zip(a) {
                    m.insert(name, json!(after.saturating_sub(before) as f64 / ops.max(1) as f64));
                }
                Value::Object(m)
            }
            _ => Value::Null,
        }
    }
}

/// The probe: runs every measurement in this process against whatever libcuda.so.1 loads; prints JSON. Through
/// vGPU's shim it also records each measurement's traffic per operation (round trips, flushes, bytes).
pub fn probe(opts: &ProbeOptions) -> Result<(), String> {
    let rss_before = rss_of("self").unwrap_or(0.0);
    let t = Instant::now();
    let cuda = Cuda::load()?;
    let mut traffic = BTreeMap::new();
    // SAFETY: documented driver call.
    cuda.check("cuInit", unsafe { cuda.cuInit(0) })?;
    let session_start_ms = t.elapsed().as_secs_f64() * 1e3;
    // Everything so far (connect, handshake, device facts) is the session start's.
    let zero = cuda.vgpu_stats().map(|v| v.into_iter().map(|(n, _)| (n, 0)).collect());
    traffic.insert(
        "session_start_ms",
        Traffic {
            cuda: &cuda,
            before: zero,
        }
        .per_op(1),
    );
    let t = Instant::now();
    let tr = Traffic::start(&cuda);
    cuda.open_device()?;
    let context_ms = t.elapsed().as_secs_f64() * 1e3;
    traffic.insert("context_ms", tr.per_op(1));
    let scale = if opts.quick { 10 } else { 1 };
    let mut out = BTreeMap::new();
    out.insert("session_start_ms", session_start_ms);
    out.insert("context_ms", context_ms);
    let f = cuda.kernel(PTX, "empty")?;
    let null = std::ptr::null_mut();
    let launch = || {
        // SAFETY: an argument-less kernel launched with no parameters on the NULL stream.
        unsafe { cuda.cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, null, std::ptr::null_mut(), std::ptr::null_mut()) }
    };
    for _ in 0..1000 {
        cuda.check("cuLaunchKernel", launch())?;
    }
    // SAFETY: documented driver call.
    cuda.check("cuCtxSynchronize", unsafe { cuda.cuCtxSynchronize() })?;
    let n = 100_000 / scale;
    let t = Instant::now();
    let tr = Traffic::start(&cuda);
    for _ in 0..n {
        cuda.check("cuLaunchKernel", launch())?;
    }
    // SAFETY: documented driver call.
    cuda.check("cuCtxSynchronize", unsafe { cuda.cuCtxSynchronize() })?;
    out.insert("launch_async_us", t.elapsed().as_secs_f64() / n as f64 * 1e6);
    traffic.insert("launch_async_us", tr.per_op(n));
    let n = opts.iterations(10_000 / scale, 1.0);
    let t = Instant::now();
    let tr = Traffic::start(&cuda);
    for _ in 0..n {
        cuda.check("cuLaunchKernel", launch())?;
        // SAFETY: documented driver call on the NULL stream.
        cuda.check("cuStreamSynchronize", unsafe { cuda.cuStreamSynchronize(null) })?;
    }
    out.insert("launch_sync_us", t.elapsed().as_secs_f64() / n as f64 * 1e6);
    traffic.insert("launch_sync_us", tr.per_op(n));
    let (mut free, mut total) = (0usize, 0usize);
    let t = Instant::now();
    let tr = Traffic::start(&cuda);
    for _ in 0..n {
        // SAFETY: out-pointers to locals.
        cuda.check("cuMemGetInfo", unsafe { cuda.cuMemGetInfo_v2(&mut free, &mut total) })?;
    }
    out.insert("memgetinfo_us", t.elapsed().as_secs_f64() / n as f64 * 1e6);
    traffic.insert("memgetinfo_us", tr.per_op(n));
    // What frameworks do before some launches: set an attribute to the value it has, ask the occupancy again.
    let mut blocks = 0i32;
    let smem = CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    let occupancy = |blocks: &mut i32| {
        // SAFETY: `f` is a loaded function; out-pointer to a local.
        unsafe {
            cuda.check("cuFuncSetAttribute", cuda.cuFuncSetAttribute(f, smem, 0))?;
            cuda.check(
                "cuOccupancyMaxActiveBlocksPerMultiprocessor",
                cuda.cuOccupancyMaxActiveBlocksPerMultiprocessor(blocks, f, 128, 0),
            )
        }
    };
    occupancy(&mut blocks)?;
    let t = Instant::now();
    let tr = Traffic::start(&cuda);
    for _ in 0..n {
        occupancy(&mut blocks)?;
    }
    out.insert("occupancy_us", t.elapsed().as_secs_f64() / n as f64 * 1e6);
    traffic.insert("occupancy_us", tr.per_op(n));
    let m = opts.iterations(2000 / scale, 2.0);
    let t = Instant::now();
    let tr = Traffic::start(&cuda);
    for _ in 0..m {
        let mut d = 0u64;
        // SAFETY: out-pointer to a local; the allocation is freed at once.
        unsafe {
            cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut d, 1 << 20))?;
            cuda.check("cuMemFree", cuda.cuMemFree_v2(d))?;
        }
    }
    out.insert("malloc_free_1mib_us", t.elapsed().as_secs_f64() / m as f64 * 1e6);
    traffic.insert("malloc_free_1mib_us", tr.per_op(m));
    let big = 1usize << 30;
    let mut dev = 0u64;
    // SAFETY: out-pointer to a local.
    cuda.check("cuMemAlloc", unsafe { cuda.cuMemAlloc_v2(&mut dev, big) })?;
    let mut word = 1u32;
    let t = Instant::now();
    let tr = Traffic::start(&cuda);
    for _ in 0..n {
        // SAFETY: 4 bytes from a local into a 1 GiB allocation.
        cuda.check("cuMemcpyHtoD", unsafe {
            cuda.cuMemcpyHtoD_v2(dev, &word as *const u32 as *const c_void, 4)
        })?;
    }
    out.insert("h2d_4b_us", t.elapsed().as_secs_f64() / n as f64 * 1e6);
    traffic.insert("h2d_4b_us", tr.per_op(n));
    let t = Instant::now();
    let tr = Traffic::start(&cuda);
    for _ in 0..n {
        // SAFETY: 4 bytes into a local.
        cuda.check("cuMemcpyDtoH", unsafe {
            cuda.cuMemcpyDtoH_v2(&mut word as *mut u32 as *mut c_void, dev, 4)
        })?;
    }
    out.insert("d2h_4b_us", t.elapsed().as_secs_f64() / n as f64 * 1e6);
    traffic.insert("d2h_4b_us", tr.per_op(n));
    // After launches and small copies, before the big buffers this probe allocates itself.
    out.insert("rss_added_mib", rss_of("self").unwrap_or(0.0) - rss_before);
    for (size, label, reps, budget_s) in [
        (64usize << 20, "64mib", 10 / scale.min(5), 1.5),
        (big, "1gib", 3 / scale.min(3), 3.0),
    ] {
        if opts.quick && opts.link.is_some() && size == big {
            // A smoke run through a link leaves out the 1 GiB copies (seconds each on a thin link).
            continue;
        }
        let reps = opts.copies(reps, size, budget_s);
        // On a link the warm-up copy only has to open the path (staging buffers, the pinned mirror), not repeat
        // a transfer that may take seconds.
        let warm = if opts.link.is_some() { size.min(64 << 20) } else { size };
        let mut pageable = vec![1u8; size];
        let mut pinned: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; freed below.
        cuda.check("cuMemAllocHost", unsafe { cuda.cuMemAllocHost_v2(&mut pinned, size) })?;
        // SAFETY: pinned holds `size` bytes.
        unsafe { std::ptr::write_bytes(pinned as *mut u8, 1, size) };
        for (kind, host) in [("pageable", pageable.as_mut_ptr() as *mut c_void), ("pinned", pinned)] {
            // SAFETY (both loops): `size` bytes between a host buffer of that size and a 1 GiB allocation.
            cuda.check("cuMemcpyHtoD", unsafe { cuda.cuMemcpyHtoD_v2(dev, host, warm) })?;
            let t = Instant::now();
            let tr = Traffic::start(&cuda);
            for _ in 0..reps {
                cuda.check("cuMemcpyHtoD", unsafe { cuda.cuMemcpyHtoD_v2(dev, host, size) })?;
            }
            let key = leak(format!("h2d_{kind}_{label}_gbps"));
            out.insert(key, (size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9);
            traffic.insert(key, tr.per_op(reps));
            let t = Instant::now();
            let tr = Traffic::start(&cuda);
            for _ in 0..reps {
                cuda.check("cuMemcpyDtoH", unsafe { cuda.cuMemcpyDtoH_v2(host, dev, size) })?;
            }
            let key = leak(format!("d2h_{kind}_{label}_gbps"));
            out.insert(key, (size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9);
            traffic.insert(key, tr.per_op(reps));
        }
        // SAFETY: allocated above by cuMemAllocHost.
        cuda.check("cuMemFreeHost", unsafe { cuda.cuMemFreeHost(pinned) })?;
    }
    // SAFETY: allocated above.
    cuda.check("cuMemFree", unsafe { cuda.cuMemFree_v2(dev) })?;
    let report = json!({ "device": cuda.device_name(), "vgpu_backend": cuda.vgpu_backend(), "metrics": out,
        "traffic": traffic, "link": opts.link.as_ref().map(|l| l.name.clone()) });
    println!("{report}");
    Ok(())
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Runs the probe `repeat` times (children made by `make`) and keeps each metric's median.
pub(crate) fn median_probe(
    make: &dyn Fn() -> Result<std::process::Command, String>,
    opts: &ProbeOptions,
    repeat: usize,
) -> Result<Value, String> {
    let mut runs = Vec::new();
    for _ in 0..repeat.max(1) {
        runs.push(run_probe(make()?, opts)?);
    }
    let mut merged = runs[0].clone();
    if let Some(keys) = runs[0]["metrics"]
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>())
    {
        for k in keys {
            let mut v: Vec<f64> = runs.iter().filter_map(|r| r["metrics"][&k].as_f64()).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            if let Some(m) = v.get(v.len() / 2) {
                merged["metrics"][&k] = json!(m);
            }
        }
    }
    merged["repeats"] = json!(runs.len());
    Ok(merged)
}

/// Runs the probe in a child with the given environment and parses its JSON line.
fn run_probe(mut cmd: std::process::Command, opts: &ProbeOptions) -> Result<Value, String> {
    cmd.arg("__probe");
    if opts.quick {
        cmd.arg("--quick");
    }
    if let Some(link) = &opts.link {
        cmd.args(["--link", &link.name]);
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

pub fn run(quick: bool, json_path: Option<&std::path::Path>, backend: &str, repeat: usize) -> Result<(), String> {
    let opts = ProbeOptions { quick, link: None };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let native_cmd = || {
        let mut c = std::process::Command::new(&exe);
        c.env_remove("LD_LIBRARY_PATH");
        Ok(c)
    };
    let mut native = median_probe(&native_cmd, &opts, repeat);
    match &mut native {
        Ok(v) => v["metrics"]["launch_rate_16proc_per_s"] = json!(aggregate_launch_rate(&native_cmd, quick).ok()),
        Err(e) => eprintln!("vgpu bench: no native run ({e}); ratios are left out"),
    }
    // RDMA joins where this host has an active RDMA port (VGPU_BENCH_RDMA_ADDR: where to exchange queue pairs).
    let rdma_addr = match vgpu_transports::rdma::available() {
        Ok(_) => Some(std::env::var("VGPU_BENCH_RDMA_ADDR").unwrap_or_else(|_| "127.0.0.1:0".into())),
        Err(why) => {
            eprintln!("vgpu bench: no RDMA column ({why})");
            None
        }
    };
    let extra: Vec<&str> = rdma_addr.iter().flat_map(|a| ["--rdma", a.as_str()]).collect();
    let server = LocalServer::start(backend, &extra)?;
    for line in server.banner.iter().filter(|l| l.contains("GPUDirect")) {
        eprintln!("vgpu bench: {}", line.trim_start_matches("vgpu server: "));
    }
    let tcp_cmd = || through_shim(&exe, Some(&server.tcp));
    let tls_cmd = || through_shim(&exe, Some(&server.tls));
    let shm_cmd = || through_shim(&exe, Some(&server.shm));
    let mut tcp = median_probe(&tcp_cmd, &opts, repeat)?;
    let mut tls = median_probe(&tls_cmd, &opts, repeat)?;
    let mut shm = median_probe(&shm_cmd, &opts, repeat)?;
    tcp["metrics"]["server_session_rss_mib"] = json!(server_session_rss(&server, tcp_cmd()?).ok());
    tls["metrics"]["server_session_rss_mib"] = json!(server_session_rss(&server, tls_cmd()?).ok());
    shm["metrics"]["server_session_rss_mib"] = json!(server_session_rss(&server, shm_cmd()?).ok());
    shm["metrics"]["launch_rate_16proc_per_s"] = json!(aggregate_launch_rate(&shm_cmd, quick)?);
    let rdma = match &server.rdma {
        Some(endpoint) => {
            let rdma_cmd = || through_shim(&exe, Some(endpoint));
            match median_probe(&rdma_cmd, &opts, repeat) {
                Ok(v) => Some(v),
                Err(e) => {
                    eprintln!("vgpu bench: the RDMA run failed ({e}); no RDMA column");
                    None
                }
            }
        }
        None => None,
    };
    drop(server);
    let id = vgpu_cuda_exec::tls_identity::ephemeral()?;
    let floors = json!({
        "tcp_pingpong_us": vgpu_transports::floor::tcp_pingpong_us(2000).ok(),
        "tcp_bulk_gbps": vgpu_transports::floor::tcp_bulk_gbps(1 << 30).ok(),
        "tls_pingpong_us": vgpu_transports::floor::tls_pingpong_us(id.chain.clone(), id.key.clone_key(), 2000).ok(),
        "tls_bulk_gbps": vgpu_transports::floor::tls_bulk_gbps(id.chain.clone(), id.key.clone_key(), 1 << 30).ok(),
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
    println!("{}", channel_settings());
    let rdma_head = if rdma.is_some() {
        format!(" {:>10} {:>8}", "vgpu rdma", "ratio")
    } else {
        String::new()
    };
    println!(
        "{:<62} {:>10} {:>10} {:>8} {:>10} {:>8} {:>10} {:>8} {:>6}{rdma_head}",
        "metric", "native", "vgpu tcp", "ratio", "vgpu tls", "ratio", "vgpu shm", "ratio", "RT/op"
    );
    let mut rows = Vec::new();
    for &(key, label, unit, higher_better) in METRICS {
        let n = get(native.as_ref(), key);
        let t = get(Some(&tcp), key);
        let l = get(Some(&tls), key);
        let s = get(Some(&shm), key);
        let r = get(rdma.as_ref(), key);
        // Ratios are vGPU ÷ native in time (so > 1 is slower) for both kinds of metric.
        let ratio = |v: Option<f64>| match (v, n) {
            (Some(v), Some(n)) if v > 0.0 && n > 0.0 => Some(if higher_better { n / v } else { v / n }),
            _ => None,
        };
        let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        let rdma_cols = if rdma.is_some() {
            format!(" {:>10} {:>8}", f(r), f(ratio(r)))
        } else {
            String::new()
        };
        // Synchronous round trips per operation over TCP, from the shim's counters (the same over every transport).
        let trips = tcp["traffic"][key]["round_trips"].as_f64();
        println!(
            "{:<62} {:>10} {:>10} {:>8} {:>10} {:>8} {:>10} {:>8} {:>6}{rdma_cols}",
            format!("{label} ({unit})"),
            f(n),
            f(t),
            f(ratio(t)),
            f(l),
            f(ratio(l)),
            f(s),
            f(ratio(s)),
            f(trips)
        );
        rows.push(
            json!({"metric": key, "label": label, "unit": unit, "native": n, "tcp": t, "tls": l, "shm": s,
            "rdma": r, "tcp_time_ratio": ratio(t), "tls_time_ratio": ratio(l), "shm_time_ratio": ratio(s),
            "rdma_time_ratio": ratio(r), "round_trips_per_op": trips, "tcp_traffic_per_op": tcp["traffic"][key]}),
        );
    }
    println!(
        "(ratio = vGPU time ÷ native time; for bandwidths, native GB/s ÷ vGPU GB/s; RT/op = synchronous round trips \
         per operation, from the shim's counters)"
    );
    println!("transport floors: {floors}");
    println!();
    let cross_server = crate::bench_peer::cross_server(backend, quick, floors["tcp_bulk_gbps"].as_f64())
        .unwrap_or_else(|e| {
            eprintln!("vgpu bench: no server-to-server rows ({e})");
            Value::Null
        });
    if let Some(path) = json_path {
        let doc = json!({ "device": device, "vgpu_emulated": emulated, "quick": quick, "repeats": repeat, "rows": rows,
            "floors": floors, "native_raw": native, "tcp_raw": tcp, "tls_raw": tls, "shm_raw": shm,
            "rdma_raw": rdma, "cross_server": cross_server });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The client settings that shape a network channel's bulk rate, as this run had them (the probes inherit them).
pub(crate) fn channel_settings() -> String {
    let setting = |name: &str, default: &str| match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => format!("{name}={}", v.trim()),
        _ => format!("{name}={default} (default)"),
    };
    format!(
        "network channels: {} streams each once 8 MiB moved, {}",
        setting("VGPU_TCP_STREAMS", "4"),
        setting("VGPU_COMPRESS", "off")
    )
}
