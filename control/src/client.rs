//! Blocking HTTP client of the control plane's REST API, used by the GPU server (register, heartbeat, usage),
//! by the shim and `vgpu run` (key -> ticket) and by `vgpu admin`. It takes several replica URLs and fails
//! over between them; `https://` URLs may pin the replica's certificate (see `pin`). No async runtime needed.

pub use crate::model::{GpuReport as GpuInfo, UsageSample};
use crate::pin::{self, Endpoint};
use crate::ticket::TicketGpu;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

impl ClientError {
    /// Worth trying another replica: it could not be reached, or said it cannot serve now.
    fn fails_over(&self) -> bool {
        matches!(self.status, None | Some(502..=504))
    }
}

/// The control-plane URL list of the environment: `VGPU_CONTROL_URL`, pinned by `VGPU_CONTROL_FINGERPRINT`
/// where a URL names no pin of its own.
pub fn fallback_pin_from_env() -> Option<String> {
    std::env::var("VGPU_CONTROL_FINGERPRINT").ok().filter(|s| !s.is_empty())
}

/// Replica URLs plus an optional credential (API key, access token or server credential).
#[derive(Clone)]
pub struct Client {
    endpoints: Arc<Vec<(Endpoint, ureq::Agent)>>,
    /// Set when the URL list could not be parsed: every call fails with it.
    invalid: Option<String>,
    auth: Option<String>,
    /// The replica that answered last; calls start there.
    preferred: Arc<AtomicUsize>,
}

impl Client {
    /// `urls`: one URL or several separated by commas (replicas, tried in turn when one is unreachable).
    pub fn new(urls: &str, credential: Option<&str>) -> Client {
        Self::with_timeout(urls, credential, Duration::from_secs(30))
    }

