//! One session's executor: the objects a client created (by its ids), and the loops that serve its client
//! threads' channels. Every handle, length and address from the wire is checked here before the backend sees it.
//!
//! Layout: `channel.rs` reads frames and dispatches each to its handler (generated from the call table), then
//! replies or latches; the handlers live by area, mirroring the client shim: `context.rs`, `memory.rs`,
//! `copy.rs`, `stream.rs`, `module.rs`, `launch.rs`, `array.rs`, `nvml.rs`, `vmm.rs`, `graph.rs`, `ipc.rs`, `peer.rs`, `coll.rs` (collectives, run on `lane.rs`'s threads). `objects.rs`
//! holds the session's books (client id → backend handle), `order.rs` the submission order across channels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::WireError;
use vgpu_dataplane::{Transport, TransportError};

use crate::backend::{Backend, HostBuffer};

mod array;
mod channel;
mod coll;
mod context;
mod copy;
mod direct;
mod ended;
mod graph;
mod ipc;
mod lane;
mod lanes;
mod launch;
mod memory;
mod module;
mod nvml;
mod objects;
mod order;
mod peer;
mod stream;
#[cfg(test)]
mod tests;
mod vmm;
mod window;

pub use channel::forward_stdout;
use objects::Objects;
use order::SubmitOrder;

/// Why a channel stopped.
#[derive(Debug, thiserror::Error)]
pub enum ChannelEnd {
    #[error("client closed the channel")]
    Closed,
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("transport failed: {0}")]
    Transport(TransportError),
}

impl From<TransportError> for ChannelEnd {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Closed => ChannelEnd::Closed,
            other => ChannelEnd::Transport(other),
        }
    }
}

impl From<WireError> for ChannelEnd {
    fn from(e: WireError) -> Self {
        ChannelEnd::Malformed(e.to_string())
    }
}

/// Limits a session runs under (from its ticket, or none in standalone mode).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Device memory the session may hold at once (allocations, arrays, VMM memory); past it allocations fail
    /// with out-of-memory, and `cuMemGetInfo` and NVML report it as the total.
    pub memory_bytes: Option<u64>,
    /// The server's device ordinals the session sees, in the order the client numbers them (`None`: all).
    pub devices: Option<Vec<u32>>,
    /// Bounds on objects and on the host memory the server holds for the session.
    pub caps: Caps,
    /// How the session shares each GPU it sees (compute share, cap, priority class), in the client's order;
    /// missing entries (a keyless session: all of them) are the default, an equal share in the burst class.
    pub sharing: Vec<crate::sched::SlotConfig>,
    /// How long a channel waits for work still in flight on the session's other channels: a binding of a client
    /// id it does not know yet, or a request numbered before its own (`None`: 1 s and 2 s). Only a client that
    /// lost or invented requests waits; the fuzzing harness, whose one channel has no peers, sets zero.
    pub peer_wait: Option<std::time::Duration>,
}

/// What one session may make the server hold besides device memory. Past a cap, creating one more object fails
/// with `CUDA_ERROR_OUT_OF_MEMORY` (what the driver answers when it runs out of resources for one).
#[derive(Debug, Clone, PartialEq)]
pub struct Caps {
    /// Host memory the server pins or keeps for the session: host mirrors and shared regions it registers, and
    /// buffers of asynchronous copies not yet done or delivered. `None`: the memory limit (at least 2 GiB), or
    /// 16 GiB without one. Async copies past it wait (the server drains or does the copy synchronously).
    pub host_bytes: Option<u64>,
    pub streams: usize,
    pub events: usize,
    pub contexts: usize,
    pub modules: usize,
    pub functions: usize,
    pub allocations: usize,
    pub arrays: usize,
    pub pools: usize,
    pub tex_objects: usize,
    pub host_regions: usize,
    /// VMM physical handles, mappings and reservations (each).
    pub vmm_objects: usize,
    /// CUDA graphs (the app's, and those child and conditional nodes own), their nodes, executable graphs.
    pub graphs: usize,
    pub graph_nodes: usize,
    pub graph_execs: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            host_bytes: None,
            streams: 16 << 10,
            events: 256 << 10,
            contexts: 256,
            modules: 64 << 10,
            functions: 1 << 20,
            allocations: 4 << 20,
            arrays: 64 << 10,
            pools: 1024,
            tex_objects: 64 << 10,
            host_regions: 64 << 10,
            vmm_objects: 1 << 20,
            graphs: 64 << 10,
            graph_nodes: 1 << 20,
            graph_execs: 64 << 10,
        }
    }
}

