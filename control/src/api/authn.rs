//! Who is calling: API keys (argon2, run outside any lock, with a small verified-key cache), access tokens,
//! per-server credentials; failed attempts back off per key id and per source address, in the shared store.

use super::{de, ApiError, ApiResult, App};
use crate::auth::{self, constant_time_eq, key_id_of, now, server_id_of, sha256_hex};
use crate::layout;
use crate::model::{KeyRecord, Role};
use crate::store::Tx;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Admin { kid: String },
    Tenant { tenant_id: String, kid: String },
    Server { server_id: String },
}

/// A key whose argon2 check passed recently: the SHA-256 of the whole key and the stored hash it matched.
/// Only spares the slow hash; the key's record is still read on every request, so a revocation takes effect
/// at once.
struct Verified {
    digest: String,
    hash: String,
    at: Instant,
}

const SHARDS: usize = 16;
const CACHE_PER_SHARD: usize = 4096;
const CACHE_TTL: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct Authn {
    shards: [Mutex<HashMap<String, Verified>>; SHARDS],
}

impl Authn {
    fn shard(&self, key_id: &str) -> &Mutex<HashMap<String, Verified>> {
        let h = key_id
            .bytes()
            .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize));
        &self.shards[h % SHARDS]
    }

    fn hit(&self, key_id: &str, digest: &str, hash: &str) -> bool {
        let m = self.shard(key_id).lock().unwrap_or_else(|p| p.into_inner());
        m.get(key_id).is_some_and(|v| {
            v.at.elapsed() < CACHE_TTL && constant_time_eq(v.digest.as_bytes(), digest.as_bytes()) && v.hash == hash
        })
    }

    fn insert(&self, key_id: &str, digest: String, hash: String) {
        let mut m = self.shard(key_id).lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= CACHE_PER_SHARD {
            m.retain(|_, v| v.at.elapsed() < CACHE_TTL);
            if m.len() >= CACHE_PER_SHARD {
                m.clear();
            }
        }
        m.insert(
            key_id.to_string(),
            Verified {
                digest,
                hash,
                at: Instant::now(),
            },
        );
    }
}

/// Failed attempts against one key id or from one address, within the current window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Failures {
    count: u32,
    window_start: u64,
    blocked_until: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenReq {
    api_key: String,
}

