//! `vgpu bench --links`: the driver-API probe over TCP through link shapes (a shaping relay on this host), each row
//! with its round trips and bytes per operation and the time the link model predicts; and `vgpu link-relay`.
//!
//! Every shape is measured beside `loopback` (the direct connection) and `relay` (the relay without delay or rate
//! limit): `relay − loopback` is the relay's own cost, and the `relay` figure is the base of each prediction,
//! `RTT × round trips + max(base, bytes ÷ rate)` (`LinkShape::predict`), so that cost cancels out.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vgpu_transports::floor;
use vgpu_transports::link::relay::Relay;
use vgpu_transports::link::wire::Wire;
use vgpu_transports::link::LinkShape;

use crate::bench::{median_probe, ProbeOptions};
use crate::local::{through_shim, LocalServer};

/// (key, label, unit) of the probe metrics a link changes; bandwidths in GB/s, the rest times.
const LINK_METRICS: &[(&str, &str, &str)] = &[
    (
        "session_start_ms",
        "session start (cuInit: connect, handshake, facts)",
        "ms",
    ),
    ("context_ms", "first primary context", "ms"),
    ("launch_async_us", "empty kernel launch, async, per launch", "µs"),
    ("launch_sync_us", "launch + stream synchronize", "µs"),
    ("memgetinfo_us", "cuMemGetInfo", "µs"),
    (
        "occupancy_us",
        "cuFuncSetAttribute (unchanged) + cuOccupancyMaxActiveBlocksPerMultiprocessor",
        "µs",
    ),
    ("malloc_free_1mib_us", "cuMemAlloc + cuMemFree, 1 MiB", "µs"),
    ("h2d_4b_us", "cuMemcpyHtoD 4 B", "µs"),
    ("d2h_4b_us", "cuMemcpyDtoH 4 B", "µs"),
    ("h2d_pageable_64mib_gbps", "pageable H→D 64 MiB", "GB/s"),
    ("d2h_pageable_64mib_gbps", "pageable D→H 64 MiB", "GB/s"),
    ("h2d_pinned_64mib_gbps", "pinned H→D 64 MiB", "GB/s"),
    ("d2h_pinned_64mib_gbps", "pinned D→H 64 MiB", "GB/s"),
    ("h2d_pageable_1gib_gbps", "pageable H→D 1 GiB", "GB/s"),
    ("d2h_pageable_1gib_gbps", "pageable D→H 1 GiB", "GB/s"),
    ("h2d_pinned_1gib_gbps", "pinned H→D 1 GiB", "GB/s"),
    ("d2h_pinned_1gib_gbps", "pinned D→H 1 GiB", "GB/s"),
];

/// The bytes one operation of a bandwidth metric moves.
fn copy_size(key: &str) -> Option<f64> {
    if key.contains("64mib") {
        Some((64u64 << 20) as f64)
    } else if key.contains("1gib") {
        Some((1u64 << 30) as f64)
    } else {
        None
    }
}

/// A metric's value as seconds per operation.
fn seconds_per_op(key: &str, unit: &str, v: f64) -> Option<f64> {
    if !(v.is_finite() && v > 0.0) {
        return None;
    }
    match unit {
        "GB/s" => copy_size(key).map(|b| b / (v * 1e9)),
        "ms" => Some(v * 1e-3),
        "µs" => Some(v * 1e-6),
        _ => None,
    }
}

/// Seconds per operation back to the metric's unit.
fn from_seconds(key: &str, unit: &str, s: f64) -> Option<f64> {
    match unit {
        "GB/s" => copy_size(key).map(|b| b / s / 1e9),
        "ms" => Some(s * 1e3),
        "µs" => Some(s * 1e6),
        _ => None,
    }
}

/// One shape's measurements: the probe (medians) and the transport floors through the same relay.
struct ShapeRun {
    shape: LinkShape,
    probe: Value,
    pingpong_us: Option<f64>,
    bulk_gbps: Option<f64>,
    relay: Value,
}

