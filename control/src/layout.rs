//! The layout of records and index entries in the store (one place names every key), its version, and the
//! migration from layout 1 (records only, found by scanning) to layout 2 (records plus the indexes below).

use crate::model::*;
use crate::store::{Db, StoreError, Tx};

/// Version of the layout of keys and values. Bump it with a migration in `open` when a record changes shape.
pub const SCHEMA_VERSION: u32 = 2;
pub const SCHEMA_KEY: &str = "meta/schema_version";
/// Hash of the node token GPU servers enroll with.
pub const NODE_TOKEN: &str = "meta/node_token_hash";
/// Ids of the live admin keys (one record, so "never revoke the last one" is one conditional write).
pub const ADMIN_KEYS: &str = "meta/admin_keys";

pub fn tenant(id: &str) -> String {
    format!("tenant/{id}")
}
/// Tenant name -> id, for uniqueness.
pub fn tenant_name(name: &str) -> String {
    format!("tname/{name}")
}
pub fn key(id: &str) -> String {
    format!("key/{id}")
}
/// Index: a tenant's keys.
pub fn tenant_keys(t: &str) -> String {
    format!("tkey/{t}/")
}
pub fn tenant_key(t: &str, k: &str) -> String {
    format!("tkey/{t}/{k}")
}
pub fn server(id: &str) -> String {
    format!("server/{id}")
}
pub fn server_name(name: &str) -> String {
    format!("sname/{name}")
}
/// SHA-256 of a server's own credential.
pub fn server_cred(id: &str) -> String {
    format!("scred/{id}")
}
pub fn heartbeat(id: &str) -> String {
    format!("hb/{id}")
}
pub fn gpu(uuid: &str) -> String {
    format!("gpu/{uuid}")
}
pub fn plan(id: &str) -> String {
    format!("plan/{id}")
}
/// Index: tenants on a plan.
pub fn plan_tenants(p: &str) -> String {
    format!("tplan/{p}/")
}
pub fn plan_tenant(p: &str, t: &str) -> String {
    format!("tplan/{p}/{t}")
}
pub fn assign(id: &str) -> String {
    format!("assign/{id}")
}
pub fn tenant_assigns(t: &str) -> String {
    format!("tassign/{t}/")
}
pub fn tenant_assign(t: &str, a: &str) -> String {
    format!("tassign/{t}/{a}")
}
pub fn gpu_assigns(g: &str) -> String {
    format!("gassign/{g}/")
}
pub fn gpu_assign(g: &str, a: &str) -> String {
    format!("gassign/{g}/{a}")
}
/// Sum of the slices on a GPU (`GpuAlloc`).
pub fn gpu_alloc(g: &str) -> String {
    format!("galloc/{g}")
}
pub fn session(id: &str) -> String {
    format!("session/{id}")
}
/// Index: every session of a tenant (until pruned).
pub fn tenant_sessions(t: &str) -> String {
    format!("tsess/{t}/")
}
pub fn tenant_session(t: &str, s: &str) -> String {
    format!("tsess/{t}/{s}")
}
/// Index: sessions not ended (they may have expired; the pruner removes them).
pub const LIVE_SESSIONS: &str = "slive/";
pub fn live_session(s: &str) -> String {
    format!("slive/{s}")
}
pub fn tenant_live_sessions(t: &str) -> String {
    format!("tlive/{t}/")
}
pub fn tenant_live_session(t: &str, s: &str) -> String {
    format!("tlive/{t}/{s}")
}
/// Index: sessions by the time the pruner removes them.
pub const SESSION_GC: &str = "sgc/";
pub fn session_gc(at: u64, s: &str) -> String {
    format!("sgc/{at:012}/{s}")
}
/// Sessions a server must end (the control plane ended them), read at each of its heartbeats.
pub fn end_notices(server: &str) -> String {
    format!("endq/{server}/")
}
pub fn end_notice(server: &str, s: &str) -> String {
    format!("endq/{server}/{s}")
}
pub const END_NOTICE_GC: &str = "endqgc/";
pub fn end_notice_gc(at: u64, server: &str, s: &str) -> String {
    format!("endqgc/{at:012}/{server}/{s}")
}
pub fn usage_prefix(t: &str) -> String {
    format!("usage/{t}/")
}
pub fn usage(t: &str, period_end: u64, id: &str) -> String {
    format!("usage/{t}/{period_end:012}/{id}")
}
/// A usage report already counted (idempotency), by the reporting server and its report id.
pub fn usage_report(server: &str, report_id: &str) -> String {
    format!("urep/{server}/{report_id}")
}
pub fn audit(id: &str) -> String {
    format!("audit/{id}")
}
/// Failed authentication counters, shared by every replica.
pub fn failures_key(key_id: &str) -> String {
    format!("fail/k/{key_id}")
}
pub fn failures_addr(addr: &str) -> String {
    format!("fail/a/{addr}")
}

/// A session stays in the live indexes until it ends or, expired, the pruner takes it out (at `gc_at`, which
/// for a live session is its expiry; after that it moves to expiry plus the retention time).
pub fn is_live_indexed(s: &Session) -> bool {
    s.ended_at.is_none() && s.gc_at <= s.expires_at
}

/// Writes a session and its index entries (a new one, or one whose state changed from `old`).
pub fn put_session(tx: &mut Tx, s: &Session, old: Option<&Session>) -> Result<(), StoreError> {
    if let Some(o) = old {
        if o.gc_at != s.gc_at {
            tx.delete(&session_gc(o.gc_at, &o.id));
        }
    }
    tx.put(&session(&s.id), s)?;
    tx.put(&tenant_session(&s.tenant_id, &s.id), &1)?;
    tx.put(&session_gc(s.gc_at, &s.id), &1)?;
    if is_live_indexed(s) {
        tx.put(&live_session(&s.id), &1)?;
        tx.put(&tenant_live_session(&s.tenant_id, &s.id), &1)?;
    } else {
        tx.delete(&live_session(&s.id));
        tx.delete(&tenant_live_session(&s.tenant_id, &s.id));
    }
    Ok(())
}

