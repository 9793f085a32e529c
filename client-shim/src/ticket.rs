//! Where the shim connects and with what credential: a ticket given in `VGPU_TICKET`, a ticket fetched from
//! the control plane with the tenant's `VGPU_KEY` (when `VGPU_CONTROL_URL` is set), or a server's static key.

use crate::log::{log, ERROR, INFO};
use vgpu_dataplane::cuerr::*;

/// The server to dial and the credential to present in the hello.
pub struct Target {
    pub server: String,
    pub credential: String,
}

/// Decides the target from the environment. Errors are logged with their reason and become `cuInit`'s result.
pub fn target() -> CuResult<Target> {
    let server = std::env::var("VGPU_SERVER").ok().filter(|s| !s.is_empty());
    if let Ok(ticket) = std::env::var("VGPU_TICKET") {
        return Ok(Target {
            server: server.unwrap_or_else(default_server),
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
                grant.server
            );
            Ok(Target {
                server: server.unwrap_or(grant.server),
                credential: grant.ticket,
            })
        }
        _ => Ok(Target {
            server: server.unwrap_or_else(default_server),
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
    /// Endpoint of the server holding the ticket's first GPU: `tls://host:port#sha256=…` when the server
    /// registered a TLS certificate (the client then pins it), else as registered (`tcp://` if no scheme).
    server: String,
}

/// `POST /v1/tickets` with the tenant's key. `url` may list several control-plane replicas (comma-separated,
/// tried in turn) and pin each one's certificate (`https://host:8470#sha256=<hex>`). A session runs on one
/// server: the one holding the first GPU the ticket names.
fn fetch_ticket(url: &str, key: &str) -> CuResult<Grant> {
    let grant = vgpu_control::client::request_ticket(url, key).map_err(|e| match e.status {
        Some(status @ (401 | 403)) => {
            log!(
                ERROR,
                "control plane at {url} refused VGPU_KEY ({status}): {}",
                e.message
            );
            CUDA_ERROR_NOT_PERMITTED
        }
        Some(status) => {
            log!(
                ERROR,
                "control plane at {url} refused a ticket ({status}): {}",
                e.message
            );
            CUDA_ERROR_NO_DEVICE
        }
        None => {
            log!(
                ERROR,
                "cannot reach the control plane at {url} (VGPU_CONTROL_URL): {}",
                e.message
            );
            CUDA_ERROR_NO_DEVICE
        }
    })?;
    let Some(first) = grant.gpus.first() else {
        log!(ERROR, "control plane at {url} sent a ticket without a server");
        return Err(CUDA_ERROR_NO_DEVICE);
    };
    Ok(Grant {
        server: ticket_endpoint(&first.server_address, first.tls_cert_sha256.as_deref()),
        ticket: grant.ticket,
        session_id: grant.session_id,
    })
}

/// The endpoint to dial for a ticket's server address and the certificate fingerprint the server registered:
/// a `tls://` address gets the pin (unless it names one itself); an address without a scheme is plain TCP.
fn ticket_endpoint(address: &str, tls_cert_sha256: Option<&str>) -> String {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("tcp://{address}")
    };
    match tls_cert_sha256 {
        Some(pin) if url.starts_with("tls://") && !url.contains('#') => format!("{url}#sha256={pin}"),
        _ => url,
    }
}

#[cfg(test)]
mod tests {
    use super::ticket_endpoint;

    #[test]
    fn ticket_addresses_become_endpoints_with_their_pin() {
        let pin = "ab".repeat(32);
        assert_eq!(ticket_endpoint("gpu:7070", None), "tcp://gpu:7070");
        assert_eq!(
            ticket_endpoint("tls://gpu:7443", Some(&pin)),
            format!("tls://gpu:7443#sha256={pin}")
        );
        // An explicit pin in the address wins; a plain TCP address takes none.
        assert_eq!(
            ticket_endpoint("tls://g:1#sha256=00", Some(&pin)),
            "tls://g:1#sha256=00"
        );
        assert_eq!(ticket_endpoint("g:1", Some(&pin)), "tcp://g:1");
    }
}
