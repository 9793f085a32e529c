//! `vgpu server`: listens on TLS, TCP, a shared-memory rendezvous socket and (where a device exists) RDMA,
//! authenticates each hello within bounds (`admission`), and hands every session to its own worker process (a
//! crash or GPU fault in one tenant's worker touches no other); TLS connections move there with their keys.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vgpu_dataplane::handshake::*;
use vgpu_dataplane::{shm_socket_path, Transport};
use vgpu_transports::tls::{self, ResumeState, TlsAcceptor, TlsTransport, RESUME_LEN};
use vgpu_transports::{fdpass, rdma::RdmaTransport, read_raw_hello, shm::ShmTransport, tcp::TcpTransport};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::admission::{AdmissionLimits, Backoff, Closer, PendingGate, SessionSlot, Source, TenantSessions};
use crate::backend::Backend;
use crate::registry::{Member, Registry, RegistryLink};
use crate::session::{Limits, Session, UsageCounters};

/// What a session may use, decided when the server accepts its hello.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Admission {
    /// The session's name in the authority's books (a ticket's session id); empty in standalone mode.
    pub label: String,
    pub limits: Limits,
    /// Whose sessions this one counts among (a tenant id, or the static key): see `max_sessions`. Only sessions of
    /// one tenant share memory and events through IPC (`registry.rs`).
    pub tenant: String,
    /// Most concurrent sessions of `tenant` on this server (the credential's own limit); `None`: the server's
    /// default (`AdmissionLimits::max_sessions_per_tenant`).
    pub max_sessions: Option<u32>,
}

/// Where the server listens, as the authority is told at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listening {
    /// The bound plain TCP address, if any.
    pub tcp: Option<SocketAddr>,
    /// The bound TLS address, if any.
    pub tls: Option<SocketAddr>,
    /// SHA-256 of the TLS certificate (lower-case hex), with TLS.
    pub tls_cert_sha256: Option<String>,
}

/// Usage of one session over one period (between two reports of its worker).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageDelta {
    pub label: String,
    /// Start and end of the period, in seconds since the Unix epoch.
    pub period_start: u64,
    pub period_end: u64,
    /// Wall-clock seconds the session held its GPUs during the period.
    pub seconds: f64,
    /// Integral of the session's device memory over the period.
    pub memory_byte_seconds: f64,
    pub bytes_moved: u64,
    /// Device memory held at the end of the period.
    pub allocated_bytes: u64,
    /// GPU time the scheduler measured the session using during the period, in seconds, per GPU it sees (in the
    /// client's order): what `gpu_busy_seconds` of a usage report carries. Empty when the scheduler is off.
    pub gpu_busy_seconds: Vec<f64>,
    /// The session is over: this is its last report.
    pub ended: bool,
}

