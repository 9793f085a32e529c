//! The RDMA transport (feature `rdma`, rdma-core through `sideway`): each side owns a byte ring in registered memory
//! that only the peer writes, with one-sided RDMA writes whose immediate data is the doorbell.
//!
//! Design, mirroring the shared-memory transport: a sender copies outgoing bytes into a local registered staging ring
//! at the position they will have in the peer's receive ring, and posts an RDMA WRITE WITH IMMEDIATE of that stretch
//! into the peer's ring; the immediate value is the byte count. The receiver learns of new bytes from its completion
//! queue (the write's data is placed before its completion is delivered), copies them out, and returns the space as
//! credits: a zero-length write with immediate whose top bit is set, sent when a quarter of the ring was consumed or
//! before it blocks. So the ring is flow-controlled in bytes, and a send never overruns the peer.
//!
//! Queues are sized on purpose: the send queue holds `sq_depth` writes; a full one waits for completions, it never
//! fails. Each write consumes one receive request at the peer, which keeps `rq_depth` posted and reposts as it
//! polls; a peer that stops polling for that many messages makes the sender's NIC retry (RNR, retried without limit)
//! until it polls again, so that too waits. A waiting side polls its completion queue for `spin`, then sleeps on the
//! completion channel and on the setup TCP connection together: that connection carries the queue-pair exchange (QP
//! numbers, GIDs, ring addresses, keys) and then stays open, so a peer process that dies is noticed at once.
//! A failed work completion (retries exhausted, queue pair in error) ends the channel with a `TransportError`.
//!
//! Device choice: the RDMA device, port and GID whose address is the local address of the setup TCP connection (so
//! `rdma://host:port` picks the RoCE/IB interface that routes to `host`), else the first active port
//! (`VGPU_RDMA_DEVICE` and `VGPU_RDMA_GID_INDEX` override).

use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sideway::ibverbs::address::{AddressHandleAttribute, Gid};
use sideway::ibverbs::completion::{BasicCompletionQueue, CompletionChannel, GenericCompletionQueue};
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::device_context::{DeviceContext, Mtu, PortState};
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::queue_pair::{BasicQueuePair, QueuePair, QueuePairAttribute, QueuePairState};
use sideway::ibverbs::AccessFlags;
use vgpu_dataplane::transport::{Transport, TransportError};

use crate::sys::verbs::{self, Registered};
use crate::{io_to_transport, send_all};

mod book;
mod device;
mod flow;
mod regs;
mod setup;
mod verbs_end;

pub use crate::rdma_stats::{counters, RdmaCounters};
/// The receive side's bookkeeping and its vocabulary, public for the fuzz target only.
#[doc(hidden)]
pub use book::{Announce, Effect, Offer, RxBook, Segment, Step, OFFER_LEN};
use flow::*;
use regs::RegCache;
use setup::*;
use verbs_end::*;

const MAGIC: u64 = u64::from_le_bytes(*b"VGPURDM1");
/// 2: rings readable by the peer (pulled and offered bytes, `flow.rs`).
const SETUP_VERSION: u32 = 2;
/// Bytes of the setup message each side sends over TCP.
const SETUP_LEN: usize = 80;
/// The byte the client sends once its queue pair is ready to receive, so the server never writes too early.
const READY: u8 = 0x5a;

const MIN_RING: usize = 4096;
const MAX_RING: usize = 1 << 30;
const DEFAULT_RING_MB: usize = 4;
const DEFAULT_SPIN_US: u64 = 50;
const DEFAULT_SQ: u32 = 256;
const DEFAULT_RQ: u32 = 8192;
const DEFAULT_PULL_MIN_KB: usize = 64;
const DEFAULT_REG_MAX_MB: usize = 8192;
/// RDMA READs in flight per channel at most (also bounded by the device and the peer).
const MAX_READ_DEPTH: u32 = 16;
/// Spinning without yielding the core lasts at most this long (as in the shared-memory transport).
const PURE_SPIN: Duration = Duration::from_micros(4);
/// A sleeping side wakes at least this often to look again (a lost event costs at most this).
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// How long the server waits for the client's setup and ready messages.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client waits for the server's setup (the server may be starting a worker first).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long dropping an end waits for its last writes to be acknowledged before tearing the queue pair down.
const DRAIN_ON_DROP: Duration = Duration::from_secs(1);
/// How long a closing channel waits for the peer to finish reading offers it did not wait for (`send_stable`):
/// the copies they carry fail if the queue pair goes first. The peer reads them in stream order, after the requests
/// before them, so this bounds how long those may still take.
const LENT_ON_DROP: Duration = Duration::from_secs(30);

