//! Session tickets: the EdDSA-signed JWT a tenant's key is exchanged for, naming its GPUs and limits.
//! GPU servers verify them offline with the control plane's public key; nothing here needs an async runtime.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

/// `typ` claim of a session ticket, so an access token can never pass as a ticket or the reverse.
pub const TICKET_TYP: &str = "vgpu-ticket";

/// One GPU (whole or a slice) the ticket's holder may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketGpu {
    pub server_id: String,
    /// Address clients dial for this server (host:port), as the server registered it.
    pub server_address: String,
    pub gpu_uuid: String,
    pub gpu_index: u32,
    /// Device memory the session may allocate on this GPU; past it allocations fail with out-of-memory.
    pub memory_limit_mib: u64,
    /// Fraction of the GPU's compute time, in (0, 1].
    pub compute_share: f64,
    /// Priority class on the GPU: "guaranteed", "burst" (also when empty) or "preemptible".
    #[serde(default)]
    pub priority: String,
    /// Never more than `compute_share`, even when the GPU is otherwise idle.
    #[serde(default)]
    pub share_cap: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketClaims {
    pub typ: String,
    /// Tenant id.
    pub sub: String,
    /// Session id; usage reports name it.
    pub sid: String,
    pub iat: u64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    pub gpus: Vec<TicketGpu>,
}

impl TicketClaims {
    pub fn tenant_id(&self) -> &str {
        &self.sub
    }
    pub fn session_id(&self) -> &str {
        &self.sid
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("invalid public key: {0}")]
    BadKey(String),
    #[error("ticket expired")]
    Expired,
    #[error("ticket signature is not valid")]
    BadSignature,
    #[error("not a session ticket")]
    WrongType,
    #[error("malformed ticket: {0}")]
    Malformed(String),
}

/// Verifier holding a parsed public key, for servers that check many tickets.
#[derive(Clone)]
pub struct TicketVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TicketVerifier {
    /// `public_key_pem` is the SubjectPublicKeyInfo PEM that `GET /v1/public-key` returns.
    pub fn new(public_key_pem: &[u8]) -> Result<Self, TicketError> {
        let key = DecodingKey::from_ed_pem(public_key_pem).map_err(|e| TicketError::BadKey(e.to_string()))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Servers and the control plane may disagree on the time by a few seconds, not by a minute.
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(TicketVerifier { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<TicketClaims, TicketError> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            jsonwebtoken::decode::<TicketClaims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TicketError::Expired,
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => TicketError::BadSignature,
                _ => TicketError::Malformed(e.to_string()),
            })?;
        if data.claims.typ != TICKET_TYP {
            return Err(TicketError::WrongType);
        }
        Ok(data.claims)
    }
}

/// Checks a ticket's signature, expiry and type with the control plane's public key (PEM).
pub fn verify_ticket(public_key_pem: &[u8], token: &str) -> Result<TicketClaims, TicketError> {
    TicketVerifier::new(public_key_pem)?.verify(token)
}
