//! Session tickets, sessions (paged, through indexes: no request reads every session), ending them (the
//! servers learn it at their next heartbeat, whichever replica they talk to), usage reports (checked for
//! plausibility, idempotent by report id) and usage totals.

use super::{enum_param, num, page_req, query_u64, ApiError, ApiResult, App, Principal};
use crate::auth::{new_id, now};
use crate::layout;
use crate::model::*;
use crate::store::Tx;
use crate::ticket::{TicketClaims, TicketGpu, TICKET_TYP};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// GPUs one ticket may name.
const GPUS_PER_TICKET: usize = 64;
/// Sessions ended per commit when an assignment or tenant goes.
const END_BATCH: usize = 200;
/// Clock difference tolerated between a GPU server and the control plane, in seconds.
const CLOCK_SLACK: u64 = 300;
/// Largest plausible transfer rate, bytes per second (over any PCIe or NVLink of today).
const MAX_BYTES_PER_S: u64 = 1 << 40;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TicketReq {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageReport {
    /// Chosen by the server; a report with an id already counted is acknowledged and not counted again.
    #[serde(default)]
    report_id: Option<String>,
    records: Vec<UsageSample>,
}

pub(super) fn session_view(s: &Session, n: u64) -> Value {
    let mut v = super::ser(s);
    v["status"] = json!(s.status(n));
    if let Some(o) = v.as_object_mut() {
        o.remove("gc_at");
    }
    v
}

/// Checks one usage record against what is physically possible for one GPU over its period.
fn plausible(u: &UsageSample, s: &Session, g: &Gpu, n: u64) -> Result<(), ApiError> {
    if u.period_end < u.period_start {
        return Err(ApiError::bad("period_end is before period_start"));
    }
    if u.period_end > n + CLOCK_SLACK {
        return Err(ApiError::bad("period_end is in the future"));
    }
    if u.period_start + CLOCK_SLACK < s.created_at {
        return Err(ApiError::bad("period_start is before the session began"));
    }
    let span = (u.period_end - u.period_start) as f64;
    // Periods are whole seconds, measured times are not: allow a little over.
    let wall = span + (span * 0.01).max(2.0);
    for (x, what) in [(u.gpu_seconds, "gpu_seconds"), (u.gpu_busy_seconds, "gpu_busy_seconds")] {
        super::finite_nonneg(x, what)?;
        if x > wall {
            return Err(ApiError::bad(format!(
                "{what} {x:e} is more than the period's {span} s on one GPU"
            )));
        }
    }
    super::finite_nonneg(u.memory_gib_hours, "memory_gib_hours")?;
    let gib = g.memory_total_mib as f64 / 1024.0;
    if u.memory_gib_hours > gib * wall / 3600.0 {
        return Err(ApiError::bad(
            "memory_gib_hours is more than the GPU's memory over the period",
        ));
    }
    if u.bytes_moved as f64 > MAX_BYTES_PER_S as f64 * wall {
        return Err(ApiError::bad(
            "bytes_moved is more than any link carries over the period",
        ));
    }
    Ok(())
}

fn check_report_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(ApiError::bad("report_id must be 1 to 64 letters, digits, '-' or '_'"));
    }
    Ok(())
}

