//! Virtual memory management (`cuMemAddressReserve`, `cuMemCreate`, `cuMemMap`, ...), which PyTorch's expandable
//! segments use: every call is one synchronous round trip; the registry mirrors mappings for the pointer queries.

use std::ffi::{c_uint, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::CAP_VMM;
use vgpu_dataplane::wire::*;

use crate::state::{self, VmmHandle, VmmMapping};
use crate::{client, ffi};

/// `CUmemAllocationProp` from cuda.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct AllocationProp {
    alloc_type: u32,
    handle_types: u32,
    location_type: u32,
    location_id: i32,
    win32_handle_meta_data: usize,
    compression: u8,
    gpu_direct_rdma: u8,
    usage: u16,
    reserved: [u8; 4],
}

/// `CU_MEM_HANDLE_TYPE_WIN32` and `CU_MEM_HANDLE_TYPE_WIN32_KMT`.
const WIN32_HANDLE_TYPES: u32 = 0x2 | 0x4;

/// Reads the app's allocation properties into their wire form. The win32 pointer names memory of this process,
/// which the server cannot read: it must be NULL (cuda.h: "in all other cases, this field is required to be
/// zero"), and so no win32 handle type can be asked for.
fn read_prop(prop: *const c_void) -> CuResult<MemAllocProp> {
    let p: AllocationProp = ffi::read(prop as *const AllocationProp)?;
    if p.win32_handle_meta_data != 0 || p.handle_types & WIN32_HANDLE_TYPES != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(MemAllocProp {
        alloc_type: p.alloc_type,
        handle_types: p.handle_types,
        location_type: p.location_type,
        location_id: p.location_id,
        compression: p.compression,
        gpu_direct_rdma: p.gpu_direct_rdma,
        usage: p.usage,
        reserved: p.reserved,
    })
}

/// The session, if its server executes VMM calls (an older one would end the session on an unknown operation).
fn vmm_session() -> CuResult<()> {
    if client::session()?.capabilities & CAP_VMM == 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    Ok(())
}

/// Exporting memory to another process cannot work through vGPU: the memory is on the GPU server, where the
/// other process is not. Reported once per entry point, by name.
fn not_shareable(name: &str, once: &AtomicBool) -> CuResult<()> {
    if !once.swap(true, Ordering::Relaxed) {
        crate::log::log!(
            crate::log::WARN,
            "{name}: sharing device memory with other processes is not supported through vGPU (the memory is on \
             the GPU server); it returns CUDA_ERROR_NOT_SUPPORTED"
        );
    }
    Err(CUDA_ERROR_NOT_SUPPORTED)
}

/// Removes the mappings of [ptr, ptr+size) the server just unmapped from the registry.
fn forget_mappings(ptr: u64, size: u64) {
    let mut reg = state::write();
    let end = ptr.saturating_add(size);
    let gone: Vec<u64> = reg.vmm_mappings.range(ptr..end).map(|(&va, _)| va).collect();
    for va in gone {
        reg.device_ranges.remove(&va);
        if let Some(m) = reg.vmm_mappings.remove(&va) {
            if let Some(h) = reg.vmm_handles.get_mut(&m.handle) {
                h.mappings = h.mappings.saturating_sub(1);
            }
            reg.forget_unused_vmm(m.handle);
        }
    }
}

