//! Blocking HTTP helpers for the control plane's REST API, used by the GPU server (register, heartbeat,
//! usage), by `vgpu run` (key -> ticket) and by `vgpu admin`. No async runtime needed.

pub use crate::model::{GpuReport as GpuInfo, UsageSample};
use crate::ticket::TicketGpu;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ClientError {
    /// HTTP status, or `None` when the control plane could not be reached or answered garbage.
    pub status: Option<u16>,
    /// The API's stable error code (`unauthorized`, `no_assignment`, ...) or `transport`.
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "control plane answered {s} {}: {}", self.code, self.message),
            None => write!(f, "control plane: {}", self.message),
        }
    }
}

impl std::error::Error for ClientError {}

fn transport(message: String) -> ClientError {
    ClientError {
        status: None,
        code: "transport".into(),
        message,
    }
}

/// A base URL plus an optional credential (API key, access token or server token).
#[derive(Clone)]
pub struct Client {
    base: String,
    auth: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base_url: &str, credential: Option<&str>) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build();
        Client {
            base: base_url.trim_end_matches('/').to_string(),
            auth: credential.map(str::to_string),
            agent,
        }
    }

    /// Sends one request; `path` starts with `/`. Returns the JSON body (Null for an empty one).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let mut req = self.agent.request(method, &format!("{}{}", self.base, path));
        if let Some(a) = &self.auth {
            req = req.set("Authorization", &format!("Bearer {a}"));
        }
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => {
                let text = r.into_string().map_err(|e| transport(e.to_string()))?;
                if text.is_empty() {
                    return Ok(Value::Null);
                }
                serde_json::from_str(&text).map_err(|e| transport(format!("invalid JSON reply: {e}")))
            }
            Err(ureq::Error::Status(status, r)) => {
                let v: Value = r.into_json().unwrap_or(Value::Null);
                Err(ClientError {
                    status: Some(status),
                    code: v["error"]["code"].as_str().unwrap_or("http_error").to_string(),
                    message: v["error"]["message"].as_str().unwrap_or("no error message").to_string(),
                })
            }
            Err(e) => Err(transport(e.to_string())),
        }
    }

    pub fn call_as<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        serde_json::from_value(self.call(method, path, body)?).map_err(|e| transport(format!("unexpected reply: {e}")))
    }
}

/// The answer to `POST /v1/tickets`.
#[derive(Debug, Clone, Deserialize)]
pub struct TicketGrant {
    pub ticket: String,
    pub session_id: String,
    pub expires_at: u64,
    pub gpus: Vec<TicketGpu>,
}

/// Exchanges a tenant's API key (`VGPU_KEY`) for a session ticket with its GPUs and limits.
pub fn request_ticket(control_url: &str, api_key: &str) -> Result<TicketGrant, ClientError> {
    Client::new(control_url, Some(api_key)).call_as("POST", "/v1/tickets", Some(&json!({})))
}

/// Like `request_ticket`, returning only the signed ticket (what the client hands the GPU server).
pub fn fetch_ticket(control_url: &str, api_key: &str) -> Result<String, ClientError> {
    request_ticket(control_url, api_key).map(|g| g.ticket)
}

/// The control plane's Ed25519 public key (PEM), for `ticket::verify_ticket`.
pub fn fetch_public_key(control_url: &str) -> Result<String, ClientError> {
    let v = Client::new(control_url, None).call("GET", "/v1/public-key", None)?;
    v["public_key_pem"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| transport("reply has no public_key_pem".into()))
}

#[derive(Debug, Clone)]
pub struct Registration {
    pub server_id: String,
    /// Credential for `heartbeat` and `report_usage`.
    pub server_token: String,
}

/// Registers (or re-registers, by name) a GPU server with the node token the operator gave it.
pub fn register_server(
    control_url: &str,
    node_token: &str,
    name: &str,
    address: &str,
    gpus: &[GpuInfo],
) -> Result<Registration, ClientError> {
    let v = Client::new(control_url, None).call(
        "POST",
        "/v1/servers",
        Some(&json!({"name": name, "address": address, "node_token": node_token, "gpus": gpus})),
    )?;
    match (v["server"]["id"].as_str(), v["server_token"].as_str()) {
        (Some(id), Some(tok)) => Ok(Registration {
            server_id: id.into(),
            server_token: tok.into(),
        }),
        _ => Err(transport("registration reply lacks server id or token".into())),
    }
}

/// Reports inventory and utilization; returns ids of sessions the control plane ended (revoked assignments,
/// admin action) that the server must close.
pub fn heartbeat(
    control_url: &str,
    server_token: &str,
    server_id: &str,
    gpus: &[GpuInfo],
) -> Result<Vec<String>, ClientError> {
    let v = Client::new(control_url, Some(server_token)).call(
        "POST",
        &format!("/v1/servers/{server_id}/heartbeat"),
        Some(&json!({ "gpus": gpus })),
    )?;
    Ok(v["end_sessions"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default())
}

/// Sends usage records for billing; returns how many were accepted.
pub fn report_usage(control_url: &str, server_token: &str, records: &[UsageSample]) -> Result<usize, ClientError> {
    let v =
        Client::new(control_url, Some(server_token)).call("POST", "/v1/usage", Some(&json!({ "records": records })))?;
    Ok(v["accepted"].as_u64().unwrap_or(0) as usize)
}
