//! vGPU's NCCL (`libnccl.so.2`) on the emulated backend: ranks in separate processes, each on its own `vgpu server`,
//! run every collective through `vgpu __nccl-check` (results checked byte for byte there), the bytes moving
//! server to server (the client's own traffic during a 32 MiB all-reduce is a few hundred bytes), and a rank that
//! leaves makes the others' collectives fail instead of hang.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

use common::{shm_name, start_named, Server, VGPU};

/// Runs `__nccl-check` as every rank at once, rank r through `servers[r]`; the outputs in rank order.
fn ranks(servers: &[String], extra: &[&[&str]]) -> Vec<Output> {
    let dir = std::env::temp_dir().join(format!("vgpu-nccl-{}-{}", std::process::id(), common::rand_tag()));
    std::fs::create_dir_all(&dir).expect("dir");
    let id = dir.join("id");
    let n = servers.len().to_string();
    let children: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(r, server)| {
            Command::new(VGPU)
                .args([
                    "run",
                    "--server",
                    server,
                    "--",
                    VGPU,
                    "__nccl-check",
                    "--rank",
                    &r.to_string(),
                ])
                .args(["--nranks", &n, "--id-file"])
                .arg(&id)
                .args(extra.get(r).copied().unwrap_or(&[]))
                .env("VGPU_NCCL_TIMEOUT_S", "60")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("vgpu run")
        })
        .collect();
    let outs = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("rank"))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    outs
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn all_verified(outs: &[Output]) {
    for (r, o) in outs.iter().enumerate() {
        let t = text(o);
        assert!(o.status.success(), "rank {r}: {t}");
        for what in [
            "all-reduce f32 sum: verified",
            "all-reduce f32 avg in place: verified",
            "all-reduce i32 max: verified",
            "broadcast from the last rank: verified",
            "all-gather: verified",
            "reduce-scatter sum: verified",
            "send/recv ring: verified",
            "send/recv ring on two streams: verified",
            &format!("rank {r}: every collective verified"),
        ] {
            assert!(t.lines().any(|l| l == what), "rank {r}: no '{what}' in {t}");
        }
        let reduce = if r == 0 {
            "reduce max to rank 0: verified"
        } else {
            "reduce max to rank 0: sent"
        };
        assert!(t.lines().any(|l| l == reduce), "rank {r}: no '{reduce}' in {t}");
    }
}

/// Servers named before any starts, each allowed to send to every other (by shared memory, and by TCP to those
/// already started). No name ends in a digit: the servers' warnings quote them before "failed", and the test
/// script adds up "N failed" wherever it appears.
fn ring(n: usize, extra: &[&str]) -> Vec<Server> {
    let names: Vec<String> = (0..n).map(|i| format!("{}-{i}-ring", shm_name())).collect();
    let mut servers: Vec<Server> = Vec::new();
    for i in 0..n {
        let mut peers: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| format!("shm://{s}"))
            .collect();
        peers.extend(servers.iter().map(Server::tcp_url));
        let list = peers.join(",");
        let identity = (i + 1).to_string();
        let mut args = vec!["--device-identity", &identity, "--peer", &list];
        args.extend_from_slice(extra);
        servers.push(start_named(&names[i], &args));
    }
    servers
}

#[test]
fn two_ranks_on_two_servers_over_tcp_and_shm() {
    let s = ring(2, &[]);
    let outs = ranks(&[s[0].shm.clone(), s[1].shm.clone()], &[]);
    all_verified(&outs);
    // Rank 0 reaches its server by TCP: server 1 (started second, so it lists server 0's TCP endpoint) dials it
    // there, server 0 dials server 1 by its shared-memory name.
    let outs = ranks(&[s[0].tcp_url(), s[1].shm.clone()], &[]);
    all_verified(&outs);
}

#[test]
fn three_ranks_in_a_ring() {
    let s = ring(3, &[]);
    let outs = ranks(&s.iter().map(|x| x.shm.clone()).collect::<Vec<_>>(), &[]);
    all_verified(&outs);
}

#[test]
fn an_all_reduce_moves_no_bytes_through_the_clients() {
    let s = ring(2, &[]);
    let bench: &[&str] = &["--bench-mib", "32"];
    let outs = ranks(&[s[0].shm.clone(), s[1].shm.clone()], &[bench, bench]);
    all_verified(&outs);
    for (r, o) in outs.iter().enumerate() {
        let t = text(o);
        let bytes: u64 = t
            .lines()
            .find_map(|l| {
                l.strip_prefix("bench all-reduce: ")?
                    .split("client transport bytes during it: ")
                    .nth(1)?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("rank {r}: no bench line in {t}"));
        // Three all-reduces of 32 MiB: each a few hundred bytes of calls, never the data.
        assert!(
            bytes < 64 << 10,
            "rank {r}: {bytes} client bytes during 96 MiB of all-reduce"
        );
    }
}

#[test]
fn a_rank_that_leaves_fails_the_others_collectives_without_a_hang() {
    let s = ring(2, &["--peer-wait-s", "2"]);
    let started = Instant::now();
    let outs = ranks(&[s[0].shm.clone(), s[1].shm.clone()], &[&[], &["--exit-after-init"]]);
    let t = text(&outs[0]);
    assert!(!outs[0].status.success(), "rank 0 went on without rank 1: {t}");
    assert!(t.contains("CUDA_ERROR"), "rank 0's error names no CUDA error: {t}");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
    assert!(outs[1].status.success(), "{}", text(&outs[1]));
}

#[test]
fn two_ranks_on_one_server_that_lists_itself() {
    // One server holding both ranks' GPUs (here: both on its one emulated GPU, as two sessions): its messages go
    // back to itself through its own listener, so the operator lists it among its peers.
    let name = format!("{}-self", shm_name());
    let s = start_named(&name, &["--peer", &format!("shm://{name}")]);
    let outs = ranks(&[s.shm.clone(), s.shm.clone()], &[]);
    all_verified(&outs);
}

#[test]
fn one_thread_drives_two_devices_of_one_server() {
    // Both ranks' collectives come on one channel of one session: each runs on its own stream's lane on the server,
    // so the first does not hold the channel the second comes on (they waited for each other until the peer wait
    // ended before lanes: 30 s here, far past the bound below). Over shm this also crossed a shim bug: a thread that
    // switched contexts unmapped its own pageable-copy staging slots and crashed at the next copy.
    let name = format!("{}-two", shm_name());
    let s = common::start_with_env(
        &name,
        &["--peer", &format!("shm://{name}")],
        &[("VGPU_EMULATED_DEVICES", "2")],
    );
    let started = Instant::now();
    let out = Command::new(VGPU)
        .args(["run", "--server", &s.shm, "--", VGPU, "__nccl-check", "--all-devices"])
        .output()
        .expect("vgpu run");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("all devices (2) from one thread: all-reduce verified"),
        "{t}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}: {t}",
        started.elapsed()
    );
}
