//! The connections to the GPU servers: a session of one or several servers, one channel per app thread and server
//! it uses, asynchronous calls batched per channel and flushed at synchronous calls (TCP also by a background
//! flusher), replies and pushed copy data read back. `Route` says which server a call goes to.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::*;
use vgpu_dataplane::ids::ContextId;
use vgpu_dataplane::wire::*;
use vgpu_dataplane::{Endpoint, Transport};
use zerocopy::{FromBytes, IntoBytes};

use crate::log::{log, ERROR, INFO, WARN};

mod channel;
mod flusher;
mod landing;
mod lanes;
pub mod stats;

use channel::lock;
pub use channel::Channel;
use flusher::{flush_other_channels, register_for_flushing, wake_flusher};
use landing::pending_take;
pub use landing::*;

/// Returned by every call once the server is gone: the app sees a lost device, as with a GPU that fell off the bus.
pub const LOST: CUresult = CUDA_ERROR_DEVICE_UNAVAILABLE;

/// One server of the session: its own session there (handshake, secret, books), its devices, the request numbers
/// its channels share, and the first channel, which lives as long as the process (its closing ends the session
/// on that server).
pub struct Server {
    /// Its place in `Session::servers` (the order `VGPU_SERVER` or the ticket gave).
    pub index: usize,
    pub endpoint: Endpoint,
    pub session_id: u64,
    pub secret: [u8; 16],
    pub backend: u32,
    /// What the server can do beyond the base protocol (`handshake::CAP_*`).
    pub capabilities: u64,
    pub driver_version: i32,
    /// The devices as this server numbers them (its welcome's list).
    pub devices: Vec<DeviceFacts>,
    /// Async calls are batched up to this many bytes before a write (0: write each call at once).
    batch_limit: usize,
    /// The request numbers of this server's channels: one series per server, because each server submits its
    /// channels' work in the order of its own series (and would wait for numbers only another server saw).
    submit_order: AtomicU32,
    /// Requests sent to this server so far, by every thread (never wraps): a stream found idle stays idle while
    /// this does not move (`stream_known_idle`).
    requests: AtomicU64,
    primary: Arc<Mutex<Channel>>,
}

impl Server {
    /// A server record that belongs to no session, around `channel`, for the fuzzing harness (`fuzz/`), which
    /// drives a channel against a scripted hostile server.
    #[cfg(feature = "fuzzing")]
    pub fn for_fuzzing(channel: Channel) -> Server {
        Server {
            index: 0,
            endpoint: Endpoint::Tcp("127.0.0.1:9".into()),
            session_id: 0,
            secret: [0; 16],
            backend: 0,
            capabilities: 0,
            driver_version: 0,
            devices: Vec::new(),
            batch_limit: 0,
            submit_order: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            primary: Arc::new(Mutex::new(channel)),
        }
    }
}

/// Where one of CUDA's devices lives: which server, and its index in that server's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub server: usize,
    pub index: u32,
}

/// Immutable facts of the session, fixed at `cuInit`: one or several servers, and the device numbering across them.
pub struct Session {
    pub servers: Vec<Server>,
    /// Every device of every server, servers in the order given and each server's devices in its order: the
    /// "system" `CUDA_VISIBLE_DEVICES` indexes and NVML lists.
    pub system: Vec<(Placement, DeviceFacts)>,
    /// CUDA's devices by ordinal (after `CUDA_VISIBLE_DEVICES`).
    pub devices: Vec<DeviceFacts>,
    /// Where CUDA ordinal i lives.
    pub placement: Vec<Placement>,
    /// The first server's backend (`handshake::BACKEND_*`): what the sample and benchmarks report.
    pub backend: u32,
    /// What every server can do (a capability one server lacks is not used anywhere).
    pub capabilities: u64,
    /// The oldest driver among the servers.
    pub driver_version: i32,
}

