//! One session's executor: the objects a client created (by its ids), and the loop that serves one client
//! thread's channel. Every handle, length and address from the wire is checked here before the backend sees it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::image::MAX_IMAGE;
use vgpu_dataplane::wire::*;
use vgpu_dataplane::{Transport, TransportError};
use zerocopy::{FromBytes, IntoBytes};

use crate::backend::{Backend, HostBuffer, LoadedFunction, Place, STREAM_PER_THREAD};

mod vmm;

/// Staging chunk for pipelined copies: big enough to amortise a stream sync, small enough to overlap.
const CHUNK: usize = 8 << 20;
/// Largest kernel argument buffer (CUDA 12.1+ allows 32764 bytes of parameters).
const MAX_ARGS: usize = 32 * 1024;
const MAX_NAME: usize = 4096;
/// Pinned buffers kept for reuse per channel.
const POOL_KEEP: usize = 8;

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

struct Module {
    real: u64,
    is_library: bool,
    functions: HashMap<String, LoadedFunction>,
}

#[derive(Clone)]
struct Function {
    real: u64,
    params: Arc<[(u32, u32)]>,
    args_size: usize,
    /// A library kernel (`CUkernel`) rather than a module function.
    is_kernel: bool,
}

#[derive(Default)]
struct Objects {
    contexts: HashMap<u64, u64>,
    streams: HashMap<u64, u64>,
    events: HashMap<u64, u64>,
    modules: HashMap<u64, Module>,
    functions: HashMap<u64, Function>,
    /// base → length of every device range the client may name: allocations and module globals.
    ranges: BTreeMap<u64, u64>,
    /// Subset of `ranges` that `cuMemFree` may release.
    allocations: HashMap<u64, u64>,
    allocated_bytes: u64,
    /// Memory pools: client id → real handle (device default pools bound on first use).
    pools: HashMap<u64, u64>,
    /// Host mirrors (`HostMirrorMap`): address → (device address, length).
    mirrors: HashMap<u64, (u64, u64)>,
    /// CUDA arrays: client id → (real handle, shape).
    arrays: HashMap<u64, (u64, ArrayShape)>,
    /// Texture and surface objects the session made (real values; kernels get them by value).
    tex_objects: HashMap<u64, bool>,
    /// Client host memory shared with this process and registered with the driver (shared-memory sessions).
    regions: HashMap<u64, Arc<crate::sys::SharedRegion>>,
    /// Devices (server ordinals) the session has had a context on: NVML lists the client process there.
    context_devices: std::collections::BTreeSet<i32>,
    /// Virtual memory management: reservations, physical memory and mappings (see `vmm`).
    vmm: vmm::VmmObjects,
}

/// Limits a session runs under (from its ticket, or none in standalone mode).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Device memory the session may hold at once; past it allocations fail with out-of-memory.
    pub memory_bytes: Option<u64>,
    /// The server's device ordinals the session sees, in the order the client numbers them (`None`: all).
    pub devices: Option<Vec<u32>>,
    /// How the session shares each GPU it sees (compute share, cap, priority class), in the client's order;
    /// missing entries (a keyless session: all of them) are the default, an equal share in the burst class.
    pub sharing: Vec<crate::sched::SlotConfig>,
}

/// What a session has used so far, for metering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounters {
    /// Device memory held now.
    pub allocated_bytes: u64,
    /// Bytes copied between the client and the GPU since the session started.
    pub bytes_moved: u64,
}

/// Everything one client process owns on this server.
pub struct Session {
    backend: Arc<dyn Backend>,
    objects: Mutex<Objects>,
    limits: Limits,
    bytes_moved: AtomicU64,
    /// The client's submission order across this session's channels.
    order: SubmitOrder,
    /// Bumped by every primary-context reset: channels drop the pinned buffers and events they hold, which
    /// the reset freed with the context that owned them.
    reset_epoch: AtomicU64,
    // sched: the session's part of the GPU scheduler (None: unscheduled).
    sched: Option<Arc<crate::sched::SessionSched>>,
}

/// Largest array copy one call carries.
const MAX_ARRAY_COPY: usize = 1 << 30;

