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

fn lock(ch: &Mutex<Channel>) -> MutexGuard<'_, Channel> {
    ch.lock().unwrap_or_else(|p| p.into_inner())
}

/// Largest reply tail a synchronous call accepts (the function table of the largest library images stays far
/// below it), and the first piece one is received in (memory grows with the bytes that arrived, doubling).
const MAX_REPLY_TAIL: usize = 256 << 20;
const REPLY_TAIL_STEP: usize = 64 << 10;

/// One app thread's link to its server thread on one server.
pub struct Channel {
    transport: Box<dyn Transport>,
    batch: BytesMut,
    broken: bool,
    /// The server this channel leads to (its index in `Session::servers`).
    server: usize,
    /// The context this channel's server thread has current, as this client last set it (`NO_CONTEXT`: none
    /// set yet).
    mirrored: ContextId,
}

static LOST_REPORTED: AtomicBool = AtomicBool::new(false);

impl Channel {
    /// A channel over an open transport (after the handshake), to the first server. Public for the fuzzing
    /// harness, which plays a hostile server to it.
    #[cfg_attr(not(feature = "fuzzing"), allow(dead_code))] // the shim itself names the server: `on_server`
    pub fn new(transport: Box<dyn Transport>) -> Self {
        Self::on_server(transport, 0)
    }

    /// A channel to server `server` (its index in the session) over an open transport.
    fn on_server(transport: Box<dyn Transport>, server: usize) -> Self {
        Channel {
            transport: Box::new(stats::Counted(transport)),
            batch: BytesMut::with_capacity(64 * 1024),
            broken: false,
            server,
            mirrored: crate::state::NO_CONTEXT,
        }
    }

