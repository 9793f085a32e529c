//! The control plane process: clap arguments for `vgpu control`, opening the store and the signing keys,
//! and serving `api::App` over HTTPS (rustls; plain HTTP only when asked) with hyper on a small tokio runtime.

use crate::api::{App, Bootstrap, Config, Request};
use crate::signing::KeySource;
use crate::store::{open_backend, Backend, MemStore};
use crate::tls;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Default port of the control plane's REST API and web UI.
pub const DEFAULT_PORT: u16 = 8470;
const MAX_BODY: usize = 1 << 20;
/// Open connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 4096;
/// A client must finish its TLS handshake, and send each request's headers, within this.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// How often each replica prunes, refreshes keys and recomputes gauges.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Address to listen on (host:port).
    #[arg(long, default_value = "127.0.0.1:8470", env = "VGPU_CONTROL_LISTEN")]
    pub listen: SocketAddr,
    /// Directory for the store, the signing keys, the TLS certificate and the generated credentials (0700).
    #[arg(long, default_value = "vgpu-control-data", env = "VGPU_CONTROL_DATA")]
    pub data_dir: PathBuf,
    /// Storage: `sled` (default, in the data directory), `memory`, or `postgres://user@host/db` (several
    /// replicas may share one PostgreSQL).
    #[arg(long, default_value = "sled", env = "VGPU_CONTROL_STORE", hide_env_values = true)]
    pub store: Backend,
    /// Admin API key to install (vgpu_<id>_<secret>); without it one is generated on first start.
    #[arg(long, env = "VGPU_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Token GPU servers present to enroll; without it one is generated on first start.
    #[arg(long, env = "VGPU_NODE_TOKEN", hide_env_values = true)]
    pub node_token: Option<String>,
    /// Lifetime of session tickets, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ticket_ttl: u64,
    /// Ended and expired sessions are deleted after this many seconds.
    #[arg(long, default_value_t = 7 * 86400)]
    pub session_retention: u64,
    /// TLS certificate (PEM) to serve; default: a self-signed one generated into the data directory.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS (only behind a TLS proxy, or on loopback for tests).
    #[arg(long)]
    pub insecure_http: bool,
    /// With a PostgreSQL store: the 0600 file holding the secret that seals the signing keys in the database;
    /// every replica needs the same one (default: <data-dir>/store-secret.key, created on first start).
    #[arg(long, env = "VGPU_CONTROL_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
}

impl ControlArgs {
    /// Defaults for a control plane on `listen` with `data_dir` (tests, quickstart).
    pub fn new(listen: SocketAddr, data_dir: PathBuf, store: Backend) -> ControlArgs {
        ControlArgs {
            listen,
            data_dir,
            store,
            admin_key: None,
            node_token: None,
            ticket_ttl: 3600,
            session_retention: 7 * 86400,
            tls_cert: None,
            tls_key: None,
            insecure_http: false,
            secret_file: None,
        }
    }
}

/// A control plane running in the background, for tests and for `vgpu quickstart`.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    pub admin_key: Option<String>,
    pub node_token: Option<String>,
    /// Hex SHA-256 of the served certificate; `None` for plain HTTP.
    pub fingerprint: Option<String>,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// The URL clients use, with the certificate pin when served over TLS.
    pub fn url(&self) -> String {
        match &self.fingerprint {
            Some(f) => format!("https://{}#sha256={f}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn reply(
    status: u16,
    content_type: &str,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    for (name, value) in headers {
        if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
            r.headers_mut().insert(*name, v);
        }
    }
    r
}

fn json_error(status: u16, code: &str, msg: &str) -> hyper::Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {"code": code, "message": msg}}).to_string();
    reply(status, "application/json", body.into_bytes(), &[])
}

async fn serve_request(
    app: Arc<App>,
    remote: SocketAddr,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Refuse a declared oversized body before reading any of it.
    if declared.is_some_and(|l| l > MAX_BODY as u64) {
        return Ok(json_error(413, "payload_too_large", "request body over 1 MiB"));
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => {
            return Ok(json_error(
                413,
                "payload_too_large",
                "request body over 1 MiB or unreadable",
            ))
        }
    };
    let r = Request {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        authorization: parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
        remote: Some(remote.ip()),
    };
    // Store writes wait for the disk or the database: keep them off the async workers.
    match tokio::task::spawn_blocking(move || app.handle(&r)).await {
        Ok(resp) => Ok(reply(resp.status, resp.content_type, resp.body, &resp.headers)),
        Err(_) => Ok(json_error(500, "internal", "handler failed")),
    }
}

/// Serves `app` on `listener` (TLS when `tls` is given) until `stop` turns true.
async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let maint = app.clone();
    let mut stop_maint = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(MAINTENANCE_EVERY) => {}
                _ = stop_maint.changed() => return,
            }
            let a = maint.clone();
            let _ = tokio::task::spawn_blocking(move || a.maintain()).await;
        }
    });
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, remote) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => {
                    // Out of descriptors or similar: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| serve_request(app.clone(), remote, req));
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_DEADLINE)
                .keep_alive(true);
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(s)) = tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await else {
                        return;
                    };
                    let _ = http.serve_connection(hyper_util::rt::TokioIo::new(s), service).await;
                }
                None => {
                    let _ = http
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// Creates the data directory with mode 0700 (and tightens an existing one).
pub fn private_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("data dir {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("data dir {}: {e}", dir.display()))?;
    }
    Ok(())
}

