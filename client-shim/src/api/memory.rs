//! Device memory: allocation and release (one round trip each, the ranges recorded so copies are checked at the
//! call), managed memory (mapped here at the server's address), its hints, and the memory queries.

use vgpu_cuda_sys::driver::{CUdeviceptr, CUmemAttach_flags, CUmem_advise};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::stream::stream_id;
use super::{current_device, need_ctx, record_range, route_of_ptr};
use crate::client::Route;
use crate::{client, ffi, mirror, state};

/// Whether `count` bytes at `dptr` lie inside managed memory (a `cuMemAllocManaged` allocation or a
/// `__managed__` variable): what the managed-memory hints accept.
fn in_managed(dptr: CUdeviceptr, count: usize) -> bool {
    mirror::find(dptr as usize)
        .is_some_and(|m| m.kind != mirror::Kind::Pinned && (dptr as usize).saturating_add(count) <= m.data + m.data_len)
}

/// `cuMemAdvise`: placement advice. The host copy here and the server's managed memory are kept in step anyway.
fn advise(dptr: CUdeviceptr, count: usize, advice: CUmem_advise) -> CuResult<()> {
    need_ctx()?;
    if in_managed(dptr, count) && advice.0 <= CUmem_advise::CU_MEM_ADVISE_UNSET_ACCESSED_BY.0 {
        Ok(())
    } else {
        Err(CUDA_ERROR_INVALID_VALUE)
    }
}

/// `cuMemPrefetchAsync`: a performance hint in stream order. Nothing is moved ahead of time here (the host copy
/// comes back at the next synchronizing call whatever the prefetch target).
fn prefetch(dptr: CUdeviceptr, count: usize) -> CuResult<()> {
    need_ctx()?;
    if in_managed(dptr, count) {
        Ok(())
    } else {
        Err(CUDA_ERROR_INVALID_VALUE)
    }
}

entry! {
    cuMemAlloc_v2 => |f, out, size| {
        let dev = current_device()?;
        if out.is_null() || size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let dptr = client::call(0, &MemAlloc { size: size as u64 }, &[])?.dptr.get();
        crate::va::check_placed(dev, dptr);
        if let Err(e) = record_range(dptr, size as u64, dev) {
            let _ = client::call(0, &MemFree { dptr: DevicePtr(dptr) }, &[]);
            return Err(e);
        }
        ffi::write(out, dptr)
    }
    cuMemAllocPitch_v2 => |f, out, pitch, width, height, elem| {
        let dev = current_device()?;
        if out.is_null() || pitch.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let call = MemAllocPitch { width: width as u64, height: height as u64, elem_size: elem, _pad: 0 };
        let r = client::call(0, &call, &[])?;
        crate::va::check_placed(dev, r.dptr.get());
        if let Err(e) = record_range(r.dptr.get(), r.pitch.saturating_mul(height as u64), dev) {
            let _ = client::call(0, &MemFree { dptr: r.dptr }, &[]);
            return Err(e);
        }
        ffi::write(out, r.dptr.get())?;
        ffi::write(pitch, r.pitch as usize)
    }
    cuMemFree_v2 => |f, dptr| {
        need_ctx()?;
        // Memory of any device may be freed whichever context is current (unified addressing).
        let route = match mirror::find(dptr as usize).filter(|m| m.kind == mirror::Kind::Managed) {
            Some(m) => Route::Device(m.device),
            None => route_of_ptr(dptr),
        };
        client::call_to(route, 0, &MemFree { dptr: DevicePtr(dptr) }, &[])?;
        state::write().remove_device_range(dptr);
        if mirror::find(dptr as usize).is_some_and(|m| m.kind == mirror::Kind::Managed && m.data == dptr as usize) {
            mirror::drop_managed(dptr);
        }
        Ok(())
    }
    cuMemAllocManaged => |f, out, size, flags| {
        let dev = current_device()?;
        let attach = [CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL.0, CUmemAttach_flags::CU_MEM_ATTACH_HOST.0];
        if out.is_null() || size == 0 || !attach.contains(&flags) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let r = client::call(0, &MemAllocManaged { size: size as u64, flags, _pad: 0 }, &[])?;
        crate::va::check_placed(dev, r.dptr.get());
        if let Err(e) = mirror::adopt_managed(r.dptr.get(), size, dev) {
            // The server's address is taken in this process: the memory cannot have one address for both.
            crate::log::log!(crate::log::WARN, "cuMemAllocManaged: address {:#x} is in use in this process", r.dptr.get());
            let _ = client::call(0, &MemFree { dptr: r.dptr }, &[]);
            return Err(e);
        }
        ffi::write(out, r.dptr.get())
    }
    cuMemAdvise => |f, dptr, count, advice, _device| {
        advise(dptr, count, advice)
    }
    cuMemAdvise_v2 => |f, dptr, count, advice, _location| {
        advise(dptr, count, advice)
    }
    cuMemPrefetchAsync, cuMemPrefetchAsync_ptsz => |f, dptr, count, _device, _stream| {
        prefetch(dptr, count)
    }
    cuMemPrefetchAsync_v2, cuMemPrefetchAsync_v2_ptsz => |f, dptr, count, _location, _flags, _stream| {
        prefetch(dptr, count)
    }
    cuStreamAttachMemAsync, cuStreamAttachMemAsync_ptsz => |f, stream, dptr, _length, flags| {
        need_ctx()?;
        stream_id(stream)?;
        // Visibility rules for concurrent access, which the host copy here keeps trivially.
        let valid = [
            CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL.0,
            CUmemAttach_flags::CU_MEM_ATTACH_HOST.0,
            CUmemAttach_flags::CU_MEM_ATTACH_SINGLE.0,
        ];
        if !valid.contains(&flags) || mirror::find(dptr as usize).is_none() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(())
    }
    cuMemGetInfo_v2 => |f, free, total| {
        need_ctx()?;
        let r = client::call_to(Route::Current, 0, &MemGetInfo {}, &[])?;
        ffi::write(free, r.free as usize)?;
        ffi::write(total, r.total as usize)
    }
    cuMemGetAddressRange_v2 => |f, base, size, dptr| {
        need_ctx()?;
        let (b, len) = state::read().device_range(dptr).ok_or(CUDA_ERROR_NOT_FOUND)?;
        if !base.is_null() {
            ffi::write(base, b)?;
        }
        if !size.is_null() {
            ffi::write(size, len as usize)?;
        }
        Ok(())
    }
}
