//! The server's side of the scheduler: the shared table it makes at start and hands to every worker, the slots it
//! claims for each session from its limits (and frees when the worker exits), and the worker's view of them.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::table::{Region, SlotConfig, DEFAULT_GRACE_NS, DEFAULT_QUANTUM_NS, MAX_GPUS, MODE_MPS, MODE_OFF};
use super::{SessionSched, Sharing};
use crate::backend::Backend;
use crate::session::Limits;

/// A handoff's slot for a device the session is not scheduled on.
pub const NO_SLOT: u16 = u16::MAX;
/// Devices a handoff names slots for.
const HANDOFF_DEVICES: usize = 16;

/// The scheduler's shared table, made at start and handed to every worker.
pub struct SchedShared {
    map: crate::sys::SharedRegion,
    fd: OwnedFd,
    pub sharing: Sharing,
    /// Devices of this server (the tables in use).
    devices: usize,
}

/// A session's slots: (server ordinal, slot) in the client's order, and the SM limit its worker needs under MPS.
pub struct Claim {
    pub slots: Vec<(usize, Option<usize>)>,
    pub sm_percent: u32,
}

impl SchedShared {
    /// Makes the table: `VGPU_SCHED=off` leaves every GPU unscheduled (the table still carries the emulated
    /// backend's shared device timeline); `VGPU_SCHED_QUANTUM_US` and `VGPU_SCHED_GRACE_US` tune it.
    pub fn create(real_gpu: bool, devices: usize) -> Result<SchedShared, String> {
        let sharing = Sharing::detect(real_gpu);
        let len = std::mem::size_of::<Region>();
        let fd = crate::sys::sealed_memfd(c"vgpu-sched", len).map_err(|e| format!("memfd: {e}"))?;
        let map = crate::sys::SharedRegion::map(&fd, len, 0).map_err(|e| format!("mmap: {e}"))?;
        let region = map.init_sched_region().ok_or("the mapping is too small")?;
        let us = |name: &str, default_ns: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(default_ns, |us| us.saturating_mul(1000))
        };
        region
            .settings
            .quantum_ns
            .store(us("VGPU_SCHED_QUANTUM_US", DEFAULT_QUANTUM_NS), Ordering::Relaxed);
        region
            .settings
            .grace_ns
            .store(us("VGPU_SCHED_GRACE_US", DEFAULT_GRACE_NS), Ordering::Relaxed);
        if devices > MAX_GPUS {
            tracing::warn!("{devices} GPUs: the scheduler covers the first {MAX_GPUS}");
        }
        for g in region.gpus.iter().take(devices.min(MAX_GPUS)) {
            g.mode.store(sharing.mode(), Ordering::Release);
        }
        Ok(SchedShared {
            map,
            fd,
            sharing,
            devices: devices.min(MAX_GPUS),
        })
    }

    pub fn region(&self) -> Option<&Region> {
        self.map.sched_region()
    }

    /// The table's descriptor, which every worker inherits.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether sessions are scheduled (and metered) at all.
    pub fn scheduling(&self) -> bool {
        self.sharing != Sharing::Off
    }
}

/// Claims the session's slot on each GPU it sees (nothing without a table).
pub fn claim(shared: Option<&SchedShared>, limits: &Limits) -> Claim {
    let none = Claim {
        slots: Vec::new(),
        sm_percent: 100,
    };
    let Some(sched) = shared else { return none };
    let Some(region) = sched.region() else { return none };
    let visible: Vec<usize> = match &limits.devices {
        Some(list) => list.iter().map(|&d| d as usize).collect(),
        None => (0..sched.devices).collect(),
    };
    let now = crate::sys::monotonic_ns();
    let quantum = region.params().quantum_ns;
    let mps = matches!(sched.sharing, Sharing::Mps(_));
    let mut sm = 100;
    let mut slots = Vec::new();
    for (i, &d) in visible.iter().enumerate() {
        let mut cfg = limits.sharing.get(i).copied().unwrap_or_default();
        cfg.sm_percent = if mps {
            super::mps::sm_percent(cfg.share, cfg.cap)
        } else {
            100
        };
        sm = sm.min(cfg.sm_percent);
        let slot = region.gpus.get(d).and_then(|g| g.claim(&cfg, now, quantum));
        if slot.is_none() && d < sched.devices {
            tracing::warn!("GPU {d}: all scheduler slots are taken; this session runs unscheduled there");
        }
        slots.push((d, slot));
    }
    Claim { slots, sm_percent: sm }
}

/// Frees a session's slots after its worker exited (whatever state it died in).
pub fn release(shared: Option<&SchedShared>, slots: &[(usize, Option<usize>)]) {
    let Some(region) = shared.and_then(SchedShared::region) else {
        return;
    };
    let now = crate::sys::monotonic_ns();
    for &(d, slot) in slots {
        if let (Some(g), Some(slot)) = (region.gpus.get(d), slot) {
            g.release(slot, now);
        }
    }
}

/// GPU nanoseconds charged so far on each of a session's slots.
pub fn charged(shared: Option<&SchedShared>, slots: &[(usize, Option<usize>)]) -> Vec<u64> {
    let region = shared.and_then(SchedShared::region);
    slots
        .iter()
        .map(|&(d, slot)| match (region, slot) {
            (Some(r), Some(slot)) => r
                .gpus
                .get(d)
                .map_or(0, |g| g.slots[slot].charged.load(Ordering::Acquire)),
            _ => 0,
        })
        .collect()
}