entry! {
    [cuMemGetAllocationGranularity] [] (granularity: *mut usize, prop: *const c_void, option: c_uint) |f| {
        vmm_session()?;
        let prop = read_prop(prop)?;
        if granularity.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let r = client::call(0, &MemGetAllocationGranularity { prop, option, _pad: 0 }, &[])?;
        ffi::write(granularity, r.granularity as usize)
    }
    [cuMemAddressReserve] [] (ptr: *mut u64, size: usize, alignment: usize, addr: u64, flags: u64) |f| {
        vmm_session()?;
        if ptr.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let call = MemAddressReserve { size: size as u64, alignment: alignment as u64, addr, flags };
        let r = client::call(0, &call, &[])?;
        ffi::write(ptr, r.dptr)
    }
    [cuMemAddressFree] [] (ptr: u64, size: usize) |f| {
        vmm_session()?;
        client::call(0, &MemAddressFree { ptr, size: size as u64 }, &[]).map(|_| ())
    }
    [cuMemCreate] [] (handle: *mut u64, size: usize, prop: *const c_void, flags: u64) |f| {
        vmm_session()?;
        let prop = read_prop(prop)?;
        if handle.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // A client-chosen id, as for every handle; synchronous all the same, so that running out of memory is
        // this call's answer, as natively.
        let id = state::new_id();
        client::call(0, &MemCreate { handle: id, size: size as u64, flags, prop }, &[])?;
        let info = VmmHandle { handle_types: prop.handle_types, refs: 1, mappings: 0 };
        state::write().vmm_handles.insert(id, info);
        ffi::write(handle, id)
    }
    [cuMemRelease] [] (handle: u64) |f| {
        vmm_session()?;
        client::call(0, &MemRelease { handle }, &[])?;
        let mut reg = state::write();
        if let Some(h) = reg.vmm_handles.get_mut(&handle) {
            h.refs = h.refs.saturating_sub(1);
        }
        reg.forget_unused_vmm(handle);
        Ok(())
    }
    [cuMemMap] [] (ptr: u64, size: usize, offset: usize, handle: u64, flags: u64) |f| {
        vmm_session()?;
        let call = MemMap { ptr, size: size as u64, offset: offset as u64, handle, flags };
        client::call(0, &call, &[])?;
        let mut reg = state::write();
        if let Some(h) = reg.vmm_handles.get_mut(&handle) {
            h.mappings += 1;
        }
        reg.vmm_mappings.insert(ptr, VmmMapping { size: size as u64, handle, access: Vec::new() });
        // Copies and memsets may name it from now on, and the pointer queries answer for it.
        reg.device_ranges.insert(ptr, size as u64);
        Ok(())
    }
    [cuMemUnmap] [] (ptr: u64, size: usize) |f| {
        vmm_session()?;
        client::call(0, &MemUnmap { ptr, size: size as u64 }, &[])?;
        forget_mappings(ptr, size as u64);
        Ok(())
    }
    [cuMemSetAccess] [] (ptr: u64, size: usize, desc: *const c_void, count: usize) |f| {
        vmm_session()?;
        if count > MAX_ACCESS_DESCS {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let record = std::mem::size_of::<MemAccessDesc>();
        // CUmemAccessDesc has MemAccessDesc's layout: the array travels as it is.
        let descs = ffi::bytes(desc as *const u8, count * record)?;
        let call = MemSetAccess { ptr, size: size as u64, count: count as u32, _pad: 0 };
        client::call(0, &call, descs)?;
        let mut reg = state::write();
        let end = ptr.saturating_add(size as u64);
        for (_, m) in reg.vmm_mappings.range_mut(ptr..end) {
            for d in descs.chunks_exact(record) {
                let id = i32::from_le_bytes([d[4], d[5], d[6], d[7]]);
                let flags = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
                m.access.retain(|&(dev, _)| dev != id);
                m.access.push((id, flags));
            }
        }
        Ok(())
    }
    [cuMemGetAccess] [] (flags: *mut u64, location: *const [u32; 2], ptr: u64) |f| {
        vmm_session()?;
        // CUmemLocation: type, id.
        let [location_type, location_id] = ffi::read(location)?;
        if flags.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let call = MemGetAccess { ptr, location_type, location_id: location_id as i32 };
        let r = client::call(0, &call, &[])?;
        ffi::write(flags, r.flags)
    }
    [cuMemGetAllocationPropertiesFromHandle] [] (prop: *mut c_void, handle: u64) |f| {
        vmm_session()?;
        if prop.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let p = client::call(0, &MemGetAllocationProperties { handle }, &[])?.prop;
        let out = AllocationProp {
            alloc_type: p.alloc_type,
            handle_types: p.handle_types,
            location_type: p.location_type,
            location_id: p.location_id,
            win32_handle_meta_data: 0,
            compression: p.compression,
            gpu_direct_rdma: p.gpu_direct_rdma,
            usage: p.usage,
            reserved: p.reserved,
        };
        ffi::write(prop as *mut AllocationProp, out)
    }
    [cuMemRetainAllocationHandle] [] (handle: *mut u64, addr: *mut c_void) |f| {
        vmm_session()?;
        if handle.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let r = client::call(0, &MemRetainAllocationHandle { addr: addr as u64 }, &[])?;
        if let Some(h) = state::write().vmm_handles.get_mut(&r.handle) {
            h.refs += 1;
        }
        ffi::write(handle, r.handle)
    }
    [cuMemExportToShareableHandle] [] (shareable: *mut c_void, handle: u64, handle_type: c_uint, flags: u64) |f| {
        static ONCE: AtomicBool = AtomicBool::new(false);
        not_shareable("cuMemExportToShareableHandle", &ONCE)
    }
    [cuMemImportFromShareableHandle] [] (handle: *mut u64, os_handle: *mut c_void, handle_type: c_uint) |f| {
        static ONCE: AtomicBool = AtomicBool::new(false);
        not_shareable("cuMemImportFromShareableHandle", &ONCE)
    }
    [cuMemGetHandleForAddressRange] [] (handle: *mut c_void, dptr: u64, size: usize, handle_type: c_uint, flags: u64) |f| {
        static ONCE: AtomicBool = AtomicBool::new(false);
        not_shareable("cuMemGetHandleForAddressRange", &ONCE)
    }
}
