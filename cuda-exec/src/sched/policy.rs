//! The scheduling policy: who may put more work on the GPU now (`admit`), what a finished batch costs its session
//! (`complete`), and when a session stops counting as busy (`settle`). Pure functions of one GPU's shared table and
//! a clock, so the simulator in `sim.rs` runs exactly the code the workers run.

use std::sync::atomic::Ordering;

use super::table::*;

/// Tunables, read from the shared region so every worker agrees.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub quantum_ns: u64,
    pub grace_ns: u64,
}

/// A session with no admitted work for this long no longer counts as present for the preemptible budget.
const PRESENCE_NS: u64 = 1_000_000_000;

/// The answer to "may this session submit `est` more nanoseconds of work now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// Not now; look again when woken, or at `until` (host monotonic ns) at the latest if given.
    Wait {
        until: Option<u64>,
    },
}

/// What the others on the GPU look like to one session.
struct View {
    /// Another backlogged session in the same tier.
    peers: bool,
    /// The lowest effective virtual time among backlogged sessions of the same tier (me excluded).
    vmin: u64,
    /// A session of a higher class (lower tier) is backlogged.
    higher_backlogged: bool,
    /// A session of a higher class has been active within `PRESENCE_NS`.
    higher_present: bool,
    /// Every backlogged peer has this session's share, and none is capped.
    uniform: bool,
}

fn look(t: &GpuTable, me: usize, now: u64) -> View {
    let tier = t.slots[me].tier();
    let share = t.slots[me].share_ppm();
    let mut v = View {
        peers: false,
        vmin: u64::MAX,
        higher_backlogged: false,
        higher_present: false,
        uniform: !t.slots[me].capped(),
    };
    for (j, o) in t.slots.iter().enumerate() {
        if j == me || o.in_use.load(Ordering::Acquire) != 1 {
            continue;
        }
        let demand = o.demand.load(Ordering::Acquire);
        if o.tier() < tier {
            if demand == DEMAND_BACKLOGGED {
                v.higher_backlogged = true;
            }
            if demand != DEMAND_IDLE || now.saturating_sub(o.last_active.load(Ordering::Relaxed)) < PRESENCE_NS {
                v.higher_present = true;
            }
        }
        if o.tier() == tier && demand == DEMAND_BACKLOGGED {
            v.peers = true;
            v.vmin = v.vmin.min(o.effective_vtime());
            v.uniform &= o.share_ppm() == share && !o.capped();
        }
    }
    v
}

/// Marks the session backlogged; a session coming back from idle (or from being held) starts no lower than its
/// tier's floor, so it cannot bank credit while away. A guaranteed session may start one quantum below the floor:
/// it goes first when it returns.
fn become_backlogged(t: &GpuTable, s: &Slot, p: &Params) {
    if s.demand.load(Ordering::Acquire) == DEMAND_BACKLOGGED {
        return;
    }
    let floor = t.vfloor[s.tier()].load(Ordering::Acquire);
    let lead = if s.class() == CLASS_GUARANTEED {
        s.virtual_of(p.quantum_ns)
    } else {
        0
    };
    let start = floor.saturating_sub(lead);
    s.vtime.fetch_max(start, Ordering::AcqRel);
    s.demand.store(DEMAND_BACKLOGGED, Ordering::Release);
}

/// Refills a capped session's bucket at its share of wall time (depth: one quantum) and returns its tokens.
fn refill(s: &Slot, now: u64, p: &Params) -> i64 {
    let before = s.tokens_at.swap(now, Ordering::AcqRel);
    let depth = i64::try_from(p.quantum_ns).unwrap_or(i64::MAX);
    if now > before {
        let add = u128::from(now - before) * u128::from(s.share_ppm()) / 1_000_000;
        let add = i64::try_from(add).unwrap_or(i64::MAX);
        let _ = s.tokens.fetch_update(Ordering::AcqRel, Ordering::Acquire, |x| {
            Some(x.saturating_add(add).min(depth))
        });
    }
    s.tokens.load(Ordering::Acquire)
}