/// In the worker: the session's part of the scheduler, when it has a slot on a scheduled GPU (`slots`: the
/// handoff's slot by server ordinal); logs how the session shares each GPU.
pub fn session_sched(
    region: &'static Region,
    backend: &Arc<dyn Backend>,
    session_id: u64,
    slots: &[u16],
    limits: &Limits,
) -> Option<Arc<SessionSched>> {
    let visible: Vec<usize> = match &limits.devices {
        Some(list) => list.iter().map(|&d| d as usize).collect(),
        None => (0..backend.devices().len()).collect(),
    };
    let mut by_ordinal = vec![None; backend.devices().len().min(HANDOFF_DEVICES)];
    let mut any = false;
    for &d in &visible {
        let (Some(&slot), Some(g)) = (slots.get(d), region.gpus.get(d)) else {
            continue;
        };
        let mode = g.mode.load(Ordering::Acquire);
        if slot == NO_SLOT || mode == MODE_OFF || d >= by_ordinal.len() {
            continue;
        }
        let Some(sl) = g.slots.get(usize::from(slot)) else {
            continue;
        };
        by_ordinal[d] = Some(usize::from(slot));
        any = true;
        tracing::info!(
            "session {session_id:016x}: GPU {d}: {} share {:.3}{}{}; {}",
            SlotConfig::class_name(sl.class()),
            sl.share_ppm() as f64 / 1e6,
            if sl.capped() { " capped" } else { "" },
            match sl.sm_percent.load(Ordering::Relaxed) {
                100 => String::new(),
                p => format!(", MPS SM limit {p} %"),
            },
            if mode == MODE_MPS {
                "scheduler with MPS"
            } else {
                "time-sliced scheduler"
            }
        );
    }
    any.then(|| SessionSched::new(region, backend.clone(), by_ordinal, &visible))
}

#[cfg(test)]
mod tests {
    use super::super::table::{CLASS_GUARANTEED, CLASS_PREEMPTIBLE};
    use super::*;

    #[test]
    fn a_session_gets_a_slot_per_gpu_it_sees_with_its_plan_and_gives_them_back() {
        let shared = SchedShared::create(false, 2).expect("table");
        let region = shared.region().expect("mapped");
        let limits = Limits {
            devices: Some(vec![1]),
            sharing: vec![SlotConfig {
                class: CLASS_GUARANTEED,
                share: 0.3,
                cap: true,
                sm_percent: 100,
            }],
            ..Default::default()
        };
        let c = claim(Some(&shared), &limits);
        assert_eq!(c.sm_percent, 100, "no MPS here");
        assert_eq!(c.slots.len(), 1);
        let (d, slot) = c.slots[0];
        let slot = slot.expect("a slot");
        assert_eq!(d, 1);
        let s = &region.gpus[1].slots[slot];
        assert_eq!(
            (s.class(), s.share_ppm(), s.capped()),
            (CLASS_GUARANTEED, 300_000, true)
        );
        s.charged.store(1234, Ordering::Release);
        assert_eq!(charged(Some(&shared), &c.slots), vec![1234]);
        // A keyless session sees both GPUs with the default plan.
        let all = claim(Some(&shared), &Limits::default());
        assert_eq!(all.slots.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0, 1]);
        let other = all.slots[1].1.expect("slot");
        assert_ne!(other, slot);
        assert_eq!(region.gpus[1].slots[other].class(), super::super::table::CLASS_BURST);
        release(Some(&shared), &c.slots);
        release(Some(&shared), &all.slots);
        assert_eq!(region.gpus[1].slots[slot].in_use.load(Ordering::Acquire), 0);
        assert_eq!(region.gpus[1].ps_sessions.load(Ordering::Acquire), 0);
        // Released slots are claimed again (64 sessions per GPU, not 64 in the server's life).
        for _ in 0..200 {
            let c = claim(
                Some(&shared),
                &Limits {
                    devices: Some(vec![0]),
                    sharing: vec![SlotConfig {
                        class: CLASS_PREEMPTIBLE,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            );
            assert!(c.slots[0].1.is_some());
            release(Some(&shared), &c.slots);
        }
    }

    #[test]
    fn a_worker_sees_its_slots_through_the_handoff() {
        let shared = SchedShared::create(false, 1).expect("table");
        let c = claim(Some(&shared), &Limits::default());
        let mut by_ordinal = [NO_SLOT; HANDOFF_DEVICES];
        by_ordinal[0] = c.slots[0].1.expect("slot") as u16;
        // The worker maps the same memfd.
        let region = super::super::gate::attach_region(&shared.fd).expect("attach");
        let backend: Arc<dyn Backend> = Arc::new(crate::emulated::EmulatedBackend::new());
        assert!(session_sched(region, &backend, 7, &by_ordinal, &Limits::default()).is_some());
        assert!(session_sched(region, &backend, 7, &[NO_SLOT; HANDOFF_DEVICES], &Limits::default()).is_none());
        release(Some(&shared), &c.slots);
    }
}
