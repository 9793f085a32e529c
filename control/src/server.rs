//! The control plane process: clap arguments for `vgpu control`, opening the store, and serving
//! `api::App` over HTTP with warp on a small tokio runtime.

use crate::api::{App, Bootstrap, Config, Request};
use crate::store::{open_backend, Backend, MemStore};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use warp::Filter;

/// Default port of the control plane's REST API and web UI.
pub const DEFAULT_PORT: u16 = 8470;

#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Address to listen on (host:port).
    #[arg(long, default_value = "127.0.0.1:8470", env = "VGPU_CONTROL_LISTEN")]
    pub listen: SocketAddr,
    /// Directory for the store and the generated credentials.
    #[arg(long, default_value = "vgpu-control-data", env = "VGPU_CONTROL_DATA")]
    pub data_dir: PathBuf,
    /// Storage engine.
    #[arg(long, value_enum, default_value = "sled")]
    pub store: Backend,
    /// Admin API key to install (vgpu_<id>_<secret>); without it one is generated on first start.
    #[arg(long, env = "VGPU_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Token GPU servers present to register; without it one is generated on first start.
    #[arg(long, env = "VGPU_NODE_TOKEN", hide_env_values = true)]
    pub node_token: Option<String>,
    /// Lifetime of session tickets, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ticket_ttl: u64,
}

/// A control plane running in the background, for tests and for `vgpu quickstart`.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    pub admin_key: Option<String>,
    pub node_token: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn routes(app: Arc<App>) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    // One catch-all filter: routing lives in `api`, where tests reach it without HTTP, and the warp type stays
    // small enough to compile quickly.
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  query: String,
                  auth: Option<String>,
                  length: Option<u64>,
                  body| {
                let app = app.clone();
                async move {
                    // Refuse a declared oversized body before reading any of it.
                    if length.is_some_and(|l| l > MAX_BODY as u64) {
                        return Ok(json_error(413, "payload_too_large", "request body over 1 MiB"));
                    }
                    let body = match read_limited(body, MAX_BODY).await {
                        Some(b) => b,
                        None => {
                            return Ok(json_error(
                                413,
                                "payload_too_large",
                                "request body over 1 MiB or unreadable",
                            ))
                        }
                    };
                    let req = Request {
                        method: method.as_str().to_string(),
                        path: path.as_str().to_string(),
                        query,
                        authorization: auth,
                        body,
                    };
                    // Store writes fsync: keep them off the async workers.
                    let resp = tokio::task::spawn_blocking(move || app.handle(&req)).await;
                    let resp = match resp {
                        Ok(r) => r,
                        Err(_) => crate::api::Response {
                            status: 500,
                            content_type: "application/json",
                            body: br#"{"error":{"code":"internal","message":"handler failed"}}"#.to_vec(),
                            route: None,
                        },
                    };
                    let mut r = warp::reply::Response::new(resp.body.into());
                    *r.status_mut() = warp::http::StatusCode::from_u16(resp.status)
                        .unwrap_or(warp::http::StatusCode::INTERNAL_SERVER_ERROR);
                    r.headers_mut().insert(
                        warp::http::header::CONTENT_TYPE,
                        warp::http::HeaderValue::from_static(resp.content_type),
                    );
                    Ok::<_, warp::Rejection>(r)
                }
            },
        )
}

const MAX_BODY: usize = 1 << 20;

/// Collects a request body, giving up past `limit` bytes (works with and without Content-Length).
async fn read_limited<S, B>(body: S, limit: usize) -> Option<Vec<u8>>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures_util::StreamExt;
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.ok()?;
        if out.len() + chunk.remaining() > limit {
            return None;
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            out.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Some(out)
}

