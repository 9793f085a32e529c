//! The scheduler's state shared by every worker process of one server: one table per GPU with a slot per session,
//! in a memfd the server creates at start and every worker maps. Only atomics live here (any bit pattern is valid).

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Most GPUs one server schedules (`Handoff` makes at most 16 visible to a session as well).
pub const MAX_GPUS: usize = 16;
/// Most sessions scheduled on one GPU at once; a session past it runs unscheduled (and says so in the log).
pub const MAX_SLOTS: usize = 64;
/// `Region::magic`: "vGPUsch1".
pub const MAGIC: u64 = 0x3168_6373_5550_4776;

/// Priority classes of a ticket's GPU (`priority`): order matters (lower runs first).
pub const CLASS_GUARANTEED: u32 = 0;
pub const CLASS_BURST: u32 = 1;
pub const CLASS_PREEMPTIBLE: u32 = 2;

/// Slot `flags`: never more than the share, even when the GPU is otherwise idle.
pub const FLAG_CAP: u32 = 1;

/// `Slot::demand`: the session has no work waiting or in flight.
pub const DEMAND_IDLE: u32 = 0;
/// It has work waiting at its gate or in flight: it takes part in fair sharing.
pub const DEMAND_BACKLOGGED: u32 = 1;
/// It has work waiting but may not run for a reason of its own (its cap, or a higher class backlogged): it holds
/// nobody else back.
pub const DEMAND_HELD: u32 = 2;

/// `GpuTable::mode`: how the GPU is shared.
pub const MODE_OFF: u32 = 0;
pub const MODE_TIME_SLICED: u32 = 1;
pub const MODE_MPS: u32 = 2;

/// One session on one GPU. The server writes the configuration (`in_use` last) before handing the session to its
/// worker and clears the slot after the worker exits; the worker writes the rest.
#[repr(C, align(128))]
#[derive(Default)]
pub struct Slot {
    /// 1 while a session owns the slot.
    pub in_use: AtomicU32,
    pub class: AtomicU32,
    /// Compute share in millionths, 1000..=1_000_000 (a keyless session: 1_000_000, so equal shares).
    pub share_ppm: AtomicU32,
    pub flags: AtomicU32,
    /// SM limit under MPS (percent, 100 = none), for the log and for charging.
    pub sm_percent: AtomicU32,
    pub demand: AtomicU32,
    /// Channel threads of the session blocked at its gate.
    pub waiting: AtomicU32,
    /// 1 while the slot is counted in the GPU's processor-sharing clock (`GpuTable::ps_sessions`); changed only
    /// under the table's lock.
    pub in_flight: AtomicU32,
    /// Virtual time: GPU nanoseconds charged ÷ share (scaled by 1e6 / share_ppm).
    pub vtime: AtomicU64,
    /// Estimated GPU nanoseconds admitted but not yet charged.
    pub inflight_est: AtomicU64,
    /// GPU nanoseconds charged in total (what metering bills as delivered GPU time).
    pub charged: AtomicU64,
    /// GPU nanoseconds the session's batches spanned on the GPU's clock (events), in total.
    pub spanned: AtomicU64,
    /// Processor-sharing time accrued while in flight and not yet matched by a measured batch (nanoseconds).
    pub ps_credit: AtomicU64,
    /// The table's processor-sharing clock when `ps_credit` was last accrued.
    pub ps_mark: AtomicU64,
    /// Cap: GPU nanoseconds the session may still use (refilled at its share of wall time), and when refilled.
    pub tokens: AtomicI64,
    pub tokens_at: AtomicU64,
    /// Host monotonic nanoseconds of the session's last admitted submission.
    pub last_active: AtomicU64,
    /// Part of the GPU's preemptible budget (`GpuTable::preempt_inflight`) this session holds.
    pub preempt_held: AtomicU64,
    /// Measured GPU time not yet charged because the processor-sharing credit fell short (at most one quantum).
    pub debt: AtomicU64,
    /// 1 after the fair-share rule held the session back, until it is admitted again (see `policy::admit`).
    pub lagging: AtomicU32,
}

