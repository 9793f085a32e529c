//! The gate, its batches and the monitor in one process, on emulated backends whose kernels take simulated time
//! (`VGPU_EMULATED_KERNEL_NS`'s model) on one shared device timeline: several sessions as threads, the real path.

use vgpu_dataplane::wire::LaunchShape;

use crate::backend::{DriverOps, Stream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::table::*;
use super::{SessionSched, Work};
use crate::backend::Backend;
use crate::emulated::EmulatedBackend;
use crate::emulated_time::KernelCost;

const PTX: &[u8] = b".version 7.0\n.target sm_70\n.address_size 64\n.visible .entry spin()\n{\n ret;\n}\n\0";
const KERNEL_NS: u64 = 200_000;

struct Tenant {
    backend: Arc<EmulatedBackend>,
    sched: Arc<SessionSched>,
    slot: usize,
    launched: Arc<AtomicU64>,
}

fn tenant(region: &'static Region, cfg: SlotConfig) -> Tenant {
    let backend = Arc::new(EmulatedBackend::with_kernel_cost(KernelCost {
        base_ns: KERNEL_NS,
        per_block_ns: 0,
    }));
    backend.share_device_timeline(&region.gpus[0].emulated_busy_until);
    let slot = region.gpus[0]
        .claim(&cfg, crate::sys::monotonic_ns(), region.params().quantum_ns)
        .expect("a slot");
    let dynb: Arc<dyn Backend> = backend.clone();
    let sched = SessionSched::new(region, dynb, vec![Some(slot)], &[0]);
    Tenant {
        backend,
        sched,
        slot,
        launched: Arc::new(AtomicU64::new(0)),
    }
}

/// Runs `tenants` as threads for `for_ms`: each launches kernels through its gate, synchronising every 10.
fn run(tenants: &[Tenant], for_ms: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in tenants {
        let (backend, sched, launched, stop) = (t.backend.clone(), t.sched.clone(), t.launched.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let ctx = backend.primary_ctx_retain(0).expect("context");
            backend.ctx_set_current(ctx).expect("current");
            let (_, functions) = backend.module_load(PTX).expect("module");
            let f = functions[0].handle;
            let gate = sched.gate();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                gate.submit(0, Work::Launch);
                let shape = LaunchShape {
                    grid: [1, 1, 1],
                    block: [1, 1, 1],
                    ..Default::default()
                };
                backend.launch(f, Stream::NULL, &shape, &mut [], &[]).expect("launch");
                n += 1;
                launched.store(n, Ordering::Relaxed);
                if n.is_multiple_of(10) {
                    gate.sync_point();
                    backend.stream_synchronize(Stream::NULL).expect("sync");
                }
            }
            gate.sync_point();
            backend.ctx_synchronize().expect("sync");
        }));
    }
    std::thread::sleep(Duration::from_millis(for_ms));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("tenant thread");
    }
    // Let the monitors read the last batches.
    std::thread::sleep(Duration::from_millis(50));
}

fn charged(region: &Region, t: &Tenant) -> u64 {
    region.gpus[0].slots[t.slot].charged.load(Ordering::Acquire)
}

#[test]
fn a_lone_session_is_charged_the_simulated_time_of_its_kernels() {
    // The measurement needs a busy simulated GPU; on a loaded CI machine the tenant thread may not get enough CPU
    // to keep it busy, so a run that left it mostly idle is repeated (up to three times) rather than judged.
    let mut idle_runs = Vec::new();
    for _ in 0..3 {
        let region: &'static Region = Box::leak(Region::boxed(MODE_TIME_SLICED));
        let t = tenant(region, SlotConfig::default());
        let start = Instant::now();
        run(std::slice::from_ref(&t), 600);
        let wall = start.elapsed().as_nanos() as f64;
        let kernels = t.launched.load(Ordering::Relaxed) as f64;
        let work = kernels * KERNEL_NS as f64;
        if work <= 0.5 * wall {
            idle_runs.push(format!("{work:.3e} ns of kernels in {wall:.3e} ns"));
            continue;
        }
        let c = charged(region, &t) as f64;
        assert!(
            (c - work).abs() / work < 0.1,
            "charged {c:.3e} ns for {work:.3e} ns of kernels"
        );
        return;
    }
    panic!("the simulated GPU stayed mostly idle in every run: {idle_runs:?}");
}

#[test]
fn two_sessions_get_one_and_three_quarters_of_the_simulated_gpu() {
    let region: &'static Region = Box::leak(Region::boxed(MODE_TIME_SLICED));
    let a = tenant(
        region,
        SlotConfig {
            share: 0.25,
            ..Default::default()
        },
    );
    let b = tenant(
        region,
        SlotConfig {
            share: 0.75,
            ..Default::default()
        },
    );
    let tenants = [a, b];
    run(&tenants, 1500);
    let done: Vec<f64> = tenants
        .iter()
        .map(|t| t.launched.load(Ordering::Relaxed) as f64)
        .collect();
    let share = done[0] / (done[0] + done[1]);
    let c: Vec<f64> = tenants.iter().map(|t| charged(region, t) as f64).collect();
    assert!(
        (share - 0.25).abs() < 0.05,
        "launches {done:?}: first tenant share {share:.3}; charged {c:?}"
    );
    let c: Vec<f64> = tenants.iter().map(|t| charged(region, t) as f64).collect();
    let charged_share = c[0] / (c[0] + c[1]);
    assert!((charged_share - 0.25).abs() < 0.05, "charged {c:?}");
}

#[test]
fn with_the_scheduler_off_a_session_is_neither_gated_nor_measured() {
    let region: &'static Region = Box::leak(Region::boxed(MODE_OFF));
    let a = tenant(
        region,
        SlotConfig {
            share: 0.1,
            cap: true,
            ..Default::default()
        },
    );
    run(std::slice::from_ref(&a), 300);
    assert!(
        a.launched.load(Ordering::Relaxed) > 500,
        "{}",
        a.launched.load(Ordering::Relaxed)
    );
    assert_eq!(charged(region, &a), 0);
}
