//! One client thread's channel: reads each frame, hands the call to its handler (the dispatch is generated from
//! the call table, so a call without a handler does not compile), then replies (synchronous calls) or latches
//! the error (asynchronous ones), as the driver's sticky errors work.
//!
//! Also here: what every handler shares — tails read within the table's maxima, the pinned staging buffers of
//! copies, lookups of client ids, and the worker's captured standard output (device-side `printf`).

use std::ffi::CString;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::*;
use vgpu_dataplane::wire::*;
use vgpu_dataplane::Transport;
use zerocopy::IntoBytes;

use super::objects::BoundFunction;
use super::{ChannelEnd, Session};
use crate::backend::*;

/// Staging chunk for pipelined copies: big enough to amortise a stream sync, small enough to overlap.
pub(super) const CHUNK: usize = 8 << 20;
/// Pinned buffers kept for reuse per channel: at most this many, of at most these many bytes together.
const POOL_KEEP: usize = 8;
const POOL_KEEP_BYTES: usize = 2 << 30;
/// Pinned buffers the pool has no room for wait here, up to these many bytes, until the context is idle:
/// freeing pinned memory waits for every queued kernel of the device, so a free on the submit path would
/// serialise the copy after it with kernels still running (a kernel and a copy would no longer overlap).
const RETIRED_KEEP_BYTES: usize = 1 << 30;
/// Tails are received in pieces of at most this much more than already arrived (doubling from here), so a
/// frame that announces a large tail commits memory only as its bytes come in.
const TAIL_STEP: usize = 1 << 20;
/// A tail buffer larger than this is given back after its call (a module image is not kept for the session).
const TAIL_KEEP: usize = 16 << 20;

/// What a handler returns: `Err` ends the channel (a malformed frame or a lost transport); `Ok` carries the call's
/// own outcome, replied to the client (synchronous calls) or latched (asynchronous ones).
pub(super) type Served<R> = Result<CuResult<R>, ChannelEnd>;

/// Serves one call of type `C`: `call` is its decoded body; a `bytes` tail is already in `Channel::tail`.
pub(super) trait Serve<C: Call> {
    fn serve(&mut self, call: C, cx: &mut Cx<'_>) -> Served<C::Reply>;
}

/// What a handler may use besides its call: the transport (for streamed tails and replies), the header, and
/// the reply's extra bytes.
pub(super) struct Cx<'a> {
    pub t: &'a mut dyn Transport,
    pub header: &'a RequestHeader,
    /// The call came through a `_ptsz`/`_ptds` entry point: its NULL stream is the per-thread stream.
    pub per_thread: bool,
    /// Bytes sent after the reply body of a synchronous call.
    pub reply_tail: Vec<u8>,
    /// Set by a handler that sent its reply itself (a streamed device-to-host copy).
    pub replied: bool,
    /// Leaves an error latched by earlier asynchronous calls for the app's next CUDA call (NVML queries are the
    /// app's monitoring, not its CUDA work).
    pub keep_latched: bool,
}

impl Cx<'_> {
    /// The stream a synchronous call runs on.
    pub fn default_stream(&self) -> Stream {
        Stream::default_for(self.per_thread)
    }
}

/// A device-to-host async copy whose bytes wait in a pinned buffer until a synchronizing reply carries them.
/// `len` bytes of it are held against the session's host budget.
pub(super) struct PendingCopy {
    pub id: PendingId,
    pub buf: HostBuffer,
    pub len: usize,
    pub event: Event,
}

/// Host memory an async host-to-device copy still reads from, until `event` completes; `held` bytes of the
/// session's host budget.
pub(super) struct InFlight {
    pub buf: HostBuffer,
    pub event: Event,
    pub held: u64,
}