/// One GPU's scheduler state.
#[repr(C, align(128))]
pub struct GpuTable {
    /// `MODE_*`: written by the server at start.
    pub mode: AtomicU32,
    /// Spin lock of the processor-sharing clock (`ps_*`) and of `Slot::in_flight`; holds no system call.
    pub lock: AtomicU32,
    /// Futex word bumped whenever a waiting session may now go ahead.
    pub wake: AtomicU32,
    /// Threads blocked on `wake` (a wake costs a system call only when someone sleeps).
    pub sleepers: AtomicU32,
    /// Sessions with work in flight: the processor-sharing clock advances at 1 ÷ this rate.
    pub ps_sessions: AtomicU32,
    pub _pad: AtomicU32,
    /// Processor-sharing clock: the GPU time each in-flight session would have had on a GPU shared equally between
    /// those in flight (nanoseconds), and the host monotonic time it was last advanced.
    pub ps_clock: AtomicU64,
    pub ps_at: AtomicU64,
    /// Estimated preemptible work in flight (nanoseconds), bounded by one quantum while a higher class is present.
    pub preempt_inflight: AtomicU64,
    /// The lowest virtual time seen among backlogged sessions, per tier (0: guaranteed and burst, 1: preemptible):
    /// a session that returns from idle starts no lower (it cannot hoard credit while away).
    pub vfloor: [AtomicU64; 2],
    /// The emulated backend's device timeline (host monotonic ns when the simulated GPU is next free), so the
    /// simulated kernels of every session on this GPU queue on one device as real ones do.
    pub emulated_busy_until: AtomicU64,
    pub slots: [Slot; MAX_SLOTS],
}

/// Scheduler settings the server writes once (all workers read them from here, so they agree).
#[repr(C)]
#[derive(Default)]
pub struct Settings {
    /// Quantum in nanoseconds: how far ahead of its fair share a session may run, and how much work it may keep
    /// queued on the GPU while others wait.
    pub quantum_ns: AtomicU64,
    /// How long a session whose work drained still counts as backlogged (a synchronise-and-resubmit gap does not
    /// make it forget its place, nor let lower classes in).
    pub grace_ns: AtomicU64,
}

/// The whole shared region.
#[repr(C)]
pub struct Region {
    pub magic: AtomicU64,
    pub settings: Settings,
    pub gpus: [GpuTable; MAX_GPUS],
}

impl Slot {
    pub fn share_ppm(&self) -> u64 {
        u64::from(self.share_ppm.load(Ordering::Relaxed).clamp(1000, 1_000_000))
    }
    pub fn class(&self) -> u32 {
        self.class.load(Ordering::Relaxed).min(CLASS_PREEMPTIBLE)
    }
    pub fn capped(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & FLAG_CAP != 0
    }
    pub fn tier(&self) -> usize {
        usize::from(self.class() == CLASS_PREEMPTIBLE)
    }
    /// GPU nanoseconds expressed in this slot's virtual time.
    pub fn virtual_of(&self, gpu_ns: u64) -> u64 {
        let v = u128::from(gpu_ns) * 1_000_000 / u128::from(self.share_ppm());
        u64::try_from(v).unwrap_or(u64::MAX)
    }
    /// Virtual time including processor-sharing time not yet matched by a measurement: a session whose work is
    /// stuck on the GPU (a kernel that never ends) keeps advancing, so it cannot hold everyone else back.
    pub fn effective_vtime(&self) -> u64 {
        self.vtime
            .load(Ordering::Acquire)
            .saturating_add(self.virtual_of(self.ps_credit.load(Ordering::Relaxed)))
    }
}

/// What a session asks of one GPU, decided by the server from its ticket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotConfig {
    pub class: u32,
    /// Fraction of the GPU in (0, 1].
    pub share: f64,
    pub cap: bool,
    /// SM limit under MPS in percent (100: none).
    pub sm_percent: u32,
}

impl Default for SlotConfig {
    fn default() -> Self {
        SlotConfig {
            class: CLASS_BURST,
            share: 1.0,
            cap: false,
            sm_percent: 100,
        }
    }
}

