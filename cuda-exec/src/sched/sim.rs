//! A simulated GPU and tenants for testing the policy in simulated time: the GPU time-slices between the sessions
//! that have kernels queued (as NVIDIA GPUs do between processes without MPS), tenants submit through the same
//! `policy` functions and shared table the workers use, and batches are measured by their span on the GPU's clock.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::policy::{self, Admit, Params};
use super::table::*;

/// Simulation step.
const DT: u64 = 10_000;
/// The GPU's time slice between sessions with work queued.
const TIMESLICE: u64 = 500_000;
/// How often each session's monitor looks at its batches.
const POLL: u64 = 50_000;

#[derive(Clone, Debug)]
pub struct Tenant {
    pub class: u32,
    pub share: f64,
    pub cap: bool,
    /// GPU time of each kernel when it runs.
    pub kernel_ns: u64,
    /// Kernels between two synchronisations (the tenant waits for its GPU work to drain, then thinks).
    pub per_sync: u32,
    pub think_ns: u64,
    /// Fixed work: the tenant stops after this many kernels (`None`: runs to the end).
    pub kernels: Option<u64>,
    /// The tenant is active between these simulated times (ns from the start).
    pub from_ns: u64,
    pub until_ns: u64,
    /// Host time to submit one kernel.
    pub submit_ns: u64,
    /// Every `pause_every` synchronisations the tenant pauses `pause_ns` instead of `think_ns` (0: never).
    pub pause_every: u32,
    pub pause_ns: u64,
}

impl Tenant {
    pub fn busy(share: f64, kernel_ns: u64) -> Tenant {
        Tenant {
            class: CLASS_BURST,
            share,
            cap: false,
            kernel_ns,
            per_sync: 50,
            think_ns: 20_000,
            kernels: None,
            from_ns: 0,
            until_ns: u64::MAX,
            submit_ns: 3_000,
            pause_every: 0,
            pause_ns: 0,
        }
    }
}

struct Batch {
    est: u64,
    first: u64,
    last: u64,
    opened: u64,
}

struct State {
    cfg: Tenant,
    slot: usize,
    /// Kernels queued on the GPU: (sequence number, remaining ns).
    queue: VecDeque<(u64, u64)>,
    next_seq: u64,
    /// Start and end GPU time of each kernel by sequence number (index = seq).
    started: Vec<Option<u64>>,
    finished: Vec<Option<u64>>,
    submitted: u64,
    since_sync: u32,
    syncs: u32,
    syncing: bool,
    think_until: u64,
    budget: u64,
    open: Option<Batch>,
    closed: VecDeque<Batch>,
    waiting: bool,
    unit_cost: u64,
    /// GPU time the tenant really received, per simulated second.
    truth: Vec<u64>,
    done_at: Option<u64>,
}

pub struct Outcome {
    /// Each tenant's GPU time per window of `window_ns`, as a fraction of the window.
    pub shares: Vec<Vec<f64>>,
    /// When each tenant with fixed work finished (ns from the start).
    pub done_ns: Vec<Option<u64>>,
    /// GPU nanoseconds each session was charged (what metering bills).
    pub charged: Vec<u64>,
    /// GPU nanoseconds each tenant really received.
    pub received: Vec<u64>,
}

pub const WINDOW: u64 = 1_000_000_000;
const T0: u64 = 1_000_000_000;

