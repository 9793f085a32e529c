//! What vGPU's NVML shim (`libnvidia-ml.so.1`) asks of this library: the session (opened here if the app has
//! not called `cuInit`), its cached device facts, and the server's live NVML values, so both shims share one.
//!
//! NVML numbers the system's devices (every server's, servers in the order given) and, as NVIDIA's does,
//! ignores `CUDA_VISIBLE_DEVICES`: with it unset the two numberings are one; with it set, tools that map it onto
//! NVML's indices (PyTorch's device count) find the same devices CUDA shows.

use std::ffi::c_char;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::{DeviceFacts, CAP_NVML, CAP_NVML_P2P, CAP_NVML_PCIE};
use vgpu_dataplane::wire::{
    NvmlDevicePcie, NvmlDeviceStatus, NvmlFieldRequest, NvmlFieldValue, NvmlFieldValues, NvmlP2PStatus, NvmlPcieReply,
    NvmlStatusReply, NvmlSystemInfo, MAX_NVML_FIELDS,
};

use crate::client::Route;
use crate::{client, ffi};

/// Version of this bridge's functions and structs; the NVML shim refuses a `libcuda.so.1` with another.
pub const NVML_BRIDGE_VERSION: u32 = 3;

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

/// NVML's peer status between system devices `a` and `b` for capability `index` (an `nvmlGpuP2PStatus_t` into
/// `out`): a device with itself is OK; devices of two servers are NOT_SUPPORTED (a kernel cannot reach the other
/// server's memory); two devices of one server are what that server's NVML says (one round trip), NOT_SUPPORTED
/// from a server older than `CAP_NVML_P2P`.
#[no_mangle]
pub extern "C" fn vgpu_nvml_p2p_status(a: u32, b: u32, index: u32, out: *mut u32) -> CUresult {
    crate::api::code(p2p_status(a, b, index, out))
}

fn p2p_status(a: u32, b: u32, index: u32, out: *mut u32) -> CuResult<()> {
    const STATUS_OK: u32 = 0;
    const STATUS_NOT_SUPPORTED: u32 = 5;
    let s = client::session()?;
    let (pa, _) = s.system.get(a as usize).ok_or(CUDA_ERROR_INVALID_DEVICE)?;
    let (pb, _) = s.system.get(b as usize).ok_or(CUDA_ERROR_INVALID_DEVICE)?;
    let status = if a == b {
        STATUS_OK
    } else if pa.server != pb.server
        || s.servers
            .get(pa.server)
            .is_none_or(|srv| srv.capabilities & CAP_NVML_P2P == 0)
    {
        STATUS_NOT_SUPPORTED
    } else {
        let call = NvmlP2PStatus {
            dev_a: pa.index,
            dev_b: pb.index,
            index,
            _pad: 0,
        };
        let reply = client::call_to(Route::Server(pa.server), 0, &call, &[])?;
        u32::try_from(reply.value).map_err(|_| CUDA_ERROR_UNKNOWN)?
    };
    ffi::write(out, status)
}

/// The server's PCIe link values for device `index` (one round trip).
#[no_mangle]
pub extern "C" fn vgpu_nvml_device_pcie(index: u32, out: *mut NvmlPcieReply, size: usize) -> CUresult {
    crate::api::code(device_pcie(index, out, size))
}

fn device_pcie(index: u32, out: *mut NvmlPcieReply, size: usize) -> CuResult<()> {
    if size != std::mem::size_of::<NvmlPcieReply>() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let s = client::session()?;
    if s.capabilities & CAP_NVML_PCIE == 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    if index as usize >= s.devices.len() {
        return Err(CUDA_ERROR_INVALID_DEVICE);
    }
    let reply = client::call(0, &NvmlDevicePcie { device: index, _pad: 0 }, &[])?;
    ffi::write(out, reply)
}

/// NVML field values of device `index`: `count` requests in, as many answers out (`value_size` must be
/// `size_of::<NvmlFieldValue>()`); asked of the server `MAX_NVML_FIELDS` at a time.
#[no_mangle]
pub extern "C" fn vgpu_nvml_field_values(
    index: u32,
    count: usize,
    requests: *const NvmlFieldRequest,
    out: *mut NvmlFieldValue,
    value_size: usize,
) -> CUresult {
    crate::api::code(field_values(index, count, requests, out, value_size))
}

fn field_values(
    index: u32,
    count: usize,
    requests: *const NvmlFieldRequest,
    out: *mut NvmlFieldValue,
    value_size: usize,
) -> CuResult<()> {
    if value_size != std::mem::size_of::<NvmlFieldValue>() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let s = client::session()?;
    if s.capabilities & CAP_NVML_PCIE == 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    if index as usize >= s.devices.len() {
        return Err(CUDA_ERROR_INVALID_DEVICE);
    }
    let record = std::mem::size_of::<NvmlFieldRequest>();
    let asked = ffi::bytes(
        requests as *const u8,
        count.checked_mul(record).ok_or(CUDA_ERROR_INVALID_VALUE)?,
    )?;
    let mut done = 0;
    for chunk in asked.chunks(MAX_NVML_FIELDS * record) {
        let n = chunk.len() / record;
        let mut tail = Vec::new();
        let call = NvmlFieldValues {
            device: index,
            count: n as u32,
        };
        client::call_with_tail(0, &call, chunk, &mut tail)?;
        if tail.len() != n * value_size {
            return Err(CUDA_ERROR_UNKNOWN);
        }
        let dst = ffi::bytes_mut((out as *mut u8).wrapping_add(done * value_size), tail.len())?;
        dst.copy_from_slice(&tail);
        done += n;
    }
    Ok(())
}