/// Who may open sessions and with what limits; also told how much each session used. `vgpu server` uses a
/// static key on its own, or the control plane's tickets (implemented in the `vgpu` binary).
pub trait Authority: Send + Sync {
    /// Called once the server listens (its bound addresses and TLS fingerprint) and knows its GPUs, before it
    /// reports ready; returns lines to print. An error stops the server.
    fn started(&self, _listening: &Listening, _devices: &[DeviceFacts]) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
    /// Checks a hello's credential; `Err` carries the reason the client is told.
    fn admit(&self, credential: &[u8]) -> Result<Admission, String>;
    /// Usage of one session since its previous report.
    fn record(&self, _usage: UsageDelta) {}
    /// Labels of sessions to end now (revoked assignments, admin action); polled every second.
    fn sessions_to_end(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Standalone mode: one shared key (or none), or keys with plans (`--plans`), and the same memory limit for every
/// session.
pub struct StaticKey {
    pub key: Option<String>,
    pub memory_limit: Option<u64>,
    /// Keys with their share, class and cap on every GPU (`sched::plans`); when set, a client must present one.
    pub plans: Vec<(String, crate::sched::SlotConfig)>,
}

impl Authority for StaticKey {
    fn admit(&self, credential: &[u8]) -> Result<Admission, String> {
        if let Some(key) = &self.key {
            if !constant_time_eq(key.as_bytes(), credential) {
                return Err("the server refused the key (set VGPU_KEY)".into());
            }
        }
        let mut sharing = Vec::new();
        if !self.plans.is_empty() {
            // Every key is compared, so the time taken does not tell which one came close.
            let mut found = None;
            for (key, cfg) in &self.plans {
                if constant_time_eq(key.as_bytes(), credential) {
                    found = Some(*cfg);
                }
            }
            let cfg = found.ok_or("the server refused the key (set VGPU_KEY to a key of its plans)")?;
            sharing = vec![cfg; MAX_VISIBLE];
        }
        Ok(Admission {
            label: String::new(),
            limits: Limits {
                memory_bytes: self.memory_limit,
                devices: None,
                sharing,
                ..Default::default()
            },
            tenant: if self.key.is_some() {
                "the static key".into()
            } else {
                "anonymous clients".into()
            },
            max_sessions: None,
        })
    }
}

/// How often a worker tells the listener its usage.
const USAGE_TICK: Duration = Duration::from_secs(1);

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

/// The TLS endpoint: where it listens and what it presents.
#[derive(Clone)]
pub struct TlsListen {
    /// `host:port` to listen on.
    pub addr: String,
    pub acceptor: Arc<TlsAcceptor>,
    /// Where the certificate came from, for the start-up banner.
    pub origin: String,
}

/// Configuration of `vgpu server`.
#[derive(Clone)]
pub struct ServerConfig {
    /// Plain TCP address to listen on (`host:port`), if any.
    pub tcp: Option<String>,
    /// TLS endpoint, if any.
    pub tls: Option<TlsListen>,
    /// Shared-memory endpoint name, if any.
    pub shm: Option<String>,
    /// TCP address where RDMA clients exchange queue pairs (`rdma://` endpoint), if any; served only when this
    /// host has an active RDMA port.
    pub rdma: Option<String>,
    pub backend: BackendChoice,
    /// Path of NVIDIA's libcuda.so.1 (default: the dynamic loader's choice).
    pub driver: Option<String>,
    /// Decides who may open sessions, with what limits, and hears their usage.
    pub authority: Arc<dyn Authority>,
    /// Printed at start: how clients authenticate (e.g. "static key", "control plane tickets").
    pub auth_description: String,
    /// Command that starts a worker: the program and its leading arguments.
    pub worker_command: Vec<String>,
    /// Bounds before and at authentication, and the stall timeout.
    pub admission: AdmissionLimits,
    /// `--device-identity`: present the devices as distinct virtual GPUs (`identity`; 0: their own identity).
    pub identity: u8,
}

/// Opens the chosen backend, its devices presented with `identity` (`crate::identity`). `Auto` falls back to the
/// emulated backend and says why.
pub fn open_backend(
    choice: BackendChoice,
    driver: Option<&str>,
    identity: u8,
) -> Result<(Arc<dyn Backend>, Option<String>), String> {
    let emulated = || crate::emulated::EmulatedBackend::with_identity(identity);
    let real = || crate::real::RealBackend::open(driver).map(|b| b.with_identity(identity));
    match choice {
        BackendChoice::Emulated => Ok((Arc::new(emulated()), None)),
        BackendChoice::Real => Ok((Arc::new(real()?), None)),
        BackendChoice::Auto => match real() {
            Ok(b) => Ok((Arc::new(b), None)),
            Err(why) => Ok((Arc::new(emulated()), Some(why))),
        },
    }
}

/// What the listener tells a worker about each connection it passes on (with the socket as an fd).
#[repr(C)]
#[derive(Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct Handoff {
    /// 0 = TCP, 1 = shared memory, 2 = RDMA (the fd is the TCP connection its queue pairs are exchanged on),
    /// 3 = TLS (the record state is in `tls`).
    transport: u32,
    /// 1 for the session's first connection: the worker exits when it closes.
    primary: u32,
    session_id: u64,
    secret: [u8; 16],
    pid: u32,
    _pad: u32,
    /// The session's limits (read from the primary connection's handoff): memory in bytes (`u64::MAX`: none),
    /// and the visible devices (`device_count == u32::MAX`: all of them).
    memory_limit: u64,
    device_count: u32,
    _pad2: u32,
    devices: [u32; MAX_VISIBLE],
    /// The session's scheduler slot on each server device (by ordinal; `sched::host::NO_SLOT`: not scheduled there).
    slots: [u16; MAX_VISIBLE],
    /// A TLS connection's record state (`ResumeState::encode`); zero for other transports.
    tls: [u8; RESUME_LEN],
    _pad3: [u8; 6],
}

impl Default for Handoff {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

/// Most devices a ticket can make visible to one session.
const MAX_VISIBLE: usize = 16;

impl Handoff {
    fn set_limits(&mut self, limits: &Limits) -> Result<(), String> {
        self.memory_limit = limits.memory_bytes.unwrap_or(u64::MAX);
        match &limits.devices {
            None => self.device_count = u32::MAX,
            Some(list) if list.len() <= MAX_VISIBLE => {
                self.device_count = list.len() as u32;
                self.devices[..list.len()].copy_from_slice(list);
            }
            Some(list) => return Err(format!("{} visible devices; at most {MAX_VISIBLE}", list.len())),
        }
        Ok(())
    }

