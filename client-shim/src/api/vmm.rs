//! Virtual memory management (`cuMemAddressReserve`, `cuMemCreate`, `cuMemMap`, ...), which PyTorch's expandable
//! segments use: every call is one synchronous round trip; the registry mirrors mappings for the pointer queries.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicBool, Ordering};

use vgpu_cuda_sys::driver::{
    CUmemAccessDesc, CUmemAllocationHandleType, CUmemAllocationProp, CUmemAllocationType, CUmemLocation,
    CUmemLocationType,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::CAP_VMM;
use vgpu_dataplane::wire::*;

use super::{route_of_object, route_of_ptr};
use crate::client::Route;
use crate::state::{self, VmmHandle, VmmMapping};
use crate::{client, ffi};

/// Handle types that name memory by a Windows handle of this process.
const WIN32_HANDLE_TYPES: u32 =
    CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_WIN32.0 | CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_WIN32_KMT.0;

/// Reads the app's allocation properties into their wire form. The win32 pointer names memory of this process,
/// which the server cannot read: it must be NULL (cuda.h: "in all other cases, this field is required to be
/// zero"), and so no win32 handle type can be asked for.
fn read_prop(prop: *const CUmemAllocationProp) -> CuResult<MemAllocProp> {
    let p: CUmemAllocationProp = ffi::read(prop)?;
    if !p.win32HandleMetaData.is_null() || p.requestedHandleTypes.0 & WIN32_HANDLE_TYPES != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(MemAllocProp {
        alloc_type: p.type_.0,
        handle_types: p.requestedHandleTypes.0,
        location_type: p.location.type_.0,
        location_id: p.location.id,
        compression: p.allocFlags.compressionType,
        gpu_direct_rdma: p.allocFlags.gpuDirectRDMACapable,
        usage: p.allocFlags.usage,
        reserved: p.allocFlags.reserved,
    })
}

/// The app's allocation properties from their wire form (the win32 pointer, which never travels, is NULL).
fn write_prop(out: *mut CUmemAllocationProp, p: MemAllocProp) -> CuResult<()> {
    let mut prop = CUmemAllocationProp {
        type_: CUmemAllocationType(p.alloc_type),
        requestedHandleTypes: CUmemAllocationHandleType(p.handle_types),
        location: CUmemLocation {
            type_: CUmemLocationType(p.location_type),
            id: p.location_id,
        },
        ..Default::default()
    };
    prop.allocFlags.compressionType = p.compression;
    prop.allocFlags.gpuDirectRDMACapable = p.gpu_direct_rdma;
    prop.allocFlags.usage = p.usage;
    prop.allocFlags.reserved = p.reserved;
    ffi::write(out, prop)
}

/// The session, if its server executes VMM calls (an older one would end the session on an unknown operation).
pub(super) fn vmm_session() -> CuResult<()> {
    if client::session()?.capabilities & CAP_VMM == 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    Ok(())
}

/// Handles for other APIs (dma-buf export of an address range) cannot work through vGPU: the memory is on the GPU
/// server. Reported once per entry point, by name. (Sharing with other processes: `ipc.rs`.)
fn not_shareable(name: &str, once: &AtomicBool) -> CuResult<()> {
    if !once.swap(true, Ordering::Relaxed) {
        crate::log::log!(
            crate::log::WARN,
            "{name}: a dma-buf of device memory is not supported through vGPU (the memory is on the GPU \
             server); it returns CUDA_ERROR_NOT_SUPPORTED"
        );
    }
    Err(CUDA_ERROR_NOT_SUPPORTED)
}

/// The device an allocation's properties place it on (`None`: not on a device).
fn prop_device(prop: &MemAllocProp) -> Option<i32> {
    (prop.location_type == CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE.0).then_some(prop.location_id)
}

/// Where calls about an allocation with these properties go: its device's server.
fn prop_route(prop: &MemAllocProp) -> CuResult<Route> {
    match prop_device(prop) {
        Some(dev) => {
            client::session()?.server_of(dev)?;
            Ok(Route::Device(dev))
        }
        None => Ok(Route::Current),
    }
}

/// Where calls about the reservation holding `ptr` go: the server it was made on.
fn reservation_route(ptr: u64) -> Route {
    let reg = state::read();
    match reg.vmm_reservations.range(..=ptr).next_back() {
        Some((&base, &(size, dev))) if ptr < base.saturating_add(size) => Route::Device(dev),
        _ => Route::Current,
    }
}

/// Removes the mappings of [ptr, ptr+size) the server just unmapped from the registry.
fn forget_mappings(ptr: u64, size: u64) {
    let mut reg = state::write();
    let end = ptr.saturating_add(size);
    let gone: Vec<u64> = reg.vmm_mappings.range(ptr..end).map(|(&va, _)| va).collect();
    for va in gone {
        reg.remove_device_range(va);
        if let Some(m) = reg.vmm_mappings.remove(&va) {
            if let Some(h) = reg.vmm_handles.get_mut(&m.handle) {
                h.mappings = h.mappings.saturating_sub(1);
            }
            reg.forget_unused_vmm(m.handle);
        }
    }
}

entry! {
    cuMemGetAllocationGranularity => |f, granularity, prop, option| {
        vmm_session()?;
        let prop = read_prop(prop)?;
        if granularity.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let r = client::call_to(prop_route(&prop)?, 0, &MemGetAllocationGranularity { prop, option: option.0, _pad: 0 }, &[])?;
        ffi::write(granularity, r.granularity as usize)
    }
    cuMemAddressReserve => |f, ptr, size, alignment, addr, flags| {
        vmm_session()?;
        if ptr.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let call = MemAddressReserve { size: size as u64, alignment: alignment as u64, addr: DevicePtr(addr), flags };
        // A reservation is made on one server: the current context's (where PyTorch maps the current device's
        // memory into it). Handles of another server's devices cannot be mapped into it.
        let r = client::call(0, &call, &[])?;
        let device = state::current_device().unwrap_or(0);
        state::write().vmm_reservations.insert(r.dptr.get(), (size as u64, device));
        ffi::write(ptr, r.dptr.get())
    }
    cuMemAddressFree => |f, ptr, size| {
        vmm_session()?;
        let route = reservation_route(ptr);
        client::call_to(route, 0, &MemAddressFree { ptr: DevicePtr(ptr), size: size as u64 }, &[])?;
        state::write().vmm_reservations.remove(&ptr);
        Ok(())
    }
    cuMemCreate => |f, handle, size, prop, flags| {
        vmm_session()?;
        let prop = read_prop(prop)?;
        if handle.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // A client-chosen id, as for every handle; synchronous all the same, so that running out of memory is
        // this call's answer, as natively.
        let id = AllocHandleId(state::new_id());
        let route = prop_route(&prop)?;
        client::call_to(route, 0, &MemCreate { handle: id, size: size as u64, flags, prop }, &[])?;
        let info = VmmHandle { handle_types: prop.handle_types, refs: 1, mappings: 0 };
        let mut reg = state::write();
        reg.vmm_handles.insert(id, info);
        if let Some(dev) = prop_device(&prop) {
            reg.owners.insert(id.get(), dev);
        }
        drop(reg);
        ffi::write(handle, id.get())
    }
    cuMemRelease => |f, handle| {
        vmm_session()?;
        let handle = AllocHandleId(handle);
        client::call_to(route_of_object(handle.get()), 0, &MemRelease { handle }, &[])?;
        let mut reg = state::write();
        if let Some(h) = reg.vmm_handles.get_mut(&handle) {
            h.refs = h.refs.saturating_sub(1);
        }
        reg.forget_unused_vmm(handle);
        Ok(())
    }
    cuMemMap => |f, ptr, size, offset, handle, flags| {
        vmm_session()?;
        let handle = AllocHandleId(handle);
        let route = route_of_object(handle.get());
        if !super::stream::same_server(route, reservation_route(ptr))? {
            // The reservation lives on another server than the memory: nothing can map it there.
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let call = MemMap { ptr: DevicePtr(ptr), size: size as u64, offset: offset as u64, handle, flags };
        client::call_to(route, 0, &call, &[])?;
        let device = super::route_device(route).unwrap_or(0);
        // Copies and memsets may name it from now on, and the pointer queries answer for it.
        if let Err(e) = super::record_range(ptr, size as u64, device) {
            let _ = client::call_to(route, 0, &MemUnmap { ptr: DevicePtr(ptr), size: size as u64 }, &[]);
            return Err(e);
        }
        let mut reg = state::write();
        if let Some(h) = reg.vmm_handles.get_mut(&handle) {
            h.mappings += 1;
        }
        reg.vmm_mappings.insert(ptr, VmmMapping { size: size as u64, handle, access: Vec::new() });
        Ok(())
    }
    cuMemUnmap => |f, ptr, size| {
        vmm_session()?;
        client::call_to(route_of_ptr(ptr), 0, &MemUnmap { ptr: DevicePtr(ptr), size: size as u64 }, &[])?;
        forget_mappings(ptr, size as u64);
        Ok(())
    }
    cuMemSetAccess => |f, ptr, size, desc, count| {
        vmm_session()?;
        if count > MAX_ACCESS_DESCS {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // CUmemAccessDesc has MemAccessDesc's layout (checked below): the array travels as it is.
        let record = size_of::<CUmemAccessDesc>();
        let descs = ffi::bytes(desc as *const u8, count * record)?;
        let call = MemSetAccess { ptr: DevicePtr(ptr), size: size as u64, count: count as u32, _pad: 0 };
        let route = route_of_ptr(ptr);
        // Access for a device of another server: no peer access across servers.
        for d in descs.chunks_exact(record) {
            let kind = ffi::field::<u32>(d, offset_of!(CUmemAccessDesc, location))?;
            let id = ffi::field::<i32>(d, offset_of!(CUmemAccessDesc, location) + offset_of!(CUmemLocation, id))?;
            if kind == CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE.0
                && client::session()?.server_of(id).is_ok_and(|s| client::server_index(route).ok() != Some(s))
            {
                return Err(CUDA_ERROR_INVALID_DEVICE);
            }
        }
        client::call_to(route, 0, &call, descs)?;
        let mut reg = state::write();
        let end = ptr.saturating_add(size as u64);
        for (_, m) in reg.vmm_mappings.range_mut(ptr..end) {
            for d in descs.chunks_exact(record) {
                let id = ffi::field::<i32>(d, offset_of!(CUmemAccessDesc, location) + offset_of!(CUmemLocation, id))?;
                let flags = ffi::field::<u32>(d, offset_of!(CUmemAccessDesc, flags))?;
                m.access.retain(|&(dev, _)| dev != id);
                m.access.push((id, flags));
            }
        }
        Ok(())
    }
    cuMemGetAccess => |f, flags, location, ptr| {
        vmm_session()?;
        let location: CUmemLocation = ffi::read(location)?;
        if flags.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let call = MemGetAccess { ptr: DevicePtr(ptr), location_type: location.type_.0, location_id: location.id };
        let route = route_of_ptr(ptr);
        let foreign = location.type_ == CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE
            && client::session()?.server_of(location.id).is_ok_and(|s| client::server_index(route).ok() != Some(s));
        if foreign {
            // A device of another server has no access to this memory.
            return ffi::write(flags, 0);
        }
        let r = client::call_to(route, 0, &call, &[])?;
        ffi::write(flags, r.flags)
    }
    cuMemGetAllocationPropertiesFromHandle => |f, prop, handle| {
        vmm_session()?;
        if prop.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let route = route_of_object(handle);
        let p = client::call_to(route, 0, &MemGetAllocationProperties { handle: AllocHandleId(handle) }, &[])?.prop;
        write_prop(prop, p)
    }
    cuMemRetainAllocationHandle => |f, handle, addr| {
        vmm_session()?;
        if handle.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let route = route_of_ptr(addr as u64);
        let r = client::call_to(route, 0, &MemRetainAllocationHandle { addr: DevicePtr(addr as u64) }, &[])?;
        if let Some(h) = state::write().vmm_handles.get_mut(&r.handle) {
            h.refs += 1;
        }
        ffi::write(handle, r.handle.get())
    }
    cuMemGetHandleForAddressRange => |f, handle, dptr, size, handle_type, flags| {
        static ONCE: AtomicBool = AtomicBool::new(false);
        not_shareable("cuMemGetHandleForAddressRange", &ONCE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_descriptors_travel_in_cuda_h_layout() {
        // A `MemSetAccess` tail is the app's CUmemAccessDesc array as it is: the wire record must be that layout.
        assert_eq!(size_of::<MemAccessDesc>(), size_of::<CUmemAccessDesc>());
        assert_eq!(
            offset_of!(MemAccessDesc, location_type),
            offset_of!(CUmemAccessDesc, location)
        );
        assert_eq!(
            offset_of!(MemAccessDesc, location_id),
            offset_of!(CUmemAccessDesc, location) + offset_of!(CUmemLocation, id)
        );
        assert_eq!(offset_of!(MemAccessDesc, flags), offset_of!(CUmemAccessDesc, flags));
    }
}
