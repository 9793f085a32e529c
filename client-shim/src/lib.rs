//! vGPU's `libcuda.so.1`: every entry point of CUDA 13.0's driver API, remoted to a vGPU server.
//! Implemented calls live in `api`; every other exported name answers `CUDA_ERROR_NOT_SUPPORTED` (see `exports`).

mod api;
mod client;
mod dark;
mod exports;
mod ffi;
mod log;
mod mirror;
mod nvml_bridge;
mod proc_address;
mod state;
mod ticket;

/// Lets the server (and `vgpu run`) tell this shim apart from NVIDIA's driver when both are named libcuda.so.1.
#[no_mangle]
pub static vgpu_shim_marker: u32 = 0x5647_5055;

/// Which backend this process's session runs on: -1 before a successful `cuInit`, 0 a real GPU, 1 the emulated
/// backend. Lets the bundled sample and benchmarks say what they measured.
#[no_mangle]
pub extern "C" fn vgpu_session_backend() -> i32 {
    client::session().map(|s| s.backend as i32).unwrap_or(-1)
}

/// What the fuzzing harness (`fuzz/`) drives: a channel it can feed a hostile server's frames, and the table of
/// async copies' landing places. Not part of the driver API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::client::{pending_clear, pending_register, Channel, Landing};
}