fn json_error(status: u16, code: &str, msg: &str) -> warp::reply::Response {
    let body = serde_json::json!({"error": {"code": code, "message": msg}}).to_string();
    let mut r = warp::reply::Response::new(body.into());
    *r.status_mut() = warp::http::StatusCode::from_u16(status).unwrap_or(warp::http::StatusCode::BAD_REQUEST);
    r.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn reject_to_json(_err: warp::Rejection) -> Result<warp::reply::Response, std::convert::Infallible> {
    Ok(json_error(400, "bad_request", "malformed request"))
}

/// Serves `app` on `listener` until `shutdown` resolves.
async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let filter = routes(app).recover(reject_to_json);
    warp::serve(filter).incoming(listener).graceful(shutdown).run().await;
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

fn open_app(args: &ControlArgs) -> Result<(App, crate::api::Bootstrapped), String> {
    if args.store != Backend::Memory {
        std::fs::create_dir_all(&args.data_dir).map_err(|e| format!("data dir {}: {e}", args.data_dir.display()))?;
    }
    let kv = open_backend(args.store, &args.data_dir).map_err(|e| e.to_string())?;
    let cfg = Config {
        ticket_ttl_s: args.ticket_ttl,
        ..Config::default()
    };
    App::open(
        kv,
        cfg,
        Bootstrap {
            admin_key: args.admin_key.clone(),
            node_token: args.node_token.clone(),
        },
    )
}

fn write_secret(path: &std::path::Path, value: &str) {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    if let Ok(mut f) = o.open(path) {
        let _ = writeln!(f, "{value}");
    }
}

/// Prints credentials created by this start and saves them under the data directory (mode 0600), so a
/// quickstart script can read them.
fn announce(args: &ControlArgs, boot: &crate::api::Bootstrapped) {
    if let Some(k) = &boot.new_admin_key {
        let path = args.data_dir.join("admin.key");
        if args.store != Backend::Memory {
            write_secret(&path, k);
        }
        println!("admin key (shown once, also saved to {}): {k}", path.display());
    }
    if let Some(t) = &boot.new_node_token {
        let path = args.data_dir.join("node.token");
        if args.store != Backend::Memory {
            write_secret(&path, t);
        }
        println!("node token for GPU servers (saved to {}): {t}", path.display());
    }
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
        println!(
            "vgpu control plane listening on http://{addr} (store: {})",
            app_backend(&app)
        );
        announce(&args, &boot);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        serve(app, listener, std::future::pending()).await;
        Ok(())
    })
}

fn app_backend(app: &App) -> String {
    let r = app.handle(&Request {
        method: "GET".into(),
        path: "/v1/health".into(),
        ..Default::default()
    });
    r.json()["store"].as_str().unwrap_or("?").to_string()
}

/// Starts a control plane in a background thread on `127.0.0.1:0` with an in-memory store. The admin key and
/// node token are the ones given, or generated and returned in `Running`.
pub fn spawn_for_test(cfg: Config, boot: Bootstrap) -> Result<Running, String> {
    let (app, out) = App::open(Box::new(MemStore::default()), cfg, boot.clone())?;
    spawn_app(
        Arc::new(app),
        "127.0.0.1:0".parse().map_err(|_| "address")?,
        out.new_admin_key.or(boot.admin_key),
        out.new_node_token.or(boot.node_token),
    )
}

/// Serves an already opened `App` in a background thread.
pub fn spawn_app(
    app: Arc<App>,
    listen: SocketAddr,
    admin_key: Option<String>,
    node_token: Option<String>,
) -> Result<Running, String> {
    let rt = runtime()?;
    let std_listener = std::net::TcpListener::bind(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    std_listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app2 = app.clone();
    let thread = std::thread::Builder::new()
        .name("vgpu-control".into())
        .spawn(move || {
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => {
                        serve(app2, l, async move {
                            let _ = rx.await;
                        })
                        .await
                    }
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
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Opens the store named by `args` and serves it in the background (for `vgpu quickstart`).
pub fn spawn_control(args: ControlArgs) -> Result<Running, String> {
    let (app, out) = open_app(&args)?;
    announce(&args, &out);
    spawn_app(
        Arc::new(app),
        args.listen,
        out.new_admin_key.or(args.admin_key),
        out.new_node_token.or(args.node_token),
    )
}