impl Session {
    /// The server holding CUDA device `dev`.
    pub fn server_of(&self, dev: i32) -> CuResult<usize> {
        usize::try_from(dev)
            .ok()
            .and_then(|d| self.placement.get(d))
            .map(|p| p.server)
            .ok_or(CUDA_ERROR_INVALID_DEVICE)
    }

    /// Whether the session spans several servers.
    pub fn multi_server(&self) -> bool {
        self.servers.len() > 1
    }
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

/// Connects to the servers named by `VGPU_SERVER` or the ticket (once per process) and returns `cuInit`'s result.
pub fn init() -> CUresult {
    match SESSION.get_or_init(connect_session) {
        Ok(_) => CUDA_SUCCESS,
        Err(e) => *e,
    }
}

fn connect_session() -> CuResult<Session> {
    let target = crate::ticket::target()?;
    let endpoints = Endpoint::parse_list(&target.servers).map_err(|why| {
        log!(ERROR, "VGPU_SERVER: {why}");
        CUDA_ERROR_NO_DEVICE
    })?;
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        capabilities: CAPABILITIES,
        mode: MODE_NEW_SESSION,
        pid: std::process::id(),
        ..Default::default()
    };
    crate::report_stats_at_exit();
    let mut servers = Vec::with_capacity(endpoints.len());
    for (index, endpoint) in endpoints.into_iter().enumerate() {
        // Each server checks the same credential on its own (a ticket names GPUs on each of them).
        let (transport, welcome, devices, message) = open_channel(&endpoint, &hello, target.credential.as_bytes())?;
        let batch_limit = match transport.kind() {
            "tcp" | "tls" | "rdma" => std::env::var("VGPU_BATCH_BYTES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(64 * 1024),
            _ => 0,
        };
        log!(INFO, "connected to {endpoint} ({message}), {} device(s)", devices.len());
        let primary = Arc::new(Mutex::new(Channel::on_server(transport, index)));
        if batch_limit > 0 {
            register_for_flushing(&primary, index);
        }
        servers.push(Server {
            index,
            endpoint,
            session_id: welcome.session_id,
            secret: welcome.secret,
            backend: welcome.backend,
            capabilities: welcome.capabilities,
            driver_version: welcome.driver_version,
            devices,
            batch_limit,
            submit_order: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            primary,
        });
    }
    let system: Vec<(Placement, DeviceFacts)> = servers
        .iter()
        .flat_map(|s| {
            s.devices.iter().enumerate().map(move |(i, d)| {
                (
                    Placement {
                        server: s.index,
                        index: i as u32,
                    },
                    *d,
                )
            })
        })
        .collect();
    let uuids: Vec<String> = system.iter().map(|(_, d)| d.uuid_string()).collect();
    let visible = crate::visible::select(std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(), &uuids);
    if visible.is_empty() && !system.is_empty() {
        // Natively too: cuInit finds no device when CUDA_VISIBLE_DEVICES hides them all.
        log!(INFO, "CUDA_VISIBLE_DEVICES hides every device of the session");
        return Err(CUDA_ERROR_NO_DEVICE);
    }
    let placement: Vec<Placement> = visible.iter().map(|&i| system[i].0).collect();
    let devices: Vec<DeviceFacts> = visible.iter().map(|&i| system[i].1).collect();
    let mut session = Session {
        backend: servers.first().map_or(0, |s| s.backend),
        capabilities: servers.iter().fold(u64::MAX, |c, s| c & s.capabilities),
        driver_version: servers.iter().map(|s| s.driver_version).min().unwrap_or(0),
        servers,
        system,
        devices,
        placement,
    };
    tell_numbering(&mut session)?;
    crate::va::setup(&session)?;
    // The first server's first channel serves the thread that called cuInit.
    if let Some(s) = session.servers.first() {
        let primary = s.primary.clone();
        let _ = CHANNELS.try_with(|c| set_slot(&mut c.borrow_mut(), 0, primary));
    }
    Ok(session)
}

/// Tells each server how CUDA numbers its devices in this process, where that is not simply its own order (one
/// server whose devices all show, in order): the ordinals in every message are then the process's.
fn tell_numbering(s: &mut Session) -> CuResult<()> {
    let identity = s.servers.len() == 1
        && s.placement.len() == s.servers[0].devices.len()
        && s.placement.iter().enumerate().all(|(i, p)| p.index as usize == i);
    if identity {
        return Ok(());
    }
    for server in &s.servers {
        if server.capabilities & CAP_MULTI_SERVER == 0 {
            log!(
                ERROR,
                "{} is too old for a process that uses several servers or CUDA_VISIBLE_DEVICES (no CAP_MULTI_SERVER)",
                server.endpoint
            );
            return Err(CUDA_ERROR_SYSTEM_DRIVER_MISMATCH);
        }
        let mut pairs = Vec::new();
        for (ordinal, p) in s.placement.iter().enumerate() {
            if p.server == server.index {
                pairs.extend_from_slice(&(ordinal as u32).to_le_bytes());
                pairs.extend_from_slice(&p.index.to_le_bytes());
            }
        }
        let call = SetDeviceNumbering {
            count: (pairs.len() / 8) as u32,
            _pad: 0,
        };
        let mut ch = lock(&server.primary);
        ch.call(server, 0, &call, &pairs, None).inspect_err(|e| {
            log!(
                ERROR,
                "{}: the server refused the device numbering ({e})",
                server.endpoint
            );
        })?;
    }
    Ok(())
}

/// A synchronous call on `server`'s first channel (session set-up, before the session is published).
pub fn call_on_primary<C: SyncCall>(server: &Server, call: &C) -> CuResult<C::Reply> {
    lock(&server.primary).call(server, 0, call, &[], None)
}

type Opened = (Box<dyn Transport>, Welcome, Vec<DeviceFacts>, String);

/// The compression this process asks for on channels to `endpoint` (`VGPU_COMPRESS=lz4` or `auto`; TCP and TLS
/// only: shared memory and RDMA move bytes faster than LZ4 compresses them).
fn packing(endpoint: &Endpoint) -> Option<vgpu_transports::packed::Policy> {
    use vgpu_transports::packed::Policy;
    static MODE: OnceLock<Option<Policy>> = OnceLock::new();
    let mode = *MODE.get_or_init(|| match std::env::var("VGPU_COMPRESS").as_deref() {
        Ok("lz4") => Some(Policy::Always),
        Ok("auto") => Some(Policy::Auto),
        Ok("off") | Ok("") | Err(_) => None,
        Ok(other) => {
            log!(
                WARN,
                "VGPU_COMPRESS={other:?}: use lz4, auto or off; channels stay uncompressed"
            );
            None
        }
    });
    mode.filter(|_| matches!(endpoint, Endpoint::Tcp(_) | Endpoint::Tls { .. }))
}

fn open_channel(endpoint: &Endpoint, hello: &Hello, credential: &[u8]) -> CuResult<Opened> {
    let mut hello = *hello;
    let policy = packing(endpoint);
    match policy {
        Some(vgpu_transports::packed::Policy::Auto) => hello.capabilities |= CAP_PACKED | CAP_PACKED_AUTO,
        Some(_) => hello.capabilities |= CAP_PACKED,
        None => {}
    }
    let framed = encode_hello(&hello, credential);
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
        STATUS_OK if welcome.version == PROTOCOL_VERSION => {
            // The server agreed to compress: packed frames from here on, both ways.
            let t: Box<dyn Transport> = match policy {
                Some(p) if welcome.capabilities & CAP_PACKED != 0 => {
                    Box::new(vgpu_transports::packed::PackedTransport::with_policy(t, p))
                }
                _ => t,
            };
            Ok((t, welcome, devices, message))
        }
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
    /// This thread's channel to each server it has used, by server index (opened on first use).
    static CHANNELS: RefCell<Vec<Option<Arc<Mutex<Channel>>>>> = const { RefCell::new(Vec::new()) };
}

fn set_slot(slots: &mut Vec<Option<Arc<Mutex<Channel>>>>, server: usize, ch: Arc<Mutex<Channel>>) {
    if slots.len() <= server {
        slots.resize(server + 1, None);
    }
    slots[server] = Some(ch);
}

/// Which server a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The server of the calling thread's current context (the first server when none is current).
    Current,
    /// The server holding CUDA device `dev`; the call is about that device (an object or address of it), so
    /// that server's thread has a context of that device current when it runs (see `Channel::ensure_device`).
    Device(i32),
    /// A server by index, with no context expectation (session-wide calls).
    Server(usize),
}

