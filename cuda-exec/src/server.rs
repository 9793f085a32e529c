//! `vgpu server`: listens on TCP and on a shared-memory rendezvous socket, authenticates each hello, and hands
//! every session to its own worker process (a crash or GPU fault in one tenant's worker touches no other).

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vgpu_dataplane::handshake::*;
use vgpu_dataplane::{shm_socket_path, Transport};
use vgpu_transports::{fdpass, read_raw_hello, shm::ShmTransport, tcp::TcpTransport};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::backend::Backend;
use crate::session::{Limits, Session};

/// Which backend to run sessions on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// The real driver if it loads and finds a GPU, else the emulated backend.
    Auto,
    Real,
    Emulated,
}

impl BackendChoice {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "real" => Ok(Self::Real),
            "emulated" => Ok(Self::Emulated),
            _ => Err(format!("unknown backend '{s}': use auto, real or emulated")),
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Real => "real",
            Self::Emulated => "emulated",
        }
    }
}

/// Configuration of `vgpu server`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP address to listen on (`host:port`), if any.
    pub tcp: Option<String>,
    /// Shared-memory endpoint name, if any.
    pub shm: Option<String>,
    pub backend: BackendChoice,
    /// Path of NVIDIA's libcuda.so.1 (default: the dynamic loader's choice).
    pub driver: Option<String>,
    /// Static key clients must present (standalone mode); `None` accepts every client.
    pub key: Option<String>,
    /// Memory limit applied to every session (standalone mode), in bytes.
    pub memory_limit: Option<u64>,
    /// Command that starts a worker: the program and its leading arguments.
    pub worker_command: Vec<String>,
}

/// Opens the chosen backend. `Auto` falls back to the emulated backend and says why.
pub fn open_backend(choice: BackendChoice, driver: Option<&str>) -> Result<(Arc<dyn Backend>, Option<String>), String> {
    match choice {
        BackendChoice::Emulated => Ok((Arc::new(crate::emulated::EmulatedBackend::new()), None)),
        BackendChoice::Real => Ok((Arc::new(crate::real::RealBackend::open(driver)?), None)),
        BackendChoice::Auto => match crate::real::RealBackend::open(driver) {
            Ok(b) => Ok((Arc::new(b), None)),
            Err(why) => Ok((Arc::new(crate::emulated::EmulatedBackend::new()), Some(why))),
        },
    }
}

/// What the listener tells a worker about each connection it passes on (with the socket as an fd).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct Handoff {
    /// 0 = TCP, 1 = shared memory.
    transport: u32,
    /// 1 for the session's first connection: the worker exits when it closes.
    primary: u32,
    session_id: u64,
    secret: [u8; 16],
    pid: u32,
    _pad: u32,
}

struct SessionEntry {
    secret: [u8; 16],
    control: UnixStream,
}

struct Listener {
    cfg: ServerConfig,
    resolved: BackendChoice,
    sessions: Mutex<HashMap<u64, SessionEntry>>,
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn fd(&self) -> RawFd {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }
    fn kind(&self) -> u32 {
        match self {
            Conn::Tcp(_) => 0,
            Conn::Unix(_) => 1,
        }
    }
    /// Finishes the transport setup and sends a refusal.
    fn refuse(self, status: u32, message: &str) {
        let welcome = Welcome {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            status,
            ..Default::default()
        };
        let bytes = encode_welcome(&welcome, &[], message);
        let transport: Option<Box<dyn Transport>> = match self {
            Conn::Tcp(s) => TcpTransport::from_stream(s)
                .ok()
                .map(|t| Box::new(t) as Box<dyn Transport>),
            Conn::Unix(s) => ShmTransport::accept(s).ok().map(|t| Box::new(t) as Box<dyn Transport>),
        };
        if let Some(mut t) = transport {
            let _ = t.send(&[&bytes]);
        }
    }
}

