//! Control-plane URLs as clients give them: a comma-separated list for failover, each `https://` one
//! optionally pinned to its certificate (`https://host:8470#sha256=<hex>`), verified without any PKI.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// One control-plane replica: its base URL (no fragment) and the SHA-256 its certificate must have.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub base: String,
    pub pin: Option<[u8; 32]>,
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s: String = s.chars().filter(|c| *c != ':').collect();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a DER certificate: the fingerprint operators pin.
pub fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// Parses `url[#sha256=<hex>][,url...]`. `fallback_pin` (from `VGPU_CONTROL_FINGERPRINT`) pins every https URL
/// that names none.
pub fn parse_urls(list: &str, fallback_pin: Option<&str>) -> Result<Vec<Endpoint>, String> {
    let fallback = match fallback_pin.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => {
            Some(unhex32(p.trim_start_matches("sha256=")).ok_or("VGPU_CONTROL_FINGERPRINT is not a SHA-256 in hex")?)
        }
        None => None,
    };
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()).take(16) {
        let (base, frag) = match part.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (part, None),
        };
        let pin =
            match frag {
                Some(f) => Some(f.strip_prefix("sha256=").and_then(unhex32).ok_or_else(|| {
                    format!("control-plane URL {part}: the fragment must be #sha256=<64 hex digits>")
                })?),
                None => fallback,
            };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("control-plane URL {part} must start with http:// or https://"));
        }
        if pin.is_some() && base.starts_with("http://") {
            return Err(format!("control-plane URL {part}: a certificate pin needs https://"));
        }
        out.push(Endpoint {
            base: base.trim_end_matches('/').to_string(),
            pin,
        });
    }
    if out.is_empty() {
        return Err("no control-plane URL given".into());
    }
    Ok(out)
}

/// Accepts exactly the certificate with the pinned SHA-256 (whatever its names, issuer or dates: the pin is
/// the trust), and checks the handshake signatures with it as usual.
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the control plane's certificate has SHA-256 {}, not the pinned {}",
                hex(&got),
                hex(&self.pin)
            )))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The crypto provider of every TLS connection of the control plane and its clients: *ring* (pure Rust and
/// assembly, no C toolchain needed, unlike aws-lc-rs). rustls marks it deprecated only because it lacks
/// post-quantum key exchange.
#[allow(deprecated)]
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// An HTTP agent for one endpoint: certificate pinning when it has a pin, the usual web PKI otherwise.
pub fn agent(ep: &Endpoint, timeout: Duration) -> ureq::Agent {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5).min(timeout))
        .timeout(timeout);
    if let Some(pin) = ep.pin {
        let provider = Arc::new(provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map(|c| {
                c.dangerous()
                    .with_custom_certificate_verifier(Arc::new(Pinned { pin, provider }))
                    .with_no_client_auth()
            });
        if let Ok(config) = config {
            b = b.tls_config(Arc::new(config));
        }
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_pins_and_lists() {
        let h = "ab".repeat(32);
        let eps = parse_urls(&format!("https://a:1#sha256={h}, http://b:2/"), None).expect("parse");
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].base, "https://a:1");
        assert_eq!(eps[0].pin, Some([0xab; 32]));
        assert_eq!(
            eps[1],
            Endpoint {
                base: "http://b:2".into(),
                pin: None
            }
        );
        let eps = parse_urls("https://a:1", Some(&h)).expect("fallback pin");
        assert_eq!(eps[0].pin, Some([0xab; 32]));
        assert!(parse_urls("https://a:1#sha256=zz", None).is_err());
        assert!(parse_urls(&format!("http://a:1#sha256={h}"), None).is_err());
        assert!(parse_urls("ftp://a", None).is_err());
        assert!(parse_urls(" , ", None).is_err());
    }
}