fn key_source(args: &ControlArgs) -> Result<KeySource, String> {
    match &args.store {
        Backend::Memory => Ok(KeySource::Memory),
        Backend::Sled => Ok(KeySource::File(args.data_dir.join("signing-keys.json"))),
        Backend::Postgres(_) => {
            let path = args
                .secret_file
                .clone()
                .unwrap_or_else(|| args.data_dir.join("store-secret.key"));
            Ok(KeySource::Sealed {
                secret: crate::signing::load_or_create_secret(&path)?,
            })
        }
    }
}

fn open_app(args: &ControlArgs) -> Result<(App, crate::api::Bootstrapped), String> {
    private_dir(&args.data_dir)?;
    let kv = open_backend(&args.store, &args.data_dir).map_err(|e| e.to_string())?;
    let cfg = Config {
        ticket_ttl_s: args.ticket_ttl,
        session_retention_s: args.session_retention,
        ..Config::default()
    };
    App::open_with_keys(
        kv,
        cfg,
        Bootstrap {
            admin_key: args.admin_key.clone(),
            node_token: args.node_token.clone(),
        },
        key_source(args)?,
    )
}

/// Prints credentials created by this start and saves them under the data directory (mode 0600), so a
/// quickstart script can read them.
fn announce(args: &ControlArgs, boot: &crate::api::Bootstrapped) {
    if let Some(k) = &boot.new_admin_key {
        let path = args.data_dir.join("admin.key");
        let _ = crate::signing::write_private_file(&path, format!("{k}\n").as_bytes());
        println!("admin key (shown once, also saved to {}): {k}", path.display());
    }
    if let Some(t) = &boot.new_node_token {
        let path = args.data_dir.join("node.token");
        let _ = crate::signing::write_private_file(&path, format!("{t}\n").as_bytes());
        println!("node token for GPU servers (saved to {}): {t}", path.display());
    }
}

/// The TLS acceptor for `args` and the certificate's fingerprint, or `None` with `--insecure-http`.
fn tls_for(args: &ControlArgs, addr: SocketAddr) -> Result<Option<(tokio_rustls::TlsAcceptor, String)>, String> {
    if args.insecure_http {
        if !addr.ip().is_loopback() {
            eprintln!(
                "vgpu control: WARNING: serving plain HTTP on {addr}: keys and tickets cross the network in clear"
            );
        }
        return Ok(None);
    }
    let (certs, key) = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => tls::load_pem(c, k)?,
        _ => tls::self_signed(&args.data_dir.join("tls"), addr)?,
    };
    let fingerprint = certs
        .first()
        .map(|c| crate::pin::fingerprint(c.as_ref()))
        .unwrap_or_default();
    Ok(Some((tls::acceptor(certs, key)?, fingerprint)))
}

/// Starts the control plane and blocks until it is interrupted. On first start prints (and saves under the
/// data directory, mode 0600) the generated admin key and node token.
pub fn run_control(args: ControlArgs) -> Result<(), String> {
    let (app, boot) = open_app(&args)?;
    let rt = runtime()?;
    let app = Arc::new(app);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let tls = tls_for(&args, addr)?;
        let url = match &tls {
            Some((_, f)) => format!("https://{addr}#sha256={f}"),
            None => format!("http://{addr}"),
        };
        println!("vgpu control plane listening on {url} (store: {})", args.store);
        println!("clients: VGPU_CONTROL_URL={url}");
        let _ = crate::signing::write_private_file(&args.data_dir.join("control.url"), format!("{url}\n").as_bytes());
        announce(&args, &boot);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        serve(app, listener, tls.map(|t| t.0), rx).await;
        Ok(())
    })
}

/// Starts a control plane in a background thread on `127.0.0.1:0` with an in-memory store, over plain HTTP
/// on loopback. The admin key and node token are the ones given, or generated and returned in `Running`.
pub fn spawn_for_test(cfg: Config, boot: Bootstrap) -> Result<Running, String> {
    let (app, out) = App::open(Box::new(MemStore::default()), cfg, boot.clone())?;
    spawn_app(
        Arc::new(app),
        "127.0.0.1:0".parse().map_err(|_| "address")?,
        None,
        out.new_admin_key.or(boot.admin_key),
        out.new_node_token.or(boot.node_token),
    )
}

/// Serves an already opened `App` in a background thread (TLS when `tls` gives a certificate and key).
pub fn spawn_app(
    app: Arc<App>,
    listen: SocketAddr,
    tls: Option<(tokio_rustls::TlsAcceptor, String)>,
    admin_key: Option<String>,
    node_token: Option<String>,
) -> Result<Running, String> {
    let rt = runtime()?;
    let std_listener = std::net::TcpListener::bind(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    std_listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let app2 = app.clone();
    let (acceptor, fingerprint) = match tls {
        Some((a, f)) => (Some(a), Some(f)),
        None => (None, None),
    };
    let thread = std::thread::Builder::new()
        .name("vgpu-control".into())
        .spawn(move || {
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => serve(app2, l, acceptor, rx).await,
                    Err(e) => eprintln!("vgpu-control: {e}"),
                }
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(Running {
        addr,
        app,
        admin_key,
        node_token,
        fingerprint,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Opens the store named by `args` and serves it in the background (for `vgpu quickstart`).
pub fn spawn_control(args: ControlArgs) -> Result<Running, String> {
    let (app, out) = open_app(&args)?;
    announce(&args, &out);
    let tls = tls_for(&args, args.listen)?;
    spawn_app(
        Arc::new(app),
        args.listen,
        tls,
        out.new_admin_key.or(args.admin_key),
        out.new_node_token.or(args.node_token),
    )
}