/// May slot `me` submit `est` more nanoseconds of (estimated) work at `now`? On `Go` the estimate is booked as in
/// flight until `complete` or `unreserve` gives it back.
pub fn admit(t: &GpuTable, me: usize, est: u64, now: u64, p: &Params) -> Admit {
    let s = &t.slots[me];
    if t.mode.load(Ordering::Relaxed) == MODE_OFF {
        return Admit::Go;
    }
    let inflight = s.inflight_est.load(Ordering::Acquire);
    // A cap holds in every case, even on an idle GPU.
    if s.capped() {
        let tokens = refill(s, now, p);
        let want = i64::try_from(inflight.saturating_add(est)).unwrap_or(i64::MAX);
        if tokens < want && (tokens <= 0 || inflight > 0) {
            s.demand.store(DEMAND_HELD, Ordering::Release);
            let short = u128::try_from(want.saturating_sub(tokens).max(1)).unwrap_or(1);
            let wait = short * 1_000_000 / u128::from(s.share_ppm());
            let wait = u64::try_from(wait).unwrap_or(u64::MAX).min(p.quantum_ns);
            return Admit::Wait {
                until: Some(now.saturating_add(wait)),
            };
        }
    }
    let view = look(t, me, now);
    if s.class() == CLASS_PREEMPTIBLE && view.higher_backlogged {
        // Spot capacity only: nothing new while a guaranteed or burst session has work.
        s.demand.store(DEMAND_HELD, Ordering::Release);
        return Admit::Wait { until: None };
    }
    become_backlogged(t, s, p);
    let tier = s.tier();
    let mine = s.effective_vtime();
    // With equal shares on a time-sliced GPU, the GPU's own time-slicer already gives each session with work queued
    // an equal slice (1.03× between the slowest and the fastest of 8 processes natively), and does so more exactly
    // than the scheduler's estimate of contended GPU time can (see NOTES §10): the scheduler then only bounds how
    // much each keeps queued. Unequal shares, caps and MPS (where kernels run side by side) need the rule below.
    let by_gpu = view.uniform && t.mode.load(Ordering::Relaxed) == MODE_TIME_SLICED;
    if view.peers && by_gpu {
        t.vfloor[tier].fetch_max(view.vmin.min(mine), Ordering::AcqRel);
        if inflight > 0 && inflight.saturating_add(est) > p.quantum_ns {
            return Admit::Wait { until: None };
        }
    } else if view.peers {
        // Fair sharing: at most one quantum (of this session's own GPU time) ahead of the laggard, counting what it
        // already has queued, and at most one quantum queued on the GPU (queued kernels cannot be taken back).
        //
        // Hysteresis: once held back, a session comes back only when half a quantum behind the limit, and then with
        // enough work to keep a deep queue. A session trickling single kernels at the limit would keep a shallow
        // queue, and the GPU's time-slicer gives a shallow queue less than an equal slice, which the
        // processor-sharing charge (equal slices among those in flight) would then overcharge.
        let ahead = mine.saturating_add(s.virtual_of(inflight));
        let mut limit = view.vmin.saturating_add(s.virtual_of(p.quantum_ns));
        if s.lagging.load(Ordering::Acquire) == 1 {
            limit = limit.saturating_sub(s.virtual_of(p.quantum_ns / 2));
        }
        t.vfloor[tier].fetch_max(view.vmin.min(mine), Ordering::AcqRel);
        if ahead > limit {
            s.lagging.store(1, Ordering::Release);
            return Admit::Wait { until: None };
        }
        s.lagging.store(0, Ordering::Release);
        if inflight > 0 && inflight.saturating_add(est) > p.quantum_ns {
            return Admit::Wait { until: None };
        }
    } else {
        t.vfloor[tier].fetch_max(mine, Ordering::AcqRel);
    }
    if s.class() == CLASS_PREEMPTIBLE && view.higher_present {
        // While a higher class is around, all preemptible sessions together keep at most one quantum queued: that
        // bounds how long a returning guaranteed session waits behind them.
        let ok = t
            .preempt_inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur == 0 || cur.saturating_add(est) <= p.quantum_ns).then(|| cur.saturating_add(est))
            })
            .is_ok();
        if !ok {
            return Admit::Wait { until: None };
        }
        s.preempt_held.fetch_add(est, Ordering::AcqRel);
    }
    s.inflight_est.fetch_add(est, Ordering::AcqRel);
    s.last_active.store(now, Ordering::Release);
    if s.in_flight.load(Ordering::Acquire) == 0 {
        t.set_in_flight(s, true, now);
    }
    Admit::Go
}

