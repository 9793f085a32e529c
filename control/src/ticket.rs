//! Session tickets: the EdDSA-signed JWT a tenant's key is exchanged for, naming its GPUs and limits.
//! GPU servers verify them offline with the control plane's public keys; nothing here needs an async runtime.

#[cfg(feature = "service")]
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
    /// `guaranteed` (the share is reserved), `burst` or `preemptible`: how the server's scheduler ranks the
    /// session against others on the GPU.
    #[serde(default = "default_priority")]
    pub priority: String,
    /// false: the share is a guarantee (the session may use idle time beyond it); true: also a ceiling.
    #[serde(default)]
    pub share_cap: bool,
    /// Hex SHA-256 of the GPU server's data-plane TLS certificate, from its registration: the client pins it.
    #[serde(default)]
    pub tls_cert_sha256: Option<String>,
}

impl TicketGpu {
    /// The endpoint a client dials for this GPU's server (see `endpoint_url`).
    pub fn endpoint(&self) -> String {
        endpoint_url(&self.server_address, self.tls_cert_sha256.as_deref())
    }
}

/// A server's registered address as an endpoint (`VGPU_SERVER`'s form): as registered (`tcp://` where it names no
/// scheme), with the certificate fingerprint the server registered pinned on a `tls://` address that pins none.
/// Clients dial this; a GPU server also lets a session send copies to the other servers its ticket names by it.
pub fn endpoint_url(address: &str, tls_cert_sha256: Option<&str>) -> String {
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

fn default_priority() -> String {
    "guaranteed".into()
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
    /// Signed with a key this verifier does not have yet (the control plane rotated its key): fetch the
    /// current set from `GET /v1/public-key` and try again.
    #[error("ticket signed with unknown key {0}")]
    UnknownKey(String),
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

/// Verifier holding the control plane's parsed public keys (the current one and, during a rotation's overlap,
/// the previous ones), for servers that check many tickets.
#[cfg(feature = "service")]
#[derive(Clone)]
pub struct TicketVerifier {
    /// (key id, key); a ticket whose header names a kid is checked against that key only.
    keys: Vec<(Option<String>, DecodingKey)>,
    validation: Validation,
}

#[cfg(feature = "service")]
impl TicketVerifier {
    /// One key: the SubjectPublicKeyInfo PEM that `GET /v1/public-key` returns as `public_key_pem`.
    pub fn new(public_key_pem: &[u8]) -> Result<Self, TicketError> {
        Self::with_keys(&[(None, public_key_pem.to_vec())])
    }

    /// Several keys with their ids, as `GET /v1/public-key` lists them in `keys`.
    pub fn with_keys(keys: &[(Option<String>, Vec<u8>)]) -> Result<Self, TicketError> {
        if keys.is_empty() {
            return Err(TicketError::BadKey("no public key".into()));
        }
        let mut parsed = Vec::new();
        for (kid, pem) in keys {
            parsed.push((
                kid.clone(),
                DecodingKey::from_ed_pem(pem).map_err(|e| TicketError::BadKey(e.to_string()))?,
            ));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Servers and the control plane may disagree on the time by a few seconds, not by a minute.
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(TicketVerifier {
            keys: parsed,
            validation,
        })
    }

    /// Parses the JSON body of `GET /v1/public-key` (a `keys` set, or only `public_key_pem` from older
    /// control planes).
    pub fn from_public_key_reply(v: &serde_json::Value) -> Result<Self, TicketError> {
        let mut keys = Vec::new();
        if let Some(set) = v["keys"].as_array() {
            for k in set.iter().take(16) {
                if let Some(pem) = k["public_key_pem"].as_str() {
                    keys.push((k["kid"].as_str().map(str::to_string), pem.as_bytes().to_vec()));
                }
            }
        }
        if keys.is_empty() {
            let pem = v["public_key_pem"]
                .as_str()
                .ok_or_else(|| TicketError::BadKey("reply has no public key".into()))?;
            keys.push((v["kid"].as_str().map(str::to_string), pem.as_bytes().to_vec()));
        }
        Self::with_keys(&keys)
    }

    pub fn verify(&self, token: &str) -> Result<TicketClaims, TicketError> {
        use jsonwebtoken::errors::ErrorKind;
        let header = jsonwebtoken::decode_header(token).map_err(|e| TicketError::Malformed(e.to_string()))?;
        let candidates: Vec<&DecodingKey> = match &header.kid {
            Some(kid) if self.keys.iter().any(|(k, _)| k.is_some()) => {
                let found: Vec<&DecodingKey> = self
                    .keys
                    .iter()
                    .filter(|(k, _)| k.as_deref() == Some(kid.as_str()))
                    .map(|(_, d)| d)
                    .collect();
                if found.is_empty() {
                    return Err(TicketError::UnknownKey(kid.clone()));
                }
                found
            }
            _ => self.keys.iter().map(|(_, d)| d).collect(),
        };
        let mut last = TicketError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<TicketClaims>(token, key, &self.validation) {
                Ok(data) => {
                    if data.claims.typ != TICKET_TYP {
                        return Err(TicketError::WrongType);
                    }
                    check_claims(&data.claims).map_err(|why| TicketError::Implausible(why.into()))?;
                    return Ok(data.claims);
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(TicketError::Expired),
                        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => TicketError::BadSignature,
                        _ => TicketError::Malformed(e.to_string()),
                    }
                }
            }
        }
        Err(last)
    }
}

/// Checks a ticket's signature, expiry and type with the control plane's public key (PEM).
#[cfg(feature = "service")]
pub fn verify_ticket(public_key_pem: &[u8], token: &str) -> Result<TicketClaims, TicketError> {
    TicketVerifier::new(public_key_pem)?.verify(token)
}