/// Runs `tenants` on one simulated GPU for `duration_ns` with the scheduler in `mode`.
pub fn run(tenants: &[Tenant], duration_ns: u64, mode: u32) -> Outcome {
    let region = Region::boxed(mode);
    let p: Params = region.params();
    let t = &region.gpus[0];
    let mut st: Vec<State> = tenants
        .iter()
        .map(|c| {
            let slot = t
                .claim(
                    &SlotConfig {
                        class: c.class,
                        share: c.share,
                        cap: c.cap,
                        sm_percent: 100,
                    },
                    T0,
                    p.quantum_ns,
                )
                .expect("a free slot");
            State {
                cfg: c.clone(),
                slot,
                queue: VecDeque::new(),
                next_seq: 0,
                started: Vec::new(),
                finished: Vec::new(),
                submitted: 0,
                since_sync: 0,
                syncs: 0,
                syncing: false,
                think_until: 0,
                budget: 0,
                open: None,
                closed: VecDeque::new(),
                waiting: false,
                unit_cost: 50_000,
                truth: vec![0; (duration_ns / WINDOW + 1) as usize],
                done_at: None,
            }
        })
        .collect();
    let mut running: usize = 0;
    let mut slice_left = TIMESLICE;
    let mut now = T0;
    let end = T0 + duration_ns;
    let chunk = p.quantum_ns / 8;
    while now < end {
        let rel = now - T0;
        // The host side of every tenant.
        for s in st.iter_mut() {
            host_step(t, &p, s, now, rel, chunk);
        }
        // The GPU: run the current session's first kernel for one step; switch on an empty queue or a spent slice.
        let n = st.len();
        if st[running].queue.is_empty() || slice_left == 0 {
            if let Some(next) = (1..=n).map(|k| (running + k) % n).find(|&i| !st[i].queue.is_empty()) {
                running = next;
                slice_left = TIMESLICE;
            }
        }
        let r = &mut st[running];
        let mut step = DT;
        while step > 0 {
            let Some(&(seq, left)) = r.queue.front() else { break };
            let i = seq as usize;
            if r.started[i].is_none() {
                r.started[i] = Some(now + DT - step);
            }
            let run = left.min(step);
            step -= run;
            r.truth[(rel / WINDOW) as usize] += run;
            if run == left {
                r.queue.pop_front();
                r.finished[i] = Some(now + DT - step);
            } else if let Some(front) = r.queue.front_mut() {
                front.1 -= run;
            }
        }
        slice_left = slice_left.saturating_sub(DT);

        now += DT;
        // Each session's monitor.
        if (now - T0).is_multiple_of(POLL) {
            for s in st.iter_mut() {
                monitor(t, &p, s, now);
            }
        }
    }
    let windows = (duration_ns / WINDOW) as usize;
    Outcome {
        shares: st
            .iter()
            .map(|s| s.truth[..windows].iter().map(|&ns| ns as f64 / WINDOW as f64).collect())
            .collect(),
        done_ns: st.iter().map(|s| s.done_at).collect(),
        charged: st
            .iter()
            .map(|s| t.slots[s.slot].charged.load(Ordering::Relaxed))
            .collect(),
        received: st.iter().map(|s| s.truth.iter().sum()).collect(),
    }
}

fn close(s: &mut State) {
    if let Some(b) = s.open.take() {
        s.closed.push_back(b);
    }
}

fn give_back_budget(t: &GpuTable, s: &mut State) {
    if s.budget > 0 {
        policy::unreserve(t, s.slot, s.budget);
        s.budget = 0;
    }
}

