//! NVML's library state: `nvmlInit`/`nvmlShutdown` reference counting over the CUDA shim's session (opened
//! once, shared with the CUDA API, never closed here), and the stable `nvmlDevice_t` handle of each device.

use std::sync::{Mutex, OnceLock};

use vgpu_cuda_sys::nvml::{nvmlDevice_t, nvmlReturn_t};
use vgpu_cuda_sys::{CUresult, NvmlResult};
use vgpu_dataplane::handshake::{DeviceFacts, MAX_DEVICES};

use crate::ffi::Bridge;

static BRIDGE: OnceLock<Result<Bridge, String>> = OnceLock::new();

/// Devices seen at the first successful `nvmlInit` (immutable for the session).
static DEVICES: OnceLock<Vec<DeviceFacts>> = OnceLock::new();

/// How many `nvmlInit` calls are not yet matched by an `nvmlShutdown`.
static INIT_COUNT: Mutex<u32> = Mutex::new(0);

fn bridge() -> NvmlResult<&'static Bridge> {
    match BRIDGE.get_or_init(Bridge::open) {
        Ok(b) => Ok(b),
        Err(why) => {
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                crate::debug(format_args!("NVML: {why}"));
            }
            Err(nvmlReturn_t::NVML_ERROR_DRIVER_NOT_LOADED)
        }
    }
}

fn count() -> std::sync::MutexGuard<'static, u32> {
    INIT_COUNT.lock().unwrap_or_else(|p| p.into_inner())
}

/// `nvmlInit`: joins the session (opening it as `cuInit` would) and reads the devices once.
pub(crate) fn init() -> NvmlResult<()> {
    let b = bridge()?;
    // The CUresult cuInit gave: the server unreachable or without GPUs (CUDA_ERROR_NO_DEVICE), the key or ticket
    // refused (CUDA_ERROR_NOT_PERMITTED), a protocol version mismatch.
    b.init().result().map_err(|code| match code {
        CUresult::CUDA_ERROR_NOT_PERMITTED => nvmlReturn_t::NVML_ERROR_NO_PERMISSION,
        CUresult::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH | CUresult::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => {
            nvmlReturn_t::NVML_ERROR_LIB_RM_VERSION_MISMATCH
        }
        _ => nvmlReturn_t::NVML_ERROR_DRIVER_NOT_LOADED,
    })?;
    if DEVICES.get().is_none() {
        let n = b
            .device_count()
            .ok_or(nvmlReturn_t::NVML_ERROR_UNKNOWN)?
            .min(MAX_DEVICES);
        let devices = (0..n)
            .map(|i| b.device_facts(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| nvmlReturn_t::NVML_ERROR_UNKNOWN)?;
        let _ = DEVICES.set(devices);
    }
    *count() += 1;
    Ok(())
}

pub(crate) fn shutdown() -> NvmlResult<()> {
    let mut n = count();
    if *n == 0 {
        return Err(nvmlReturn_t::NVML_ERROR_UNINITIALIZED);
    }
    *n -= 1;
    Ok(())
}

/// The bridge, once `nvmlInit` succeeded and until the matching `nvmlShutdown`.
pub(crate) fn ready() -> NvmlResult<&'static Bridge> {
    if *count() == 0 {
        return Err(nvmlReturn_t::NVML_ERROR_UNINITIALIZED);
    }
    bridge()
}

pub(crate) fn is_initialized() -> bool {
    *count() > 0
}

pub(crate) fn devices() -> NvmlResult<&'static [DeviceFacts]> {
    ready()?;
    DEVICES
        .get()
        .map(Vec::as_slice)
        .ok_or(nvmlReturn_t::NVML_ERROR_UNINITIALIZED)
}

/// One word per possible device: the address of slot i is device i's `nvmlDevice_t`, the same for the life
/// of the process (programs compare and cache handles).
static HANDLES: [u64; MAX_DEVICES as usize] = [0; MAX_DEVICES as usize];

pub(crate) fn handle_of(index: usize) -> nvmlDevice_t {
    std::ptr::addr_of!(HANDLES[index.min(HANDLES.len() - 1)]) as nvmlDevice_t
}

/// The device index a handle names, if it is one of ours and that device exists.
pub(crate) fn index_of(handle: nvmlDevice_t) -> NvmlResult<usize> {
    let base = HANDLES.as_ptr() as usize;
    let offset = (handle as usize).wrapping_sub(base);
    let slot = std::mem::size_of::<u64>();
    let index = offset / slot;
    if handle.is_null() || !offset.is_multiple_of(slot) || index >= HANDLES.len() {
        return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
    }
    if index >= devices()?.len() {
        return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
    }
    Ok(index)
}