/// One shape across the packet-level wire: a server of its own inside the wire's namespace, the probe here.
fn measure_across_wire(
    exe: &std::path::Path,
    backend: &str,
    shape: &LinkShape,
    quick: bool,
    repeat: usize,
) -> Result<ShapeRun, String> {
    let wire = Wire::start(shape).map_err(|e| format!("wire for {shape}: {e}"))?;
    let server = LocalServer::start_in_netns(wire.netns_name(), wire.far_addr(), backend)?;
    let opts = ProbeOptions {
        quick,
        link: Some(shape.clone()),
    };
    let repeat = if shape.rtt >= Duration::from_millis(1) {
        1
    } else {
        repeat
    };
    let t = Instant::now();
    let probe = median_probe(&|| through_shim(exe, Some(&server.tcp)), &opts, repeat)?;
    eprintln!(
        "vgpu bench --links: {shape} (wire) measured in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let stats = wire.stats();
    let wire_stats = json!({
        "packets": stats.packets.load(std::sync::atomic::Ordering::Relaxed),
        "dropped": stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
    });
    drop(server);
    drop(wire);
    let iters = (0.5 / shape.rtt.as_secs_f64().max(20e-6)).clamp(20.0, 5000.0) as usize;
    let bulk = shape
        .bytes_per_s()
        .map_or(512usize << 20, |r| ((r * 2.0) as usize).min(512 << 20));
    Ok(ShapeRun {
        shape: shape.clone(),
        probe,
        pingpong_us: floor::wire_pingpong_us(shape, iters).ok(),
        bulk_gbps: floor::wire_bulk_gbps(shape, bulk).ok(),
        relay: wire_stats,
    })
}

fn measure_shape(
    exe: &std::path::Path,
    server: &LocalServer,
    shape: &LinkShape,
    quick: bool,
    repeat: usize,
) -> Result<ShapeRun, String> {
    let upstream = server.tcp.trim_start_matches("tcp://").to_string();
    let relay = if shape.direct {
        None
    } else {
        Some(Relay::start("127.0.0.1:0", &upstream, shape).map_err(|e| format!("relay for {shape}: {e}"))?)
    };
    let url = match &relay {
        Some(r) => format!("tcp://{}", r.local_addr()),
        None => server.tcp.clone(),
    };
    let opts = ProbeOptions {
        quick,
        link: (!shape.direct).then(|| shape.clone()),
    };
    // Long links: one run (each takes a minute or more there); the medians of `repeat` runs elsewhere.
    let repeat = if shape.rtt >= Duration::from_millis(1) {
        1
    } else {
        repeat
    };
    let t = Instant::now();
    let probe = median_probe(&|| through_shim(exe, Some(&url)), &opts, repeat)?;
    eprintln!(
        "vgpu bench --links: {shape} measured in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let relay_stats = relay.as_ref().map_or(Value::Null, |r| {
        let s = r.stats();
        json!({
            "connections": s.connections.load(std::sync::atomic::Ordering::Relaxed),
            "mean_late_us": s.mean_late_us(),
            "max_late_us": s.late_ns_max.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e3,
            "queued_max_bytes": s.queued_max.load(std::sync::atomic::Ordering::Relaxed),
        })
    });
    drop(relay);
    let iters = (0.5 / shape.rtt.as_secs_f64().max(20e-6)).clamp(20.0, 5000.0) as usize;
    let bulk = shape
        .bytes_per_s()
        .map_or(512usize << 20, |r| ((r * 2.0) as usize).min(512 << 20));
    Ok(ShapeRun {
        shape: shape.clone(),
        probe,
        pingpong_us: floor::link_pingpong_us(shape, iters).ok(),
        bulk_gbps: floor::link_bulk_gbps(shape, bulk).ok(),
        relay: relay_stats,
    })
}