/// Removes a session and every index entry naming it.
pub fn delete_session(tx: &mut Tx, s: &Session) {
    tx.delete(&session(&s.id));
    tx.delete(&tenant_session(&s.tenant_id, &s.id));
    tx.delete(&session_gc(s.gc_at, &s.id));
    tx.delete(&live_session(&s.id));
    tx.delete(&tenant_live_session(&s.tenant_id, &s.id));
}

pub fn put_assignment(tx: &mut Tx, a: &Assignment) -> Result<(), StoreError> {
    tx.put(&assign(&a.id), a)?;
    tx.put(&tenant_assign(&a.tenant_id, &a.id), &1)?;
    tx.put(&gpu_assign(&a.gpu_uuid, &a.id), &1)?;
    Ok(())
}

pub fn delete_assignment(tx: &mut Tx, a: &Assignment) {
    tx.delete(&assign(&a.id));
    tx.delete(&tenant_assign(&a.tenant_id, &a.id));
    tx.delete(&gpu_assign(&a.gpu_uuid, &a.id));
}

/// Writes the schema version into a new store, migrates an older layout, refuses a newer one.
pub fn open(db: &Db, session_retention_s: u64) -> Result<(), StoreError> {
    match db.get::<u32>(SCHEMA_KEY)? {
        None => {
            // A store written by layout 1 has records but no version key only if it was never opened by
            // layout 1 either; layout 1 always wrote the key, so None means a new store.
            let mut tx = Tx::default();
            tx.put(SCHEMA_KEY, &SCHEMA_VERSION)?;
            tx.expect_absent(SCHEMA_KEY);
            match db.commit(tx) {
                Ok(()) | Err(StoreError::Conflict) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Some(v) if v > SCHEMA_VERSION => Err(StoreError::NewerSchema {
            found: v,
            supported: SCHEMA_VERSION,
        }),
        Some(1) => migrate_1_to_2(db, session_retention_s),
        Some(_) => Ok(()),
    }
}

/// Layout 1 kept records only. Layout 2 adds the indexes above, moves heartbeat times out of server records,
/// and gives sessions a pruning time. Runs in pages, so a store of any size migrates in bounded memory.
fn migrate_1_to_2(db: &Db, retention: u64) -> Result<(), StoreError> {
    const PAGE: usize = 500;
    let now = crate::auth::now();
    let mut after: Option<String> = None;
    loop {
        let page = db.page::<Tenant>("tenant/", after.as_deref(), PAGE)?;
        let mut tx = Tx::default();
        for (_, t) in &page.items {
            tx.put(&tenant_name(&t.name), &t.id)?;
            if let Some(p) = &t.plan_id {
                tx.put(&plan_tenant(p, &t.id), &1)?;
            }
        }
        db.commit(tx)?;
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut admins: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = db.page::<KeyRecord>("key/", after.as_deref(), PAGE)?;
        let mut tx = Tx::default();
        for (_, k) in &page.items {
            match (&k.role, &k.tenant_id) {
                (Role::Admin, _) if k.revoked_at.is_none() => admins.push(k.id.clone()),
                (Role::Tenant, Some(t)) => tx.put(&tenant_key(t, &k.id), &1)?,
                _ => {}
            }
        }
        db.commit(tx)?;
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut tx = Tx::default();
    tx.put(ADMIN_KEYS, &admins)?;
    db.commit(tx)?;
    let mut after: Option<String> = None;
    loop {
        let page = db.page::<Server>("server/", after.as_deref(), PAGE)?;
        let mut tx = Tx::default();
        for (_, s) in &page.items {
            tx.put(&server_name(&s.name), &s.id)?;
            tx.put(
                &heartbeat(&s.id),
                &Heartbeat {
                    at: s.last_heartbeat_at.unwrap_or(0),
                    gpus: vec![],
                },
            )?;
        }
        db.commit(tx)?;
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut allocs: std::collections::BTreeMap<String, GpuAlloc> = Default::default();
    let mut after: Option<String> = None;
    loop {
        let page = db.page::<Assignment>("assign/", after.as_deref(), PAGE)?;
        let mut tx = Tx::default();
        for (_, a) in &page.items {
            put_assignment(&mut tx, a)?;
            let e = allocs.entry(a.gpu_uuid.clone()).or_default();
            e.memory_mib = e.memory_mib.saturating_add(a.memory_limit_mib);
            e.share += a.compute_share;
            e.count += 1;
        }
        db.commit(tx)?;
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut tx = Tx::default();
    for (g, a) in &allocs {
        tx.put(&gpu_alloc(g), a)?;
    }
    db.commit(tx)?;
    let mut after: Option<String> = None;
    loop {
        let page = db.page::<Session>("session/", after.as_deref(), PAGE)?;
        let mut tx = Tx::default();
        for (_, s) in &page.items {
            let mut s = s.clone();
            s.gc_at = match s.ended_at {
                Some(e) => e.min(s.expires_at) + retention,
                None if s.expires_at > now => s.expires_at,
                None => s.expires_at + retention,
            };
            put_session(&mut tx, &s, None)?;
        }
        db.commit(tx)?;
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut tx = Tx::default();
    tx.put(SCHEMA_KEY, &SCHEMA_VERSION)?;
    db.commit(tx)
}