impl SlotConfig {
    /// The class named by a ticket's `priority` (empty: burst, the default plan).
    pub fn parse_class(priority: &str) -> Result<u32, String> {
        match priority {
            "guaranteed" => Ok(CLASS_GUARANTEED),
            "" | "burst" => Ok(CLASS_BURST),
            "preemptible" | "spot" => Ok(CLASS_PREEMPTIBLE),
            other => Err(format!(
                "unknown priority class '{other}': use guaranteed, burst or preemptible"
            )),
        }
    }
    pub fn class_name(class: u32) -> &'static str {
        match class {
            CLASS_GUARANTEED => "guaranteed",
            CLASS_PREEMPTIBLE => "preemptible",
            _ => "burst",
        }
    }
}

impl GpuTable {
    /// Takes a free slot for a session and writes its configuration; `None` when all are taken.
    pub fn claim(&self, cfg: &SlotConfig, now: u64, quantum_ns: u64) -> Option<usize> {
        for (i, s) in self.slots.iter().enumerate() {
            if s.in_use
                .compare_exchange(0, 2, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // 2 = being written: no worker reads a slot before the server hands it over, and scans skip it.
            let share = if cfg.share.is_finite() {
                cfg.share.clamp(0.001, 1.0)
            } else {
                1.0
            };
            s.class.store(cfg.class.min(CLASS_PREEMPTIBLE), Ordering::Relaxed);
            s.share_ppm.store((share * 1e6).round() as u32, Ordering::Relaxed);
            s.flags.store(if cfg.cap { FLAG_CAP } else { 0 }, Ordering::Relaxed);
            s.sm_percent.store(cfg.sm_percent.clamp(1, 100), Ordering::Relaxed);
            s.demand.store(DEMAND_IDLE, Ordering::Relaxed);
            s.waiting.store(0, Ordering::Relaxed);
            s.in_flight.store(0, Ordering::Relaxed);
            s.inflight_est.store(0, Ordering::Relaxed);
            s.charged.store(0, Ordering::Relaxed);
            s.spanned.store(0, Ordering::Relaxed);
            s.ps_credit.store(0, Ordering::Relaxed);
            s.ps_mark.store(0, Ordering::Relaxed);
            s.preempt_held.store(0, Ordering::Relaxed);
            s.lagging.store(0, Ordering::Relaxed);
            s.debt.store(0, Ordering::Relaxed);
            // A new session starts at the floor of its tier: level with those already sharing the GPU.
            let floor = self.vfloor[usize::from(cfg.class >= CLASS_PREEMPTIBLE)].load(Ordering::Acquire);
            s.vtime.store(floor, Ordering::Relaxed);
            // A capped session starts with one quantum of tokens (its bucket's depth).
            s.tokens
                .store(i64::try_from(quantum_ns).unwrap_or(i64::MAX), Ordering::Relaxed);
            s.tokens_at.store(now, Ordering::Relaxed);
            s.last_active.store(now, Ordering::Relaxed);
            s.in_use.store(1, Ordering::Release);
            return Some(i);
        }
        None
    }

    /// Frees a slot after its session's worker exited (whatever state it died in): takes it out of the
    /// processor-sharing clock, returns its preemptible budget and wakes anyone it held back.
    pub fn release(&self, slot: usize, now: u64) {
        let Some(s) = self.slots.get(slot) else { return };
        self.set_in_flight(s, false, now);
        let held = s.preempt_held.swap(0, Ordering::AcqRel);
        if held > 0 {
            sub_saturating(&self.preempt_inflight, held);
        }
        s.demand.store(DEMAND_IDLE, Ordering::Release);
        s.in_use.store(0, Ordering::Release);
        self.bump();
    }

    /// Runs `f` under the table's spin lock. The lock holds no system call; a holder that died mid-way (the only
    /// way it can stay taken) is overridden after 2 ms.
    fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut spins = 0u32;
        let start = std::time::Instant::now();
        while self
            .lock
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins.is_multiple_of(64) {
                if start.elapsed() > std::time::Duration::from_millis(2) {
                    break;
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let r = f();
        self.lock.store(0, Ordering::Release);
        r
    }

    /// Advances the processor-sharing clock to `now` (caller holds the lock).
    fn advance(&self, now: u64) -> u64 {
        let at = self.ps_at.load(Ordering::Relaxed);
        let n = u64::from(self.ps_sessions.load(Ordering::Relaxed));
        let mut clock = self.ps_clock.load(Ordering::Relaxed);
        if now > at {
            if let Some(share) = (now - at).checked_div(n) {
                clock = clock.saturating_add(share);
                self.ps_clock.store(clock, Ordering::Relaxed);
            }
            self.ps_at.store(now, Ordering::Relaxed);
        }
        clock
    }

    /// The processor-sharing clock at `now`.
    pub fn ps_now(&self, now: u64) -> u64 {
        self.locked(|| self.advance(now))
    }

    /// Counts the slot in (or out of) the sessions with work in flight; accrues its credit up to now either way.
    pub fn set_in_flight(&self, s: &Slot, on: bool, now: u64) {
        self.locked(|| {
            let clock = self.advance(now);
            let was = s.in_flight.load(Ordering::Relaxed) == 1;
            if was {
                let mark = s.ps_mark.load(Ordering::Relaxed);
                s.ps_credit.fetch_add(clock.saturating_sub(mark), Ordering::Relaxed);
            }
            s.ps_mark.store(clock, Ordering::Relaxed);
            if on && !was {
                s.in_flight.store(1, Ordering::Relaxed);
                self.ps_sessions.fetch_add(1, Ordering::Relaxed);
            } else if !on && was {
                s.in_flight.store(0, Ordering::Relaxed);
                let n = self.ps_sessions.load(Ordering::Relaxed);
                self.ps_sessions.store(n.saturating_sub(1), Ordering::Relaxed);
            }
        });
    }

    /// Accrues the slot's processor-sharing credit up to `now` (while in flight).
    pub fn accrue(&self, s: &Slot, now: u64) {
        self.locked(|| {
            let clock = self.advance(now);
            if s.in_flight.load(Ordering::Relaxed) == 1 {
                let mark = s.ps_mark.load(Ordering::Relaxed);
                s.ps_credit.fetch_add(clock.saturating_sub(mark), Ordering::Relaxed);
            }
            s.ps_mark.store(clock, Ordering::Relaxed);
        });
    }

    /// Tells waiting sessions to look again.
    pub fn bump(&self) {
        self.wake.fetch_add(1, Ordering::AcqRel);
        if self.sleepers.load(Ordering::Acquire) > 0 {
            crate::sys::futex_wake_all(&self.wake);
        }
    }
}

pub(crate) fn sub_saturating(a: &AtomicU64, v: u64) {
    let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |x| Some(x.saturating_sub(v)));
}

impl Default for GpuTable {
    fn default() -> Self {
        GpuTable {
            mode: AtomicU32::new(MODE_OFF),
            lock: AtomicU32::new(0),
            wake: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            ps_sessions: AtomicU32::new(0),
            _pad: AtomicU32::new(0),
            ps_clock: AtomicU64::new(0),
            ps_at: AtomicU64::new(0),
            preempt_inflight: AtomicU64::new(0),
            vfloor: [AtomicU64::new(0), AtomicU64::new(0)],
            emulated_busy_until: AtomicU64::new(0),
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }
}

impl Default for Region {
    fn default() -> Self {
        Region {
            magic: AtomicU64::new(MAGIC),
            settings: Settings::default(),
            gpus: std::array::from_fn(|_| GpuTable::default()),
        }
    }
}

impl Region {
    /// A region on the heap (tests, and the simulator), in the given mode with the default settings.
    pub fn boxed(mode: u32) -> Box<Region> {
        let r = Box::<Region>::default();
        r.settings.quantum_ns.store(DEFAULT_QUANTUM_NS, Ordering::Relaxed);
        r.settings.grace_ns.store(DEFAULT_GRACE_NS, Ordering::Relaxed);
        for g in &r.gpus {
            g.mode.store(mode, Ordering::Relaxed);
        }
        r
    }

    pub fn params(&self) -> crate::sched::policy::Params {
        crate::sched::policy::Params {
            quantum_ns: self
                .settings
                .quantum_ns
                .load(Ordering::Relaxed)
                .clamp(100_000, 100_000_000),
            grace_ns: self.settings.grace_ns.load(Ordering::Relaxed).min(50_000_000),
        }
    }
}

/// Default quantum: 2 ms of GPU time (see the design notes in `sched/mod.rs`).
pub const DEFAULT_QUANTUM_NS: u64 = 2_000_000;
/// Default grace period before a drained session counts as idle: 1 ms, above a synchronise-and-resubmit round trip.
pub const DEFAULT_GRACE_NS: u64 = 1_000_000;