    pub fn with_timeout(urls: &str, credential: Option<&str>, timeout: Duration) -> Client {
        let (endpoints, invalid) = match pin::parse_urls(urls, fallback_pin_from_env().as_deref()) {
            Ok(eps) => (
                eps.into_iter()
                    .map(|e| {
                        let a = pin::agent(&e, timeout);
                        (e, a)
                    })
                    .collect(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e)),
        };
        Client {
            endpoints: Arc::new(endpoints),
            invalid,
            auth: credential.map(str::to_string),
            preferred: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The base URLs, for messages.
    pub fn urls(&self) -> Vec<String> {
        self.endpoints.iter().map(|(e, _)| e.base.clone()).collect()
    }

    /// Same replicas, another credential.
    pub fn with_credential(&self, credential: Option<&str>) -> Client {
        Client {
            auth: credential.map(str::to_string),
            ..self.clone()
        }
    }

    /// Sends one request; `path` starts with `/`. Returns the JSON body (Null for an empty one). Unreachable
    /// replicas (and 502-504 answers) make it try the next one.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        if let Some(e) = &self.invalid {
            return Err(transport(e.clone()));
        }
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut last = transport("no control-plane URL".into());
        for i in 0..n {
            let idx = (start + i) % n;
            match self.one(idx, method, path, body) {
                Ok(v) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if e.fails_over() => {
                    let base = &self.endpoints[idx].0.base;
                    last = ClientError {
                        message: format!("{base}: {}", e.message),
                        ..e
                    };
                }
                Err(e) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Err(last)
    }

    fn one(&self, idx: usize, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let (ep, agent) = &self.endpoints[idx];
        let mut req = agent.request(method, &format!("{}{}", ep.base, path));
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
pub fn request_ticket(control_urls: &str, api_key: &str) -> Result<TicketGrant, ClientError> {
    Client::with_timeout(control_urls, Some(api_key), Duration::from_secs(20)).call_as(
        "POST",
        "/v1/tickets",
        Some(&json!({})),
    )
}

/// Like `request_ticket`, returning only the signed ticket (what the client hands the GPU server).
pub fn fetch_ticket(control_urls: &str, api_key: &str) -> Result<String, ClientError> {
    request_ticket(control_urls, api_key).map(|g| g.ticket)
}

/// The control plane's public keys: the whole reply of `GET /v1/public-key` (`public_key_pem` is the active
/// key, `keys` every key still valid).
pub fn fetch_public_keys(control_urls: &str) -> Result<Value, ClientError> {
    Client::new(control_urls, None).call("GET", "/v1/public-key", None)
}

/// The control plane's active Ed25519 public key (PEM).
pub fn fetch_public_key(control_urls: &str) -> Result<String, ClientError> {
    let v = fetch_public_keys(control_urls)?;
    v["public_key_pem"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| transport("reply has no public_key_pem".into()))
}

#[derive(Debug, Clone)]
pub struct Registration {
    pub server_id: String,
    /// The server's own credential, for every later call (heartbeats, usage, registering again).
    pub server_token: String,
}

/// What a GPU server tells the control plane about itself.
#[derive(Debug, Clone)]
pub struct Enrollment<'a> {
    /// The operator's node token; needed only the first time, when the server has no credential yet.
    pub node_token: Option<&'a str>,
    /// The server's own credential from an earlier registration.
    pub credential: Option<&'a str>,
    pub name: &'a str,
    pub address: &'a str,
    pub gpus: &'a [GpuInfo],
    /// Hex SHA-256 of the server's data-plane TLS certificate.
    pub tls_cert_sha256: Option<&'a str>,
}

/// Registers a GPU server: enrolls it with the node token, or registers it again with its own credential.
pub fn register_server(control_urls: &str, e: &Enrollment<'_>) -> Result<Registration, ClientError> {
    let mut body = json!({"name": e.name, "address": e.address, "gpus": e.gpus});
    if let Some(t) = e.node_token {
        body["node_token"] = json!(t);
    }
    if let Some(f) = e.tls_cert_sha256 {
        body["tls_cert_sha256"] = json!(f);
    }
    let v = Client::new(control_urls, e.credential).call("POST", "/v1/servers", Some(&body))?;
    match (v["server"]["id"].as_str(), v["server_token"].as_str()) {
        (Some(id), Some(tok)) => Ok(Registration {
            server_id: id.into(),
            server_token: tok.into(),
        }),
        _ => Err(transport("registration reply lacks server id or token".into())),
    }
}

/// What a heartbeat returns.
#[derive(Debug, Clone, Default)]
pub struct Beat {
    /// Sessions the control plane ended (revoked assignments, admin action) that the server must close.
    pub end_sessions: Vec<String>,
    /// Ids of the signing keys in use: an unknown one means the server should fetch the public keys again.
    pub signing_kids: Vec<String>,
}

/// Reports inventory and utilization.
pub fn heartbeat(
    control_urls: &str,
    server_token: &str,
    server_id: &str,
    gpus: &[GpuInfo],
) -> Result<Beat, ClientError> {
    let v = Client::with_timeout(control_urls, Some(server_token), Duration::from_secs(10)).call(
        "POST",
        &format!("/v1/servers/{server_id}/heartbeat"),
        Some(&json!({ "gpus": gpus })),
    )?;
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .take(10_000)
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Beat {
        end_sessions: strings("end_sessions"),
        signing_kids: strings("signing_kids"),
    })
}

/// Sends usage records for billing under `report_id` (resending the same id after a failure, to any replica,
/// is counted once); returns how many records the control plane holds for that report.
pub fn report_usage(
    control_urls: &str,
    server_token: &str,
    report_id: &str,
    records: &[UsageSample],
) -> Result<usize, ClientError> {
    let v = Client::new(control_urls, Some(server_token)).call(
        "POST",
        "/v1/usage",
        Some(&json!({ "report_id": report_id, "records": records })),
    )?;
    Ok(v["accepted"].as_u64().unwrap_or(0) as usize)
}
