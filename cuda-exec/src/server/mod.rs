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

mod hello;
mod listener;
mod worker;

use hello::{constant_time_eq, read_hello_by, EarlyRefusal, MAX_HELLO};
pub use worker::run_worker_from_env;

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
    /// Other servers the session may send copies to besides the operator's `--peer` list: those its (signed)
    /// ticket names, as clients dial them.
    pub peers: Vec<vgpu_dataplane::Endpoint>,
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
            peers: Vec::new(),
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
    /// `--peer`: the servers this one may send copies to directly (`PeerSend`); empty: none.
    pub peers: Vec<vgpu_dataplane::Endpoint>,
    /// Whether clients may ask for compressed channels (`CAP_PACKED`; `--no-compress` turns it off).
    pub compress: bool,
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
    /// 1 for the session's first connection: the worker exits when it closes. `HANDOFF_PEER`: another server
    /// delivering a copy, `secret` being its grant's token.
    primary: u32,
    session_id: u64,
    secret: [u8; 16],
    pid: u32,
    /// `HANDOFF_PACKED`: the client asked for a compressed channel and this server allows it.
    flags: u32,
    /// The session's limits (read from the primary connection's handoff): memory in bytes (`u64::MAX`: none),
    /// and the visible devices (`device_count == u32::MAX`: all of them).
    memory_limit: u64,
    device_count: u32,
    /// `HANDOFF_LANE`: the lane's index among its channel's lanes (`secret` carries its join token).
    lane_index: u32,
    devices: [u32; MAX_VISIBLE],
    /// The session's scheduler slot on each server device (by ordinal; `sched::host::NO_SLOT`: not scheduled there).
    slots: [u16; MAX_VISIBLE],
    /// A TLS connection's record state (`ResumeState::encode`); zero for other transports.
    tls: [u8; RESUME_LEN],
    _pad3: [u8; 6],
    /// The session's first connection: `Admission::peers`, comma-separated (zero bytes after), as many whole
    /// entries as fit.
    peers: [u8; PEER_LIST_LEN],
}

impl Default for Handoff {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

/// Room in a handoff for a session's ticket peers (16 servers of the longest `tls://host:port#sha256=` form fit).
const PEER_LIST_LEN: usize = 2048;

/// `Handoff::flags`: the channel is compressed after the welcome (`CAP_PACKED`), where it beats the link
/// (`CAP_PACKED_AUTO`).
const HANDOFF_PACKED: u32 = 1;
const HANDOFF_PACKED_AUTO: u32 = 2;
/// `Handoff::primary` of a connection from another GPU server delivering a copy (`MODE_PEER`).
const HANDOFF_PEER: u32 = 2;
/// `Handoff::primary` of an extra connection of a client channel (`MODE_LANE`).
const HANDOFF_LANE: u32 = 3;
/// Most devices a ticket can make visible to one session.
const MAX_VISIBLE: usize = 16;

impl Handoff {
    /// Writes the session's ticket peers, as many whole entries as fit (a longer list loses its tail: those copies
    /// are relayed by the client).
    fn set_peers(&mut self, peers: &[vgpu_dataplane::Endpoint]) {
        let mut at = 0;
        for p in peers {
            let text = p.to_string();
            let sep = usize::from(at > 0);
            if at + sep + text.len() > PEER_LIST_LEN {
                tracing::warn!(
                    "a ticket names more servers than a handoff carries; copies to {p} go through the client"
                );
                continue;
            }
            if sep == 1 {
                self.peers[at] = b',';
            }
            self.peers[at + sep..at + sep + text.len()].copy_from_slice(text.as_bytes());
            at += sep + text.len();
        }
    }

    /// The ticket peers `set_peers` wrote (entries that do not parse are left out).
    fn peers(&self) -> Vec<vgpu_dataplane::Endpoint> {
        let end = self.peers.iter().position(|&b| b == 0).unwrap_or(PEER_LIST_LEN);
        std::str::from_utf8(&self.peers[..end])
            .unwrap_or("")
            .split(',')
            .filter(|e| !e.is_empty())
            .filter_map(|e| vgpu_dataplane::Endpoint::parse(e).ok())
            .collect()
    }

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
    let gpudirect = crate::gpudirect::Setting::from_env()?;
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
    let gpudirect_line = crate::gpudirect::decide(&*backend, gpudirect, crate::gpudirect::host_ports()).1;
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
                let _ = writeln!(out, "vgpu server: {}", gpudirect_line);
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
    if !listener.cfg.peers.is_empty() {
        let peers: Vec<String> = listener.cfg.peers.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(out, "vgpu server: sends copies directly to {}", peers.join(", "));
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

#[cfg(test)]
mod tests {
    use super::*;
    use vgpu_dataplane::Endpoint;

    #[test]
    fn ticket_peers_cross_the_handoff_whole_or_not_at_all() {
        let pin = "ab".repeat(32);
        let list: Vec<Endpoint> = (0..16)
            .map(|i| Endpoint::parse(&format!("tls://gpu-server-{i:02}.example:7443#sha256={pin}")).expect("endpoint"))
            .collect();
        let mut h = Handoff::default();
        h.set_peers(&list);
        assert_eq!(h.peers(), list, "sixteen of the longest form fit");
        let many: Vec<Endpoint> = (0..40)
            .map(|i| Endpoint::parse(&format!("tls://gpu-server-{i:02}.example:7443#sha256={pin}")).expect("endpoint"))
            .collect();
        let mut h = Handoff::default();
        h.set_peers(&many);
        let got = h.peers();
        assert!(got.len() < many.len() && !got.is_empty());
        assert_eq!(got[..], many[..got.len()], "whole entries, in order");
        assert!(Handoff::default().peers().is_empty());
    }
}
