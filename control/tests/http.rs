//! Over real HTTP: `spawn_for_test`, the blocking client helpers a GPU server and `vgpu run` use, and the
//! `vgpu admin` CLI, end to end through warp.
#![allow(clippy::unwrap_used)]

use vgpu_control::api::{Bootstrap, Config};
use vgpu_control::cli::{admin_request, AdminArgs, AdminCommand, KeyCmd, TenantCmd};
use vgpu_control::client::{self, Client, GpuInfo, UsageSample};

const ADMIN: &str = "vgpu_adminhttp_0123456789abcdefghijklmnop";
const NODE: &str = "vgpun_http_0123456789abcdefghij";

fn admin(url: &str, command: AdminCommand) -> serde_json::Value {
    admin_request(&AdminArgs {
        url: url.into(),
        key: Some(ADMIN.into()),
        command,
    })
    .unwrap()
}

#[test]
fn server_lifecycle_through_client_and_cli() {
    let cp = vgpu_control::spawn_for_test(
        Config::default(),
        Bootstrap {
            admin_key: Some(ADMIN.into()),
            node_token: Some(NODE.into()),
        },
    )
    .unwrap();
    let url = cp.url();

    // GPU server side: register, heartbeat.
    let gpus = vec![GpuInfo {
        uuid: "GPU-emu-0".into(),
        index: 0,
        name: "vGPU emulated".into(),
        model: Some("emulated".into()),
        memory_total_mib: 16384,
        memory_used_mib: 0,
        utilization_pct: 0.0,
    }];
    let enroll = |token: &'static str| client::Enrollment {
        node_token: Some(token),
        credential: None,
        name: "node",
        address: "127.0.0.1:7000",
        gpus: &gpus,
        tls_cert_sha256: None,
    };
    assert!(client::register_server(&url, &enroll("wrong-token")).is_err());
    let reg = client::register_server(&url, &enroll(NODE)).unwrap();
    assert!(client::heartbeat(&url, &reg.server_token, &reg.server_id, &gpus)
        .unwrap()
        .end_sessions
        .is_empty());

    // Operator side, through the CLI: tenant, key, assignment.
    let t = admin(
        &url,
        AdminCommand::Tenant(TenantCmd::Create {
            name: "lab".into(),
            plan: None,
        }),
    );
    let tid = t["id"].as_str().unwrap().to_string();
    let k = admin(
        &url,
        AdminCommand::Key(KeyCmd::Create {
            tenant_id: tid.clone(),
            label: Some("ci".into()),
        }),
    );
    let key = k["secret"].as_str().unwrap().to_string();
    let a = admin(
        &url,
        AdminCommand::Assign {
            tenant_id: tid.clone(),
            gpu_uuid: "GPU-emu-0".into(),
            memory_mib: Some(4096),
            share: None,
            priority: None,
            cap: false,
        },
    );
    assert_eq!(a["compute_share"], 0.25);
    let g = admin(&url, AdminCommand::Gpus);
    assert_eq!(g["gpus"][0]["assigned_memory_mib"], 4096);

    // Researcher side: key -> ticket, verified offline by the server with the public key.
    let pem = client::fetch_public_key(&url).unwrap();
    let ticket = client::fetch_ticket(&url, &key).unwrap();
    let claims = vgpu_control::verify_ticket(pem.as_bytes(), &ticket).unwrap();
    assert_eq!(claims.gpus[0].memory_limit_mib, 4096);
    assert_eq!(claims.tenant_id(), tid);

    // Server reports usage; it shows in the API.
    let n = client::report_usage(
        &url,
        &reg.server_token,
        "report-1",
        &[UsageSample {
            session_id: claims.sid.clone(),
            gpu_uuid: "GPU-emu-0".into(),
            period_start: claims.iat - 90,
            period_end: claims.iat,
            gpu_seconds: 90.0,
            gpu_busy_seconds: 45.0,
            memory_gib_hours: 0.25,
            bytes_moved: 4096,
            session_ended: true,
        }],
    )
    .unwrap();
    assert_eq!(n, 1);
    let u = admin(
        &url,
        AdminCommand::Usage {
            tenant: Some(tid.clone()),
            from: None,
            to: None,
        },
    );
    assert_eq!(u["tenants"][0]["gpu_seconds"], 90.0);
    assert_eq!(u["tenants"][0]["bytes_moved"], 4096);

    // Errors come back with their stable code.
    let err = client::fetch_ticket(&url, "vgpu_nope_0123456789abcdefghij").unwrap_err();
    assert_eq!((err.status, err.code.as_str()), (Some(401), "unauthorized"));
    let err = Client::new(&url, Some(ADMIN))
        .call("GET", "/v1/tenants/t_none", None)
        .unwrap_err();
    assert_eq!(err.code, "not_found");
    let e = admin_request(&AdminArgs {
        url: url.clone(),
        key: None,
        command: AdminCommand::Servers,
    })
    .unwrap_err();
    assert!(e.contains("no admin key"));

    // Oversized bodies get a JSON 413 without the server reading them (raw socket: a client library would
    // race its own upload against the early answer).
    {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(cp.addr).unwrap();
        write!(sock, "POST /v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\nConnection: close\r\n\r\n").unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut reply = String::new();
        let _ = sock.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
        assert!(reply.contains("payload_too_large"), "{reply}");
    }

    // The UI and metrics are served.
    let agent = ureq::agent();
    let html = agent.get(&format!("{url}/")).call().unwrap().into_string().unwrap();
    assert!(html.contains("<html"));
    let metrics = agent
        .get(&format!("{url}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(metrics.contains("vgpu_control_gpus 1"));
    drop(cp);
    assert!(client::fetch_public_key(&url).is_err(), "stopped on drop");
}

#[test]
fn unreachable_control_plane_is_a_transport_error() {
    let err = client::fetch_ticket("http://127.0.0.1:1", "vgpu_x_0123456789abcdefghij").unwrap_err();
    assert_eq!((err.status, err.code.as_str()), (None, "transport"));
}
