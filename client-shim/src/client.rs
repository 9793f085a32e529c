//! The connection to the GPU server: one channel per app thread, asynchronous calls batched per channel and
//! flushed at synchronous calls (TCP also by a background flusher), replies and pushed copy data read back.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::*;
use vgpu_dataplane::wire::*;
use vgpu_dataplane::{Endpoint, Transport};
use zerocopy::{FromBytes, IntoBytes};

use crate::log::{log, ERROR, INFO, WARN};

/// Returned by every call once the server is gone: the app sees a lost device, as with a GPU that fell off the bus.
pub const LOST: CUresult = CUDA_ERROR_DEVICE_UNAVAILABLE;

/// Immutable facts of the session, fixed at `cuInit`.
pub struct Session {
    pub endpoint: Endpoint,
    pub session_id: u64,
    pub secret: [u8; 16],
    pub backend: u32,
    /// What the server can do beyond the base protocol (`handshake::CAP_*`).
    pub capabilities: u64,
    pub driver_version: i32,
    pub devices: Vec<DeviceFacts>,
    /// Async calls are batched up to this many bytes before a write (0: write each call at once).
    batch_limit: usize,
    /// The first channel; kept for the life of the process, because its closing ends the session.
    _primary: Arc<Mutex<Channel>>,
}

static SESSION: OnceLock<CuResult<Session>> = OnceLock::new();

/// The session, or the error `cuInit` returned (`CUDA_ERROR_NOT_INITIALIZED` before `cuInit`).
pub fn session() -> CuResult<&'static Session> {
    match SESSION.get() {
        Some(Ok(s)) => Ok(s),
        Some(Err(e)) => Err(*e),
        None => Err(CUDA_ERROR_NOT_INITIALIZED),
    }
}

/// Connects to the server named by `VGPU_SERVER` (once per process) and returns `cuInit`'s result.
pub fn init() -> CUresult {
    match SESSION.get_or_init(connect_session) {
        Ok(_) => CUDA_SUCCESS,
        Err(e) => *e,
    }
}

fn connect_session() -> CuResult<Session> {
    let target = crate::ticket::target()?;
    let endpoint = Endpoint::parse(&target.server).map_err(|why| {
        log!(ERROR, "VGPU_SERVER: {why}");
        CUDA_ERROR_NO_DEVICE
    })?;
    let credential = target.credential;
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        capabilities: CAPABILITIES,
        mode: MODE_NEW_SESSION,
        pid: std::process::id(),
        ..Default::default()
    };
    let (transport, welcome, devices, message) = open_channel(&endpoint, &hello, credential.as_bytes())?;
    let batch_limit = match transport.kind() {
        "tcp" | "tls" | "rdma" => std::env::var("VGPU_BATCH_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64 * 1024),
        _ => 0,
    };
    log!(INFO, "connected to {endpoint} ({message}), {} device(s)", devices.len());
    crate::report_stats_at_exit();
    let primary = Arc::new(Mutex::new(Channel::new(transport)));
    if batch_limit > 0 {
        register_for_flushing(&primary);
    }
    CHANNEL.with(|c| *c.borrow_mut() = Some(primary.clone()));
    Ok(Session {
        endpoint,
        session_id: welcome.session_id,
        secret: welcome.secret,
        backend: welcome.backend,
        capabilities: welcome.capabilities,
        driver_version: welcome.driver_version,
        devices,
        batch_limit,
        _primary: primary,
    })
}

type Opened = (Box<dyn Transport>, Welcome, Vec<DeviceFacts>, String);

