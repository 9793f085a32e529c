//! The control plane's Ed25519 signing keys: kept outside the store in a 0600 file (sled), or sealed with a
//! 0600 secret file inside the shared store (PostgreSQL replicas); rotation with an overlap window.

use crate::auth::{now, AccessClaims, ACCESS_TYP};
use crate::model::Role;
use crate::store::{Db, StoreError, Tx};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Store record holding the sealed key set (PostgreSQL) and, in layout 1, the old plain key (moved out).
pub const SEALED_KEY: &str = "meta/signing_keys";
pub const LEGACY_KEY: &str = "meta/signing_key";
/// At most this many keys (active plus retiring) are kept; the oldest retiring ones go first.
const MAX_KEYS: usize = 8;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    private_pem: String,
    created_at: u64,
    /// After this time the key no longer verifies anything; `None` while it is the active key.
    retire_at: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KeySet {
    active: String,
    keys: Vec<StoredKey>,
}

/// Where the key set lives.
pub enum KeySource {
    /// Only in this process (tests, `--store memory`).
    Memory,
    /// `signing-keys.json` (mode 0600) in the data folder, beside sled.
    File(PathBuf),
    /// In the shared store, encrypted (ChaCha20-Poly1305) with a 32-byte secret every replica has as a 0600
    /// file: reading the database alone does not let anyone mint tickets.
    Sealed { secret: [u8; 32] },
}

struct Loaded {
    set: KeySet,
    /// The stored bytes the set was read from (for a conditional rotation).
    raw: Option<Vec<u8>>,
    keys: Vec<Parsed>,
}

struct Parsed {
    kid: String,
    public_pem: String,
    enc: EncodingKey,
    dec: DecodingKey,
    retire_at: Option<u64>,
}

pub struct KeyRing {
    source: KeySource,
    loaded: RwLock<Loaded>,
}

fn new_key(created_at: u64) -> Result<StoredKey, String> {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
    let private_pem = sk.to_pkcs8_pem(LineEnding::LF).map_err(|e| e.to_string())?.to_string();
    Ok(StoredKey {
        kid: crate::auth::new_id("sk"),
        private_pem,
        created_at,
        retire_at: None,
    })
}

fn parse(k: &StoredKey) -> Result<Parsed, String> {
    let sk = ed25519_dalek::SigningKey::from_pkcs8_pem(&k.private_pem).map_err(|e| e.to_string())?;
    let public_pem = sk
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| e.to_string())?;
    Ok(Parsed {
        kid: k.kid.clone(),
        enc: EncodingKey::from_ed_pem(k.private_pem.as_bytes()).map_err(|e| e.to_string())?,
        dec: DecodingKey::from_ed_pem(public_pem.as_bytes()).map_err(|e| e.to_string())?,
        public_pem,
        retire_at: k.retire_at,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn seal(secret: &[u8; 32], plain: &[u8]) -> Result<Vec<u8>, String> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, secret).map_err(|_| "bad secret")?);
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(b"vgpu-signing-keys"),
        &mut buf,
    )
    .map_err(|_| "sealing failed")?;
    let mut out = nonce.to_vec();
    out.extend(buf);
    serde_json::to_vec(&json!({ "sealed": hex(&out) })).map_err(|e| e.to_string())
}

fn unseal(secret: &[u8; 32], stored: &[u8]) -> Result<Vec<u8>, String> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
    let v: Value = serde_json::from_slice(stored).map_err(|e| e.to_string())?;
    let bytes = v["sealed"]
        .as_str()
        .and_then(unhex)
        .ok_or("sealed key set is not hex")?;
    if bytes.len() < 12 + 16 {
        return Err("sealed key set is truncated".into());
    }
    let (nonce, rest) = bytes.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| "nonce")?;
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, secret).map_err(|_| "bad secret")?);
    let mut buf = rest.to_vec();
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(b"vgpu-signing-keys"),
            &mut buf,
        )
        .map_err(|_| {
            "the signing keys in the store were sealed with another secret: give this replica the same secret \
             file as the others (--secret-file)"
        })?;
    Ok(plain.to_vec())
}

