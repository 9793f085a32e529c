//! `vgpu admin ...`: every operation the web UI offers, as subcommands that call the REST API and print the
//! JSON reply. The binary crate only wires `AdminArgs` into its clap tree and calls `run_admin`.

use crate::client::Client;
use serde_json::{json, Value};

#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Control plane URL; several replicas comma-separated (tried in turn). An https:// URL may pin the
    /// certificate: https://host:8470#sha256=<hex> (as `vgpu control` prints it).
    #[arg(
        long,
        visible_alias = "control",
        env = "VGPU_CONTROL_URL",
        hide_env_values = true,
        default_value = "https://127.0.0.1:8470"
    )]
    pub url: String,
    /// Admin API key (vgpu_...).
    #[arg(long, env = "VGPU_ADMIN_KEY", hide_env_values = true)]
    pub key: Option<String>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Health of the control plane.
    Health,
    /// Tenants: list, create, show, set-plan, delete.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// API keys: list, create, rotate, revoke.
    #[command(subcommand)]
    Key(KeyCmd),
    /// GPU servers with their GPUs and status.
    Servers,
    /// Remove a GPU server and its credential (it must enroll again with the node token).
    DeleteServer { server_id: String },
    /// Another admin key (so the first can be rotated or revoked).
    AdminKey {
        #[arg(long)]
        label: Option<String>,
    },
    /// The audit log of admin actions.
    Audit {
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Rotate the ticket signing key; the old one keeps verifying for --overlap seconds.
    RotateSigningKey {
        #[arg(long)]
        overlap: Option<u64>,
    },
    /// All GPUs with utilization and what is assigned.
    Gpus,
    /// Pricing plans.
    #[command(subcommand)]
    Plan(PlanCmd),
    /// Assign a whole GPU (no sizes) or a slice to a tenant.
    Assign {
        tenant_id: String,
        gpu_uuid: String,
        /// Memory limit in MiB (default: the whole GPU, or its share of it).
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Compute share in (0, 1] (default: 1, or memory/total).
        #[arg(long)]
        share: Option<f64>,
        /// guaranteed, burst or preemptible (default: the tenant's plan's, else guaranteed).
        #[arg(long)]
        priority: Option<String>,
        /// The share is also a ceiling (default: a guarantee; idle time of others may be used).
        #[arg(long)]
        cap: bool,
    },
    /// Change an assignment: move it to another GPU or resize the slice.
    Reassign {
        assignment_id: String,
        #[arg(long)]
        gpu: Option<String>,
        #[arg(long)]
        memory_mib: Option<u64>,
        #[arg(long)]
        share: Option<f64>,
        #[arg(long)]
        priority: Option<String>,
        /// true: the share is also a ceiling; false: a guarantee.
        #[arg(long)]
        cap: Option<bool>,
    },
    /// Revoke an assignment; ends the tenant's live sessions on that GPU.
    Unassign { assignment_id: String },
    /// List assignments.
    Assignments {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List sessions.
    Sessions {
        #[arg(long)]
        tenant: Option<String>,
        /// active, ended or expired.
        #[arg(long)]
        status: Option<String>,
    },
    /// End a session.
    EndSession { session_id: String },
    /// Usage and cost per tenant (times in seconds since the Unix epoch; default: the last 30 days).
    Usage {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TenantCmd {
    /// List tenants.
    List,
    /// Create a tenant, optionally on a plan.
    Create {
        name: String,
        #[arg(long)]
        plan: Option<String>,
    },
    /// Show one tenant.
    Show { tenant_id: String },
    /// Put a tenant on a plan ("" clears it).
    SetPlan { tenant_id: String, plan_id: String },
    /// Delete a tenant: revokes its keys and assignments.
    Delete { tenant_id: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeyCmd {
    /// List a tenant's keys (never their secrets).
    List { tenant_id: String },
    /// Create a key; the secret is printed once.
    Create {
        tenant_id: String,
        #[arg(long)]
        label: Option<String>,
    },
    /// Replace a key with a new one (the old one stops working at once).
    Rotate { key_id: String },
    /// Revoke a key; tokens issued for it stop working at once.
    Revoke { key_id: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum PlanCmd {
    /// List plans.
    List,
    /// Create a plan; each --rate is MODEL:PER_GPU_HOUR:PER_GIB_HOUR (MODEL `*` matches any GPU).
    Create {
        name: String,
        #[arg(long, default_value = "USD")]
        currency: String,
        #[arg(long = "rate", required = true)]
        rates: Vec<String>,
    },
    /// Delete a plan no tenant is on.
    Delete { plan_id: String },
}

fn parse_rate(s: &str) -> Result<Value, String> {
    let parts: Vec<&str> = s.rsplitn(3, ':').collect();
    if parts.len() != 3 {
        return Err(format!("rate `{s}` is not MODEL:PER_GPU_HOUR:PER_GIB_HOUR"));
    }
    let gib: f64 = parts[0]
        .parse()
        .map_err(|_| format!("bad per-GiB-hour price in `{s}`"))?;
    let gpu: f64 = parts[1]
        .parse()
        .map_err(|_| format!("bad per-GPU-hour price in `{s}`"))?;
    Ok(json!({"gpu_model": parts[2], "per_gpu_hour": gpu, "per_gib_hour": gib}))
}

fn qs(pairs: &[(&str, Option<String>)]) -> String {
    let p: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
    if p.is_empty() {
        String::new()
    } else {
        format!("?{}", p.join("&"))
    }
}

/// Performs the command and returns the API's JSON reply.
pub fn admin_request(args: &AdminArgs) -> Result<Value, String> {
    let key = args.key.as_deref();
    if key.is_none() && !matches!(args.command, AdminCommand::Health) {
        return Err("no admin key: pass --key or set VGPU_ADMIN_KEY".into());
    }
    let c = Client::new(&args.url, key);
    let r = match &args.command {
        AdminCommand::Health => c.call("GET", "/v1/health", None),
        AdminCommand::Tenant(t) => match t {
            TenantCmd::List => c.call("GET", "/v1/tenants", None),
            TenantCmd::Create { name, plan } => {
                c.call("POST", "/v1/tenants", Some(&json!({"name": name, "plan_id": plan})))
            }
            TenantCmd::Show { tenant_id } => c.call("GET", &format!("/v1/tenants/{tenant_id}"), None),
            TenantCmd::SetPlan { tenant_id, plan_id } => c.call(
                "PATCH",
                &format!("/v1/tenants/{tenant_id}"),
                Some(&json!({ "plan_id": plan_id })),
            ),
            TenantCmd::Delete { tenant_id } => c.call("DELETE", &format!("/v1/tenants/{tenant_id}"), None),
        },
        AdminCommand::Key(k) => match k {
            KeyCmd::List { tenant_id } => c.call("GET", &format!("/v1/tenants/{tenant_id}/keys"), None),
            KeyCmd::Create { tenant_id, label } => c.call(
                "POST",
                &format!("/v1/tenants/{tenant_id}/keys"),
                Some(&json!({ "label": label })),
            ),
            KeyCmd::Rotate { key_id } => c.call("POST", &format!("/v1/keys/{key_id}/rotate"), Some(&json!({}))),
            KeyCmd::Revoke { key_id } => c.call("DELETE", &format!("/v1/keys/{key_id}"), None),
        },
        AdminCommand::Servers => c.call("GET", "/v1/servers?limit=1000", None),
        AdminCommand::DeleteServer { server_id } => c.call("DELETE", &format!("/v1/servers/{server_id}"), None),
        AdminCommand::AdminKey { label } => c.call("POST", "/v1/admin-keys", Some(&json!({ "label": label }))),
        AdminCommand::Audit { limit, cursor } => c.call(
            "GET",
            &format!(
                "/v1/audit{}",
                qs(&[("limit", limit.map(|l| l.to_string())), ("cursor", cursor.clone())])
            ),
            None,
        ),
        AdminCommand::RotateSigningKey { overlap } => c.call(
            "POST",
            "/v1/signing-keys/rotate",
            Some(&json!({ "overlap_s": overlap })),
        ),
        AdminCommand::Gpus => c.call("GET", "/v1/gpus", None),
        AdminCommand::Plan(p) => match p {
            PlanCmd::List => c.call("GET", "/v1/plans", None),
            PlanCmd::Create { name, currency, rates } => {
                let rates = rates.iter().map(|r| parse_rate(r)).collect::<Result<Vec<_>, _>>()?;
                c.call(
                    "POST",
                    "/v1/plans",
                    Some(&json!({"name": name, "currency": currency, "rates": rates})),
                )
            }
            PlanCmd::Delete { plan_id } => c.call("DELETE", &format!("/v1/plans/{plan_id}"), None),
        },
        AdminCommand::Assign {
            tenant_id,
            gpu_uuid,
            memory_mib,
            share,
            priority,
            cap,
        } => c.call(
            "POST",
            "/v1/assignments",
            Some(
                &json!({"tenant_id": tenant_id, "gpu_uuid": gpu_uuid, "memory_limit_mib": memory_mib,
                         "compute_share": share, "priority": priority, "share_cap": cap}),
            ),
        ),
        AdminCommand::Reassign {
            assignment_id,
            gpu,
            memory_mib,
            share,
            priority,
            cap,
        } => c.call(
            "PATCH",
            &format!("/v1/assignments/{assignment_id}"),
            Some(
                &json!({"gpu_uuid": gpu, "memory_limit_mib": memory_mib, "compute_share": share,
                         "priority": priority, "share_cap": cap}),
            ),
        ),
        AdminCommand::Unassign { assignment_id } => c.call("DELETE", &format!("/v1/assignments/{assignment_id}"), None),
        AdminCommand::Assignments { tenant } => c.call(
            "GET",
            &format!("/v1/assignments{}", qs(&[("tenant_id", tenant.clone())])),
            None,
        ),
        AdminCommand::Sessions { tenant, status } => c.call(
            "GET",
            &format!(
                "/v1/sessions{}",
                qs(&[("tenant_id", tenant.clone()), ("status", status.clone())])
            ),
            None,
        ),
        AdminCommand::EndSession { session_id } => c.call("DELETE", &format!("/v1/sessions/{session_id}"), None),
        AdminCommand::Usage { tenant, from, to } => c.call(
            "GET",
            &format!(
                "/v1/usage{}",
                qs(&[
                    ("tenant_id", tenant.clone()),
                    ("from", from.map(|x| x.to_string())),
                    ("to", to.map(|x| x.to_string()))
                ])
            ),
            None,
        ),
    };
    r.map_err(|e| e.to_string())
}

/// Runs `vgpu admin ...`: prints the reply as pretty JSON.
pub fn run_admin(args: AdminArgs) -> Result<(), String> {
    let v = admin_request(&args)?;
    println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
    Ok(())
}
