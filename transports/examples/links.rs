//! Prints what the shaping relay delivers on this host for each link shape: a 64-byte round trip and one TCP stream's
//! bulk rate, beside the shape's own figures (`cargo run --release -p vgpu-transports --example links [SHAPES]`).
//! The `relay` row (no delay, no rate) against `loopback` is the relay's own cost, which `vgpu bench --links`
//! subtracts. With `LINKS_WIRE=1` (root, network namespaces and TUN) each shape is also measured across the
//! packet-level wire, where one TCP stream meets the real round trip with the kernel's own windows.

use vgpu_transports::floor;
use vgpu_transports::link::LinkShape;

fn main() -> Result<(), String> {
    let list = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "loopback,relay,standard".into());
    let bytes: usize = std::env::var("LINKS_BULK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
        << 20;
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>12}",
        "shape", "rtt µs", "pingpong µs", "rate GB/s", "bulk GB/s"
    );
    for shape in LinkShape::parse_list(&list)? {
        // Enough round trips for a stable median, bounded to about a second per shape.
        let iters = (1.0 / shape.rtt.as_secs_f64().max(20e-6)).clamp(20.0, 20_000.0) as usize;
        let ping = floor::link_pingpong_us(&shape, iters).map_err(|e| e.to_string())?;
        // At most ~3 s of data at the shape's rate.
        let n = shape.bytes_per_s().map_or(bytes, |r| bytes.min((r * 3.0) as usize));
        let bulk = floor::link_bulk_gbps(&shape, n).map_err(|e| e.to_string())?;
        let rate = shape.bytes_per_s().map_or("-".into(), |r| format!("{:.3}", r / 1e9));
        println!(
            "{:<12} {:>12.1} {:>12.1} {:>12} {:>12.3}",
            shape.name,
            shape.rtt.as_secs_f64() * 1e6,
            ping,
            rate,
            bulk
        );
        if std::env::var("LINKS_WIRE").is_ok_and(|v| v == "1") && !shape.direct {
            let ping = floor::wire_pingpong_us(&shape, iters).map_err(|e| e.to_string())?;
            let bulk = floor::wire_bulk_gbps(&shape, n).map_err(|e| e.to_string())?;
            println!("{:<12} {:>12} {:>12.1} {:>12} {:>12.3}", "  (wire)", "", ping, "", bulk);
            if let Some(k) = std::env::var("LINKS_STREAMS")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
            {
                let agg = floor::wire_bulk_parallel_gbps(&shape, n, k).map_err(|e| e.to_string())?;
                println!(
                    "{:<12} {:>12} {:>12} {:>12} {:>12.3}",
                    format!("  ({k} streams)"),
                    "",
                    "",
                    "",
                    agg
                );
            }
        }
    }
    Ok(())
}
