//! Records the control plane stores (tenants, keys, servers, GPUs, plans, assignments, sessions, usage) and
//! the JSON shapes the REST API returns for them; `api-spec/openapi.yaml` documents the same fields.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Tenant,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub plan_id: Option<String>,
    pub created_at: u64,
}

/// Stored form of an API key: only the argon2 hash of the secret is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub tenant_id: Option<String>,
    pub role: Role,
    pub label: String,
    pub hash: String,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
}

/// What the API shows of a key (never the hash).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub tenant_id: Option<String>,
    pub role: Role,
    pub label: String,
    pub prefix: String,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
}

impl KeyRecord {
    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            id: self.id.clone(),
            tenant_id: self.tenant_id.clone(),
            role: self.role,
            label: self.label.clone(),
            prefix: format!("vgpu_{}_", self.id),
            created_at: self.created_at,
            revoked_at: self.revoked_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub address: String,
    pub registered_at: u64,
    /// Kept for reading layout-1 records; the live value is in the server's heartbeat record (`hb/<id>`).
    #[serde(default)]
    pub last_heartbeat_at: Option<u64>,
    pub gpu_uuids: Vec<String>,
    /// Hex SHA-256 of the server's data-plane TLS certificate, as it registered it; tickets carry it.
    #[serde(default)]
    pub tls_cert_sha256: Option<String>,
}

/// What a server's last heartbeat said: when, and each GPU's load. Rewritten every few seconds, so it is
/// its own small record and the inventory (`Server`, `Gpu`) is written only when it changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    pub at: u64,
    #[serde(default)]
    pub gpus: Vec<GpuLoad>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GpuLoad {
    pub uuid: String,
    pub memory_used_mib: u64,
    pub utilization_pct: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gpu {
    pub uuid: String,
    pub server_id: String,
    pub index: u32,
    pub name: String,
    pub model: String,
    pub memory_total_mib: u64,
    pub memory_used_mib: u64,
    pub utilization_pct: f64,
    pub updated_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rate {
    /// GPU model this rate applies to, or `*` for any model without its own rate.
    pub gpu_model: String,
    pub per_gpu_hour: f64,
    pub per_gib_hour: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub currency: String,
    pub rates: Vec<Rate>,
    pub created_at: u64,
    /// Priority of assignments made for tenants on this plan when the assignment names none.
    #[serde(default)]
    pub default_priority: Option<String>,
}

/// How the GPU server schedules a slice against others on the same GPU (the scheduler is the server's).
pub const PRIORITIES: &[&str] = &["guaranteed", "burst", "preemptible"];

pub fn default_priority() -> String {
    "guaranteed".into()
}

impl Plan {
    pub fn rate_for(&self, model: &str) -> Option<&Rate> {
        self.rates
            .iter()
            .find(|r| r.gpu_model == model)
            .or_else(|| self.rates.iter().find(|r| r.gpu_model == "*"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub id: String,
    pub tenant_id: String,
    pub gpu_uuid: String,
    pub memory_limit_mib: u64,
    pub compute_share: f64,
    /// `guaranteed` (default), `burst` or `preemptible`.
    #[serde(default = "default_priority")]
    pub priority: String,
    /// false: the share is a guarantee (idle time of others may be used); true: it is also a ceiling.
    #[serde(default)]
    pub share_cap: bool,
    pub created_at: u64,
    pub updated_at: u64,
}

/// Sum of the slices on one GPU, kept beside its assignments so a capacity check reads one record and a
/// commit that changes it fails if another changed it first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GpuAlloc {
    pub memory_mib: u64,
    pub share: f64,
    pub count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub tenant_id: String,
    pub gpu_uuids: Vec<String>,
    pub created_at: u64,
    pub expires_at: u64,
    pub ended_at: Option<u64>,
    pub end_reason: Option<String>,
    /// Servers holding the session's GPUs: the ones told to end it when the control plane does.
    #[serde(default)]
    pub server_ids: Vec<String>,
    /// When the pruner removes the record (its key in the `sgc/` index); 0 for layout-1 records.
    #[serde(default)]
    pub gc_at: u64,
}

impl Session {
    pub fn status(&self, now: u64) -> &'static str {
        if self.ended_at.is_some() {
            "ended"
        } else if now >= self.expires_at {
            "expired"
        } else {
            "active"
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageRecord {
    pub id: String,
    pub tenant_id: String,
    pub session_id: String,
    pub server_id: String,
    pub gpu_uuid: String,
    pub gpu_model: String,
    pub period_start: u64,
    pub period_end: u64,
    pub gpu_seconds: f64,
    /// GPU time the server's scheduler measured as delivered to the session (0 when it does not measure).
    #[serde(default)]
    pub gpu_busy_seconds: f64,
    pub memory_gib_hours: f64,
    pub bytes_moved: u64,
    pub reported_at: u64,
    /// Id of the report that carried the record (a retried report is counted once).
    #[serde(default)]
    pub report_id: Option<String>,
}

/// One admin action, kept for the audit log (`GET /v1/audit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: String,
    pub at: u64,
    /// Key id of the admin (or `bootstrap`).
    pub actor: String,
    /// Address the request came from, when known.
    pub source: Option<String>,
    /// e.g. `tenant.create`, `key.revoke`, `signing_key.rotate`.
    pub action: String,
    pub target: String,
    /// What changed, as compact JSON text.
    pub detail: String,
}

/// One GPU as a server reports it at registration and in heartbeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuReport {
    pub uuid: String,
    pub index: u32,
    pub name: String,
    /// Model used for pricing (e.g. `H100`); defaults to `name`.
    #[serde(default)]
    pub model: Option<String>,
    pub memory_total_mib: u64,
    #[serde(default)]
    pub memory_used_mib: u64,
    #[serde(default)]
    pub utilization_pct: f64,
}

/// One usage record a GPU server reports for a session on one of its GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageSample {
    pub session_id: String,
    pub gpu_uuid: String,
    pub period_start: u64,
    pub period_end: u64,
    #[serde(default)]
    pub gpu_seconds: f64,
    /// GPU time the scheduler measured as delivered; 0 when unknown.
    #[serde(default)]
    pub gpu_busy_seconds: f64,
    #[serde(default)]
    pub memory_gib_hours: f64,
    #[serde(default)]
    pub bytes_moved: u64,
    /// The server closed the session after this record.
    #[serde(default)]
    pub session_ended: bool,
}
