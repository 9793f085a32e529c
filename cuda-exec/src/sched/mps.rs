//! NVIDIA MPS (Multi-Process Service): whether its control daemon runs on this host, and the environment that
//! limits one session's worker to a share of the GPU's SMs (`CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`).

use std::path::{Path, PathBuf};

/// Where MPS clients find the daemon: `CUDA_MPS_PIPE_DIRECTORY`, else NVIDIA's default.
pub fn pipe_directory() -> PathBuf {
    std::env::var_os("CUDA_MPS_PIPE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/nvidia-mps"))
}

/// The MPS daemon's state as a server sees it at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mps {
    /// The control daemon's pipe exists: the driver of every worker becomes an MPS client.
    Running(PathBuf),
    /// No daemon: the GPU time-slices between workers' contexts.
    Absent,
}

/// Looks for the control daemon's pipe (`control` in the pipe directory), which `nvidia-cuda-mps-control -d`
/// creates and removes. `VGPU_MPS=0` makes the server ignore a running daemon (for side-by-side measurements).
pub fn detect() -> Mps {
    if std::env::var("VGPU_MPS").is_ok_and(|v| v == "0") {
        return Mps::Absent;
    }
    detect_in(&pipe_directory())
}

pub fn detect_in(dir: &Path) -> Mps {
    if dir.join("control").exists() {
        Mps::Running(dir.to_path_buf())
    } else {
        Mps::Absent
    }
}

/// The SM limit a slice gets under MPS: a capped slice never more SMs than its share (MPS limits are caps: the
/// driver does not lend idle SMs beyond them, so uncapped slices get none and share the GPU by the scheduler).
pub fn sm_percent(share: f64, cap: bool) -> u32 {
    if !cap || !share.is_finite() {
        return 100;
    }
    ((share * 100.0).ceil() as u32).clamp(1, 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_is_seen_by_its_control_pipe() {
        let dir = std::env::temp_dir().join(format!("vgpu-mps-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        assert_eq!(detect_in(&dir), Mps::Absent);
        std::fs::write(dir.join("control"), b"").expect("pipe stand-in");
        assert_eq!(detect_in(&dir), Mps::Running(dir.clone()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_capped_slices_get_an_sm_limit() {
        assert_eq!(sm_percent(0.25, false), 100);
        assert_eq!(sm_percent(0.25, true), 25);
        assert_eq!(sm_percent(0.101, true), 11);
        assert_eq!(sm_percent(0.0001, true), 1);
        assert_eq!(sm_percent(f64::NAN, true), 100);
    }
}
