//! The worker's side of the scheduler: a gate each channel thread passes before it submits GPU work (a launch, a
//! memset, a device-to-device copy), batches of that work measured with events, and a monitor thread per session
//! that reads the events back (never blocking a submission) and charges the session.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use vgpu_dataplane::cuerr::CUDA_ERROR_NOT_READY;

use super::policy::{self, Admit, Params};
use super::table::{GpuTable, Region, MODE_OFF};
use crate::backend::{Backend, Context, Event, Stream};
use crate::sys::monotonic_ns;

/// What one gated operation is, for its cost estimate (in units of the session's measured cost per launch).
#[derive(Debug, Clone, Copy)]
pub enum Work {
    Launch,
    /// A memset or device-to-device copy of this many bytes (a unit per MiB, and one for the operation).
    Bytes(u64),
}

impl Work {
    fn units(self) -> u64 {
        match self {
            Work::Launch => 1,
            Work::Bytes(n) => 1 + (n >> 20).min(1 << 20),
        }
    }
}

/// A batch closes once it holds this many operations (its estimate reaching a quarter quantum closes it too).
const BATCH_OPS: u32 = 1024;
/// The monitor closes a batch left open this long (its channel went quiet without synchronising).
const STALE_NS: u64 = 2_000_000;
/// How often the monitor looks at batches in flight.
const POLL: Duration = Duration::from_micros(200);
/// How often it looks when nothing is in flight (to settle idle sessions).
const IDLE_POLL: Duration = Duration::from_millis(5);
/// Longest a gated thread sleeps before it looks again on its own.
const WAIT_SLICE_NS: u64 = 1_000_000;
/// Starting estimate of one launch's GPU time, before anything was measured.
const FIRST_UNIT_NS: u64 = 20_000;

/// Streams 0 and 1 (NULL and CU_STREAM_LEGACY) synchronise with every blocking stream: a batch never mixes them with
/// other streams, so that its end event sits right after the legacy stream's work and adds no ordering the app did
/// not ask for.
fn legacy(stream: u64) -> bool {
    stream <= 1
}

/// One stream's part of a batch: the event recorded before its first operation and the one after its last.
struct Mark {
    stream: u64,
    start: u64,
    end: u64,
}

struct Batch {
    /// Index of the GPU's table (the server's device ordinal) and the session's slot there.
    gpu: usize,
    slot: usize,
    ctx: u64,
    marks: Vec<Mark>,
    est: u64,
    units: u64,
    ops: u32,
    opened: u64,
    /// An event could not be made or recorded: the batch is charged by its estimate.
    unmeasured: bool,
}

/// A channel's open batch and the part of its session's booking it has not used yet; shared with the monitor,
/// which closes a batch left open and returns the booking of a channel gone quiet.
#[derive(Default)]
struct Open {
    batch: Option<Batch>,
    budget: u64,
    /// (gpu, slot) the budget was booked on.
    budget_on: (usize, usize),
}

struct Inner {
    closed: VecDeque<Batch>,
    /// Free timing events by context, with the GPU (table index) the context is on.
    events: HashMap<u64, (usize, Vec<u64>)>,
    channels: Vec<Weak<Mutex<Open>>>,
    monitor_started: bool,
}

/// One session's view of the scheduler in its worker process.
pub struct SessionSched {
    region: &'static Region,
    backend: Arc<dyn Backend>,
    /// Slot on each server device (by ordinal) the session uses; `None`: that GPU is not scheduled for it.
    slots: Vec<Option<usize>>,
    /// The one server device the session sees, when it sees one (no per-operation device lookup then).
    only_device: Option<usize>,
    /// Measured GPU nanoseconds per unit of work (`Work::units`), a moving average.
    unit_ns: AtomicU64,
    /// Channel threads blocked at the gate: the session's submission order must not give up on them.
    held: AtomicU32,
    inner: Mutex<Inner>,
    wake_monitor: Condvar,
}

