//! The REST API as a plain synchronous `Request -> Response` function: routing, authentication, every handler.
//! `server.rs` puts it behind warp; tests call `App::handle` directly, so they need no sockets.

use crate::auth::{self, key_id_of, new_api_key, new_id, now, Signer};
use crate::metrics::Metrics;
use crate::model::*;
use crate::store::{Db, KvStore, StoreError, Tx};
use crate::ticket::{TicketClaims, TicketGpu, TICKET_TYP};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
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
    ("POST", "/v1/keys/{key_id}/rotate"),
    ("DELETE", "/v1/keys/{key_id}"),
    ("GET", "/v1/servers"),
    ("POST", "/v1/servers"),
    ("GET", "/v1/servers/{server_id}"),
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
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/ui/{file}"),
];

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Raw query string without the `?`.
    pub query: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Template of the route that answered, for metrics and the OpenAPI test.
    pub route: Option<&'static str>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
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
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::new(500, "storage_error", e.to_string())
    }
}

type ApiResult = Result<(u16, Value), ApiError>;

/// Lifetimes and thresholds; tests shorten them.
#[derive(Debug, Clone)]
pub struct Config {
    pub access_ttl_s: u64,
    pub ticket_ttl_s: u64,
    pub server_token_ttl_s: u64,
    /// A server with no heartbeat for this long shows as offline.
    pub heartbeat_timeout_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            access_ttl_s: 900,
            ticket_ttl_s: 3600,
            server_token_ttl_s: 365 * 86400,
            heartbeat_timeout_s: 30,
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

#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Admin { kid: String },
    Tenant { tenant_id: String, kid: String },
    Server { server_id: String },
}

pub struct App {
    db: Db,
    signer: Signer,
    cfg: Config,
    // Handlers read, check and write several records; one writer at a time keeps those checks (GPU capacity,
    // uniqueness) consistent. The control plane is far from write-bound.
    write_lock: Mutex<()>,
    pub metrics: Metrics,
}

fn de<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}").map_err(|e| ApiError::bad(format!("request body: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("request body: {e}")))
}

fn query_map(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

fn query_u64(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad(format!("query parameter {name} must be an integer"))),
    }
}