/// Immediate value of a credit message (low 31 bits: bytes returned); any other immediate is a data byte count.
const IMM_CREDIT: u32 = 1 << 31;
const WR_SEND: u64 = 1;
const WR_RECV: u64 = 2;
const WR_ATOMIC: u64 = 4;
/// Bytes after each receive ring holding a counter the peer may change with RDMA atomics (`probe_fetch_add`).
const COUNTER_BYTES: usize = 64;

/// Tunables of the RDMA transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RdmaConfig {
    /// Data bytes per ring (power of two, 4 KiB..1 GiB). Set by the client; the server takes it from the setup.
    pub ring_bytes: usize,
    /// How long a waiting side polls its completion queue before sleeping on the completion channel.
    pub spin: Duration,
    /// Writes in flight per channel (send queue depth), clamped to the device's limit.
    pub sq_depth: u32,
    /// Receive requests kept posted: messages the peer may send before this side polls again.
    pub rq_depth: u32,
    /// Sends at least this long are left in the sender's ring for the receiver to read in place (0: every send
    /// is written into the receiver's ring, and nothing is offered in place).
    pub pull_min: usize,
    /// Most bytes of listed (pinned) memory one channel keeps registered with the device.
    pub reg_max_bytes: usize,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            ring_bytes: DEFAULT_RING_MB << 20,
            spin: Duration::from_micros(DEFAULT_SPIN_US),
            sq_depth: DEFAULT_SQ,
            rq_depth: DEFAULT_RQ,
            pull_min: DEFAULT_PULL_MIN_KB << 10,
            reg_max_bytes: DEFAULT_REG_MAX_MB << 20,
        }
    }
}

impl RdmaConfig {
    /// Reads `VGPU_RDMA_RING_MB` (power of two, 1..=1024), `VGPU_RDMA_SPIN_US` (0..=1000000),
    /// `VGPU_RDMA_PULL_MIN_KB` (0: off, else 4..=1048576) and `VGPU_RDMA_REG_MAX_MB` (0..=1048576); unset: default.
    pub fn from_env() -> Result<RdmaConfig, TransportError> {
        let var = |name: &str| std::env::var(name).ok();
        let mut c = RdmaConfig::from_values(var("VGPU_RDMA_RING_MB").as_deref(), var("VGPU_RDMA_SPIN_US").as_deref())?;
        let pull_min = var("VGPU_RDMA_PULL_MIN_KB");
        if let Some(kb) = whole_setting(("VGPU_RDMA_PULL_MIN_KB", pull_min.as_deref()), 1 << 20)? {
            if kb != 0 && kb < 4 {
                let text = pull_min.unwrap_or_default();
                return Err(bad_setting("VGPU_RDMA_PULL_MIN_KB", &text, "0 (off) or 4 to 1048576"));
            }
            c.pull_min = kb << 10;
        }
        let reg_max = var("VGPU_RDMA_REG_MAX_MB");
        if let Some(mb) = whole_setting(("VGPU_RDMA_REG_MAX_MB", reg_max.as_deref()), 1 << 20)? {
            c.reg_max_bytes = mb << 20;
        }
        Ok(c)
    }

    /// As [`RdmaConfig::from_env`], from the two values as text.
    pub fn from_values(ring_mb: Option<&str>, spin_us: Option<&str>) -> Result<RdmaConfig, TransportError> {
        let mut c = RdmaConfig::default();
        let (ring, spin) = crate::ring_settings(("VGPU_RDMA_RING_MB", ring_mb), ("VGPU_RDMA_SPIN_US", spin_us))?;
        if let Some(bytes) = ring {
            c.ring_bytes = bytes;
        }
        if let Some(spin) = spin {
            c.spin = spin;
        }
        Ok(c)
    }
}

use crate::{bad_setting, protocol, whole_setting};

fn rdma_err(what: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Io(io::Error::other(format!("RDMA: {what}: {e}")))
}