    /// Whether the channel has given up on its server (every call on it now answers `LOST`).
    #[cfg(feature = "fuzzing")]
    pub fn is_lost(&self) -> bool {
        self.broken
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

    /// Makes `ctx` current on this channel's server thread (posted in order with the thread's other calls).
    fn set_current(&mut self, srv: &Server, ctx: ContextId) -> CuResult<()> {
        self.post(srv, 0, &CtxSetCurrent { ctx }, &[])?;
        self.mirrored = ctx;
        Ok(())
    }

    /// Before a call on this channel: the server thread must have the right context current. For a call on the
    /// current context (`device` `None`), the thread's current context. For a call about an object or address of
    /// device `dev`: the thread's current context when it is of that device; else the one mirrored there already
    /// when it is; else the device's primary context when the app holds it (say `cuMemFree` of memory of device 1
    /// while device 0 is current). A context the server does not know yet (a primary context made current
    /// before it was retained) is left alone: the retain mirrors it.
    fn ensure_context(&mut self, srv: &Server, device: Option<i32>) -> CuResult<()> {
        use crate::state::NO_CONTEXT;
        let current = crate::state::current_ctx();
        if device.is_none() && (current == self.mirrored || current == NO_CONTEXT) {
            return Ok(());
        }
        let want = {
            let reg = crate::state::read();
            let known = |c: ContextId| match reg.contexts.get(&c) {
                Some(i) if i.primary => {
                    reg.primary_refs.get(&i.device).copied().unwrap_or(0) > 0 && !reg.primary_reset.contains(&i.device)
                }
                Some(_) => true,
                None => false,
            };
            let device_of = |c: ContextId| reg.contexts.get(&c).map(|i| i.device);
            match device {
                None if known(current) && crate::state::server_of_device_in(&reg, current) == Some(srv.index) => {
                    current
                }
                None => return Ok(()),
                Some(dev) if device_of(current) == Some(dev) && known(current) => current,
                Some(dev) if self.mirrored != NO_CONTEXT && device_of(self.mirrored) == Some(dev) => return Ok(()),
                Some(dev) if known(crate::state::primary_ctx_id(dev)) => crate::state::primary_ctx_id(dev),
                Some(_) => return Ok(()),
            }
        };
        if self.mirrored != want {
            self.set_current(srv, want)?;
        }
        Ok(())
    }

    /// The next request's number, from the server's one counter for all its channels: the server submits work
    /// to the driver in this order across its channel threads, as the app submitted it across its threads. Taken
    /// under this channel's lock right before the request joins the batch, so each channel's numbers rise in
    /// send order. Never 0 (the server's starting point).
    fn next_seq(&mut self, srv: &Server) -> u32 {
        let mut seq = srv.submit_order.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if seq == 0 {
            seq = srv.submit_order.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
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
        count_sent(self.batch.len());
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
        flush_other_channels(self.server);
        stats::add(stats::BATCH_FLUSHES, 1);
        let r = self.transport.send(&[&self.batch]);
        count_sent(self.batch.len());
        self.batch.clear();
        r.map_err(|e| self.fail(&e))
    }

    /// Queues an asynchronous call; its error, if any, latches on the server.
    pub fn post<C: AsyncCall>(&mut self, srv: &Server, flags: u16, call: &C, tail: &[u8]) -> CuResult<()> {
        self.post_with(srv, flags, call, tail.len(), |buf| buf.put_slice(tail), srv.batch_limit)
    }

    /// Sends an asynchronous call at once (not batched).
    pub fn post_now<C: AsyncCall>(&mut self, srv: &Server, flags: u16, call: &C, tail: &[u8]) -> CuResult<()> {
        self.post_with(srv, flags, call, tail.len(), |buf| buf.put_slice(tail), 0)
    }

    /// Queues an asynchronous call whose `tail_len`-byte tail `write_tail` appends in place.
    pub fn post_with<C: AsyncCall>(
        &mut self,
        srv: &Server,
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
        let seq = self.next_seq(srv);
        let header = request_header::<C>(seq, flags, tail_len);
        if tail_len >= 256 * 1024 {
            // Large tails (async host-to-device data) go out directly rather than through the batch.
            let mut tail = BytesMut::with_capacity(tail_len);
            write_tail(&mut tail);
            self.flush()?;
            flush_other_channels(self.server);
            count_sent(header.as_bytes().len() + call.as_bytes().len() + tail.len());
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
        srv: &Server,
        flags: u16,
        call: &C,
        tail: &[u8],
        reply_tail: Option<&mut Vec<u8>>,
    ) -> CuResult<C::Reply> {
        let seq = self.send_sync::<C>(srv, flags, call, tail)?;
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
        self.recv(reply.as_mut_bytes())?;
        let extra = header.len as usize - body_len;
        match reply_tail {
            Some(buf) => self.recv_reply_tail(buf, extra)?,
            None => self.skip(extra)?,
        }
        Ok(reply)
    }

    /// `cuMemcpyDtoH`: the data lands straight in `dst`, then a final status word follows.
    pub fn copy_to_host(&mut self, srv: &Server, flags: u16, call: &MemcpyDtoH, dst: &mut [u8]) -> CuResult<()> {
        let seq = self.send_sync::<MemcpyDtoH>(srv, flags, call, &[])?;
        let header = self.await_reply(seq)?;
        if header.status() != CUDA_SUCCESS {
            note_sticky(header.status());
            self.skip(header.len as usize)?;
            return Err(header.status());
        }
        if header.len as usize != dst.len() + 4 {
            return Err(self.fail(&"device-to-host reply of the wrong length"));
        }
        self.recv(dst)?;
        let mut status = [0u8; 4];
        self.recv(&mut status)?;
        CUresult::from_code(u32::from_le_bytes(status)).result()
    }

    fn send_sync<C: SyncCall>(&mut self, srv: &Server, flags: u16, call: &C, tail: &[u8]) -> CuResult<u32> {
        if self.broken {
            return Err(LOST);
        }
        flush_other_channels(self.server);
        stats::note_sync(C::OP);
        let seq = self.next_seq(srv);
        let header = request_header::<C>(seq, flags, tail.len());
        let r = if self.batch.is_empty() {
            count_sent(header.as_bytes().len() + call.as_bytes().len() + tail.len());
            self.transport.send(&[header.as_bytes(), call.as_bytes(), tail])
        } else {
            count_sent(self.batch.len() + header.as_bytes().len() + call.as_bytes().len() + tail.len());
            let r = self
                .transport
                .send(&[&self.batch, header.as_bytes(), call.as_bytes(), tail]);
            self.batch.clear();
            r
        };
        r.map_err(|e| self.fail(&e))?;
        Ok(seq)
    }

    fn recv(&mut self, buf: &mut [u8]) -> CuResult<()> {
        count_received(buf.len());
        self.transport.recv_exact(buf).map_err(|e| self.fail(&e))
    }

    /// Reads frames until the reply to `seq`, landing pushed async-copy data on the way.
    fn await_reply(&mut self, seq: u32) -> CuResult<ReplyHeader> {
        let _wait = stats::ReplyWait::start();
        loop {
            let mut head = ReplyHeader::default();
            self.recv(head.as_mut_bytes())?;
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
        self.recv(push.as_mut_bytes())?;
        let data_len = len - std::mem::size_of::<PushHeader>();
        let target = pending_take(PendingId(push.pending_id));
        match target {
            Some(l) if l.len() == data_len && push.len as usize == data_len && l.rows <= 1 => {
                let dst = crate::ffi::fill(l.addr, data_len);
                self.recv(dst)
            }
            Some(l) if l.len() == data_len && push.len as usize == data_len => {
                let mut packed = vec![0u8; data_len];
                self.recv(&mut packed)?;
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
            self.recv(&mut scratch[..n])?;
            len -= n;
        }
        Ok(())
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

/// Where the bytes of an async device-to-host copy must land: `rows` rows of `width` bytes, `pitch` apart
/// (one row for a plain copy). The server sends them packed.
#[derive(Clone, Copy, Debug)]
pub struct Landing {
    pub addr: usize,
    pub pitch: usize,
    pub width: usize,
    pub rows: usize,
    /// The server whose reply frames carry the bytes.
    pub server: usize,
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

/// The server of an async device-to-host copy still under way whose bytes are due to land in [addr, addr+len).
pub fn pending_overlaps(addr: usize, len: usize) -> Option<usize> {
    pending().values().find_map(|l| {
        let end = l.addr + l.pitch * l.rows.saturating_sub(1) + l.width;
        (addr < end && l.addr < addr.saturating_add(len)).then_some(l.server)
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
// Each entry: the channel's server, and the channel.
type FlushEntry = (usize, Weak<Mutex<Channel>>);
static FLUSH_LIST: Mutex<Vec<FlushEntry>> = Mutex::new(Vec::new());

/// Before a channel sends, the calls other threads have batched for the same server go out first, so that server
/// sees work in the order the app submitted it across threads (an event recorded on one thread and waited for on
/// another, as PyTorch's autograd thread does, must reach the server in that order). A channel busy on another
/// thread is sending already.
fn flush_other_channels(server: usize) {
    let others: Vec<Arc<Mutex<Channel>>> = {
        let list = FLUSH_LIST.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < 2 {
            return;
        }
        list.iter()
            .filter(|(s, _)| *s == server)
            .filter_map(|(_, w)| w.upgrade())
            .collect()
    };
    for ch in others {
        if let Ok(mut other) = ch.try_lock() {
            let _ = other.flush_own();
        }
    }
}
static FLUSH_SIGNAL: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
static FLUSHER_STARTED: AtomicBool = AtomicBool::new(false);

fn register_for_flushing(ch: &Arc<Mutex<Channel>>, server: usize) {
    FLUSH_LIST
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((server, Arc::downgrade(ch)));
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
                l.retain(|(_, w)| w.strong_count() > 0);
                l.iter().filter_map(|(_, w)| w.upgrade()).collect()
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
