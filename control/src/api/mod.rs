//! The REST API as a plain synchronous `Request -> Response` function: routing, paging, retries of
//! conflicting writes, the audit log. `server.rs` puts it behind HTTP; tests call `App::handle` directly.
//! No request holds a store-wide lock: writes are conditional commits retried on conflict.

mod assign;
mod authn;
mod servers;
mod sessions;
mod tenants;

use crate::auth::{self, key_id_of, new_api_key, new_id, now};
use crate::layout;
use crate::metrics::Metrics;
use crate::model::*;
use crate::signing::{KeyRing, KeySource};
use crate::store::{Db, KvStore, StoreError, Tx};
pub use authn::Principal;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;

/// Every route the API serves, as (method, path template). The OpenAPI test checks this list against
/// `api-spec/openapi.yaml` in both directions.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("GET", "/v1/public-key"),
    ("POST", "/v1/auth/token"),
    ("GET", "/v1/me"),
    ("GET", "/v1/tenants"),
    ("POST", "/v1/tenants"),
    ("GET", "/v1/tenants/{tenant_id}"),
    ("PATCH", "/v1/tenants/{tenant_id}"),
    ("DELETE", "/v1/tenants/{tenant_id}"),
    ("GET", "/v1/tenants/{tenant_id}/keys"),
    ("POST", "/v1/tenants/{tenant_id}/keys"),
    ("POST", "/v1/admin-keys"),
    ("POST", "/v1/keys/{key_id}/rotate"),
    ("DELETE", "/v1/keys/{key_id}"),
    ("GET", "/v1/servers"),
    ("POST", "/v1/servers"),
    ("GET", "/v1/servers/{server_id}"),
    ("DELETE", "/v1/servers/{server_id}"),
    ("POST", "/v1/servers/{server_id}/heartbeat"),
    ("GET", "/v1/gpus"),
    ("GET", "/v1/plans"),
    ("POST", "/v1/plans"),
    ("DELETE", "/v1/plans/{plan_id}"),
    ("GET", "/v1/assignments"),
    ("POST", "/v1/assignments"),
    ("PATCH", "/v1/assignments/{assignment_id}"),
    ("DELETE", "/v1/assignments/{assignment_id}"),
    ("POST", "/v1/tickets"),
    ("GET", "/v1/sessions"),
    ("DELETE", "/v1/sessions/{session_id}"),
    ("GET", "/v1/usage"),
    ("POST", "/v1/usage"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/signing-keys"),
    ("POST", "/v1/signing-keys/rotate"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/ui/{file}"),
];

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const STYLE_CSS: &str = include_str!("../ui/style.css");

/// Default and largest page of a listing.
pub const PAGE_DEFAULT: usize = 100;
pub const PAGE_MAX: usize = 1000;

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Raw query string without the `?`.
    pub query: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
    /// The peer's address (failed-authentication back-off is kept per address).
    pub remote: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Template of the route that answered, for metrics and the OpenAPI test.
    pub route: Option<&'static str>,
    /// Extra headers (`Allow` on 405, `Retry-After` on 429).
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: vec![],
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }
    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", message)
    }
    fn forbidden() -> Self {
        Self::new(403, "forbidden", "this credential may not do that")
    }
    fn not_found(what: &str) -> Self {
        Self::new(404, "not_found", format!("{what} not found"))
    }
    fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }
    fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => ApiError::new(503, "conflict_retry", "concurrent update; retry"),
            e => ApiError::new(500, "storage_error", e.to_string()),
        }
    }
}

type ApiResult = Result<(u16, Value), ApiError>;

/// (metric name, help text, value) of a `/metrics` gauge.
type Gauge = (&'static str, &'static str, f64);