impl App {
    /// Who is calling: an API key (`Bearer vgpu_...`), an access token, or a server credential (`vgpus_...`).
    pub fn authenticate(&self, authorization: Option<&str>, remote: Option<IpAddr>) -> Result<Principal, ApiError> {
        let h = authorization.ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
        let cred = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <key or token>`"))?
            .trim();
        if cred.len() > 4096 {
            return Err(ApiError::unauthorized("credential too long"));
        }
        if cred.starts_with("vgpus_") {
            let server_id = self.check_server_credential(cred, remote)?;
            return Ok(Principal::Server { server_id });
        }
        if cred.starts_with("vgpu_") {
            let rec = self.check_api_key(cred, remote)?;
            return match (rec.role, rec.tenant_id) {
                (Role::Admin, _) => Ok(Principal::Admin { kid: rec.id }),
                (Role::Tenant, Some(t)) => Ok(Principal::Tenant {
                    tenant_id: t,
                    kid: rec.id,
                }),
                (Role::Tenant, None) => Err(ApiError::unauthorized("key has no tenant")),
            };
        }
        // An access token: its signature was the key check (done once, when it was issued); only revocation
        // of its key is looked up.
        let c = self
            .keys
            .verify_access(cred, &self.db)
            .map_err(ApiError::unauthorized)?;
        if c.typ != auth::ACCESS_TYP {
            return Err(ApiError::unauthorized("not an access token"));
        }
        let kid = c.kid.ok_or_else(|| ApiError::unauthorized("token names no key"))?;
        let rec = self
            .db
            .get::<KeyRecord>(&layout::key(&kid))?
            .ok_or_else(|| ApiError::unauthorized("key no longer exists"))?;
        if rec.revoked_at.is_some() {
            return Err(ApiError::unauthorized("key revoked"));
        }
        match (c.role.as_str(), rec.role, rec.tenant_id) {
            ("admin", Role::Admin, _) => Ok(Principal::Admin { kid }),
            ("tenant", Role::Tenant, Some(t)) if t == c.sub => Ok(Principal::Tenant { tenant_id: t, kid }),
            _ => Err(ApiError::unauthorized("token does not match its key")),
        }
    }

    /// Checks an API key. Exactly one argon2 verification runs for a well-formed key whose check is not
    /// cached, known id or not, so timing does not tell whether an id exists; it runs outside any lock.
    pub(super) fn check_api_key(&self, key: &str, remote: Option<IpAddr>) -> Result<KeyRecord, ApiError> {
        let bad = || ApiError::unauthorized("invalid API key");
        let id = key_id_of(key).ok_or_else(bad)?;
        let digest = sha256_hex(key.as_bytes());
        let rec = self.db.get::<KeyRecord>(&layout::key(id))?;
        if let Some(r) = &rec {
            if self.authn.hit(id, &digest, &r.hash) {
                if r.revoked_at.is_some() {
                    return Err(ApiError::unauthorized("key revoked"));
                }
                return Ok(r.clone());
            }
        }
        self.check_backoff(Some(id), remote)?;
        let ok = match &rec {
            Some(r) => auth::verify_secret(key, &r.hash),
            None => {
                let _ = auth::verify_secret(key, auth::decoy_hash());
                false
            }
        };
        let rec = match (ok, rec) {
            (true, Some(r)) => r,
            _ => {
                self.record_failure(Some(id), remote);
                return Err(bad());
            }
        };
        self.authn.insert(id, digest, rec.hash.clone());
        if rec.revoked_at.is_some() {
            return Err(ApiError::unauthorized("key revoked"));
        }
        Ok(rec)
    }

    fn check_server_credential(&self, token: &str, remote: Option<IpAddr>) -> Result<String, ApiError> {
        let bad = || ApiError::unauthorized("invalid server credential");
        let id = server_id_of(token).ok_or_else(bad)?;
        let stored = self.db.get::<String>(&layout::server_cred(id))?;
        let digest = sha256_hex(token.as_bytes());
        match stored {
            Some(h) if constant_time_eq(h.as_bytes(), digest.as_bytes()) => Ok(id.to_string()),
            _ => {
                self.check_backoff(None, remote)?;
                self.record_failure(None, remote);
                Err(bad())
            }
        }
    }

    /// 429 while the key id or the address is blocked after too many failures.
    pub(super) fn check_backoff(&self, key_id: Option<&str>, remote: Option<IpAddr>) -> Result<(), ApiError> {
        let n = now();
        let mut until = 0;
        if let Some(id) = key_id {
            if let Some(f) = self.db.get::<Failures>(&layout::failures_key(id))? {
                until = until.max(f.blocked_until);
            }
        }
        if let Some(a) = remote {
            if let Some(f) = self.db.get::<Failures>(&layout::failures_addr(&a.to_string()))? {
                until = until.max(f.blocked_until);
            }
        }
        if until > n {
            let mut e = ApiError::new(
                429,
                "too_many_attempts",
                "too many failed attempts; wait before trying again",
            );
            e.headers.push(("Retry-After", (until - n).to_string()));
            return Err(e);
        }
        Ok(())
    }

    /// Counts a failure against the key id and the address; from the limit on, each further one doubles the wait
    /// (1 s, 2 s, 4 s, ... up to `auth_block_max_s`).
    pub(super) fn record_failure(&self, key_id: Option<&str>, remote: Option<IpAddr>) {
        let mut targets = Vec::new();
        if let Some(id) = key_id {
            targets.push((layout::failures_key(id), self.cfg.auth_fail_per_key));
        }
        if let Some(a) = remote {
            targets.push((layout::failures_addr(&a.to_string()), self.cfg.auth_fail_per_addr));
        }
        for (k, limit) in targets {
            let _ = self.retry(|| {
                let n = now();
                let cur = self.db.get_versioned::<Failures>(&k)?;
                let mut f = cur.as_ref().map(|c| c.value.clone()).unwrap_or_default();
                if n.saturating_sub(f.window_start) > self.cfg.auth_window_s && f.blocked_until <= n {
                    f = Failures {
                        count: 0,
                        window_start: n,
                        blocked_until: 0,
                    };
                }
                f.count = f.count.saturating_add(1);
                if f.count >= limit {
                    let wait = 1u64 << (f.count - limit).min(20);
                    f.blocked_until = n + wait.min(self.cfg.auth_block_max_s);
                }
                let mut tx = Tx::lazy();
                tx.expect(&k, cur.as_ref().map(|c| c.raw.as_slice()));
                tx.put(&k, &f)?;
                Ok(self.db.commit(tx)?)
            });
        }
    }

    pub(super) fn token(&self, req: &super::Request) -> ApiResult {
        let r: TokenReq = de(&req.body)?;
        let rec = self.check_api_key(r.api_key.trim(), req.remote)?;
        let sub = rec.tenant_id.clone().unwrap_or_else(|| "admin".into());
        let (token, exp) = self
            .keys
            .access_token(rec.role, &sub, &rec.id, self.cfg.access_ttl_s)
            .map_err(ApiError::internal)?;
        Ok((
            200,
            json!({"token": token, "token_type": "Bearer", "expires_at": exp, "role": rec.role, "tenant_id": rec.tenant_id}),
        ))
    }

    pub(super) fn me(&self, who: &Principal) -> ApiResult {
        Ok((
            200,
            match who {
                Principal::Admin { kid } => json!({"role": "admin", "key_id": kid, "tenant_id": null}),
                Principal::Tenant { tenant_id, kid } => {
                    json!({"role": "tenant", "key_id": kid, "tenant_id": tenant_id})
                }
                Principal::Server { server_id } => {
                    json!({"role": "server", "key_id": null, "tenant_id": null, "server_id": server_id})
                }
            },
        ))
    }
}
