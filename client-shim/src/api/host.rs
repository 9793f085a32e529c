//! Page-locked host memory: `cuMemAllocHost`/`cuMemHostAlloc` (shared with the server on shared-memory sessions,
//! else mirrored on it at the same address, `mirror`) and `cuMemHostRegister`, with the queries on them.

use std::ffi::{c_uint, c_void};

use vgpu_cuda_sys::driver::{
    CU_MEMHOSTALLOC_DEVICEMAP, CU_MEMHOSTALLOC_PORTABLE, CU_MEMHOSTALLOC_WRITECOMBINED, CU_MEMHOSTREGISTER_DEVICEMAP,
    CU_MEMHOSTREGISTER_IOMEMORY, CU_MEMHOSTREGISTER_PORTABLE, CU_MEMHOSTREGISTER_READ_ONLY,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::need_ctx;
use crate::client::Route;
use crate::{client, ffi, mirror, state};

/// Every `cuMemHostAlloc` flag.
const HOST_ALLOC_FLAGS: u32 = CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_WRITECOMBINED;
/// Every `cuMemHostRegister` flag.
const HOST_REGISTER_FLAGS: u32 = CU_MEMHOSTREGISTER_PORTABLE
    | CU_MEMHOSTREGISTER_DEVICEMAP
    | CU_MEMHOSTREGISTER_IOMEMORY
    | CU_MEMHOSTREGISTER_READ_ONLY;

/// On a shared-memory session, pinned memory lives in a memfd the server maps and registers with the driver,
/// so the GPU copies straight to and from the app's buffer and kernels reach it, as natively. `None` (fall back
/// to mirrored memory): not a local session, turned off with `VGPU_SHM_PINNED=0`, or the server could not map
/// it (at the same address) or pin it.
pub(super) fn shared_alloc(flags: u16, size: usize, same_address: bool, host_flags: u32) -> Option<*mut u8> {
    use std::os::fd::AsFd;
    static NEXT_REGION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    // Shared with the current context's server (copies with other servers' devices go through the ring).
    let server = client::current_server();
    if !client::server_is_local(server) || std::env::var("VGPU_SHM_PINNED").is_ok_and(|v| v == "0") {
        return None;
    }
    let (ptr, fd) = ffi::alloc_shared(size).ok()?;
    let id = RegionId(NEXT_REGION.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    // Pinned memory the app can hand to kernels must sit at the same address in the server, where the driver
    // maps it for the device (unified addressing: device pointer == host pointer).
    let addr = if same_address { ptr as u64 } else { 0 };
    let call = HostRegionMap {
        id,
        size: size as u64,
        addr: HostAddr(addr),
    };
    match client::call_with_fd(Route::Server(server), flags, &call, fd.as_fd(), id.get()) {
        Ok(_) => {
            let mut reg = state::write();
            reg.host_allocs.insert(ptr as usize, size);
            reg.host_alloc_flags.insert(ptr as usize, host_flags);
            reg.shared_regions.insert(ptr as usize, (id, size, server));
            Some(ptr)
        }
        Err(_) => {
            ffi::free_shared(ptr, size);
            None
        }
    }
}

/// What cuMemHostGetFlags reports for memory from cuMemHostAlloc(`flags`), as NVIDIA's driver does (H100,
/// driver 580): every allocation is mapped under unified addressing, so DEVICEMAP is always reported;
/// WRITECOMBINED as asked; PORTABLE only when it was asked for without DEVICEMAP (0 -> 0x2, PORTABLE -> 0x3,
/// WRITECOMBINED -> 0x6, PORTABLE | DEVICEMAP -> 0x2).
fn reported_host_alloc_flags(flags: u32) -> u32 {
    let portable = if flags & CU_MEMHOSTALLOC_DEVICEMAP == 0 {
        flags & CU_MEMHOSTALLOC_PORTABLE
    } else {
        0
    };
    CU_MEMHOSTALLOC_DEVICEMAP | (flags & CU_MEMHOSTALLOC_WRITECOMBINED) | portable
}

/// Page-locked host memory for cuMemAllocHost/cuMemHostAlloc: page-aligned, zeroed, and mirrored on the
/// server at the same address so kernels can use it as natively (`mirror`). Copies to and from it stage
/// through the server's own buffers like any host memory.
fn host_alloc(out: *mut *mut c_void, size: usize, flags: u32) -> CuResult<()> {
    need_ctx()?;
    if out.is_null() || size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let len = mirror::page_round(size).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
    if let Some(ptr) = shared_alloc(0, len, true, flags) {
        return ffi::write(out, ptr as *mut c_void);
    }
    let (ptr, _) = mirror::alloc(len)?;
    // Listed for transports that read and write it in place (RDMA registers it once, on first use).
    vgpu_dataplane::pinned::add(ptr, len);
    let mut reg = state::write();
    reg.host_allocs.insert(ptr, len);
    reg.host_alloc_flags.insert(ptr, flags);
    drop(reg);
    ffi::write(out, ptr as *mut c_void)
}

fn host_register(ptr: *mut c_void, size: usize, flags: c_uint) -> CuResult<()> {
    need_ctx()?;
    if ptr.is_null() || size == 0 || flags & !HOST_REGISTER_FLAGS != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let base = ptr as usize;
    let end = base.checked_add(size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let mut reg = state::write();
    let overlaps = reg
        .host_registered
        .range(..end)
        .next_back()
        .is_some_and(|(&b, &(len, _))| b + len > base);
    if overlaps {
        return Err(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
    }
    // Copies stage through the server's own pinned buffers; the range is recorded for the queries
    // (cuMemHostGetDevicePointer, cuPointerGetAttribute) and mirrored for kernels where the server can.
    reg.host_registered.insert(base, (size, flags));
    drop(reg);
    vgpu_dataplane::pinned::add(base, size);
    mirror::register(base, size);
    Ok(())
}

entry! {
    cuMemAllocHost_v2 => |f, out, size| {
        // Memory from cuMemAllocHost is portable and mapped, as with cuMemHostAlloc(PORTABLE | DEVICEMAP).
        host_alloc(out, size, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP)
    }
    cuMemHostAlloc => |f, out, size, flags| {
        if flags & !HOST_ALLOC_FLAGS != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        host_alloc(out, size, flags)
    }
    cuMemFreeHost => |f, ptr| {
        client::session()?;
        let (size, shared) = {
            let mut reg = state::write();
            reg.host_alloc_flags.remove(&(ptr as usize));
            let size = reg.host_allocs.remove(&(ptr as usize)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            (size, reg.shared_regions.remove(&(ptr as usize)))
        };
        // Removed from the registry above, so it is freed exactly once.
        match shared {
            Some((id, _, server)) => {
                // The server waits for copies still using it and unpins it before this process unmaps it.
                let unmapped = client::call_to(Route::Server(server), f, &HostRegionUnmap { id }, &[]).map(|_| ());
                ffi::free_shared(ptr as *mut u8, size);
                unmapped
            }
            None => {
                vgpu_dataplane::pinned::remove(ptr as usize);
                mirror::free(ptr as usize, size);
                Ok(())
            }
        }
    }
    cuMemHostRegister, cuMemHostRegister_v2 => |f, ptr, size, flags| {
        host_register(ptr, size, flags)
    }
    cuMemHostUnregister => |f, ptr| {
        need_ctx()?;
        if ptr.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // The registry's lock is released before the mirror goes: forgetting it routes a call by pointer, which
        // reads the registry again.
        let removed = state::write().host_registered.remove(&(ptr as usize));
        match removed {
            Some(_) => {
                vgpu_dataplane::pinned::remove(ptr as usize);
                mirror::forget(ptr as usize);
                Ok(())
            }
            None => Err(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED),
        }
    }
    cuMemHostGetDevicePointer_v2 => |f, out, host, flags| {
        need_ctx()?;
        if out.is_null() || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // Unified addressing: mapped host memory has the same address on the device; the server's mirror
        // sits at that address (`mirror`), where it could be placed there.
        state::read().host_range(host as usize).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let dptr = match mirror::find(host as usize) {
            Some(m) => m.dptr + (host as usize - m.base) as u64,
            None => host as u64,
        };
        ffi::write(out, dptr)
    }
    cuMemHostGetFlags => |f, out, host| {
        need_ctx()?;
        let reg = state::read();
        let (base, _, flags) = reg.host_range(host as usize).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let flags = if reg.host_allocs.contains_key(&base) { reported_host_alloc_flags(flags) } else { flags };
        drop(reg);
        ffi::write(out, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_alloc_flags_are_reported_as_the_driver_does() {
        // Observed on an H100 (driver 580) through cudaHostGetFlags.
        assert_eq!(reported_host_alloc_flags(0), 0x2);
        assert_eq!(reported_host_alloc_flags(0x1), 0x3);
        assert_eq!(reported_host_alloc_flags(0x4), 0x6);
        assert_eq!(reported_host_alloc_flags(0x3), 0x2);
    }
}