/// The server the calling thread's current context belongs to (device 0's when none is current).
pub fn current_server() -> usize {
    crate::state::current_server()
}

/// The index of the server `route` leads to.
pub fn server_index(route: Route) -> CuResult<usize> {
    Ok(match route {
        Route::Current => current_server(),
        Route::Device(dev) => session()?.server_of(dev)?,
        Route::Server(i) => i,
    })
}

/// Runs `f` on this thread's channel to the server `route` names, opening one (attached to that server's
/// session) on the thread's first call there.
pub fn with_route<R>(route: Route, f: impl FnOnce(&mut Channel, &Server) -> CuResult<R>) -> CuResult<R> {
    let s = session()?;
    let index = server_index(route)?;
    let server = s.servers.get(index).ok_or(CUDA_ERROR_INVALID_DEVICE)?;
    // At process exit the runtime's atexit handlers still make calls (primary context release) after this
    // thread's locals are gone: those go over the server's first channel, which lives as long as the session.
    let ch = CHANNELS.try_with(|c| -> CuResult<Arc<Mutex<Channel>>> {
        let mut slots = c.borrow_mut();
        if let Some(Some(ch)) = slots.get(index) {
            return Ok(ch.clone());
        }
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            capabilities: CAPABILITIES,
            mode: MODE_ATTACH,
            pid: std::process::id(),
            session_id: server.session_id,
            secret: server.secret,
            ..Default::default()
        };
        let (t, ..) = open_channel(&server.endpoint, &hello, &[]).map_err(|_| LOST)?;
        let ch = Arc::new(Mutex::new(Channel::on_server(t, index)));
        if server.batch_limit > 0 {
            register_for_flushing(&ch, index);
        }
        set_slot(&mut slots, index, ch.clone());
        Ok(ch)
    });
    let ch = match ch {
        Ok(ch) => ch?,
        Err(_) => server.primary.clone(),
    };
    let mut guard = lock(&ch);
    match route {
        Route::Current => guard.ensure_context(server, None)?,
        Route::Device(dev) => guard.ensure_context(server, Some(dev))?,
        Route::Server(_) => {}
    }
    f(&mut guard, server)
}

