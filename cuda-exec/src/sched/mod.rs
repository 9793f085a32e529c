//! Enforced GPU sharing: one scheduler per GPU, shared by every worker process of the server, that decides when
//! each session's submitted work reaches the driver, from GPU time measured on the GPU. Design: `bench/NOTES.md` §10.
//!
//! The server creates the shared table (`table::Region`, a memfd) at start and hands it to every worker it spawns
//! (the pre-started spare included); it claims one slot per GPU for each session from the session's ticket and
//! frees it when the worker exits. In the worker, each channel thread calls `ChannelGate::submit` before a launch,
//! memset or device-to-device copy reaches the backend and `ChannelGate::sync_point` before a synchronous call; a
//! monitor thread per session reads the batches' events back and charges the session (`policy::complete`).

pub mod gate;
#[cfg(test)]
mod gate_tests;
pub mod host;
pub mod mps;
pub mod plans;
pub mod policy;
#[cfg(test)]
mod sim;
pub mod table;

pub use gate::{ChannelGate, SessionSched, Work};
pub use table::{Region, SlotConfig};

/// How the server shares its GPUs, for its start-up line and the session log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sharing {
    /// `VGPU_SCHED=off`: no scheduler; the driver decides (time-slicing, or MPS if its daemon runs).
    Off,
    /// The scheduler on a time-sliced GPU.
    TimeSliced,
    /// The scheduler, with the MPS daemon running (pipe directory): kernels of different sessions run side by side,
    /// capped slices get an SM limit.
    Mps(std::path::PathBuf),
}

impl Sharing {
    /// From `VGPU_SCHED` (`off` disables the scheduler) and, on a real GPU, the MPS daemon's presence.
    pub fn detect(real_gpu: bool) -> Sharing {
        if std::env::var("VGPU_SCHED").is_ok_and(|v| v == "off" || v == "0") {
            return Sharing::Off;
        }
        match (real_gpu, mps::detect()) {
            (true, mps::Mps::Running(dir)) => Sharing::Mps(dir),
            _ => Sharing::TimeSliced,
        }
    }

    pub fn mode(&self) -> u32 {
        match self {
            Sharing::Off => table::MODE_OFF,
            Sharing::TimeSliced => table::MODE_TIME_SLICED,
            Sharing::Mps(_) => table::MODE_MPS,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Sharing::Off => "scheduler off (VGPU_SCHED=off): the driver shares the GPU; shares are not enforced".into(),
            Sharing::TimeSliced => {
                "scheduler on, time-sliced (no MPS daemon): compute shares, caps and priority classes enforced from GPU \
                 time measured per session"
                    .into()
            }
            Sharing::Mps(dir) => format!(
                "scheduler on, with MPS (daemon at {}): capped slices limited to their share of SMs \
                 (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE), shares and priority classes enforced by the scheduler",
                dir.display()
            ),
        }
    }
}