fn open_channel(endpoint: &Endpoint, hello: &Hello, credential: &[u8]) -> CuResult<Opened> {
    let framed = encode_hello(hello, credential);
    let mut t = vgpu_transports::connect(endpoint, &framed).map_err(|e| {
        log!(
            ERROR,
            "cannot reach the GPU server at {endpoint}: {e} (is `vgpu server` running? set VGPU_SERVER)"
        );
        CUDA_ERROR_NO_DEVICE
    })?;
    let mut head = [0u8; std::mem::size_of::<Welcome>()];
    t.recv_exact(&mut head).map_err(|e| {
        log!(
            ERROR,
            "the GPU server at {endpoint} closed the connection during the handshake: {e}"
        );
        CUDA_ERROR_NO_DEVICE
    })?;
    let welcome = Welcome::read_from_bytes(&head[..]).map_err(|_| CUDA_ERROR_NO_DEVICE)?;
    let tail_len = welcome_tail_len(&welcome).map_err(|why| {
        log!(ERROR, "{endpoint}: {why}");
        CUDA_ERROR_NO_DEVICE
    })?;
    let mut tail = vec![0u8; tail_len];
    t.recv_exact(&mut tail).map_err(|_| CUDA_ERROR_NO_DEVICE)?;
    // The hello and its welcome: one round trip (the TCP handshake before it is not counted).
    stats::add(stats::ROUND_TRIPS, 1);
    stats::add(stats::BYTES_SENT, framed.len() as u64);
    stats::add(stats::BYTES_RECEIVED, (head.len() + tail_len) as u64);
    let (devices, message) = decode_welcome_tail(&welcome, &tail).map_err(|_| CUDA_ERROR_NO_DEVICE)?;
    match welcome.status {
        STATUS_OK if welcome.version == PROTOCOL_VERSION => Ok((t, welcome, devices, message)),
        STATUS_OK | STATUS_VERSION_MISMATCH => {
            log!(ERROR, "GPU server at {endpoint} refused: {message}");
            Err(CUDA_ERROR_SYSTEM_DRIVER_MISMATCH)
        }
        STATUS_UNAUTHORIZED => {
            log!(ERROR, "GPU server at {endpoint} refused: {message}");
            Err(CUDA_ERROR_NOT_PERMITTED)
        }
        _ => {
            log!(ERROR, "GPU server at {endpoint} refused: {message}");
            Err(CUDA_ERROR_NO_DEVICE)
        }
    }
}

thread_local! {
    static CHANNEL: RefCell<Option<Arc<Mutex<Channel>>>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's channel, opening one (attached to the session) on the thread's first call.
pub fn with_channel<R>(f: impl FnOnce(&mut Channel, &Session) -> CuResult<R>) -> CuResult<R> {
    let s = session()?;
    // At process exit the runtime's atexit handlers still make calls (primary context release) after this
    // thread's locals are gone: those go over the first channel, which lives as long as the session.
    let ch = CHANNEL.try_with(|c| -> CuResult<Arc<Mutex<Channel>>> {
        let mut slot = c.borrow_mut();
        if let Some(ch) = &*slot {
            return Ok(ch.clone());
        }
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            capabilities: CAPABILITIES,
            mode: MODE_ATTACH,
            pid: std::process::id(),
            session_id: s.session_id,
            secret: s.secret,
            ..Default::default()
        };
        let (t, ..) = open_channel(&s.endpoint, &hello, &[]).map_err(|_| LOST)?;
        let ch = Arc::new(Mutex::new(Channel::new(t)));
        if s.batch_limit > 0 {
            register_for_flushing(&ch);
        }
        *slot = Some(ch.clone());
        Ok(ch)
    });
    let ch = match ch {
        Ok(ch) => ch?,
        Err(_) => s._primary.clone(),
    };
    let mut guard = lock(&ch);
    f(&mut guard, s)
}

fn lock(ch: &Mutex<Channel>) -> MutexGuard<'_, Channel> {
    ch.lock().unwrap_or_else(|p| p.into_inner())
}

/// Largest reply tail a synchronous call accepts (the function table of the largest library images stays far
/// below it), and the first piece one is received in (memory grows with the bytes that arrived, doubling).
const MAX_REPLY_TAIL: usize = 256 << 20;
const REPLY_TAIL_STEP: usize = 64 << 10;

/// One app thread's link to its server thread.
pub struct Channel {
    transport: Box<dyn Transport>,
    batch: BytesMut,
    broken: bool,
}

static LOST_REPORTED: AtomicBool = AtomicBool::new(false);

impl Channel {
    /// A channel over an open transport (after the handshake). Public for the fuzzing harness, which plays a
    /// hostile server to it.
    pub fn new(transport: Box<dyn Transport>) -> Self {
        Channel {
            transport: Box::new(stats::Counted(transport)),
            batch: BytesMut::with_capacity(64 * 1024),
            broken: false,
        }
    }

    fn fail(&mut self, what: &dyn std::fmt::Display) -> CUresult {
        self.broken = true;
        if !LOST_REPORTED.swap(true, Ordering::Relaxed) {
            log!(
                ERROR,
                "lost the GPU server: {what}; every CUDA call now fails with CUDA_ERROR_DEVICE_UNAVAILABLE"
            );
        }
        LOST
    }

