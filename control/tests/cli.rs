//! `vgpu admin` command tree: insta snapshots of its help text, so a change to the CLI surface shows in review,
//! and argument parsing of the commands the quickstart and README use.
#![allow(clippy::unwrap_used)]

use clap::{CommandFactory, Parser};
use vgpu_control::cli::{AdminArgs, AdminCommand};

#[derive(Parser)]
#[command(name = "vgpu-admin")]
struct Cli {
    #[command(flatten)]
    admin: AdminArgs,
}

#[test]
fn help_snapshots() {
    let mut cmd = Cli::command().term_width(100);
    cmd.build();
    let mut out = cmd.render_help().to_string();
    for sub in cmd.get_subcommands_mut() {
        let name = sub.get_name().to_string();
        out.push_str(&format!("\n===== {name} =====\n{}", sub.render_help()));
    }
    insta::assert_snapshot!("admin_help", out);
}

#[test]
fn parses_assign_and_plan_rates() {
    let c = Cli::try_parse_from([
        "vgpu-admin",
        "--key",
        "vgpu_a_0123456789abcdefgh",
        "assign",
        "t_1",
        "GPU-x",
        "--memory-mib",
        "8192",
        "--priority",
        "burst",
        "--cap",
    ])
    .unwrap();
    match c.admin.command {
        AdminCommand::Assign {
            tenant_id,
            gpu_uuid,
            memory_mib,
            share,
            priority,
            cap,
        } => {
            assert_eq!(
                (
                    tenant_id.as_str(),
                    gpu_uuid.as_str(),
                    memory_mib,
                    share,
                    priority.as_deref(),
                    cap
                ),
                ("t_1", "GPU-x", Some(8192), None, Some("burst"), true)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        Cli::try_parse_from(["vgpu-admin", "plan", "create", "p"]).is_err(),
        "a plan needs --rate"
    );
    let c = Cli::try_parse_from([
        "vgpu-admin",
        "--key",
        "k",
        "plan",
        "create",
        "p",
        "--rate",
        "H100:2.5:0.01",
    ])
    .unwrap();
    // A bad rate is an error message, not a panic, and is caught before any request is sent.
    let bad = Cli::try_parse_from([
        "vgpu-admin",
        "--key",
        "k",
        "--url",
        "http://127.0.0.1:1",
        "plan",
        "create",
        "p",
        "--rate",
        "H100:x",
    ])
    .unwrap();
    assert!(vgpu_control::cli::admin_request(&bad.admin)
        .unwrap_err()
        .contains("MODEL:PER_GPU_HOUR:PER_GIB_HOUR"));
    assert!(matches!(c.admin.command, AdminCommand::Plan(_)));
}
