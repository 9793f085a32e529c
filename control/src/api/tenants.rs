//! Tenants, their API keys, admin keys, the audit log and the signing-key rotation: the admin's handlers.

use super::{check_name, de, page_req, ApiError, ApiResult, App, Principal, Request};
use crate::auth::{self, new_api_key, new_id, now};
use crate::layout;
use crate::model::*;
use crate::store::Tx;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Keys one tenant may hold (live or revoked); a tenant's key list stays one bounded read.
const KEYS_PER_TENANT: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantCreate {
    name: String,
    #[serde(default)]
    plan_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    #[serde(default)]
    name: Option<String>,
    /// An empty string clears the plan.
    #[serde(default)]
    plan_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeyCreate {
    #[serde(default)]
    label: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateSigning {
    /// Seconds the previous keys keep verifying; default: the longest lifetime of what they signed.
    #[serde(default)]
    overlap_s: Option<u64>,
}

impl App {
    pub(super) fn list_tenants(&self, who: &Principal, q: &HashMap<String, String>) -> ApiResult {
        let pr = page_req(q)?;
        match who {
            Principal::Admin { .. } => {
                let page = self.db.page::<Tenant>("tenant/", pr.cursor.as_deref(), pr.limit)?;
                let list: Vec<Tenant> = page.items.into_iter().map(|(_, t)| t).collect();
                Ok((200, json!({ "tenants": list, "next_cursor": page.next })))
            }
            Principal::Tenant { tenant_id, .. } => Ok((
                200,
                json!({ "tenants": [self.tenant(tenant_id)?], "next_cursor": null }),
            )),
            Principal::Server { .. } => Err(ApiError::forbidden()),
        }
    }

    fn check_plan(&self, plan_id: &Option<String>) -> Result<Option<String>, ApiError> {
        match plan_id.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(p) => {
                if self.db.get::<Plan>(&layout::plan(p))?.is_none() {
                    return Err(ApiError::bad(format!("no plan {p}")));
                }
                Ok(Some(p.to_string()))
            }
        }
    }

    pub(super) fn create_tenant(&self, who: &Principal, req: &Request) -> ApiResult {
        Self::admin(who)?;
        let r: TenantCreate = de(&req.body)?;
        let name = check_name(&r.name, "name")?;
        let plan_id = self.check_plan(&r.plan_id)?;
        let t = Tenant {
            id: new_id("t"),
            name: name.clone(),
            plan_id,
            created_at: now(),
        };
        self.retry(|| {
            if self.db.get_raw(&layout::tenant_name(&name))?.is_some() {
                return Err(ApiError::conflict(
                    "name_taken",
                    format!("a tenant named {name} exists"),
                ));
            }
            let mut tx = Tx::default();
            tx.expect_absent(&layout::tenant_name(&name));
            tx.put(&layout::tenant_name(&name), &t.id)?;
            tx.put(&layout::tenant(&t.id), &t)?;
            if let Some(p) = &t.plan_id {
                tx.put(&layout::plan_tenant(p, &t.id), &1)?;
            }
            self.audit(
                &mut tx,
                who,
                req.remote,
                "tenant.create",
                &t.id,
                json!({"name": t.name}),
            )?;
            Ok(self.db.commit(tx)?)
        })?;
        Ok((201, super::ser(&t)))
    }

    pub(super) fn get_tenant(&self, who: &Principal, id: &str) -> ApiResult {
        Self::tenant_visible(who, id)?;
        Ok((200, super::ser(&self.tenant(id)?)))
    }

    pub(super) fn patch_tenant(&self, who: &Principal, id: &str, req: &Request) -> ApiResult {
        Self::admin(who)?;
        let r: TenantPatch = de(&req.body)?;
        let new_name = r.name.as_deref().map(|n| check_name(n, "name")).transpose()?;
        let new_plan = if r.plan_id.is_some() {
            Some(self.check_plan(&r.plan_id)?)
        } else {
            None
        };
        self.retry(|| {
            let cur = self
                .db
                .get_versioned::<Tenant>(&layout::tenant(id))?
                .ok_or_else(|| ApiError::not_found("tenant"))?;
            let mut t = cur.value.clone();
            let mut tx = Tx::default();
            tx.expect(&layout::tenant(id), Some(&cur.raw));
            if let Some(n) = &new_name {
                if *n != t.name {
                    // The same rule as POST: a name another tenant has is refused.
                    if self.db.get_raw(&layout::tenant_name(n))?.is_some() {
                        return Err(ApiError::conflict("name_taken", format!("a tenant named {n} exists")));
                    }
                    tx.expect_absent(&layout::tenant_name(n));
                    tx.delete(&layout::tenant_name(&t.name));
                    tx.put(&layout::tenant_name(n), &t.id)?;
                    t.name = n.clone();
                }
            }
            if let Some(p) = &new_plan {
                if let Some(old) = &t.plan_id {
                    tx.delete(&layout::plan_tenant(old, &t.id));
                }
                if let Some(new) = p {
                    tx.put(&layout::plan_tenant(new, &t.id), &1)?;
                }
                t.plan_id = p.clone();
            }
            tx.put(&layout::tenant(id), &t)?;
            self.audit(
                &mut tx,
                who,
                req.remote,
                "tenant.update",
                id,
                json!({"name": t.name, "plan_id": t.plan_id}),
            )?;
            self.db.commit(tx)?;
            Ok((200, super::ser(&t)))
        })
    }

    pub(super) fn delete_tenant(&self, who: &Principal, id: &str, req: &Request) -> ApiResult {
        Self::admin(who)?;
        let t = self.tenant(id)?;
        let n = now();
        // Keys first (in bounded batches), so nothing the tenant holds works while the rest goes.
        for kid in self.db.index_keys(&layout::tenant_keys(id), KEYS_PER_TENANT)? {
            self.retry(|| {
                let Some(cur) = self.db.get_versioned::<KeyRecord>(&layout::key(&kid))? else {
                    return Ok(());
                };
                if cur.value.revoked_at.is_some() {
                    return Ok(());
                }
                let mut k = cur.value.clone();
                k.revoked_at = Some(n);
                let mut tx = Tx::default();
                tx.expect(&layout::key(&kid), Some(&cur.raw));
                tx.put(&layout::key(&kid), &k)?;
                Ok(self.db.commit(tx)?)
            })?;
        }
        for aid in self.db.index_keys(&layout::tenant_assigns(id), 10_000)? {
            self.remove_assignment(&aid, "tenant deleted")?;
        }
        self.end_sessions_on(id, None, "tenant deleted")?;
        let mut tx = Tx::default();
        tx.delete(&layout::tenant(id));
        tx.delete(&layout::tenant_name(&t.name));
        if let Some(p) = &t.plan_id {
            tx.delete(&layout::plan_tenant(p, id));
        }
        self.audit(&mut tx, who, req.remote, "tenant.delete", id, json!({"name": t.name}))?;
        self.db.commit(tx)?;
        Ok((200, super::ser(&t)))
    }

    pub(super) fn list_keys(&self, who: &Principal, tenant_id: &str, q: &HashMap<String, String>) -> ApiResult {
        Self::tenant_visible(who, tenant_id)?;
        self.tenant(tenant_id)?;
        let pr = page_req(q)?;
        let page = self
            .db
            .page_raw(&layout::tenant_keys(tenant_id), pr.cursor.as_deref(), pr.limit)?;
        let mut keys = Vec::new();
        for (kid, _) in &page.items {
            if let Some(k) = self.db.get::<KeyRecord>(&layout::key(kid))? {
                keys.push(k.info());
            }
        }
        Ok((200, json!({ "keys": keys, "next_cursor": page.next })))
    }

    fn new_key(&self, tenant_id: Option<String>, role: Role, label: String) -> Result<(KeyRecord, String), ApiError> {
        let (id, secret) = new_api_key();
        let hash = auth::hash_secret(&secret).map_err(ApiError::internal)?;
        Ok((
            KeyRecord {
                id,
                tenant_id,
                role,
                label,
                hash,
                created_at: now(),
                revoked_at: None,
            },
            secret,
        ))
    }

    fn label(l: Option<String>) -> Result<String, ApiError> {
        match l {
            Some(l) if !l.trim().is_empty() => check_name(&l, "label"),
            _ => Ok("default".into()),
        }
    }

    pub(super) fn create_key(&self, who: &Principal, tenant_id: &str, req: &Request) -> ApiResult {
        Self::admin(who)?;
        let r: KeyCreate = de(&req.body)?;
        self.tenant(tenant_id)?;
        if self
            .db
            .index_keys(&layout::tenant_keys(tenant_id), KEYS_PER_TENANT)?
            .len()
            >= KEYS_PER_TENANT
        {
            return Err(ApiError::conflict(
                "too_many_keys",
                format!("a tenant holds at most {KEYS_PER_TENANT} keys"),
            ));
        }
        let label = Self::label(r.label)?;
        let (rec, secret) = self.new_key(Some(tenant_id.into()), Role::Tenant, label)?;
        let mut tx = Tx::default();
        tx.put(&layout::key(&rec.id), &rec)?;
        tx.put(&layout::tenant_key(tenant_id, &rec.id), &1)?;
        self.audit(
            &mut tx,
            who,
            req.remote,
            "key.create",
            &rec.id,
            json!({"tenant_id": tenant_id}),
        )?;
        self.db.commit(tx)?;
        Ok((201, json!({"key": rec.info(), "secret": secret})))
    }

    /// Another admin key (so the first one can be rotated or revoked without locking everyone out).
    pub(super) fn create_admin_key(&self, who: &Principal, req: &Request) -> ApiResult {
        Self::admin(who)?;
        let r: KeyCreate = de(&req.body)?;
        let label = Self::label(r.label)?;
        let (rec, secret) = self.new_key(None, Role::Admin, label)?;
        self.add_admin_key(&rec)?;
        let mut tx = Tx::default();
        self.audit(&mut tx, who, req.remote, "admin_key.create", &rec.id, Value::Null)?;
        self.db.commit(tx)?;
        Ok((201, json!({"key": rec.info(), "secret": secret})))
    }

    /// The key, if `who` may manage it (admin, or the key's own tenant); others get "not found".
    fn owned_key(&self, who: &Principal, key_id: &str) -> Result<crate::store::Versioned<KeyRecord>, ApiError> {
        let rec = self
            .db
            .get_versioned::<KeyRecord>(&layout::key(key_id))?
            .ok_or_else(|| ApiError::not_found("key"))?;
        let ok = match who {
            Principal::Admin { .. } => true,
            Principal::Tenant { tenant_id, .. } => rec.value.tenant_id.as_deref() == Some(tenant_id),
            Principal::Server { .. } => false,
        };
        if ok {
            Ok(rec)
        } else {
            Err(ApiError::not_found("key"))
        }
    }

    /// Revokes `old` in `tx`; for an admin key also takes it off the live admin list, refusing to take the last.
    fn revoke_in(&self, tx: &mut Tx, old: &crate::store::Versioned<KeyRecord>) -> Result<(), ApiError> {
        let mut k = old.value.clone();
        k.revoked_at = Some(now());
        tx.expect(&layout::key(&k.id), Some(&old.raw));
        tx.put(&layout::key(&k.id), &k)?;
        if k.role == Role::Admin {
            let cur = self.db.get_versioned::<Vec<String>>(layout::ADMIN_KEYS)?;
            let mut ids = cur.as_ref().map(|c| c.value.clone()).unwrap_or_default();
            ids.retain(|i| *i != k.id);
            if ids.is_empty() {
                return Err(ApiError::conflict(
                    "last_admin_key",
                    "this is the last admin key: create another (POST /v1/admin-keys), sign in with it, then \
                     rotate or revoke this one",
                ));
            }
            tx.expect(layout::ADMIN_KEYS, cur.as_ref().map(|c| c.raw.as_slice()));
            tx.put(layout::ADMIN_KEYS, &ids)?;
        }
        Ok(())
    }

    pub(super) fn rotate_key(&self, who: &Principal, key_id: &str, req: &Request) -> ApiResult {
        self.retry(|| {
            let old = self.owned_key(who, key_id)?;
            if old.value.revoked_at.is_some() {
                return Err(ApiError::conflict("key_revoked", "key is already revoked"));
            }
            let o = &old.value;
            let (rec, secret) = self.new_key(o.tenant_id.clone(), o.role, o.label.clone())?;
            let mut tx = Tx::default();
            if rec.role == Role::Admin {
                // The new key joins the admin list before the old one leaves it.
                let cur = self.db.get_versioned::<Vec<String>>(layout::ADMIN_KEYS)?;
                let ids = cur.as_ref().map(|c| c.value.clone()).unwrap_or_default();
                if ids.iter().filter(|i| **i != o.id).count() == 0 {
                    return Err(ApiError::conflict(
                        "last_admin_key",
                        "this is the last admin key: create another (POST /v1/admin-keys), sign in with it, \
                         then rotate or revoke this one",
                    ));
                }
                let mut ids: Vec<String> = ids.into_iter().filter(|i| *i != o.id).collect();
                ids.push(rec.id.clone());
                let mut k = o.clone();
                k.revoked_at = Some(now());
                tx.expect(&layout::key(&k.id), Some(&old.raw));
                tx.put(&layout::key(&k.id), &k)?;
                tx.expect(layout::ADMIN_KEYS, cur.as_ref().map(|c| c.raw.as_slice()));
                tx.put(layout::ADMIN_KEYS, &ids)?;
            } else {
                self.revoke_in(&mut tx, &old)?;
                if let Some(t) = &rec.tenant_id {
                    tx.put(&layout::tenant_key(t, &rec.id), &1)?;
                }
            }
            tx.put(&layout::key(&rec.id), &rec)?;
            self.audit(
                &mut tx,
                who,
                req.remote,
                "key.rotate",
                &o.id,
                json!({"new_key_id": rec.id}),
            )?;
            self.db.commit(tx)?;
            Ok((
                201,
                json!({"key": rec.info(), "secret": secret, "revoked_key_id": o.id}),
            ))
        })
    }

    pub(super) fn revoke_key(&self, who: &Principal, key_id: &str, req: &Request) -> ApiResult {
        self.retry(|| {
            let old = self.owned_key(who, key_id)?;
            if old.value.revoked_at.is_some() {
                return Ok((200, super::ser(&old.value.info())));
            }
            let mut tx = Tx::default();
            self.revoke_in(&mut tx, &old)?;
            self.audit(&mut tx, who, req.remote, "key.revoke", key_id, Value::Null)?;
            self.db.commit(tx)?;
            let mut k = old.value.clone();
            k.revoked_at = Some(now());
            Ok((200, super::ser(&k.info())))
        })
    }

    pub(super) fn list_audit(&self, who: &Principal, q: &HashMap<String, String>) -> ApiResult {
        Self::admin(who)?;
        let pr = page_req(q)?;
        let page = self.db.page::<AuditEntry>("audit/", pr.cursor.as_deref(), pr.limit)?;
        let list: Vec<AuditEntry> = page.items.into_iter().map(|(_, e)| e).collect();
        Ok((200, json!({ "events": list, "next_cursor": page.next })))
    }

    pub(super) fn rotate_signing_key(&self, who: &Principal, req: &Request) -> ApiResult {
        Self::admin(who)?;
        let r: RotateSigning = de(&req.body)?;
        let longest = self.cfg.ticket_ttl_s.max(self.cfg.access_ttl_s) + 60;
        let overlap = r.overlap_s.unwrap_or(longest);
        if overlap > 30 * 86400 {
            return Err(ApiError::bad("overlap_s is at most 30 days"));
        }
        let (kid, set) = self.keys.rotate(&self.db, overlap).map_err(ApiError::internal)?;
        let mut tx = Tx::default();
        self.audit(
            &mut tx,
            who,
            req.remote,
            "signing_key.rotate",
            &kid,
            json!({"overlap_s": overlap}),
        )?;
        self.db.commit(tx)?;
        Ok((201, set))
    }
}
