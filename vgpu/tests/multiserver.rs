//! One process using the GPUs of two `vgpu server`s (emulated backend, each with its own device identity, as two
//! servers sharing one GPU would be run): one device numbering across them, `CUDA_VISIBLE_DEVICES`, NVML, unified
//! addressing, peer answers and copies between the servers' devices (server to server where the operator lets a
//! server send to the other, else relayed through the client), over TCP, TLS and shared memory.

use std::process::Command;

mod common;

use common::{bench_bytes, shm_name, start, start_named, Server, VGPU};

fn two_servers() -> (Server, Server) {
    (start(&["--device-identity", "1"]), start(&["--device-identity", "2"]))
}

/// Two servers whose operators let them send copies to each other: B lists A by its shared-memory name (chosen
/// before either starts); A lists B by that, by TCP and by TLS.
fn peered_servers() -> (Server, Server) {
    let (name_a, name_b) = (shm_name(), format!("{}-b", shm_name()));
    let b = start_named(
        &name_b,
        &["--device-identity", "2", "--peer", &format!("shm://{name_a}")],
    );
    let a_peers = format!("shm://{name_b},{},{}", b.tcp_url(), b.tls);
    let a = start_named(&name_a, &["--device-identity", "1", "--peer", &a_peers]);
    (a, b)
}

/// Every entry point's copies both ways read back right.
fn all_copies_verified(servers: &str, lines: &[String]) {
    for how in ["peer", "async peer", "3d peer", "dtod", "unified", "2d"] {
        for (x, y) in [(0, 1), (1, 0)] {
            let want = format!("{how} copy {x} -> {y}: CUDA_SUCCESS verified");
            assert!(has(lines, &want), "{servers}: no '{want}' in {lines:?}");
        }
    }
}

/// `vgpu run --server LIST -- vgpu __multi-check`: its output lines (the run must succeed).
fn check(servers: &str, env: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let out = Command::new(VGPU)
        .args(["run", "--server", servers, "--", VGPU, "__multi-check"])
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .expect("vgpu run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{servers}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(str::to_string).collect()
}

/// Client bytes of the pitched bench line of `__multi-check --bench-mib`.
fn pitched_bytes(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter(|l| l.starts_with("bench pitched peer copy"))
        .find_map(|l| l.split("client bytes: ").nth(1)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pitched bench line in {lines:?}"))
}

fn has(lines: &[String], want: &str) -> bool {
    lines.iter().any(|l| l == want)
}

/// The UUID hex of device `d` as the check printed it.
fn uuid_of(lines: &[String], d: usize) -> String {
    let prefix = format!("device {d}: uuid ");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no uuid for device {d}: {lines:?}"))
        .to_string()
}

#[test]
fn two_servers_make_one_device_numbering_with_unified_addressing() {
    let (a, b) = two_servers();
    for servers in [
        format!("{},{}", a.tcp_url(), b.tcp_url()),
        format!("{},{}", a.shm, b.shm),
        format!("{},{}", a.shm, b.tcp_url()),
    ] {
        let lines = check(&servers, &[], &[]);
        assert!(has(&lines, "devices: 2"), "{servers}: {lines:?}");
        assert_ne!(uuid_of(&lines, 0), uuid_of(&lines, 1), "two identities");
        assert!(lines
            .iter()
            .any(|l| l.starts_with("device 0: uuid") && l.ends_with("pci 0001:00:00.0")));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("device 1: uuid") && l.ends_with("pci 0002:00:00.0")));
        assert!(has(&lines, "addresses distinct: true"), "{lines:?}");
        // Each device's memory sits in its window (1 TiB per device from 32 TiB).
        assert!(
            lines.iter().any(|l| l.starts_with("device 0: alloc 0x2000")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("device 1: alloc 0x2100")),
            "{lines:?}"
        );
        assert!(has(&lines, "pointer of device 0: ordinal 0"), "{lines:?}");
        assert!(has(&lines, "pointer of device 1: ordinal 1"), "{lines:?}");
        assert!(has(&lines, "can access peer 0 -> 1: 0") && has(&lines, "can access peer 1 -> 0: 0"));
        // Copies between the two servers' devices, by every entry point and both ways, read back byte for byte.
        for how in ["peer", "async peer", "3d peer", "dtod", "unified", "2d"] {
            for (x, y) in [(0, 1), (1, 0)] {
                let want = format!("{how} copy {x} -> {y}: CUDA_SUCCESS verified");
                assert!(has(&lines, &want), "{servers}: no '{want}' in {lines:?}");
            }
        }
        // As natively for a pair without peer access.
        assert!(
            has(&lines, "enable peer access 1 -> 0: CUDA_ERROR_PEER_ACCESS_UNSUPPORTED"),
            "{lines:?}"
        );
        assert!(
            has(&lines, "disable peer access 1 -> 0: CUDA_ERROR_PEER_ACCESS_NOT_ENABLED"),
            "{lines:?}"
        );
        assert!(
            has(
                &lines,
                "stream of device 1 waits for an event of device 0: CUDA_SUCCESS"
            ),
            "{lines:?}"
        );
        assert!(has(&lines, "freed from device 0's context: ok"), "{lines:?}");
    }
}

