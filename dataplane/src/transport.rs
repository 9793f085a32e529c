//! The `Transport` trait: an ordered, reliable byte channel between one client thread and its server thread.
//! Framing, batching and bulk payloads are layered on top of it by `crate::wire`; transports only move bytes.

use std::fmt;

/// Why a transport stopped working. Every variant ends the channel: the caller drops it.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer closed the channel or its process went away.
    #[error("peer closed the connection")]
    Closed,
    /// An operating-system error on the underlying socket or mapping.
    #[error("transport I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the transport's own rules (bad ring indices, wrong setup message).
    #[error("transport protocol violation: {0}")]
    Protocol(String),
}

/// One end of a channel. Implementations: TCP, shared memory and RDMA in `vgpu-transports`.
///
/// `send` writes every part, in order, as one contiguous stretch of the stream, without copying the parts
/// into an intermediate buffer when the transport can avoid it (TCP uses `writev`). `recv_exact` fills the
/// whole buffer or fails; bulk payloads are received straight into their destination this way.
pub trait Transport: Send {
    /// Sends all parts in order.
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError>;
    /// Receives exactly `buf.len()` bytes.
    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError>;
    /// Sends all parts in order, the caller promising that every part in page-locked memory listed in
    /// `pinned::HOST` stays unchanged until the peer has received it (a synchronous call's tail, whose reply comes
    /// after the peer read it; an asynchronous copy from an app's pinned buffer, which CUDA forbids changing before
    /// the copy ran). The memory may be freed meanwhile: a transport that lets the peer read such parts in place
    /// after this returns (RDMA: offered, not waited for) keeps their registration, and so their pages, until read.
    /// Anything else goes as `send` sends it.
    fn send_stable(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        self.send(parts)
    }
    /// The length from which a `send_stable` part in listed memory is read by the peer in place rather than copied
    /// (`None`: never, the transport always copies). Lets a caller send such parts on their own instead of batching
    /// them with other bytes (which would copy them).
    fn stable_in_place_min(&self) -> Option<usize> {
        None
    }
    /// Sends all parts in order while the peer is waiting to receive them (a synchronous copy's data): a
    /// transport may make this wait until the peer has read listed parts in place rather than copy them (RDMA:
    /// offered from the pull size up, the send returning once they were read). The caller may change the parts
    /// once it returns, as after `send`.
    fn send_awaited(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        self.send(parts)
    }
    /// Short name used in logs and bench tables ("tcp", "shm", "rdma").
    fn kind(&self) -> &'static str;
    /// Hands a file descriptor to the peer, tagged so the peer can match it with the message it belongs to.
    /// Only transports between processes of one host can (shared memory); the others refuse.
    fn send_fd(&mut self, _fd: std::os::fd::BorrowedFd<'_>, _tag: u64) -> Result<(), TransportError> {
        Err(TransportError::Protocol(format!(
            "the {} transport cannot pass descriptors",
            self.kind()
        )))
    }
    /// Receives the descriptor the peer sent with `send_fd`, which must carry `tag`.
    fn recv_fd(&mut self, _tag: u64) -> Result<std::os::fd::OwnedFd, TransportError> {
        Err(TransportError::Protocol(format!(
            "the {} transport cannot pass descriptors",
            self.kind()
        )))
    }
    /// Whether this transport may move listed device memory (`pinned::DEVICE`) directly, without host staging
    /// (GPUDirect RDMA). When false, `send_device` and `recv_device` always answer false.
    fn moves_device_memory(&self) -> bool {
        false
    }
    /// Sends `len` bytes of listed device memory at `addr` as stream bytes, the peer reading them from the GPU.
    /// `Ok(false)`: not done this way (nothing was sent); the caller sends them through host memory.
    fn send_device(&mut self, _addr: u64, _len: usize) -> Result<bool, TransportError> {
        Ok(false)
    }
    /// Receives the next `len` stream bytes straight into listed device memory at `addr`. Bytes that arrive in a
    /// form the device cannot take directly (small writes into this side's ring) go to `inline(offset, bytes)`,
    /// which writes them to `addr + offset` itself. `Ok(false)`: not done this way (nothing was received).
    fn recv_device(
        &mut self,
        _addr: u64,
        _len: usize,
        _inline: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<bool, TransportError> {
        Ok(false)
    }
}

/// Forwards the provided methods of `Transport` (in-place sends, device memory) to `(**self)` in the two blanket
/// impls below.
macro_rules! forward_provided_methods {
    () => {
        fn send_stable(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
            (**self).send_stable(parts)
        }
        fn send_awaited(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
            (**self).send_awaited(parts)
        }
        fn stable_in_place_min(&self) -> Option<usize> {
            (**self).stable_in_place_min()
        }
        fn moves_device_memory(&self) -> bool {
            (**self).moves_device_memory()
        }
        fn send_device(&mut self, addr: u64, len: usize) -> Result<bool, TransportError> {
            (**self).send_device(addr, len)
        }
        fn recv_device(
            &mut self,
            addr: u64,
            len: usize,
            inline: &mut dyn FnMut(usize, &[u8]),
        ) -> Result<bool, TransportError> {
            (**self).recv_device(addr, len, inline)
        }
    };
}

/// A borrowed transport is one too: a wrapper (a striped channel) can sit on a transport its owner keeps.
impl<T: Transport + ?Sized> Transport for &mut T {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        (**self).send(parts)
    }
    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        (**self).recv_exact(buf)
    }
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn send_fd(&mut self, fd: std::os::fd::BorrowedFd<'_>, tag: u64) -> Result<(), TransportError> {
        (**self).send_fd(fd, tag)
    }
    fn recv_fd(&mut self, tag: u64) -> Result<std::os::fd::OwnedFd, TransportError> {
        (**self).recv_fd(tag)
    }
    forward_provided_methods!();
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        (**self).send(parts)
    }
    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        (**self).recv_exact(buf)
    }
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn send_fd(&mut self, fd: std::os::fd::BorrowedFd<'_>, tag: u64) -> Result<(), TransportError> {
        (**self).send_fd(fd, tag)
    }
    fn recv_fd(&mut self, tag: u64) -> Result<std::os::fd::OwnedFd, TransportError> {
        (**self).recv_fd(tag)
    }
    forward_provided_methods!();
}

