//! Link shapes end to end on the emulated backend: `vgpu link-relay` delays every round trip of a real program by its
//! RTT, the shim's counters (VGPU_STATS) see the same round trips with and without the relay, and `vgpu bench
//! --links` reports each row's round trips and a prediction the measurement agrees with.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{start, VGPU};

/// A `vgpu link-relay` child, killed when dropped.
struct RelayChild(Child, String);

impl Drop for RelayChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn relay(to: &str, shape: &str) -> RelayChild {
    let mut child = Command::new(VGPU)
        .args(["link-relay", "--to", to, "--shape", shape])
        .stdout(Stdio::piped())
        .spawn()
        .expect("vgpu link-relay starts");
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("ready line");
    let url = line
        .split("ready on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no ready line: {line}"))
        .to_string();
    RelayChild(child, url)
}

/// Runs `vgpu run --server endpoint -- vgpu ARGS...` with `env` and VGPU_STATS (into `dir/name`); asserts it
/// succeeded and printed `want` (when given); returns its counters (the JSON line) and its wall time.
fn run_with_stats(
    endpoint: &str,
    dir: &std::path::Path,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    want: Option<&str>,
) -> (serde_json::Value, Duration) {
    let stats = dir.join(name);
    let t = Instant::now();
    let out = Command::new(VGPU)
        .args(["run", "--server", endpoint, "--", VGPU])
        .args(args)
        .env("VGPU_STATS", &stats)
        .envs(env.iter().copied())
        .output()
        .expect("vgpu run");
    let wall = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && want.is_none_or(|w| text.contains(w)),
        "{endpoint} {env:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&stats).expect("VGPU_STATS written at exit");
    let line = text.lines().last().expect("one JSON line");
    (serde_json::from_str(line).expect("stats JSON"), wall)
}

/// `vgpu sample` against `endpoint` (see `run_with_stats`).
fn sample_with_stats(endpoint: &str, dir: &std::path::Path, name: &str) -> (serde_json::Value, Duration) {
    run_with_stats(endpoint, dir, name, &["sample"], &[], None)
}