pub(super) struct Channel {
    pub session: Arc<Session>,
    /// The first error of an asynchronous call since the last synchronizing reply (the driver's sticky error).
    pub latched: Option<CUresult>,
    pub staging: Vec<HostBuffer>,
    pub pool: Vec<HostBuffer>,
    /// Buffers to free once the context is idle (`RETIRED_KEEP_BYTES`); with `pool`, held against the session's
    /// host budget.
    retired: Vec<HostBuffer>,
    pub pending: Vec<PendingCopy>,
    pub in_flight: Vec<InFlight>,
    body: Vec<u8>,
    /// The current call's tail (calls with a `bytes` tail).
    pub tail: Vec<u8>,
    /// The session's `reset_epoch` when this channel last looked at what ended contexts took (`forget_reset_buffers`).
    epoch: u64,
    /// The context this channel's thread has current (the client's id; 0: none).
    pub current: ContextId,
    /// The channel's gate to the GPU scheduler (inert for an unscheduled session).
    pub gate: crate::sched::ChannelGate,
    /// Lanes a `LanesJoin` just took, and whether it asked for fine pieces: the channel is striped over them after
    /// that call's reply.
    pub joined_lanes: Option<(Vec<vgpu_transports::striped::Lane>, bool)>,
    /// The channel is striped (one join per channel).
    pub striped: bool,
    /// Where a collective this channel issued puts its error code (0: none), for the channel's next synchronizing
    /// reply (collectives run on lanes, `lane.rs`). An atomic: every synchronous call reads it.
    pub late: Arc<AtomicU32>,
}

/// Serves one client thread's channel until the client closes it or breaks the protocol.
pub(super) fn serve(session: &Arc<Session>, t: &mut dyn Transport) -> Result<(), ChannelEnd> {
    let gate = session.sched.as_ref().map(|s| s.gate()).unwrap_or_default();
    let mut ch = Channel::with_buffers(session.clone(), gate, Vec::new(), Vec::new());
    let result = ch.run(t);
    ch.release();
    result
}

impl Channel {
    fn with_buffers(
        session: Arc<Session>,
        gate: crate::sched::ChannelGate,
        staging: Vec<HostBuffer>,
        pool: Vec<HostBuffer>,
    ) -> Channel {
        Channel {
            epoch: session.reset_epoch.load(Ordering::Acquire),
            session,
            latched: None,
            staging,
            pool,
            retired: Vec::new(),
            pending: Vec::new(),
            in_flight: Vec::new(),
            body: Vec::new(),
            tail: Vec::new(),
            current: ContextId(0),
            gate,
            joined_lanes: None,
            striped: false,
            late: Arc::default(),
        }
    }

    /// A channel without a client, for a collective's lane: its staging and pool are the lane's (the pool's bytes
    /// held against the session's budget), handed back by `into_buffers` after the collective.
    pub fn for_lane(session: Arc<Session>, staging: Vec<HostBuffer>, pool: Vec<HostBuffer>) -> Channel {
        Channel::with_buffers(session, crate::sched::ChannelGate::default(), staging, pool)
    }

    /// The staging and pooled buffers back (a lane's), nothing freed.
    pub fn into_buffers(mut self) -> (Vec<HostBuffer>, Vec<HostBuffer>) {
        let mut pool = std::mem::take(&mut self.pool);
        pool.append(&mut self.retired);
        (std::mem::take(&mut self.staging), pool)
    }
}