/// Writes `bytes` to `path` with mode 0600 through a temporary file and a rename, so a crash leaves the old
/// or the new content, never a torn one.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.sync_all().map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// Reads a 32-byte secret (64 hex characters) from `path`, creating it (0600) if it does not exist.
pub fn load_or_create_secret(path: &Path) -> Result<[u8; 32], String> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let b = unhex(s.trim()).ok_or_else(|| format!("{}: not 64 hex characters", path.display()))?;
            b.try_into()
                .map_err(|_| format!("{}: not 64 hex characters", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut s = [0u8; 32];
            rand::rng().fill_bytes(&mut s);
            write_private_file(path, format!("{}\n", hex(&s)).as_bytes())?;
            Ok(s)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

impl KeyRing {
    /// Loads the key set from its source, creating one (or moving a layout-1 key out of the store) if none.
    pub fn open(source: KeySource, db: &Db) -> Result<KeyRing, String> {
        let ring = KeyRing {
            source,
            loaded: RwLock::new(Loaded {
                set: KeySet::default(),
                raw: None,
                keys: vec![],
            }),
        };
        if ring.read_source(db)?.is_none() {
            let legacy = db.get::<String>(LEGACY_KEY).map_err(|e| e.to_string())?;
            let first = match legacy {
                Some(pem) => StoredKey {
                    kid: "legacy".into(),
                    private_pem: pem,
                    created_at: now(),
                    retire_at: None,
                },
                None => new_key(now())?,
            };
            let set = KeySet {
                active: first.kid.clone(),
                keys: vec![first],
            };
            match ring.write_source(db, &set, None) {
                Ok(()) | Err(WriteError::Conflict) => {}
                Err(WriteError::Other(e)) => return Err(e),
            }
            if db.get_raw(LEGACY_KEY).map_err(|e| e.to_string())?.is_some() {
                let mut tx = Tx::default();
                tx.delete(LEGACY_KEY);
                db.commit(tx).map_err(|e| e.to_string())?;
            }
        }
        ring.reload(db)?;
        Ok(ring)
    }

    /// (set, stored bytes) from the source, `None` if there is none yet.
    fn read_source(&self, db: &Db) -> Result<Option<(KeySet, Vec<u8>)>, String> {
        let raw = match &self.source {
            KeySource::Memory => {
                let l = self.loaded.read().unwrap_or_else(|p| p.into_inner());
                return Ok(if l.keys.is_empty() {
                    None
                } else {
                    Some((l.set.clone(), vec![]))
                });
            }
            KeySource::File(path) => match std::fs::read(path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            },
            KeySource::Sealed { .. } => match db.get_raw(SEALED_KEY).map_err(|e| e.to_string())? {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        let plain = match &self.source {
            KeySource::Sealed { secret } => unseal(secret, &raw)?,
            _ => raw.clone(),
        };
        let set: KeySet = serde_json::from_slice(&plain).map_err(|e| format!("signing key set: {e}"))?;
        Ok(Some((set, raw)))
    }

    fn write_source(&self, db: &Db, set: &KeySet, expect: Option<&[u8]>) -> Result<(), WriteError> {
        let plain = serde_json::to_vec(set).map_err(|e| WriteError::Other(e.to_string()))?;
        match &self.source {
            KeySource::Memory => {
                let keys = set
                    .keys
                    .iter()
                    .map(parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(WriteError::Other)?;
                let mut l = self.loaded.write().unwrap_or_else(|p| p.into_inner());
                *l = Loaded {
                    set: set.clone(),
                    raw: None,
                    keys,
                };
                Ok(())
            }
            KeySource::File(path) => write_private_file(path, &plain).map_err(WriteError::Other),
            KeySource::Sealed { secret } => {
                let sealed = seal(secret, &plain).map_err(WriteError::Other)?;
                let mut tx = Tx::default();
                tx.expect(SEALED_KEY, expect);
                let v: Value = serde_json::from_slice(&sealed).map_err(|e| WriteError::Other(e.to_string()))?;
                tx.put(SEALED_KEY, &v).map_err(|e| WriteError::Other(e.to_string()))?;
                match db.commit(tx) {
                    Ok(()) => Ok(()),
                    Err(StoreError::Conflict) => Err(WriteError::Conflict),
                    Err(e) => Err(WriteError::Other(e.to_string())),
                }
            }
        }
    }

    /// Reads the set again (another replica may have rotated it).
    pub fn reload(&self, db: &Db) -> Result<(), String> {
        let Some((set, raw)) = self.read_source(db)? else {
            return Err("no signing key set".into());
        };
        let keys = set.keys.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
        if !keys.iter().any(|k| k.kid == set.active) {
            return Err("signing key set names an active key it does not hold".into());
        }
        let mut l = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        *l = Loaded {
            set,
            raw: Some(raw),
            keys,
        };
        Ok(())
    }

    /// Makes a new key the active one; the previous ones keep verifying for `overlap_s` seconds.
    pub fn rotate(&self, db: &Db, overlap_s: u64) -> Result<(String, Value), String> {
        for _ in 0..8 {
            self.reload(db)?;
            let (mut set, raw) = {
                let l = self.loaded.read().unwrap_or_else(|p| p.into_inner());
                (l.set.clone(), l.raw.clone())
            };
            let n = now();
            set.keys.retain(|k| k.retire_at.is_none_or(|t| t > n));
            for k in &mut set.keys {
                if k.retire_at.is_none() {
                    k.retire_at = Some(n + overlap_s);
                }
            }
            let fresh = new_key(n)?;
            set.active = fresh.kid.clone();
            set.keys.push(fresh);
            while set.keys.len() > MAX_KEYS {
                set.keys.remove(0);
            }
            match self.write_source(db, &set, raw.as_deref().filter(|r| !r.is_empty())) {
                Ok(()) => {
                    self.reload(db)?;
                    return Ok((set.active.clone(), self.public_set()));
                }
                Err(WriteError::Conflict) => continue,
                Err(WriteError::Other(e)) => return Err(e),
            }
        }
        Err("another replica kept rotating the signing key; try again".into())
    }

    /// The public keys still valid, the active one first, for `GET /v1/public-key`.
    pub fn public_set(&self) -> Value {
        let l = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        let n = now();
        let mut keys: Vec<Value> = Vec::new();
        let mut active = Value::Null;
        for k in &l.keys {
            if k.retire_at.is_some_and(|t| t <= n) {
                continue;
            }
            let v = json!({"kid": k.kid, "public_key_pem": k.public_pem, "retire_at": k.retire_at});
            if k.kid == l.set.active {
                active = v.clone();
                keys.insert(0, v);
            } else {
                keys.push(v);
            }
        }
        json!({"algorithm": "EdDSA", "kid": active["kid"], "public_key_pem": active["public_key_pem"], "keys": keys})
    }

    /// Ids of the keys still valid (what heartbeats tell servers, so they notice a rotation).
    pub fn kids(&self) -> Vec<String> {
        let l = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        let n = now();
        l.keys
            .iter()
            .filter(|k| k.retire_at.is_none_or(|t| t > n))
            .map(|k| k.kid.clone())
            .collect()
    }

    pub fn active_public_pem(&self) -> String {
        let l = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        l.keys
            .iter()
            .find(|k| k.kid == l.set.active)
            .map(|k| k.public_pem.clone())
            .unwrap_or_default()
    }

    /// Signs with the active key, naming it in the header's `kid`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, String> {
        let l = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        let k = l
            .keys
            .iter()
            .find(|k| k.kid == l.set.active)
            .ok_or("no active signing key")?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(k.kid.clone());
        jsonwebtoken::encode(&header, claims, &k.enc).map_err(|e| e.to_string())
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

    /// Verifies signature and expiry of an access token; a key id this replica does not know makes it read
    /// the set again once (another replica rotated).
    pub fn verify_access(&self, token: &str, db: &Db) -> Result<AccessClaims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("invalid token: {e}"))?;
        let kid = header.kid.ok_or("token names no signing key")?;
        let known = |ring: &KeyRing| {
            let l = ring.loaded.read().unwrap_or_else(|p| p.into_inner());
            l.keys.iter().any(|k| k.kid == kid)
        };
        if !known(self) {
            let _ = self.reload(db);
        }
        let l = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        let n = now();
        let k = l
            .keys
            .iter()
            .find(|k| k.kid == kid && k.retire_at.is_none_or(|t| t > n))
            .ok_or("token signed with an unknown or retired key")?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = 5;
        v.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &k.dec, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".to_string(),
            _ => format!("invalid token: {e}"),
        })?;
        Ok(data.claims)
    }

    /// Key ids and their times, for `GET /v1/signing-keys`.
    pub fn describe(&self) -> Value {
        let l = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<Value> = l
            .set
            .keys
            .iter()
            .map(|k| json!({"kid": k.kid, "created_at": k.created_at, "retire_at": k.retire_at, "active": k.kid == l.set.active}))
            .collect();
        json!({ "keys": keys })
    }
}

enum WriteError {
    Conflict,
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn sealed_set_opens_only_with_its_secret() {
        let db = Db::new(Box::new(MemStore::default()));
        let ring = KeyRing::open(KeySource::Sealed { secret: [7; 32] }, &db).expect("open");
        let raw = db.get_raw(SEALED_KEY).expect("get").expect("stored");
        assert!(!String::from_utf8_lossy(&raw).contains("PRIVATE KEY"));
        let tok = ring.sign(&json!({"sub": "x", "exp": now() + 60})).expect("sign");
        assert!(KeyRing::open(KeySource::Sealed { secret: [8; 32] }, &db).is_err());
        let again = KeyRing::open(KeySource::Sealed { secret: [7; 32] }, &db).expect("reopen");
        assert_eq!(again.active_public_pem(), ring.active_public_pem());
        assert!(tok.split('.').count() == 3);
    }

    #[test]
    fn rotation_keeps_the_old_key_for_the_overlap() {
        let db = Db::new(Box::new(MemStore::default()));
        let ring = KeyRing::open(KeySource::Memory, &db).expect("open");
        let (old, _) = ring.access_token(Role::Admin, "admin", "k1", 60).expect("sign");
        let (new_kid, set) = ring.rotate(&db, 300).expect("rotate");
        assert_eq!(set["keys"].as_array().map(Vec::len), Some(2));
        assert_eq!(set["kid"], json!(new_kid));
        assert!(
            ring.verify_access(&old, &db).is_ok(),
            "old key verifies during the overlap"
        );

        let other = KeyRing::open(KeySource::Memory, &db).expect("open");
        let (old, _) = other.access_token(Role::Admin, "admin", "k1", 60).expect("sign");
        let (_, set) = other.rotate(&db, 0).expect("rotate with no overlap");
        // A key whose overlap ended is no longer published nor accepted.
        assert_eq!(set["keys"].as_array().map(Vec::len), Some(1));
        assert!(other.verify_access(&old, &db).is_err());
    }
}