/// Largest host mirror one call may map (the client maps pinned allocations one by one).
const MAX_MIRROR: u64 = 64 << 30;

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
            reset_epoch: AtomicU64::new(0),
            order: SubmitOrder::default(),
            sched,
        })
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
        let real = match &self.limits.devices {
            None => dev,
            Some(list) => *list.get(dev as usize).ok_or(CUDA_ERROR_INVALID_DEVICE)?,
        };
        i32::try_from(real).map_err(|_| CUDA_ERROR_INVALID_DEVICE)
    }

    /// The client's ordinal for the server's device `real` (the inverse of `real_device`).
    fn client_device(&self, real: i32) -> Option<i32> {
        match &self.limits.devices {
            None => Some(real),
            Some(list) => list
                .iter()
                .position(|&d| i64::from(d) == i64::from(real))
                .and_then(|i| i32::try_from(i).ok()),
        }
    }

    pub fn usage(&self) -> UsageCounters {
        UsageCounters {
            allocated_bytes: self.objects().allocated_bytes,
            bytes_moved: self.bytes_moved.load(Ordering::Relaxed),
        }
    }

    fn count_moved(&self, bytes: u64) {
        self.bytes_moved.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Reserves `size` bytes against the memory limit before the driver allocates them, so that concurrent
    /// client threads cannot together pass it.
    fn reserve(&self, size: u64) -> CuResult<()> {
        let mut objs = self.objects();
        let after = objs.allocated_bytes.checked_add(size).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        if self.limits.memory_bytes.is_some_and(|limit| after > limit) {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        objs.allocated_bytes = after;
        Ok(())
    }

    /// After a primary-context reset: the device memory the session allocated is gone (natively too), so it no
    /// longer counts against the limit and its addresses are no longer the client's to name. With contexts of
    /// the app's own alive, whose memory survives, the records stay (they cannot be told apart). VMM memory
    /// (`cuMemCreate`) belongs to no context and survives the reset: its bytes stay counted, its mappings named.
    fn forget_reset_context(&self) {
        let mut objs = self.objects();
        if objs.contexts.is_empty() {
            let gone: Vec<(u64, u64)> = objs.allocations.drain().collect();
            for (base, size) in gone {
                objs.ranges.remove(&base);
                objs.allocated_bytes = objs.allocated_bytes.saturating_sub(size);
            }
        }
        drop(objs);
        self.reset_epoch.fetch_add(1, Ordering::AcqRel);
    }

    // sched: before a device's primary context goes (reset, or release of its last reference).
    fn sched_forget_device(&self, dev: i32) {
        if let (Some(sched), Ok(d)) = (&self.sched, usize::try_from(dev)) {
            sched.forget_device(d);
        }
    }

    /// GPU nanoseconds the scheduler charged the session on server device `dev` (0 when unscheduled).
    pub fn gpu_busy_ns(&self, dev: usize) -> u64 {
        self.sched.as_ref().map_or(0, |s| s.charged_ns(dev))
    }

    fn unreserve(&self, size: u64) {
        let mut objs = self.objects();
        objs.allocated_bytes = objs.allocated_bytes.saturating_sub(size);
    }

    fn objects(&self) -> MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks an object up by its client id, waiting a little for a binding still in flight. The client checks
    /// every handle against its own registry before sending it, so an id this session does not know yet was
    /// bound by another of the app's threads, on that thread's channel, whose server thread has not reached
    /// the binding (queued behind its earlier work). Natively the object exists once its creating call
    /// returned; this wait restores that across channels. Only the failure path waits.
    fn await_object<T>(&self, lookup: impl Fn(&Objects) -> Option<T>) -> Option<T> {
        let deadline = std::time::Instant::now() + BINDING_WAIT;
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
        let mut ch = Channel {
            session: Some(self.clone()),
            // sched: each channel passes the scheduler's gate.
            gate: self.sched.as_ref().map(|s| s.gate()).unwrap_or_default(),
            ..Default::default()
        };
        let result = ch.run(transport);
        ch.release();
        result
    }
}

/// Requests carry one number series across all of a client's channels (the order its threads submitted them).
/// Each channel thread starts a request only once every earlier number has been submitted to the driver, so
/// work two app threads put on one stream (PyTorch's autograd thread and its main thread), or an event one
/// thread records and another waits for, reaches the GPU in the app's order, as it does natively.
#[derive(Default)]
struct SubmitOrder {
    /// The last request number whose work has been submitted (or, for a synchronous call, started).
    done: AtomicU32,
}

/// How long a request waits for an earlier number before going ahead anyway. Normally the wait is microseconds
/// (the client's flusher sends every batch within `VGPU_FLUSH_US`); only a client that lost requests stalls
/// this long, and then ordering is given up rather than the session.
const ORDER_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

impl SubmitOrder {
    fn previous(seq: u32) -> u32 {
        // The client never uses 0: after u32::MAX comes 1.
        if seq == 1 {
            u32::MAX
        } else {
            seq.wrapping_sub(1)
        }
    }

    /// Waits until every request numbered before `seq` has been submitted. `gated`: the session's channel threads
    /// waiting at the scheduler's gate, whose numbers are not lost, only held: no giving up on them.
    fn wait_turn(&self, seq: u32, gated: &AtomicU32) {
        let want = Self::previous(seq);
        if seq == 0 || self.done.load(Ordering::Acquire) == want {
            return;
        }
        let start = std::time::Instant::now();
        let mut rounds = 0u32;
        loop {
            let done = self.done.load(Ordering::Acquire);
            // `done` at or past `want` (in wrapping order): nothing earlier is outstanding.
            if done.wrapping_sub(want) < (1 << 31) {
                return;
            }
            if start.elapsed() > ORDER_WAIT_LIMIT && gated.load(Ordering::Acquire) == 0 {
                tracing::warn!(seq, done, "request numbers missing; going ahead out of order");
                return;
            }
            rounds += 1;
            if rounds < 200 {
                std::hint::spin_loop();
            } else if rounds < 400 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }
    }

    /// Records that `seq` has been submitted (never moving backwards).
    fn advance(&self, seq: u32) {
        if seq == 0 {
            return;
        }
        let _ = self.done.fetch_update(Ordering::AcqRel, Ordering::Acquire, |done| {
            (seq.wrapping_sub(done).wrapping_sub(1) < (1 << 31)).then_some(seq)
        });
    }
}

/// A device-to-host async copy whose bytes wait in a pinned buffer until a synchronizing reply carries them.
struct PendingCopy {
    id: u64,
    buf: HostBuffer,
    len: usize,
    event: u64,
}

/// Host memory an async host-to-device copy still reads from, until `event` completes.
struct InFlight {
    buf: HostBuffer,
    event: u64,
}

#[derive(Default)]
struct Channel {
    session: Option<Arc<Session>>,
    /// The first error of an asynchronous call since the last synchronizing reply (the driver's sticky error).
    latched: Option<CUresult>,
    staging: Vec<HostBuffer>,
    pool: Vec<HostBuffer>,
    pending: Vec<PendingCopy>,
    in_flight: Vec<InFlight>,
    body: Vec<u8>,
    tail: Vec<u8>,
    /// The session's `reset_epoch` when this channel's buffers were allocated.
    epoch: u64,
    // sched: the channel's gate (inert for an unscheduled session).
    gate: crate::sched::ChannelGate,
}

impl Channel {
    fn s(&self) -> &Session {
        match &self.session {
            Some(s) => s,
            None => unreachable!("a channel always has its session"),
        }
    }
    fn b(&self) -> &dyn Backend {
        &*self.s().backend
    }

    fn run(&mut self, t: &mut dyn Transport) -> Result<(), ChannelEnd> {
        let mut hdr = [0u8; std::mem::size_of::<RequestHeader>()];
        // Held for the loop, so the per-request path takes no reference count.
        let session = self.session.clone();
        let order = session.as_deref().map(|s| &s.order);
        let not_gated = AtomicU32::new(0);
        let gated = match session.as_deref().and_then(|s| s.sched.as_deref()) {
            Some(sched) => sched.held(),
            None => &not_gated,
        };
        loop {
            t.recv_exact(&mut hdr)?;
            let header = zerocopy::FromBytes::read_from_bytes(&hdr[..])
                .map_err(|_| ChannelEnd::Malformed("short header".into()))?;
            let op = check_request_header(&header)?;
            self.body.resize(header.body_len as usize, 0);
            t.recv_exact(&mut self.body)?;
            if let Some(order) = order {
                order.wait_turn(header.seq, gated);
                if op.is_sync() {
                    // A synchronous call may block (a stream synchronize): work other threads submitted after
                    // it started need not wait for it to end, natively neither.
                    order.advance(header.seq);
                }
            }
            if op.is_sync() {
                // sched: the channel's queued work is measured while the client waits.
                self.gate.sync_point();
            }
            let r = self.dispatch(t, op, &header);
            if let Some(order) = order {
                order.advance(header.seq);
            }
            r?;
        }
    }

    /// Reads a tail of exactly `want` bytes (refusing other lengths) into `self.tail`.
    fn read_tail(&mut self, t: &mut dyn Transport, header: &RequestHeader, max: usize) -> Result<(), ChannelEnd> {
        let len = header.tail_len();
        if len > max {
            return Err(WireError::TailTooLong {
                op: Op::from_u16(header.op)?,
                got: len,
                max,
            }
            .into());
        }
        self.tail.resize(len, 0);
        t.recv_exact(&mut self.tail)?;
        Ok(())
    }

    fn no_tail(header: &RequestHeader) -> Result<(), ChannelEnd> {
        if header.tail_len() != 0 {
            return Err(ChannelEnd::Malformed(format!("unexpected tail on op {}", header.op)));
        }
        Ok(())
    }

    fn name_from_tail(&self) -> Result<CString, ChannelEnd> {
        CString::new(self.tail.clone()).map_err(|_| ChannelEnd::Malformed("name contains NUL".into()))
    }

    fn dispatch(&mut self, t: &mut dyn Transport, op: Op, h: &RequestHeader) -> Result<(), ChannelEnd> {
        let per_thread = h.flags & FLAG_PER_THREAD != 0;
        let epoch = self.s().reset_epoch.load(Ordering::Acquire);
        if epoch != self.epoch {
            // A primary-context reset freed these pinned buffers and events (they belonged to that
            // context): forget them rather than use or free them again. Copies still waiting are discarded,
            // as the reset discards them natively.
            self.staging.clear();
            self.pool.clear();
            self.pending.clear();
            self.in_flight.clear();
            self.epoch = epoch;
        }
        macro_rules! body {
            ($ty:ty) => {
                decode_body::<$ty>(&self.body)?
            };
        }
        // Calls with fixed bodies and no tail share one shape: decode, run, reply or latch.
        macro_rules! simple {
            ($ty:ty, |$c:ident| $run:expr) => {{
                Self::no_tail(h)?;
                let $c = body!($ty);
                let r: CuResult<<$ty as Call>::Reply> = $run;
                self.finish::<$ty>(t, h.seq, r, &[])
            }};
        }
        match op {
            Op::PrimaryCtxRetain => simple!(PrimaryCtxRetain, |c| {
                self.s()
                    .real_device(c.dev)
                    .and_then(|d| self.b().primary_ctx_retain(d).map(|real| (d, real)))
                    .map(|(d, real)| {
                        let mut objs = self.s().objects();
                        objs.contexts.insert(c.ctx, real);
                        objs.context_devices.insert(d);
                        Empty {}
                    })
            }),
            Op::PrimaryCtxRelease => simple!(PrimaryCtxRelease, |c| self
                .s()
                .real_device(c.dev)
                .and_then(|d| {
                    self.s().sched_forget_device(d); // sched: the context may go with its last reference
                    self.b().primary_ctx_release(d)
                })
                .map(|_| Empty {})),
            Op::PrimaryCtxReset => simple!(PrimaryCtxReset, |c| {
                let r = self
                    .s()
                    .real_device(c.dev)
                    .and_then(|d| {
                        self.s().sched_forget_device(d); // sched: the reset frees the context's events
                        self.b().primary_ctx_reset(d)
                    })
                    .map(|_| Empty {});
                if r.is_ok() {
                    // The reset destroyed the context an earlier asynchronous call failed in (a launch
                    // after a kernel fault, say): the reset itself succeeded, as the native call does.
                    self.latched = None;
                    self.s().forget_reset_context();
                }
                r
            }),
            Op::CtxCreate => simple!(CtxCreate, |c| {
                self.s()
                    .real_device(c.dev)
                    .and_then(|d| self.b().ctx_create(c.flags, d).map(|real| (d, real)))
                    .map(|(d, real)| {
                        let mut objs = self.s().objects();
                        objs.contexts.insert(c.ctx, real);
                        objs.context_devices.insert(d);
                        Empty {}
                    })
            }),
            Op::CtxDestroy => simple!(CtxDestroy, |c| {
                let real = self.s().objects().contexts.remove(&c.ctx);
                match real {
                    Some(real) => {
                        if let Some(sched) = &self.s().sched {
                            sched.forget_context(real); // sched: the context's events go with it
                        }
                        self.b().ctx_destroy(real).map(|_| Empty {})
                    }
                    None => Err(CUDA_ERROR_INVALID_CONTEXT),
                }
            }),
            Op::CtxSetCurrent => simple!(CtxSetCurrent, |c| {
                let real = if c.ctx == 0 {
                    Some(0)
                } else {
                    self.s().objects().contexts.get(&c.ctx).copied()
                };
                match real {
                    Some(real) => self.b().ctx_set_current(real).map(|_| Empty {}),
                    None => Err(CUDA_ERROR_INVALID_CONTEXT),
                }
            }),
            Op::CtxSynchronize => simple!(CtxSynchronize, |_c| self.b().ctx_synchronize().map(|_| Empty {})),
            Op::MemAlloc => simple!(MemAlloc, |c| self.mem_alloc(c.size).map(|dptr| MemAllocReply { dptr })),
            Op::MemAllocPitch => simple!(MemAllocPitch, |c| self.mem_alloc_pitch(c)),
            Op::MemFree => simple!(MemFree, |c| self.mem_free(c.dptr).map(|_| Empty {})),
            Op::MemGetInfo => simple!(MemGetInfo, |_c| self.mem_get_info()),
            Op::MemcpyHtoD => {
                let c = body!(MemcpyHtoD);
                let r = self.htod_sync(t, h, c, per_thread)?;
                self.finish::<MemcpyHtoD>(t, h.seq, r.map(|_| Empty {}), &[])
            }
            Op::MemcpyHtoDAsync => {
                let c = body!(MemcpyHtoDAsync);
                let r = self.htod_async(t, h, c, per_thread)?;
                self.finish::<MemcpyHtoDAsync>(t, h.seq, r.map(|_| Empty {}), &[])
            }
            Op::MemcpyDtoH => {
                Self::no_tail(h)?;
                let c = body!(MemcpyDtoH);
                self.dtoh_sync(t, h.seq, c, per_thread)
            }
            Op::MemcpyDtoHAsync => simple!(MemcpyDtoHAsync, |c| self.dtoh_async(c, per_thread).map(|_| Empty {})),
            Op::MemcpyDtoD => simple!(MemcpyDtoD, |c| {
                let stream = if per_thread { STREAM_PER_THREAD } else { 0 };
                self.check_range(c.src, c.size)
                    .and_then(|_| self.check_range(c.dst, c.size))
                    .map(|_| self.gate.submit(stream, crate::sched::Work::Bytes(c.size))) // sched
                    .and_then(|_| self.b().memcpy_dtod_async(c.dst, c.src, c.size, stream))
                    .map(|_| self.gate.sync_point()) // sched: measured up to here, not up to the next call
                    .and_then(|_| self.b().stream_synchronize(stream))
                    .map(|_| Empty {})
            }),
            Op::MemcpyDtoDAsync => simple!(MemcpyDtoDAsync, |c| {
                self.stream(c.stream, per_thread).and_then(|s| {
                    self.check_range(c.src, c.size)?;
                    self.check_range(c.dst, c.size)?;
                    self.gate.submit(s, crate::sched::Work::Bytes(c.size)); // sched
                    self.b().memcpy_dtod_async(c.dst, c.src, c.size, s).map(|_| Empty {})
                })
            }),
            Op::Memset => simple!(Memset, |c| {
                let stream = if per_thread { STREAM_PER_THREAD } else { 0 };
                self.memset(c.dst, c.pitch, c.value, c.elem_size, c.width, c.height, stream)
                    .map(|_| self.gate.sync_point()) // sched: measured up to here, not up to the next call
                    .and_then(|_| self.b().stream_synchronize(stream))
                    .map(|_| Empty {})
            }),
            Op::MemsetAsync => simple!(MemsetAsync, |c| {
                self.stream(c.stream, per_thread)
                    .and_then(|s| self.memset(c.dst, c.pitch, c.value, c.elem_size, c.width, c.height, s))
                    .map(|_| Empty {})
            }),
            Op::StreamCreate => simple!(StreamCreate, |c| {
                self.b().stream_create(c.flags, c.priority).map(|real| {
                    self.s().objects().streams.insert(c.stream, real);
                    Empty {}
                })
            }),
            Op::StreamDestroy => simple!(StreamDestroy, |c| {
                let real = self
                    .s()
                    .objects()
                    .streams
                    .remove(&c.stream)
                    .ok_or(CUDA_ERROR_INVALID_HANDLE);
                real.and_then(|r| self.b().stream_destroy(r)).map(|_| Empty {})
            }),
            Op::StreamSynchronize => simple!(StreamSynchronize, |c| {
                self.stream(c.stream, per_thread)
                    .and_then(|s| self.b().stream_synchronize(s))
                    .map(|_| Empty {})
            }),
            Op::StreamQuery => simple!(StreamQuery, |c| {
                self.stream(c.stream, per_thread)
                    .and_then(|s| self.b().stream_query(s))
                    .map(|_| Empty {})
            }),
            Op::StreamWaitEvent => simple!(StreamWaitEvent, |c| {
                let e = self.event(c.event);
                self.stream(c.stream, per_thread)
                    .and_then(|s| self.b().stream_wait_event(s, e?, c.flags))
                    .map(|_| Empty {})
            }),
            Op::StreamMemOps => {
                let c = body!(StreamMemOps);
                let count = c.count as usize;
                if count == 0 || count > MAX_MEM_OPS || (c.single != 0 && count != 1) {
                    return Err(ChannelEnd::Malformed(format!("{count} stream memory operations")));
                }
                let want = count * std::mem::size_of::<MemOp>();
                if h.tail_len() != want {
                    return Err(ChannelEnd::Malformed(format!(
                        "{count} stream memory operations in {} bytes",
                        h.tail_len()
                    )));
                }
                self.read_tail(t, h, want)?;
                let ops: Vec<MemOp> = self
                    .tail
                    .chunks_exact(std::mem::size_of::<MemOp>())
                    .filter_map(|b| MemOp::read_from_bytes(b).ok())
                    .collect();
                let r = self
                    .stream(c.stream, per_thread)
                    .and_then(|s| self.check_mem_ops(&ops).map(|_| s))
                    .and_then(|s| self.b().stream_mem_ops(s, &ops, c.flags, c.single != 0));
                self.finish::<StreamMemOps>(t, h.seq, r.map(|_| Empty {}), &[])
            }
            Op::EventCreate => simple!(EventCreate, |c| {
                self.b().event_create(c.flags).map(|real| {
                    self.s().objects().events.insert(c.event, real);
                    Empty {}
                })
            }),
            Op::EventRecord => simple!(EventRecord, |c| {
                let e = self.event(c.event);
                self.stream(c.stream, per_thread)
                    .and_then(|s| self.b().event_record(e?, s))
                    .map(|_| Empty {})
            }),
            Op::EventSynchronize => {
                simple!(EventSynchronize, |c| self
                    .event(c.event)
                    .and_then(|e| self.b().event_synchronize(e))
                    .map(|_| Empty {}))
            }
            Op::EventQuery => simple!(EventQuery, |c| self
                .event(c.event)
                .and_then(|e| self.b().event_query(e))
                .map(|_| Empty {})),
            Op::EventElapsedTime => simple!(EventElapsedTime, |c| {
                let (a, b) = (self.event(c.start), self.event(c.end));
                a.and_then(|a| self.b().event_elapsed(a, b?))
                    .map(|ms| EventElapsedReply { ms, _pad: 0 })
            }),
            Op::EventDestroy => simple!(EventDestroy, |c| {
                let real = self
                    .s()
                    .objects()
                    .events
                    .remove(&c.event)
                    .ok_or(CUDA_ERROR_INVALID_HANDLE);
                real.and_then(|r| self.b().event_destroy(r)).map(|_| Empty {})
            }),
            Op::ModuleLoad | Op::LibraryLoad => {
                let is_library = op == Op::LibraryLoad;
                let id = if is_library {
                    body!(LibraryLoad).library
                } else {
                    body!(ModuleLoad).module
                };
                self.read_tail(t, h, MAX_IMAGE as usize)?;
                let loaded = if is_library {
                    let device = self.s().real_device(0).unwrap_or(0);
                    self.b().library_load(&self.tail, device)
                } else {
                    self.b().module_load(&self.tail)
                };
                let mut table = BytesMut::new();
                let r = loaded.map(|(real, functions)| {
                    let infos: Vec<FunctionInfo> = functions.iter().map(|f| f.info.clone()).collect();
                    encode_function_table(&mut table, &infos);
                    let functions = functions.into_iter().map(|f| (f.info.name.clone(), f)).collect();
                    self.s().objects().modules.insert(
                        id,
                        Module {
                            real,
                            is_library,
                            functions,
                        },
                    );
                    Empty {}
                });
                self.finish::<ModuleLoad>(t, h.seq, r, &table)
            }
            Op::ModuleUnload | Op::LibraryUnload => {
                Self::no_tail(h)?;
                let id = if op == Op::LibraryUnload {
                    body!(LibraryUnload).library
                } else {
                    body!(ModuleUnload).module
                };
                let module = self.s().objects().modules.remove(&id);
                let r = match module {
                    Some(m) if m.is_library == (op == Op::LibraryUnload) => {
                        let mut objs = self.s().objects();
                        let reals: Vec<u64> = m.functions.values().map(|f| f.handle).collect();
                        objs.functions.retain(|_, f| !reals.contains(&f.real));
                        drop(objs);
                        if m.is_library {
                            self.b().library_unload(m.real)
                        } else {
                            self.b().module_unload(m.real)
                        }
                    }
                    Some(m) => {
                        self.s().objects().modules.insert(id, m);
                        Err(CUDA_ERROR_INVALID_HANDLE)
                    }
                    None => Err(CUDA_ERROR_INVALID_HANDLE),
                };
                self.finish::<ModuleUnload>(t, h.seq, r.map(|_| Empty {}), &[])
            }
            Op::ModuleGetFunction | Op::LibraryGetKernel => {
                let (module, function) = if op == Op::LibraryGetKernel {
                    let c = body!(LibraryGetKernel);
                    (c.library, c.kernel)
                } else {
                    let c = body!(ModuleGetFunction);
                    (c.module, c.function)
                };
                self.read_tail(t, h, MAX_NAME)?;
                let name = String::from_utf8_lossy(&self.tail).into_owned();
                let mut objs = self.s().objects();
                let found = objs
                    .modules
                    .get(&module)
                    .ok_or(CUDA_ERROR_INVALID_HANDLE)
                    .and_then(|m| {
                        m.functions
                            .get(&name)
                            .map(|f| (f.handle, f.info.clone()))
                            .ok_or(CUDA_ERROR_NOT_FOUND)
                    });
                let is_kernel = op == Op::LibraryGetKernel;
                let r = found.map(|(real, info)| {
                    let args_size = info.args_size();
                    objs.functions.insert(
                        function,
                        Function {
                            real,
                            params: info.params.into(),
                            args_size,
                            is_kernel,
                        },
                    );
                    Empty {}
                });
                drop(objs);
                self.finish::<ModuleGetFunction>(t, h.seq, r, &[])
            }
            Op::ModuleGetGlobal | Op::LibraryGetGlobal => {
                let id = if op == Op::LibraryGetGlobal {
                    body!(LibraryGetGlobal).library
                } else {
                    body!(ModuleGetGlobal).module
                };
                self.read_tail(t, h, MAX_NAME)?;
                let name = self.name_from_tail()?;
                let module = self.s().objects().modules.get(&id).map(|m| (m.real, m.is_library));
                let r = match module {
                    Some((real, true)) => self.b().library_get_global(real, &name),
                    Some((real, false)) => self.b().module_get_global(real, &name),
                    None => Err(CUDA_ERROR_INVALID_HANDLE),
                };
                let r = r.map(|(dptr, size)| {
                    self.s().objects().ranges.insert(dptr, size);
                    GlobalReply { dptr, size }
                });
                self.finish::<ModuleGetGlobal>(t, h.seq, r, &[])
            }
            Op::KernelGetFunction => simple!(KernelGetFunction, |c| {
                let kernel = self.function(c.kernel).ok();
                match kernel {
                    Some(k) => self.b().kernel_get_function(k.real).map(|real| {
                        self.s().objects().functions.insert(
                            c.function,
                            Function {
                                real,
                                is_kernel: false,
                                ..k
                            },
                        );
                        Empty {}
                    }),
                    None => Err(CUDA_ERROR_INVALID_HANDLE),
                }
            }),
            Op::FuncGetAttributes => simple!(FuncGetAttributes, |c| {
                let f = self.function(c.function).ok();
                match f {
                    Some(f) => self
                        .b()
                        .func_attributes(f.real, f.is_kernel)
                        .map(|attrs| FuncAttrsReply { attrs, _pad: 0 }),
                    None => Err(CUDA_ERROR_INVALID_HANDLE),
                }
            }),
            Op::LookupName => {
                let c = body!(LookupName);
                self.read_tail(t, h, MAX_NAME)?;
                let name = self.name_from_tail()?;
                let module = self
                    .s()
                    .objects()
                    .modules
                    .get(&c.module)
                    .map(|m| (m.real, m.is_library));
                let r = match module {
                    Some((real, is_library)) => self.b().lookup(real, is_library, &name),
                    None => Err(CUDA_ERROR_INVALID_HANDLE),
                };
                self.finish::<LookupName>(t, h.seq, r.map(|_| Empty {}), &[])
            }
            Op::Memcpy2D => {
                let c = body!(Memcpy2D);
                self.copy_2d(t, h, c, per_thread)
            }
            Op::Memcpy2DAsync => {
                let c = body!(Memcpy2DAsync);
                let r = self.copy_2d_async(t, h, c, per_thread)?;
                self.finish::<Memcpy2DAsync>(t, h.seq, r.map(|_| Empty {}), &[])
            }
            Op::LaunchKernel => {
                let c = body!(LaunchKernel);
                self.read_tail(t, h, MAX_ARGS)?;
                let r = self.launch(c, per_thread);
                self.finish::<LaunchKernel>(t, h.seq, r.map(|_| Empty {}), &[])
            }
            Op::LaunchKernelEx => {
                let c = body!(LaunchKernelEx);
                self.read_tail(t, h, MAX_ARGS)?;
                let r = self.launch_ex(c, per_thread);
                self.finish::<LaunchKernelEx>(t, h.seq, r.map(|_| Empty {}), &[])
            }
            Op::FuncSetAttribute => simple!(FuncSetAttribute, |c| {
                let f = self.function(c.function).ok();
                match f {
                    Some(f) => self
                        .b()
                        .func_set_attribute(f.real, f.is_kernel, c.attrib, c.value)
                        .map(|_| Empty {}),
                    None => Err(CUDA_ERROR_INVALID_HANDLE),
                }
            }),
            Op::MemPoolCreate => simple!(MemPoolCreate, |c| {
                self.s()
                    .real_device(c.device)
                    .and_then(|d| self.b().mem_pool_create(d, c.max_size))
                    .map(|real| {
                        self.s().objects().pools.insert(c.pool, real);
                        Empty {}
                    })
            }),
            Op::MemPoolDestroy => simple!(MemPoolDestroy, |c| {
                let real = self.s().objects().pools.remove(&c.pool);
                match real {
                    Some(r) if default_mem_pool_device(c.pool).is_none() => {
                        self.b().mem_pool_destroy(r).map(|_| Empty {})
                    }
                    _ => Err(CUDA_ERROR_INVALID_VALUE),
                }
            }),
            Op::MemAllocAsync => simple!(MemAllocAsync, |c| self.mem_alloc_async(c, per_thread)),
            Op::MemFreeAsync => simple!(MemFreeAsync, |c| self.mem_free_async(c, per_thread).map(|_| Empty {})),
            Op::MemPoolGetAttribute => simple!(MemPoolGetAttribute, |c| self
                .pool(c.pool)
                .and_then(|p| self.b().mem_pool_get_attribute(p, c.attr))
                .map(|value| MemPoolAttrReply { value })),
            Op::MemPoolSetAttribute => simple!(MemPoolSetAttribute, |c| self
                .pool(c.pool)
                .and_then(|p| self.b().mem_pool_set_attribute(p, c.attr, c.value))
                .map(|_| Empty {})),
            Op::MemPoolTrimTo => simple!(MemPoolTrimTo, |c| self
                .pool(c.pool)
                .and_then(|p| self.b().mem_pool_trim_to(p, c.min_bytes))
                .map(|_| Empty {})),
            Op::OccupancyActiveBlocks => simple!(OccupancyActiveBlocks, |c| self.function(c.function).and_then(|f| {
                self.b()
                    .occupancy_active_blocks(f.real, f.is_kernel, c.block_size, c.dynamic_smem, c.flags)
                    .map(|v| OccupancyReply { value: v as i64 })
            })),
            Op::OccupancyPotentialBlockSize => {
                let c = body!(OccupancyPotentialBlockSize);
                self.read_tail(t, h, 1024 * 8)?;
                let table: Vec<u64> = self
                    .tail
                    .chunks_exact(8)
                    .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
                    .collect();
                let r = self.function(c.function).and_then(|f| {
                    let by_block = (!table.is_empty()).then_some(&table[..]);
                    self.b()
                        .occupancy_potential_block_size(
                            f.real,
                            f.is_kernel,
                            c.dynamic_smem,
                            by_block,
                            c.block_limit,
                            c.flags,
                        )
                        .map(|(min_grid, block)| OccupancyPotentialReply { min_grid, block })
                });
                self.finish::<OccupancyPotentialBlockSize>(t, h.seq, r, &[])
            }
            Op::OccupancyAvailableSmem => {
                simple!(OccupancyAvailableSmem, |c| self.function(c.function).and_then(|f| {
                    self.b()
                        .occupancy_available_smem(f.real, f.is_kernel, c.num_blocks, c.block_size)
                        .map(|v| OccupancyReply { value: v as i64 })
                }))
            }
            Op::OccupancyClusters => simple!(OccupancyClusters, |c| self.function(c.function).and_then(|f| {
                let shape = LaunchShape {
                    grid: [c.grid_x, c.grid_y, c.grid_z],
                    block: [c.block_x, c.block_y, c.block_z],
                    shared_mem: c.shared_mem,
                    cluster: [c.cluster_x, c.cluster_y, c.cluster_z],
                };
                self.b()
                    .occupancy_clusters(f.real, f.is_kernel, shape, c.potential_size != 0)
                    .map(|v| OccupancyReply { value: v as i64 })
            })),
            Op::HostMirrorMap => simple!(HostMirrorMap, |c| {
                if c.size == 0 || c.size > MAX_MIRROR || c.addr % 4096 != 0 || c.size % 4096 != 0 {
                    Err(CUDA_ERROR_INVALID_VALUE)
                } else {
                    self.b().host_mirror_map(c.addr, c.size).map(|dptr| {
                        let mut objs = self.s().objects();
                        objs.mirrors.insert(c.addr, (dptr, c.size));
                        // Copies may name it like device memory.
                        objs.ranges.insert(dptr, c.size);
                        MemAllocReply { dptr }
                    })
                }
            }),
            Op::HostMirrorUnmap => simple!(HostMirrorUnmap, |c| {
                let m = self.s().objects().mirrors.remove(&c.addr);
                match m {
                    Some((dptr, size)) => {
                        self.s().objects().ranges.remove(&dptr);
                        self.b().host_mirror_unmap(c.addr, size).map(|_| Empty {})
                    }
                    None => Err(CUDA_ERROR_INVALID_VALUE),
                }
            }),
            Op::MemAllocManaged => simple!(MemAllocManaged, |c| {
                self.s().reserve(c.size).and_then(|_| {
                    let dptr = self
                        .b()
                        .mem_alloc_managed(c.size, c.flags)
                        .inspect_err(|_| self.s().unreserve(c.size))?;
                    let mut objs = self.s().objects();
                    objs.ranges.insert(dptr, c.size);
                    objs.allocations.insert(dptr, c.size);
                    Ok(MemAllocReply { dptr })
                })
            }),
            Op::LibraryGetManaged => {
                let c = body!(LibraryGetManaged);
                self.read_tail(t, h, MAX_NAME)?;
                let name = self.name_from_tail()?;
                let module = self
                    .s()
                    .objects()
                    .modules
                    .get(&c.library)
                    .map(|m| (m.real, m.is_library));
                let r = match module {
                    Some((real, true)) => self.b().library_get_managed(real, &name),
                    _ => Err(CUDA_ERROR_INVALID_HANDLE),
                };
                let r = r.map(|(dptr, size)| {
                    self.s().objects().ranges.insert(dptr, size);
                    GlobalReply { dptr, size }
                });
                self.finish::<LibraryGetManaged>(t, h.seq, r, &[])
            }
            Op::ArrayCreate => simple!(ArrayCreate, |c| {
                let shape = ArrayShape {
                    width: c.width,
                    height: c.height,
                    depth: c.depth,
                    format: c.format,
                    channels: c.channels,
                    flags: c.flags,
                };
                self.b().array_create(shape).map(|real| {
                    self.s().objects().arrays.insert(c.array, (real, shape));
                    Empty {}
                })
            }),
            Op::ArrayDestroy => simple!(ArrayDestroy, |c| {
                let real = self.s().objects().arrays.remove(&c.array);
                match real {
                    Some((r, _)) => self.b().array_destroy(r).map(|_| Empty {}),
                    None => Err(CUDA_ERROR_INVALID_HANDLE),
                }
            }),
            Op::ArrayCopy => {
                let c = body!(ArrayCopy);
                self.read_tail(t, h, MAX_ARRAY_COPY)?;
                let mut host = std::mem::take(&mut self.tail);
                let r = self.array_copy(c, &mut host);
                let reply = if c.direction == 1 && r.is_ok() {
                    &host[..]
                } else {
                    &[][..]
                };
                let out = self.finish::<ArrayCopy>(t, h.seq, r.map(|_| Empty {}), reply);
                self.tail = host;
                out
            }
            Op::TexObjectCreate => {
                let c = body!(TexObjectCreate);
                self.read_tail(t, h, RESOURCE_DESC_LEN + TEXTURE_DESC_LEN + RESOURCE_VIEW_DESC_LEN)?;
                let tail = std::mem::take(&mut self.tail);
                let r = self.tex_object_create(c, &tail);
                self.tail = tail;
                self.finish::<TexObjectCreate>(t, h.seq, r.map(|object| ObjectReply { object }), &[])
            }
            Op::ObjectDestroy => simple!(ObjectDestroy, |c| {
                let known = self.s().objects().tex_objects.remove(&c.object);
                match known {
                    Some(surface) if surface == (c.surface != 0) => {
                        self.b().object_destroy(c.object, surface).map(|_| Empty {})
                    }
                    _ => Err(CUDA_ERROR_INVALID_VALUE),
                }
            }),
            Op::CtxGetLimit => simple!(CtxGetLimit, |c| self
                .b()
                .ctx_get_limit(c.limit)
                .map(|value| LimitReply { value })),
            Op::CtxSetLimit => simple!(CtxSetLimit, |c| self
                .b()
                .ctx_set_limit(c.limit, c.value)
                .map(|_| Empty {})),
            Op::ExportTableSize => simple!(ExportTableSize, |c| self
                .b()
                .export_table_first_word(&c.uuid)
                .map(|first_word| ExportTableSizeReply { first_word })),
            Op::Ping => simple!(Ping, |_c| Ok(Empty {})),
            // NVML queries come from the app's monitoring (the NVML shim), not from its CUDA work: an error
            // latched by an earlier asynchronous call stays for the app's next synchronizing CUDA call.
            Op::NvmlDeviceStatus => {
                Self::no_tail(h)?;
                let c = body!(NvmlDeviceStatus);
                let r = self.nvml_status(c.device);
                let latched = std::mem::take(&mut self.latched);
                let sent = self.finish::<NvmlDeviceStatus>(t, h.seq, r, &[]);
                self.latched = latched;
                sent
            }
            Op::NvmlSystemInfo => {
                Self::no_tail(h)?;
                let mut version = self.b().display_driver_version().into_bytes();
                // NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE is 80 with the NUL.
                version.truncate(79);
                let latched = std::mem::take(&mut self.latched);
                let sent = self.finish::<NvmlSystemInfo>(t, h.seq, Ok(Empty {}), &version);
                self.latched = latched;
                sent
            }
            Op::HostRegionMap => {
                Self::no_tail(h)?;
                let c = body!(HostRegionMap);
                // The descriptor was sent just before this request; without it the client broke the protocol.
                let fd = t.recv_fd(c.id)?;
                let r = self.map_region(c.id, c.size, c.addr, &fd);
                self.finish::<HostRegionMap>(t, h.seq, r.map(|_| Empty {}), &[])
            }
            Op::HostRegionUnmap => simple!(HostRegionUnmap, |c| self.unmap_region(c.id).map(|_| Empty {})),
            Op::MemGetAllocationGranularity => simple!(MemGetAllocationGranularity, |c| self
                .s()
                .mem_granularity(c.prop, c.option)
                .map(|granularity| GranularityReply { granularity })),
            Op::MemAddressReserve => simple!(MemAddressReserve, |c| self
                .s()
                .mem_address_reserve(c)
                .map(|dptr| MemAllocReply { dptr })),
            Op::MemAddressFree => simple!(MemAddressFree, |c| self
                .s()
                .mem_address_free(c.ptr, c.size)
                .map(|_| Empty {})),
            Op::MemCreate => simple!(MemCreate, |c| self.s().mem_create(c).map(|_| Empty {})),
            Op::MemRelease => simple!(MemRelease, |c| self.s().mem_release(c.handle).map(|_| Empty {})),
            Op::MemMap => simple!(MemMap, |c| self.s().mem_map(c).map(|_| Empty {})),
            Op::MemUnmap => simple!(MemUnmap, |c| self.s().mem_unmap(c.ptr, c.size).map(|_| Empty {})),
            Op::MemSetAccess => {
                let c = body!(MemSetAccess);
                let record = std::mem::size_of::<MemAccessDesc>();
                self.read_tail(t, h, MAX_ACCESS_DESCS * record)?;
                if self.tail.len() != c.count as usize * record {
                    return Err(ChannelEnd::Malformed(format!(
                        "cuMemSetAccess of {} descriptors carries {} bytes",
                        c.count,
                        self.tail.len()
                    )));
                }
                let descs: Vec<MemAccessDesc> = self
                    .tail
                    .chunks_exact(record)
                    .filter_map(|r| zerocopy::FromBytes::read_from_bytes(r).ok())
                    .collect();
                let r = self.s().mem_set_access(c.ptr, c.size, &descs);
                self.finish::<MemSetAccess>(t, h.seq, r.map(|_| Empty {}), &[])
            }
            Op::MemGetAccess => simple!(MemGetAccess, |c| self
                .s()
                .mem_get_access(c.location_type, c.location_id, c.ptr)
                .map(|flags| MemAccessReply { flags })),
            Op::MemGetAllocationProperties => simple!(MemGetAllocationProperties, |c| self
                .s()
                .mem_allocation_properties(c.handle)
                .map(|prop| MemAllocPropReply { prop })),
            Op::MemRetainAllocationHandle => simple!(MemRetainAllocationHandle, |c| self
                .s()
                .mem_retain_allocation_handle(c.addr)
                .map(|handle| MemHandleReply { handle })),
            Op::MemcpyHtoDRegion => simple!(MemcpyHtoDRegion, |c| {
                let stream = if per_thread { STREAM_PER_THREAD } else { 0 };
                self.region_copy(true, c.dst, c.region, c.offset, c.size, stream)
                    .and_then(|_| self.b().stream_synchronize(stream))
                    .map(|_| Empty {})
            }),
            Op::MemcpyHtoDRegionAsync => simple!(MemcpyHtoDRegionAsync, |c| {
                self.stream(c.stream, per_thread)
                    .and_then(|s| self.region_copy(true, c.dst, c.region, c.offset, c.size, s))
                    .map(|_| Empty {})
            }),
            Op::MemcpyDtoHRegion => simple!(MemcpyDtoHRegion, |c| {
                let stream = if per_thread { STREAM_PER_THREAD } else { 0 };
                self.region_copy(false, c.src, c.region, c.offset, c.size, stream)
                    .and_then(|_| self.b().stream_synchronize(stream))
                    .map(|_| Empty {})
            }),
            Op::MemcpyDtoHRegionAsync => simple!(MemcpyDtoHRegionAsync, |c| {
                self.stream(c.stream, per_thread)
                    .and_then(|s| self.region_copy(false, c.src, c.region, c.offset, c.size, s))
                    .map(|_| Empty {})
            }),
        }
    }

    /// Replies to a synchronous call (after delivering finished async copies), or latches an async call's error.
    fn finish<C: Call>(
        &mut self,
        t: &mut dyn Transport,
        seq: u32,
        r: CuResult<C::Reply>,
        tail: &[u8],
    ) -> Result<(), ChannelEnd> {
        if !C::SYNC {
            if let Err(code) = r {
                tracing::debug!(
                    op = std::any::type_name::<C>(),
                    code = code.code(),
                    "asynchronous call failed; latched"
                );
                self.latched.get_or_insert(code);
            }
            return Ok(());
        }
        self.deliver_pending(t)?;
        let (mut result, body) = match &r {
            Ok(reply) => (CUDA_SUCCESS, reply.as_bytes()),
            Err(code) => (*code, &[][..]),
        };
        if result == CUDA_SUCCESS {
            if let Some(latched) = self.latched.take() {
                result = latched;
            }
        }
        let header = ReplyHeader {
            len: (body.len() + tail.len()) as u32,
            result: result.code(),
            kind: REPLY_KIND_RESULT,
            seq,
        };
        t.send(&[header.as_bytes(), body, tail])?;
        Ok(())
    }

    /// Sends the bytes of every finished device-to-host async copy, so they land before this reply returns;
    /// first, whatever the driver printed (device-side `printf`, emitted at synchronizing calls).
    fn deliver_pending(&mut self, t: &mut dyn Transport) -> Result<(), ChannelEnd> {
        let printed = take_printed();
        if !printed.is_empty() {
            let header = ReplyHeader {
                len: printed.len() as u32,
                result: 0,
                kind: REPLY_KIND_STDOUT,
                seq: 0,
            };
            t.send(&[header.as_bytes(), &printed])?;
        }
        let mut i = 0;
        while i < self.pending.len() {
            match self.b().event_query(self.pending[i].event) {
                Ok(()) => {
                    let p = self.pending.swap_remove(i);
                    let push = PushHeader {
                        pending_id: p.id,
                        len: p.len as u64,
                    };
                    let header = ReplyHeader {
                        len: (std::mem::size_of::<PushHeader>() + p.len) as u32,
                        result: 0,
                        kind: REPLY_KIND_PUSH,
                        seq: 0,
                    };
                    let sent = t.send(&[header.as_bytes(), push.as_bytes(), &p.buf.as_slice()[..p.len]]);
                    let _ = self.b().event_destroy(p.event);
                    self.give_back(p.buf);
                    sent?;
                }
                Err(CUDA_ERROR_NOT_READY) => i += 1,
                Err(_) => {
                    // The stream failed (sticky error): the copy will never land; the error reaches the
                    // client through its next synchronizing call.
                    let p = self.pending.swap_remove(i);
                    let _ = self.b().event_destroy(p.event);
                    self.give_back(p.buf);
                }
            }
        }
        Ok(())
    }

    fn map_region(&self, id: u64, size: u64, addr: u64, fd: &std::os::fd::OwnedFd) -> CuResult<()> {
        let len = usize::try_from(size).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let at = usize::try_from(addr).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        if self.s().objects().regions.contains_key(&id) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let region = crate::sys::SharedRegion::map(fd, len, at).map_err(|e| {
            tracing::warn!("cannot map the client's host region {id}: {e}");
            CUDA_ERROR_INVALID_VALUE
        })?;
        self.b().host_register(region.ptr, region.len)?;
        self.s().objects().regions.insert(id, Arc::new(region));
        Ok(())
    }

    fn unmap_region(&self, id: u64) -> CuResult<()> {
        let region = self.s().objects().regions.remove(&id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        // Copies still queued on it must finish before the memory goes (the driver's cuMemFreeHost waits too).
        let _ = self.b().ctx_synchronize();
        self.b().host_unregister(region.ptr)
    }

    /// Queues a copy on `stream` between device memory `dev` and `size` bytes at `offset` of shared region
    /// `region` (to the device when `to_device`), after checking both sides.
    fn region_copy(&self, to_device: bool, dev: u64, region: u64, offset: u64, size: u64, stream: u64) -> CuResult<()> {
        self.check_range(dev, size)?;
        let (_keep, buf) = self.region_slice(region, offset, size)?;
        if to_device {
            self.b().memcpy_htod_async(dev, &buf, buf.len, stream)?;
        } else {
            self.b().memcpy_dtoh_async(&buf, dev, buf.len, stream)?;
        }
        self.s().count_moved(size);
        Ok(())
    }

    /// `size` bytes at `offset` of region `id`, as a buffer the backend can copy through; the Arc keeps the
    /// mapping alive while the copy is issued.
    fn region_slice(&self, id: u64, offset: u64, size: u64) -> CuResult<(Arc<crate::sys::SharedRegion>, HostBuffer)> {
        let region = self
            .s()
            .objects()
            .regions
            .get(&id)
            .cloned()
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let ptr = region.at(offset, size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        Ok((
            region,
            HostBuffer {
                ptr,
                len: size as usize,
            },
        ))
    }

    fn stream(&self, id: u64, per_thread: bool) -> CuResult<u64> {
        match id {
            0 if per_thread => Ok(STREAM_PER_THREAD),
            0..=2 => Ok(id),
            _ => self
                .s()
                .await_object(|o| o.streams.get(&id).copied())
                .ok_or(CUDA_ERROR_INVALID_HANDLE),
        }
    }

    fn event(&self, id: u64) -> CuResult<u64> {
        self.s()
            .await_object(|o| o.events.get(&id).copied())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    /// A function (or library kernel) by client id, bound on this or (just now) another channel.
    fn function(&self, id: u64) -> CuResult<Function> {
        self.s()
            .await_object(|o| o.functions.get(&id).cloned())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    /// [addr, addr+len) must lie inside ranges the session owns: one, or several back to back.
    fn check_range(&self, addr: u64, len: u64) -> CuResult<()> {
        vgpu_dataplane::ranges::covered(&self.s().objects().ranges, addr, len)
    }

    /// Each write or wait must name 4 or 8 bytes of the session's device memory; unknown operations are refused.
    fn check_mem_ops(&self, ops: &[MemOp]) -> CuResult<()> {
        for op in ops {
            match op.operand_len().ok_or(CUDA_ERROR_INVALID_VALUE)? {
                0 => {}
                len => self.check_range(op.address, len)?,
            }
        }
        Ok(())
    }

    fn mem_alloc(&self, size: u64) -> CuResult<u64> {
        self.s().reserve(size)?;
        let dptr = self.b().mem_alloc(size).inspect_err(|_| self.s().unreserve(size))?;
        let mut objs = self.s().objects();
        objs.ranges.insert(dptr, size);
        objs.allocations.insert(dptr, size);
        Ok(dptr)
    }

    /// `ArrayCopy`: checks the box against the array and the device side against the session's ranges.
    fn array_copy(&self, c: ArrayCopy, host: &mut Vec<u8>) -> CuResult<()> {
        let (real, shape) = self
            .s()
            .objects()
            .arrays
            .get(&c.array)
            .copied()
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let elem = shape.element_bytes().ok_or(CUDA_ERROR_NOT_SUPPORTED)?;
        let (rows, slices) = (shape.height.max(1), shape.depth.max(1));
        let inside = |start: u64, len: u64, limit: u64| start.checked_add(len).is_some_and(|end| end <= limit);
        if !inside(c.x_bytes, c.width_bytes, shape.width * elem)
            || !inside(c.y, c.height, rows)
            || !inside(c.z, c.depth, slices)
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let packed = c
            .width_bytes
            .checked_mul(c.height)
            .and_then(|v| v.checked_mul(c.depth))
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        match c.direction {
            0 if host.len() as u64 == packed => {}
            1 if host.is_empty() && packed <= MAX_ARRAY_COPY as u64 => host.resize(packed as usize, 0),
            2 | 3 if host.is_empty() => {
                if c.height > 1 && c.device_pitch < c.width_bytes {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                let slice = c.device_pitch.saturating_mul(c.device_height.max(c.height));
                let span = slice
                    .saturating_mul(c.depth.saturating_sub(1))
                    .saturating_add(c.device_pitch.saturating_mul(c.height.saturating_sub(1)))
                    .saturating_add(c.width_bytes);
                self.check_range(c.device, span)?;
            }
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
        let region = ArrayBox {
            x_bytes: c.x_bytes,
            y: c.y,
            z: c.z,
            width_bytes: c.width_bytes,
            height: c.height,
            depth: c.depth,
        };
        self.b().array_copy(
            real,
            region,
            c.direction,
            c.device,
            c.device_pitch,
            c.device_height,
            host,
        )
    }

    /// `TexObjectCreate`: the resource's array (a client id) or memory (a session range) is checked first.
    fn tex_object_create(&self, c: TexObjectCreate, tail: &[u8]) -> CuResult<u64> {
        let surface = c.surface != 0;
        let want = RESOURCE_DESC_LEN
            + if surface { 0 } else { TEXTURE_DESC_LEN }
            + if c.has_view != 0 && !surface {
                RESOURCE_VIEW_DESC_LEN
            } else {
                0
            };
        if tail.len() != want {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut resource = tail[..RESOURCE_DESC_LEN].to_vec();
        let word = |b: &[u8], at: usize| {
            u64::from_le_bytes([
                b[at],
                b[at + 1],
                b[at + 2],
                b[at + 3],
                b[at + 4],
                b[at + 5],
                b[at + 6],
                b[at + 7],
            ])
        };
        match u32::from_le_bytes([resource[0], resource[1], resource[2], resource[3]]) {
            // CU_RESOURCE_TYPE_ARRAY: the array handle is the client's id.
            0 => {
                let id = word(&resource, 8);
                let (real, _) = self
                    .s()
                    .objects()
                    .arrays
                    .get(&id)
                    .copied()
                    .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
                resource[8..16].copy_from_slice(&real.to_le_bytes());
            }
            // CU_RESOURCE_TYPE_LINEAR and _PITCH2D: device memory of the session.
            2 | 3 if !surface => self.check_range(word(&resource, 8), 1)?,
            _ => return Err(CUDA_ERROR_NOT_SUPPORTED),
        }
        let texture = if surface {
            &[][..]
        } else {
            &tail[RESOURCE_DESC_LEN..RESOURCE_DESC_LEN + TEXTURE_DESC_LEN]
        };
        let view =
            (tail.len() == want && c.has_view != 0 && !surface).then(|| &tail[RESOURCE_DESC_LEN + TEXTURE_DESC_LEN..]);
        let object = self.b().tex_object_create(surface, &resource, texture, view)?;
        self.s().objects().tex_objects.insert(object, surface);
        Ok(object)
    }

    /// A memory pool by client id; a device's default pool is bound to the driver's on first use.
    fn pool(&self, id: u64) -> CuResult<u64> {
        if let Some(&real) = self.s().objects().pools.get(&id) {
            return Ok(real);
        }
        let dev = default_mem_pool_device(id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let real = self.b().default_mem_pool(self.s().real_device(dev)?)?;
        self.s().objects().pools.insert(id, real);
        Ok(real)
    }

    /// Stream-ordered allocation, accounted against the session's memory limit like any other.
    fn mem_alloc_async(&self, c: MemAllocAsync, per_thread: bool) -> CuResult<MemAllocReply> {
        let pool = self.pool(c.pool)?;
        let stream = self.stream(c.stream, per_thread)?;
        self.s().reserve(c.size)?;
        let dptr = self
            .b()
            .mem_alloc_async(c.size, pool, stream)
            .inspect_err(|_| self.s().unreserve(c.size))?;
        let mut objs = self.s().objects();
        objs.ranges.insert(dptr, c.size);
        objs.allocations.insert(dptr, c.size);
        Ok(MemAllocReply { dptr })
    }

    fn mem_free_async(&self, c: MemFreeAsync, per_thread: bool) -> CuResult<()> {
        let stream = self.stream(c.stream, per_thread)?;
        let size = self
            .s()
            .objects()
            .allocations
            .get(&c.dptr)
            .copied()
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        self.b().mem_free_async(c.dptr, stream)?;
        let mut objs = self.s().objects();
        objs.allocations.remove(&c.dptr);
        objs.ranges.remove(&c.dptr);
        objs.allocated_bytes = objs.allocated_bytes.saturating_sub(size);
        Ok(())
    }

    fn mem_alloc_pitch(&self, c: MemAllocPitch) -> CuResult<MemAllocPitchReply> {
        // The driver picks the pitch; reserve the widest it may choose (rows rounded up to 512 bytes) and
        // settle the difference once it has answered.
        let width = c.width.checked_next_multiple_of(512).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let bound = width.checked_mul(c.height).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        self.s().reserve(bound)?;
        let (dptr, pitch) = self
            .b()
            .mem_alloc_pitch(c.width, c.height, c.elem_size)
            .inspect_err(|_| self.s().unreserve(bound))?;
        let size = pitch.saturating_mul(c.height);
        let mut objs = self.s().objects();
        objs.ranges.insert(dptr, size);
        objs.allocations.insert(dptr, size);
        objs.allocated_bytes = objs.allocated_bytes.saturating_sub(bound).saturating_add(size);
        Ok(MemAllocPitchReply { dptr, pitch })
    }

    fn mem_free(&self, dptr: u64) -> CuResult<()> {
        if dptr == 0 {
            return Ok(());
        }
        let size = self
            .s()
            .objects()
            .allocations
            .get(&dptr)
            .copied()
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        self.b().mem_free(dptr)?;
        let mut objs = self.s().objects();
        objs.allocations.remove(&dptr);
        objs.ranges.remove(&dptr);
        objs.allocated_bytes = objs.allocated_bytes.saturating_sub(size);
        Ok(())
    }

    /// `NvmlDeviceStatus`: the backend's live reading, seen through the session's limits. With a memory limit
    /// the limit is the total and the session's own allocations are the memory used (another tenant's use of
    /// the same GPU is not this session's to see).
    fn nvml_status(&self, device: u32) -> CuResult<NvmlStatusReply> {
        let s = self.s();
        let real = s.real_device(device)?;
        let facts_total = usize::try_from(real)
            .ok()
            .and_then(|d| s.backend.devices().get(d))
            .map(|d| d.total_mem)
            .ok_or(CUDA_ERROR_INVALID_DEVICE)?;
        let reading = self.b().device_reading(real, std::process::id()).unwrap_or_default();
        let (allocated, active) = {
            let objs = s.objects();
            (objs.allocated_bytes, objs.context_devices.contains(&real))
        };
        let (total, free, used) =
            reading
                .memory
                .unwrap_or((facts_total, facts_total.saturating_sub(allocated), allocated));
        let (total, free, used) = match s.limits.memory_bytes {
            Some(limit) => {
                let total = total.min(limit);
                (total, total.saturating_sub(allocated).min(free), allocated)
            }
            None => (total, free, used),
        };
        let mut r = NvmlStatusReply {
            mem_total: total,
            mem_free: free,
            mem_used: used,
            process_used: reading.process_memory.unwrap_or(allocated),
            process_active: active as u32,
            ..Default::default()
        };
        if let Some((gpu, memory)) = reading.utilization {
            r.valid |= NVML_HAS_UTILIZATION;
            (r.util_gpu, r.util_memory) = (gpu, memory);
        }
        if let Some(t) = reading.temperature_c {
            r.valid |= NVML_HAS_TEMPERATURE;
            r.temperature_c = t;
        }
        if let Some(p) = reading.power_mw {
            r.valid |= NVML_HAS_POWER;
            r.power_mw = p;
        }
        if let Some((id, sub)) = reading.pci_ids {
            r.valid |= NVML_HAS_PCI_IDS;
            (r.pci_device_id, r.pci_subsystem_id) = (id, sub);
        }
        if let Some(m) = reading.minor_number {
            r.valid |= NVML_HAS_MINOR_NUMBER;
            r.minor_number = m;
        }
        if let Some(b) = reading.brand {
            r.valid |= NVML_HAS_BRAND;
            r.brand = b;
        }
        if let Some(a) = reading.architecture {
            r.valid |= NVML_HAS_ARCHITECTURE;
            r.architecture = a;
        }
        Ok(r)
    }

    fn mem_get_info(&self) -> CuResult<MemGetInfoReply> {
        let (free, total) = self.b().mem_get_info()?;
        Ok(match self.s().limits.memory_bytes {
            Some(limit) => {
                let used = self.s().objects().allocated_bytes;
                MemGetInfoReply {
                    free: free.min(limit.saturating_sub(used)),
                    total: total.min(limit),
                }
            }
            None => MemGetInfoReply { free, total },
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn memset(&self, dst: u64, pitch: u64, value: u32, elem: u32, width: u64, height: u64, s: u64) -> CuResult<()> {
        if !matches!(elem, 1 | 2 | 4) || (height > 1 && pitch < width * elem as u64) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if width == 0 || height == 0 {
            return Ok(());
        }
        let span = pitch.saturating_mul(height - 1).saturating_add(width * elem as u64);
        self.check_range(dst, span)?;
        self.gate.submit(s, crate::sched::Work::Bytes(span)); // sched
        self.b().memset_async(dst, pitch, value, elem, width, height, s)
    }

    fn launch(&mut self, c: LaunchKernel, per_thread: bool) -> CuResult<()> {
        let f = self.function(c.function)?;
        if self.tail.len() != f.args_size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let stream = self.stream(c.stream, per_thread)?;
        let session = self.session.clone();
        let Some(session) = session else {
            return Err(CUDA_ERROR_UNKNOWN);
        };
        self.gate.submit(stream, crate::sched::Work::Launch); // sched
        session.backend.launch(
            f.real,
            [c.grid_x, c.grid_y, c.grid_z],
            [c.block_x, c.block_y, c.block_z],
            c.shared_mem,
            stream,
            &mut self.tail,
            &f.params,
        )
    }

    fn launch_ex(&mut self, c: LaunchKernelEx, per_thread: bool) -> CuResult<()> {
        let f = self.function(c.function)?;
        if self.tail.len() != f.args_size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let stream = self.stream(c.stream, per_thread)?;
        let Some(session) = self.session.clone() else {
            return Err(CUDA_ERROR_UNKNOWN);
        };
        self.gate.submit(stream, crate::sched::Work::Launch); // sched
        session.backend.launch_ex(
            f.real,
            [c.grid_x, c.grid_y, c.grid_z],
            [c.block_x, c.block_y, c.block_z],
            c.shared_mem,
            stream,
            &mut self.tail,
            &f.params,
            c.cooperative != 0,
            [c.cluster_x, c.cluster_y, c.cluster_z],
        )
    }

    /// A pinned buffer of at least `len` bytes, reusing a returned one when it fits.
    fn take_buffer(&mut self, len: usize) -> CuResult<HostBuffer> {
        self.reclaim_in_flight();
        if let Some(i) = self
            .pool
            .iter()
            .position(|b| b.len >= len && b.len <= len.max(4096) * 2)
        {
            return Ok(self.pool.swap_remove(i));
        }
        self.b().host_alloc(len.max(4096))
    }

    fn give_back(&mut self, buf: HostBuffer) {
        if self.pool.len() < POOL_KEEP {
            self.pool.push(buf);
        } else {
            self.b().host_free(buf);
        }
    }

    fn reclaim_in_flight(&mut self) {
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.b().event_query(self.in_flight[i].event) != Err(CUDA_ERROR_NOT_READY) {
                let f = self.in_flight.swap_remove(i);
                let _ = self.b().event_destroy(f.event);
                self.give_back(f.buf);
            } else {
                i += 1;
            }
        }
    }

    fn ensure_staging(&mut self) -> CuResult<()> {
        while self.staging.len() < 2 {
            let b = self.b().host_alloc(CHUNK)?;
            self.staging.push(b);
        }
        Ok(())
    }

    /// Drains `len` bytes of a tail the call could not use, keeping the stream in frame.
    fn discard(&mut self, t: &mut dyn Transport, mut len: usize) -> Result<(), ChannelEnd> {
        let mut scratch = vec![0u8; len.min(1 << 20)];
        while len > 0 {
            let n = len.min(scratch.len());
            t.recv_exact(&mut scratch[..n])?;
            len -= n;
        }
        Ok(())
    }

    /// Synchronous host-to-device copy, pipelined: the network fills one staging buffer while the copy engine
    /// drains the other.
    fn htod_sync(
        &mut self,
        t: &mut dyn Transport,
        h: &RequestHeader,
        c: MemcpyHtoD,
        per_thread: bool,
    ) -> Result<CuResult<()>, ChannelEnd> {
        let len = h.tail_len();
        if len as u64 != c.size {
            return Err(ChannelEnd::Malformed(format!("copy of {} bytes carries {len}", c.size)));
        }
        self.s().count_moved(c.size);
        let stream = if per_thread { STREAM_PER_THREAD } else { 0 };
        if let Err(e) = self.check_range(c.dst, c.size).and_then(|_| self.ensure_staging()) {
            self.discard(t, len)?;
            return Ok(Err(e));
        }
        let mut done = 0usize;
        let mut which = 0;
        let mut error = None;
        while done < len {
            let n = (len - done).min(CHUNK);
            let buf = &mut self.staging[which];
            t.recv_exact(&mut buf.as_mut_slice()[..n])?;
            if error.is_none() {
                // The previous chunk's copy ran while this one arrived; waiting for it here (not right after
                // issuing it) is what overlaps the network with the copy engine, and it also frees that
                // chunk's buffer, which the next chunk fills.
                let r = if done > 0 {
                    self.b().stream_synchronize(stream)
                } else {
                    Ok(())
                }
                .and_then(|_| {
                    self.b()
                        .memcpy_htod_async(c.dst + done as u64, &self.staging[which], n, stream)
                });
                error = r.err();
            }
            done += n;
            which ^= 1;
        }
        let r = match error {
            Some(e) => Err(e),
            None => self.b().stream_synchronize(stream),
        };
        Ok(r)
    }

    fn htod_async(
        &mut self,
        t: &mut dyn Transport,
        h: &RequestHeader,
        c: MemcpyHtoDAsync,
        per_thread: bool,
    ) -> Result<CuResult<()>, ChannelEnd> {
        let len = h.tail_len();
        if len as u64 != c.size {
            return Err(ChannelEnd::Malformed(format!("copy of {} bytes carries {len}", c.size)));
        }
        self.s().count_moved(c.size);
        let prepared = self
            .stream(c.stream, per_thread)
            .and_then(|s| self.check_range(c.dst, c.size).map(|_| s))
            .and_then(|s| self.take_buffer(len).map(|b| (s, b)));
        let (stream, mut buf) = match prepared {
            Ok(v) => v,
            Err(e) => {
                self.discard(t, len)?;
                return Ok(Err(e));
            }
        };
        t.recv_exact(&mut buf.as_mut_slice()[..len])?;
        let issued = self
            .b()
            .memcpy_htod_async(c.dst, &buf, len, stream)
            .and_then(|_| self.b().event_create(2 /* CU_EVENT_DISABLE_TIMING */))
            .and_then(|ev| self.b().event_record(ev, stream).map(|_| ev));
        match issued {
            Ok(event) => {
                self.in_flight.push(InFlight { buf, event });
                Ok(Ok(()))
            }
            Err(e) => {
                // The copy may still be queued: wait for the stream before the buffer is reused.
                let _ = self.b().stream_synchronize(stream);
                self.give_back(buf);
                Ok(Err(e))
            }
        }
    }

    /// Synchronous device-to-host copy: reply header, the data chunk by chunk as the copy engine fills the
    /// staging buffers, then a final status word (an error can surface after the first chunk left).
    fn dtoh_sync(
        &mut self,
        t: &mut dyn Transport,
        seq: u32,
        c: MemcpyDtoH,
        per_thread: bool,
    ) -> Result<(), ChannelEnd> {
        let stream = if per_thread { STREAM_PER_THREAD } else { 0 };
        let len = c.size as usize;
        if let Err(e) = self.check_range(c.src, c.size).and_then(|_| self.ensure_staging()) {
            return self.finish::<MemcpyDtoH>(t, seq, Err(e), &[]);
        }
        self.s().count_moved(c.size);
        self.deliver_pending(t)?;
        let latched = std::mem::take(&mut self.latched);
        let header = ReplyHeader {
            len: (len + 4) as u32,
            result: 0,
            kind: REPLY_KIND_RESULT,
            seq,
        };
        if len + 4 > u32::MAX as usize {
            return Err(ChannelEnd::Malformed(
                "device-to-host copy over 4 GiB in one call".into(),
            ));
        }
        t.send(&[header.as_bytes()])?;
        let mut error: Option<CUresult> = None;
        let mut offset = 0usize;
        let mut which = 0;
        // Issue the first chunk, then: wait for chunk i, issue chunk i+1 into the other buffer, send chunk i.
        let first = len.min(CHUNK);
        if first > 0 {
            error = self.b().memcpy_dtoh_async(&self.staging[0], c.src, first, stream).err();
        }
        while offset < len {
            let n = (len - offset).min(CHUNK);
            if error.is_none() {
                error = self.b().stream_synchronize(stream).err();
            }
            let next = offset + n;
            if next < len && error.is_none() {
                let m = (len - next).min(CHUNK);
                error = self
                    .b()
                    .memcpy_dtoh_async(&self.staging[which ^ 1], c.src + next as u64, m, stream)
                    .err();
            }
            if error.is_some() {
                self.staging[which].as_mut_slice()[..n].fill(0);
            }
            t.send(&[&self.staging[which].as_slice()[..n]])?;
            offset = next;
            which ^= 1;
        }
        let status = error.or(latched).unwrap_or(CUDA_SUCCESS);
        t.send(&[&status.code().to_le_bytes()])?;
        Ok(())
    }

    fn dtoh_async(&mut self, c: MemcpyDtoHAsync, per_thread: bool) -> CuResult<()> {
        let stream = self.stream(c.stream, per_thread)?;
        self.check_range(c.src, c.size)?;
        let len = c.size as usize;
        let buf = self.take_buffer(len)?;
        let issued = self
            .b()
            .memcpy_dtoh_async(&buf, c.src, len, stream)
            .and_then(|_| self.b().event_create(2 /* CU_EVENT_DISABLE_TIMING */))
            .and_then(|ev| self.b().event_record(ev, stream).map(|_| ev));
        match issued {
            Ok(event) => {
                self.s().count_moved(c.size);
                self.pending.push(PendingCopy {
                    id: c.pending_id,
                    buf,
                    len,
                    event,
                });
                Ok(())
            }
            Err(e) => {
                let _ = self.b().stream_synchronize(stream);
                self.give_back(buf);
                Err(e)
            }
        }
    }

    /// The device span a 2D copy touches: `height` rows at `pitch`, `width` bytes each.
    fn check_2d(&self, addr: u64, pitch: u64, width: u64, height: u64) -> CuResult<()> {
        if height == 0 || width == 0 {
            return Ok(());
        }
        if height > 1 && pitch < width {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let span = pitch
            .checked_mul(height - 1)
            .and_then(|v| v.checked_add(width))
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        self.check_range(addr, span)
    }

    /// Synchronous 2D copy. Host rows travel packed; the server copies them through a staging buffer.
    /// The frame rules every 2D copy shares: its packed size must not overflow, and host-to-device data (direction
    /// 0) travels as a tail of exactly that size. Returns the packed size, counted as bytes moved.
    fn frame_2d(&self, h: &RequestHeader, width: u64, height: u64, direction: u32) -> Result<u64, ChannelEnd> {
        let packed = width
            .checked_mul(height)
            .ok_or_else(|| ChannelEnd::Malformed("2D copy size overflows".into()))?;
        let expect_tail = if direction == 0 { packed } else { 0 };
        if h.tail_len() as u64 != expect_tail || direction > 2 {
            return Err(ChannelEnd::Malformed(
                "2D copy with a tail that does not match its direction".into(),
            ));
        }
        if direction < 2 {
            self.s().count_moved(packed);
        }
        Ok(packed)
    }

    /// Range checks of the device side(s) of a 2D copy: the destination for host-to-device (0), the source for
    /// device-to-host (1), both for device-to-device.
    fn check_2d_sides(
        &self,
        direction: u32,
        src: (u64, u64),
        dst: (u64, u64),
        width: u64,
        height: u64,
    ) -> CuResult<()> {
        if direction != 1 {
            self.check_2d(dst.0, dst.1, width, height)?;
        }
        if direction != 0 {
            self.check_2d(src.0, src.1, width, height)?;
        }
        Ok(())
    }

    fn copy_2d(
        &mut self,
        t: &mut dyn Transport,
        h: &RequestHeader,
        c: Memcpy2D,
        per_thread: bool,
    ) -> Result<(), ChannelEnd> {
        let stream = if per_thread { STREAM_PER_THREAD } else { 0 };
        let packed = self.frame_2d(h, c.width, c.height, c.direction)?;
        let checked = self.check_2d_sides(
            c.direction,
            (c.src, c.src_pitch),
            (c.dst, c.dst_pitch),
            c.width,
            c.height,
        );
        let buf = checked.and_then(|_| {
            if c.direction < 2 {
                self.take_buffer(packed as usize).map(Some)
            } else {
                Ok(None)
            }
        });
        let mut buf = match buf {
            Ok(b) => b,
            Err(e) => {
                self.discard(t, h.tail_len())?;
                return self.finish::<Memcpy2D>(t, h.seq, Err(e), &[]);
            }
        };
        let (src, dst) = match (c.direction, &mut buf) {
            (0, Some(b)) => {
                t.recv_exact(&mut b.as_mut_slice()[..packed as usize])?;
                (Place::Host(b, c.width), Place::Device(c.dst, c.dst_pitch))
            }
            (1, Some(b)) => (Place::Device(c.src, c.src_pitch), Place::Host(b, c.width)),
            _ => (Place::Device(c.src, c.src_pitch), Place::Device(c.dst, c.dst_pitch)),
        };
        let r = self
            .b()
            .memcpy_2d_async(src, dst, c.width, c.height, stream)
            .and_then(|_| self.b().stream_synchronize(stream));
        let result = match (&r, c.direction, &buf) {
            (Ok(()), 1, Some(b)) => {
                let data = b.as_slice()[..packed as usize].to_vec();
                self.finish::<Memcpy2D>(t, h.seq, Ok(Empty {}), &data)
            }
            _ => self.finish::<Memcpy2D>(t, h.seq, r.map(|_| Empty {}), &[]),
        };
        if let Some(b) = buf {
            self.give_back(b);
        }
        result
    }

    fn copy_2d_async(
        &mut self,
        t: &mut dyn Transport,
        h: &RequestHeader,
        c: Memcpy2DAsync,
        per_thread: bool,
    ) -> Result<CuResult<()>, ChannelEnd> {
        let packed = self.frame_2d(h, c.width, c.height, c.direction)?;
        let prepared = self.stream(c.stream, per_thread).and_then(|s| {
            self.check_2d_sides(
                c.direction,
                (c.src, c.src_pitch),
                (c.dst, c.dst_pitch),
                c.width,
                c.height,
            )?;
            let buf = if c.direction < 2 {
                Some(self.take_buffer(packed as usize)?)
            } else {
                None
            };
            Ok((s, buf))
        });
        let (stream, mut buf) = match prepared {
            Ok(v) => v,
            Err(e) => {
                self.discard(t, h.tail_len())?;
                return Ok(Err(e));
            }
        };
        let (src, dst) = match (c.direction, &mut buf) {
            (0, Some(b)) => {
                t.recv_exact(&mut b.as_mut_slice()[..packed as usize])?;
                (Place::Host(b, c.width), Place::Device(c.dst, c.dst_pitch))
            }
            (1, Some(b)) => (Place::Device(c.src, c.src_pitch), Place::Host(b, c.width)),
            _ => (Place::Device(c.src, c.src_pitch), Place::Device(c.dst, c.dst_pitch)),
        };
        let issued = self
            .b()
            .memcpy_2d_async(src, dst, c.width, c.height, stream)
            .and_then(|_| match buf {
                Some(_) => self
                    .b()
                    .event_create(2)
                    .and_then(|ev| self.b().event_record(ev, stream).map(|_| Some(ev))),
                None => Ok(None),
            });
        match (issued, buf) {
            (Ok(Some(event)), Some(b)) if c.direction == 1 => {
                self.pending.push(PendingCopy {
                    id: c.pending_id,
                    buf: b,
                    len: packed as usize,
                    event,
                });
                Ok(Ok(()))
            }
            (Ok(Some(event)), Some(b)) => {
                self.in_flight.push(InFlight { buf: b, event });
                Ok(Ok(()))
            }
            (Ok(_), None) => Ok(Ok(())),
            (Ok(None), Some(b)) => {
                self.give_back(b);
                Ok(Ok(()))
            }
            (Err(e), b) => {
                let _ = self.b().stream_synchronize(stream);
                if let Some(b) = b {
                    self.give_back(b);
                }
                Ok(Err(e))
            }
        }
    }

    /// Returns buffers to the backend when the channel ends (the worker's exit frees the rest).
    fn release(&mut self) {
        let b = match &self.session {
            Some(s) => s.backend.clone(),
            None => return,
        };
        for buf in self.staging.drain(..).chain(self.pool.drain(..)) {
            b.host_free(buf);
        }
        for p in self.pending.drain(..) {
            let _ = b.event_synchronize(p.event);
            let _ = b.event_destroy(p.event);
            b.host_free(p.buf);
        }
        for f in self.in_flight.drain(..) {
            let _ = b.event_synchronize(f.event);
            let _ = b.event_destroy(f.event);
            b.host_free(f.buf);
        }
    }
}

/// The worker's captured stdout (read end) and the bytes read from it but not yet sent to a client.
static PRINTED: Mutex<(Option<std::os::fd::RawFd>, Vec<u8>)> = Mutex::new((None, Vec::new()));

/// Sends this worker's stdout to its client: fd 1 becomes a pipe, drained by a thread so the driver never blocks
/// on a full pipe, and by every synchronizing reply (`deliver_pending`).
pub fn forward_stdout() -> std::io::Result<()> {
    let fd = crate::sys::capture_stdout()?;
    PRINTED.lock().unwrap_or_else(|p| p.into_inner()).0 = Some(fd);
    std::thread::spawn(move || loop {
        if crate::sys::wait_readable(fd, 50) {
            let mut p = PRINTED.lock().unwrap_or_else(|p| p.into_inner());
            crate::sys::read_available(fd, &mut p.1);
        }
    });
    Ok(())
}

/// Everything printed so far (after flushing the C library's buffers), in order.
fn take_printed() -> Vec<u8> {
    let mut p = PRINTED.lock().unwrap_or_else(|p| p.into_inner());
    let Some(fd) = p.0 else { return Vec::new() };
    crate::sys::flush_stdio();
    crate::sys::read_available(fd, &mut p.1);
    std::mem::take(&mut p.1)
}
