//! `vgpu bench`'s server-to-server rows: device 0 on one `vgpu server` to device 1 on another (two servers on this
//! host, each presenting the GPU as its own virtual GPU), server to server and relayed through the client.
//!
//! Each figure is `vgpu __multi-check --bench-mib N` through the shim: three timed `cuMemcpyPeer` of N MiB, with
//! the client's own transport bytes during them (what shows that the bytes did not cross the client), then the
//! mean time of 100 synchronous 4 KiB copies (what setting a copy up costs).

use serde_json::{json, Value};

use crate::local::{through_shim, LocalServer};

/// One path's figures: bandwidth (GB/s), the client's transport bytes during the copies, and the time of one
/// small (4 KiB) synchronous copy in µs.
fn measure(exe: &std::path::Path, servers: &str, relay: bool, mib: u64) -> Result<(f64, u64, Option<f64>), String> {
    let mut cmd = through_shim(exe, Some(servers))?;
    cmd.args(["__multi-check", "--bench-mib", &mib.to_string()]);
    if relay {
        cmd.env("VGPU_PEER_COPY", "relay");
    }
    let out = cmd.output().map_err(|e| format!("cannot run the check: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("bench peer copy: "))
        .ok_or_else(|| {
            format!(
                "the check printed no bench line: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let gbps = line
        .trim_start_matches("bench peer copy: ")
        .split(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("unreadable bench line: {line}"))?;
    let bytes = line
        .rsplit(": ")
        .next()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("unreadable bench line: {line}"))?;
    let small_us = text
        .lines()
        .find_map(|l| l.strip_prefix("bench small peer copy: "))
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok());
    Ok((gbps, bytes, small_us))
}

/// Runs the rows and prints them; `tcp_floor_gbps` is one TCP stream's loopback rate on this host.
pub fn cross_server(backend: &str, quick: bool, tcp_floor_gbps: Option<f64>) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mib = if quick { 64 } else { 256 };
    let b = LocalServer::start(backend, &["--device-identity", "2"])?;
    let a = LocalServer::start(
        backend,
        &["--device-identity", "1", "--peer", &format!("{},{}", b.tcp, b.shm)],
    )?;
    let mut rows = Vec::new();
    println!("server-to-server copy: device 0 (server A) -> device 1 (server B), 3 x {mib} MiB cuMemcpyPeer");
    println!(
        "{:<44} {:>8} {:>12} {:>16} {:>14}",
        "path", "GB/s", "÷ TCP floor", "client bytes", "4 KiB copy µs"
    );
    let tcp_pair = format!("{},{}", a.tcp, b.tcp);
    let shm_pair = format!("{},{}", a.shm, b.shm);
    let paths = [
        ("server to server, TCP (client on TCP)", &tcp_pair, false),
        ("relayed through the client, TCP", &tcp_pair, true),
        ("server to server, shm (client on shm)", &shm_pair, false),
        ("relayed through the client, shm", &shm_pair, true),
    ];
    for (label, servers, relay) in paths {
        let (gbps, bytes, small_us) = measure(&exe, servers, relay, mib)?;
        let of_floor = tcp_floor_gbps.filter(|f| *f > 0.0).map(|f| gbps / f);
        println!(
            "{label:<44} {gbps:>8.2} {:>12} {bytes:>16} {:>14}",
            of_floor.map_or("-".into(), |r| format!("{r:.2}")),
            small_us.map_or("-".into(), |u| format!("{u:.1}"))
        );
        rows.push(
            json!({"path": label, "gbps": gbps, "of_tcp_floor": of_floor, "client_bytes": bytes,
            "mib": mib, "copies": 3, "small_copy_us": small_us}),
        );
    }
    Ok(json!(rows))
}