/// Where a GPU server listens, as written in `VGPU_SERVER`: `tcp://host:port`, `tls://host:port[#sha256=HEX]`,
/// `shm://name` or `rdma://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address, `host:port` (plain: for loopback and networks the operator trusts).
    Tcp(String),
    /// TLS 1.3 over TCP to `addr` (`host:port`); `sha256` pins the server certificate's fingerprint (64 hex digits).
    Tls { addr: String, sha256: Option<String> },
    /// A shared-memory rendezvous: the Unix socket at `shm_socket_path(name)`.
    Shm(String),
    /// An RDMA endpoint: the TCP address (`host:port`) where queue pairs are exchanged; data moves over RDMA.
    Rdma(String),
}

impl Endpoint {
    /// Parses `tcp://host:port`, `tls://host:port[#sha256=HEX]`, `shm://name` or `rdma://host:port`; a bare
    /// `host:port` means TCP.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let text = text.trim();
        let host_port = |rest: &str| {
            rest.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        };
        if let Some(rest) = text.strip_prefix("tcp://") {
            if !host_port(rest) {
                return Err(format!(
                    "'{text}': a TCP endpoint needs host:port, e.g. tcp://127.0.0.1:7070"
                ));
            }
            Ok(Endpoint::Tcp(rest.to_string()))
        } else if let Some(rest) = text.strip_prefix("tls://") {
            let (addr, fragment) = match rest.split_once('#') {
                Some((a, f)) => (a, Some(f)),
                None => (rest, None),
            };
            if !host_port(addr) {
                return Err(format!(
                    "'{text}': a TLS endpoint needs host:port, e.g. tls://gpu-host:7443#sha256=<fingerprint>"
                ));
            }
            let sha256 = match fragment {
                None => None,
                Some(f) => {
                    let hex: String = f
                        .strip_prefix("sha256=")
                        .ok_or_else(|| format!("'{text}': after '#' only sha256=<fingerprint> is understood"))?
                        .chars()
                        .filter(|c| *c != ':')
                        .collect();
                    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(format!("'{text}': the sha256 fingerprint must be 64 hex digits"));
                    }
                    Some(hex.to_ascii_lowercase())
                }
            };
            Ok(Endpoint::Tls {
                addr: addr.to_string(),
                sha256,
            })
        } else if let Some(rest) = text.strip_prefix("rdma://") {
            if !host_port(rest) {
                return Err(format!(
                    "'{text}': an RDMA endpoint needs host:port, e.g. rdma://10.0.0.2:7071"
                ));
            }
            Ok(Endpoint::Rdma(rest.to_string()))
        } else if let Some(rest) = text.strip_prefix("shm://") {
            if rest.is_empty() {
                return Err(format!(
                    "'{text}': a shared-memory endpoint needs a name, e.g. shm://vgpu"
                ));
            }
            Ok(Endpoint::Shm(rest.to_string()))
        } else if text.contains("://") {
            Err(format!(
                "'{text}': unknown transport; use tcp://host:port, tls://host:port, shm://name or rdma://host:port"
            ))
        } else {
            Endpoint::parse(&format!("tcp://{text}"))
        }
    }

    /// Parses `VGPU_SERVER`'s list form: endpoints separated by commas, each as `parse` reads it. The order is
    /// kept (it is the order in which a process numbers the servers' devices); an empty entry, a repeated
    /// endpoint or more than `MAX_SERVERS` entries is an error.
    pub fn parse_list(text: &str) -> Result<Vec<Endpoint>, String> {
        let mut list: Vec<Endpoint> = Vec::new();
        for entry in text.split(',') {
            if entry.trim().is_empty() {
                return Err(format!("'{text}': an empty entry in the list of servers"));
            }
            let endpoint = Endpoint::parse(entry)?;
            if list.contains(&endpoint) {
                return Err(format!("'{text}': {endpoint} is named twice"));
            }
            list.push(endpoint);
        }
        if list.len() > MAX_SERVERS {
            return Err(format!("'{text}': {} servers; at most {MAX_SERVERS}", list.len()));
        }
        Ok(list)
    }
}

