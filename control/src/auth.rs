//! Credentials: API key generation and argon2 hashing, the control plane's Ed25519 signing key, and the
//! short-lived access and server JWTs that authenticate REST calls.

use crate::model::Role;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm as ArgonAlg, Argon2, Params, Version};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::distr::{Alphanumeric, SampleString};
use rand::RngCore;
use serde::{Deserialize, Serialize};

pub const ACCESS_TYP: &str = "vgpu-access";
pub const SERVER_TYP: &str = "vgpu-server";

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

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims of an access token (from `POST /v1/auth/token`) or a server token (from registration).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub typ: String,
    /// Tenant id, `admin`, or the server id for server tokens.
    pub sub: String,
    pub role: String,
    /// Key the token was issued for; revoking the key ends the token at once.
    pub kid: Option<String>,
    pub iat: u64,
    pub exp: u64,
}

/// The control plane's Ed25519 key pair: signs access tokens, server tokens and session tickets.
pub struct Signer {
    private_pem: String,
    public_pem: String,
    enc: EncodingKey,
    dec: DecodingKey,
}

impl Signer {
    pub fn generate() -> Result<Signer, String> {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
        let private_pem = sk.to_pkcs8_pem(LineEnding::LF).map_err(|e| e.to_string())?.to_string();
        Signer::from_private_pem(&private_pem)
    }

    pub fn from_private_pem(private_pem: &str) -> Result<Signer, String> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let sk = ed25519_dalek::SigningKey::from_pkcs8_pem(private_pem).map_err(|e| e.to_string())?;
        let public_pem = sk
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        let enc = EncodingKey::from_ed_pem(private_pem.as_bytes()).map_err(|e| e.to_string())?;
        let dec = DecodingKey::from_ed_pem(public_pem.as_bytes()).map_err(|e| e.to_string())?;
        Ok(Signer {
            private_pem: private_pem.to_string(),
            public_pem,
            enc,
            dec,
        })
    }

    pub fn private_pem(&self) -> &str {
        &self.private_pem
    }
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.enc).map_err(|e| e.to_string())
    }

    pub fn access_token(&self, role: Role, sub: &str, kid: &str, ttl: u64) -> Result<(String, u64), String> {
        let iat = now();
        let role = match role {
            Role::Admin => "admin",
            Role::Tenant => "tenant",
        };
        let claims = AccessClaims {
            typ: ACCESS_TYP.into(),
            sub: sub.into(),
            role: role.into(),
            kid: Some(kid.into()),
            iat,
            exp: iat + ttl,
        };
        Ok((self.sign(&claims)?, claims.exp))
    }

    pub fn server_token(&self, server_id: &str, ttl: u64) -> Result<String, String> {
        let iat = now();
        self.sign(&AccessClaims {
            typ: SERVER_TYP.into(),
            sub: server_id.into(),
            role: "server".into(),
            kid: None,
            iat,
            exp: iat + ttl,
        })
    }

    /// Verifies signature and expiry of an access or server token.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, String> {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = 5;
        v.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.dec, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".to_string(),
            _ => format!("invalid token: {e}"),
        })?;
        Ok(data.claims)
    }
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
    fn signer_roundtrip_and_reload() {
        let s = Signer::generate().expect("signer");
        let (tok, _) = s.access_token(Role::Tenant, "t_1", "k1", 60).expect("sign");
        let c = s.verify_access(&tok).expect("verify");
        assert_eq!(c.sub, "t_1");
        let s2 = Signer::from_private_pem(s.private_pem()).expect("reload");
        assert_eq!(s2.public_pem(), s.public_pem());
        assert!(s2.verify_access(&tok).is_ok());
        let other = Signer::generate().expect("signer");
        assert!(other.verify_access(&tok).is_err());
    }
}
