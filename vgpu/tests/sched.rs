//! End-to-end tests of enforced GPU sharing on the emulated backend, whose kernels take SIMULATED time here
//! (`VGPU_EMULATED_KERNEL_NS`): several tenant processes through one server, with shares and priority classes from
//! a plans file (`vgpu bench fairness`, which runs them and reports what each got).

use std::process::Command;

mod common;

use common::VGPU;

fn fairness(args: &[&str]) -> serde_json::Value {
    let json = std::env::temp_dir().join(format!(
        "vgpu-fairness-{}-{}.json",
        std::process::id(),
        common::rand_tag()
    ));
    let out = Command::new(VGPU)
        .args([
            "bench",
            "fairness",
            "--backend",
            "emulated",
            "--workload",
            "gemm",
            "--json",
        ])
        .arg(&json)
        .args(args)
        .output()
        .expect("vgpu bench fairness runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("EMULATED backend: kernel times are SIMULATED"), "{text}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON file")).expect("JSON");
    let _ = std::fs::remove_file(&json);
    doc
}

fn scenario<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["workloads"]["gemm"]["scenarios"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["scenario"] == name))
        .unwrap_or_else(|| panic!("no {name} scenario in {doc}"))
}

/// Checks one fairness run against issue 15's goals; `Err` says which figure missed.
fn judge_fairness(doc: &serde_json::Value) -> Result<(), String> {
    // 10 %, 50 % and 40 %: every whole second within 5 points of its target (the goal of issue 15).
    let u = scenario(doc, "unequal");
    let windows = u["window_shares"].as_array().ok_or("no windows")?;
    if windows[0].as_array().is_none_or(|w| w.len() < 2) {
        return Err(format!("fewer than two windows: {u}"));
    }
    let off = u["worst_window_points_off_target"].as_f64().ok_or("no figure")?;
    if off > 5.0 {
        return Err(format!("unequal: a window {off:.1} points off target: {u}"));
    }
    // Equal shares, fixed work: everyone done together.
    let e = scenario(doc, "equal");
    let jain = e["jain"].as_f64().ok_or("no Jain")?;
    let ratio = e["slowest_over_fastest"].as_f64().ok_or("no ratio")?;
    if jain < 0.99 || ratio > 1.05 {
        return Err(format!("equal: Jain {jain:.3}, slowest/fastest {ratio:.3}: {e}"));
    }
    // A guaranteed tenant beside 4 preemptible ones keeps its rate. The goal on a GPU is ≥ 0.95; this box's CPUs
    // are shared by every process of the run (tenants, workers, servers), so the emulated figure is held to 0.85.
    let p = scenario(doc, "priority");
    let g = p["guaranteed_vs_alone"].as_f64().ok_or("no figure")?;
    if g < 0.85 {
        return Err(format!("guaranteed tenant at {g:.3} of its rate alone: {p}"));
    }
    // ... and the preemptible ones got little while it ran.
    let spot: f64 = p["window_shares"].as_array().ok_or("no windows")?[1..]
        .iter()
        .flat_map(|w| w.as_array().into_iter().flatten().filter_map(|v| v.as_f64()))
        .sum();
    if spot >= 0.2 {
        return Err(format!("preemptible tenants got {spot:.3}: {p}"));
    }
    Ok(())
}

#[test]
fn shares_and_priorities_hold_across_tenant_processes() {
    // Every tenant, worker and server of a run shares this machine's CPUs with whatever else runs (CI runs test
    // binaries beside builds): a run whose figures miss is repeated, up to three runs, and all misses are shown.
    let mut misses = Vec::new();
    for _ in 0..3 {
        let doc = fairness(&[
            "--tenants",
            "4",
            "--seconds",
            "4",
            "--scenario",
            "unequal",
            "--scenario",
            "equal",
            "--scenario",
            "priority",
        ]);
        assert_eq!(doc["emulated"], true);
        assert!(
            doc["server_banner"].as_array().is_some_and(|b| b
                .iter()
                .any(|l| l.as_str().is_some_and(|l| l.contains("GPU sharing: scheduler on")))),
            "{}",
            doc["server_banner"]
        );
        match judge_fairness(&doc) {
            Ok(()) => return,
            Err(miss) => {
                eprintln!("fairness run missed: {miss}");
                misses.push(miss);
            }
        }
    }
    panic!("three fairness runs missed their goals:\n{}", misses.join("\n"));
}

#[test]
fn the_server_says_how_it_shares_its_gpus() {
    for (env, expect) in [
        (None, "GPU sharing: scheduler on, time-sliced (no MPS daemon)"),
        (Some("off"), "GPU sharing: scheduler off (VGPU_SCHED=off)"),
    ] {
        let mut cmd = Command::new(VGPU);
        cmd.args([
            "server",
            "--tcp",
            "127.0.0.1:0",
            "--no-tls",
            "--no-shm",
            "--backend",
            "emulated",
        ])
        .env_remove("LD_LIBRARY_PATH")
        .stdout(std::process::Stdio::piped());
        if let Some(v) = env {
            cmd.env("VGPU_SCHED", v);
        }
        let mut child = cmd.spawn().expect("server starts");
        let mut out = child.stdout.take().expect("stdout");
        let mut text = String::new();
        let mut buf = [0u8; 256];
        while !text.contains("ready on") {
            let n = std::io::Read::read(&mut out, &mut buf).expect("output");
            assert!(n > 0, "server exited: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(text.contains(expect), "{text}");
    }
}

#[test]
fn a_plans_server_refuses_keys_it_does_not_list() {
    let plans = std::env::temp_dir().join(format!("vgpu-plans-{}-{}", std::process::id(), common::rand_tag()));
    std::fs::write(&plans, "alpha 0.25 guaranteed\nbeta 0.75 cap\n").expect("plans file");
    let server = common::start(&["--plans", plans.to_str().expect("path")]);
    for endpoint in [server.tcp_url(), server.shm.clone()] {
        let run = |key: &str| {
            Command::new(VGPU)
                .args(["run", "--server", &endpoint, "--", VGPU, "sample"])
                .env("VGPU_KEY", key)
                .output()
                .expect("vgpu run")
        };
        assert!(run("alpha").status.success(), "{endpoint}");
        let refused = run("gamma");
        assert!(!refused.status.success(), "{endpoint}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("refused"),
            "{endpoint}: {}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }
    let _ = std::fs::remove_file(&plans);
}
