//! `vgpu server`'s transport-security and admission flags: TLS (its certificate, mutual TLS), the rule that
//! plain TCP stays on loopback unless asked, and the pre-authentication bounds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use vgpu_cuda_exec::tls_identity;
use vgpu_cuda_exec::{AdmissionLimits, TlsListen};

/// TLS and plain-TCP policy flags.
#[derive(Args, Debug, Clone)]
pub struct SecurityArgs {
    /// TLS address: what clients on other hosts dial (tls://HOST:PORT#sha256=FINGERPRINT; the fingerprint is
    /// printed at start and registered with the control plane, whose tickets carry it).
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub tls: String,
    /// Do not listen for TLS.
    #[arg(long)]
    pub no_tls: bool,
    /// Allow --tcp on an address other hosts can reach: keys, tickets and data then cross the network
    /// unencrypted. Only for networks you trust entirely.
    #[arg(long)]
    pub allow_plain_tcp: bool,
    /// Folder for the server's state: its generated TLS key and certificate (tls-server.pem, mode 0600).
    /// Default: $XDG_STATE_HOME/vgpu, /var/lib/vgpu for root, else ~/.local/state/vgpu.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The operator's certificate chain (PEM) instead of a generated one (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM; must not be world-readable).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: TLS clients must present a certificate signed by a CA in this PEM file.
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
}

/// Pre-authentication and per-tenant bounds.
#[derive(Args, Debug, Clone)]
pub struct AdmissionArgs {
    /// Seconds a new connection has for its whole hello (TLS handshake included).
    #[arg(long, default_value_t = 10.0)]
    pub hello_timeout_s: f64,
    /// Connections awaiting authentication at once; more are refused at once.
    #[arg(long, default_value_t = 64)]
    pub max_pending: usize,
    /// Concurrent sessions per tenant (per static key without a control plane), unless its ticket says otherwise.
    #[arg(long, default_value_t = 32)]
    pub max_sessions_per_tenant: u32,
    /// Seconds a client may stall in the middle of a request frame (or leave a reply unread) before it is
    /// disconnected; waiting between requests is never cut.
    #[arg(long, default_value_t = 60.0)]
    pub stall_timeout_s: f64,
    /// Seconds another server's connection delivering a copy (`--peer` on that server) waits here for the
    /// receiving session to expect it; also how long that session waits for the connection.
    #[arg(long, default_value_t = 30.0)]
    pub peer_wait_s: f64,
}

impl AdmissionArgs {
    pub fn limits(&self) -> Result<AdmissionLimits, String> {
        let secs = |v: f64, flag: &str| {
            if v.is_finite() && v > 0.0 && v <= 86_400.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!("--{flag} must be between 0 and 86400 seconds"))
            }
        };
        if self.max_pending == 0 || self.max_sessions_per_tenant == 0 {
            return Err("--max-pending and --max-sessions-per-tenant must be at least 1".into());
        }
        Ok(AdmissionLimits {
            hello_timeout: secs(self.hello_timeout_s, "hello-timeout-s")?,
            max_pending: self.max_pending,
            max_sessions_per_tenant: self.max_sessions_per_tenant,
            stall_timeout: secs(self.stall_timeout_s, "stall-timeout-s")?,
            peer_wait: secs(self.peer_wait_s, "peer-wait-s")?,
        })
    }
}

/// Refuses plain TCP on an address other hosts can reach, unless `--allow-plain-tcp`.
pub fn check_plain_tcp(addr: &str, allowed: bool) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| format!("--tcp {addr}: {e}"))?
        .collect();
    if allowed || addrs.iter().all(|a| a.ip().is_loopback()) {
        return Ok(());
    }
    Err(format!(
        "--tcp {addr} would carry keys and data unencrypted beyond this host: remote clients use TLS (--tls, \
         default 0.0.0.0:7443); keep --tcp on loopback, or add --allow-plain-tcp for a network you trust"
    ))
}

/// The TLS endpoint the flags ask for (its identity loaded or generated), or `None` with `--no-tls`.
pub fn tls_listen(args: &SecurityArgs) -> Result<Option<TlsListen>, String> {
    if args.no_tls {
        return Ok(None);
    }
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => tls_identity::from_files(cert, key)?,
        _ => {
            let dir = match &args.state_dir {
                Some(d) => d.clone(),
                None => tls_identity::default_state_dir()?,
            };
            tls_identity::load_or_generate(&dir)?
        }
    };
    let acceptor = identity.acceptor(args.tls_client_ca.as_deref())?;
    let mut origin = identity.origin.clone();
    if let Some(ca) = &args.tls_client_ca {
        origin.push_str(&format!("; clients need a certificate from {}", ca.display()));
    }
    Ok(Some(TlsListen {
        addr: args.tls.clone(),
        acceptor: Arc::new(acceptor),
        origin,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tcp_stays_on_loopback_unless_allowed() {
        assert!(check_plain_tcp("127.0.0.1:7070", false).is_ok());
        assert!(check_plain_tcp("[::1]:7070", false).is_ok());
        let err = check_plain_tcp("0.0.0.0:7070", false).expect_err("refused");
        assert!(err.contains("--allow-plain-tcp"), "{err}");
        assert!(check_plain_tcp("0.0.0.0:7070", true).is_ok());
    }

    #[test]
    fn admission_flags_are_validated() {
        let ok = AdmissionArgs {
            hello_timeout_s: 0.5,
            max_pending: 4,
            max_sessions_per_tenant: 2,
            stall_timeout_s: 1.0,
            peer_wait_s: 2.0,
        };
        assert_eq!(ok.limits().expect("valid").hello_timeout, Duration::from_millis(500));
        for bad in [
            AdmissionArgs {
                hello_timeout_s: 0.0,
                ..ok.clone()
            },
            AdmissionArgs {
                stall_timeout_s: f64::NAN,
                ..ok.clone()
            },
            AdmissionArgs {
                max_pending: 0,
                ..ok.clone()
            },
        ] {
            assert!(bad.limits().is_err(), "{bad:?}");
        }
    }
}