fn match_route(method: &str, path: &str) -> Result<(&'static str, Vec<String>), u16> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut path_matched = false;
    for (m, tpl) in ROUTES {
        let tsegs: Vec<&str> = tpl.trim_end_matches('/').split('/').collect();
        if tsegs.len() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        let ok = tsegs.iter().zip(&segs).all(|(t, s)| {
            if t.starts_with('{') {
                params.push((*s).to_string());
                !s.is_empty()
            } else {
                t == s
            }
        });
        if ok {
            path_matched = true;
            if *m == method {
                return Ok((tpl, params));
            }
        }
    }
    Err(if path_matched { 405 } else { 404 })
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
        Err(ApiError::bad(format!("{what} must be a non-negative number")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenReq {
    api_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantCreate {
    name: String,
    plan_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    name: Option<String>,
    /// An empty string clears the plan.
    plan_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeyCreate {
    #[serde(default)]
    label: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterReq {
    name: String,
    address: String,
    node_token: String,
    #[serde(default)]
    gpus: Vec<GpuReport>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatReq {
    /// Absent: inventory unchanged since the last report.
    #[serde(default)]
    gpus: Option<Vec<GpuReport>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanCreate {
    name: String,
    #[serde(default)]
    currency: Option<String>,
    rates: Vec<Rate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignCreate {
    tenant_id: String,
    gpu_uuid: String,
    memory_limit_mib: Option<u64>,
    compute_share: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignPatch {
    gpu_uuid: Option<String>,
    memory_limit_mib: Option<u64>,
    compute_share: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageReport {
    records: Vec<UsageSample>,
}

fn ser<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl App {
    /// Opens the control plane over a store: loads or creates the signing key, the admin key and the node token.
    pub fn open(kv: Box<dyn KvStore>, cfg: Config, boot: Bootstrap) -> Result<(App, Bootstrapped), String> {
        let db = Db::open(kv).map_err(|e| e.to_string())?;
        let mut out = Bootstrapped::default();
        let mut tx = Tx::default();
        let signer = match db.get::<String>("meta/signing_key").map_err(|e| e.to_string())? {
            Some(pem) => Signer::from_private_pem(&pem)?,
            None => {
                let s = Signer::generate()?;
                tx.put("meta/signing_key", &s.private_pem())
                    .map_err(|e| e.to_string())?;
                s
            }
        };
        let admin_ids: Vec<KeyRecord> = db.list::<KeyRecord>("key/").map_err(|e| e.to_string())?;
        let has_admin = admin_ids
            .iter()
            .any(|k| k.role == Role::Admin && k.revoked_at.is_none());
        let install_admin = |key: &str, tx: &mut Tx| -> Result<(), String> {
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
            tx.put(&format!("key/{id}"), &rec).map_err(|e| e.to_string())
        };
        match &boot.admin_key {
            Some(k) => {
                let id = key_id_of(k).ok_or("admin key must look like vgpu_<id>_<secret of 16+ characters>")?;
                let known = admin_ids.iter().any(|r| r.id == id && auth::verify_secret(k, &r.hash));
                if !known {
                    install_admin(k, &mut tx)?;
                }
            }
            None if !has_admin => {
                let (_, key) = new_api_key();
                install_admin(&key, &mut tx)?;
                out.new_admin_key = Some(key);
            }
            None => {}
        }
        let stored_node = db.get::<String>("meta/node_token_hash").map_err(|e| e.to_string())?;
        match (&boot.node_token, &stored_node) {
            (Some(t), Some(h)) if auth::verify_secret(t, h) => {}
            (Some(t), _) => tx
                .put("meta/node_token_hash", &auth::hash_secret(t)?)
                .map_err(|e| e.to_string())?,
            (None, Some(_)) => {}
            (None, None) => {
                let t = format!("vgpun_{}", new_api_key().1.trim_start_matches("vgpu_"));
                tx.put("meta/node_token_hash", &auth::hash_secret(&t)?)
                    .map_err(|e| e.to_string())?;
                out.new_node_token = Some(t);
            }
        }
        db.commit(tx).map_err(|e| e.to_string())?;
        Ok((
            App {
                db,
                signer,
                cfg,
                write_lock: Mutex::new(()),
                metrics: Metrics::default(),
            },
            out,
        ))
    }

    pub fn public_key_pem(&self) -> &str {
        self.signer.public_pem()
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
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
            Err(405) => return error_response(None, &ApiError::new(405, "method_not_allowed", "method not allowed")),
            Err(_) => return error_response(None, &ApiError::not_found("route")),
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
                let body = self.metrics.render(&self.gauges());
                return Response {
                    status: 200,
                    content_type: "text/plain; version=0.0.4",
                    body: body.into(),
                    route: Some(route),
                };
            }
            _ => {}
        }
        // Serialize writers; reads go in parallel.
        let _guard = if req.method != "GET" {
            Some(self.write_lock.lock().unwrap_or_else(|p| p.into_inner()))
        } else {
            None
        };
        let result = self.dispatch(req, route, &params);
        match result {
            Ok((status, body)) => Response {
                status,
                content_type: "application/json",
                body: serde_json::to_vec(&body).unwrap_or_default(),
                route: Some(route),
            },
            Err(e) => error_response(Some(route), &e),
        }
    }

    fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        let n = now();
        let count = |p: &str| self.db.list::<Value>(p).map(|v| v.len() as f64).unwrap_or(0.0);
        let sessions = self.db.list::<Session>("session/").unwrap_or_default();
        let active = sessions.iter().filter(|s| s.status(n) == "active").count() as f64;
        let servers = self.db.list::<Server>("server/").unwrap_or_default();
        let online = servers.iter().filter(|s| self.online(s, n)).count() as f64;
        vec![
            ("vgpu_control_tenants", "Tenants in the store.", count("tenant/")),
            ("vgpu_control_servers", "Registered GPU servers.", servers.len() as f64),
            (
                "vgpu_control_servers_online",
                "GPU servers with a recent heartbeat.",
                online,
            ),
            ("vgpu_control_gpus", "GPUs known to the control plane.", count("gpu/")),
            ("vgpu_control_assignments", "Active GPU assignments.", count("assign/")),
            ("vgpu_control_sessions_active", "Sessions whose ticket is live.", active),
        ]
    }

    fn online(&self, s: &Server, n: u64) -> bool {
        s.last_heartbeat_at
            .is_some_and(|t| n.saturating_sub(t) <= self.cfg.heartbeat_timeout_s)
    }

    /// Who is calling: an API key (`Bearer vgpu_...`), an access token, or a server token.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let h = authorization.ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
        let cred = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <key or token>`"))?
            .trim();
        if cred.starts_with("vgpu_") {
            let rec = self.check_api_key(cred)?;
            return Ok(match (rec.role, rec.tenant_id) {
                (Role::Admin, _) => Principal::Admin { kid: rec.id },
                (Role::Tenant, Some(t)) => Principal::Tenant {
                    tenant_id: t,
                    kid: rec.id,
                },
                (Role::Tenant, None) => return Err(ApiError::unauthorized("key has no tenant")),
            });
        }
        let c = self.signer.verify_access(cred).map_err(ApiError::unauthorized)?;
        match (c.typ.as_str(), c.role.as_str()) {
            (auth::SERVER_TYP, "server") => {
                // A deleted server's token stops working even before it expires.
                if self.db.get::<Server>(&format!("server/{}", c.sub))?.is_none() {
                    return Err(ApiError::unauthorized("server is not registered"));
                }
                Ok(Principal::Server { server_id: c.sub })
            }
            (auth::ACCESS_TYP, role) => {
                let kid = c.kid.ok_or_else(|| ApiError::unauthorized("token names no key"))?;
                let rec = self
                    .db
                    .get::<KeyRecord>(&format!("key/{kid}"))?
                    .ok_or_else(|| ApiError::unauthorized("key no longer exists"))?;
                if rec.revoked_at.is_some() {
                    return Err(ApiError::unauthorized("key revoked"));
                }
                match (role, rec.role, rec.tenant_id) {
                    ("admin", Role::Admin, _) => Ok(Principal::Admin { kid }),
                    ("tenant", Role::Tenant, Some(t)) if t == c.sub => Ok(Principal::Tenant { tenant_id: t, kid }),
                    _ => Err(ApiError::unauthorized("token does not match its key")),
                }
            }
            _ => Err(ApiError::unauthorized("not an access token")),
        }
    }

    fn check_api_key(&self, key: &str) -> Result<KeyRecord, ApiError> {
        let bad = || ApiError::unauthorized("invalid API key");
        let id = key_id_of(key).ok_or_else(bad)?;
        let rec = self.db.get::<KeyRecord>(&format!("key/{id}"))?.ok_or_else(bad)?;
        if !auth::verify_secret(key, &rec.hash) {
            return Err(bad());
        }
        if rec.revoked_at.is_some() {
            return Err(ApiError::unauthorized("key revoked"));
        }
        Ok(rec)
    }

    fn dispatch(&self, req: &Request, route: &'static str, p: &[String]) -> ApiResult {
        let q = query_map(&req.query);
        let param = |i: usize| p.get(i).map(String::as_str).unwrap_or("");
        match (req.method.as_str(), route) {
            ("GET", "/v1/health") => Ok((
                200,
                json!({"status": "ok", "version": env!("CARGO_PKG_VERSION"), "store": self.db.backend(),
                       "schema_version": self.db.schema_version()?}),
            )),
            ("GET", "/v1/public-key") => Ok((
                200,
                json!({"algorithm": "EdDSA", "public_key_pem": self.signer.public_pem()}),
            )),
            ("POST", "/v1/auth/token") => self.token(&req.body),
            ("POST", "/v1/servers") => self.register(&req.body),
            _ => {
                let who = self.authenticate(req.authorization.as_deref())?;
                match (req.method.as_str(), route) {
                    ("GET", "/v1/me") => self.me(&who),
                    ("GET", "/v1/tenants") => self.list_tenants(&who),
                    ("POST", "/v1/tenants") => self.create_tenant(&who, &req.body),
                    ("GET", "/v1/tenants/{tenant_id}") => self.get_tenant(&who, param(0)),
                    ("PATCH", "/v1/tenants/{tenant_id}") => self.patch_tenant(&who, param(0), &req.body),
                    ("DELETE", "/v1/tenants/{tenant_id}") => self.delete_tenant(&who, param(0)),
                    ("GET", "/v1/tenants/{tenant_id}/keys") => self.list_keys(&who, param(0)),
                    ("POST", "/v1/tenants/{tenant_id}/keys") => self.create_key(&who, param(0), &req.body),
                    ("POST", "/v1/keys/{key_id}/rotate") => self.rotate_key(&who, param(0)),
                    ("DELETE", "/v1/keys/{key_id}") => self.revoke_key(&who, param(0)),
                    ("GET", "/v1/servers") => self.list_servers(&who),
                    ("GET", "/v1/servers/{server_id}") => self.get_server(&who, param(0)),
                    ("POST", "/v1/servers/{server_id}/heartbeat") => self.heartbeat(&who, param(0), &req.body),
                    ("GET", "/v1/gpus") => self.list_gpus(&who),
                    ("GET", "/v1/plans") => self.list_plans(&who),
                    ("POST", "/v1/plans") => self.create_plan(&who, &req.body),
                    ("DELETE", "/v1/plans/{plan_id}") => self.delete_plan(&who, param(0)),
                    ("GET", "/v1/assignments") => self.list_assignments(&who, &q),
                    ("POST", "/v1/assignments") => self.create_assignment(&who, &req.body),
                    ("PATCH", "/v1/assignments/{assignment_id}") => self.patch_assignment(&who, param(0), &req.body),
                    ("DELETE", "/v1/assignments/{assignment_id}") => self.revoke_assignment(&who, param(0)),
                    ("POST", "/v1/tickets") => self.ticket(&who),
                    ("GET", "/v1/sessions") => self.list_sessions(&who, &q),
                    ("DELETE", "/v1/sessions/{session_id}") => self.end_session(&who, param(0)),
                    ("GET", "/v1/usage") => self.usage(&who, &q),
                    ("POST", "/v1/usage") => self.report_usage(&who, &req.body),
                    _ => Err(ApiError::not_found("route")),
                }
            }
        }
    }

    // ---- helpers -------------------------------------------------------------------------------------------

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
            .get::<Tenant>(&format!("tenant/{id}"))?
            .ok_or_else(|| ApiError::not_found("tenant"))
    }

    fn gpu(&self, uuid: &str) -> Result<Gpu, ApiError> {
        self.db
            .get::<Gpu>(&format!("gpu/{uuid}"))?
            .ok_or_else(|| ApiError::not_found("gpu"))
    }

    fn server_view(&self, s: &Server) -> Result<Value, ApiError> {
        let n = now();
        let mut gpus = Vec::new();
        for u in &s.gpu_uuids {
            if let Some(g) = self.db.get::<Gpu>(&format!("gpu/{u}"))? {
                gpus.push(ser(&g));
            }
        }
        let mut v = ser(s);
        v["status"] = json!(if self.online(s, n) { "online" } else { "offline" });
        v["gpus"] = Value::Array(gpus);
        Ok(v)
    }

    fn session_view(s: &Session) -> Value {
        let mut v = ser(s);
        v["status"] = json!(s.status(now()));
        v
    }

    /// Ends a tenant's live sessions that use `gpu_uuid` (all GPUs when `None`).
    fn end_sessions_on(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        gpu_uuid: Option<&str>,
        reason: &str,
    ) -> Result<(), ApiError> {
        let n = now();
        for mut s in self.db.list::<Session>("session/")? {
            if s.tenant_id == tenant_id
                && s.status(n) == "active"
                && gpu_uuid.is_none_or(|g| s.gpu_uuids.iter().any(|u| u == g))
            {
                s.ended_at = Some(n);
                s.end_reason = Some(reason.into());
                tx.put(&format!("session/{}", s.id), &s)?;
            }
        }
        Ok(())
    }

    // ---- auth ----------------------------------------------------------------------------------------------

    fn token(&self, body: &[u8]) -> ApiResult {
        let r: TokenReq = de(body)?;
        let rec = self.check_api_key(r.api_key.trim())?;
        let sub = rec.tenant_id.clone().unwrap_or_else(|| "admin".into());
        let (token, exp) = self
            .signer
            .access_token(rec.role, &sub, &rec.id, self.cfg.access_ttl_s)
            .map_err(|e| ApiError::new(500, "internal", e))?;
        Ok((
            200,
            json!({"token": token, "token_type": "Bearer", "expires_at": exp, "role": rec.role, "tenant_id": rec.tenant_id}),
        ))
    }

    fn me(&self, who: &Principal) -> ApiResult {
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

    // ---- tenants and keys ----------------------------------------------------------------------------------

    fn list_tenants(&self, who: &Principal) -> ApiResult {
        let tenants: Vec<Tenant> = match who {
            Principal::Admin { .. } => self.db.list("tenant/")?,
            Principal::Tenant { tenant_id, .. } => vec![self.tenant(tenant_id)?],
            Principal::Server { .. } => return Err(ApiError::forbidden()),
        };
        Ok((200, json!({ "tenants": tenants })))
    }

    fn check_plan(&self, plan_id: &Option<String>) -> Result<Option<String>, ApiError> {
        match plan_id.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(p) => {
                if self.db.get::<Plan>(&format!("plan/{p}"))?.is_none() {
                    return Err(ApiError::bad(format!("no plan {p}")));
                }
                Ok(Some(p.to_string()))
            }
        }
    }

    fn create_tenant(&self, who: &Principal, body: &[u8]) -> ApiResult {
        Self::admin(who)?;
        let r: TenantCreate = de(body)?;
        let name = check_name(&r.name, "name")?;
        if self.db.list::<Tenant>("tenant/")?.iter().any(|t| t.name == name) {
            return Err(ApiError::conflict(
                "name_taken",
                format!("a tenant named {name} exists"),
            ));
        }
        let t = Tenant {
            id: new_id("t"),
            name,
            plan_id: self.check_plan(&r.plan_id)?,
            created_at: now(),
        };
        let mut tx = Tx::default();
        tx.put(&format!("tenant/{}", t.id), &t)?;
        self.db.commit(tx)?;
        Ok((201, ser(&t)))
    }

    fn get_tenant(&self, who: &Principal, id: &str) -> ApiResult {
        Self::tenant_visible(who, id)?;
        Ok((200, ser(&self.tenant(id)?)))
    }

    fn patch_tenant(&self, who: &Principal, id: &str, body: &[u8]) -> ApiResult {
        Self::admin(who)?;
        let r: TenantPatch = de(body)?;
        let mut t = self.tenant(id)?;
        if let Some(n) = r.name {
            t.name = check_name(&n, "name")?;
        }
        if r.plan_id.is_some() {
            t.plan_id = self.check_plan(&r.plan_id)?;
        }
        let mut tx = Tx::default();
        tx.put(&format!("tenant/{id}"), &t)?;
        self.db.commit(tx)?;
        Ok((200, ser(&t)))
    }

    fn delete_tenant(&self, who: &Principal, id: &str) -> ApiResult {
        Self::admin(who)?;
        let t = self.tenant(id)?;
        let mut tx = Tx::default();
        let n = now();
        for mut k in self.db.list::<KeyRecord>("key/")? {
            if k.tenant_id.as_deref() == Some(id) && k.revoked_at.is_none() {
                k.revoked_at = Some(n);
                tx.put(&format!("key/{}", k.id), &k)?;
            }
        }
        for a in self.db.list::<Assignment>("assign/")? {
            if a.tenant_id == id {
                tx.delete(&format!("assign/{}", a.id));
            }
        }
        self.end_sessions_on(&mut tx, id, None, "tenant deleted")?;
        tx.delete(&format!("tenant/{id}"));
        self.db.commit(tx)?;
        Ok((200, ser(&t)))
    }

    fn list_keys(&self, who: &Principal, tenant_id: &str) -> ApiResult {
        Self::tenant_visible(who, tenant_id)?;
        self.tenant(tenant_id)?;
        let keys: Vec<KeyInfo> = self
            .db
            .list::<KeyRecord>("key/")?
            .iter()
            .filter(|k| k.tenant_id.as_deref() == Some(tenant_id))
            .map(KeyRecord::info)
            .collect();
        Ok((200, json!({ "keys": keys })))
    }

    fn new_key(
        &self,
        tx: &mut Tx,
        tenant_id: Option<String>,
        role: Role,
        label: String,
    ) -> Result<(KeyRecord, String), ApiError> {
        let (id, secret) = new_api_key();
        let hash = auth::hash_secret(&secret).map_err(|e| ApiError::new(500, "internal", e))?;
        let rec = KeyRecord {
            id,
            tenant_id,
            role,
            label,
            hash,
            created_at: now(),
            revoked_at: None,
        };
        tx.put(&format!("key/{}", rec.id), &rec)?;
        Ok((rec, secret))
    }

    fn create_key(&self, who: &Principal, tenant_id: &str, body: &[u8]) -> ApiResult {
        Self::admin(who)?;
        let r: KeyCreate = de(body)?;
        self.tenant(tenant_id)?;
        let label = match r.label {
            Some(l) if !l.trim().is_empty() => check_name(&l, "label")?,
            _ => "default".into(),
        };
        let mut tx = Tx::default();
        let (rec, secret) = self.new_key(&mut tx, Some(tenant_id.into()), Role::Tenant, label)?;
        self.db.commit(tx)?;
        Ok((201, json!({"key": rec.info(), "secret": secret})))
    }

    /// The key, if `who` may manage it (admin, or the key's own tenant); others get "not found".
    fn owned_key(&self, who: &Principal, key_id: &str) -> Result<KeyRecord, ApiError> {
        let rec = self
            .db
            .get::<KeyRecord>(&format!("key/{key_id}"))?
            .ok_or_else(|| ApiError::not_found("key"))?;
        let ok = match who {
            Principal::Admin { .. } => true,
            Principal::Tenant { tenant_id, .. } => rec.tenant_id.as_deref() == Some(tenant_id),
            Principal::Server { .. } => false,
        };
        if ok {
            Ok(rec)
        } else {
            Err(ApiError::not_found("key"))
        }
    }

    fn rotate_key(&self, who: &Principal, key_id: &str) -> ApiResult {
        let mut old = self.owned_key(who, key_id)?;
        if old.revoked_at.is_some() {
            return Err(ApiError::conflict("key_revoked", "key is already revoked"));
        }
        let mut tx = Tx::default();
        old.revoked_at = Some(now());
        tx.put(&format!("key/{}", old.id), &old)?;
        let (rec, secret) = self.new_key(&mut tx, old.tenant_id.clone(), old.role, old.label.clone())?;
        self.db.commit(tx)?;
        Ok((
            201,
            json!({"key": rec.info(), "secret": secret, "revoked_key_id": old.id}),
        ))
    }

    fn revoke_key(&self, who: &Principal, key_id: &str) -> ApiResult {
        let mut k = self.owned_key(who, key_id)?;
        if k.role == Role::Admin {
            let live_admins = self
                .db
                .list::<KeyRecord>("key/")?
                .iter()
                .filter(|r| r.role == Role::Admin && r.revoked_at.is_none())
                .count();
            if live_admins <= 1 && k.revoked_at.is_none() {
                return Err(ApiError::conflict(
                    "last_admin_key",
                    "cannot revoke the last admin key; rotate it instead",
                ));
            }
        }
        if k.revoked_at.is_none() {
            k.revoked_at = Some(now());
            let mut tx = Tx::default();
            tx.put(&format!("key/{}", k.id), &k)?;
            self.db.commit(tx)?;
        }
        Ok((200, ser(&k.info())))
    }

    // ---- servers and GPUs ----------------------------------------------------------------------------------

    fn upsert_gpus(&self, tx: &mut Tx, server_id: &str, gpus: &[GpuReport]) -> Result<Vec<String>, ApiError> {
        let n = now();
        let mut uuids = Vec::new();
        for g in gpus {
            let uuid = check_name(&g.uuid, "gpu uuid")?;
            if uuid.contains('/') {
                return Err(ApiError::bad("gpu uuid must not contain '/'"));
            }
            if !(0.0..=100.0).contains(&g.utilization_pct) {
                return Err(ApiError::bad("utilization_pct must be between 0 and 100"));
            }
            let name = check_name(&g.name, "gpu name")?;
            let model = match &g.model {
                Some(m) if !m.trim().is_empty() => check_name(m, "gpu model")?,
                _ => name.clone(),
            };
            let rec = Gpu {
                uuid: uuid.clone(),
                server_id: server_id.into(),
                index: g.index,
                name,
                model,
                memory_total_mib: g.memory_total_mib,
                memory_used_mib: g.memory_used_mib.min(g.memory_total_mib),
                utilization_pct: g.utilization_pct,
                updated_at: n,
            };
            tx.put(&format!("gpu/{uuid}"), &rec)?;
            uuids.push(uuid);
        }
        // A GPU the server no longer reports disappears, unless a tenant holds it: then its record stays so the
        // assignment still shows (as on an offline server) until an admin moves or revokes it.
        let assigned: Vec<String> = self
            .db
            .list::<Assignment>("assign/")?
            .into_iter()
            .map(|a| a.gpu_uuid)
            .collect();
        for old in self.db.list::<Gpu>("gpu/")? {
            if old.server_id == server_id && !uuids.contains(&old.uuid) && !assigned.contains(&old.uuid) {
                tx.delete(&format!("gpu/{}", old.uuid));
            }
        }
        Ok(uuids)
    }

    fn register(&self, body: &[u8]) -> ApiResult {
        let r: RegisterReq = de(body)?;
        let hash = self.db.get::<String>("meta/node_token_hash")?.unwrap_or_default();
        if !auth::verify_secret(&r.node_token, &hash) {
            return Err(ApiError::unauthorized("invalid node token"));
        }
        let name = check_name(&r.name, "name")?;
        let address = check_name(&r.address, "address")?;
        let existing = self.db.list::<Server>("server/")?.into_iter().find(|s| s.name == name);
        let n = now();
        let mut s = existing.unwrap_or(Server {
            id: new_id("s"),
            name,
            address: address.clone(),
            registered_at: n,
            last_heartbeat_at: None,
            gpu_uuids: vec![],
        });
        let mut tx = Tx::default();
        s.address = address;
        s.gpu_uuids = self.upsert_gpus(&mut tx, &s.id, &r.gpus)?;
        s.last_heartbeat_at = Some(n);
        tx.put(&format!("server/{}", s.id), &s)?;
        let token = self
            .signer
            .server_token(&s.id, self.cfg.server_token_ttl_s)
            .map_err(|e| ApiError::new(500, "internal", e))?;
        self.db.commit(tx)?;
        Ok((201, json!({"server": self.server_view(&s)?, "server_token": token})))
    }

    fn heartbeat(&self, who: &Principal, id: &str, body: &[u8]) -> ApiResult {
        match who {
            Principal::Server { server_id } if server_id == id => {}
            Principal::Server { .. } => return Err(ApiError::forbidden()),
            _ => return Err(ApiError::forbidden()),
        }
        let r: HeartbeatReq = de(body)?;
        let mut s = self
            .db
            .get::<Server>(&format!("server/{id}"))?
            .ok_or_else(|| ApiError::not_found("server"))?;
        let n = now();
        let mut tx = Tx::default();
        if let Some(gpus) = &r.gpus {
            s.gpu_uuids = self.upsert_gpus(&mut tx, id, gpus)?;
        }
        s.last_heartbeat_at = Some(n);
        tx.put(&format!("server/{id}"), &s)?;
        self.db.commit(tx)?;
        // Sessions ended from the control plane (revocations, admin action) in the last ten minutes that touch
        // this server's GPUs: the server ends them; repeating an id is harmless.
        let end: Vec<String> = self
            .db
            .list::<Session>("session/")?
            .into_iter()
            .filter(|x| {
                x.ended_at.is_some_and(|t| n.saturating_sub(t) < 600)
                    && x.end_reason.as_deref() != Some("closed by server")
                    && x.gpu_uuids.iter().any(|g| s.gpu_uuids.contains(g))
            })
            .map(|x| x.id)
            .collect();
        Ok((200, json!({"server": self.server_view(&s)?, "end_sessions": end})))
    }

    fn list_servers(&self, who: &Principal) -> ApiResult {
        Self::admin(who)?;
        let mut out = Vec::new();
        for s in self.db.list::<Server>("server/")? {
            out.push(self.server_view(&s)?);
        }
        Ok((200, json!({ "servers": out })))
    }

    fn get_server(&self, who: &Principal, id: &str) -> ApiResult {
        match who {
            Principal::Admin { .. } => {}
            Principal::Server { server_id } if server_id == id => {}
            _ => return Err(ApiError::forbidden()),
        }
        let s = self
            .db
            .get::<Server>(&format!("server/{id}"))?
            .ok_or_else(|| ApiError::not_found("server"))?;
        Ok((200, self.server_view(&s)?))
    }

    fn list_gpus(&self, who: &Principal) -> ApiResult {
        let n = now();
        let assigns = self.db.list::<Assignment>("assign/")?;
        let servers: BTreeMap<String, Server> = self
            .db
            .list::<Server>("server/")?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let mine = |a: &Assignment| match who {
            Principal::Admin { .. } => true,
            Principal::Tenant { tenant_id, .. } => &a.tenant_id == tenant_id,
            Principal::Server { .. } => false,
        };
        if matches!(who, Principal::Server { .. }) {
            return Err(ApiError::forbidden());
        }
        let mut out = Vec::new();
        for g in self.db.list::<Gpu>("gpu/")? {
            let on: Vec<&Assignment> = assigns.iter().filter(|a| a.gpu_uuid == g.uuid && mine(a)).collect();
            if !matches!(who, Principal::Admin { .. }) && on.is_empty() {
                continue;
            }
            let server = servers.get(&g.server_id);
            let mut v = ser(&g);
            v["server_name"] = json!(server.map(|s| s.name.clone()).unwrap_or_default());
            v["online"] = json!(server.is_some_and(|s| self.online(s, n)));
            v["assigned_memory_mib"] = json!(on.iter().map(|a| a.memory_limit_mib).sum::<u64>());
            v["assigned_share"] = json!(on.iter().map(|a| a.compute_share).sum::<f64>());
            out.push(v);
        }
        Ok((200, json!({ "gpus": out })))
    }

    // ---- plans ---------------------------------------------------------------------------------------------

    fn list_plans(&self, who: &Principal) -> ApiResult {
        if matches!(who, Principal::Server { .. }) {
            return Err(ApiError::forbidden());
        }
        Ok((200, json!({ "plans": self.db.list::<Plan>("plan/")? })))
    }

    fn create_plan(&self, who: &Principal, body: &[u8]) -> ApiResult {
        Self::admin(who)?;
        let r: PlanCreate = de(body)?;
        let name = check_name(&r.name, "name")?;
        let currency = check_name(r.currency.as_deref().unwrap_or("USD"), "currency")?;
        if r.rates.is_empty() {
            return Err(ApiError::bad("a plan needs at least one rate"));
        }
        let mut rates = Vec::new();
        for rate in r.rates {
            rates.push(Rate {
                gpu_model: check_name(&rate.gpu_model, "gpu_model")?,
                per_gpu_hour: finite_nonneg(rate.per_gpu_hour, "per_gpu_hour")?,
                per_gib_hour: finite_nonneg(rate.per_gib_hour, "per_gib_hour")?,
            });
        }
        let p = Plan {
            id: new_id("p"),
            name,
            currency,
            rates,
            created_at: now(),
        };
        let mut tx = Tx::default();
        tx.put(&format!("plan/{}", p.id), &p)?;
        self.db.commit(tx)?;
        Ok((201, ser(&p)))
    }

    fn delete_plan(&self, who: &Principal, id: &str) -> ApiResult {
        Self::admin(who)?;
        let p = self
            .db
            .get::<Plan>(&format!("plan/{id}"))?
            .ok_or_else(|| ApiError::not_found("plan"))?;
        if self
            .db
            .list::<Tenant>("tenant/")?
            .iter()
            .any(|t| t.plan_id.as_deref() == Some(id))
        {
            return Err(ApiError::conflict("plan_in_use", "tenants are on this plan"));
        }
        let mut tx = Tx::default();
        tx.delete(&format!("plan/{id}"));
        self.db.commit(tx)?;
        Ok((200, ser(&p)))
    }

    // ---- assignments ---------------------------------------------------------------------------------------

    fn list_assignments(&self, who: &Principal, q: &HashMap<String, String>) -> ApiResult {
        let filter_tenant = match who {
            Principal::Admin { .. } => q.get("tenant_id").cloned(),
            Principal::Tenant { tenant_id, .. } => Some(tenant_id.clone()),
            Principal::Server { .. } => return Err(ApiError::forbidden()),
        };
        let list: Vec<Assignment> = self
            .db
            .list::<Assignment>("assign/")?
            .into_iter()
            .filter(|a| filter_tenant.as_ref().is_none_or(|t| &a.tenant_id == t))
            .filter(|a| q.get("gpu_uuid").is_none_or(|g| &a.gpu_uuid == g))
            .collect();
        Ok((200, json!({ "assignments": list })))
    }

    /// Resolves defaults and checks the slice fits the GPU next to its other assignments (`skip` is the
    /// assignment being changed).
    fn fit(&self, gpu: &Gpu, mem: Option<u64>, share: Option<f64>, skip: Option<&str>) -> Result<(u64, f64), ApiError> {
        let total = gpu.memory_total_mib;
        let (mem, share) = match (mem, share) {
            (None, None) => (total, 1.0),
            (Some(m), None) => (
                m,
                if total > 0 {
                    (m as f64 / total as f64).min(1.0)
                } else {
                    1.0
                },
            ),
            (None, Some(s)) => ((total as f64 * s).floor() as u64, s),
            (Some(m), Some(s)) => (m, s),
        };
        if !(share.is_finite() && share > 0.0 && share <= 1.0) {
            return Err(ApiError::bad("compute_share must be in (0, 1]"));
        }
        if mem == 0 || mem > total {
            return Err(ApiError::bad(format!(
                "memory_limit_mib must be between 1 and the GPU's {total} MiB"
            )));
        }
        let others: Vec<Assignment> = self
            .db
            .list::<Assignment>("assign/")?
            .into_iter()
            .filter(|a| a.gpu_uuid == gpu.uuid && Some(a.id.as_str()) != skip)
            .collect();
        let used_mem: u64 = others.iter().map(|a| a.memory_limit_mib).sum();
        let used_share: f64 = others.iter().map(|a| a.compute_share).sum();
        if used_mem + mem > total || used_share + share > 1.0 + 1e-9 {
            return Err(ApiError::conflict(
                "gpu_capacity",
                format!(
                    "GPU {} has {} MiB and {:.2} of its compute left",
                    gpu.uuid,
                    total.saturating_sub(used_mem),
                    (1.0 - used_share).max(0.0)
                ),
            ));
        }
        Ok((mem, share))
    }

    fn create_assignment(&self, who: &Principal, body: &[u8]) -> ApiResult {
        Self::admin(who)?;
        let r: AssignCreate = de(body)?;
        self.tenant(&r.tenant_id)?;
        let gpu = self.gpu(&r.gpu_uuid)?;
        if self
            .db
            .list::<Assignment>("assign/")?
            .iter()
            .any(|a| a.tenant_id == r.tenant_id && a.gpu_uuid == gpu.uuid)
        {
            return Err(ApiError::conflict(
                "already_assigned",
                "the tenant already has this GPU; change that assignment",
            ));
        }
        let (mem, share) = self.fit(&gpu, r.memory_limit_mib, r.compute_share, None)?;
        let n = now();
        let a = Assignment {
            id: new_id("a"),
            tenant_id: r.tenant_id,
            gpu_uuid: gpu.uuid,
            memory_limit_mib: mem,
            compute_share: share,
            created_at: n,
            updated_at: n,
        };
        let mut tx = Tx::default();
        tx.put(&format!("assign/{}", a.id), &a)?;
        self.db.commit(tx)?;
        Ok((201, ser(&a)))
    }

    fn patch_assignment(&self, who: &Principal, id: &str, body: &[u8]) -> ApiResult {
        Self::admin(who)?;
        let r: AssignPatch = de(body)?;
        let mut a = self
            .db
            .get::<Assignment>(&format!("assign/{id}"))?
            .ok_or_else(|| ApiError::not_found("assignment"))?;
        let old_gpu = a.gpu_uuid.clone();
        let gpu = self.gpu(r.gpu_uuid.as_deref().unwrap_or(&a.gpu_uuid))?;
        let moved = gpu.uuid != old_gpu;
        if moved
            && self
                .db
                .list::<Assignment>("assign/")?
                .iter()
                .any(|x| x.tenant_id == a.tenant_id && x.gpu_uuid == gpu.uuid)
        {
            return Err(ApiError::conflict(
                "already_assigned",
                "the tenant already has that GPU",
            ));
        }
        // A move with no new sizes keeps the share and takes as much memory as before, capped by the new GPU.
        let mem = r.memory_limit_mib.or(if moved {
            Some(a.memory_limit_mib.min(gpu.memory_total_mib))
        } else {
            Some(a.memory_limit_mib)
        });
        let share = r.compute_share.or(Some(a.compute_share));
        let (mem, share) = self.fit(&gpu, mem, share, Some(id))?;
        let mut tx = Tx::default();
        // Live sessions hold tickets for the old GPU or the old limits: end them so the tenant gets a fresh ticket.
        if moved || mem < a.memory_limit_mib || share < a.compute_share {
            self.end_sessions_on(&mut tx, &a.tenant_id, Some(&old_gpu), "assignment changed")?;
        }
        a.gpu_uuid = gpu.uuid;
        a.memory_limit_mib = mem;
        a.compute_share = share;
        a.updated_at = now();
        tx.put(&format!("assign/{id}"), &a)?;
        self.db.commit(tx)?;
        Ok((200, ser(&a)))
    }

    fn revoke_assignment(&self, who: &Principal, id: &str) -> ApiResult {
        Self::admin(who)?;
        let a = self
            .db
            .get::<Assignment>(&format!("assign/{id}"))?
            .ok_or_else(|| ApiError::not_found("assignment"))?;
        let mut tx = Tx::default();
        self.end_sessions_on(&mut tx, &a.tenant_id, Some(&a.gpu_uuid), "assignment revoked")?;
        tx.delete(&format!("assign/{id}"));
        self.db.commit(tx)?;
        Ok((200, ser(&a)))
    }

    // ---- tickets and sessions ------------------------------------------------------------------------------

    fn ticket(&self, who: &Principal) -> ApiResult {
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
        let mut gpus = Vec::new();
        for a in self
            .db
            .list::<Assignment>("assign/")?
            .into_iter()
            .filter(|a| a.tenant_id == tenant_id)
        {
            let g = self.gpu(&a.gpu_uuid)?;
            let s = self
                .db
                .get::<Server>(&format!("server/{}", g.server_id))?
                .ok_or_else(|| ApiError::not_found("server"))?;
            gpus.push(TicketGpu {
                server_id: s.id,
                server_address: s.address,
                gpu_uuid: g.uuid,
                gpu_index: g.index,
                memory_limit_mib: a.memory_limit_mib,
                compute_share: a.compute_share,
                priority: String::new(),
                share_cap: false,
            });
        }
        if gpus.is_empty() {
            return Err(ApiError::conflict("no_assignment", "no GPU is assigned to this tenant"));
        }
        let n = now();
        let session = Session {
            id: new_id("sess"),
            tenant_id: tenant_id.clone(),
            gpu_uuids: gpus.iter().map(|g| g.gpu_uuid.clone()).collect(),
            created_at: n,
            expires_at: n + self.cfg.ticket_ttl_s,
            ended_at: None,
            end_reason: None,
        };
        let claims = TicketClaims {
            typ: TICKET_TYP.into(),
            sub: tenant_id,
            sid: session.id.clone(),
            iat: n,
            exp: session.expires_at,
            gpus,
        };
        let token = self
            .signer
            .sign(&claims)
            .map_err(|e| ApiError::new(500, "internal", e))?;
        let mut tx = Tx::default();
        tx.put(&format!("session/{}", session.id), &session)?;
        self.db.commit(tx)?;
        Ok((
            201,
            json!({"ticket": token, "session_id": session.id, "expires_at": session.expires_at, "gpus": claims.gpus}),
        ))
    }

    fn list_sessions(&self, who: &Principal, q: &HashMap<String, String>) -> ApiResult {
        let filter_tenant = match who {
            Principal::Admin { .. } => q.get("tenant_id").cloned(),
            Principal::Tenant { tenant_id, .. } => Some(tenant_id.clone()),
            Principal::Server { .. } => return Err(ApiError::forbidden()),
        };
        let n = now();
        let list: Vec<Value> = self
            .db
            .list::<Session>("session/")?
            .iter()
            .filter(|s| filter_tenant.as_ref().is_none_or(|t| &s.tenant_id == t))
            .filter(|s| q.get("status").is_none_or(|st| s.status(n) == st))
            .map(Self::session_view)
            .collect();
        Ok((200, json!({ "sessions": list })))
    }

    fn end_session(&self, who: &Principal, id: &str) -> ApiResult {
        let mut s = self
            .db
            .get::<Session>(&format!("session/{id}"))?
            .ok_or_else(|| ApiError::not_found("session"))?;
        match who {
            Principal::Admin { .. } => {}
            Principal::Tenant { tenant_id, .. } if tenant_id == &s.tenant_id => {}
            _ => return Err(ApiError::not_found("session")),
        }
        if s.ended_at.is_none() {
            s.ended_at = Some(now());
            s.end_reason = Some(match who {
                Principal::Admin { .. } => "ended by admin".into(),
                _ => "ended by tenant".into(),
            });
            let mut tx = Tx::default();
            tx.put(&format!("session/{id}"), &s)?;
            self.db.commit(tx)?;
        }
        Ok((200, Self::session_view(&s)))
    }

    // ---- usage ---------------------------------------------------------------------------------------------

    fn report_usage(&self, who: &Principal, body: &[u8]) -> ApiResult {
        let server_id = match who {
            Principal::Server { server_id } => server_id.clone(),
            _ => return Err(ApiError::forbidden()),
        };
        let r: UsageReport = de(body)?;
        if r.records.len() > 10_000 {
            return Err(ApiError::bad("at most 10000 records per report"));
        }
        let n = now();
        let mut tx = Tx::default();
        let mut sessions: BTreeMap<String, Session> = BTreeMap::new();
        for u in &r.records {
            let s = match sessions.get(&u.session_id) {
                Some(s) => s.clone(),
                None => self
                    .db
                    .get::<Session>(&format!("session/{}", u.session_id))?
                    .ok_or_else(|| ApiError::bad(format!("unknown session {}", u.session_id)))?,
            };
            if !s.gpu_uuids.contains(&u.gpu_uuid) {
                return Err(ApiError::bad(format!("session {} has no GPU {}", s.id, u.gpu_uuid)));
            }
            let g = self.gpu(&u.gpu_uuid)?;
            if g.server_id != server_id {
                return Err(ApiError::forbidden());
            }
            if u.period_end < u.period_start {
                return Err(ApiError::bad("period_end is before period_start"));
            }
            let rec = UsageRecord {
                id: new_id("u"),
                tenant_id: s.tenant_id.clone(),
                session_id: s.id.clone(),
                server_id: server_id.clone(),
                gpu_uuid: g.uuid.clone(),
                gpu_model: g.model.clone(),
                period_start: u.period_start,
                period_end: u.period_end,
                gpu_seconds: finite_nonneg(u.gpu_seconds, "gpu_seconds")?,
                memory_gib_hours: finite_nonneg(u.memory_gib_hours, "memory_gib_hours")?,
                bytes_moved: u.bytes_moved,
                reported_at: n,
            };
            tx.put(
                &format!("usage/{}/{:012}/{}", rec.tenant_id, rec.period_end, rec.id),
                &rec,
            )?;
            let mut s = s;
            if u.session_ended && s.ended_at.is_none() {
                s.ended_at = Some(n);
                s.end_reason = Some("closed by server".into());
                tx.put(&format!("session/{}", s.id), &s)?;
            }
            sessions.insert(s.id.clone(), s);
        }
        self.db.commit(tx)?;
        Ok((202, json!({"accepted": r.records.len()})))
    }

    fn usage(&self, who: &Principal, q: &HashMap<String, String>) -> ApiResult {
        let n = now();
        // Servers' clocks may run a little ahead: by default count records up to five minutes from now.
        let to = query_u64(q, "to")?.unwrap_or(n + 300);
        let from = query_u64(q, "from")?.unwrap_or(to.saturating_sub(30 * 86400));
        if from > to {
            return Err(ApiError::bad("from is after to"));
        }
        let tenants: Vec<Tenant> = match who {
            Principal::Admin { .. } => match q.get("tenant_id") {
                Some(t) => vec![self.tenant(t)?],
                None => self.db.list("tenant/")?,
            },
            Principal::Tenant { tenant_id, .. } => {
                if q.get("tenant_id").is_some_and(|t| t != tenant_id) {
                    return Err(ApiError::not_found("tenant"));
                }
                vec![self.tenant(tenant_id)?]
            }
            Principal::Server { .. } => return Err(ApiError::forbidden()),
        };
        let mut out = Vec::new();
        for t in tenants {
            let plan = match &t.plan_id {
                Some(p) => self.db.get::<Plan>(&format!("plan/{p}"))?,
                None => None,
            };
            let (mut gs, mut mem, mut bytes, mut cost) = (0.0f64, 0.0f64, 0u64, 0.0f64);
            let mut daily: BTreeMap<u64, (f64, f64, f64)> = BTreeMap::new();
            for u in self.db.list::<UsageRecord>(&format!("usage/{}/", t.id))? {
                if u.period_end < from || u.period_end > to {
                    continue;
                }
                let c = plan
                    .as_ref()
                    .and_then(|p| p.rate_for(&u.gpu_model))
                    .map(|r| u.gpu_seconds / 3600.0 * r.per_gpu_hour + u.memory_gib_hours * r.per_gib_hour)
                    .unwrap_or(0.0);
                gs += u.gpu_seconds;
                mem += u.memory_gib_hours;
                bytes += u.bytes_moved;
                cost += c;
                let d = daily.entry(u.period_end / 86400 * 86400).or_default();
                d.0 += u.gpu_seconds / 3600.0;
                d.1 += u.memory_gib_hours;
                d.2 += c;
            }
            let daily: Vec<Value> = daily
                .into_iter()
                .map(|(day, (h, m, c))| json!({"day": day, "gpu_hours": h, "memory_gib_hours": m, "cost": c}))
                .collect();
            out.push(json!({
                "tenant_id": t.id, "tenant_name": t.name, "plan_id": t.plan_id,
                "currency": plan.as_ref().map(|p| p.currency.clone()).unwrap_or_else(|| "USD".into()),
                "gpu_seconds": gs, "gpu_hours": gs / 3600.0, "memory_gib_hours": mem, "bytes_moved": bytes,
                "cost": cost, "daily": daily,
            }));
        }
        Ok((200, json!({"from": from, "to": to, "tenants": out})))
    }
}

fn static_response(route: &'static str, ct: &'static str, body: &str) -> Response {
    Response {
        status: 200,
        content_type: ct,
        body: body.as_bytes().to_vec(),
        route: Some(route),
    }
}

fn error_response(route: Option<&'static str>, e: &ApiError) -> Response {
    let body = json!({"error": {"code": e.code, "message": e.message}});
    Response {
        status: e.status,
        content_type: "application/json",
        body: serde_json::to_vec(&body).unwrap_or_default(),
        route,
    }
}
