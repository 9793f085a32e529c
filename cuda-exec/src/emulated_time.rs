//! Simulated GPU time for the emulated backend, off unless `VGPU_EMULATED_KERNEL_NS` is set: each launch is given a
//! duration from a cost model and queued on a device timeline (shared by every worker of the server when the
//! scheduler's table is mapped), so events, stream queries and synchronisations behave as if kernels ran. SIMULATED:
//! no kernel executes; the durations are the model's, not a GPU's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::sys::monotonic_ns;

/// A launch's simulated duration: `base_ns + per_block_ns × blocks` (blocks: the grid's product).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelCost {
    pub base_ns: u64,
    pub per_block_ns: u64,
}

/// Longest simulated kernel (a bad setting cannot stall a worker for long).
const MAX_KERNEL_NS: u64 = 10_000_000_000;

impl KernelCost {
    /// `BASE` or `BASE+PER_BLOCK`, in nanoseconds.
    pub fn parse(text: &str) -> Result<KernelCost, String> {
        let bad = || format!("VGPU_EMULATED_KERNEL_NS={text}: expected BASE or BASE+PER_BLOCK (nanoseconds)");
        let (base, per_block) = match text.trim().split_once('+') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (text.trim(), "0"),
        };
        Ok(KernelCost {
            base_ns: base.parse().map_err(|_| bad())?,
            per_block_ns: per_block.parse().map_err(|_| bad())?,
        })
    }

    pub fn from_env() -> Option<KernelCost> {
        let text = std::env::var("VGPU_EMULATED_KERNEL_NS").ok()?;
        match KernelCost::parse(&text) {
            Ok(c) => Some(c),
            Err(why) => {
                tracing::warn!("{why}; kernels take no simulated time");
                None
            }
        }
    }

    fn duration(&self, blocks: u64) -> u64 {
        self.base_ns
            .saturating_add(self.per_block_ns.saturating_mul(blocks))
            .min(MAX_KERNEL_NS)
    }
}

/// The simulated device timeline of one emulated backend.
pub struct SimulatedTime {
    cost: Option<KernelCost>,
    /// When the device is next free (host monotonic ns): the scheduler table's word once shared, else `local`.
    shared: OnceLock<&'static AtomicU64>,
    local: AtomicU64,
    /// When the work queued so far on each stream ends: (context, stream) for the per-context streams 0..=2,
    /// (0, stream) for created streams.
    streams: Mutex<HashMap<(u64, u64), u64>>,
    /// When everything this process queued ends.
    all: AtomicU64,
}

impl SimulatedTime {
    pub fn new(cost: Option<KernelCost>) -> SimulatedTime {
        SimulatedTime {
            cost,
            shared: OnceLock::new(),
            local: AtomicU64::new(0),
            streams: Mutex::new(HashMap::new()),
            all: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cost.is_some()
    }

    pub fn describe(&self) -> Option<String> {
        self.cost.map(|c| {
            format!(
                "SIMULATED kernel time {} ns + {} ns per block (VGPU_EMULATED_KERNEL_NS), queued on one device timeline",
                c.base_ns, c.per_block_ns
            )
        })
    }

    pub fn share(&self, busy_until: &'static AtomicU64) {
        let _ = self.shared.set(busy_until);
    }

    fn device(&self) -> &AtomicU64 {
        self.shared.get().copied().unwrap_or(&self.local)
    }

    fn key(ctx: u64, stream: u64) -> (u64, u64) {
        if stream <= 2 {
            (ctx, stream)
        } else {
            (0, stream)
        }
    }

    /// Queues a launch of `blocks` blocks on `stream`: it starts when the device is free (kernels of every session
    /// run one at a time, in the order they were submitted) and after the stream's earlier work.
    pub fn launch(&self, ctx: u64, stream: u64, blocks: u64) {
        let Some(cost) = self.cost else { return };
        let d = cost.duration(blocks);
        let now = monotonic_ns();
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let after = streams.get(&Self::key(ctx, stream)).copied().unwrap_or(0);
        let mut end = 0;
        let _ = self.device().fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
            end = free.max(now).max(after).saturating_add(d);
            Some(end)
        });
        streams.insert(Self::key(ctx, stream), end);
        self.all.fetch_max(end, Ordering::AcqRel);
    }

    /// When the work queued so far on `stream` ends (streams 0 and 1, the legacy stream, wait for everything).
    pub fn done_at(&self, ctx: u64, stream: u64) -> u64 {
        if stream <= 1 {
            return self.all.load(Ordering::Acquire);
        }
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.get(&Self::key(ctx, stream)).copied().unwrap_or(0)
    }

    /// When an event recorded now on `stream` completes: the simulated device runs everything in submission order,
    /// so an event is reached once the work queued before it (on any stream, of any session) is done.
    pub fn event_at(&self, ctx: u64, stream: u64) -> u64 {
        self.done_at(ctx, stream).max(self.device().load(Ordering::Acquire))
    }

    pub fn all_done_at(&self) -> u64 {
        self.all.load(Ordering::Acquire)
    }

    /// The host instant matching monotonic time `at` (now, if `at` is past).
    pub fn instant_of(&self, at: u64) -> Instant {
        let now = monotonic_ns();
        Instant::now() + Duration::from_nanos(at.saturating_sub(now))
    }

    /// Sleeps until monotonic time `at`.
    pub fn wait_until(&self, at: u64) {
        let now = monotonic_ns();
        if at > now {
            std::thread::sleep(Duration::from_nanos(at - now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            KernelCost::parse("5000").ok(),
            Some(KernelCost {
                base_ns: 5000,
                per_block_ns: 0
            })
        );
        assert_eq!(
            KernelCost::parse("2000+250").ok(),
            Some(KernelCost {
                base_ns: 2000,
                per_block_ns: 250
            })
        );
        assert!(KernelCost::parse("fast").is_err());
        assert!(KernelCost::parse("1+x").is_err());
    }

    #[test]
    fn launches_queue_on_one_device_in_submission_order() {
        let t = SimulatedTime::new(Some(KernelCost {
            base_ns: 2_000_000,
            per_block_ns: 1_000,
        }));
        let start = monotonic_ns();
        t.launch(1, 7, 1000); // 3 ms
        t.launch(1, 8, 0); // another stream, same device: after the first, 2 ms
        let a = t.done_at(1, 7);
        let b = t.done_at(1, 8);
        assert!(a >= start + 3_000_000 && a < start + 3_500_000, "{}", a - start);
        assert!(b >= a + 2_000_000 && b < a + 2_500_000, "{}", b - a);
        assert_eq!(t.done_at(1, 0), b, "the legacy stream waits for everything");
        let off = SimulatedTime::new(None);
        off.launch(1, 7, 1000);
        assert_eq!(off.done_at(1, 7), 0);
    }
}