impl SessionSched {
    /// `slots[d]`: the session's slot on server device `d`; `visible`: the server devices it sees.
    pub fn new(
        region: &'static Region,
        backend: Arc<dyn Backend>,
        slots: Vec<Option<usize>>,
        visible: &[usize],
    ) -> Arc<SessionSched> {
        Arc::new(SessionSched {
            region,
            backend,
            only_device: (visible.len() == 1).then(|| visible[0]),
            slots,
            unit_ns: AtomicU64::new(FIRST_UNIT_NS),
            held: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                closed: VecDeque::new(),
                events: HashMap::new(),
                channels: Vec::new(),
                monitor_started: false,
            }),
            wake_monitor: Condvar::new(),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn params(&self) -> Params {
        self.region.params()
    }

    fn table(&self, gpu: usize) -> &'static GpuTable {
        &self.region.gpus[gpu]
    }

    /// Number of the session's channel threads waiting at the gate.
    pub fn held(&self) -> &AtomicU32 {
        &self.held
    }

    /// GPU nanoseconds charged to the session on server device `gpu` (what metering bills).
    pub fn charged_ns(&self, gpu: usize) -> u64 {
        match self.slots.get(gpu).copied().flatten() {
            Some(slot) => self.table(gpu).slots[slot].charged.load(Ordering::Acquire),
            None => 0,
        }
    }

    /// A gate for a new channel of this session.
    pub fn gate(self: &Arc<Self>) -> ChannelGate {
        let open = Arc::new(Mutex::new(Open::default()));
        self.inner().channels.push(Arc::downgrade(&open));
        ChannelGate {
            sched: Some(self.clone()),
            open,
        }
    }

    /// The GPU (table index) and slot the calling thread's work goes to, if it is scheduled.
    fn target(&self) -> Option<(usize, usize)> {
        let gpu = match self.only_device {
            Some(d) => d,
            None => usize::try_from(self.backend.context_device()?).ok()?,
        };
        let slot = self.slots.get(gpu).copied().flatten()?;
        (self.table(gpu).mode.load(Ordering::Relaxed) != MODE_OFF).then_some((gpu, slot))
    }

    fn event(&self, inner: &mut Inner, ctx: u64) -> Option<u64> {
        if let Some(e) = inner.events.get_mut(&ctx).and_then(|(_, pool)| pool.pop()) {
            return Some(e);
        }
        self.backend.event_create(0).ok().map(|e| e.0)
    }

    /// Records the end events of a batch (on the calling thread, whose current context must be the batch's) and
    /// queues it for the monitor.
    fn close(self: &Arc<Self>, mut b: Batch) {
        let mut inner = self.inner();
        for i in 0..b.marks.len() {
            match self.event(&mut inner, b.ctx) {
                Some(e) if self.backend.event_record(Event(e), Stream(b.marks[i].stream)).is_ok() => b.marks[i].end = e,
                Some(e) => {
                    give_back(&mut inner, b.ctx, b.gpu, e);
                    b.unmeasured = true;
                }
                None => b.unmeasured = true,
            }
        }
        inner.closed.push_back(b);
        if !inner.monitor_started {
            inner.monitor_started = true;
            let me = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("vgpu-sched".into())
                .spawn(move || monitor(me));
            if let Err(e) = spawned {
                tracing::warn!("cannot start the scheduler's monitor thread: {e}");
                inner.monitor_started = false;
            }
        }
        drop(inner);
        self.wake_monitor.notify_one();
    }

    /// Before a context goes away (`cuCtxDestroy`): its events die with it, so batches still measured by them are
    /// charged by their estimate and forgotten.
    pub fn forget_context(&self, ctx: u64) {
        self.forget(|b| b.ctx == ctx, Some(ctx), None);
    }

    /// Before a device's primary context is reset or released: the same for everything on that device.
    pub fn forget_device(&self, gpu: usize) {
        self.forget(|b| b.gpu == gpu, None, Some(gpu));
    }

