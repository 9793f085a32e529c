//! vGPU's `libcuda.so.1`: every entry point of CUDA 13.0's driver API, remoted to a vGPU server.
//! Implemented calls live in `api`; every other exported name answers `CUDA_ERROR_NOT_SUPPORTED` (see `exports`).

mod api;
mod client;
mod coll_bridge;
mod dark;
mod exports;
mod ffi;
mod log;
mod mirror;
mod nvml_bridge;
mod proc_address;
mod state;
mod ticket;
mod va;
mod visible;

/// Lets the server (and `vgpu run`) tell this shim apart from NVIDIA's driver when both are named libcuda.so.1.
#[no_mangle]
pub static vgpu_shim_marker: u32 = 0x5647_5055;

/// Which backend this process's session runs on: -1 before a successful `cuInit`, 0 a real GPU, 1 the emulated
/// backend. Lets the bundled sample and benchmarks say what they measured.
#[no_mangle]
pub extern "C" fn vgpu_session_backend() -> i32 {
    client::session().map(|s| s.backend as i32).unwrap_or(-1)
}

/// Bytes this process has sent to and received from its servers over all channels so far (requests, replies,
/// copy data): lets a benchmark show that a copy between two servers' devices moves none of its bytes through
/// the client. Either pointer may be NULL.
#[no_mangle]
pub extern "C" fn vgpu_client_traffic(sent: *mut u64, received: *mut u64) {
    let (s, r) = client::traffic();
    let _ = ffi::write(sent, s);
    let _ = ffi::write(received, r);
}

/// What the fuzzing harness (`fuzz/`) drives: a channel it can feed a hostile server's frames, and the table of
/// async copies' landing places. Not part of the driver API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::client::{pending_clear, pending_register, Channel, Landing, Server};
}

/// Traffic counter `index` of this process's session (`client::stats`: 0 round trips, 1 batch flushes, 2 async
/// calls, 3 bytes sent, 4 bytes received, 5 ns spent waiting for replies, 6 channels striped over lanes); `u64::MAX` past the last. Lets `vgpu
/// bench` and the PyTorch workloads count the round trips each step pays.
#[no_mangle]
pub extern "C" fn vgpu_stat(index: u32) -> u64 {
    client::stats::get(index as usize).unwrap_or(u64::MAX)
}

/// The name of counter `index` (a static NUL-terminated string), NULL past the last.
#[no_mangle]
pub extern "C" fn vgpu_stat_name(index: u32) -> *const std::ffi::c_char {
    client::stats::NAMES
        .get(index as usize)
        .map_or(std::ptr::null(), |n| n.as_ptr())
}

/// All counters and the synchronous requests by call as one JSON object, written NUL-terminated into `buf` (at most
/// `capacity` bytes, cut short if it does not fit); returns the full length with its NUL, so a caller can retry.
#[no_mangle]
pub extern "C" fn vgpu_stats_json(buf: *mut std::ffi::c_char, capacity: usize) -> usize {
    let text = client::stats::json();
    if capacity > 0 {
        if let Ok(out) = ffi::bytes_mut(buf as *mut u8, capacity) {
            let n = text.len().min(capacity - 1);
            out[..n].copy_from_slice(&text.as_bytes()[..n]);
            out[n] = 0;
        }
    }
    text.len() + 1
}

/// With `VGPU_STATS=PATH` (`%p` in it becomes the process id), appends the counters as one JSON line to PATH when
/// the process exits, so any program's round trips can be read without changing it.
fn report_stats_at_exit() {
    extern "C" fn write_stats() {
        let Some(path) = std::env::var_os("VGPU_STATS") else {
            return;
        };
        let path = path.to_string_lossy().replace("%p", &std::process::id().to_string());
        let line = client::stats::json() + "\n";
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        if let Err(e) = written {
            eprintln!("vgpu: cannot write VGPU_STATS to {path}: {e}");
        }
    }
    if std::env::var_os("VGPU_STATS").is_some() {
        // SAFETY: registers a function without arguments that touches only atomics, the environment and a file;
        // called once per process (from cuInit's one session set-up).
        unsafe { libc::atexit(write_stats) };
    }
}