    fn limits(&self) -> Result<Limits, String> {
        let devices = match self.device_count {
            u32::MAX => None,
            n if n as usize <= MAX_VISIBLE => Some(self.devices[..n as usize].to_vec()),
            n => return Err(format!("handoff names {n} devices")),
        };
        Ok(Limits {
            memory_bytes: (self.memory_limit != u64::MAX).then_some(self.memory_limit),
            devices,
            sharing: Vec::new(),
            ..Default::default()
        })
    }
}

/// A worker started ahead of need: its driver is loaded and initialised, so a new session only waits for the
/// hand-off (the driver's own start is most of a session's start otherwise).
struct Spare {
    child: Child,
    control: UnixStream,
}

struct SessionEntry {
    secret: [u8; 16],
    control: UnixStream,
    label: String,
    /// The session's place among its tenant's; freed when the entry goes (the worker was reaped).
    _slot: SessionSlot,
}

/// What a worker reports on its control socket every `USAGE_TICK` and just before it exits.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct UsageTick {
    allocated_bytes: u64,
    bytes_moved: u64,
}

struct Listener {
    cfg: ServerConfig,
    resolved: BackendChoice,
    sched: Option<crate::sched::host::SchedShared>,
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    spare: Mutex<Option<Spare>>,
    /// Whether to keep a spare worker (`VGPU_SPARE_WORKER=0` turns it off).
    keep_spare: bool,
    /// Connections awaiting authentication (each holds a thread until it is handed on or dropped).
    pending: Arc<PendingGate>,
    backoff: Backoff,
    tenants: Arc<TenantSessions>,
    closer: Closer,
    /// What sessions exported for other processes (IPC handles), and who may open it.
    registry: Arc<Registry>,
}

/// What a listening socket serves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Tcp,
    Tls,
    Rdma,
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// The setup connection of an RDMA client: the worker exchanges queue pairs over it.
    Rdma(TcpStream),
    /// A TLS connection after its handshake and hello; it moves to the worker with its record state.
    Tls(Box<TlsTransport>),
}

impl Conn {
    fn kind(&self) -> u32 {
        match self {
            Conn::Tcp(_) => 0,
            Conn::Unix(_) => 1,
            Conn::Rdma(_) => 2,
            Conn::Tls(_) => 3,
        }
    }
    /// Sends the connection to a worker with `handoff` (a TLS connection's record state goes in it).
    /// Sends the connection to a worker; `registry` (a session's first connection only) is the worker's end of its
    /// link to the IPC registry, sent along.
    fn hand_to(self, control: &UnixStream, mut handoff: Handoff, registry: Option<&UnixStream>) -> Result<(), String> {
        handoff.transport = self.kind();
        let fd: OwnedFd = match self {
            Conn::Tcp(s) | Conn::Rdma(s) => s.into(),
            Conn::Unix(s) => s.into(),
            Conn::Tls(t) => {
                let (stream, state) = (*t).into_resume().map_err(|e| e.to_string())?;
                handoff.tls = state.encode();
                stream.into()
            }
        };
        let mut fds = vec![fd.as_raw_fd()];
        fds.extend(registry.map(|r| r.as_raw_fd()));
        let r = fdpass::send_with_fds(control, handoff.as_bytes(), &fds).map_err(|e| e.to_string());
        // The secrets have been sent; do not leave them in this process's memory longer than needed.
        handoff.tls.fill(0);
        std::hint::black_box(&handoff.tls);
        r
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
            Conn::Rdma(s) => RdmaTransport::accept(s).ok().map(|t| Box::new(t) as Box<dyn Transport>),
            Conn::Tls(t) => Some(Box::new(t) as Box<dyn Transport>),
        };
        if let Some(mut t) = transport {
            let _ = t.send(&[&bytes]);
        }
    }
}

/// Runs the server until it is killed. Prints what it serves and a line containing `ready` once listening.
pub fn run_server(cfg: ServerConfig) -> Result<(), String> {
    if cfg.tcp.is_none() && cfg.tls.is_none() && cfg.shm.is_none() && cfg.rdma.is_none() {
        return Err("nothing to listen on: give --tls, --tcp, --shm and/or --rdma".into());
    }
    let (backend, fallback) = open_backend(cfg.backend, cfg.driver.as_deref(), cfg.identity)?;
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
    let _ = writeln!(out, "vgpu server: clients authenticate with {}", cfg.auth_description);
    let devices = backend.devices().to_vec();
    drop(backend);
    let sched = match crate::sched::host::SchedShared::create(resolved == BackendChoice::Real, devices.len()) {
        Ok(s) => {
            let _ = writeln!(out, "vgpu server: GPU sharing: {}", s.sharing.describe());
            Some(s)
        }
        Err(why) => {
            let _ = writeln!(
                out,
                "vgpu server: GPU sharing: scheduler unavailable ({why}); shares are not enforced"
            );
            None
        }
    };
    let listener = Arc::new(Listener {
        cfg: cfg.clone(),
        resolved,
        sched,
        sessions: Mutex::new(HashMap::new()),
        spare: Mutex::new(None),
        keep_spare: std::env::var("VGPU_SPARE_WORKER").map_or(true, |v| v != "0"),
        pending: PendingGate::new(cfg.admission.max_pending),
        backoff: Backoff::default(),
        tenants: Arc::new(TenantSessions::default()),
        closer: Closer::start(),
        registry: Registry::new(),
    });
    // The IPC registry keeps a descriptor per shared memory file it holds for sessions.
    crate::sys::raise_fd_limit();
    listener.refill_spare();
    let mut endpoints = Vec::new();
    let mut threads = Vec::new();
    let mut listening = Listening::default();
    if let Some(addr) = &cfg.tcp {
        let tcp = TcpListener::bind(addr).map_err(|e| format!("cannot listen on tcp://{addr}: {e}"))?;
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        if !local.ip().is_loopback() {
            let _ = writeln!(
                out,
                "vgpu server: WARNING: plain tcp://{local} carries keys and data unencrypted beyond this host"
            );
        }
        listening.tcp = Some(local);
        endpoints.push(format!("tcp://{local}"));
        let l = listener.clone();
        threads.push(std::thread::spawn(move || l.accept_tcp(tcp, Kind::Tcp)));
    }
    if let Some(t) = &cfg.tls {
        let addr = &t.addr;
        let tcp = TcpListener::bind(addr).map_err(|e| format!("cannot listen on tls://{addr}: {e}"))?;
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let fp = t.acceptor.fingerprint().to_string();
        let _ = writeln!(out, "vgpu server: TLS certificate sha256={fp} ({})", t.origin);
        listening.tls = Some(local);
        listening.tls_cert_sha256 = Some(fp.clone());
        endpoints.push(format!("tls://{local}#sha256={fp}"));
        let l = listener.clone();
        threads.push(std::thread::spawn(move || l.accept_tcp(tcp, Kind::Tls)));
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
        threads.push(std::thread::spawn(move || l.accept_unix(unix)));
    }
    if let Some(addr) = &cfg.rdma {
        match vgpu_transports::rdma::available() {
            Ok(ports) => {
                let rdma = TcpListener::bind(addr).map_err(|e| format!("cannot listen on rdma://{addr}: {e}"))?;
                let local = rdma.local_addr().map_err(|e| e.to_string())?;
                let _ = writeln!(out, "vgpu server: RDMA ports: {}", ports.join("; "));
                let _ = writeln!(
                    out,
                    "vgpu server: note: rdma://{local} is not encrypted (keys and data travel in clear on the fabric)"
                );
                endpoints.push(format!("rdma://{local}"));
                let l = listener.clone();
                threads.push(std::thread::spawn(move || l.accept_tcp(rdma, Kind::Rdma)));
            }
            Err(why) => {
                let _ = writeln!(out, "vgpu server: not serving rdma://{addr}: {why}");
            }
        }
    }
    for line in cfg.authority.started(&listening, &devices)? {
        let _ = writeln!(out, "vgpu server: {line}");
    }
    let l = listener.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        let labels = l.cfg.authority.sessions_to_end();
        if !labels.is_empty() {
            l.end_sessions(&labels);
        }
    });
    let _ = writeln!(out, "vgpu server: ready on {}", endpoints.join(", "));
    let _ = out.flush();
    drop(out);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Why a connection is turned away before its hello is read.