impl App {
    pub(super) fn ticket(&self, who: &Principal, body: &[u8]) -> ApiResult {
        let tenant_id = match who {
            Principal::Tenant { tenant_id, .. } => tenant_id.clone(),
            _ => {
                return Err(ApiError::new(
                    403,
                    "forbidden",
                    "only a tenant's key gets session tickets",
                ))
            }
        };
        let _: TicketReq = super::de(body)?;
        let mut servers: HashMap<String, Server> = HashMap::new();
        let mut gpus = Vec::new();
        for aid in self
            .db
            .index_keys(&layout::tenant_assigns(&tenant_id), GPUS_PER_TICKET)?
        {
            let Some(a) = self.db.get::<Assignment>(&layout::assign(&aid))? else {
                continue;
            };
            let g = self.gpu(&a.gpu_uuid)?;
            let s = match servers.get(&g.server_id) {
                Some(s) => s.clone(),
                None => {
                    let s = self.db.get::<Server>(&layout::server(&g.server_id))?.ok_or_else(|| {
                        ApiError::conflict("server_gone", "the server of an assigned GPU is not registered")
                    })?;
                    servers.insert(s.id.clone(), s.clone());
                    s
                }
            };
            gpus.push(TicketGpu {
                server_id: s.id.clone(),
                server_address: s.address.clone(),
                gpu_uuid: g.uuid,
                gpu_index: g.index,
                memory_limit_mib: a.memory_limit_mib,
                compute_share: a.compute_share,
                priority: a.priority,
                share_cap: a.share_cap,
                tls_cert_sha256: s.tls_cert_sha256.clone(),
            });
        }
        if gpus.is_empty() {
            return Err(ApiError::conflict("no_assignment", "no GPU is assigned to this tenant"));
        }
        let n = now();
        let mut server_ids: Vec<String> = gpus.iter().map(|g| g.server_id.clone()).collect();
        server_ids.dedup();
        let session = Session {
            id: new_id("sess"),
            tenant_id: tenant_id.clone(),
            gpu_uuids: gpus.iter().map(|g| g.gpu_uuid.clone()).collect(),
            created_at: n,
            expires_at: n + self.cfg.ticket_ttl_s,
            ended_at: None,
            end_reason: None,
            server_ids,
            gc_at: n + self.cfg.ticket_ttl_s,
        };
        let claims = TicketClaims {
            typ: TICKET_TYP.into(),
            sub: tenant_id,
            sid: session.id.clone(),
            iat: n,
            exp: session.expires_at,
            gpus,
        };
        let token = self.keys.sign(&claims).map_err(ApiError::internal)?;
        let mut tx = Tx::default();
        layout::put_session(&mut tx, &session, None)?;
        self.db.commit(tx)?;
        Ok((
            201,
            json!({"ticket": token, "session_id": session.id, "expires_at": session.expires_at, "gpus": claims.gpus}),
        ))
    }

    pub(super) fn list_sessions(&self, who: &Principal, q: &HashMap<String, String>) -> ApiResult {
        let tenant = match who {
            Principal::Admin { .. } => q.get("tenant_id").cloned(),
            Principal::Tenant { tenant_id, .. } => {
                if q.get("tenant_id").is_some_and(|t| t != tenant_id) {
                    return Ok((200, json!({"sessions": [], "next_cursor": null})));
                }
                Some(tenant_id.clone())
            }
            Principal::Server { .. } => return Err(ApiError::forbidden()),
        };
        let status = enum_param(q, "status", &["active", "ended", "expired"])?;
        let pr = page_req(q)?;
        let n = now();
        // Active sessions come from the live indexes; other filters page through the tenant's (or all)
        // sessions, examining at most `limit` per request: a page may hold fewer, `next_cursor` goes on.
        let (prefix, indexed) = match (status, &tenant) {
            (Some("active"), Some(t)) => (layout::tenant_live_sessions(t), true),
            (Some("active"), None) => (layout::LIVE_SESSIONS.to_string(), true),
            (_, Some(t)) => (layout::tenant_sessions(t), true),
            (_, None) => ("session/".to_string(), false),
        };
        let page = self.db.page_raw(&prefix, pr.cursor.as_deref(), pr.limit)?;
        let mut out = Vec::new();
        for (k, v) in &page.items {
            let s: Session = if indexed {
                match self.db.get::<Session>(&layout::session(k))? {
                    Some(s) => s,
                    None => continue,
                }
            } else {
                serde_json::from_slice(v).map_err(|e| ApiError::internal(e.to_string()))?
            };
            if status.is_none_or(|st| s.status(n) == st) {
                out.push(session_view(&s, n));
            }
        }
        Ok((200, json!({ "sessions": out, "next_cursor": page.next })))
    }