pub fn run(
    shapes: &str,
    quick: bool,
    json_path: Option<&std::path::Path>,
    backend: &str,
    repeat: usize,
    wire: bool,
) -> Result<(), String> {
    let asked = LinkShape::parse_list(shapes)?;
    // The base of the predictions: the emulator with no delay and no rate (its own cost against loopback).
    let unshaped = LinkShape::parse(if wire { "wire" } else { "relay" })?;
    let mut shapes = vec![LinkShape::loopback(), unshaped];
    shapes.extend(
        asked
            .into_iter()
            .filter(|s| !s.direct && s.name != "relay" && s.name != "wire"),
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let native_cmd = || {
        let mut c = std::process::Command::new(&exe);
        c.env_remove("LD_LIBRARY_PATH");
        Ok(c)
    };
    let native = match median_probe(&native_cmd, &ProbeOptions { quick, link: None }, repeat) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("vgpu bench --links: no native run ({e}); ratios are left out");
            None
        }
    };
    let server = LocalServer::start(backend, &["--no-shm"])?;
    let mut runs = Vec::new();
    for shape in &shapes {
        runs.push(if wire && !shape.direct {
            measure_across_wire(&exe, backend, shape, quick, repeat)?
        } else {
            measure_shape(&exe, &server, shape, quick, repeat)?
        });
    }
    drop(server);
    let report = render(&runs, native.as_ref());
    print!("{}", report.text);
    if let Some(path) = json_path {
        let doc = json!({ "quick": quick, "repeats": repeat, "native_raw": native, "shapes": report.shapes,
            "device": report.device, "vgpu_emulated": report.emulated });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

struct Report {
    text: String,
    shapes: Vec<Value>,
    device: String,
    emulated: bool,
}

fn metric(v: &Value, key: &str) -> Option<f64> {
    v["metrics"][key].as_f64()
}

fn traffic(v: &Value, key: &str, counter: &str) -> Option<f64> {
    v["traffic"][key][counter].as_f64()
}

fn render(runs: &[ShapeRun], native: Option<&Value>) -> Report {
    use std::fmt::Write;
    let mut text = String::new();
    let first = &runs[0].probe;
    let device = first["device"].as_str().unwrap_or("?").to_string();
    let emulated = first["vgpu_backend"].as_i64() == Some(1);
    let _ = writeln!(
        text,
        "vgpu bench --links on {device}{}",
        if emulated {
            " (vGPU side: EMULATED backend: kernels do not run, every call still travels)"
        } else {
            ""
        }
    );
    let _ = writeln!(text, "{}", crate::bench::channel_settings());
    let direct = runs.iter().find(|r| r.shape.direct);
    let unshaped = runs.iter().find(|r| r.shape.name == "relay" || r.shape.name == "wire");
    if let (Some(d), Some(r)) = (direct, unshaped) {
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            text,
            "{} cost on this host: 64-byte round trip {} µs direct, {} µs through it; one TCP stream {} GB/s direct, \
             {} GB/s through it",
            r.shape.name,
            f(d.pingpong_us),
            f(r.pingpong_us),
            f(d.bulk_gbps),
            f(r.bulk_gbps)
        );
    }
    let _ = writeln!(
        text,
        "predicted = RTT × round trips + max(unshaped figure, bytes ÷ rate); ratio = time ÷ native time; ×link = a \
         copy's bandwidth ÷ the link's rate"
    );
    let mut shapes = Vec::new();
    for run in runs {
        let s = &run.shape;
        let rate = s
            .bytes_per_s()
            .map_or("unlimited".into(), |r| format!("{:.3} GB/s", r / 1e9));
        let _ = writeln!(
            text,
            "\n{}: RTT {:.0} µs, {rate} each way{}; floors through it: 64-byte round trip {}, one stream {}{}",
            s.name,
            s.rtt.as_secs_f64() * 1e6,
            s.bdp_bytes()
                .map_or(String::new(), |b| format!(", BDP {:.0} KiB", b as f64 / 1024.0)),
            run.pingpong_us.map_or("-".into(), |v| format!("{v:.1} µs")),
            run.bulk_gbps.map_or("-".into(), |v| format!("{v:.3} GB/s")),
            run.relay["mean_late_us"]
                .as_f64()
                .map_or(String::new(), |v| format!("; relay delivers {v:.1} µs late on average")),
        );
        let _ = writeln!(
            text,
            "{:<48} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7} {:>11}",
            "metric",
            "native",
            "loopback",
            "unshaped",
            "measured",
            "predicted",
            "÷pred",
            "ratio",
            "×link",
            "RT/op",
            "bytes/op"
        );
        let mut rows = Vec::new();
        for &(key, label, unit) in LINK_METRICS {
            let n = native.and_then(|v| metric(v, key));
            let lo = direct.and_then(|r| metric(&r.probe, key));
            let base = unshaped.and_then(|r| metric(&r.probe, key));
            let m = metric(&run.probe, key);
            let rt = traffic(&run.probe, key, "round_trips");
            let up = traffic(&run.probe, key, "bytes_sent");
            let down = traffic(&run.probe, key, "bytes_received");
            let bytes = up.zip(down).map(|(a, b)| a.max(b));
            let predicted_s = match (base.and_then(|b| seconds_per_op(key, unit, b)), rt, bytes) {
                (Some(b), Some(rt), Some(bytes)) => {
                    Some(s.predict(Duration::from_secs_f64(b), rt, bytes).as_secs_f64())
                }
                _ => None,
            };
            let predicted = predicted_s.and_then(|p| from_seconds(key, unit, p));
            let link_model_s = rt.zip(bytes).map(|(rt, b)| s.link_time(rt, b).as_secs_f64());
            let time = |v: Option<f64>| v.and_then(|v| seconds_per_op(key, unit, v));
            let ratio = time(m).zip(time(n)).map(|(a, b)| a / b);
            let vs_pred = time(m).zip(predicted_s).map(|(a, p)| a / p);
            // A copy's bandwidth as a fraction of the link's rate (issue 21's goal: at least 0.9).
            let of_link = match (unit, m, s.bytes_per_s()) {
                ("GB/s", Some(m), Some(r)) => Some(m * 1e9 / r),
                _ => None,
            };
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
            let _ = writeln!(
                text,
                "{:<48} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7} {:>11}",
                format!("{label} ({unit})"),
                f(n),
                f(lo),
                f(base),
                f(m),
                f(predicted),
                f(vs_pred),
                f(ratio),
                f(of_link),
                f(rt),
                bytes.map_or("-".into(), |b| format!("{b:.0}")),
            );
            rows.push(json!({
                "metric": key, "label": label, "unit": unit, "native": n, "loopback": lo, "relay": base,
                "measured": m, "predicted": predicted, "link_model_s": link_model_s, "measured_over_predicted": vs_pred,
                "fraction_of_link_rate": of_link,
                "time_ratio_native": ratio, "traffic_per_op": run.probe["traffic"][key],
            }));
        }
        shapes.push(json!({
            "shape": s.name, "rtt_us": s.rtt.as_secs_f64() * 1e6, "rate_gbps": s.rate_bps.map(|r| r as f64 / 1e9),
            "direct": s.direct, "floors": {"pingpong_us": run.pingpong_us, "bulk_gbps": run.bulk_gbps},
            "relay": run.relay, "rows": rows, "raw": run.probe,
        }));
    }
    let _ = writeln!(
        text,
        "\n(RT/op: synchronous round trips per operation, from the shim's counters; bytes/op: the busier direction)"
    );
    Report {
        text,
        shapes,
        device,
        emulated,
    }
}