/// Most servers one process may use at once (`VGPU_SERVER` lists, multi-server tickets).
pub const MAX_SERVERS: usize = 16;

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Tls { addr, sha256: None } => write!(f, "tls://{addr}"),
            Endpoint::Tls {
                addr,
                sha256: Some(pin),
            } => write!(f, "tls://{addr}#sha256={pin}"),
            Endpoint::Shm(n) => write!(f, "shm://{n}"),
            Endpoint::Rdma(a) => write!(f, "rdma://{a}"),
        }
    }
}

/// The Unix socket a shared-memory endpoint named `name` listens on. A name containing `/` is a path.
pub fn shm_socket_path(name: &str) -> std::path::PathBuf {
    if name.contains('/') {
        std::path::PathBuf::from(name)
    } else {
        std::env::temp_dir().join(format!("vgpu-{name}.sock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints_and_rejects_bad_ones() {
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:7070"),
            Ok(Endpoint::Tcp("127.0.0.1:7070".into()))
        );
        assert_eq!(Endpoint::parse("localhost:9"), Ok(Endpoint::Tcp("localhost:9".into())));
        assert_eq!(Endpoint::parse("shm://vgpu"), Ok(Endpoint::Shm("vgpu".into())));
        assert!(Endpoint::parse("tcp://nohost").is_err());
        assert!(Endpoint::parse("tcp://h:99999").is_err());
        assert!(Endpoint::parse("shm://").is_err());
        assert_eq!(Endpoint::parse("rdma://x:1"), Ok(Endpoint::Rdma("x:1".into())));
        assert!(Endpoint::parse("rdma://x").is_err());
        assert!(Endpoint::parse("rdma://:7").is_err());
        assert_eq!(
            Endpoint::parse("rdma://10.0.0.2:7071").map(|e| e.to_string()),
            Ok("rdma://10.0.0.2:7071".to_string())
        );
        assert!(Endpoint::parse("ib://x:1").is_err());
        let pin = "AB".repeat(32);
        assert_eq!(
            Endpoint::parse(&format!("tls://gpu:7443#sha256={pin}")),
            Ok(Endpoint::Tls {
                addr: "gpu:7443".into(),
                sha256: Some("ab".repeat(32))
            })
        );
        assert_eq!(
            Endpoint::parse("tls://[::1]:7443").map(|e| e.to_string()),
            Ok("tls://[::1]:7443".to_string())
        );
        assert_eq!(
            Endpoint::parse(&format!("tls://g:1#sha256={pin}")).map(|e| e.to_string()),
            Ok(format!("tls://g:1#sha256={}", "ab".repeat(32)))
        );
        assert!(Endpoint::parse("tls://g:1#sha256=abc").is_err());
        assert!(Endpoint::parse(&format!("tls://g:1#md5={pin}")).is_err());
        assert!(Endpoint::parse("tls://nohost").is_err());
        assert_eq!(
            Endpoint::parse("shm://a").map(|e| e.to_string()),
            Ok("shm://a".to_string())
        );
    }

    #[test]
    fn server_lists_keep_their_order_and_refuse_gaps_repeats_and_excess() {
        assert_eq!(
            Endpoint::parse_list("tcp://h:1, shm://b,rdma://x:2"),
            Ok(vec![
                Endpoint::Tcp("h:1".into()),
                Endpoint::Shm("b".into()),
                Endpoint::Rdma("x:2".into())
            ])
        );
        assert_eq!(Endpoint::parse_list("h:1"), Ok(vec![Endpoint::Tcp("h:1".into())]));
        assert!(Endpoint::parse_list("tcp://h:1,,shm://b").is_err());
        assert!(Endpoint::parse_list("tcp://h:1,").is_err());
        assert!(Endpoint::parse_list("tcp://h:1,h:1").is_err(), "same server twice");
        assert!(Endpoint::parse_list("tcp://h:1,bogus://x").is_err());
        let many: Vec<String> = (0..=MAX_SERVERS).map(|i| format!("shm://s{i}")).collect();
        assert!(Endpoint::parse_list(&many.join(",")).is_err());
        assert_eq!(
            Endpoint::parse_list(&many[..MAX_SERVERS].join(",")).map(|l| l.len()),
            Ok(MAX_SERVERS)
        );
    }
}