    pub(super) fn end_session(&self, who: &Principal, id: &str) -> ApiResult {
        let s = self.retry(|| {
            let cur = self
                .db
                .get_versioned::<Session>(&layout::session(id))?
                .ok_or_else(|| ApiError::not_found("session"))?;
            match who {
                Principal::Admin { .. } => {}
                Principal::Tenant { tenant_id, .. } if tenant_id == &cur.value.tenant_id => {}
                _ => return Err(ApiError::not_found("session")),
            }
            if cur.value.ended_at.is_some() {
                return Ok(cur.value);
            }
            let reason = match who {
                Principal::Admin { .. } => "ended by admin",
                _ => "ended by tenant",
            };
            let mut tx = Tx::default();
            let s = self.end_in(&mut tx, &cur.value, reason, true)?;
            tx.expect(&layout::session(id), Some(&cur.raw));
            if let Principal::Admin { .. } = who {
                self.audit(&mut tx, who, None, "session.end", id, Value::Null)?;
            }
            self.db.commit(tx)?;
            Ok(s)
        })?;
        Ok((200, session_view(&s, now())))
    }

    /// Ends `s` in `tx`; when the control plane ends it (`notify`), its servers are told at their next heartbeat.
    fn end_in(&self, tx: &mut Tx, s: &Session, reason: &str, notify: bool) -> Result<Session, ApiError> {
        let n = now();
        let mut e = s.clone();
        e.ended_at = Some(n);
        e.end_reason = Some(reason.into());
        e.gc_at = n + self.cfg.session_retention_s;
        layout::put_session(tx, &e, Some(s))?;
        if notify {
            let mut servers = e.server_ids.clone();
            if servers.is_empty() {
                // A layout-1 session: its servers are those of its GPUs.
                for g in &e.gpu_uuids {
                    if let Some(g) = self.db.get::<Gpu>(&layout::gpu(g))? {
                        servers.push(g.server_id);
                    }
                }
            }
            servers.sort();
            servers.dedup();
            for sv in servers {
                tx.put(&layout::end_notice(&sv, &e.id), &n)?;
                tx.put(&layout::end_notice_gc(n + self.cfg.end_notice_s, &sv, &e.id), &1)?;
            }
        }
        Ok(e)
    }