    /// The next request's number, from one counter for all channels: the server submits work to the driver in
    /// this order across its channel threads, as the app submitted it across its threads. Taken under this
    /// channel's lock right before the request joins the batch, so each channel's numbers rise in send order.
    /// Never 0 (the server's starting point).
    fn next_seq(&mut self) -> u32 {
        static SUBMIT_ORDER: AtomicU32 = AtomicU32::new(0);
        let mut seq = SUBMIT_ORDER.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if seq == 0 {
            seq = SUBMIT_ORDER.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        }
        seq
    }

    /// Writes out this channel's batch only (used while flushing the other channels).
    fn flush_own(&mut self) -> CuResult<()> {
        if self.broken || self.batch.is_empty() {
            return Ok(());
        }
        stats::add(stats::BATCH_FLUSHES, 1);
        let r = self.transport.send(&[&self.batch]);
        self.batch.clear();
        r.map_err(|e| self.fail(&e))
    }

    /// Writes out everything batched so far.
    pub fn flush(&mut self) -> CuResult<()> {
        if self.broken {
            return Err(LOST);
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        flush_other_channels();
        stats::add(stats::BATCH_FLUSHES, 1);
        let r = self.transport.send(&[&self.batch]);
        self.batch.clear();
        r.map_err(|e| self.fail(&e))
    }

    /// Queues an asynchronous call; its error, if any, latches on the server.
    pub fn post<C: AsyncCall>(&mut self, flags: u16, call: &C, tail: &[u8], batch_limit: usize) -> CuResult<()> {
        self.post_with(flags, call, tail.len(), |buf| buf.put_slice(tail), batch_limit)
    }

    /// Queues an asynchronous call whose `tail_len`-byte tail `write_tail` appends in place.
    pub fn post_with<C: AsyncCall>(
        &mut self,
        flags: u16,
        call: &C,
        tail_len: usize,
        write_tail: impl FnOnce(&mut BytesMut),
        batch_limit: usize,
    ) -> CuResult<()> {
        if self.broken {
            return Err(LOST);
        }
        stats::add(stats::ASYNC_CALLS, 1);
        let seq = self.next_seq();
        let header = request_header::<C>(seq, flags, tail_len);
        if tail_len >= 256 * 1024 {
            // Large tails (async host-to-device data) go out directly rather than through the batch.
            let mut tail = BytesMut::with_capacity(tail_len);
            write_tail(&mut tail);
            self.flush()?;
            flush_other_channels();
            stats::add(stats::BATCH_FLUSHES, 1);
            return self
                .transport
                .send(&[header.as_bytes(), call.as_bytes(), &tail])
                .map_err(|e| self.fail(&e));
        }
        let was_empty = self.batch.is_empty();
        self.batch.put_slice(header.as_bytes());
        self.batch.put_slice(call.as_bytes());
        let before = self.batch.len();
        write_tail(&mut self.batch);
        debug_assert_eq!(self.batch.len() - before, tail_len);
        if self.batch.len() >= batch_limit {
            self.flush()
        } else {
            if was_empty {
                wake_flusher();
            }
            Ok(())
        }
    }

    /// Sends a synchronous call (after the batch) and waits for its reply; `reply_tail` receives any bytes
    /// after the fixed reply body.
    pub fn call<C: SyncCall>(
        &mut self,
        flags: u16,
        call: &C,
        tail: &[u8],
        reply_tail: Option<&mut Vec<u8>>,
    ) -> CuResult<C::Reply> {
        let seq = self.send_sync::<C>(flags, call, tail)?;
        let header = self.await_reply(seq)?;
        if header.status() != CUDA_SUCCESS {
            note_sticky(header.status());
            self.skip(header.len as usize)?;
            return Err(header.status());
        }
        let body_len = std::mem::size_of::<C::Reply>();
        if (header.len as usize) < body_len {
            return Err(self.fail(&"short reply"));
        }
        let mut reply = C::Reply::default();
        self.transport
            .recv_exact(reply.as_mut_bytes())
            .map_err(|e| self.fail(&e))?;
        let extra = header.len as usize - body_len;
        match reply_tail {
            Some(buf) => self.recv_reply_tail(buf, extra)?,
            None => self.skip(extra)?,
        }
        Ok(reply)
    }

    /// `cuMemcpyDtoH`: the data lands straight in `dst`, then a final status word follows.
    pub fn copy_to_host(&mut self, flags: u16, call: &MemcpyDtoH, dst: &mut [u8]) -> CuResult<()> {
        let seq = self.send_sync::<MemcpyDtoH>(flags, call, &[])?;
        let header = self.await_reply(seq)?;
        if header.status() != CUDA_SUCCESS {
            note_sticky(header.status());
            self.skip(header.len as usize)?;
            return Err(header.status());
        }
        if header.len as usize != dst.len() + 4 {
            return Err(self.fail(&"device-to-host reply of the wrong length"));
        }
        self.transport.recv_exact(dst).map_err(|e| self.fail(&e))?;
        let mut status = [0u8; 4];
        self.transport.recv_exact(&mut status).map_err(|e| self.fail(&e))?;
        CUresult::from_code(u32::from_le_bytes(status)).result()
    }

    fn send_sync<C: SyncCall>(&mut self, flags: u16, call: &C, tail: &[u8]) -> CuResult<u32> {
        if self.broken {
            return Err(LOST);
        }
        flush_other_channels();
        stats::note_sync(C::OP);
        let seq = self.next_seq();
        let header = request_header::<C>(seq, flags, tail.len());
        let r = if self.batch.is_empty() {
            self.transport.send(&[header.as_bytes(), call.as_bytes(), tail])
        } else {
            let r = self
                .transport
                .send(&[&self.batch, header.as_bytes(), call.as_bytes(), tail]);
            self.batch.clear();
            r
        };
        r.map_err(|e| self.fail(&e))?;
        Ok(seq)
    }

    /// Reads frames until the reply to `seq`, landing pushed async-copy data on the way.
    fn await_reply(&mut self, seq: u32) -> CuResult<ReplyHeader> {
        let _wait = stats::ReplyWait::start();
        loop {
            let mut head = ReplyHeader::default();
            self.transport
                .recv_exact(head.as_mut_bytes())
                .map_err(|e| self.fail(&e))?;
            match head.kind {
                REPLY_KIND_RESULT if head.seq == seq => return Ok(head),
                REPLY_KIND_RESULT => return Err(self.fail(&format!("reply {} where {seq} was due", head.seq))),
                REPLY_KIND_PUSH => self.land_push(head.len as usize)?,
                REPLY_KIND_STDOUT => self.relay_stdout(head.len as usize)?,
                other => return Err(self.fail(&format!("unknown frame kind {other}"))),
            }
        }
    }

    fn land_push(&mut self, len: usize) -> CuResult<()> {
        let mut push = PushHeader::default();
        if len < std::mem::size_of::<PushHeader>() {
            return Err(self.fail(&"short push frame"));
        }
        self.transport
            .recv_exact(push.as_mut_bytes())
            .map_err(|e| self.fail(&e))?;
        let data_len = len - std::mem::size_of::<PushHeader>();
        let target = pending_take(PendingId(push.pending_id));
        match target {
            Some(l) if l.len() == data_len && push.len as usize == data_len && l.rows <= 1 => {
                let dst = crate::ffi::fill(l.addr, data_len);
                self.transport.recv_exact(dst).map_err(|e| self.fail(&e))
            }
            Some(l) if l.len() == data_len && push.len as usize == data_len => {
                let mut packed = vec![0u8; data_len];
                self.transport.recv_exact(&mut packed).map_err(|e| self.fail(&e))?;
                for (row, chunk) in packed.chunks_exact(l.width).enumerate() {
                    crate::ffi::fill(l.addr + row * l.pitch, l.width).copy_from_slice(chunk);
                }
                Ok(())
            }
            _ => {
                log!(
                    WARN,
                    "server pushed {data_len} bytes for unknown copy {}",
                    push.pending_id
                );
                self.skip(data_len)
            }
        }
    }

    /// Receives `len` bytes of a reply's tail into `buf`, which grows with what arrives (a server announcing more
    /// than `MAX_REPLY_TAIL` is treated as lost: no call's reply comes near it).
    fn recv_reply_tail(&mut self, buf: &mut Vec<u8>, len: usize) -> CuResult<()> {
        if len > MAX_REPLY_TAIL {
            return Err(self.fail(&format!("reply tail of {len} bytes announced")));
        }
        buf.clear();
        let mut step = REPLY_TAIL_STEP;
        while buf.len() < len {
            let start = buf.len();
            let end = len.min(start + step);
            buf.resize(end, 0);
            self.transport
                .recv_exact(&mut buf[start..end])
                .map_err(|e| self.fail(&e))?;
            step = step.saturating_mul(2);
        }
        Ok(())
    }

    /// Copies a frame of the server driver's standard output to the app's, piece by piece.
    fn relay_stdout(&mut self, mut len: usize) -> CuResult<()> {
        let mut piece = [0u8; 4096];
        while len > 0 {
            let n = len.min(piece.len());
            self.transport.recv_exact(&mut piece[..n]).map_err(|e| self.fail(&e))?;
            crate::ffi::write_stdout(&piece[..n]);
            len -= n;
        }
        Ok(())
    }

    fn skip(&mut self, mut len: usize) -> CuResult<()> {
        let mut scratch = [0u8; 4096];
        while len > 0 {
            let n = len.min(scratch.len());
            self.transport
                .recv_exact(&mut scratch[..n])
                .map_err(|e| self.fail(&e))?;
            len -= n;
        }
        Ok(())
    }
}

/// The sticky error a synchronous call reported (a kernel fault: the context is unusable until it is
/// reset), 0 if none. Calls the client answers without waiting for the server (stream and event creation,
/// launches) return it at once, as the native driver does, instead of latching another copy of it on
/// the server. Process-wide: the error of any context poisons the client's view of all of them, which is
/// exact for the usual one context per device.
static STICKY: AtomicU32 = AtomicU32::new(0);

fn note_sticky(code: CUresult) {
    // ILLEGAL_ADDRESS, LAUNCH_TIMEOUT, ASSERT, HARDWARE_STACK_ERROR, ILLEGAL_INSTRUCTION,
    // MISALIGNED_ADDRESS, INVALID_ADDRESS_SPACE, INVALID_PC, LAUNCH_FAILED.
    if matches!(code.code(), 700 | 702 | 710 | 714..=719) {
        let _ = STICKY.compare_exchange(0, code.code(), Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// `Err(the sticky error)` once a kernel fault was reported, until the primary context is reset.
pub fn sticky_error() -> CuResult<()> {
    CUresult::from_code(STICKY.load(Ordering::Relaxed)).result()
}

/// A successful `cuDevicePrimaryCtxReset` ends the sticky error (the faulted context is gone).
pub fn clear_sticky() {
    STICKY.store(0, Ordering::Relaxed);
}

/// Sends a synchronous call on this thread's channel.
pub fn call<C: SyncCall>(flags: u16, c: &C, tail: &[u8]) -> CuResult<C::Reply> {
    with_channel(|ch, _| ch.call(flags, c, tail, None))
}

/// Sends a synchronous call whose reply carries a tail.
pub fn call_with_tail<C: SyncCall>(flags: u16, c: &C, tail: &[u8], reply_tail: &mut Vec<u8>) -> CuResult<C::Reply> {
    with_channel(|ch, _| ch.call(flags, c, tail, Some(reply_tail)))
}

/// Hands `fd` to the server tagged `tag`, then sends the synchronous call that names it (shared memory only).
pub fn call_with_fd<C: SyncCall>(flags: u16, c: &C, fd: std::os::fd::BorrowedFd<'_>, tag: u64) -> CuResult<C::Reply> {
    with_channel(|ch, _| {
        ch.flush()?;
        ch.transport.send_fd(fd, tag).map_err(|e| ch.fail(&e))?;
        ch.call(flags, c, &[], None)
    })
}

/// Whether this process's session runs over shared memory (so host memory can be shared with the server).
pub fn session_is_local() -> bool {
    session().is_ok_and(|s| matches!(s.endpoint, Endpoint::Shm(_)))
}

/// Queues an asynchronous call on this thread's channel.
pub fn post<C: AsyncCall>(flags: u16, c: &C, tail: &[u8]) -> CuResult<()> {
    with_channel(|ch, s| ch.post(flags, c, tail, s.batch_limit))
}

/// Sends an asynchronous call at once (not batched): for handle bindings other threads may use next.
pub fn post_now<C: AsyncCall>(flags: u16, c: &C, tail: &[u8]) -> CuResult<()> {
    with_channel(|ch, _| ch.post(flags, c, tail, 0))
}

/// Queues an asynchronous call with a tail written in place.
pub fn post_with<C: AsyncCall>(
    flags: u16,
    c: &C,
    tail_len: usize,
    write_tail: impl FnOnce(&mut BytesMut),
) -> CuResult<()> {
    with_channel(|ch, s| ch.post_with(flags, c, tail_len, write_tail, s.batch_limit))
}

/// Where the bytes of an async device-to-host copy must land: `rows` rows of `width` bytes, `pitch` apart
/// (one row for a plain copy). The server sends them packed.
#[derive(Clone, Copy, Debug)]
pub struct Landing {
    pub addr: usize,
    pub pitch: usize,
    pub width: usize,
    pub rows: usize,
}

impl Landing {
    fn len(&self) -> usize {
        self.width * self.rows
    }
}

// Device-to-host async copies waiting for their data, by id.
static PENDING: OnceLock<Mutex<HashMap<PendingId, Landing>>> = OnceLock::new();
static NEXT_PENDING: AtomicU64 = AtomicU64::new(1);

fn pending() -> MutexGuard<'static, HashMap<PendingId, Landing>> {
    PENDING
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Records where an async device-to-host copy's bytes must land; returns the id the server echoes.
pub fn pending_register(landing: Landing) -> PendingId {
    let id = PendingId(NEXT_PENDING.fetch_add(1, Ordering::Relaxed));
    pending().insert(id, landing);
    id
}

/// Whether bytes of an async device-to-host copy still under way are due to land in [addr, addr+len).
pub fn pending_overlaps(addr: usize, len: usize) -> bool {
    pending().values().any(|l| {
        let end = l.addr + l.pitch * l.rows.saturating_sub(1) + l.width;
        addr < end && l.addr < addr.saturating_add(len)
    })
}

/// Forgets every async device-to-host copy still due (a primary-context reset discarded them on the server).
pub fn pending_clear() {
    pending().clear();
}

fn pending_take(id: PendingId) -> Option<Landing> {
    pending().remove(&id)
}

// The TCP flusher: a batch must not sit unsent while the app computes, or the GPU would idle. A channel
// that becomes non-empty wakes this thread, which writes out batches still pending after a short delay.
static FLUSH_LIST: Mutex<Vec<Weak<Mutex<Channel>>>> = Mutex::new(Vec::new());

/// Before a channel sends, the calls other threads have batched go out first, so the server sees work in the
/// order the app submitted it across threads (an event recorded on one thread and waited for on another, as
/// PyTorch's autograd thread does, must reach the server in that order). A channel busy on another thread is
/// sending already.
fn flush_other_channels() {
    let others: Vec<Arc<Mutex<Channel>>> = {
        let list = FLUSH_LIST.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < 2 {
            return;
        }
        list.iter().filter_map(Weak::upgrade).collect()
    };
    for ch in others {
        if let Ok(mut other) = ch.try_lock() {
            let _ = other.flush_own();
        }
    }
}
static FLUSH_SIGNAL: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
static FLUSHER_STARTED: AtomicBool = AtomicBool::new(false);

fn register_for_flushing(ch: &Arc<Mutex<Channel>>) {
    FLUSH_LIST
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::downgrade(ch));
    if !FLUSHER_STARTED.swap(true, Ordering::Relaxed) {
        let _ = std::thread::Builder::new().name("vgpu-flusher".into()).spawn(flusher);
    }
}

fn wake_flusher() {
    if !FLUSHER_STARTED.load(Ordering::Relaxed) {
        return;
    }
    let (flag, cv) = &FLUSH_SIGNAL;
    *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
    cv.notify_one();
}

fn flusher() {
    let delay = Duration::from_micros(
        std::env::var("VGPU_FLUSH_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50),
    );
    let (flag, cv) = &FLUSH_SIGNAL;
    loop {
        {
            let mut pending = flag.lock().unwrap_or_else(|p| p.into_inner());
            while !*pending {
                pending = cv.wait(pending).unwrap_or_else(|p| p.into_inner());
            }
            *pending = false;
        }
        loop {
            std::thread::sleep(delay);
            let list: Vec<_> = {
                let mut l = FLUSH_LIST.lock().unwrap_or_else(|p| p.into_inner());
                l.retain(|w| w.strong_count() > 0);
                l.iter().filter_map(Weak::upgrade).collect()
            };
            let mut again = false;
            for ch in list {
                match ch.try_lock() {
                    Ok(mut c) => {
                        let _ = c.flush();
                    }
                    // Its thread is in a call, which flushes; look again shortly in case it only appended.
                    Err(_) => again = true,
                }
            }
            if !again {
                break;
            }
        }
    }
}

/// Traffic counters of the whole process (all channels), read through `vgpu_stat` and written at exit to
/// `VGPU_STATS`: what a program pays the link for, so its time on a longer link can be predicted (issue 21).
pub mod stats {
    use std::collections::HashMap;
    use std::ffi::CStr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    use vgpu_dataplane::wire::Op;
    use vgpu_dataplane::{Transport, TransportError};

    /// Synchronous requests that waited for their reply: each costs one round trip of the link.
    pub const ROUND_TRIPS: usize = 0;
    /// Writes of queued asynchronous calls that did not ride on a synchronous request (a full batch, the TCP
    /// flusher, a large async tail): each costs the link's latency once but nobody waits for it.
    pub const BATCH_FLUSHES: usize = 1;
    /// Asynchronous calls queued (launches, async copies, memsets, handle creation, ...).
    pub const ASYNC_CALLS: usize = 2;
    /// Bytes written to and read from the transport, framing included.
    pub const BYTES_SENT: usize = 3;
    pub const BYTES_RECEIVED: usize = 4;
    /// Time app threads spent waiting for replies, in ns.
    pub const REPLY_WAIT_NS: usize = 5;

    /// Names by index (the order of `vgpu_stat`).
    pub const NAMES: [&CStr; 6] = [
        c"round_trips",
        c"batch_flushes",
        c"async_calls",
        c"bytes_sent",
        c"bytes_received",
        c"reply_wait_ns",
    ];
    static COUNTERS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
    /// Synchronous requests by call: which calls a program's round trips are.
    static SYNC_BY_CALL: Mutex<Option<HashMap<Op, u64>>> = Mutex::new(None);

    /// Counts one synchronous request of `op`.
    pub fn note_sync(op: Op) {
        let mut m = SYNC_BY_CALL.lock().unwrap_or_else(|p| p.into_inner());
        *m.get_or_insert_with(HashMap::new).entry(op).or_insert(0) += 1;
    }

    pub fn add(index: usize, n: u64) {
        COUNTERS[index].fetch_add(n, Ordering::Relaxed);
    }

    /// Counter `index`, `None` past the last.
    pub fn get(index: usize) -> Option<u64> {
        COUNTERS.get(index).map(|c| c.load(Ordering::Relaxed))
    }

    /// One JSON object with every counter, the synchronous requests by call, and this process's id.
    pub fn json() -> String {
        let mut out = format!("{{\"pid\":{}", std::process::id());
        for (i, name) in NAMES.iter().enumerate() {
            out += &format!(",\"{}\":{}", name.to_string_lossy(), get(i).unwrap_or(0));
        }
        let mut calls: Vec<(String, u64)> = SYNC_BY_CALL
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .map(|(op, n)| (format!("{op:?}"), *n))
            .collect();
        calls.sort();
        let calls: Vec<String> = calls.iter().map(|(op, n)| format!("\"{op}\":{n}")).collect();
        out + ",\"sync_by_call\":{" + &calls.join(",") + "}}"
    }

    /// Counts one wait for a reply (a round trip) and its duration.
    pub struct ReplyWait(Instant);

    impl ReplyWait {
        pub fn start() -> ReplyWait {
            add(ROUND_TRIPS, 1);
            ReplyWait(Instant::now())
        }
    }

    impl Drop for ReplyWait {
        fn drop(&mut self) {
            add(REPLY_WAIT_NS, self.0.elapsed().as_nanos() as u64);
        }
    }

    /// A channel's transport, counting the bytes that cross it.
    pub struct Counted(pub Box<dyn Transport>);

    impl Transport for Counted {
        fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
            add(BYTES_SENT, parts.iter().map(|p| p.len() as u64).sum());
            self.0.send(parts)
        }
        fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
            add(BYTES_RECEIVED, buf.len() as u64);
            self.0.recv_exact(buf)
        }
        fn kind(&self) -> &'static str {
            self.0.kind()
        }
        fn send_fd(&mut self, fd: std::os::fd::BorrowedFd<'_>, tag: u64) -> Result<(), TransportError> {
            self.0.send_fd(fd, tag)
        }
        fn recv_fd(&mut self, tag: u64) -> Result<std::os::fd::OwnedFd, TransportError> {
            self.0.recv_fd(tag)
        }
    }
}
