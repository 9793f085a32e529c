//! What vGPU's NVML shim (`libnvidia-ml.so.1`) asks of this library: the session (opened here if the app has
//! not called `cuInit`), its cached device facts, and the server's live NVML values, so both shims share one.
//!
//! NVML numbers the system's devices (every server's, servers in the order given) and, as NVIDIA's does,
//! ignores `CUDA_VISIBLE_DEVICES`: with it unset the two numberings are one; with it set, tools that map it onto
//! NVML's indices (PyTorch's device count) find the same devices CUDA shows.

use std::ffi::c_char;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::{DeviceFacts, CAP_NVML};
use vgpu_dataplane::wire::{NvmlDeviceStatus, NvmlStatusReply, NvmlSystemInfo};

use crate::client::Route;
use crate::{client, ffi};

/// Version of this bridge's functions and structs; the NVML shim refuses a `libcuda.so.1` with another.
pub const NVML_BRIDGE_VERSION: u32 = 1;

#[no_mangle]
pub extern "C" fn vgpu_nvml_bridge_version() -> u32 {
    NVML_BRIDGE_VERSION
}

/// Opens the session as `cuInit(0)` does (once per process, shared with the CUDA API); returns its CUresult.
#[no_mangle]
pub extern "C" fn vgpu_nvml_init() -> CUresult {
    client::init()
}

/// Devices of the session's system, or -1 without a session.
#[no_mangle]
pub extern "C" fn vgpu_nvml_device_count() -> i32 {
    client::session().map(|s| s.system.len() as i32).unwrap_or(-1)
}

/// The CUDA driver version the shim reports (`cuDriverGetVersion`), or -1 without a session.
#[no_mangle]
pub extern "C" fn vgpu_nvml_cuda_driver_version() -> i32 {
    match client::session() {
        Ok(_) => crate::api::reported_driver_version(),
        Err(_) => -1,
    }
}

/// Copies device `index`'s facts (`size` must be `size_of::<DeviceFacts>()`: both shims come from one build).
#[no_mangle]
pub extern "C" fn vgpu_nvml_device_facts(index: u32, out: *mut DeviceFacts, size: usize) -> CUresult {
    crate::api::code(device_facts(index, out, size))
}

fn device_facts(index: u32, out: *mut DeviceFacts, size: usize) -> CuResult<()> {
    if size != std::mem::size_of::<DeviceFacts>() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let s = client::session()?;
    let (_, facts) = s.system.get(index as usize).ok_or(CUDA_ERROR_INVALID_DEVICE)?;
    ffi::write(out, *facts)
}

/// The server's live values for device `index` (one round trip).
#[no_mangle]
pub extern "C" fn vgpu_nvml_device_status(index: u32, out: *mut NvmlStatusReply, size: usize) -> CUresult {
    crate::api::code(device_status(index, out, size))
}

fn device_status(index: u32, out: *mut NvmlStatusReply, size: usize) -> CuResult<()> {
    if size != std::mem::size_of::<NvmlStatusReply>() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let s = client::session()?;
    if s.capabilities & CAP_NVML == 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let (place, _) = s.system.get(index as usize).ok_or(CUDA_ERROR_INVALID_DEVICE)?;
    // The server's own index of the device: NVML status follows the server's list, not CUDA's numbering.
    let call = NvmlDeviceStatus {
        device: place.index,
        _pad: 0,
    };
    let reply = client::call_to(Route::Server(place.server), 0, &call, &[])?;
    ffi::write(out, reply)
}

/// The server driver's version string (NUL-terminated into `len` bytes at `out`).
#[no_mangle]
pub extern "C" fn vgpu_nvml_driver_version(out: *mut c_char, len: usize) -> CUresult {
    crate::api::code(driver_version(out, len))
}

fn driver_version(out: *mut c_char, len: usize) -> CuResult<()> {
    let s = client::session()?;
    if s.capabilities & CAP_NVML == 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let mut text = Vec::new();
    client::call_with_tail(0, &NvmlSystemInfo {}, &[], &mut text)?;
    let buf = ffi::bytes_mut(out as *mut u8, len)?;
    if buf.len() <= text.len() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    buf[..text.len()].copy_from_slice(&text);
    buf[text.len()] = 0;
    Ok(())
}