/// Makes `ctx` current on this thread's server thread of `server` (the client keeps the thread's context stack;
/// the server thread mirrors its top).
pub fn set_current_on(server: usize, ctx: ContextId) -> CuResult<()> {
    with_route(Route::Server(server), |ch, srv| ch.set_current(srv, ctx))
}

/// Records that this thread's server thread on `server` now has `ctx` current without being told (`cuCtxCreate`
/// makes its context current there; a destroyed or reset one leaves none known: `NO_CONTEXT`).
pub fn note_current_on(server: usize, ctx: ContextId) {
    let ch = CHANNELS
        .try_with(|c| c.borrow().get(server).cloned().flatten())
        .ok()
        .flatten();
    if let Some(ch) = ch {
        lock(&ch).mirrored = ctx;
    }
}

/// Forgets `ctx` wherever this thread's server threads were told it is current (it was destroyed).
pub fn forget_current(ctx: ContextId) {
    let mine: Vec<Arc<Mutex<Channel>>> = CHANNELS
        .try_with(|c| c.borrow().iter().flatten().cloned().collect())
        .unwrap_or_default();
    for ch in mine {
        let mut ch = lock(&ch);
        if ch.mirrored == ctx {
            ch.mirrored = crate::state::NO_CONTEXT;
        }
    }
}

