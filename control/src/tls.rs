//! The control plane's HTTPS certificate: the operator's (`--tls-cert/--tls-key`), or a self-signed one made
//! on first start and kept (0600) in the data folder; clients pin its SHA-256 (see `pin`).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub type CertAndKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

pub fn load_pem(cert: &Path, key: &Path) -> Result<CertAndKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    Ok((certs, key))
}

/// `dir/cert.pem` and `dir/key.pem`, generated (names: localhost, this host's name, the listen address)
/// when absent. Kept across restarts, so pinned clients keep trusting it.
pub fn self_signed(dir: &Path, addr: SocketAddr) -> Result<CertAndKey, String> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return load_pem(&cert, &key);
    }
    crate::server::private_dir(dir)?;
    let mut names = vec!["localhost".to_string()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            names.push(h.to_string());
        }
    }
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| format!("certificate: {e}"))?;
    crate::signing::write_private_file(&key, ck.key_pair.serialize_pem().as_bytes())?;
    crate::signing::write_private_file(&cert, ck.cert.pem().as_bytes())?;
    load_pem(&cert, &key)
}

pub fn acceptor(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    let provider = Arc::new(crate::pin::provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