/// The RDMA ports this host could serve on, one line each ("rxe0 port 1: Ethernet, 2 GIDs"), or why there are
/// none (rdma-core missing, no devices, no active port). `vgpu server` advertises `rdma://` only on `Ok`.
pub fn available() -> Result<Vec<String>, String> {
    let list = DeviceList::new()
        .map_err(|e| format!("no RDMA stack (libibverbs.so.1 not installed, or it found no devices): {e}"))?;
    if list.is_empty() {
        return Err("no RDMA devices (libibverbs found none)".into());
    }
    let mut lines = Vec::new();
    let mut why = Vec::new();
    for dev in list.iter() {
        let name = dev.name();
        let ctx = match dev.open() {
            Ok(c) => c,
            Err(e) => {
                why.push(format!("{name}: cannot open: {e}"));
                continue;
            }
        };
        for port in active_ports(&ctx) {
            let gids = (0..port.1)
                .filter(|&i| ctx.query_gid(port.0, i).is_ok_and(|g| !g.is_zero()))
                .count();
            lines.push(format!("{name} port {}: {gids} GID(s)", port.0));
        }
        if lines.is_empty() {
            why.push(format!("{name}: no active port"));
        }
    }
    if lines.is_empty() {
        return Err(format!("no active RDMA port ({})", why.join("; ")));
    }
    Ok(lines)
}

/// Whether the kernel's peer-memory module for NVIDIA GPUs (`nvidia-peermem`) is loaded, as words for the
/// server's GPUDirect line. dma-buf registration (`ibv_reg_dmabuf_mr`) needs no module; this is for the report.
pub fn peer_memory() -> String {
    let peermem = ["/sys/module/nvidia_peermem", "/sys/kernel/mm/memory_peers/nv_mem"]
        .iter()
        .find(|p| std::path::Path::new(p).exists());
    match peermem {
        Some(p) => format!("nvidia-peermem loaded: {p}"),
        None => "nvidia-peermem not loaded".to_string(),
    }
}

/// Client side: connects to `addr` (`host:port`) over TCP, writes the already-framed `hello`, then exchanges queue
/// pairs and rings with the server and returns the ready transport. The ring size comes from `config`.
pub fn connect_with(addr: &str, hello: &[u8], config: &RdmaConfig) -> Result<RdmaTransport, TransportError> {
    let cap = config.ring_bytes;
    if !cap.is_power_of_two() || !(MIN_RING..=MAX_RING).contains(&cap) {
        return Err(TransportError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ring size {cap} must be a power of two from {MIN_RING} to {MAX_RING}"),
        )));
    }
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut sock = TcpStream::connect(&addrs[..])?;
    sock.set_nodelay(true)?;
    send_all(sock.as_raw_fd(), &[hello]).map_err(io_to_transport)?;
    let mut ep = Verbs::new(sock.local_addr()?.ip(), cap, config)?;
    send_all(sock.as_raw_fd(), &[&ep.setup(cap).encode()]).map_err(io_to_transport)?;
    sock.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let peer = read_setup(&mut sock)?;
    if peer.cap != cap as u64 {
        return Err(protocol(format!(
            "the server set up a ring of {} bytes where {cap} were asked",
            peer.cap
        )));
    }
    ep.connect(&peer)?;
    sock.set_read_timeout(None)?;
    sock.write_all(&[READY]).map_err(io_to_transport)?;
    tracing::debug!(device = %ep.local.name, ring_bytes = cap, "RDMA transport set up (client)");
    Ok(RdmaTransport::new(ep, peer, sock, cap, config))
}