/// `vgpu link-relay`: a standalone relay until killed.
pub fn relay(
    listen: &str,
    to: &str,
    shape: Option<String>,
    rtt_us: Option<f64>,
    gbit: Option<f64>,
    queue_cap: usize,
    report_s: u64,
) -> Result<(), String> {
    let shape = match (shape, rtt_us, gbit) {
        (Some(s), _, _) => LinkShape::parse(&s)?,
        (None, None, None) => return Err("give --shape RATE-RTT, or --rtt-us and --gbit".into()),
        (None, rtt, rate) => {
            let rate = match rate.unwrap_or(0.0) {
                r if r <= 0.0 => "inf".to_string(),
                r => format!("{r}g"),
            };
            LinkShape::parse(&format!("{rate}-{}us", rtt.unwrap_or(0.0)))?
        }
    };
    if shape.direct {
        return Err("a relay needs a shape (relay, or RATE-RTT), not loopback".into());
    }
    let to = to.trim_start_matches("tcp://");
    let relay = Relay::start_with(listen, to, &shape, queue_cap).map_err(|e| format!("relay on {listen}: {e}"))?;
    println!(
        "vgpu link-relay: ready on tcp://{} -> {to} (shape {}: RTT {:.0} µs, {})",
        relay.local_addr(),
        shape.name,
        shape.rtt.as_secs_f64() * 1e6,
        shape
            .bytes_per_s()
            .map_or("unlimited".into(), |r| format!("{:.3} GB/s each way", r / 1e9))
    );
    loop {
        std::thread::sleep(Duration::from_secs(report_s.clamp(1, 3600)));
        if report_s > 0 {
            let s = relay.stats();
            let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            println!(
                "vgpu link-relay: {} connections, {} B up, {} B down, deliveries {:.1} µs late on average ({:.1} max), \
                 at most {} B queued",
                load(&s.connections),
                load(&s.bytes_up),
                load(&s.bytes_down),
                s.mean_late_us(),
                load(&s.late_ns_max) as f64 / 1e3,
                load(&s.queued_max)
            );
        }
    }
}