/// Bytes this process has sent to and received from its servers over all channels (requests, replies, copy data),
/// for the benchmark that shows a server-to-server copy moves none of its bytes through the client.
static BYTES_SENT: AtomicU64 = AtomicU64::new(0);
static BYTES_RECEIVED: AtomicU64 = AtomicU64::new(0);

fn count_sent(n: usize) {
    BYTES_SENT.fetch_add(n as u64, Ordering::Relaxed);
}

fn count_received(n: usize) {
    BYTES_RECEIVED.fetch_add(n as u64, Ordering::Relaxed);
}

/// (bytes sent, bytes received) over every channel so far.
pub fn traffic() -> (u64, u64) {
    (
        BYTES_SENT.load(Ordering::Relaxed),
        BYTES_RECEIVED.load(Ordering::Relaxed),
    )
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

thread_local! {
    /// The stream this thread last saw idle: (server, stream as the caller names it, the server's request count
    /// right after the wait).
    static IDLE_STREAM: std::cell::Cell<Option<(usize, u64, u64)>> = const { std::cell::Cell::new(None) };
}

/// Runs `wait`, one request that waits for all the work of `stream` (named by the caller's key) on server
/// `server`, and remembers the stream as idle when no other request went to that server meanwhile: then every
/// request that could have put work on the stream was numbered before the wait, which covers it.
pub fn wait_noting_idle<R>(server: usize, stream: u64, wait: impl FnOnce() -> CuResult<R>) -> CuResult<R> {
    let before = requests_sent(server);
    let reply = wait()?;
    if let Some(before) = before {
        if requests_sent(server) == Some(before + 1) {
            let _ = IDLE_STREAM.try_with(|c| c.set(Some((server, stream, before + 1))));
        }
    }
    Ok(reply)
}

/// Whether `stream` of server `server` is known to have no work left: this thread saw it idle and no request has
/// gone to that server since, from any thread (work reaches a stream only through requests). A library that
/// copies into pageable memory, which returns only once the copy is done, and then waits for the stream, as
/// PyTorch's `.item()` does, pays one round trip, not two.
pub fn stream_known_idle(server: usize, stream: u64) -> bool {
    let seen = IDLE_STREAM.try_with(|c| c.get()).ok().flatten();
    seen.is_some_and(|(s, st, count)| s == server && st == stream && requests_sent(server) == Some(count))
}

fn requests_sent(server: usize) -> Option<u64> {
    Some(session().ok()?.servers.get(server)?.requests.load(Ordering::SeqCst))
}

/// A successful `cuDevicePrimaryCtxReset` ends the sticky error (the faulted context is gone).
pub fn clear_sticky() {
    STICKY.store(0, Ordering::Relaxed);
}

/// Sends a synchronous call on this thread's channel to the server of its current context.
pub fn call<C: SyncCall>(flags: u16, c: &C, tail: &[u8]) -> CuResult<C::Reply> {
    call_to(Route::Current, flags, c, tail)
}

/// Sends a synchronous call to the server `route` names.
pub fn call_to<C: SyncCall>(route: Route, flags: u16, c: &C, tail: &[u8]) -> CuResult<C::Reply> {
    with_route(route, |ch, srv| ch.call(srv, flags, c, tail, None))
}

/// Sends a synchronous call whose reply carries a tail.
pub fn call_with_tail<C: SyncCall>(flags: u16, c: &C, tail: &[u8], reply_tail: &mut Vec<u8>) -> CuResult<C::Reply> {
    call_with_tail_to(Route::Current, flags, c, tail, reply_tail)
}

/// Sends a synchronous call whose reply carries a tail to the server `route` names.
pub fn call_with_tail_to<C: SyncCall>(
    route: Route,
    flags: u16,
    c: &C,
    tail: &[u8],
    reply_tail: &mut Vec<u8>,
) -> CuResult<C::Reply> {
    with_route(route, |ch, srv| ch.call(srv, flags, c, tail, Some(reply_tail)))
}

/// `cuMemcpyDtoH` on the server `route` names: the bytes land in `out`.
pub fn copy_to_host(route: Route, flags: u16, c: &MemcpyDtoH, out: &mut [u8]) -> CuResult<()> {
    with_route(route, |ch, srv| ch.copy_to_host(srv, flags, c, out))
}

/// Hands `fd` to the server `route` names tagged `tag`, then sends the synchronous call that names it (shared
/// memory only).
pub fn call_with_fd<C: SyncCall>(
    route: Route,
    flags: u16,
    c: &C,
    fd: std::os::fd::BorrowedFd<'_>,
    tag: u64,
) -> CuResult<C::Reply> {
    with_route(route, |ch, srv| {
        ch.flush()?;
        ch.transport.send_fd(fd, tag).map_err(|e| ch.fail(&e))?;
        ch.call(srv, flags, c, &[], None)
    })
}

/// Whether server `server` is reached over shared memory (so host memory can be shared with it).
pub fn server_is_local(server: usize) -> bool {
    session().is_ok_and(|s| {
        s.servers
            .get(server)
            .is_some_and(|x| matches!(x.endpoint, Endpoint::Shm(_)))
    })
}

/// Queues an asynchronous call on this thread's channel to the server of its current context.
pub fn post<C: AsyncCall>(flags: u16, c: &C, tail: &[u8]) -> CuResult<()> {
    post_to(Route::Current, flags, c, tail)
}

/// Queues an asynchronous call to the server `route` names.
pub fn post_to<C: AsyncCall>(route: Route, flags: u16, c: &C, tail: &[u8]) -> CuResult<()> {
    with_route(route, |ch, srv| ch.post(srv, flags, c, tail))
}

/// Sends an asynchronous copy's data from the app's page-locked memory to the server `route` names, the transport
/// free to read it after this returns (CUDA forbids changing it before the copy ran).
pub fn post_pinned_to<C: AsyncCall>(route: Route, flags: u16, c: &C, pinned: &[u8]) -> CuResult<()> {
    with_route(route, |ch, srv| ch.post_pinned(srv, flags, c, pinned))
}

/// Sends an asynchronous call at once (not batched): for handle bindings other threads may use next.
pub fn post_now<C: AsyncCall>(flags: u16, c: &C, tail: &[u8]) -> CuResult<()> {
    post_now_to(Route::Current, flags, c, tail)
}

/// `post_now` to the server `route` names.
pub fn post_now_to<C: AsyncCall>(route: Route, flags: u16, c: &C, tail: &[u8]) -> CuResult<()> {
    with_route(route, |ch, srv| ch.post_now(srv, flags, c, tail))
}

/// Queues an asynchronous call with a tail written in place, to the server `route` names.
pub fn post_with<C: AsyncCall>(
    route: Route,
    flags: u16,
    c: &C,
    tail_len: usize,
    write_tail: impl FnOnce(&mut BytesMut),
) -> CuResult<()> {
    with_route(route, |ch, srv| {
        ch.post_with(srv, flags, c, tail_len, write_tail, srv.batch_limit)
    })
}

/// Writes out this thread's batched calls to every server (before waiting on one server for work that another
/// server's queued calls feed, as a server-to-server copy does).
pub fn flush_all() -> CuResult<()> {
    let mine: Vec<Arc<Mutex<Channel>>> = CHANNELS
        .try_with(|c| c.borrow().iter().flatten().cloned().collect())
        .unwrap_or_default();
    for ch in mine {
        lock(&ch).flush()?;
    }
    Ok(())
}