/// One end of an RDMA channel.
pub struct RdmaTransport {
    // Field order is drop order: the queue pair goes first, so nothing is written into the rings once they are freed.
    qp: BasicQueuePair,
    rx: Registered,
    tx: Registered,
    /// Registrations of listed memory this channel reads into or offers, and the buffer reads land in otherwise.
    regs: RegCache<verbs::ListedRegistration>,
    /// Registrations of the server's listed device memory (GPUDirect RDMA, `device.rs`).
    dev_regs: RegCache<verbs::DeviceRegistration>,
    bounce: Option<Registered>,
    pd: Arc<ProtectionDomain>,
    cq: Arc<BasicCompletionQueue>,
    channel: Arc<CompletionChannel>,
    sock: TcpStream,
    device: String,
    cap: usize,
    spin: Duration,
    chunk: usize,
    /// Consumed bytes are returned to the peer once this many are pending (or before this side blocks).
    credit_batch: u64,
    sq_depth: u32,
    rq_depth: u32,
    peer_ring: u64,
    peer_rkey: u32,
    /// The peer's send ring, which this side reads pulled bytes from.
    peer_tx: u64,
    peer_tx_rkey: u32,
    pull_min: usize,
    /// Whether the staged, unannounced positions are a pulled part (else written).
    staging_pulled: bool,
    /// Offers this side made / the peer finished reading.
    offers_sent: u64,
    offers_done: u64,
    /// Reads and atomics in flight, and how many reads may be.
    reads_out: u32,
    atomics_out: u32,
    read_depth: u32,
    /// Ring positions copied into the staging ring / posted as writes / known consumed by the peer.
    tx_head: u64,
    tx_posted: u64,
    tx_credit: u64,
    send_outstanding: u32,
    /// The incoming stream: ring positions announced and consumed, segments in order.
    book: RxBook,
    /// Ring positions returned to the peer as credits.
    rx_returned: u64,
    rq_posted: u32,
    /// What this channel moved, and how (the byte counters of `RdmaCounters`).
    moved: RdmaCounters,
    /// The first failure; every later call reports it again (as `Closed`).
    broken: Option<String>,
}

impl RdmaTransport {
    /// Server side, after the raw hello was read from this TCP stream: reads the client's setup, builds this end's
    /// queue pair and ring (of the client's size) on the device that serves the stream's local address, answers,
    /// and waits for the client's queue pair to be ready. Spin time and queue depths come from the environment.
    pub fn accept(stream: TcpStream) -> Result<Self, TransportError> {
        Self::accept_with(stream, &RdmaConfig::from_env()?)
    }