    /// Ends a tenant's live sessions that use `gpu_uuid` (all its sessions when `None`), in bounded batches.
    pub(super) fn end_sessions_on(
        &self,
        tenant_id: &str,
        gpu_uuid: Option<&str>,
        reason: &str,
    ) -> Result<(), ApiError> {
        let n = now();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .db
                .page_raw(&layout::tenant_live_sessions(tenant_id), cursor.as_deref(), END_BATCH)?;
            let ids: Vec<String> = page.items.iter().map(|(k, _)| k.clone()).collect();
            self.retry(|| {
                let mut tx = Tx::default();
                for id in &ids {
                    let Some(cur) = self.db.get_versioned::<Session>(&layout::session(id))? else {
                        continue;
                    };
                    let s = &cur.value;
                    if s.ended_at.is_some()
                        || n >= s.expires_at
                        || gpu_uuid.is_some_and(|g| !s.gpu_uuids.iter().any(|u| u == g))
                    {
                        continue;
                    }
                    tx.expect(&layout::session(id), Some(&cur.raw));
                    self.end_in(&mut tx, s, reason, true)?;
                }
                Ok(self.db.commit(tx)?)
            })?;
            match page.next {
                Some(c) => cursor = Some(c),
                None => return Ok(()),
            }
        }
    }

    pub(super) fn report_usage(&self, who: &Principal, body: &[u8]) -> ApiResult {
        let server_id = match who {
            Principal::Server { server_id } => server_id.clone(),
            _ => return Err(ApiError::forbidden()),
        };
        let r: UsageReport = super::de(body)?;
        if r.records.len() > 10_000 {
            return Err(ApiError::bad("at most 10000 records per report"));
        }
        if let Some(id) = &r.report_id {
            check_report_id(id)?;
        }
        self.retry(|| {
            if let Some(id) = &r.report_id {
                if let Some(done) = self.db.get::<Value>(&layout::usage_report(&server_id, id))? {
                    return Ok((
                        202,
                        json!({"accepted": done["count"].as_u64().unwrap_or(0), "duplicate": true}),
                    ));
                }
            }
            let n = now();
            let mut tx = Tx::default();
            let mut sessions: BTreeMap<String, crate::store::Versioned<Session>> = BTreeMap::new();
            let mut ended: BTreeMap<String, Session> = BTreeMap::new();
            let mut gpus: HashMap<String, Gpu> = HashMap::new();
            for u in &r.records {
                if !sessions.contains_key(&u.session_id) {
                    let s = self
                        .db
                        .get_versioned::<Session>(&layout::session(&u.session_id))?
                        .ok_or_else(|| ApiError::bad(format!("unknown session {}", u.session_id)))?;
                    sessions.insert(u.session_id.clone(), s);
                }
                let s = &sessions[&u.session_id].value;
                if !s.gpu_uuids.contains(&u.gpu_uuid) {
                    return Err(ApiError::bad(format!("session {} has no GPU {}", s.id, u.gpu_uuid)));
                }
                if !gpus.contains_key(&u.gpu_uuid) {
                    gpus.insert(u.gpu_uuid.clone(), self.gpu(&u.gpu_uuid)?);
                }
                let g = &gpus[&u.gpu_uuid];
                // A server bills only for GPUs it owns.
                if g.server_id != server_id {
                    return Err(ApiError::forbidden());
                }
                plausible(u, s, g, n)?;
                let rec = UsageRecord {
                    id: new_id("u"),
                    tenant_id: s.tenant_id.clone(),
                    session_id: s.id.clone(),
                    server_id: server_id.clone(),
                    gpu_uuid: g.uuid.clone(),
                    gpu_model: g.model.clone(),
                    period_start: u.period_start,
                    period_end: u.period_end,
                    gpu_seconds: u.gpu_seconds,
                    gpu_busy_seconds: u.gpu_busy_seconds,
                    memory_gib_hours: u.memory_gib_hours,
                    bytes_moved: u.bytes_moved,
                    reported_at: n,
                    report_id: r.report_id.clone(),
                };
                tx.put(&layout::usage(&rec.tenant_id, rec.period_end, &rec.id), &rec)?;
                if u.session_ended && s.ended_at.is_none() && !ended.contains_key(&s.id) {
                    ended.insert(s.id.clone(), s.clone());
                }
            }
            for (id, s) in &ended {
                tx.expect(&layout::session(id), Some(&sessions[id].raw));
                self.end_in(&mut tx, s, "closed by server", false)?;
            }
            if let Some(id) = &r.report_id {
                tx.expect_absent(&layout::usage_report(&server_id, id));
                tx.put(
                    &layout::usage_report(&server_id, id),
                    &json!({"count": r.records.len(), "at": n}),
                )?;
            }
            self.db.commit(tx)?;
            Ok((202, json!({"accepted": r.records.len(), "duplicate": false})))
        })
    }

    pub(super) fn usage(&self, who: &Principal, q: &HashMap<String, String>) -> ApiResult {
        let n = now();
        // Servers' clocks may run a little ahead: by default count records up to five minutes from now.
        let to = query_u64(q, "to")?.unwrap_or(n + CLOCK_SLACK);
        let from = query_u64(q, "from")?.unwrap_or(to.saturating_sub(30 * 86400));
        if from > to {
            return Err(ApiError::bad("from is after to"));
        }
        if to > 1 << 40 {
            return Err(ApiError::bad("to is too large"));
        }
        let pr = page_req(q)?;
        let (tenants, next): (Vec<Tenant>, Option<String>) = match who {
            Principal::Admin { .. } => match q.get("tenant_id") {
                Some(t) => (vec![self.tenant(t)?], None),
                None => {
                    let page = self
                        .db
                        .page::<Tenant>("tenant/", pr.cursor.as_deref(), pr.limit.min(100))?;
                    (page.items.into_iter().map(|(_, t)| t).collect(), page.next)
                }
            },
            Principal::Tenant { tenant_id, .. } => {
                if q.get("tenant_id").is_some_and(|t| t != tenant_id) {
                    return Err(ApiError::not_found("tenant"));
                }
                (vec![self.tenant(tenant_id)?], None)
            }
            Principal::Server { .. } => return Err(ApiError::forbidden()),
        };
        let mut out = Vec::new();
        for t in tenants {
            out.push(self.tenant_usage(&t, from, to)?);
        }
        Ok((
            200,
            json!({"from": from, "to": to, "tenants": out, "next_cursor": next}),
        ))
    }

    fn tenant_usage(&self, t: &Tenant, from: u64, to: u64) -> Result<Value, ApiError> {
        let plan = match &t.plan_id {
            Some(p) => self.db.get::<Plan>(&layout::plan(p))?,
            None => None,
        };
        let (mut gs, mut busy, mut mem, mut bytes, mut cost) = (0.0f64, 0.0f64, 0.0f64, 0u64, 0.0f64);
        let mut daily: BTreeMap<u64, (f64, f64, f64, f64)> = BTreeMap::new();
        let prefix = layout::usage_prefix(&t.id);
        // Records are keyed by period end: the window is one range of keys, read in chunks.
        let mut cursor = Some(format!("{:012}", from.saturating_sub(1)));
        if from == 0 {
            cursor = None;
        }
        loop {
            let page = self.db.page::<UsageRecord>(&prefix, cursor.as_deref(), 1000)?;
            let mut past = false;
            for (_, u) in &page.items {
                if u.period_end > to {
                    past = true;
                    break;
                }
                if u.period_end < from {
                    continue;
                }
                let c = plan
                    .as_ref()
                    .and_then(|p| p.rate_for(&u.gpu_model))
                    .map(|r| u.gpu_seconds / 3600.0 * r.per_gpu_hour + u.memory_gib_hours * r.per_gib_hour)
                    .unwrap_or(0.0);
                gs += u.gpu_seconds;
                busy += u.gpu_busy_seconds;
                mem += u.memory_gib_hours;
                bytes = bytes.saturating_add(u.bytes_moved);
                cost += c;
                let d = daily.entry(u.period_end / 86400 * 86400).or_default();
                d.0 += u.gpu_seconds / 3600.0;
                d.1 += u.gpu_busy_seconds / 3600.0;
                d.2 += u.memory_gib_hours;
                d.3 += c;
            }
            match page.next {
                Some(c) if !past => cursor = Some(c),
                _ => break,
            }
        }
        let daily: Vec<Value> = daily
            .into_iter()
            .map(|(day, (h, b, m, c))| {
                json!({"day": day, "gpu_hours": num(h), "gpu_busy_hours": num(b), "memory_gib_hours": num(m), "cost": num(c)})
            })
            .collect();
        Ok(json!({
            "tenant_id": t.id, "tenant_name": t.name, "plan_id": t.plan_id,
            "currency": plan.as_ref().map(|p| p.currency.clone()).unwrap_or_else(|| "USD".into()),
            "gpu_seconds": num(gs), "gpu_hours": num(gs / 3600.0), "gpu_busy_seconds": num(busy),
            "memory_gib_hours": num(mem), "bytes_moved": bytes, "cost": num(cost), "daily": daily,
        }))
    }
}