impl Limits {
    /// The host memory budget `Caps::host_bytes` stands for.
    pub fn host_budget(&self) -> u64 {
        const GIB: u64 = 1 << 30;
        self.caps
            .host_bytes
            .unwrap_or_else(|| self.memory_bytes.map_or(16 * GIB, |m| m.max(2 * GIB)))
    }
}

/// `Err(CUDA_ERROR_OUT_OF_MEMORY)` when `count` objects already reach `cap`.
fn under_cap(count: usize, cap: usize) -> CuResult<()> {
    if count >= cap {
        Err(CUDA_ERROR_OUT_OF_MEMORY)
    } else {
        Ok(())
    }
}

/// What a session has used so far, for metering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounters {
    /// Device memory held now.
    pub allocated_bytes: u64,
    /// Host memory the server holds for the session now (pinned mirrors and regions, queued copy buffers).
    pub host_bytes: u64,
    /// Bytes copied between the client and the GPU since the session started.
    pub bytes_moved: u64,
}

/// Everything one client process owns on this server.
pub struct Session {
    backend: Arc<dyn Backend>,
    objects: Mutex<Objects>,
    limits: Limits,
    bytes_moved: AtomicU64,
    /// Host bytes held for the session (see `Caps::host_bytes`).
    host_held: AtomicU64,
    /// The client's submission order across this session's channels.
    order: SubmitOrder,
    /// Bumped whenever a context ends (a primary-context reset or last release, `cuCtxDestroy`): channels and lanes
    /// then forget the pinned buffers and events that went with it (`ended_contexts` says which), keep the rest.
    reset_epoch: AtomicU64,
    /// Real contexts that ended, with the `reset_epoch` they ended at.
    ended_contexts: Arc<Mutex<ended::EndedContexts>>,
    /// How the client numbers this server's devices (`SetDeviceNumbering`): (client ordinal, index in the
    /// visible list). `None`: the visible list's own order.
    numbering: std::sync::RwLock<Option<Vec<(u32, u32)>>>,
    /// The client's address windows per device and the memory placed in them (`window`).
    windows: Mutex<window::Windows>,
    /// Inter-process sharing: the link to the server's IPC registry and what was exported and opened.
    ipc: ipc::Ipc,
    /// Copies to and from other GPU servers: where the session may send, and senders' connections.
    peers: peer::Peers,
    /// Lanes of striped channels waiting for their channel's join.
    lanes: lanes::LaneBox,
    /// The threads that run collectives, one per app stream carrying them (`lane.rs`).
    coll_lanes: lane::Lanes,
    /// The session's part of the GPU scheduler (`None`: unscheduled).
    sched: Option<Arc<crate::sched::SessionSched>>,
}