    /// As [`RdmaTransport::accept`], with explicit tunables (the ring size is the client's).
    pub fn accept_with(mut sock: TcpStream, config: &RdmaConfig) -> Result<Self, TransportError> {
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(SETUP_TIMEOUT))?;
        let peer = read_setup(&mut sock)?;
        let cap = peer.cap as usize;
        let mut ep = Verbs::new(sock.local_addr()?.ip(), cap, config)?;
        ep.connect(&peer)?;
        send_all(sock.as_raw_fd(), &[&ep.setup(cap).encode()]).map_err(io_to_transport)?;
        let mut ready = [0u8; 1];
        sock.read_exact(&mut ready).map_err(io_to_transport)?;
        if ready[0] != READY {
            return Err(protocol("the RDMA client sent a wrong ready byte"));
        }
        sock.set_read_timeout(None)?;
        tracing::debug!(device = %ep.local.name, ring_bytes = cap, "RDMA transport set up (server)");
        Ok(RdmaTransport::new(ep, peer, sock, cap, config))
    }

    fn new(ep: Verbs, peer: Setup, sock: TcpStream, cap: usize, config: &RdmaConfig) -> Self {
        RdmaTransport {
            qp: ep.qp,
            rx: ep.rx,
            tx: ep.tx,
            regs: RegCache::new(config.reg_max_bytes),
            dev_regs: RegCache::of(&vgpu_dataplane::pinned::DEVICE, config.reg_max_bytes),
            bounce: None,
            pd: ep.pd,
            cq: ep.cq,
            channel: ep.channel,
            sock,
            device: ep.local.name,
            cap,
            spin: config.spin,
            chunk: (cap / 8).clamp(MIN_RING / 2, 256 * 1024),
            credit_batch: (cap / 4) as u64,
            sq_depth: ep.sq_depth,
            rq_depth: ep.rq_depth,
            peer_ring: peer.ring_addr,
            peer_rkey: peer.rkey,
            peer_tx: peer.tx_addr,
            peer_tx_rkey: peer.tx_rkey,
            pull_min: config.pull_min,
            staging_pulled: false,
            offers_sent: 0,
            offers_done: 0,
            reads_out: 0,
            atomics_out: 0,
            read_depth: ep.read_depth,
            book: RxBook::new(cap),
            moved: RdmaCounters::default(),
            tx_head: 0,
            tx_posted: 0,
            tx_credit: 0,
            send_outstanding: 0,
            rx_returned: 0,
            rq_posted: ep.rq_depth,
            broken: None,
        }
    }

    /// Data bytes per ring.
    pub fn ring_bytes(&self) -> usize {
        self.cap
    }

    /// Measures RDMA atomics against the write-with-immediate this transport uses for credits and doorbells (issue
    /// 19): `n` FETCH_AND_ADDs of 1, one at a time, on the counter after the peer's receive ring. Returns their total
    /// time and the value the last one found. Not used by the channel itself (bench/NOTES.md §16 and §18).
    pub fn probe_fetch_add(&mut self, n: u32) -> Result<(Duration, u64), TransportError> {
        self.check()?;
        let result = Registered::new(&self.pd, 4096, AccessFlags::LocalWrite).map_err(|e| self.fail(e.into()))?;
        let (remote, rkey) = (self.peer_ring + self.cap as u64, self.peer_rkey);
        let started = Instant::now();
        for _ in 0..n {
            self.wait_raw(|t| t.send_outstanding < t.sq_depth)?;
            if let Err(e) = verbs::post_fetch_add(&mut self.qp, WR_ATOMIC, &result, 0, remote, rkey, 1) {
                return Err(self.fail(rdma_err("post fetch-and-add", e)));
            }
            self.atomics_out += 1;
            self.send_outstanding += 1;
            self.wait_raw(|t| t.atomics_out == 0)?;
        }
        let elapsed = started.elapsed();
        Ok((
            elapsed,
            result.map().u64_at(0).load(std::sync::atomic::Ordering::Acquire),
        ))
    }

    /// The counter after this side's receive ring, as the peer's atomics left it.
    pub fn counter(&self) -> u64 {
        self.rx
            .map()
            .u64_at(self.cap)
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// How this channel moved its bytes so far (byte counters only; registrations are counted per process).
    pub fn channel_counters(&self) -> RdmaCounters {
        self.moved
    }

    /// The RDMA device this end uses (e.g. "rxe0", "mlx5_0").
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Test hook: replaces the key of the peer's ring with a wrong one, as a broken registration would; the next
    /// write fails with a remote access error.
    #[doc(hidden)]
    pub fn debug_break_peer_key(&mut self) {
        self.peer_rkey ^= 0x5a5a_5a5a;
    }

    /// Test hook: replaces the key of the peer's send ring with a wrong one; the next pulled read fails with a
    /// remote access error.
    #[doc(hidden)]
    pub fn debug_break_peer_tx_key(&mut self) {
        self.peer_tx_rkey ^= 0x5a5a_5a5a;
    }

    fn fail(&mut self, e: TransportError) -> TransportError {
        if self.broken.is_none() {
            self.broken = Some(e.to_string());
            tracing::debug!(device = %self.device, "RDMA channel broken: {e}");
            // Flushes every work request still queued: no read lands in a caller's buffer, and the peer reads
            // nothing more of this side's memory, once the call that failed has returned.
            let mut attr = QueuePairAttribute::new();
            attr.setup_state(QueuePairState::Error);
            if let Err(e) = self.qp.modify(&attr) {
                tracing::debug!("RDMA: queue pair to the error state: {e}");
            }
        }
        e
    }

    fn check(&self) -> Result<(), TransportError> {
        match &self.broken {
            None => Ok(()),
            Some(_) => Err(TransportError::Closed),
        }
    }

    /// Drains the completion queue: send completions free send-queue slots; receive completions bring data or
    /// credits. Reposts receive requests as they are used up.
    fn pump(&mut self) -> Result<(), TransportError> {
        let mut failed = None;
        let cq = self.cq.clone();
        if let Ok(poller) = cq.start_poll() {
            for wc in poller {
                let status = wc.status();
                if status != 0 {
                    if failed.is_none() {
                        failed = Some((status, wc.vendor_err(), wc.wr_id()));
                    }
                    continue;
                }
                match wc.wr_id() {
                    WR_SEND => self.send_outstanding = self.send_outstanding.saturating_sub(1),
                    WR_ATOMIC => {
                        self.send_outstanding = self.send_outstanding.saturating_sub(1);
                        self.atomics_out = self.atomics_out.saturating_sub(1);
                    }
                    WR_READ => {
                        self.send_outstanding = self.send_outstanding.saturating_sub(1);
                        self.reads_out = self.reads_out.saturating_sub(1);
                    }
                    WR_RECV => {
                        self.rq_posted = self.rq_posted.saturating_sub(1);
                        if wc.opcode() != rdma_mummy_sys::ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM {
                            failed.get_or_insert((u32::MAX, wc.opcode(), WR_RECV));
                            continue;
                        }
                        let imm = u32::from_be(wc.imm_data());
                        if let Err(e) = self.on_imm(imm) {
                            return Err(self.fail(e));
                        }
                    }
                    other => {
                        failed.get_or_insert((u32::MAX - 1, 0, other));
                    }
                }
            }
        }
        if let Some((status, vendor, wr_id)) = failed {
            let e = match status {
                u32::MAX => protocol(format!(
                    "the peer sent an operation other than a write with immediate ({vendor})"
                )),
                s if s == u32::MAX - 1 => protocol(format!("completion for an unknown work request {wr_id}")),
                // Retries exhausted (peer unreachable or its queue pair gone), flushed (our queue pair is in error).
                5 | 12 | 13 => {
                    tracing::debug!(
                        "RDMA work completion failed: {} (vendor error {vendor:#x})",
                        verbs::wc_status_str(status)
                    );
                    TransportError::Closed
                }
                s => rdma_err(
                    "work completion failed",
                    format!("{} (vendor error {vendor:#x})", verbs::wc_status_str(s)),
                ),
            };
            return Err(self.fail(e));
        }
        if self.rq_posted <= self.rq_depth - self.rq_depth / 4 {
            let n = self.rq_depth - self.rq_posted;
            if let Err(e) = post_recvs(&mut self.qp, n) {
                return Err(self.fail(e));
            }
            self.rq_posted += n;
        }
        Ok(())
    }

    /// Waits until `ready` holds: polls the completion queue for `spin`, then sleeps on the completion channel and
    /// the setup socket, waking every `WAIT_SLICE`. A hung-up setup socket means the peer is gone.
    fn wait_raw(&mut self, ready: impl Fn(&Self) -> bool) -> Result<(), TransportError> {
        self.pump()?;
        if ready(self) {
            return Ok(());
        }
        let start = Instant::now();
        let mut spins = 0u32;
        while start.elapsed() < self.spin {
            self.pump()?;
            if ready(self) {
                return Ok(());
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins & 15 == 0 && start.elapsed() >= PURE_SPIN {
                std::thread::yield_now();
            }
        }
        loop {
            verbs::arm_cq(&self.cq).map_err(|e| self.fail(rdma_err("arm completion queue", e)))?;
            // Completions that arrived before arming raise no event: look once more.
            self.pump()?;
            if ready(self) {
                return Ok(());
            }
            let events = libc::POLLIN | libc::POLLRDHUP;
            let [chan, sock] =
                crate::sys::poll_fds([self.channel.as_raw_fd(), self.sock.as_raw_fd()], events, WAIT_SLICE)?;
            if chan != 0 {
                while verbs::take_cq_event(&self.channel) {}
            }
            if sock != 0 {
                // The peer closed its end (it never sends anything after the setup). Collect what it wrote before.
                let until = Instant::now() + Duration::from_millis(20);
                while Instant::now() < until {
                    self.pump()?;
                    if ready(self) {
                        return Ok(());
                    }
                    std::thread::yield_now();
                }
                return Err(self.fail(TransportError::Closed));
            }
        }
    }

    /// Returns all consumed bytes to the peer as one credit message.
    fn return_credits(&mut self) -> Result<(), TransportError> {
        let n = self.book.consumed() - self.rx_returned;
        if n == 0 {
            return Ok(());
        }
        self.write_imm(0, 0, Announce::Credit(n), "post credit write")?;
        self.rx_returned = self.book.consumed();
        Ok(())
    }

    /// Writes `len` bytes at `pos` of the send ring into the same place of the peer's ring (none: `len` 0), with
    /// `what` as the immediate, once the send queue has room. `doing` names the write in an error.
    fn write_imm(&mut self, pos: usize, len: usize, what: Announce, doing: &str) -> Result<(), TransportError> {
        self.wait_raw(|t| t.send_outstanding < t.sq_depth)?;
        let (remote, rkey) = (self.peer_ring + pos as u64, self.peer_rkey);
        let imm = what.encode().to_be();
        if let Err(e) = verbs::post_write_imm(&mut self.qp, WR_SEND, &self.tx, pos, len as u32, remote, rkey, imm) {
            return Err(self.fail(rdma_err(doing, e)));
        }
        self.send_outstanding += 1;
        Ok(())
    }

    /// Waits for `ready` after handing back every pending credit (so two sides waiting on each other always can
    /// make progress).
    fn block_until(&mut self, ready: impl Fn(&Self) -> bool) -> Result<(), TransportError> {
        self.return_credits()?;
        self.wait_raw(ready)
    }
}

impl Drop for RdmaTransport {
    fn drop(&mut self) {
        if self.broken.is_none() && self.offers_done < self.offers_sent {
            let until = Instant::now() + LENT_ON_DROP;
            while self.offers_done < self.offers_sent && Instant::now() < until {
                if self.pump().is_err() {
                    break;
                }
                // A peer that closed its end will never read them: stop waiting at once.
                let hung_up = crate::sys::poll_fds([self.sock.as_raw_fd()], libc::POLLRDHUP, Duration::from_millis(1));
                if hung_up.map_or(true, |[revents]| revents != 0) {
                    break;
                }
            }
            if self.offers_done < self.offers_sent {
                tracing::warn!(
                    "RDMA channel closed with {} offers the peer had not read: the copies they carry fail",
                    self.offers_sent - self.offers_done
                );
            }
        }
        // Let the last writes reach the peer (a server's final reply, say) before the queue pair goes away.
        if self.broken.is_none() && self.send_outstanding > 0 {
            let until = Instant::now() + DRAIN_ON_DROP;
            while self.send_outstanding > 0 && Instant::now() < until {
                if self.pump().is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_round_trips_and_is_checked() {
        let s = Setup {
            cap: 1 << 20,
            ring_addr: 0x7f00_1234_5000,
            rkey: 0xabcd,
            qpn: 17,
            psn: 0x12_3456,
            lid: 0,
            mtu: 3,
            read_depth: 16,
            gid: [7; 16],
            tx_addr: 0x7f00_9876_0000,
            tx_rkey: 0x4321,
        };
        assert_eq!(Setup::decode(&s.encode()).expect("decode"), s);
        let mut bad = s.encode();
        bad[0] ^= 1;
        assert!(matches!(Setup::decode(&bad), Err(TransportError::Protocol(_))));
        for (cap, qpn, mtu, read_depth) in [
            (5000u64, 17u32, 3u8, 16u8),
            (1 << 20, 0, 3, 16),
            (1 << 20, 1 << 24, 3, 16),
            (1 << 20, 17, 9, 16),
            (1 << 20, 17, 3, 0),
        ] {
            let b = Setup {
                cap,
                qpn,
                mtu,
                read_depth,
                ..s.clone()
            }
            .encode();
            assert!(
                matches!(Setup::decode(&b), Err(TransportError::Protocol(_))),
                "{cap} {qpn} {mtu}"
            );
        }
    }

    #[test]
    fn config_values_are_validated() {
        assert_eq!(
            RdmaConfig::from_values(None, None).expect("defaults"),
            RdmaConfig::default()
        );
        let c = RdmaConfig::from_values(Some("16"), Some("0")).expect("valid");
        assert_eq!((c.ring_bytes, c.spin), (16 << 20, Duration::ZERO));
        for bad in ["0", "3", "2048", "x"] {
            assert!(RdmaConfig::from_values(Some(bad), None).is_err(), "{bad}");
        }
        assert!(RdmaConfig::from_values(None, Some("2000000")).is_err());
        assert_eq!(whole_setting(("N", None), 10).expect("unset"), None);
        assert_eq!(whole_setting(("N", Some(" 7 ")), 10).expect("valid"), Some(7));
        for bad in ["11", "-1", "x", ""] {
            let e = whole_setting(("VGPU_RDMA_REG_MAX_MB", Some(bad)), 10).expect_err(bad);
            assert!(e.to_string().contains("VGPU_RDMA_REG_MAX_MB"), "{e}");
        }
    }

    #[test]
    fn gids_match_ipv4_mapped_and_ipv6_addresses() {
        let g = Gid::from("::ffff:10.9.0.1".parse::<Ipv6Addr>().expect("v6"));
        assert!(gid_matches(&g, "10.9.0.1".parse().expect("ip")));
        assert!(!gid_matches(&g, "10.9.0.2".parse().expect("ip")));
        let g6 = Gid::from("fe80::1".parse::<Ipv6Addr>().expect("v6"));
        assert!(gid_matches(&g6, "fe80::1".parse().expect("ip")));
    }

    #[test]
    fn available_answers_without_panicking() {
        // On machines without rdma-core or devices this is an explanation, never a crash.
        match available() {
            Ok(lines) => assert!(!lines.is_empty()),
            Err(why) => assert!(!why.is_empty()),
        }
    }
}
