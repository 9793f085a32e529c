//! Where the shim connects and with what credential: a ticket given in `VGPU_TICKET`, a ticket fetched from
//! the control plane with the tenant's `VGPU_KEY` (when `VGPU_CONTROL_URL` is set), or a server's static key.
//! A ticket may name GPUs on several servers: the process uses all of them, each server checking the ticket.

use crate::log::{log, ERROR, INFO};
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
    /// Endpoint of every server holding a GPU of the ticket, in the order of the ticket's GPUs, comma-separated
    /// (`VGPU_SERVER`'s form): `tls://host:port#sha256=…` when the server registered a TLS certificate (the client
    /// then pins it), else as registered (`tcp://` if no scheme).
    servers: String,
}

/// The servers of a ticket's GPUs (their `server_address`es with the certificate fingerprint each registered),
/// each once, in order of first appearance (a server's GPUs are numbered in the ticket's order; the server itself
/// puts its own in that order).
fn ticket_servers<'a>(gpus: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Option<String> {
    let mut servers: Vec<String> = Vec::new();
    for (address, pin) in gpus {
        let url = ticket_endpoint(address, pin);
        if !servers.contains(&url) {
            servers.push(url);
        }
    }
    (!servers.is_empty()).then(|| servers.join(","))
}

/// `POST /v1/tickets` with the tenant's key. `url` may list several control-plane replicas (comma-separated,
/// tried in turn) and pin each one's certificate (`https://host:8470#sha256=<hex>`). The session spans every
/// server the ticket names.
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
    if grant.gpus.is_empty() {
        log!(ERROR, "control plane at {url} sent a ticket without a server");
        return Err(CUDA_ERROR_NO_DEVICE);
    }
    let servers = ticket_servers(
        grant
            .gpus
            .iter()
            .map(|g| (g.server_address.as_str(), g.tls_cert_sha256.as_deref())),
    )
    .ok_or(CUDA_ERROR_NO_DEVICE)?;
    Ok(Grant {
        ticket: grant.ticket,
        session_id: grant.session_id,
        servers,
    })
}

/// The endpoint to dial for a ticket's server address and the certificate fingerprint the server registered:
/// a `tls://` address gets the pin (unless it names one itself); an address without a scheme is plain TCP.
fn ticket_endpoint(address: &str, tls_cert_sha256: Option<&str>) -> String {
    vgpu_control::ticket::endpoint_url(address, tls_cert_sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_ticket_names_each_server_once_in_the_order_of_its_gpus() {
        let pin = "cd".repeat(32);
        let gpus = [
            ("b:7070", None),
            ("tls://a:7443", Some(pin.as_str())),
            ("b:7070", None),
            ("shm://local", None),
            ("tls://a:7443", Some(pin.as_str())),
        ];
        assert_eq!(
            ticket_servers(gpus).as_deref(),
            Some(format!("tcp://b:7070,tls://a:7443#sha256={pin},shm://local").as_str())
        );
        assert_eq!(ticket_servers([]), None);
    }
}