/// The dispatch: one arm per call-table row, each into that call's `Serve` impl.
macro_rules! dispatch_calls {
    ($(
        $(#[$doc:meta])*
        $name:ident = $op:literal, $mode:ident $(, $tail:ident $(($max:expr))?)? { $($field:ident : $ty:ty),* $(,)? }
            -> $reply:ty $(=> $backend:ident ( $($barg:ident : $bty:ty),* ) = $driver:ident)?;
    )*) => {
        impl Channel {
            fn dispatch(&mut self, t: &mut dyn Transport, op: Op, header: &RequestHeader) -> Result<(), ChannelEnd> {
                match op {
                    $( Op::$name => self.serve_call::<$name>(t, header), )*
                }
            }
        }
    };
}

vgpu_dataplane::call_table!(dispatch_calls);

impl Channel {
    pub fn s(&self) -> &Session {
        &self.session
    }

    pub fn b(&self) -> &dyn Backend {
        &*self.session.backend
    }

    fn run(&mut self, t: &mut dyn Transport) -> Result<(), ChannelEnd> {
        let mut hdr = [0u8; std::mem::size_of::<RequestHeader>()];
        // Held for the loop, so the per-request path takes no reference count.
        let session = self.session.clone();
        let order = &session.order;
        let not_gated = std::sync::atomic::AtomicU32::new(0);
        let gated = match session.sched.as_deref() {
            Some(sched) => sched.held(),
            None => &not_gated,
        };
        loop {
            t.recv_exact(&mut hdr)?;
            let header: RequestHeader = zerocopy::FromBytes::read_from_bytes(&hdr[..])
                .map_err(|_| ChannelEnd::Malformed("short header".into()))?;
            let op = check_request_header(&header)?;
            self.body.resize(header.body_len as usize, 0);
            t.recv_exact(&mut self.body)?;
            order.wait_turn(header.seq, gated, session.limits.peer_wait);
            if op.is_sync() {
                // A synchronous call may block (a stream synchronize): work other threads submitted after it
                // started need not wait for it to end, natively neither.
                order.advance(header.seq);
                // The channel's queued work is measured while the client waits.
                self.gate.sync_point();
            }
            self.forget_reset_buffers();
            let r = self.dispatch(t, op, &header);
            order.advance(header.seq);
            r?;
            if let Some((lanes, fine)) = self.joined_lanes.take() {
                // The join's reply was the last unstriped frame: the rest of the channel runs striped.
                let mut striped = vgpu_transports::striped::Striped::new(t, lanes)
                    .map_err(|e| ChannelEnd::Transport(vgpu_dataplane::transport::TransportError::Io(e)))?
                    .fine_pieces(fine);
                self.striped = true;
                return self.run(&mut striped);
            }
        }
    }

    /// A context ended (a primary-context reset or last release, `cuCtxDestroy`) and freed the pinned buffers made
    /// while it was current: forget those rather than use or free them again, and the copies waiting in them (the
    /// context's end discards them natively). Buffers of contexts still alive stay, and are freed as usual:
    /// forgetting them too would let a client leak pinned memory past its budget, one reset at a time.
    fn forget_reset_buffers(&mut self) {
        let epoch = self.session.reset_epoch.load(Ordering::Acquire);
        if epoch == self.epoch {
            return;
        }
        let (session, since) = (self.session.clone(), self.epoch);
        let gone = |b: &HostBuffer| session.buffer_gone(b, since);
        let mut released = 0u64;
        self.staging.retain(|b| !gone(b));
        for kept in [&mut self.pool, &mut self.retired] {
            kept.retain(|b| {
                let g = gone(b);
                released += if g { b.len as u64 } else { 0 };
                !g
            });
        }
        // A queued copy's buffer comes from `take_buffer`, made in the context the copy was queued in (its stream's
        // and its event's): that context's end discarded the copy and took buffer and event with it.
        self.pending.retain(|p| {
            let g = gone(&p.buf);
            released += if g { p.len as u64 } else { 0 };
            !g
        });
        self.in_flight.retain(|f| {
            let g = gone(&f.buf);
            released += if g { f.held } else { 0 };
            !g
        });
        self.session.release_host(released);
        self.epoch = epoch;
    }

    /// Decodes the call, receives its tail as the table says, runs its handler, then replies or latches.
    fn serve_call<C: Call>(&mut self, t: &mut dyn Transport, header: &RequestHeader) -> Result<(), ChannelEnd>
    where
        Channel: Serve<C>,
    {
        let call = decode_body::<C>(&self.body)?;
        match C::TAIL {
            Tail::None => {
                if header.tail_len() != 0 {
                    return Err(ChannelEnd::Malformed(format!("unexpected tail on {:?}", C::OP)));
                }
            }
            Tail::Bytes(max) => self.read_tail(t, header, max)?,
            Tail::Streamed => {}
        }
        let mut cx = Cx {
            t,
            header,
            per_thread: header.flags & FLAG_PER_THREAD != 0,
            reply_tail: Vec::new(),
            replied: false,
            keep_latched: false,
        };
        let started = slow_call_threshold().map(|_| std::time::Instant::now());
        let outcome = <Channel as Serve<C>>::serve(self, call, &mut cx)?;
        if let (Some(at), Some(limit)) = (started, slow_call_threshold()) {
            let took = at.elapsed();
            if took >= limit {
                tracing::warn!(op = ?C::OP, ms = took.as_millis() as u64, "a call held its channel this long");
            }
        }
        if C::SYNC && self.latched.is_none() {
            // A collective that ended in error since the last reply (see `lane.rs`).
            let code = self.late.swap(0, Ordering::AcqRel);
            if code != 0 {
                self.latched = Some(CUresult::from_code(code));
            }
        }
        if self.tail.capacity() > TAIL_KEEP {
            self.tail = Vec::new();
        }
        if cx.replied {
            return Ok(());
        }
        let Cx {
            t,
            reply_tail,
            keep_latched,
            ..
        } = cx;
        if keep_latched {
            let latched = self.latched.take();
            let sent = self.finish::<C>(t, header.seq, outcome, &reply_tail);
            self.latched = latched;
            sent
        } else {
            self.finish::<C>(t, header.seq, outcome, &reply_tail)
        }
    }

    /// Receives a tail of at most `max` bytes into `self.tail`, growing the buffer only as bytes arrive.
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
        self.tail.clear();
        while self.tail.len() < len {
            let start = self.tail.len();
            let n = (len - start).min(start.max(TAIL_STEP));
            self.tail.resize(start + n, 0);
            t.recv_exact(&mut self.tail[start..])?;
        }
        Ok(())
    }

    /// The tail as a C string (a symbol name).
    pub fn name_from_tail(&self) -> Result<CString, ChannelEnd> {
        CString::new(self.tail.clone()).map_err(|_| ChannelEnd::Malformed("name contains NUL".into()))
    }

    /// Replies to a synchronous call (after delivering finished async copies), or latches an async call's error.
    pub fn finish<C: Call>(
        &mut self,
        t: &mut dyn Transport,
        seq: u32,
        r: CuResult<C::Reply>,
        tail: &[u8],
    ) -> Result<(), ChannelEnd> {
        if !C::SYNC {
            if let Err(code) = r {
                tracing::debug!(op = ?C::OP, code = code.code(), "asynchronous call failed; latched");
                self.latched.get_or_insert(code);
            }
            return Ok(());
        }
        self.deliver_pending(t, true)?;
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
    /// first, whatever the driver printed (device-side `printf`, emitted at synchronizing calls). `awaited`: the
    /// client is waiting for a reply, so it reads them now (a transport may have it read them in place).
    pub fn deliver_pending(&mut self, t: &mut dyn Transport, awaited: bool) -> Result<(), ChannelEnd> {
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
                        pending_id: p.id.0,
                        len: p.len as u64,
                    };
                    let header = ReplyHeader {
                        len: (std::mem::size_of::<PushHeader>() + p.len) as u32,
                        result: 0,
                        kind: REPLY_KIND_PUSH,
                        seq: 0,
                    };
                    let parts = [header.as_bytes(), push.as_bytes(), &p.buf.as_slice()[..p.len]];
                    let sent = super::copy::send_maybe_awaited(t, &parts, awaited);
                    let _ = self.b().event_destroy(p.event);
                    self.session.release_host(p.len as u64);
                    self.give_back(p.buf);
                    sent?;
                }
                Err(CUDA_ERROR_NOT_READY) => i += 1,
                Err(_) => {
                    // The stream failed (sticky error): the copy will never land; the error reaches the
                    // client through its next synchronizing call.
                    let p = self.pending.swap_remove(i);
                    let _ = self.b().event_destroy(p.event);
                    self.session.release_host(p.len as u64);
                    self.give_back(p.buf);
                }
            }
        }
        Ok(())
    }

    /// The backend stream for client stream `id` (0 on a per-thread entry point is the per-thread stream).
    pub fn stream(&self, id: StreamId, per_thread: bool) -> CuResult<Stream> {
        match id {
            StreamId::NULL if per_thread => Ok(Stream::PER_THREAD),
            id if id.is_builtin() => Ok(Stream(id.0)),
            _ => self
                .s()
                .await_object(|o| o.streams.get(&id).copied())
                .ok_or(CUDA_ERROR_INVALID_HANDLE),
        }
    }

    pub fn event(&self, id: EventId) -> CuResult<Event> {
        self.s()
            .await_object(|o| o.events.get(&id).copied())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    /// A function (or library kernel) by client id, bound on this or (just now) another channel.
    pub fn function(&self, id: FunctionId) -> CuResult<BoundFunction> {
        self.s()
            .await_object(|o| o.functions.get(&id).cloned())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    /// The device (server ordinal) of this thread's current context, if one is current.
    pub fn current_device(&self) -> Option<i32> {
        self.s().objects().context_device.get(&self.current).copied()
    }

    /// [addr, addr+len) must lie inside ranges the session owns: one, or several back to back.
    pub fn check_range(&self, addr: DevicePtr, len: u64) -> CuResult<()> {
        vgpu_dataplane::ranges::covered(&self.s().objects().ranges, addr.0, len)
    }

    /// A pinned buffer of at least `len` bytes, reusing a kept one when it fits. Only one made in the current
    /// context fits: a copy queued in this context then never uses memory that another context's end could free
    /// under it while it waits.
    pub fn take_buffer(&mut self, len: usize) -> CuResult<HostBuffer> {
        self.reclaim_in_flight();
        let ctx = self.b().current_context().0;
        let fits = |b: &HostBuffer| b.len >= len && b.len <= len.max(4096) * 2 && b.ctx == ctx;
        let kept = match self.pool.iter().position(fits) {
            Some(i) => Some(self.pool.swap_remove(i)),
            None => self.retired.iter().position(fits).map(|i| self.retired.swap_remove(i)),
        };
        if let Some(buf) = kept {
            // The caller holds the budget for its own use of it now.
            self.session.release_host(buf.len as u64);
            return Ok(buf);
        }
        self.session.alloc_pinned(len.max(4096))
    }

    /// Keeps a buffer for reuse, within the pool's bounds and the session's host budget (kept buffers are pinned
    /// memory held for the session), or frees it.
    pub fn give_back(&mut self, buf: HostBuffer) {
        if super::lane::on_lane() {
            // A lane never frees during a collective: cuMemFreeHost may wait for the device, the app's stream
            // included, which waits for this very lane. Its buffers go back to its kit, freed when the lane ends.
            self.session.hold_host_anyway(buf.len as u64);
            self.pool.push(buf);
            return;
        }
        let pooled: usize = self.pool.iter().map(|b| b.len).sum();
        if self.pool.len() < POOL_KEEP && pooled + buf.len <= POOL_KEEP_BYTES && self.session.hold_host(buf.len as u64)
        {
            self.pool.push(buf);
            return;
        }
        let retired: usize = self.retired.iter().map(|b| b.len).sum();
        if retired + buf.len <= RETIRED_KEEP_BYTES && self.session.hold_host(buf.len as u64) {
            self.retired.push(buf);
        } else {
            self.b().host_free(buf);
        }
    }

    /// Host bytes of the buffers kept for reuse or waiting to be freed (held against the session's budget).
    fn kept_bytes(&self) -> u64 {
        self.pool.iter().chain(&self.retired).map(|b| b.len as u64).sum()
    }

    /// Frees kept buffers and gives their bytes back to the session's budget.
    fn free_kept_buffers(&mut self, bufs: Vec<HostBuffer>) {
        for buf in bufs {
            self.session.release_host(buf.len as u64);
            self.b().host_free(buf);
        }
    }

    /// Frees the retired buffers: called where the context is idle anyway (after `cuCtxSynchronize`).
    pub fn free_retired(&mut self) {
        let retired = std::mem::take(&mut self.retired);
        self.free_kept_buffers(retired);
    }

    /// Frees every kept buffer (the session's host budget is short: they make room).
    fn free_kept(&mut self) {
        let mut kept = std::mem::take(&mut self.pool);
        kept.append(&mut self.retired);
        self.free_kept_buffers(kept);
    }

    fn reclaim_in_flight(&mut self) {
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.b().event_query(self.in_flight[i].event) != Err(CUDA_ERROR_NOT_READY) {
                let f = self.in_flight.swap_remove(i);
                let _ = self.b().event_destroy(f.event);
                self.session.release_host(f.held);
                self.give_back(f.buf);
            } else {
                i += 1;
            }
        }
    }

    /// The two staging buffers pipelined copies alternate between, made in the current context: staging of another
    /// context could be freed under a copy by that context's end on another thread (a primary reset while this
    /// thread copies in a context of the app's own). Another context's pair is kept for reuse, not freed.
    pub fn ensure_staging(&mut self) -> CuResult<()> {
        let ctx = self.b().current_context().0;
        if self.staging.iter().any(|b| b.ctx != ctx) {
            for b in std::mem::take(&mut self.staging) {
                if b.ctx == ctx {
                    self.staging.push(b);
                } else {
                    self.give_back(b);
                }
            }
        }
        while self.staging.len() < 2 {
            let kept = self.pool.iter().position(|b| b.len == CHUNK && b.ctx == ctx);
            let b = match kept {
                Some(i) => {
                    let b = self.pool.swap_remove(i);
                    self.session.release_host(b.len as u64);
                    b
                }
                None => self.session.alloc_pinned(CHUNK)?,
            };
            self.staging.push(b);
        }
        Ok(())
    }

    /// An event recorded on `stream` now, marking when the work queued before it is done.
    pub fn mark(&self, stream: Stream) -> CuResult<Event> {
        let ev = self
            .b()
            .event_create(vgpu_cuda_sys::driver::CUevent_flags::CU_EVENT_DISABLE_TIMING.0)?;
        self.b()
            .event_record(ev, stream)
            .inspect_err(|_| {
                let _ = self.b().event_destroy(ev);
            })
            .map(|_| ev)
    }

    /// Drains `len` bytes of a tail the call could not use, keeping the stream in frame.
    pub fn discard(&mut self, t: &mut dyn Transport, mut len: usize) -> Result<(), ChannelEnd> {
        let mut scratch = vec![0u8; len.min(1 << 20)];
        while len > 0 {
            let n = len.min(scratch.len());
            t.recv_exact(&mut scratch[..n])?;
            len -= n;
        }
        Ok(())
    }

    /// Takes `n` bytes of the session's host budget for a queued copy. Past the budget, this channel's own
    /// queued copies are waited for and delivered first; `false`: still no room (other channels hold it), and
    /// the caller does its copy synchronously instead, holding nothing past the call.
    pub fn hold_for_queue(&mut self, t: &mut dyn Transport, n: u64) -> Result<bool, ChannelEnd> {
        if self.session.hold_host(n) {
            return Ok(true);
        }
        self.drain_queued(t)?;
        if self.session.hold_host(n) {
            return Ok(true);
        }
        self.free_kept();
        Ok(self.session.hold_host(n))
    }

    /// Waits for this channel's queued copies, returns their buffers, and pushes the finished device-to-host
    /// ones to the client now (it lands them at its next wait, as it would have).
    fn drain_queued(&mut self, t: &mut dyn Transport) -> Result<(), ChannelEnd> {
        for f in std::mem::take(&mut self.in_flight) {
            let _ = self.b().event_synchronize(f.event);
            let _ = self.b().event_destroy(f.event);
            self.session.release_host(f.held);
            self.give_back(f.buf);
        }
        for p in &self.pending {
            let _ = self.b().event_synchronize(p.event);
        }
        self.deliver_pending(t, false)
    }

    /// Returns buffers to the backend when the channel ends (the worker's exit frees the rest).
    fn release(&mut self) {
        // A context that ended at the channel's last request took buffers the channel has not looked at since.
        self.forget_reset_buffers();
        let b = self.session.backend.clone();
        self.session.release_host(self.kept_bytes());
        for buf in self
            .staging
            .drain(..)
            .chain(self.pool.drain(..))
            .chain(self.retired.drain(..))
        {
            b.host_free(buf);
        }
        for p in self.pending.drain(..) {
            let _ = b.event_synchronize(p.event);
            let _ = b.event_destroy(p.event);
            self.session.release_host(p.len as u64);
            b.host_free(p.buf);
        }
        for f in self.in_flight.drain(..) {
            let _ = b.event_synchronize(f.event);
            let _ = b.event_destroy(f.event);
            self.session.release_host(f.held);
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

/// `VGPU_SLOW_CALL_MS`: calls that hold their channel at least this long are logged with their name (off when
/// unset): where a program stalls, or another channel waits for this one's requests.
fn slow_call_threshold() -> Option<std::time::Duration> {
    static LIMIT: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let ms = std::env::var("VGPU_SLOW_CALL_MS").ok()?.trim().parse::<u64>().ok()?;
        Some(std::time::Duration::from_millis(ms))
    })
}