/// A batch opens: work goes on the GPU from what `admit` booked earlier, so the session counts as in flight again if
/// its last batch had drained meanwhile.
pub fn opened(t: &GpuTable, me: usize, now: u64) {
    let s = &t.slots[me];
    s.last_active.fetch_max(now, Ordering::AcqRel);
    if s.in_flight.load(Ordering::Acquire) == 0 {
        t.set_in_flight(s, true, now);
    }
}

/// Gives back `est` nanoseconds booked by `admit` that were not used (or whose batch ended without a measurement
/// being possible, after it was charged another way).
pub fn unreserve(t: &GpuTable, me: usize, est: u64) {
    let s = &t.slots[me];
    sub_saturating(&s.inflight_est, est);
    let held = s.preempt_held.load(Ordering::Acquire);
    if held > 0 {
        let back = held.min(est);
        sub_saturating(&s.preempt_held, back);
        sub_saturating(&t.preempt_inflight, back);
    }
    t.bump();
}

/// A batch of slot `me` finished on the GPU. `est`: what `admit` booked for it; `span`: what the GPU's clock says
/// it took (events), if it could be read. Returns the GPU nanoseconds charged: the span, but no more than the
/// processor-sharing time the session accrued while in flight (when several sessions had work queued, the GPU
/// split its time between them and each batch's span also covers the others' slices). Under MPS the span is
/// scaled by the session's SM limit.
pub fn complete(t: &GpuTable, me: usize, est: u64, span: Option<u64>, now: u64, p: &Params) -> u64 {
    let s = &t.slots[me];
    t.accrue(s, now);
    let measured = match span {
        Some(ns) if t.mode.load(Ordering::Relaxed) == MODE_MPS => {
            ns.saturating_mul(u64::from(s.sm_percent.load(Ordering::Relaxed).clamp(1, 100))) / 100
        }
        Some(ns) => ns,
        None => est,
    };
    // A batch measured when the credit fell short is charged later, when credit allows (up to one quantum).
    let owed = measured.saturating_add(s.debt.load(Ordering::Acquire));
    let credit = s.ps_credit.load(Ordering::Acquire);
    let charge = owed.min(credit);
    s.debt.store((owed - charge).min(p.quantum_ns), Ordering::Release);
    // What is left of the credit beyond a quantum is the host's lag in seeing completions, not GPU time.
    let _ = s.ps_credit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
        Some(c.saturating_sub(charge).min(p.quantum_ns))
    });
    s.vtime.fetch_add(s.virtual_of(charge), Ordering::AcqRel);
    s.charged.fetch_add(charge, Ordering::AcqRel);
    if let Some(ns) = span {
        s.spanned.fetch_add(ns, Ordering::AcqRel);
    }
    if s.capped() {
        s.tokens
            .fetch_sub(i64::try_from(charge).unwrap_or(i64::MAX), Ordering::AcqRel);
    }
    unreserve(t, me, est);
    charge
}

/// The monitor's periodic look at a session: `gpu_idle` (nothing of it queued on the GPU: no batch open or awaiting
/// its measurement) takes it out of the processor-sharing clock at once; `host_idle` (besides, nobody waiting at its
/// gate and nothing booked) marks it idle once it has been quiet for the grace period. A session between two rounds
/// of work (synchronise, think, submit again) so keeps its place in the fair order (a deficit is not forgotten at
/// every synchronisation) and keeps lower classes out of the gap.
pub fn settle(t: &GpuTable, me: usize, gpu_idle: bool, host_idle: bool, now: u64, p: &Params) {
    let s = &t.slots[me];
    if s.in_flight.load(Ordering::Acquire) == 1 {
        if gpu_idle {
            t.set_in_flight(s, false, now);
            // The grace period runs from when its work drained.
            s.last_active.fetch_max(now, Ordering::AcqRel);
        } else {
            t.accrue(s, now);
        }
    }
    if !(gpu_idle && host_idle) || s.waiting.load(Ordering::Acquire) > 0 {
        return;
    }
    let demand = s.demand.load(Ordering::Acquire);
    if demand == DEMAND_IDLE {
        return;
    }
    let quiet = now.saturating_sub(s.last_active.load(Ordering::Acquire));
    if demand == DEMAND_BACKLOGGED && quiet < p.grace_ns {
        return;
    }
    s.ps_credit.store(0, Ordering::Release);
    s.debt.store(0, Ordering::Release);
    s.demand.store(DEMAND_IDLE, Ordering::Release);
    t.bump();
}