enum EarlyRefusal {
    LockedOut(Duration),
    Busy,
}

/// The largest hello a client may send.
const MAX_HELLO: usize = std::mem::size_of::<Hello>() + MAX_CREDENTIAL;

/// Sockets whose read timeout can be set (the hello is read under one deadline).
trait TimedRead {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
}
impl TimedRead for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
}
impl TimedRead for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
}

/// Reads from a socket until a deadline for the whole exchange: each read may wait only for what is left, so
/// a client trickling a byte at a time cannot stretch it.
struct UntilDeadline<'a, S> {
    socket: &'a S,
    deadline: Instant,
}

impl<S: TimedRead> Read for UntilDeadline<'_, S>
where
    for<'b> &'b S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the hello did not arrive in time",
            ));
        }
        self.socket.set_read_timeout(Some(left))?;
        let mut s = self.socket;
        s.read(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "the hello did not arrive in time")
            }
            _ => e,
        })
    }
}

/// Reads a raw hello under a deadline and clears the socket's timeout again (the worker inherits the socket).
fn read_hello_by<S: TimedRead>(socket: &S, deadline: Instant) -> std::io::Result<Vec<u8>>
where
    for<'b> &'b S: Read,
{
    let hello = read_raw_hello(&mut UntilDeadline { socket, deadline }, MAX_HELLO);
    socket.set_read_timeout(None)?;
    hello
}