/// Lifetimes and thresholds; tests shorten them.
#[derive(Debug, Clone)]
pub struct Config {
    pub access_ttl_s: u64,
    pub ticket_ttl_s: u64,
    /// A server with no heartbeat for this long shows as offline.
    pub heartbeat_timeout_s: u64,
    /// Ended and expired sessions are kept this long, then pruned.
    pub session_retention_s: u64,
    /// How long a server keeps being told to end a session the control plane ended.
    pub end_notice_s: u64,
    /// Failed authentications per key id, and per source address, within `auth_window_s` before back-off.
    pub auth_fail_per_key: u32,
    pub auth_fail_per_addr: u32,
    pub auth_window_s: u64,
    /// Longest back-off after repeated failures.
    pub auth_block_max_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            access_ttl_s: 900,
            ticket_ttl_s: 3600,
            heartbeat_timeout_s: 30,
            session_retention_s: 7 * 86400,
            end_notice_s: 600,
            auth_fail_per_key: 5,
            auth_fail_per_addr: 20,
            auth_window_s: 300,
            auth_block_max_s: 300,
        }
    }
}

/// Credentials to install at start; anything missing is generated and handed back once.
#[derive(Debug, Clone, Default)]
pub struct Bootstrap {
    pub admin_key: Option<String>,
    pub node_token: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Bootstrapped {
    /// Set when this start created the admin key (it is shown only now).
    pub new_admin_key: Option<String>,
    /// Set when this start created the node token.
    pub new_node_token: Option<String>,
}

pub struct App {
    db: Db,
    keys: KeyRing,
    cfg: Config,
    authn: authn::Authn,
    pub metrics: Metrics,
    /// Gauges for `/metrics`, computed by the maintenance pass (bounded scans), not per scrape.
    gauges: Mutex<(Vec<Gauge>, Option<std::time::Instant>)>,
    /// Where the sweeps of failure counters and report ids continue at the next maintenance pass.
    sweeps: Mutex<(Option<String>, Option<String>)>,
}

fn de<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Every request body is a JSON object: `[]` would otherwise pass as an empty struct.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None | Some(b'{') => {}
        Some(_) => return Err(ApiError::bad("request body must be a JSON object")),
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}").map_err(|e| ApiError::bad(format!("request body: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("request body: {e}")))
}

fn query_map(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .take(32)
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), percent_decode(v)),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_u64(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad(format!("query parameter {name} must be a non-negative integer"))),
    }
}

/// `limit` and `cursor` of a listing.
struct PageReq {
    limit: usize,
    cursor: Option<String>,
}

fn page_req(q: &HashMap<String, String>) -> Result<PageReq, ApiError> {
    let limit = match query_u64(q, "limit")? {
        None => PAGE_DEFAULT,
        Some(l) if (1..=PAGE_MAX as u64).contains(&l) => l as usize,
        Some(_) => return Err(ApiError::bad(format!("limit must be between 1 and {PAGE_MAX}"))),
    };
    let cursor = match q.get("cursor").map(String::as_str) {
        None | Some("") => None,
        Some(c) if c.len() <= 200 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-/.:".contains(&b)) => {
            Some(c.to_string())
        }
        Some(_) => return Err(ApiError::bad("cursor is not one this API returned")),
    };
    Ok(PageReq { limit, cursor })
}

/// Status filter of a listing: one of `allowed`, or absent.
fn enum_param<'a>(q: &'a HashMap<String, String>, name: &str, allowed: &[&str]) -> Result<Option<&'a str>, ApiError> {
    match q.get(name).map(String::as_str) {
        None => Ok(None),
        Some(v) if allowed.contains(&v) => Ok(Some(v)),
        Some(_) => Err(ApiError::bad(format!("{name} must be one of {}", allowed.join(", ")))),
    }
}

/// Where a path matched a route but not its method, the methods it has (for `Allow`).
fn match_route(method: &str, path: &str) -> Result<(&'static str, Vec<String>), Option<Vec<&'static str>>> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut allowed = Vec::new();
    for (m, tpl) in ROUTES {
        let tsegs: Vec<&str> = tpl.trim_end_matches('/').split('/').collect();
        if tsegs.len() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        let ok = tsegs.iter().zip(&segs).all(|(t, s)| {
            if t.starts_with('{') {
                params.push((*s).to_string());
                !s.is_empty() && s.len() <= 128
            } else {
                t == s
            }
        });
        if ok {
            if *m == method {
                return Ok((tpl, params));
            }
            allowed.push(*m);
        }
    }
    Err(if allowed.is_empty() { None } else { Some(allowed) })
}

