//! GPU servers and their GPUs: enrollment with the node token, then each server's own credential;
//! heartbeats (a small record of their own, plus the sessions to end); ownership of GPUs; listings.

use super::{check_name, de, page_req, ApiError, ApiResult, App, Principal, Request};
use crate::auth::{self, new_id, now, server_id_of};
use crate::layout;
use crate::model::*;
use crate::store::Tx;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

/// GPUs one server may report.
const GPUS_PER_SERVER: usize = 64;
/// Largest GPU memory accepted, in MiB (16 TiB): far above any GPU, far below where sums could wrap.
const MAX_GPU_MIB: u64 = 16 << 20;
/// Sessions to end returned by one heartbeat (the rest come with the next ones).
const END_NOTICES_PER_BEAT: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterReq {
    name: String,
    address: String,
    /// Needed to enroll a new server; a server that has its own credential presents that instead.
    #[serde(default)]
    node_token: Option<String>,
    #[serde(default)]
    gpus: Vec<GpuReport>,
    #[serde(default)]
    tls_cert_sha256: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatReq {
    /// Absent: inventory and load unchanged since the last report.
    #[serde(default)]
    gpus: Option<Vec<GpuReport>>,
}

fn check_fingerprint(f: &Option<String>) -> Result<Option<String>, ApiError> {
    match f {
        None => Ok(None),
        Some(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(Some(s.to_ascii_lowercase())),
        Some(_) => Err(ApiError::bad("tls_cert_sha256 must be 64 hex characters")),
    }
}

/// A GPU report checked and normalized: bounded sizes, finite load.
fn check_gpu(g: &GpuReport) -> Result<(Gpu, GpuLoad), ApiError> {
    let uuid = check_name(&g.uuid, "gpu uuid")?;
    if uuid.contains('/') {
        return Err(ApiError::bad("gpu uuid must not contain '/'"));
    }
    if !(g.utilization_pct.is_finite() && (0.0..=100.0).contains(&g.utilization_pct)) {
        return Err(ApiError::bad("utilization_pct must be between 0 and 100"));
    }
    if g.memory_total_mib == 0 || g.memory_total_mib > MAX_GPU_MIB {
        return Err(ApiError::bad(format!(
            "memory_total_mib must be between 1 and {MAX_GPU_MIB}"
        )));
    }
    if g.index > 1024 {
        return Err(ApiError::bad("index must be at most 1024"));
    }
    let name = check_name(&g.name, "gpu name")?;
    let model = match &g.model {
        Some(m) if !m.trim().is_empty() => check_name(m, "gpu model")?,
        _ => name.clone(),
    };
    let load = GpuLoad {
        uuid: uuid.clone(),
        memory_used_mib: g.memory_used_mib.min(g.memory_total_mib),
        utilization_pct: g.utilization_pct,
    };
    Ok((
        Gpu {
            uuid,
            server_id: String::new(),
            index: g.index,
            name,
            model,
            memory_total_mib: g.memory_total_mib,
            memory_used_mib: 0,
            utilization_pct: 0.0,
            updated_at: 0,
        },
        load,
    ))
}

impl App {
    /// Writes the inventory a server reported, refusing GPUs another live server owns. Records whose
    /// inventory is unchanged are left alone (their load lives in the heartbeat record). Returns the uuids.
    fn upsert_gpus(
        &self,
        tx: &mut Tx,
        server_id: &str,
        old: &[String],
        gpus: &[GpuReport],
    ) -> Result<(Vec<String>, Vec<GpuLoad>), ApiError> {
        if gpus.len() > GPUS_PER_SERVER {
            return Err(ApiError::bad(format!("at most {GPUS_PER_SERVER} GPUs per server")));
        }
        let n = now();
        let mut uuids = Vec::new();
        let mut loads = Vec::new();
        for g in gpus {
            let (mut rec, load) = check_gpu(g)?;
            if uuids.contains(&rec.uuid) {
                return Err(ApiError::bad(format!("GPU {} is listed twice", rec.uuid)));
            }
            rec.server_id = server_id.to_string();
            rec.updated_at = n;
            let cur = self.db.get_versioned::<Gpu>(&layout::gpu(&rec.uuid))?;
            match &cur {
                Some(c) if c.value.server_id != server_id => {
                    // Another server's GPU: only claimable once that server is gone (an admin deleted it).
                    if self.db.get_raw(&layout::server(&c.value.server_id))?.is_some() {
                        return Err(ApiError::conflict(
                            "gpu_owned",
                            format!("GPU {} belongs to another server", rec.uuid),
                        ));
                    }
                    tx.expect(&layout::gpu(&rec.uuid), Some(&c.raw));
                    tx.put(&layout::gpu(&rec.uuid), &rec)?;
                }
                Some(c)
                    if c.value.index == rec.index
                        && c.value.name == rec.name
                        && c.value.model == rec.model
                        && c.value.memory_total_mib == rec.memory_total_mib => {}
                Some(c) => {
                    tx.expect(&layout::gpu(&rec.uuid), Some(&c.raw));
                    tx.put(&layout::gpu(&rec.uuid), &rec)?;
                }
                None => {
                    tx.expect_absent(&layout::gpu(&rec.uuid));
                    tx.put(&layout::gpu(&rec.uuid), &rec)?;
                }
            }
            uuids.push(rec.uuid.clone());
            loads.push(load);
        }
        // A GPU the server no longer reports disappears, unless a tenant holds it: then its record stays so the
        // assignment still shows (as on an offline server) until an admin moves or revokes it.
        for u in old {
            if !uuids.contains(u) && self.db.index_keys(&layout::gpu_assigns(u), 1)?.is_empty() {
                tx.delete(&layout::gpu(u));
                tx.delete(&layout::gpu_alloc(u));
            }
        }
        Ok((uuids, loads))
    }

    /// Enrolls a server with the node token (once per name), or re-registers one that presents its own
    /// credential. Re-registering a name with only the node token never takes over the enrolled server.
    pub(super) fn register(&self, req: &Request) -> ApiResult {
        let r: RegisterReq = de(&req.body)?;
        let name = check_name(&r.name, "name")?;
        let address = check_name(&r.address, "address")?;
        let fingerprint = check_fingerprint(&r.tls_cert_sha256)?;
        let presented = req
            .authorization
            .as_deref()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|c| c.starts_with("vgpus_"));
        let own = match presented {
            Some(cred) => match self.authenticate(req.authorization.as_deref(), req.remote)? {
                Principal::Server { server_id } => Some((server_id, cred.to_string())),
                _ => return Err(ApiError::unauthorized("not a server credential")),
            },
            None => {
                let token = r
                    .node_token
                    .as_deref()
                    .ok_or_else(|| ApiError::unauthorized("enrolling needs the node token"))?;
                self.check_backoff(None, req.remote)?;
                let hash = self.db.get::<String>(layout::NODE_TOKEN)?.unwrap_or_default();
                if !auth::verify_secret(token, &hash) {
                    self.record_failure(None, req.remote);
                    return Err(ApiError::unauthorized("invalid node token"));
                }
                None
            }
        };
        self.retry(|| {
            let n = now();
            let mut tx = Tx::default();
            let by_name = self.db.get::<String>(&layout::server_name(&name))?;
            let (mut s, token, old_raw) = match &own {
                Some((id, cred)) => {
                    let cur = self
                        .db
                        .get_versioned::<Server>(&layout::server(id))?
                        .ok_or_else(|| ApiError::unauthorized("server is not registered"))?;
                    if cur.value.name != name {
                        if by_name.is_some() {
                            return Err(ApiError::conflict(
                                "name_taken",
                                format!("a server named {name} exists"),
                            ));
                        }
                        tx.expect_absent(&layout::server_name(&name));
                        tx.delete(&layout::server_name(&cur.value.name));
                        tx.put(&layout::server_name(&name), id)?;
                    }
                    (cur.value, cred.clone(), Some(cur.raw))
                }
                None => match &by_name {
                    Some(id) => {
                        let cur = self.db.get_versioned::<Server>(&layout::server(id))?;
                        let has_cred = self.db.get_raw(&layout::server_cred(id))?.is_some();
                        match cur {
                            // Enrolled before per-server credentials existed (layout 1): claimed once.
                            Some(c) if !has_cred => {
                                let (token, hash) = auth::new_server_credential(id);
                                tx.expect_absent(&layout::server_cred(id));
                                tx.put(&layout::server_cred(id), &hash)?;
                                (c.value, token, Some(c.raw))
                            }
                            _ => {
                                return Err(ApiError::conflict(
                                    "name_taken",
                                    format!(
                                        "a server named {name} is enrolled: present its own credential, or an admin \
                                         deletes it first"
                                    ),
                                ))
                            }
                        }
                    }
                    None => {
                        let id = new_id("s");
                        let (token, hash) = auth::new_server_credential(&id);
                        tx.expect_absent(&layout::server_name(&name));
                        tx.put(&layout::server_name(&name), &id)?;
                        tx.put(&layout::server_cred(&id), &hash)?;
                        let s = Server {
                            id,
                            name: name.clone(),
                            address: address.clone(),
                            registered_at: n,
                            last_heartbeat_at: None,
                            gpu_uuids: vec![],
                            tls_cert_sha256: None,
                        };
                        (s, token, None)
                    }
                },
            };
            if server_id_of(&token) != Some(s.id.as_str()) {
                return Err(ApiError::internal("credential does not name its server"));
            }
            let (uuids, loads) = self.upsert_gpus(&mut tx, &s.id, &s.gpu_uuids, &r.gpus)?;
            s.name = name.clone();
            s.address = address.clone();
            s.gpu_uuids = uuids;
            s.tls_cert_sha256 = fingerprint.clone();
            s.last_heartbeat_at = None;
            tx.expect(&layout::server(&s.id), old_raw.as_deref());
            tx.put(&layout::server(&s.id), &s)?;
            tx.put(&layout::heartbeat(&s.id), &Heartbeat { at: n, gpus: loads })?;
            self.db.commit(tx)?;
            Ok((201, json!({"server": self.server_view(&s)?, "server_token": token})))
        })
    }

    pub(super) fn heartbeat(&self, who: &Principal, id: &str, body: &[u8]) -> ApiResult {
        match who {
            Principal::Server { server_id } if server_id == id => {}
            _ => return Err(ApiError::forbidden()),
        }
        let r: HeartbeatReq = de(body)?;
        let n = now();
        let beat = self.retry(|| {
            let mut tx = Tx::lazy();
            let mut beat = Heartbeat { at: n, gpus: vec![] };
            if let Some(gpus) = &r.gpus {
                let cur = self
                    .db
                    .get_versioned::<Server>(&layout::server(id))?
                    .ok_or_else(|| ApiError::not_found("server"))?;
                let same_set = gpus.len() == cur.value.gpu_uuids.len()
                    && gpus.iter().all(|g| cur.value.gpu_uuids.contains(&g.uuid));
                if same_set {
                    // The usual beat: only load changed. Inventory fields are checked, not rewritten.
                    for g in gpus {
                        beat.gpus.push(check_gpu(g)?.1);
                    }
                } else {
                    let mut s = cur.value.clone();
                    let (uuids, loads) = self.upsert_gpus(&mut tx, id, &s.gpu_uuids, gpus)?;
                    s.gpu_uuids = uuids;
                    tx.make_durable();
                    tx.expect(&layout::server(id), Some(&cur.raw));
                    tx.put(&layout::server(id), &s)?;
                    beat.gpus = loads;
                }
            } else if let Some(prev) = self.db.get::<Heartbeat>(&layout::heartbeat(id))? {
                beat.gpus = prev.gpus;
            }
            tx.put(&layout::heartbeat(id), &beat)?;
            self.db.commit(tx)?;
            Ok(beat)
        })?;
        let end: Vec<String> = self.db.index_keys(&layout::end_notices(id), END_NOTICES_PER_BEAT)?;
        let kids = self.keys.kids();
        Ok((
            200,
            json!({"server_id": id, "at": beat.at, "end_sessions": end, "signing_kids": kids}),
        ))
    }

    pub(super) fn server_view(&self, s: &Server) -> Result<Value, ApiError> {
        let n = now();
        let hb = self.db.get::<Heartbeat>(&layout::heartbeat(&s.id))?.unwrap_or_default();
        let mut gpus = Vec::new();
        for u in &s.gpu_uuids {
            if let Some(g) = self.db.get::<Gpu>(&layout::gpu(u))? {
                gpus.push(self.gpu_view(&g, &hb));
            }
        }
        let mut v = super::ser(s);
        let last = if hb.at > 0 { Some(hb.at) } else { s.last_heartbeat_at };
        v["last_heartbeat_at"] = json!(last);
        v["status"] = json!(if self.online_at(last, n) { "online" } else { "offline" });
        v["gpus"] = Value::Array(gpus);
        Ok(v)
    }

    fn online_at(&self, last: Option<u64>, n: u64) -> bool {
        last.is_some_and(|t| n.saturating_sub(t) <= self.cfg.heartbeat_timeout_s)
    }

    fn gpu_view(&self, g: &Gpu, hb: &Heartbeat) -> Value {
        let mut v = super::ser(g);
        if let Some(l) = hb.gpus.iter().find(|l| l.uuid == g.uuid) {
            v["memory_used_mib"] = json!(l.memory_used_mib.min(g.memory_total_mib));
            v["utilization_pct"] = json!(super::num(l.utilization_pct));
            v["updated_at"] = json!(hb.at);
        }
        v
    }

    pub(super) fn list_servers(&self, who: &Principal, q: &HashMap<String, String>) -> ApiResult {
        Self::admin(who)?;
        let pr = page_req(q)?;
        let page = self.db.page::<Server>("server/", pr.cursor.as_deref(), pr.limit)?;
        let mut out = Vec::new();
        for (_, s) in &page.items {
            out.push(self.server_view(s)?);
        }
        Ok((200, json!({ "servers": out, "next_cursor": page.next })))
    }

    pub(super) fn get_server(&self, who: &Principal, id: &str) -> ApiResult {
        match who {
            Principal::Admin { .. } => {}
            Principal::Server { server_id } if server_id == id => {}
            _ => return Err(ApiError::forbidden()),
        }
        let s = self
            .db
            .get::<Server>(&layout::server(id))?
            .ok_or_else(|| ApiError::not_found("server"))?;
        Ok((200, self.server_view(&s)?))
    }

    /// Removes a server and its credential; its GPUs can then be enrolled by another server (assigned ones
    /// keep their records, so the assignments still show).
    pub(super) fn delete_server(&self, who: &Principal, id: &str, req: &Request) -> ApiResult {
        Self::admin(who)?;
        let s = self
            .db
            .get::<Server>(&layout::server(id))?
            .ok_or_else(|| ApiError::not_found("server"))?;
        let view = self.server_view(&s)?;
        let mut tx = Tx::default();
        tx.delete(&layout::server(id));
        tx.delete(&layout::server_name(&s.name));
        tx.delete(&layout::server_cred(id));
        tx.delete(&layout::heartbeat(id));
        for u in &s.gpu_uuids {
            if self.db.index_keys(&layout::gpu_assigns(u), 1)?.is_empty() {
                tx.delete(&layout::gpu(u));
                tx.delete(&layout::gpu_alloc(u));
            }
        }
        self.audit(&mut tx, who, req.remote, "server.delete", id, json!({"name": s.name}))?;
        self.db.commit(tx)?;
        Ok((200, view))
    }

    pub(super) fn list_gpus(&self, who: &Principal, q: &HashMap<String, String>) -> ApiResult {
        let pr = page_req(q)?;
        let n = now();
        let mut servers: HashMap<String, Option<(Server, Heartbeat)>> = HashMap::new();
        let mut server_of = |app: &App, sid: &str| -> Result<Option<(Server, Heartbeat)>, ApiError> {
            if let Some(s) = servers.get(sid) {
                return Ok(s.clone());
            }
            let s = app.db.get::<Server>(&layout::server(sid))?;
            let v = match s {
                Some(s) => {
                    let hb = app.db.get::<Heartbeat>(&layout::heartbeat(sid))?.unwrap_or_default();
                    Some((s, hb))
                }
                None => None,
            };
            servers.insert(sid.to_string(), v.clone());
            Ok(v)
        };
        let view = |app: &App, g: &Gpu, sv: &Option<(Server, Heartbeat)>, mem: u64, share: f64| {
            let hb = sv.as_ref().map(|(_, h)| h.clone()).unwrap_or_default();
            let mut v = app.gpu_view(g, &hb);
            v["server_name"] = json!(sv.as_ref().map(|(s, _)| s.name.clone()).unwrap_or_default());
            v["online"] = json!(sv.as_ref().is_some_and(|(_, h)| app.online_at(Some(h.at), n)));
            v["assigned_memory_mib"] = json!(mem);
            v["assigned_share"] = json!(super::num(share));
            v
        };
        match who {
            Principal::Admin { .. } => {
                let page = self.db.page::<Gpu>("gpu/", pr.cursor.as_deref(), pr.limit)?;
                let mut out = Vec::new();
                for (_, g) in &page.items {
                    let alloc = self
                        .db
                        .get::<GpuAlloc>(&layout::gpu_alloc(&g.uuid))?
                        .unwrap_or_default();
                    let sv = server_of(self, &g.server_id)?;
                    out.push(view(self, g, &sv, alloc.memory_mib, alloc.share));
                }
                Ok((200, json!({ "gpus": out, "next_cursor": page.next })))
            }
            Principal::Tenant { tenant_id, .. } => {
                let page = self
                    .db
                    .page_raw(&layout::tenant_assigns(tenant_id), pr.cursor.as_deref(), pr.limit)?;
                let mut out = Vec::new();
                for (aid, _) in &page.items {
                    let Some(a) = self.db.get::<Assignment>(&layout::assign(aid))? else {
                        continue;
                    };
                    let Some(g) = self.db.get::<Gpu>(&layout::gpu(&a.gpu_uuid))? else {
                        continue;
                    };
                    let sv = server_of(self, &g.server_id)?;
                    out.push(view(self, &g, &sv, a.memory_limit_mib, a.compute_share));
                }
                Ok((200, json!({ "gpus": out, "next_cursor": page.next })))
            }
            Principal::Server { .. } => Err(ApiError::forbidden()),
        }
    }
}