/// How long a lookup waits for a binding made on another channel (see `Session::await_object`).
const BINDING_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Session {
    pub fn new(backend: Arc<dyn Backend>, limits: Limits) -> Arc<Session> {
        Self::scheduled(backend, limits, None)
    }

    /// A session whose GPU work passes the scheduler's gate (`sched`), or not (`None`).
    pub fn scheduled(
        backend: Arc<dyn Backend>,
        limits: Limits,
        sched: Option<Arc<crate::sched::SessionSched>>,
    ) -> Arc<Session> {
        Arc::new(Session {
            backend,
            objects: Mutex::new(Objects::default()),
            limits,
            bytes_moved: AtomicU64::new(0),
            host_held: AtomicU64::new(0),
            reset_epoch: AtomicU64::new(0),
            ended_contexts: Arc::default(),
            order: SubmitOrder::default(),
            numbering: std::sync::RwLock::new(None),
            windows: Mutex::new(window::Windows::default()),
            ipc: ipc::Ipc::default(),
            peers: peer::Peers::default(),
            lanes: lanes::LaneBox::default(),
            coll_lanes: lane::Lanes::default(),
            sched,
        })
    }

    /// Before a device's primary context goes (reset, or release of its last reference): the scheduler drops
    /// the events it measures with there.
    fn sched_forget_device(&self, dev: i32) {
        if let (Some(sched), Ok(d)) = (&self.sched, usize::try_from(dev)) {
            sched.forget_device(d);
        }
    }

    /// GPU nanoseconds the scheduler charged the session on server device `dev` (0 when unscheduled).
    pub fn gpu_busy_ns(&self, dev: usize) -> u64 {
        self.sched.as_ref().map_or(0, |s| s.charged_ns(dev))
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The devices this session's client sees (its ticket's GPUs, or all of the server's).
    pub fn visible_devices(&self) -> Vec<vgpu_dataplane::handshake::DeviceFacts> {
        let all = self.backend.devices();
        match &self.limits.devices {
            None => all.to_vec(),
            Some(list) => list.iter().filter_map(|&d| all.get(d as usize).cloned()).collect(),
        }
    }

    /// The server's ordinal for the client's device `dev`.
    fn real_device(&self, dev: u32) -> CuResult<i32> {
        let index = match &*self.numbering.read().unwrap_or_else(|p| p.into_inner()) {
            None => dev,
            Some(pairs) => pairs
                .iter()
                .find(|&&(ordinal, _)| ordinal == dev)
                .map(|&(_, index)| index)
                .ok_or(CUDA_ERROR_INVALID_DEVICE)?,
        };
        self.visible_device(index)
    }

    /// The server's ordinal for entry `index` of the visible list (the welcome's order, which NVML follows).
    fn visible_device(&self, index: u32) -> CuResult<i32> {
        let real = match &self.limits.devices {
            None => index,
            Some(list) => *list.get(index as usize).ok_or(CUDA_ERROR_INVALID_DEVICE)?,
        };
        if real as usize >= self.backend.devices().len() {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        i32::try_from(real).map_err(|_| CUDA_ERROR_INVALID_DEVICE)
    }

    /// The client's ordinal for the server's device `real` (the inverse of `real_device`).
    fn client_device(&self, real: i32) -> Option<i32> {
        let index = match &self.limits.devices {
            None => u32::try_from(real).ok()?,
            Some(list) => list.iter().position(|&d| i64::from(d) == i64::from(real))? as u32,
        };
        match &*self.numbering.read().unwrap_or_else(|p| p.into_inner()) {
            None => i32::try_from(index).ok(),
            Some(pairs) => pairs
                .iter()
                .find(|&&(_, i)| i == index)
                .and_then(|&(ordinal, _)| i32::try_from(ordinal).ok()),
        }
    }

    /// Adopts the client's numbering of the visible devices: each index at most once, each inside the list.
    fn set_numbering(&self, pairs: Vec<(u32, u32)>) -> CuResult<()> {
        let visible = self.visible_devices().len() as u32;
        for (i, &(ordinal, index)) in pairs.iter().enumerate() {
            let repeated = pairs[..i].iter().any(|&(o, x)| o == ordinal || x == index);
            if index >= visible || repeated {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
        }
        *self.numbering.write().unwrap_or_else(|p| p.into_inner()) = Some(pairs);
        Ok(())
    }

    pub fn usage(&self) -> UsageCounters {
        self.release_held();
        UsageCounters {
            allocated_bytes: self.objects().allocated_bytes,
            host_bytes: self.host_held.load(Ordering::Relaxed),
            bytes_moved: self.bytes_moved.load(Ordering::Relaxed),
        }
    }

    /// Takes `n` bytes of the session's host budget, if they fit.
    fn hold_host(&self, n: u64) -> bool {
        let budget = self.limits.host_budget();
        self.host_held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&after| after <= budget)
            })
            .is_ok()
    }

    /// Holds `n` bytes even past the budget: a lane's buffers kept until the lane ends (`Channel::give_back`).
    fn hold_host_anyway(&self, n: u64) {
        self.host_held.fetch_add(n, Ordering::AcqRel);
    }

    fn release_host(&self, n: u64) {
        let _ = self
            .host_held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| Some(held.saturating_sub(n)));
    }

    fn count_moved(&self, bytes: u64) {
        self.bytes_moved.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Reserves `size` bytes against the memory limit before the driver allocates them, so that concurrent
    /// client threads cannot together pass it.
    fn reserve(&self, size: u64) -> CuResult<()> {
        self.try_reserve(size).or_else(|_| {
            // Memory freed here but still open in other sessions may be gone by now.
            self.release_held();
            self.try_reserve(size)
        })
    }

    fn try_reserve(&self, size: u64) -> CuResult<()> {
        let mut objs = self.objects();
        let after = objs.allocated_bytes.checked_add(size).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        if self.limits.memory_bytes.is_some_and(|limit| after > limit) {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        objs.allocated_bytes = after;
        Ok(())
    }

    fn unreserve(&self, size: u64) {
        let mut objs = self.objects();
        objs.allocated_bytes = objs.allocated_bytes.saturating_sub(size);
    }

    /// After a primary-context reset (or its last release, which destroys it): the device memory the session
    /// allocated is gone (natively too), so it no longer counts against the limit and its addresses are no longer
    /// the client's to name. With contexts of
    /// the app's own alive, whose memory survives, the records stay (they cannot be told apart). VMM memory
    /// (`cuMemCreate`) belongs to no context and survives the reset: its bytes stay counted, its mappings named.
    fn forget_reset_context(&self, device: i32) {
        let mut objs = self.objects();
        if objs.contexts.is_empty() {
            let gone: Vec<u64> = objs.allocations.keys().copied().collect();
            for base in gone {
                let size = objs
                    .remove_allocation(vgpu_dataplane::ids::DevicePtr(base))
                    .unwrap_or(0);
                objs.allocated_bytes = objs.allocated_bytes.saturating_sub(size);
            }
            // Window memory is the driver's VMM memory, which outlives contexts: freed here as the reset frees
            // the driver's own allocations.
            self.windows().release_all(&*self.backend);
        }
        let primary = objs.primary.get(&device).copied();
        drop(objs);
        self.end_context(primary.map_or(0, |c| c.0));
    }

    /// Records that real context `ctx` ended (its buffers and events went with it) and bumps the epoch, so every
    /// channel and lane looks at what it holds before its next use.
    fn end_context(&self, ctx: u64) {
        let mut ended = self.ended_contexts.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.reset_epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if ctx != 0 {
            ended.record(ctx, epoch);
        }
    }

    /// A pinned buffer made now for a channel or lane, stamped with the epoch just before it was made.
    fn alloc_pinned(&self, len: usize) -> CuResult<HostBuffer> {
        let epoch = self.reset_epoch.load(Ordering::Acquire);
        let mut buf = self.backend.host_alloc(len)?;
        buf.epoch = epoch;
        Ok(buf)
    }

    /// Whether the driver freed `buf` with its context after its holder last looked (`looked`) or it was made.
    fn buffer_gone(&self, buf: &HostBuffer, looked: u64) -> bool {
        self.ended_contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .took(buf, looked)
    }

    /// The book of ended contexts, for a lane that outlives its session.
    fn ended_book(&self) -> Arc<Mutex<ended::EndedContexts>> {
        self.ended_contexts.clone()
    }

    /// Whether real context `ctx` ended after `epoch` (when a holder of its buffers last looked).
    fn context_ended_since(&self, ctx: u64, epoch: u64) -> bool {
        let ended = self.ended_contexts.lock().unwrap_or_else(|p| p.into_inner());
        ended.since(ctx, epoch)
    }

    /// Fails with out-of-memory when the count `of` the session's objects has reached its cap `cap`.
    fn check_cap(&self, of: impl Fn(&Objects) -> usize, cap: impl Fn(&Caps) -> usize) -> CuResult<()> {
        under_cap(of(&self.objects()), cap(&self.limits.caps))
    }

    fn objects(&self) -> MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn windows(&self) -> MutexGuard<'_, window::Windows> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks an object up by its client id, waiting a little for a binding still in flight. The client checks
    /// every handle against its own registry before sending it, so an id this session does not know yet was
    /// bound by another of the app's threads, on that thread's channel, whose server thread has not reached
    /// the binding (queued behind its earlier work). Natively the object exists once its creating call
    /// returned; this wait restores that across channels. Only the failure path waits.
    fn await_object<T>(&self, lookup: impl Fn(&Objects) -> Option<T>) -> Option<T> {
        let deadline = std::time::Instant::now() + self.limits.peer_wait.unwrap_or(BINDING_WAIT);
        let mut pause = std::time::Duration::from_micros(20);
        loop {
            if let Some(v) = lookup(&self.objects()) {
                return Some(v);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(1));
        }
    }

    /// Serves one client thread's channel until the client closes it or breaks the protocol.
    pub fn serve_channel(self: &Arc<Session>, transport: &mut dyn Transport) -> Result<(), ChannelEnd> {
        channel::serve(self, transport)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.release_vmm();
    }
}