    fn forget(&self, gone: impl Fn(&Batch) -> bool, ctx: Option<u64>, gone_gpu: Option<usize>) {
        let p = self.params();
        let now = monotonic_ns();
        // Channels first (each under its own lock, never inside the session's), then the queue.
        let channels: Vec<Arc<Mutex<Open>>> = self.inner().channels.iter().filter_map(Weak::upgrade).collect();
        let mut dropped: Vec<Batch> = Vec::new();
        for ch in channels {
            let mut open = ch.lock().unwrap_or_else(|p| p.into_inner());
            if open.batch.as_ref().is_some_and(&gone) {
                dropped.extend(open.batch.take());
            }
        }
        let mut inner = self.inner();
        let mut i = 0;
        while i < inner.closed.len() {
            if gone(&inner.closed[i]) {
                if let Some(b) = inner.closed.remove(i) {
                    dropped.push(b);
                }
            } else {
                i += 1;
            }
        }
        // Their events died with the context (never destroy them again).
        inner
            .events
            .retain(|&c, (g, _)| !(ctx == Some(c) || (ctx.is_none() && gone_gpu == Some(*g))));
        drop(inner);
        for b in dropped {
            policy::complete(self.table(b.gpu), b.slot, b.est, None, now, &p);
        }
    }
}

/// A channel's gate: `submit` before each gated operation, `sync_point` before a synchronous call.
#[derive(Default)]
pub struct ChannelGate {
    sched: Option<Arc<SessionSched>>,
    open: Arc<Mutex<Open>>,
}

