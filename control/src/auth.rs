//! Credentials: API key generation and argon2 hashing, per-server credentials, and the claims of the
//! short-lived access tokens that authenticate REST calls (signed by `signing::KeyRing`).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm as ArgonAlg, Argon2, Params, Version};
use rand::distr::{Alphanumeric, SampleString};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const ACCESS_TYP: &str = "vgpu-access";

/// Id with a type prefix, e.g. `t_0k3j9x2m1qab7f`: a strictly increasing time part, so keys (and therefore
/// listings) sort in creation order, then random characters so ids are not guessable from each other.
pub fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let prev = LAST.fetch_max(micros, Ordering::SeqCst);
    let t = if prev >= micros {
        LAST.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        micros
    };
    let mut time = String::new();
    let mut x = t;
    for _ in 0..11 {
        time.insert(0, char::from_digit((x % 36) as u32, 36).unwrap_or('0'));
        x /= 36;
    }
    let r: String = Alphanumeric.sample_string(&mut rand::rng(), 5).to_ascii_lowercase();
    format!("{prefix}_{time}{r}")
}

/// A fresh API key: `vgpu_<key id>_<secret>`. The id part lets the server find the one hash to check instead
/// of hashing against every stored key.
pub fn new_api_key() -> (String, String) {
    let id = new_id("k").trim_start_matches("k_").to_string();
    let secret = Alphanumeric.sample_string(&mut rand::rng(), 40);
    (id.clone(), format!("vgpu_{id}_{secret}"))
}

/// Splits `vgpu_<id>_<secret>` into the key id; `None` if it does not have that shape.
pub fn key_id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("vgpu_")?;
    let (id, secret) = rest.split_once('_')?;
    if id.is_empty() || secret.len() < 16 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(id)
}

// Keys carry ~238 bits of randomness, so the hash needs no memory-hard cost to resist guessing; argon2 with
// small parameters keeps sign-in fast while still never storing anything that can be replayed.
fn hasher() -> Argon2<'static> {
    let params = Params::new(4096, 1, 1, None).unwrap_or_default();
    Argon2::new(ArgonAlg::Argon2id, Version::V0x13, params)
}

pub fn hash_secret(secret: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    hasher()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

pub fn verify_secret(secret: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => hasher().verify_password(secret.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random secret nobody holds: checked against when a key id is unknown, so unknown and known ids
/// cost the same argon2 verification and cannot be told apart by timing.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let secret = Alphanumeric.sample_string(&mut rand::rng(), 40);
        hash_secret(&secret).unwrap_or_default()
    })
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal-length comparison whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A GPU server's own credential: `vgpus_<server id>_<secret>`. Its 238 random bits make a slow hash pointless,
/// so the store keeps its SHA-256 and every heartbeat checks it in microseconds.
pub fn new_server_credential(server_id: &str) -> (String, String) {
    let secret = Alphanumeric.sample_string(&mut rand::rng(), 40);
    let token = format!("vgpus_{server_id}_{secret}");
    let hash = sha256_hex(token.as_bytes());
    (token, hash)
}

/// The server id in a server credential; `None` if it does not have that shape.
pub fn server_id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("vgpus_")?;
    let (id, secret) = rest.rsplit_once('_')?;
    if id.is_empty()
        || id.len() > 64
        || secret.len() < 16
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return None;
    }
    Some(id)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims of an access token (from `POST /v1/auth/token`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub typ: String,
    /// Tenant id, or `admin`.
    pub sub: String,
    pub role: String,
    /// Key the token was issued for; revoking the key ends the token at once.
    pub kid: Option<String>,
    pub iat: u64,
    pub exp: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_creation_order() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("t")).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(ids.iter().collect::<std::collections::BTreeSet<_>>().len(), 1000);
    }

    #[test]
    fn key_shape_and_hash() {
        let (id, key) = new_api_key();
        assert_eq!(key_id_of(&key), Some(id.as_str()));
        let h = hash_secret(&key).expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains(&key));
        assert!(verify_secret(&key, &h));
        assert!(!verify_secret("vgpu_x_wrongwrongwrongwrong", &h));
        assert!(!verify_secret(&key, "not a hash"));
        assert_eq!(key_id_of("vgpu_"), None);
        assert_eq!(key_id_of("bogus"), None);
        assert_eq!(key_id_of("vgpu_ab_short"), None);
    }

    #[test]
    fn server_credentials_name_their_server() {
        let (tok, hash) = new_server_credential("s_0abc12");
        assert_eq!(server_id_of(&tok), Some("s_0abc12"));
        assert_eq!(hash, sha256_hex(tok.as_bytes()));
        assert_eq!(server_id_of("vgpus_s_1_short"), None);
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
    }
}