fn check_name(name: &str, what: &str) -> Result<String, ApiError> {
    let n = name.trim();
    if n.is_empty() || n.len() > 128 || n.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad(format!("{what} must be 1 to 128 printable characters")));
    }
    Ok(n.to_string())
}

fn finite_nonneg(x: f64, what: &str) -> Result<f64, ApiError> {
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err(ApiError::bad(format!("{what} must be a finite non-negative number")))
    }
}

/// A number for a JSON reply: never NaN or infinite (JSON has no such numbers; serde would write `null`).
fn num(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

fn ser<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl App {
    /// Opens the control plane over a store with signing keys kept in this process only (tests).
    pub fn open(kv: Box<dyn KvStore>, cfg: Config, boot: Bootstrap) -> Result<(App, Bootstrapped), String> {
        Self::open_with_keys(kv, cfg, boot, KeySource::Memory)
    }

    /// Opens the control plane: migrates the layout, loads or creates the signing keys from `keys`, the
    /// admin key and the node token.
    pub fn open_with_keys(
        kv: Box<dyn KvStore>,
        cfg: Config,
        boot: Bootstrap,
        keys: KeySource,
    ) -> Result<(App, Bootstrapped), String> {
        let db = Db::new(kv);
        layout::open(&db, cfg.session_retention_s).map_err(|e| e.to_string())?;
        let keys = KeyRing::open(keys, &db)?;
        let app = App {
            db,
            keys,
            cfg,
            authn: authn::Authn::default(),
            metrics: Metrics::default(),
            gauges: Mutex::new((vec![], None)),
            sweeps: Mutex::new((None, None)),
        };
        let out = app.bootstrap(&boot)?;
        app.maintain();
        Ok((app, out))
    }

    fn bootstrap(&self, boot: &Bootstrap) -> Result<Bootstrapped, String> {
        let mut out = Bootstrapped::default();
        let admins: Vec<String> = self
            .db
            .get(layout::ADMIN_KEYS)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let install = |key: &str| -> Result<(), String> {
            let id = key_id_of(key).ok_or("admin key must look like vgpu_<id>_<secret of 16+ characters>")?;
            let rec = KeyRecord {
                id: id.to_string(),
                tenant_id: None,
                role: Role::Admin,
                label: "bootstrap admin".into(),
                hash: auth::hash_secret(key)?,
                created_at: now(),
                revoked_at: None,
            };
            self.add_admin_key(&rec).map_err(|e| e.message)
        };
        match &boot.admin_key {
            Some(k) => {
                let id = key_id_of(k).ok_or("admin key must look like vgpu_<id>_<secret of 16+ characters>")?;
                let rec = self.db.get::<KeyRecord>(&layout::key(id)).map_err(|e| e.to_string())?;
                let known = rec.is_some_and(|r| r.revoked_at.is_none() && auth::verify_secret(k, &r.hash));
                if !known {
                    install(k)?;
                }
            }
            None if admins.is_empty() => {
                let (_, key) = new_api_key();
                install(&key)?;
                out.new_admin_key = Some(key);
            }
            None => {}
        }
        let stored = self
            .db
            .get_versioned::<String>(layout::NODE_TOKEN)
            .map_err(|e| e.to_string())?;
        let mut tx = Tx::default();
        match (&boot.node_token, &stored) {
            (Some(t), Some(h)) if auth::verify_secret(t, &h.value) => {}
            (Some(t), _) => tx
                .put(layout::NODE_TOKEN, &auth::hash_secret(t)?)
                .map_err(|e| e.to_string())?,
            (None, Some(_)) => {}
            (None, None) => {
                let t = format!("vgpun_{}", new_api_key().1.trim_start_matches("vgpu_"));
                tx.put(layout::NODE_TOKEN, &auth::hash_secret(&t)?)
                    .map_err(|e| e.to_string())?;
                // Another replica starting at the same moment may win; then its token is the one.
                tx.expect_absent(layout::NODE_TOKEN);
                out.new_node_token = Some(t);
            }
        }
        match self.db.commit(tx) {
            Ok(()) => {}
            Err(StoreError::Conflict) => out.new_node_token = None,
            Err(e) => return Err(e.to_string()),
        }
        Ok(out)
    }

    /// Stores an admin key and adds it to the live admin list, as one conditional write.
    fn add_admin_key(&self, rec: &KeyRecord) -> Result<(), ApiError> {
        self.retry(|| {
            let cur = self.db.get_versioned::<Vec<String>>(layout::ADMIN_KEYS)?;
            let mut ids = cur.as_ref().map(|c| c.value.clone()).unwrap_or_default();
            if !ids.contains(&rec.id) {
                ids.push(rec.id.clone());
            }
            let mut tx = Tx::default();
            tx.expect(layout::ADMIN_KEYS, cur.as_ref().map(|c| c.raw.as_slice()));
            tx.put(layout::ADMIN_KEYS, &ids)?;
            tx.put(&layout::key(&rec.id), rec)?;
            Ok(self.db.commit(tx)?)
        })
    }

    pub fn public_key_pem(&self) -> String {
        self.keys.active_public_pem()
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Runs `f` again while it fails on a write conflict (another request changed what it read), with a short
    /// random pause; gives up after a bounded number of tries.
    fn retry<T>(&self, mut f: impl FnMut() -> Result<T, ApiError>) -> Result<T, ApiError> {
        use rand::Rng;
        for attempt in 0..12u32 {
            match f() {
                Err(e) if e.code == "conflict_retry" => {
                    let cap = 1u64 << attempt.min(5);
                    let ms = rand::rng().random_range(0..=cap);
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                r => return r,
            }
        }
        Err(ApiError::new(
            503,
            "busy",
            "too many concurrent updates of the same records; retry",
        ))
    }

    /// Adds an admin action to the audit log (inside the same commit as the action).
    fn audit(
        &self,
        tx: &mut Tx,
        who: &Principal,
        source: Option<std::net::IpAddr>,
        action: &str,
        target: &str,
        detail: Value,
    ) -> Result<(), ApiError> {
        let actor = match who {
            Principal::Admin { kid } => kid.clone(),
            Principal::Tenant { kid, .. } => kid.clone(),
            Principal::Server { server_id } => server_id.clone(),
        };
        let e = AuditEntry {
            id: new_id("ev"),
            at: now(),
            actor,
            source: source.map(|a| a.to_string()),
            action: action.into(),
            target: target.into(),
            detail: if detail.is_null() {
                String::new()
            } else {
                detail.to_string()
            },
        };
        tx.put(&layout::audit(&e.id), &e)?;
        Ok(())
    }

    pub fn handle(&self, req: &Request) -> Response {
        let resp = self.handle_inner(req);
        self.metrics
            .observe(&req.method, resp.route.unwrap_or("unmatched"), resp.status);
        resp
    }

    fn handle_inner(&self, req: &Request) -> Response {
        let (route, params) = match match_route(&req.method, &req.path) {
            Ok(r) => r,
            Err(Some(allowed)) => {
                let mut e = ApiError::new(405, "method_not_allowed", "method not allowed");
                e.headers.push(("Allow", allowed.join(", ")));
                return error_response(None, &e);
            }
            Err(None) => return error_response(None, &ApiError::not_found("route")),
        };
        match route {
            "/" => return static_response(route, "text/html; charset=utf-8", INDEX_HTML),
            "/ui/{file}" => {
                return match params.first().map(String::as_str) {
                    Some("app.js") => static_response(route, "text/javascript; charset=utf-8", APP_JS),
                    Some("style.css") => static_response(route, "text/css; charset=utf-8", STYLE_CSS),
                    _ => error_response(Some(route), &ApiError::not_found("file")),
                }
            }
            "/metrics" => {
                let gauges = self.fresh_gauges();
                let body = self.metrics.render(&gauges);
                return Response {
                    status: 200,
                    content_type: "text/plain; version=0.0.4",
                    body: body.into(),
                    route: Some(route),
                    headers: vec![],
                };
            }
            _ => {}
        }
        match self.dispatch(req, route, &params) {
            Ok((status, body)) => Response {
                status,
                content_type: "application/json",
                body: serde_json::to_vec(&body).unwrap_or_default(),
                route: Some(route),
                headers: vec![],
            },
            Err(e) => error_response(Some(route), &e),
        }
    }

    fn dispatch(&self, req: &Request, route: &'static str, p: &[String]) -> ApiResult {
        let q = query_map(&req.query);
        let param = |i: usize| p.get(i).map(String::as_str).unwrap_or("");
        match (req.method.as_str(), route) {
            ("GET", "/v1/health") => Ok((
                200,
                json!({"status": "ok", "version": env!("CARGO_PKG_VERSION"), "store": self.db.backend(),
                       "schema_version": layout::SCHEMA_VERSION}),
            )),
            ("GET", "/v1/public-key") => Ok((200, self.keys.public_set())),
            ("POST", "/v1/auth/token") => self.token(req),
            ("POST", "/v1/servers") => self.register(req),
            _ => {
                let who = self.authenticate(req.authorization.as_deref(), req.remote)?;
                let body = &req.body;
                match (req.method.as_str(), route) {
                    ("GET", "/v1/me") => self.me(&who),
                    ("GET", "/v1/tenants") => self.list_tenants(&who, &q),
                    ("POST", "/v1/tenants") => self.create_tenant(&who, req),
                    ("GET", "/v1/tenants/{tenant_id}") => self.get_tenant(&who, param(0)),
                    ("PATCH", "/v1/tenants/{tenant_id}") => self.patch_tenant(&who, param(0), req),
                    ("DELETE", "/v1/tenants/{tenant_id}") => self.delete_tenant(&who, param(0), req),
                    ("GET", "/v1/tenants/{tenant_id}/keys") => self.list_keys(&who, param(0), &q),
                    ("POST", "/v1/tenants/{tenant_id}/keys") => self.create_key(&who, param(0), req),
                    ("POST", "/v1/admin-keys") => self.create_admin_key(&who, req),
                    ("POST", "/v1/keys/{key_id}/rotate") => self.rotate_key(&who, param(0), req),
                    ("DELETE", "/v1/keys/{key_id}") => self.revoke_key(&who, param(0), req),
                    ("GET", "/v1/servers") => self.list_servers(&who, &q),
                    ("GET", "/v1/servers/{server_id}") => self.get_server(&who, param(0)),
                    ("DELETE", "/v1/servers/{server_id}") => self.delete_server(&who, param(0), req),
                    ("POST", "/v1/servers/{server_id}/heartbeat") => self.heartbeat(&who, param(0), body),
                    ("GET", "/v1/gpus") => self.list_gpus(&who, &q),
                    ("GET", "/v1/plans") => self.list_plans(&who, &q),
                    ("POST", "/v1/plans") => self.create_plan(&who, req),
                    ("DELETE", "/v1/plans/{plan_id}") => self.delete_plan(&who, param(0), req),
                    ("GET", "/v1/assignments") => self.list_assignments(&who, &q),
                    ("POST", "/v1/assignments") => self.create_assignment(&who, req),
                    ("PATCH", "/v1/assignments/{assignment_id}") => self.patch_assignment(&who, param(0), req),
                    ("DELETE", "/v1/assignments/{assignment_id}") => self.revoke_assignment(&who, param(0), req),
                    ("POST", "/v1/tickets") => self.ticket(&who, body),
                    ("GET", "/v1/sessions") => self.list_sessions(&who, &q),
                    ("DELETE", "/v1/sessions/{session_id}") => self.end_session(&who, param(0)),
                    ("GET", "/v1/usage") => self.usage(&who, &q),
                    ("POST", "/v1/usage") => self.report_usage(&who, body),
                    ("GET", "/v1/audit") => self.list_audit(&who, &q),
                    ("GET", "/v1/signing-keys") => {
                        Self::admin(&who)?;
                        Ok((200, self.keys.describe()))
                    }
                    ("POST", "/v1/signing-keys/rotate") => self.rotate_signing_key(&who, req),
                    _ => Err(ApiError::not_found("route")),
                }
            }
        }
    }

    // ---- helpers shared by the handler modules -------------------------------------------------------------

    fn admin(who: &Principal) -> Result<(), ApiError> {
        match who {
            Principal::Admin { .. } => Ok(()),
            _ => Err(ApiError::forbidden()),
        }
    }

    /// Admin, or the tenant itself. Another tenant gets "not found" so ids of others leak nothing.
    fn tenant_visible(who: &Principal, tenant_id: &str) -> Result<(), ApiError> {
        match who {
            Principal::Admin { .. } => Ok(()),
            Principal::Tenant { tenant_id: t, .. } if t == tenant_id => Ok(()),
            Principal::Tenant { .. } => Err(ApiError::not_found("tenant")),
            Principal::Server { .. } => Err(ApiError::forbidden()),
        }
    }

    fn tenant(&self, id: &str) -> Result<Tenant, ApiError> {
        self.db
            .get::<Tenant>(&layout::tenant(id))?
            .ok_or_else(|| ApiError::not_found("tenant"))
    }

    fn gpu(&self, uuid: &str) -> Result<Gpu, ApiError> {
        self.db
            .get::<Gpu>(&layout::gpu(uuid))?
            .ok_or_else(|| ApiError::not_found("gpu"))
    }

    /// Runs the periodic upkeep once: prunes a bounded batch of old sessions and end notices, refreshes the
    /// signing keys from their source (another replica may have rotated), and recomputes the gauges.
    pub fn maintain(&self) -> crate::prune::Pruned {
        use crate::prune;
        let n = now();
        let pruned = prune::prune(&self.db, n, self.cfg.session_retention_s).unwrap_or_default();
        {
            let mut c = self.sweeps.lock().unwrap_or_else(|p| p.into_inner());
            c.0 = prune::sweep(&self.db, n, self.cfg.auth_window_s, "fail/", c.0.take()).unwrap_or(None);
            c.1 = prune::sweep(&self.db, n, 0, "urep/", c.1.take()).unwrap_or(None);
        }
        let _ = self.keys.reload(&self.db);
        pruned
    }

    /// The gauges, recomputed (bounded counts) when the cached ones are more than a second old.
    fn fresh_gauges(&self) -> Vec<Gauge> {
        let due = {
            let g = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
            g.1.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1))
        };
        if due {
            let gauges = crate::prune::gauges(&self.db, now(), self.cfg.heartbeat_timeout_s);
            *self.gauges.lock().unwrap_or_else(|p| p.into_inner()) = (gauges, Some(std::time::Instant::now()));
        }
        self.gauges.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
    }
}

fn static_response(route: &'static str, ct: &'static str, body: &str) -> Response {
    Response {
        status: 200,
        content_type: ct,
        body: body.as_bytes().to_vec(),
        route: Some(route),
        headers: vec![],
    }
}

fn error_response(route: Option<&'static str>, e: &ApiError) -> Response {
    let body = json!({"error": {"code": e.code, "message": e.message}});
    Response {
        status: e.status,
        content_type: "application/json",
        body: serde_json::to_vec(&body).unwrap_or_default(),
        route,
        headers: e.headers.clone(),
    }
}