#[test]
fn cuda_visible_devices_orders_and_filters_across_servers() {
    let (a, b) = two_servers();
    let servers = format!("{},{}", a.tcp_url(), b.shm);
    let plain = check(&servers, &[], &[]);
    let (first, second) = (uuid_of(&plain, 0), uuid_of(&plain, 1));
    let swapped = check(&servers, &[("CUDA_VISIBLE_DEVICES", "1,0")], &[]);
    assert_eq!(
        (uuid_of(&swapped, 0), uuid_of(&swapped, 1)),
        (second.clone(), first.clone())
    );
    assert!(has(&swapped, "addresses distinct: true"), "{swapped:?}");
    let only_second = check(&servers, &[("CUDA_VISIBLE_DEVICES", "1,-1,0")], &[]);
    assert!(has(&only_second, "devices: 1"), "{only_second:?}");
    assert_eq!(uuid_of(&only_second, 0), second);
    // By UUID prefix, in the form NVIDIA's tools print (GPU-xxxxxxxx-...): the identities differ in the last
    // bytes, so the whole UUID names each.
    let text = |hex: &str| {
        format!(
            "GPU-{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    };
    let by_uuid = check(&servers, &[("CUDA_VISIBLE_DEVICES", &text(&second))], &[]);
    assert!(
        has(&by_uuid, "devices: 1") && uuid_of(&by_uuid, 0) == second,
        "{by_uuid:?}"
    );
    // Every device hidden: cuInit finds none, as natively.
    let out = Command::new(VGPU)
        .args(["run", "--server", &servers, "--", VGPU, "__multi-check"])
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .expect("vgpu run");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CUDA_ERROR_NO_DEVICE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nvml_lists_every_server_device_in_system_order() {
    let (a, b) = two_servers();
    let servers = format!("{},{}", a.shm, b.tcp_url());
    let smi = |visible: Option<&str>| {
        let mut cmd = Command::new(VGPU);
        cmd.args(["smi", "--json", "--server", &servers]);
        if let Some(v) = visible {
            cmd.env("CUDA_VISIBLE_DEVICES", v);
        }
        let out = cmd.output().expect("vgpu smi");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    let all = smi(None);
    let gpus = all["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 2);
    assert_ne!(gpus[0]["uuid"], gpus[1]["uuid"]);
    // As NVIDIA's NVML, the list ignores CUDA_VISIBLE_DEVICES: tools map it onto this order themselves.
    assert_eq!(smi(Some("1"))["gpus"], all["gpus"]);
}

#[test]
fn copies_between_servers_go_server_to_server_where_the_operator_allows() {
    let (a, b) = peered_servers();
    // 3 copies of 16 MiB: relayed, 96 MiB cross this process each way; server to server, only the requests do.
    let relayed_at_least = 2 * 3 * (16u64 << 20);
    for servers in [
        format!("{},{}", a.shm, b.shm),
        format!("{},{}", a.tcp_url(), b.tcp_url()),
        format!("{},{}", a.tls, b.tls),
    ] {
        let lines = check(&servers, &[], &["--bench-mib", "16"]);
        all_copies_verified(&servers, &lines);
        let direct = bench_bytes(&lines);
        assert!(
            direct < 64 << 10,
            "{servers}: {direct} client bytes for a server-to-server copy"
        );
        // Pitched rows too (3 copies of 8 MiB in 4 KiB rows): server to server, only requests cross the client.
        let pitched = pitched_bytes(&lines);
        assert!(pitched < 64 << 10, "{servers}: {pitched} client bytes for pitched rows");
        let relayed = check(&servers, &[("VGPU_PEER_COPY", "relay")], &["--bench-mib", "16"]);
        all_copies_verified(&servers, &relayed);
        assert!(bench_bytes(&relayed) >= relayed_at_least, "{servers}: {relayed:?}");
        // Relayed, each pitched byte crosses this process at least once (over shm one way rides the shared slots).
        assert!(pitched_bytes(&relayed) >= 3 * (8 << 20), "{servers}: {relayed:?}");
    }
    // B may not send to A over TCP (its operator listed only A's shared memory): device 1 → device 0 copies pass
    // through the client and still land; device 0 → device 1 go direct.
    let servers = format!("{},{}", b.tcp_url(), a.tcp_url());
    let lines = check(&servers, &[], &["--bench-mib", "16"]);
    all_copies_verified(&servers, &lines);
    assert!(bench_bytes(&lines) >= relayed_at_least, "B sent to A: {lines:?}");
}

/// Two GPUs of one server (`VGPU_EMULATED_DEVICES=2`) and one of another: the first two have peer access, answered
/// and enabled by their server's driver; neither has it with the third. Copies between all three read back right.
#[test]
fn gpus_of_one_server_have_peer_access_and_gpus_of_two_do_not() {
    let a = common::start_with_env(
        &shm_name(),
        &["--device-identity", "1"],
        &[("VGPU_EMULATED_DEVICES", "2")],
    );
    let b = start(&["--device-identity", "2"]);
    let servers = format!("{},{}", a.tcp_url(), b.tcp_url());
    let lines = check(&servers, &[], &[]);
    assert!(has(&lines, "devices: 3"), "{lines:?}");
    for (x, y, can) in [(0, 1, 1), (1, 0, 1), (0, 2, 0), (2, 0, 0), (1, 2, 0), (2, 1, 0)] {
        let want = format!("can access peer {x} -> {y}: {can}");
        assert!(has(&lines, &want), "no '{want}' in {lines:?}");
    }
    // NVML agrees: the two GPUs of one server reach each other over PCIe with atomics, without NVLink (what that
    // server's NVML, the emulator's here, says); GPUs of two servers do not (NVML_P2P_STATUS_NOT_SUPPORTED, 5).
    for (x, y, status) in [
        (0, 1, "read 0 nvlink 5 atomics 0"),
        (1, 0, "read 0 nvlink 5 atomics 0"),
        (0, 2, "read 5 nvlink 5 atomics 5"),
        (2, 1, "read 5 nvlink 5 atomics 5"),
    ] {
        let want = format!("nvml p2p {x} -> {y}: {status}");
        assert!(has(&lines, &want), "no '{want}' in {lines:?}");
    }
    assert!(has(&lines, "enable peer access 1 -> 0: CUDA_SUCCESS"), "{lines:?}");
    assert!(has(&lines, "disable peer access 1 -> 0: CUDA_SUCCESS"), "{lines:?}");
    for (x, y) in [(0, 1), (1, 0), (0, 2), (2, 1)] {
        let want = format!("peer copy {x} -> {y}: CUDA_SUCCESS verified");
        assert!(has(&lines, &want), "no '{want}' in {lines:?}");
    }
}