impl Listener {
    /// Accepts TCP connections (plain, TLS or RDMA setup) forever; each gets a bounded pre-authentication slot.
    fn accept_tcp(self: Arc<Self>, listener: TcpListener, kind: Kind) {
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(v) => v,
                Err(e) => {
                    // Out of descriptors (or similar): pause instead of spinning on the error.
                    tracing::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let source = Source::of_ip(peer.ip());
            if let Some(why) = self.early_refusal(source) {
                self.refuse_early_tcp(stream, kind, why);
                continue;
            }
            let Some(permit) = self.pending.try_enter() else {
                self.refuse_early_tcp(stream, kind, EarlyRefusal::Busy);
                continue;
            };
            let l = self.clone();
            let spawned = std::thread::Builder::new().name("vgpu-hello".into()).spawn(move || {
                let _permit = permit;
                l.hello_tcp(stream, kind, source);
            });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a thread for a new connection: {e}");
            }
        }
    }

    /// Accepts shared-memory clients forever (by the local user who connects, for back-off).
    fn accept_unix(self: Arc<Self>, listener: UnixListener) {
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let source = crate::sys::peer_uid(stream.as_raw_fd()).map_or(Source::Unknown, Source::LocalUser);
            // A shared-memory client learns of a refusal only once its rings exist; turned away early, it sees
            // the connection close during the handshake.
            if self.early_refusal(source).is_some() {
                continue;
            }
            let Some(permit) = self.pending.try_enter() else {
                tracing::warn!("refusing a shared-memory connection: too many awaiting authentication");
                continue;
            };
            let l = self.clone();
            let spawned = std::thread::Builder::new().name("vgpu-hello".into()).spawn(move || {
                let _permit = permit;
                let deadline = Instant::now() + l.cfg.admission.hello_timeout;
                match read_hello_by(&stream, deadline) {
                    Ok(hello) => l.admit(Conn::Unix(stream), &hello, source),
                    Err(e) => l.no_hello(source, &e.to_string()),
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a thread for a new connection: {e}");
            }
        }
    }

    fn early_refusal(&self, source: Source) -> Option<EarlyRefusal> {
        self.backoff.locked_out(source).map(EarlyRefusal::LockedOut)
    }

    /// Turns a TCP connection away before reading anything: plain TCP gets a refusal welcome, TLS a fatal alert
    /// (the handshake has not happened), RDMA setup a close. The socket then lingers briefly (see `Closer`).
    fn refuse_early_tcp(&self, stream: TcpStream, kind: Kind, why: EarlyRefusal) {
        let (status, message) = match &why {
            EarlyRefusal::LockedOut(wait) => (
                STATUS_UNAUTHORIZED,
                format!(
                    "too many failed attempts from this address: retry in {} s",
                    wait.as_secs() + 1
                ),
            ),
            EarlyRefusal::Busy => (
                STATUS_BUSY,
                "the server has too many connections awaiting authentication: retry shortly".to_string(),
            ),
        };
        tracing::warn!("refusing a {kind:?} connection before its hello: {message}");
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        match kind {
            Kind::Tcp => {
                let welcome = Welcome {
                    magic: MAGIC,
                    version: PROTOCOL_VERSION,
                    status,
                    ..Default::default()
                };
                let _ = (&stream).write(&encode_welcome(&welcome, &[], &message));
            }
            Kind::Tls => tls::send_early_refusal(
                &stream,
                match why {
                    EarlyRefusal::LockedOut(_) => tls::EarlyRefusal::LockedOut,
                    EarlyRefusal::Busy => tls::EarlyRefusal::Busy,
                },
            ),
            Kind::Rdma => {}
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        self.closer.close(stream);
    }

    /// Reads the hello of a TCP connection (after the TLS handshake, for TLS) within the hello deadline.
    fn hello_tcp(self: Arc<Self>, stream: TcpStream, kind: Kind, source: Source) {
        let deadline = Instant::now() + self.cfg.admission.hello_timeout;
        let read = match kind {
            Kind::Tcp => read_hello_by(&stream, deadline)
                .map(|h| (Conn::Tcp(stream), h))
                .map_err(|e| e.to_string()),
            Kind::Rdma => read_hello_by(&stream, deadline)
                .map(|h| (Conn::Rdma(stream), h))
                .map_err(|e| e.to_string()),
            Kind::Tls => match &self.cfg.tls {
                Some(t) => t
                    .acceptor
                    .accept(stream, deadline)
                    .and_then(|mut t| t.recv_hello(MAX_HELLO).map(|h| (Conn::Tls(Box::new(t)), h)))
                    .map_err(|e| e.to_string()),
                None => Err("TLS is not configured".into()),
            },
        };
        match read {
            Ok((conn, hello)) => self.admit(conn, &hello, source),
            Err(why) => self.no_hello(source, &why),
        }
    }

    /// A connection that sent no valid hello in time counts as a failure of its source.
    fn no_hello(&self, source: Source, why: &str) {
        let lockout = self.backoff.failed(source);
        tracing::warn!(
            "dropping a connection from {source} that sent no valid hello: {why}{}",
            lockout.map_or(String::new(), |d| format!(" (locked out for {} s)", d.as_secs()))
        );
    }

    /// A failed authentication: back-off for the source, then the refusal.
    fn auth_failed(&self, conn: Conn, source: Source, status: u32, why: &str, pid: u32) {
        let lockout = self.backoff.failed(source);
        tracing::warn!(
            "refusing pid {pid} from {source}: {why}{}",
            lockout.map_or(String::new(), |d| format!(
                " (further attempts refused for {} s)",
                d.as_secs()
            ))
        );
        conn.refuse(status, why);
    }

    /// Decides on a hello: new sessions by the authority and the tenant's bound, attaches by the session secret.
    fn admit(self: Arc<Self>, conn: Conn, hello: &[u8], source: Source) {
        let (hello, credential) = match decode_hello(hello) {
            Ok(v) => v,
            Err(why) => {
                tracing::warn!("refusing a connection from {source}: {why}");
                self.backoff.failed(source);
                return conn.refuse(STATUS_VERSION_MISMATCH, &why);
            }
        };
        if let Conn::Tls(t) = &conn {
            if t.has_buffered_input() {
                let why = "the client sent more than its hello before the server answered";
                self.backoff.failed(source);
                return conn.refuse(STATUS_VERSION_MISMATCH, why);
            }
        }
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
                let admission = match self.cfg.authority.admit(&credential) {
                    Ok(a) => a,
                    Err(why) => return self.auth_failed(conn, source, STATUS_UNAUTHORIZED, &why, hello.pid),
                };
                self.backoff.succeeded(source);
                let limit = admission
                    .max_sessions
                    .unwrap_or(self.cfg.admission.max_sessions_per_tenant);
                let slot = match self.tenants.try_open(&admission.tenant, limit) {
                    Ok(slot) => slot,
                    Err(open) => {
                        let why = format!(
                            "too many sessions: {} already has {open} open on this server (at most {limit}); end one \
                             and retry",
                            admission.tenant
                        );
                        tracing::warn!("refusing pid {} from {source}: {why}", hello.pid);
                        return conn.refuse(STATUS_BUSY, &why);
                    }
                };
                if let Err(why) = self.start_session(conn, &hello, admission, slot) {
                    tracing::error!("cannot start a session: {why}");
                }
            }
            MODE_ATTACH => {
                let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
                match sessions.get(&hello.session_id) {
                    Some(entry) if constant_time_eq(&entry.secret, &hello.secret) => {
                        let handoff = Handoff {
                            primary: 0,
                            session_id: hello.session_id,
                            secret: entry.secret,
                            pid: hello.pid,
                            ..Default::default()
                        };
                        if let Err(e) = conn.hand_to(&entry.control, handoff, None) {
                            tracing::warn!(
                                "session {:x}: cannot hand a connection to its worker: {e}",
                                hello.session_id
                            );
                        }
                    }
                    _ => {
                        drop(sessions);
                        self.auth_failed(
                            conn,
                            source,
                            STATUS_NO_SUCH_SESSION,
                            "no such session (it ended, or the secret is wrong)",
                            hello.pid,
                        );
                    }
                }
            }
            other => conn.refuse(STATUS_VERSION_MISMATCH, &format!("unknown hello mode {other}")),
        }
    }

    /// Sends the session's first connection, limits and scheduler slots to its worker; returns the worker's usage
    /// socket.
    #[allow(clippy::too_many_arguments)]
    fn hand_off(
        &self,
        conn: Conn,
        hello: &Hello,
        admission: &Admission,
        control: &UnixStream,
        session_id: u64,
        secret: [u8; 16],
        claimed: &[(usize, Option<usize>)],
    ) -> Result<UnixStream, String> {
        let ticks = control.try_clone().map_err(|e| format!("socketpair: {e}"))?;
        let mut handoff = Handoff {
            primary: 1,
            session_id,
            secret,
            pid: hello.pid,
            slots: [crate::sched::host::NO_SLOT; MAX_VISIBLE],
            ..Default::default()
        };
        for &(d, slot) in claimed {
            if let (Some(entry), Some(slot)) = (handoff.slots.get_mut(d), slot) {
                *entry = slot as u16;
            }
        }
        handoff.set_limits(&admission.limits)?;
        // The session's own link to the IPC registry: whatever arrives on it is this session's, of this tenant.
        let (registry_end, worker_end) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        conn.hand_to(control, handoff, Some(&worker_end))
            .map_err(|e| format!("handoff: {e}"))?;
        drop(worker_end);
        let member = Member {
            session: session_id,
            tenant: admission.tenant.clone(),
        };
        let registry = self.registry.clone();
        std::thread::spawn(move || registry.serve(member, registry_end));
        Ok(ticks)
    }

    fn start_session(
        self: &Arc<Self>,
        conn: Conn,
        hello: &Hello,
        admission: Admission,
        slot: SessionSlot,
    ) -> Result<(), String> {
        let session_id: u64 = rand::random();
        let secret: [u8; 16] = rand::random();
        let claim = crate::sched::host::claim(self.sched.as_ref(), &admission.limits);
        let (claimed, sm_percent) = (claim.slots, claim.sm_percent);
        let worker = if sm_percent < 100 {
            // The SM limit is read when the worker's driver starts: this session needs a worker of its own, not
            // the spare (started without one).
            tracing::info!("session {session_id:016x}: MPS SM limit {sm_percent} %: starting a worker for it");
            self.new_worker(Some(sm_percent))
        } else {
            self.take_worker()
        };
        let Spare { child, control } = match worker {
            Ok(w) => w,
            Err(e) => {
                crate::sched::host::release(self.sched.as_ref(), &claimed);
                return Err(e);
            }
        };
        let handed = self.hand_off(conn, hello, &admission, &control, session_id, secret, &claimed);
        let ticks = match handed {
            Ok(ticks) => ticks,
            Err(e) => {
                crate::sched::host::release(self.sched.as_ref(), &claimed);
                return Err(e);
            }
        };
        let me = self.clone();
        std::thread::spawn(move || me.refill_spare());
        tracing::info!(
            "session {session_id:016x} started for client pid {} {}",
            hello.pid,
            admission.label
        );
        let label = admission.label;
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(
            session_id,
            SessionEntry {
                secret,
                control,
                label: label.clone(),
                _slot: slot,
            },
        );
        let me = self.clone();
        std::thread::spawn(move || {
            me.meter(&label, ticks, &claimed);
            me.reap(session_id, child);
            crate::sched::host::release(me.sched.as_ref(), &claimed);
        });
        Ok(())
    }

    /// Reads the worker's usage ticks until it exits, handing each period to the authority; the last one
    /// (sent when the socket closes) says the session ended.
    fn meter(&self, label: &str, mut ticks: UnixStream, claimed: &[(usize, Option<usize>)]) {
        use std::io::Read;
        let epoch = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let mut last = UsageCounters::default();
        let mut last_charged = crate::sched::host::charged(self.sched.as_ref(), claimed);
        let mut since = Instant::now();
        let mut since_wall = std::time::SystemTime::now();
        let mut buf = [0u8; std::mem::size_of::<UsageTick>()];
        loop {
            let now_counters = match ticks.read_exact(&mut buf) {
                Ok(()) => match UsageTick::read_from_bytes(&buf) {
                    Ok(t) => Some(UsageCounters {
                        allocated_bytes: t.allocated_bytes,
                        bytes_moved: t.bytes_moved,
                        ..Default::default()
                    }),
                    Err(_) => None,
                },
                Err(_) => None,
            };
            let ended = now_counters.is_none();
            let now = Instant::now();
            let now_wall = std::time::SystemTime::now();
            let current = now_counters.unwrap_or(UsageCounters {
                bytes_moved: last.bytes_moved,
                ..Default::default()
            });
            let seconds = now.duration_since(since).as_secs_f64();
            let charged = crate::sched::host::charged(self.sched.as_ref(), claimed);
            let gpu_busy_seconds = if self.sched.as_ref().is_some_and(|s| s.scheduling()) {
                charged
                    .iter()
                    .zip(&last_charged)
                    .map(|(now, before)| now.saturating_sub(*before) as f64 / 1e9)
                    .collect()
            } else {
                Vec::new()
            };
            // Ticks are a second apart: memory between two is taken as the mean of both readings.
            let mean_held = (last.allocated_bytes as f64 + current.allocated_bytes as f64) / 2.0;
            self.cfg.authority.record(UsageDelta {
                label: label.to_string(),
                period_start: epoch(since_wall),
                period_end: epoch(now_wall),
                seconds,
                memory_byte_seconds: mean_held * seconds,
                bytes_moved: current.bytes_moved.saturating_sub(last.bytes_moved),
                allocated_bytes: current.allocated_bytes,
                gpu_busy_seconds,
                ended,
            });
            if ended {
                return;
            }
            last = current;
            last_charged = charged;
            since = now;
            since_wall = now_wall;
        }
    }

    /// Ends every live session with one of these labels: its worker is told to exit and frees its memory.
    fn end_sessions(&self, labels: &[String]) {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for (id, entry) in sessions.iter() {
            if !entry.label.is_empty() && labels.contains(&entry.label) {
                tracing::warn!("session {id:016x} ({}): ended by the control plane", entry.label);
                let _ = entry.control.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// The spare worker if it is alive, else a fresh one.
    fn take_worker(&self) -> Result<Spare, String> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut s) = spare {
            if matches!(s.child.try_wait(), Ok(None)) {
                return Ok(s);
            }
            tracing::warn!("the spare worker had exited; starting a fresh one");
        }
        self.new_worker(None)
    }

    /// A fresh worker; `sm_percent`: its SM limit under MPS.
    fn new_worker(&self, sm_percent: Option<u32>) -> Result<Spare, String> {
        let (control, child_end) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let child = self
            .spawn_worker(&child_end, sm_percent)
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        Ok(Spare { child, control })
    }

    /// Starts a spare worker if there is none.
    fn refill_spare(&self) {
        if !self.keep_spare || self.spare.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        match self.new_worker(None) {
            Ok(w) => {
                let mut slot = self.spare.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(w);
                } else {
                    // Another thread filled it meanwhile; this one is not needed (closing its socket ends it).
                    drop(slot);
                    let mut w = w;
                    drop(w.control);
                    let _ = w.child.wait();
                }
            }
            Err(e) => tracing::warn!("cannot start a spare worker: {e}"),
        }
    }

    fn spawn_worker(&self, child_end: &UnixStream, sm_percent: Option<u32>) -> std::io::Result<Child> {
        let fd = child_end.as_raw_fd();
        // The worker inherits exactly these descriptors (its control socket and the scheduler's table): clear
        // close-on-exec on them alone. The table's descriptor stays inheritable: every worker gets it.
        crate::sys::clear_cloexec(fd)?;
        if let Some(s) = &self.sched {
            crate::sys::clear_cloexec(s.fd())?;
        }
        let (program, args) = self
            .cfg
            .worker_command
            .split_first()
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("VGPU_WORKER_FD", fd.to_string())
            .env("VGPU_WORKER_BACKEND", self.resolved.as_str())
            .env(
                "VGPU_WORKER_STALL_MS",
                self.cfg.admission.stall_timeout.as_millis().to_string(),
            );
        if let Some(d) = &self.cfg.driver {
            cmd.env("VGPU_WORKER_DRIVER", d);
        }
        if self.cfg.identity != 0 {
            cmd.env("VGPU_WORKER_IDENTITY", self.cfg.identity.to_string());
        }
        if let Some(s) = &self.sched {
            cmd.env("VGPU_WORKER_SCHED_FD", s.fd().to_string());
        }
        if let Some(p) = sm_percent {
            cmd.env("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", p.to_string());
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
    let identity = match std::env::var("VGPU_WORKER_IDENTITY") {
        Ok(v) => crate::identity::parse(&v)?,
        Err(_) => 0,
    };
    // SAFETY: the server passed this descriptor to us (and only us) through VGPU_WORKER_FD.
    let control = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Err(e) = crate::session::forward_stdout() {
        tracing::warn!("device printf output stays on the server: cannot capture stdout ({e})");
    }
    // The scheduler's table (the server made it; every worker maps it).
    let region = match std::env::var("VGPU_WORKER_SCHED_FD")
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    {
        Some(sfd) => {
            // SAFETY: the server passed this descriptor to every worker through VGPU_WORKER_SCHED_FD.
            let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };
            match crate::sched::gate::attach_region(&sfd) {
                Ok(r) => Some(r),
                Err(why) => {
                    tracing::warn!("{why}; this worker's sessions run unscheduled");
                    None
                }
            }
        }
        None => None,
    };
    // The driver starts before any session arrives: a spare worker waits here fully initialised.
    let (backend, _) = open_backend(choice, driver.as_deref(), identity)?;
    if let Some(r) = region {
        backend.share_device_timeline(&r.gpus[0].emulated_busy_until);
    }
    let mut session: Option<Arc<Session>> = None;
    let mut buf = [0u8; std::mem::size_of::<Handoff>()];
    loop {
        let (n, fds) = fdpass::recv_with_fds(&control, &mut buf, 2).map_err(|e| format!("control socket: {e}"))?;
        if n == 0 {
            tracing::info!("server went away (or ended this session); worker exits");
            std::process::exit(0);
        }
        // The connection, and with the session's first one its link to the server's IPC registry.
        let mut fds = fds.into_iter();
        let (Ok(handoff), Some(fd)) = (Handoff::read_from_bytes(&buf[..n]), fds.next()) else {
            return Err("malformed handoff from the server".into());
        };
        let registry = fds.next();
        let session = match &session {
            Some(s) => s.clone(),
            None => {
                // The session's first connection brings its limits and its scheduler slots.
                let limits = handoff.limits()?;
                let sched = region.and_then(|r| {
                    crate::sched::host::session_sched(r, &backend, handoff.session_id, &handoff.slots, &limits)
                });
                let s = Session::scheduled(backend.clone(), limits, sched);
                if let Some(link) = registry {
                    s.attach_registry(RegistryLink::new(UnixStream::from(link)));
                }
                let ticks = control.try_clone().map_err(|e| format!("control socket: {e}"))?;
                let _ = METER.set((ticks, s.clone()));
                std::thread::spawn(|| loop {
                    std::thread::sleep(USAGE_TICK);
                    report_usage();
                });
                session = Some(s.clone());
                s
            }
        };
        std::thread::spawn(move || serve_connection(session, handoff, fd));
    }
}

