//! `vgpu quickstart`: the whole system on one machine. A control plane, a GPU server registered with it, a
//! tenant with a key and a GPU slice, and the bundled sample run through the shim with that key, then its usage.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vgpu_control::client::Client;
use vgpu_cuda_exec::BackendChoice;

use crate::local;

/// Memory of the tenant's slice in the quickstart, in MiB (or the whole GPU if smaller).
const SLICE_MIB: u64 = 2048;

pub fn run(backend: &str, standalone: bool) -> Result<(), String> {
    BackendChoice::parse(backend)?;
    if standalone {
        return run_standalone(backend);
    }
    let data = std::env::temp_dir().join(format!("vgpu-quickstart-{}", std::process::id()));
    println!("vgpu quickstart: starting a control plane (in-memory store)");
    // HTTPS with a certificate made for this run; every client below pins it through the URL's #sha256=.
    let control = vgpu_control::server::spawn_control(vgpu_control::ControlArgs::new(
        "127.0.0.1:0".parse().map_err(|_| "address")?,
        data.clone(),
        vgpu_control::store::Backend::Memory,
    ))?;
    let url = control.url();
    let admin_key = control.admin_key.clone().ok_or("the control plane made no admin key")?;
    let node_token = control
        .node_token
        .clone()
        .ok_or("the control plane made no node token")?;
    let (base, pin) = url.split_once('#').unwrap_or((url.as_str(), ""));
    println!("  REST API and web UI at {base}/ (admin key above; self-signed certificate, {pin})");
    println!("  clients: VGPU_CONTROL_URL={url}");

    println!("vgpu quickstart: starting a GPU server registered with it");
    let server = local::LocalServer::start_with_env(
        backend,
        &[
            "--control",
            &url,
            "--name",
            "quickstart-server",
            "--credential-file",
            &data.join("server.credential").to_string_lossy(),
        ],
        &[("VGPU_NODE_TOKEN", &node_token)],
    )?;
    for line in &server.banner {
        println!("  {line}");
    }

    let admin = Client::new(&url, Some(&admin_key));
    let call = |method: &str, path: &str, body: Option<Value>| {
        admin
            .call(method, path, body.as_ref())
            .map_err(|e| format!("{method} {path}: {e}"))
    };
    let plan = call(
        "POST",
        "/v1/plans",
        Some(json!({"name": "quickstart", "currency": "USD",
                    "rates": [{"gpu_model": "*", "per_gpu_hour": 2.5, "per_gib_hour": 0.01}]})),
    )?;
    let tenant = call(
        "POST",
        "/v1/tenants",
        Some(json!({"name": "researcher", "plan_id": plan["id"]})),
    )?;
    let tenant_id = tenant["id"].as_str().ok_or("tenant has no id")?.to_string();
    let key = call("POST", &format!("/v1/tenants/{tenant_id}/keys"), Some(json!({})))?;
    let tenant_key = key["secret"].as_str().ok_or("key has no secret")?.to_string();
    let gpus = call("GET", "/v1/gpus", None)?;
    let gpu = gpus["gpus"]
        .as_array()
        .and_then(|g| g.first())
        .ok_or("the server registered no GPU")?
        .clone();
    let uuid = gpu["uuid"].as_str().ok_or("GPU has no uuid")?;
    let slice = gpu["memory_total_mib"].as_u64().unwrap_or(SLICE_MIB).min(SLICE_MIB);
    call(
        "POST",
        "/v1/assignments",
        Some(json!({"tenant_id": tenant_id, "gpu_uuid": uuid, "memory_limit_mib": slice, "compute_share": 0.5})),
    )?;
    println!(
        "vgpu quickstart: tenant 'researcher' ({tenant_id}) got a key and a slice of {} {uuid}: {slice} MiB, half \
         its compute",
        gpu["name"].as_str().unwrap_or("GPU")
    );

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut failed = false;
    // Without VGPU_SERVER the shim dials the server the ticket names (over TLS, pinning the certificate the
    // printed fingerprint names, as a client on another host would); on this host it may use shared memory.
    for endpoint in [None, Some(server.shm.as_str())] {
        let over = endpoint.map_or_else(|| "TLS (the ticket's server)".to_string(), str::to_string);
        println!("vgpu quickstart: running the sample with VGPU_KEY through the shim over {over}");
        let mut cmd = local::through_shim(&exe, endpoint)?;
        cmd.env("VGPU_KEY", &tenant_key)
            .env("VGPU_CONTROL_URL", &url)
            .env("VGPU_TLS_FINGERPRINT", server.tls_sha256())
            .env_remove("VGPU_TICKET");
        failed |= !run_sample(cmd)?;
    }
    if failed {
        return Err("the sample failed through vGPU".into());
    }

    // The server reports a session's usage as soon as it ends; give it a few seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let usage = loop {
        let u = call("GET", &format!("/v1/usage?tenant_id={tenant_id}"), None)?;
        let ended = call("GET", &format!("/v1/sessions?tenant_id={tenant_id}&status=ended"), None)?;
        let n = ended["sessions"].as_array().map_or(0, Vec::len);
        if n >= 2 || Instant::now() > deadline {
            break u;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let t = &usage["tenants"][0];
    println!(
        "vgpu quickstart: usage the server reported for 'researcher': {:.2} GPU-seconds, {:.6} GiB-hours of \
         memory, {} bytes moved, cost {:.6} {}",
        t["gpu_seconds"].as_f64().unwrap_or(0.0),
        t["memory_gib_hours"].as_f64().unwrap_or(0.0),
        t["bytes_moved"].as_u64().unwrap_or(0),
        t["cost"].as_f64().unwrap_or(0.0),
        t["currency"].as_str().unwrap_or("USD"),
    );
    if t["bytes_moved"].as_u64().unwrap_or(0) == 0 {
        return Err("the server reported no usage to the control plane".into());
    }
    println!(
        "vgpu quickstart: done. Run your own program with: VGPU_CONTROL_URL=<url> VGPU_KEY=<key> vgpu run -- \
         ./your-app (or, without a control plane: vgpu run --server {} -- ./your-app)",
        server.tcp
    );
    Ok(())
}

/// The quickstart without a control plane: a server with no key, the sample over TCP, TLS and shared memory.
fn run_standalone(backend: &str) -> Result<(), String> {
    println!("vgpu quickstart: starting a GPU server on this machine");
    let server = local::LocalServer::start(backend, &[])?;
    for line in &server.banner {
        println!("  {line}");
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut failed = false;
    for endpoint in [&server.tcp, &server.tls, &server.shm] {
        println!("vgpu quickstart: running the bundled sample through the shim over {endpoint}");
        failed |= !run_sample(local::through_shim(&exe, Some(endpoint))?)?;
    }
    if failed {
        return Err("the sample failed through vGPU".into());
    }
    println!(
        "vgpu quickstart: done. Run your own program with: vgpu run --server {} -- ./your-app",
        server.tcp
    );
    Ok(())
}

/// Runs `vgpu sample` with `cmd`'s environment, prints what it said, and returns whether it succeeded.
fn run_sample(mut cmd: std::process::Command) -> Result<bool, String> {
    let out = cmd.arg("sample").output().map_err(|e| e.to_string())?;
    print!("  {}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.status.success())
}
