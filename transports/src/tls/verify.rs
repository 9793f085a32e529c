//! Server verification by certificate pinning: the certificate's SHA-256 must be the one the ticket (or the
//! operator) names, and the handshake signature must verify with its key. No names, dates or CAs are involved.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

#[derive(Debug)]
pub(crate) struct PinnedServer {
    sha256: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServer {
    pub(crate) fn new(sha256: [u8; 32], provider: &Arc<CryptoProvider>) -> PinnedServer {
        PinnedServer {
            sha256,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

#[derive(Debug)]
struct WrongCertificate(String);

impl std::fmt::Display for WrongCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WrongCertificate {}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if super::keys::sha256(end_entity) == self.sha256 {
            return Ok(ServerCertVerified::assertion());
        }
        let want: String = self.sha256.iter().map(|b| format!("{b:02x}")).collect();
        Err(Error::InvalidCertificate(CertificateError::Other(OtherError(
            Arc::new(WrongCertificate(format!(
                "the server's certificate has sha256 {}, not the pinned {want}",
                super::fingerprint(end_entity)
            ))),
        ))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