/// The worker's end of the usage channel and its session, for `report_usage`.
static METER: std::sync::OnceLock<(UnixStream, Arc<Session>)> = std::sync::OnceLock::new();

/// Sends the session's usage to the listener (every tick, and once more just before the worker exits).
fn report_usage() {
    use std::io::Write as _;
    if let Some((socket, session)) = METER.get() {
        let u = session.usage();
        let tick = UsageTick {
            allocated_bytes: u.allocated_bytes,
            bytes_moved: u.bytes_moved,
        };
        let _ = (&*socket).write_all(tick.as_bytes());
    }
}

/// Ends the worker process after a last usage report.
fn exit_worker(code: i32) -> ! {
    report_usage();
    std::process::exit(code)
}

/// The stall timeout the listener gave this worker (`VGPU_WORKER_STALL_MS`).
fn stall_timeout() -> Duration {
    std::env::var("VGPU_WORKER_STALL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(AdmissionLimits::default().stall_timeout, Duration::from_millis)
}

fn serve_connection(session: Arc<Session>, handoff: Handoff, fd: OwnedFd) {
    let raw_fd = fd.as_raw_fd();
    let transport: Result<Box<dyn Transport>, String> = match handoff.transport {
        0 => TcpTransport::from_stream(TcpStream::from(fd))
            .map(|t| Box::new(t) as _)
            .map_err(|e| e.to_string()),
        3 => ResumeState::decode(&handoff.tls)
            .and_then(|state| TlsTransport::resume(TcpStream::from(fd), &state))
            .map(|t| Box::new(t) as _)
            .map_err(|e| e.to_string()),
        2 => RdmaTransport::accept(TcpStream::from(fd))
            .map(|t| Box::new(t) as _)
            .map_err(|e| e.to_string()),
        _ => ShmTransport::accept(UnixStream::from(fd))
            .map(|t| Box::new(t) as _)
            .map_err(|e| e.to_string()),
    };
    let transport = match transport {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("session {:016x}: transport setup failed: {e}", handoff.session_id);
            if handoff.primary == 1 {
                exit_worker(1);
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
    let bytes = encode_welcome(&welcome, &session.visible_devices(), &backend.describe());
    // From here on a client that stops in the middle of a frame is disconnected (see `stall`).
    let mut transport = crate::stall::StallWatch::global(stall_timeout()).guard(transport, raw_fd);
    let outcome = match transport.send(&[&bytes]) {
        Ok(()) => session.serve_channel(&mut transport),
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
            exit_worker(2);
        }
        exit_worker(0);
    }
}