#[test]
fn relay_delays_each_round_trip_and_the_shim_counts_them() {
    let server = start(&[]);
    let dir = std::env::temp_dir().join(format!("vgpu-links-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (direct, direct_wall) = sample_with_stats(&server.tcp_url(), &dir, "direct.json");
    let rtt = Duration::from_millis(20);
    let shaped = relay(&server.tcp_url(), "inf-20ms");
    let (through, through_wall) = sample_with_stats(&shaped.1, &dir, "relay.json");
    let trips = |v: &serde_json::Value| v["round_trips"].as_u64().expect("round_trips");
    assert!(trips(&direct) >= 3, "the sample makes synchronous calls: {direct}");
    assert_eq!(
        trips(&direct),
        trips(&through),
        "the relay changed the program's round trips"
    );
    assert_eq!(
        direct["sync_by_call"], through["sync_by_call"],
        "the same calls wait for replies either way"
    );
    assert!(direct["bytes_sent"].as_u64() > Some(0) && direct["bytes_received"].as_u64() > Some(0));
    // Every round trip through the relay takes at least its RTT.
    let floor = rtt * trips(&through) as u32;
    assert!(
        through_wall >= floor && through_wall > direct_wall,
        "{} round trips through a 20 ms relay took {through_wall:?} (direct {direct_wall:?})",
        trips(&through)
    );
    let waited = Duration::from_nanos(through["reply_wait_ns"].as_u64().expect("reply_wait_ns"));
    assert!(waited >= floor, "waited {waited:?} for {} replies", trips(&through));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_links_reports_round_trips_beside_a_prediction() {
    let json = std::env::temp_dir().join(format!("vgpu-bench-links-{}.json", std::process::id()));
    let out = Command::new(VGPU)
        .args([
            "bench",
            "--links",
            "10g-2ms",
            "--quick",
            "--repeat",
            "1",
            "--backend",
            "emulated",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("vgpu bench --links");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    // The table says which channel settings its copy rows were measured with.
    assert!(
        text.contains("network channels: VGPU_TCP_STREAMS=") && text.contains("VGPU_COMPRESS="),
        "{text}"
    );
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parse");
    let _ = std::fs::remove_file(&json);
    let shapes = doc["shapes"].as_array().expect("shapes");
    let names: Vec<&str> = shapes.iter().filter_map(|s| s["shape"].as_str()).collect();
    assert_eq!(names, ["loopback", "relay", "10g-2ms"]);
    let row = |shape: &serde_json::Value, metric: &str| {
        shape["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["metric"] == metric))
            .cloned()
            .unwrap_or_else(|| panic!("no {metric} row"))
    };
    let sync = row(&shapes[2], "launch_sync_us");
    assert_eq!(sync["traffic_per_op"]["round_trips"].as_f64(), Some(1.0), "{sync}");
    let measured = sync["measured"].as_f64().expect("measured");
    let predicted = sync["predicted"].as_f64().expect("predicted");
    assert!(
        measured >= 2000.0,
        "a launch + synchronize through a 2 ms link took {measured} µs"
    );
    assert!(
        (0.8..2.0).contains(&(measured / predicted)),
        "measured {measured} µs against a prediction of {predicted} µs"
    );
    // An occupancy question asked again is answered from the first answer: no round trip.
    let occupancy = row(&shapes[2], "occupancy_us");
    assert_eq!(
        occupancy["traffic_per_op"]["round_trips"].as_f64(),
        Some(0.0),
        "{occupancy}"
    );
    // Asynchronous launches wait for nothing: no round trip per launch.
    let launch = row(&shapes[2], "launch_async_us");
    assert!(
        launch["traffic_per_op"]["round_trips"].as_f64() < Some(0.01),
        "{launch}"
    );
    assert!(text.contains("10g-2ms: RTT 2000 µs"), "{text}");
}

/// `vgpu __memcheck --copy-mib MIB` (a pageable round trip of data that repeats every 251 bytes, checked byte for
/// byte) against `endpoint` with `env` (see `run_with_stats`).
fn copy_with_stats(
    endpoint: &str,
    dir: &std::path::Path,
    name: &str,
    mib: u64,
    env: &[(&str, &str)],
) -> (serde_json::Value, Duration) {
    let mib_text = mib.to_string();
    let args = ["__memcheck", "--hold-ms", "0", "--copy-mib", &mib_text];
    run_with_stats(endpoint, dir, name, &args, env, Some(&format!("copied {mib}")))
}

#[test]
fn compressed_channels_carry_every_byte_and_shrink_compressible_copies() {
    let server = start(&[]);
    let dir = std::env::temp_dir().join(format!("vgpu-packed-{}-{}", std::process::id(), common::rand_tag()));
    std::fs::create_dir_all(&dir).expect("dir");
    let lz4 = [("VGPU_COMPRESS", "lz4")];
    let mib = 32u64;
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    for (endpoint, name) in [(server.tcp_url(), "tcp"), (server.tls.clone(), "tls")] {
        let (s, _) = copy_with_stats(&endpoint, &dir, name, mib, &lz4);
        // Both ways the copy's bytes went packed, and shrank (the data repeats every 251 bytes).
        assert!(n(&s, "packed_raw_sent") >= mib << 20, "{name}: {s}");
        assert!(n(&s, "packed_wire_sent") * 4 < n(&s, "packed_raw_sent"), "{name}: {s}");
        assert!(n(&s, "packed_raw_received") >= mib << 20, "{name}: {s}");
        assert!(
            n(&s, "packed_wire_received") * 4 < n(&s, "packed_raw_received"),
            "{name}: {s}"
        );
        // The counters the link model uses still count what the program moved.
        assert!(n(&s, "bytes_sent") >= mib << 20, "{name}: {s}");
    }
    // Not asked for, or over shared memory: nothing is packed.
    let (s, _) = copy_with_stats(&server.tcp_url(), &dir, "plain", mib, &[]);
    assert_eq!(n(&s, "packed_wire_sent"), 0, "{s}");
    let (s, _) = copy_with_stats(&server.shm, &dir, "shm", mib, &lz4);
    assert_eq!(n(&s, "packed_wire_sent"), 0, "{s}");
    // A server that refuses compression serves the channel plain.
    let plain_server = start(&["--no-compress"]);
    let (s, _) = copy_with_stats(&plain_server.tcp_url(), &dir, "refused", mib, &lz4);
    assert_eq!(n(&s, "packed_wire_sent"), 0, "{s}");
    // Through a 50 Mb/s link the compressed copy takes a fraction of the plain one's time: 4 MiB each way plain
    // take at least 1.34 s at the link's rate, compressed they are a few KiB. The slow link keeps the comparison
    // about the link, even with this debug build's slower compression and other tests running beside it.
    let link = relay(&server.tcp_url(), "50m-1ms");
    let (_, plain) = copy_with_stats(&link.1, &dir, "link-plain", 4, &[]);
    assert!(
        plain >= Duration::from_millis(1300),
        "the link did not hold the plain copy: {plain:?}"
    );
    let (_, packed) = copy_with_stats(&link.1, &dir, "link-lz4", 4, &lz4);
    assert!(
        packed * 5 < plain * 3,
        "50 Mb/s: {packed:?} compressed against {plain:?} plain"
    );
    // `auto` compresses from the first copy on (it learns the link's rate as it goes; see transports::packed).
    let (s, auto) = copy_with_stats(&link.1, &dir, "link-auto", 4, &[("VGPU_COMPRESS", "auto")]);
    assert!(n(&s, "packed_wire_sent") * 4 < n(&s, "packed_raw_sent"), "auto: {s}");
    assert!(auto * 5 < plain * 3, "50 Mb/s: {auto:?} auto against {plain:?} plain");
    let _ = std::fs::remove_dir_all(&dir);
}