impl ChannelGate {
    fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the session may put `work` on `stream` (the calling thread's current context), then books it in
    /// the channel's open batch. Returns at once for an unscheduled session or GPU.
    pub fn submit(&self, stream: u64, work: Work) {
        let Some(s) = self.sched.as_ref() else { return };
        let Some((gpu, slot)) = s.target() else { return };
        let units = work.units();
        let est = units.saturating_mul(s.unit_ns.load(Ordering::Relaxed));
        let ctx = s.backend.current_context().0;
        let p = s.params();
        let mut open = self.open();
        // A full batch closes here, at the next operation, not when it filled: the gate runs before its operation
        // reaches the backend, so only now is the batch's last operation queued ahead of its end events.
        let switch = open.batch.as_ref().is_some_and(|b| {
            b.gpu != gpu
                || b.ctx != ctx
                || b.marks.iter().any(|m| legacy(m.stream) != legacy(stream))
                || b.est >= p.quantum_ns / 4
                || b.ops >= BATCH_OPS
        });
        if switch {
            if let Some(b) = open.batch.take() {
                drop(open);
                self.close_on(s, b);
                open = self.open();
            }
        }
        if open.budget_on != (gpu, slot) && open.budget > 0 {
            let (g, sl) = open.budget_on;
            policy::unreserve(s.table(g), sl, std::mem::take(&mut open.budget));
        }
        if open.budget < est {
            drop(open);
            self.acquire(s, gpu, slot, est, &p);
            open = self.open();
        }
        open.budget = open.budget.saturating_sub(est);
        if open.batch.is_none() {
            let now = monotonic_ns();
            policy::opened(s.table(gpu), slot, now);
            open.batch = Some(Batch {
                gpu,
                slot,
                ctx,
                marks: Vec::new(),
                est: 0,
                units: 0,
                ops: 0,
                opened: now,
                unmeasured: false,
            });
        }
        let Some(b) = open.batch.as_mut() else { return };
        if !b.marks.iter().any(|m| m.stream == stream) {
            let start = {
                let mut inner = s.inner();
                s.event(&mut inner, ctx)
            };
            match start {
                Some(e) if s.backend.event_record(Event(e), Stream(stream)).is_ok() => b.marks.push(Mark {
                    stream,
                    start: e,
                    end: 0,
                }),
                Some(e) => {
                    give_back(&mut s.inner(), ctx, gpu, e);
                    b.unmeasured = true;
                }
                None => b.unmeasured = true,
            }
        }
        b.est = b.est.saturating_add(est);
        b.units = b.units.saturating_add(units);
        b.ops += 1;
    }

    /// Books another chunk of work with the policy, waiting while it says no.
    fn acquire(&self, s: &Arc<SessionSched>, gpu: usize, slot: usize, est: u64, p: &Params) {
        let t = s.table(gpu);
        let want = (p.quantum_ns / 8).max(est);
        let mut waiting = false;
        loop {
            let seen = t.wake.load(Ordering::Acquire);
            let now = monotonic_ns();
            match policy::admit(t, slot, want, now, p) {
                Admit::Go => {
                    let mut open = self.open();
                    open.budget = open.budget.saturating_add(want);
                    open.budget_on = (gpu, slot);
                    break;
                }
                Admit::Wait { until } => {
                    if !waiting {
                        waiting = true;
                        // What this channel queued must reach the monitor, and what it booked is released, before
                        // it sleeps.
                        let (batch, budget) = {
                            let mut open = self.open();
                            (open.batch.take(), std::mem::take(&mut open.budget))
                        };
                        if let Some(b) = batch {
                            self.close_on(s, b);
                        }
                        if budget > 0 {
                            policy::unreserve(t, slot, budget);
                        }
                        t.slots[slot].waiting.fetch_add(1, Ordering::AcqRel);
                        s.held.fetch_add(1, Ordering::AcqRel);
                        continue;
                    }
                    let nap = until.map_or(WAIT_SLICE_NS, |u| u.saturating_sub(now).clamp(1_000, WAIT_SLICE_NS));
                    t.sleepers.fetch_add(1, Ordering::AcqRel);
                    crate::sys::futex_wait(&t.wake, seen, Duration::from_nanos(nap));
                    t.sleepers.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        if waiting {
            t.slots[slot].waiting.fetch_sub(1, Ordering::AcqRel);
            s.held.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn close_on(&self, s: &Arc<SessionSched>, b: Batch) {
        s.close(b);
    }

    /// Before a synchronous call: the channel's work so far is closed into a batch (so it is measured while the
    /// client waits) and its unused booking is returned.
    pub fn sync_point(&self) {
        let Some(s) = self.sched.as_ref() else { return };
        let (batch, budget, (gpu, slot)) = {
            let mut open = self.open();
            (open.batch.take(), std::mem::take(&mut open.budget), open.budget_on)
        };
        if let Some(b) = batch {
            s.close(b);
        }
        if budget > 0 {
            policy::unreserve(s.table(gpu), slot, budget);
        }
    }
}

impl Drop for ChannelGate {
    fn drop(&mut self) {
        self.sync_point();
    }
}

/// The monitor thread of one session: reads back the events of closed batches and charges them, closes batches
/// left open, and lets the policy settle the session's state on each GPU.
fn monitor(me: Weak<SessionSched>) {
    loop {
        let Some(s) = me.upgrade() else { return };
        {
            let inner = s.inner();
            let pause = if inner.closed.is_empty() { IDLE_POLL } else { POLL };
            let (inner, _) = s
                .wake_monitor
                .wait_timeout(inner, pause)
                .unwrap_or_else(|p| p.into_inner());
            drop(inner);
        }
        monitor_round(&s);
    }
}

fn monitor_round(s: &Arc<SessionSched>) {
    let p = s.params();
    let now = monotonic_ns();
    // Batches left open by a channel gone quiet, and bookings it no longer uses.
    let channels: Vec<Arc<Mutex<Open>>> = {
        let mut inner = s.inner();
        inner.channels.retain(|w| w.strong_count() > 0);
        inner.channels.iter().filter_map(Weak::upgrade).collect()
    };
    for ch in &channels {
        let Ok(mut open) = ch.try_lock() else { continue };
        if open
            .batch
            .as_ref()
            .is_some_and(|b| now.saturating_sub(b.opened) > STALE_NS)
        {
            let (batch, budget, (gpu, slot)) = (open.batch.take(), std::mem::take(&mut open.budget), open.budget_on);
            drop(open);
            if let Some(b) = batch {
                // Events are recorded in the batch's context, made current on this thread.
                if s.backend.ctx_set_current(Context(b.ctx)).is_ok() {
                    s.close(b);
                } else {
                    policy::complete(s.table(b.gpu), b.slot, b.est, None, now, &p);
                }
            }
            if budget > 0 {
                policy::unreserve(s.table(gpu), slot, budget);
            }
        } else if open.batch.is_none() && open.budget > 0 {
            let (budget, (gpu, slot)) = (std::mem::take(&mut open.budget), open.budget_on);
            drop(open);
            policy::unreserve(s.table(gpu), slot, budget);
        }
    }
    // Finished batches, in any order (different streams finish out of order).
    let mut inner = s.inner();
    let mut i = 0;
    while i < inner.closed.len() {
        let b = &inner.closed[i];
        // A context that cannot be made current is gone (its events with it): the batch is charged its estimate.
        let gone = !b.unmeasured && s.backend.ctx_set_current(Context(b.ctx)).is_err();
        let done = b.unmeasured
            || gone
            || b.marks
                .iter()
                .all(|m| s.backend.event_query(Event(m.end)) != Err(CUDA_ERROR_NOT_READY));
        if !done {
            i += 1;
            continue;
        }
        let Some(b) = inner.closed.remove(i) else { break };
        if gone {
            policy::complete(s.table(b.gpu), b.slot, b.est, None, monotonic_ns(), &p);
            inner.events.remove(&b.ctx);
            continue;
        }
        let span = if b.unmeasured {
            None
        } else {
            span_of(s.backend.as_ref(), &b)
        };
        for m in &b.marks {
            give_back(&mut inner, b.ctx, b.gpu, m.start);
            if m.end != 0 {
                give_back(&mut inner, b.ctx, b.gpu, m.end);
            }
        }
        let charge = policy::complete(s.table(b.gpu), b.slot, b.est, span, monotonic_ns(), &p);
        if b.units > 0 && span.is_some() {
            let per_unit = charge / b.units;
            let old = s.unit_ns.load(Ordering::Relaxed);
            s.unit_ns
                .store(((old * 3 + per_unit) / 4).clamp(500, 10_000_000), Ordering::Relaxed);
        }
    }
    // Each GPU's state: in flight while a batch is open or unread; idle once nothing is booked either.
    let now = monotonic_ns();
    for (gpu, slot) in s.slots.iter().enumerate() {
        let Some(slot) = *slot else { continue };
        let unread = inner.closed.iter().any(|b| b.gpu == gpu);
        let (mut open_here, mut booked) = (false, false);
        for ch in &channels {
            if let Ok(open) = ch.try_lock() {
                open_here |= open.batch.as_ref().is_some_and(|b| b.gpu == gpu);
                booked |= open.budget > 0 && open.budget_on.0 == gpu;
            } else {
                open_here = true;
                booked = true;
            }
        }
        policy::settle(s.table(gpu), slot, !unread && !open_here, !booked, now, &p);
    }
}

/// Returns a timing event to its context's pool.
fn give_back(inner: &mut Inner, ctx: u64, gpu: usize, event: u64) {
    inner
        .events
        .entry(ctx)
        .or_insert_with(|| (gpu, Vec::new()))
        .1
        .push(event);
}

/// The GPU time a batch covered: from its first start event to its last end event across its streams (events of
/// one context share a clock), at least the longest single stream's span.
fn span_of(b_end: &dyn Backend, b: &Batch) -> Option<u64> {
    let first = b.marks.first()?.start;
    let mut span_ms = 0f32;
    for m in &b.marks {
        let own = b_end.event_elapsed(Event(m.start), Event(m.end)).ok()?;
        let from_first = b_end.event_elapsed(Event(first), Event(m.end)).unwrap_or(own);
        span_ms = span_ms.max(own).max(from_first);
    }
    Some((f64::from(span_ms.max(0.0)) * 1e6) as u64)
}

/// Opens the scheduler region a worker was given (`VGPU_WORKER_SCHED_FD`), for the life of the process.
pub fn attach_region(fd: &std::os::fd::OwnedFd) -> Result<&'static Region, String> {
    let map = crate::sys::SharedRegion::map(fd, std::mem::size_of::<Region>(), 0)
        .map_err(|e| format!("cannot map the scheduler's table: {e}"))?;
    let map: &'static crate::sys::SharedRegion = Box::leak(Box::new(map));
    map.sched_region()
        .ok_or_else(|| "the scheduler's table is malformed".to_string())
}