/// Runs the server until it is killed. Prints what it serves and a line containing `ready` once listening.
pub fn run_server(cfg: ServerConfig) -> Result<(), String> {
    if cfg.tcp.is_none() && cfg.shm.is_none() {
        return Err("nothing to listen on: give --tcp and/or --shm".into());
    }
    let (backend, fallback) = open_backend(cfg.backend, cfg.driver.as_deref())?;
    let resolved = if backend.kind() == BACKEND_REAL {
        BackendChoice::Real
    } else {
        BackendChoice::Emulated
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "vgpu server: {}", backend.describe());
    if let Some(why) = fallback {
        let _ = writeln!(
            out,
            "vgpu server: no usable NVIDIA driver ({why}); serving the emulated backend"
        );
    }
    for (i, d) in backend.devices().iter().enumerate() {
        let _ = writeln!(
            out,
            "vgpu server: GPU {i}: {} ({} MiB)",
            d.name_str(),
            d.total_mem >> 20
        );
    }
    if cfg.key.is_none() {
        let _ = writeln!(
            out,
            "vgpu server: no key set: any client that can reach these endpoints may connect"
        );
    }
    drop(backend);
    let listener = Arc::new(Listener {
        cfg: cfg.clone(),
        resolved,
        sessions: Mutex::new(HashMap::new()),
    });
    let mut endpoints = Vec::new();
    let mut threads = Vec::new();
    if let Some(addr) = &cfg.tcp {
        let tcp = TcpListener::bind(addr).map_err(|e| format!("cannot listen on tcp://{addr}: {e}"))?;
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        endpoints.push(format!("tcp://{local}"));
        let l = listener.clone();
        threads.push(std::thread::spawn(move || {
            for conn in tcp.incoming().flatten() {
                let l = l.clone();
                std::thread::spawn(move || l.accept(Conn::Tcp(conn)));
            }
        }));
    }
    if let Some(name) = &cfg.shm {
        let path = shm_socket_path(name);
        if UnixStream::connect(&path).is_ok() {
            return Err(format!(
                "shm://{name}: another server already listens at {}",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(&path);
        let unix = UnixListener::bind(&path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        endpoints.push(format!("shm://{name} ({})", path.display()));
        let l = listener.clone();
        threads.push(std::thread::spawn(move || {
            for conn in unix.incoming().flatten() {
                let l = l.clone();
                std::thread::spawn(move || l.accept(Conn::Unix(conn)));
            }
        }));
    }
    let _ = writeln!(out, "vgpu server: ready on {}", endpoints.join(", "));
    let _ = out.flush();
    drop(out);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

impl Listener {
    fn accept(self: Arc<Self>, mut conn: Conn) {
        let hello = {
            let read = match &mut conn {
                Conn::Tcp(s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    read_raw_hello(s, std::mem::size_of::<Hello>() + MAX_CREDENTIAL)
                }
                Conn::Unix(s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    read_raw_hello(s, std::mem::size_of::<Hello>() + MAX_CREDENTIAL)
                }
            };
            match read {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!("dropping a connection that sent no valid hello: {e}");
                    return;
                }
            }
        };
        let _ = match &conn {
            Conn::Tcp(s) => s.set_read_timeout(None),
            Conn::Unix(s) => s.set_read_timeout(None),
        };
        let (hello, credential) = match decode_hello(&hello) {
            Ok(v) => v,
            Err(why) => {
                tracing::warn!("refusing a connection: {why}");
                return conn.refuse(STATUS_VERSION_MISMATCH, &why);
            }
        };
        if hello.version != PROTOCOL_VERSION {
            let why = format!(
                "protocol version mismatch: client speaks {}, server {}; install matching vGPU versions",
                hello.version, PROTOCOL_VERSION
            );
            tracing::warn!("refusing pid {}: {why}", hello.pid);
            return conn.refuse(STATUS_VERSION_MISMATCH, &why);
        }
        match hello.mode {
            MODE_NEW_SESSION => {
                if let Some(key) = &self.cfg.key {
                    if !constant_time_eq(key.as_bytes(), &credential) {
                        tracing::warn!("refusing pid {}: wrong key", hello.pid);
                        return conn.refuse(STATUS_UNAUTHORIZED, "the server refused the key (set VGPU_KEY)");
                    }
                }
                if let Err(why) = self.start_session(conn, &hello) {
                    tracing::error!("cannot start a session: {why}");
                }
            }
            MODE_ATTACH => {
                let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
                match sessions.get(&hello.session_id) {
                    Some(entry) if constant_time_eq(&entry.secret, &hello.secret) => {
                        let handoff = Handoff {
                            transport: conn.kind(),
                            primary: 0,
                            session_id: hello.session_id,
                            secret: entry.secret,
                            pid: hello.pid,
                            _pad: 0,
                        };
                        if let Err(e) = fdpass::send_with_fds(&entry.control, handoff.as_bytes(), &[conn.fd()]) {
                            tracing::warn!(
                                "session {:x}: cannot hand a connection to its worker: {e}",
                                hello.session_id
                            );
                        }
                    }
                    _ => {
                        drop(sessions);
                        conn.refuse(
                            STATUS_NO_SUCH_SESSION,
                            "no such session (it ended, or the secret is wrong)",
                        );
                    }
                }
            }
            other => conn.refuse(STATUS_VERSION_MISMATCH, &format!("unknown hello mode {other}")),
        }
    }

    fn start_session(self: &Arc<Self>, conn: Conn, hello: &Hello) -> Result<(), String> {
        let session_id: u64 = rand::random();
        let secret: [u8; 16] = rand::random();
        let (control, child_end) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let child = self
            .spawn_worker(&child_end)
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        drop(child_end);
        let handoff = Handoff {
            transport: conn.kind(),
            primary: 1,
            session_id,
            secret,
            pid: hello.pid,
            _pad: 0,
        };
        fdpass::send_with_fds(&control, handoff.as_bytes(), &[conn.fd()]).map_err(|e| format!("handoff: {e}"))?;
        drop(conn);
        tracing::info!("session {session_id:016x} started for client pid {}", hello.pid);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session_id, SessionEntry { secret, control });
        let me = self.clone();
        std::thread::spawn(move || me.reap(session_id, child));
        Ok(())
    }

    fn spawn_worker(&self, child_end: &UnixStream) -> std::io::Result<Child> {
        let fd = child_end.as_raw_fd();
        // The worker inherits exactly this one descriptor: clear close-on-exec on it alone.
        crate::sys::clear_cloexec(fd)?;
        let (program, args) = self
            .cfg
            .worker_command
            .split_first()
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("VGPU_WORKER_FD", fd.to_string())
            .env("VGPU_WORKER_BACKEND", self.resolved.as_str());
        if let Some(d) = &self.cfg.driver {
            cmd.env("VGPU_WORKER_DRIVER", d);
        }
        if let Some(m) = self.cfg.memory_limit {
            cmd.env("VGPU_WORKER_MEMORY_LIMIT", m.to_string());
        }
        let child = cmd.spawn();
        let _ = crate::sys::set_cloexec(fd);
        child
    }

    fn reap(&self, session_id: u64, mut child: Child) {
        let status = child.wait();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&session_id);
        match status {
            Ok(s) if s.success() => tracing::info!("session {session_id:016x} ended"),
            Ok(s) => tracing::warn!("session {session_id:016x}: worker exited with {s}"),
            Err(e) => tracing::warn!("session {session_id:016x}: cannot wait for worker: {e}"),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Entry point of a worker process (started by `run_server` through `worker_command`).
pub fn run_worker_from_env() -> Result<(), String> {
    let fd: RawFd = std::env::var("VGPU_WORKER_FD")
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or("VGPU_WORKER_FD is not set: workers are started by `vgpu server`, not by hand")?;
    let choice = BackendChoice::parse(&std::env::var("VGPU_WORKER_BACKEND").unwrap_or_else(|_| "auto".into()))?;
    let driver = std::env::var("VGPU_WORKER_DRIVER").ok();
    let memory_bytes = std::env::var("VGPU_WORKER_MEMORY_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok());
    // SAFETY: the server passed this descriptor to us (and only us) through VGPU_WORKER_FD.
    let control = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let (backend, _) = open_backend(choice, driver.as_deref())?;
    let session = Session::new(backend, Limits { memory_bytes });
    let mut buf = [0u8; std::mem::size_of::<Handoff>()];
    loop {
        let (n, mut fds) = fdpass::recv_with_fds(&control, &mut buf, 1).map_err(|e| format!("control socket: {e}"))?;
        if n == 0 {
            tracing::info!("server went away; worker exits");
            std::process::exit(0);
        }
        let (Ok(handoff), Some(fd)) = (Handoff::read_from_bytes(&buf[..n]), fds.pop()) else {
            return Err("malformed handoff from the server".into());
        };
        let session = session.clone();
        std::thread::spawn(move || serve_connection(session, handoff, fd));
    }
}

fn serve_connection(session: Arc<Session>, handoff: Handoff, fd: OwnedFd) {
    let transport: Result<Box<dyn Transport>, String> = match handoff.transport {
        0 => TcpTransport::from_stream(TcpStream::from(fd))
            .map(|t| Box::new(t) as _)
            .map_err(|e| e.to_string()),
        _ => ShmTransport::accept(UnixStream::from(fd))
            .map(|t| Box::new(t) as _)
            .map_err(|e| e.to_string()),
    };
    let mut transport = match transport {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("session {:016x}: transport setup failed: {e}", handoff.session_id);
            if handoff.primary == 1 {
                std::process::exit(1);
            }
            return;
        }
    };
    let backend = session.backend().clone();
    let welcome = Welcome {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        capabilities: CAPABILITIES,
        status: STATUS_OK,
        backend: backend.kind(),
        session_id: handoff.session_id,
        secret: handoff.secret,
        driver_version: backend.driver_version(),
        ..Default::default()
    };
    let bytes = encode_welcome(&welcome, backend.devices(), &backend.describe());
    let outcome = match transport.send(&[&bytes]) {
        Ok(()) => session.serve_channel(&mut *transport),
        Err(e) => Err(e.into()),
    };
    match &outcome {
        Ok(()) | Err(crate::session::ChannelEnd::Closed) => {}
        Err(e) => tracing::warn!(
            "session {:016x} (pid {}): channel ended: {e}",
            handoff.session_id,
            handoff.pid
        ),
    }
    if handoff.primary == 1 {
        if let Err(crate::session::ChannelEnd::Malformed(_)) = &outcome {
            std::process::exit(2);
        }
        std::process::exit(0);
    }
}
