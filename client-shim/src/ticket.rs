//! Where the shim connects and with what credential: a ticket given in `VGPU_TICKET`, a ticket fetched from
//! the control plane with the tenant's `VGPU_KEY` (when `VGPU_CONTROL_URL` is set), or a server's static key.
//! A ticket may name GPUs on several servers: the process uses all of them, each server checking the ticket.

use crate::log::{log, ERROR, INFO};
use std::time::Duration;
use vgpu_dataplane::cuerr::*;

/// The servers to dial (`VGPU_SERVER`'s form: endpoints separated by commas, in device-numbering order) and the
/// credential to present in each hello.
pub struct Target {
    pub servers: String,
    pub credential: String,
}

/// Decides the target from the environment. Errors are logged with their reason and become `cuInit`'s result.
pub fn target() -> CuResult<Target> {
    let server = std::env::var("VGPU_SERVER").ok().filter(|s| !s.is_empty());
    if let Ok(ticket) = std::env::var("VGPU_TICKET") {
        return Ok(Target {
            servers: server.unwrap_or_else(default_server),
            credential: ticket,
        });
    }
    let key = std::env::var("VGPU_KEY").unwrap_or_default();
    match std::env::var("VGPU_CONTROL_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) if !key.is_empty() => {
            let grant = fetch_ticket(&url, &key)?;
            log!(
                INFO,
                "control plane {url} granted session {} on {}",
                grant.session_id,
                grant.servers
            );
            Ok(Target {
                servers: server.unwrap_or(grant.servers),
                credential: grant.ticket,
            })
        }
        _ => Ok(Target {
            servers: server.unwrap_or_else(default_server),
            credential: key,
        }),
    }
}

fn default_server() -> String {
    "tcp://127.0.0.1:7070".into()
}

struct Grant {
    ticket: String,
    session_id: String,
    /// `tcp://address` of every server holding a GPU of the ticket, in the order of the ticket's GPUs.
    servers: String,
}

/// The servers of a ticket's GPU list (`gpus[].server_address`), each once, in order of first appearance (a
/// server's GPUs are numbered in the ticket's order; the server itself puts its own in that order).
fn ticket_servers(gpus: &serde_json::Value) -> Option<String> {
    let mut servers: Vec<String> = Vec::new();
    for g in gpus.as_array()? {
        let a = g["server_address"].as_str()?;
        let url = if a.contains("://") {
            a.to_string()
        } else {
            format!("tcp://{a}")
        };
        if !servers.contains(&url) {
            servers.push(url);
        }
    }
    (!servers.is_empty()).then(|| servers.join(","))
}

/// `POST /v1/tickets` with the tenant's key. The session spans every server the ticket names.
fn fetch_ticket(url: &str, key: &str) -> CuResult<Grant> {
    let endpoint = format!("{}/v1/tickets", url.trim_end_matches('/'));
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .build();
    let reply = agent
        .post(&endpoint)
        .set("Authorization", &format!("Bearer {key}"))
        .send_json(serde_json::json!({}));
    let body: serde_json::Value = match reply {
        Ok(r) => r.into_json().map_err(|e| {
            log!(ERROR, "control plane at {url} sent an unreadable ticket: {e}");
            CUDA_ERROR_NO_DEVICE
        })?,
        Err(ureq::Error::Status(status, r)) => {
            let v: serde_json::Value = r.into_json().unwrap_or_default();
            let message = v["error"]["message"].as_str().unwrap_or("no reason given");
            log!(ERROR, "control plane at {url} refused VGPU_KEY ({status}): {message}");
            return Err(match status {
                401 | 403 => CUDA_ERROR_NOT_PERMITTED,
                _ => CUDA_ERROR_NO_DEVICE,
            });
        }
        Err(e) => {
            log!(ERROR, "cannot reach the control plane at {url} (VGPU_CONTROL_URL): {e}");
            return Err(CUDA_ERROR_NO_DEVICE);
        }
    };
    let ticket = body["ticket"].as_str();
    match (ticket, ticket_servers(&body["gpus"])) {
        (Some(t), Some(servers)) => Ok(Grant {
            ticket: t.to_string(),
            session_id: body["session_id"].as_str().unwrap_or("?").to_string(),
            servers,
        }),
        _ => {
            log!(ERROR, "control plane at {url} sent a ticket without a server");
            Err(CUDA_ERROR_NO_DEVICE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_names_each_server_once_in_the_order_of_its_gpus() {
        let gpus = serde_json::json!([
            {"server_address": "b:7070", "gpu_uuid": "GPU-1"},
            {"server_address": "a:7070", "gpu_uuid": "GPU-2"},
            {"server_address": "b:7070", "gpu_uuid": "GPU-3"},
            {"server_address": "shm://local", "gpu_uuid": "GPU-4"},
        ]);
        assert_eq!(
            ticket_servers(&gpus).as_deref(),
            Some("tcp://b:7070,tcp://a:7070,shm://local")
        );
        assert_eq!(ticket_servers(&serde_json::json!([])), None);
        assert_eq!(ticket_servers(&serde_json::json!([{"gpu_uuid": "x"}])), None);
    }
}