fn host_step(t: &GpuTable, p: &Params, s: &mut State, now: u64, rel: u64, chunk: u64) {
    let c = s.cfg.clone();
    let finished_work = c.kernels.is_some_and(|k| s.submitted >= k);
    if rel < c.from_ns || rel >= c.until_ns || finished_work {
        if finished_work && s.done_at.is_none() && s.queue.is_empty() {
            s.done_at = Some(rel);
        }
        close(s);
        give_back_budget(t, s);
        if s.waiting {
            t.slots[s.slot].waiting.fetch_sub(1, Ordering::AcqRel);
            s.waiting = false;
        }
        return;
    }
    if s.syncing {
        if !s.queue.is_empty() {
            return;
        }
        s.syncing = false;
        s.syncs += 1;
        let pause = c.pause_every > 0 && s.syncs.is_multiple_of(c.pause_every);
        s.think_until = now + if pause { c.pause_ns } else { c.think_ns };
    }
    if now < s.think_until {
        return;
    }
    let est = s.unit_cost;
    let mut host = DT;
    while host >= c.submit_ns {
        if s.budget < est {
            // The gate's slow path: ask the policy for another chunk.
            let slot = &t.slots[s.slot];
            match policy::admit(t, s.slot, chunk.max(est), now, p) {
                Admit::Go => {
                    if s.waiting {
                        slot.waiting.fetch_sub(1, Ordering::AcqRel);
                        s.waiting = false;
                    }
                    s.budget += chunk.max(est);
                }
                Admit::Wait { .. } => {
                    close(s);
                    if !s.waiting {
                        slot.waiting.fetch_add(1, Ordering::AcqRel);
                        s.waiting = true;
                    }
                    return;
                }
            }
        }
        s.budget -= est;
        let seq = s.next_seq;
        s.next_seq += 1;
        s.started.push(None);
        s.finished.push(None);
        s.queue.push_back((seq, c.kernel_ns));
        s.submitted += 1;
        s.since_sync += 1;
        host -= c.submit_ns;
        if s.open.is_none() {
            policy::opened(t, s.slot, now);
        }
        let b = s.open.get_or_insert(Batch {
            est: 0,
            first: seq,
            last: seq,
            opened: now,
        });
        b.est += est;
        b.last = seq;
        if b.est >= p.quantum_ns / 4 || b.last - b.first >= 1023 {
            close(s);
        }
        if c.kernels.is_some_and(|k| s.submitted >= k) {
            close(s);
            give_back_budget(t, s);
            return;
        }
        if c.per_sync > 0 && s.since_sync >= c.per_sync {
            s.since_sync = 0;
            s.syncing = true;
            close(s);
            give_back_budget(t, s);
            return;
        }
    }
}

fn monitor(t: &GpuTable, p: &Params, s: &mut State, now: u64) {
    if s.open.as_ref().is_some_and(|b| now - b.opened > 2_000_000) {
        close(s);
    }
    while let Some(b) = s.closed.front() {
        let (Some(start), Some(end)) = (s.started[b.first as usize], s.finished[b.last as usize]) else {
            break;
        };
        let units = b.last - b.first + 1;
        let est = b.est;
        s.closed.pop_front();
        let charge = policy::complete(t, s.slot, est, Some(end - start), now, p);
        s.unit_cost = ((s.unit_cost * 3 + charge / units) / 4).clamp(500, 10_000_000);
    }
    let gpu_idle = s.closed.is_empty() && s.open.is_none() && s.queue.is_empty();
    policy::settle(t, s.slot, gpu_idle, s.budget == 0 && !s.waiting, now, p);
}

