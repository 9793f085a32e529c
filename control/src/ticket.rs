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
    /// Signed, but not something the control plane issues (a leaked key or a signer bug): refused all the same.
    #[error("implausible ticket: {0}")]
    Implausible(String),
}

/// Most GPUs one ticket may list (a ticket travels in a hello, whose credential is at most 16 KiB).
pub const MAX_TICKET_GPUS: usize = 256;

/// Priority classes a ticket may name (the GPU server's scheduler knows these; empty means burst).
pub const TICKET_PRIORITIES: [&str; 5] = ["", "guaranteed", "burst", "preemptible", "spot"];

/// What a GPU server checks in a correctly signed ticket before admitting it, so that a leaked signing key or a
/// control-plane bug cannot hand out limits the server would compute with wrongly: at least one and at most
/// `MAX_TICKET_GPUS` GPUs, none listed twice, shares finite in (0, 1], memory limits of at least 1 MiB whose sum
/// in bytes fits in 64 bits, a known priority class, an expiry not before the issue time.
pub fn check_claims(c: &TicketClaims) -> Result<(), &'static str> {
    if c.gpus.is_empty() {
        return Err("it names no GPU");
    }
    if c.gpus.len() > MAX_TICKET_GPUS {
        return Err("it names too many GPUs");
    }
    if c.exp < c.iat {
        return Err("it expires before it was issued");
    }
    let mut memory_mib: u64 = 0;
    for (i, g) in c.gpus.iter().enumerate() {
        if !(g.compute_share.is_finite() && g.compute_share > 0.0 && g.compute_share <= 1.0) {
            return Err("a compute share outside (0, 1]");
        }
        if g.memory_limit_mib == 0 {
            return Err("a memory limit of 0 MiB");
        }
        if !TICKET_PRIORITIES.contains(&g.priority.as_str()) {
            return Err("an unknown priority class");
        }
        if c.gpus[..i]
            .iter()
            .any(|o| o.server_id == g.server_id && o.gpu_uuid == g.gpu_uuid)
        {
            return Err("a GPU listed twice");
        }
        memory_mib = memory_mib
            .checked_add(g.memory_limit_mib)
            .ok_or("memory limits that overflow")?;
    }
    memory_mib.checked_mul(1 << 20).ok_or("memory limits that overflow")?;
    Ok(())
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
        check_claims(&data.claims).map_err(|why| TicketError::Implausible(why.into()))?;
        Ok(data.claims)
    }
}

/// Checks a ticket's signature, expiry and type with the control plane's public key (PEM).
pub fn verify_ticket(public_key_pem: &[u8], token: &str) -> Result<TicketClaims, TicketError> {
    TicketVerifier::new(public_key_pem)?.verify(token)
}