/// Jain's fairness index of `x`.
pub fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let sq: f64 = x.iter().map(|v| v * v).sum();
    if sq == 0.0 {
        return 0.0;
    }
    sum * sum / (x.len() as f64 * sq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(o: &Outcome) -> String {
        o.shares
            .iter()
            .map(|w| w.iter().map(|v| format!("{:.3}", v)).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Every window after the first (warm-up) within `tol` of each target.
    fn assert_shares(o: &Outcome, targets: &[f64], tol: f64, windows: std::ops::Range<usize>) {
        for (i, target) in targets.iter().enumerate() {
            for w in windows.clone() {
                let got = o.shares[i][w];
                assert!(
                    (got - target).abs() <= tol,
                    "tenant {i} window {w}: share {got:.3}, target {target:.3}; all: {}",
                    fmt(o)
                );
            }
        }
    }

    #[test]
    fn shares_ten_fifty_forty_are_met_per_window() {
        let tenants = [
            Tenant::busy(0.1, 300_000),
            Tenant::busy(0.5, 300_000),
            Tenant::busy(0.4, 300_000),
        ];
        let o = run(&tenants, 4 * WINDOW, MODE_TIME_SLICED);
        assert_shares(&o, &[0.1, 0.5, 0.4], 0.03, 1..4);
    }

    #[test]
    fn ten_and_fifty_alone_split_the_gpu_in_proportion() {
        // Work-conserving: the 40 % nobody holds goes to both in proportion to their shares (1/6 and 5/6).
        let tenants = [Tenant::busy(0.1, 200_000), Tenant::busy(0.5, 200_000)];
        let o = run(&tenants, 3 * WINDOW, MODE_TIME_SLICED);
        assert_shares(&o, &[1.0 / 6.0, 5.0 / 6.0], 0.03, 1..3);
    }

    #[test]
    fn without_the_scheduler_time_slicing_ignores_shares() {
        // The control: the same two tenants with the scheduler off get what the GPU's time-slicer gives.
        let tenants = [Tenant::busy(0.1, 200_000), Tenant::busy(0.5, 200_000)];
        let o = run(&tenants, 2 * WINDOW, MODE_OFF);
        assert_shares(&o, &[0.5, 0.5], 0.05, 1..2);
    }

    #[test]
    fn eight_equal_tenants_with_fixed_work_finish_together() {
        // Different kernel sizes and sync patterns: shares are of GPU time, not of launches.
        let tenants: Vec<Tenant> = (0..8)
            .map(|i| {
                let kernel_ns = [50_000, 200_000, 800_000, 120_000][i % 4];
                let mut t = Tenant::busy(1.0, kernel_ns);
                t.per_sync = [10, 100, 5, 40][i % 4];
                t.kernels = Some(2_000_000_000 / kernel_ns); // 2 s of GPU time each
                t
            })
            .collect();
        let o = run(&tenants, 20 * WINDOW, MODE_TIME_SLICED);
        let done: Vec<f64> = o.done_ns.iter().map(|d| d.expect("finished") as f64).collect();
        let rates: Vec<f64> = done.iter().map(|d| 1.0 / d).collect();
        let j = jain(&rates);
        let spread = done.iter().cloned().fold(0.0, f64::max) / done.iter().cloned().fold(f64::MAX, f64::min);
        assert!(
            j >= 0.99 && spread <= 1.05,
            "Jain {j:.4}, slowest/fastest {spread:.3}; done {done:?}"
        );
        // All 16 s of work done in about 16 s: the scheduler left the GPU busy.
        let last = done.iter().cloned().fold(0.0, f64::max) / 1e9;
        assert!(last < 16.0 * 1.05, "last finished at {last:.2} s");
    }

    #[test]
    fn eight_equal_launch_bound_tenants_share_evenly() {
        let tenants: Vec<Tenant> = (0..8)
            .map(|_| {
                let mut t = Tenant::busy(1.0, 5_000);
                t.per_sync = 200;
                t.submit_ns = 2_000;
                t
            })
            .collect();
        let o = run(&tenants, 3 * WINDOW, MODE_TIME_SLICED);
        for w in 1..3 {
            let x: Vec<f64> = o.shares.iter().map(|s| s[w]).collect();
            assert!(jain(&x) >= 0.99, "window {w}: Jain {:.4}; {}", jain(&x), fmt(&o));
            assert!(x.iter().sum::<f64>() > 0.95, "GPU left idle: {}", fmt(&o));
        }
    }

    #[test]
    fn equal_shares_are_no_less_fair_than_the_gpus_own_time_slicing() {
        // Launch-bound tenants that synchronise at different rates: one that synchronises every 100 µs of work waits
        // a whole round of the GPU's time-slicer each time, with or without the scheduler (a physical limit of
        // time-slicing, see NOTES §10); the scheduler must not make it worse.
        let tenants: Vec<Tenant> = (0..8)
            .map(|i| {
                let mut t = Tenant::busy(1.0, 5_000);
                t.per_sync = [1000, 20, 200, 1000][i % 4];
                t.submit_ns = 2_000;
                t
            })
            .collect();
        let on = run(&tenants, 3 * WINDOW, MODE_TIME_SLICED);
        let off = run(&tenants, 3 * WINDOW, MODE_OFF);
        let j = |o: &Outcome| jain(&o.shares.iter().map(|s| s[2]).collect::<Vec<_>>());
        assert!(
            j(&on) >= j(&off) - 0.01,
            "on {:.4} off {:.4}: {} / {}",
            j(&on),
            j(&off),
            fmt(&on),
            fmt(&off)
        );
        let total: f64 = on.shares.iter().map(|s| s[2]).sum();
        assert!(total > 0.95, "GPU left idle: {}", fmt(&on));
    }

    #[test]
    fn a_guaranteed_tenant_keeps_its_throughput_beside_preemptible_ones() {
        // The guaranteed tenant works in rounds (20 kernels, synchronise, 50 µs of host work) and every 100
        // kernels pauses 5 ms: the preemptible ones may use those pauses, and only those.
        let mut g = Tenant::busy(0.5, 300_000);
        g.class = CLASS_GUARANTEED;
        g.per_sync = 20;
        g.think_ns = 50_000;
        g.pause_every = 5;
        g.pause_ns = 5_000_000;
        let alone = run(std::slice::from_ref(&g), 3 * WINDOW, MODE_TIME_SLICED);
        let mut tenants = vec![g];
        for _ in 0..4 {
            let mut p = Tenant::busy(0.125, 400_000);
            p.class = CLASS_PREEMPTIBLE;
            tenants.push(p);
        }
        let o = run(&tenants, 3 * WINDOW, MODE_TIME_SLICED);
        let ratio = o.received[0] as f64 / alone.received[0] as f64;
        assert!(
            ratio >= 0.95,
            "guaranteed tenant at {ratio:.3} of its throughput alone; {}",
            fmt(&o)
        );
        // The preemptible ones get the pauses (work conservation): the GPU is busy nearly all the time.
        let spot: f64 = (1..5).map(|i| o.shares[i][2]).sum();
        assert!(spot > 0.1 && o.shares[0][2] + spot > 0.95, "{}", fmt(&o));
    }

    #[test]
    fn a_cap_holds_on_an_idle_gpu() {
        let mut t = Tenant::busy(0.25, 200_000);
        t.cap = true;
        let o = run(&[t], 3 * WINDOW, MODE_TIME_SLICED);
        assert_shares(&o, &[0.25], 0.02, 1..3);
    }

    #[test]
    fn capped_and_uncapped_tenants_side_by_side() {
        let mut a = Tenant::busy(0.1, 200_000);
        a.cap = true;
        let b = Tenant::busy(0.5, 200_000);
        let o = run(&[a, b], 3 * WINDOW, MODE_TIME_SLICED);
        // The capped one gets its 10 %, the other everything else.
        assert_shares(&o, &[0.1, 0.9], 0.03, 1..3);
    }

    #[test]
    fn a_lone_tenant_gets_the_whole_gpu_whatever_its_share() {
        let o = run(&[Tenant::busy(0.1, 200_000)], 2 * WINDOW, MODE_TIME_SLICED);
        assert_shares(&o, &[1.0], 0.03, 1..2);
    }

    #[test]
    fn an_idle_tenants_capacity_goes_to_the_others_and_comes_back() {
        let mut a = Tenant::busy(0.5, 200_000);
        a.until_ns = 2 * WINDOW;
        a.from_ns = 0;
        let mut a2 = a.clone();
        a2.from_ns = 4 * WINDOW;
        a2.until_ns = u64::MAX;
        let b = Tenant::busy(0.25, 200_000);
        let c = Tenant::busy(0.25, 300_000);
        // a is active in [0, 2) s, then idle, then a2 (the same plan, a new session) from 4 s.
        let o = run(&[a, b, c, a2], 6 * WINDOW, MODE_TIME_SLICED);
        let tol = 0.04;
        let near = |tenant: usize, window: usize, target: f64| {
            assert!((o.shares[tenant][window] - target).abs() <= tol, "{}", fmt(&o));
        };
        // All three busy (second 1), a gone (second 3), a back as a new session (second 5).
        near(0, 1, 0.5);
        near(1, 1, 0.25);
        near(1, 3, 0.5);
        near(2, 3, 0.5);
        near(3, 5, 0.5);
        near(1, 5, 0.25);
    }

    #[test]
    fn charged_time_matches_the_time_received() {
        // Metering bills the charge: under contention it must be each tenant's own GPU time, not the wall time its
        // batches spanned while others ran.
        let tenants = [Tenant::busy(0.3, 250_000), Tenant::busy(0.7, 250_000)];
        let o = run(&tenants, 3 * WINDOW, MODE_TIME_SLICED);
        for i in 0..2 {
            let (c, r) = (o.charged[i] as f64, o.received[i] as f64);
            assert!(
                (c - r).abs() / r < 0.05,
                "tenant {i}: charged {c:.3e}, received {r:.3e}"
            );
        }
    }
}
