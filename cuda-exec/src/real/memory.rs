//! Real backend: memory beyond plain allocations — host mirrors, arrays and texture objects, memory pools,
//! virtual memory management, structured (2D/3D) copies and stream memory operations.

use std::ffi::{c_int, c_void};

use vgpu_cuda_sys::driver::*;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::DevicePtr;
use vgpu_dataplane::wire::{
    ArrayBox, ArrayShape, MemAccessDesc, MemAllocProp, MemOp, MEM_OP_BARRIER, MEM_OP_FLUSH_REMOTE_WRITES,
    MEM_OP_WAIT_VALUE_32, MEM_OP_WAIT_VALUE_64, MEM_OP_WRITE_VALUE_32, MEM_OP_WRITE_VALUE_64,
};

use super::{RealBackend, ToDriver};
use crate::backend::*;

/// cuda.h's `CUmemAllocationProp` from the fields the wire carries (its win32 pointer never travels: NULL).
fn allocation_prop(p: &MemAllocProp) -> CUmemAllocationProp {
    CUmemAllocationProp {
        type_: CUmemAllocationType(p.alloc_type),
        requestedHandleTypes: CUmemAllocationHandleType(p.handle_types),
        location: CUmemLocation {
            type_: CUmemLocationType(p.location_type),
            id: p.location_id,
        },
        win32HandleMetaData: std::ptr::null_mut(),
        allocFlags: CUmemAllocationProp_st__bindgen_ty_1 {
            compressionType: p.compression,
            gpuDirectRDMACapable: p.gpu_direct_rdma,
            usage: p.usage,
            reserved: p.reserved,
        },
    }
}

fn wire_prop(p: &CUmemAllocationProp) -> MemAllocProp {
    MemAllocProp {
        alloc_type: p.type_.0,
        handle_types: p.requestedHandleTypes.0,
        location_type: p.location.type_.0,
        location_id: p.location.id,
        compression: p.allocFlags.compressionType,
        gpu_direct_rdma: p.allocFlags.gpuDirectRDMACapable,
        usage: p.allocFlags.usage,
        reserved: p.allocFlags.reserved,
    }
}

/// One side of a structured copy, as `CUDA_MEMCPY3D` describes a side.
struct Side {
    memory_type: CUmemorytype,
    host: *mut c_void,
    device: CUdeviceptr,
    array: CUarray,
    x_bytes: usize,
    y: usize,
    z: usize,
    pitch: usize,
    height: usize,
}

impl Side {
    fn host(ptr: *mut c_void, pitch: u64, height: u64) -> Side {
        Side {
            memory_type: CUmemorytype::CU_MEMORYTYPE_HOST,
            host: ptr,
            device: 0,
            array: std::ptr::null_mut(),
            x_bytes: 0,
            y: 0,
            z: 0,
            pitch: pitch as usize,
            height: height as usize,
        }
    }
    fn device(ptr: DevicePtr, pitch: u64, height: u64) -> Side {
        Side {
            memory_type: CUmemorytype::CU_MEMORYTYPE_DEVICE,
            device: ptr.0,
            ..Side::host(std::ptr::null_mut(), pitch, height)
        }
    }
    fn array(array: Array, region: &ArrayBox) -> Side {
        Side {
            memory_type: CUmemorytype::CU_MEMORYTYPE_ARRAY,
            array: array.to_driver(),
            x_bytes: region.x_bytes as usize,
            y: region.y as usize,
            z: region.z as usize,
            ..Side::host(std::ptr::null_mut(), 0, 0)
        }
    }
    fn of_place(place: Place<'_>) -> Side {
        match place {
            Place::Host(buf, pitch) => Side::host(buf.ptr as *mut c_void, pitch, 0),
            Place::Device(addr, pitch) => Side::device(addr, pitch, 0),
        }
    }
}

fn copy_3d(src: Side, dst: Side, width_bytes: u64, height: u64, depth: u64) -> CUDA_MEMCPY3D {
    CUDA_MEMCPY3D {
        srcXInBytes: src.x_bytes,
        srcY: src.y,
        srcZ: src.z,
        srcMemoryType: src.memory_type,
        srcHost: src.host,
        srcDevice: src.device,
        srcArray: src.array,
        srcPitch: src.pitch,
        srcHeight: src.height,
        dstXInBytes: dst.x_bytes,
        dstY: dst.y,
        dstZ: dst.z,
        dstMemoryType: dst.memory_type,
        dstHost: dst.host,
        dstDevice: dst.device,
        dstArray: dst.array,
        dstPitch: dst.pitch,
        dstHeight: dst.height,
        WidthInBytes: width_bytes as usize,
        Height: height as usize,
        Depth: depth as usize,
        ..Default::default()
    }
}

/// Copies a descriptor into 8-byte-aligned storage of type `T` (the driver reads it as that struct).
fn descriptor<T: Default>(bytes: &[u8]) -> CuResult<T> {
    if bytes.len() != std::mem::size_of::<T>() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut out = T::default();
    // SAFETY: `out` is exactly `bytes.len()` bytes of a plain C struct (integers, floats and handles, all of
    // which any bit pattern is valid for as far as this process is concerned: the driver validates them).
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), &mut out as *mut T as *mut u8, bytes.len()) };
    Ok(out)
}

impl RealBackend {
    pub(super) fn copy_2d(
        &self,
        src: Place<'_>,
        dst: Place<'_>,
        width: u64,
        height: u64,
        stream: Stream,
    ) -> CuResult<()> {
        let (s, d) = (Side::of_place(src), Side::of_place(dst));
        let m = CUDA_MEMCPY2D {
            srcMemoryType: s.memory_type,
            srcHost: s.host,
            srcDevice: s.device,
            srcPitch: s.pitch,
            dstMemoryType: d.memory_type,
            dstHost: d.host,
            dstDevice: d.device,
            dstPitch: d.pitch,
            WidthInBytes: width as usize,
            Height: height as usize,
            ..Default::default()
        };
        // SAFETY: host sides are staging buffers of the session sized to the packed rows; device sides were
        // checked against the session's ranges.
        unsafe { self.driver.cuMemcpy2DAsync_v2(&m, stream.to_driver()) }.result()
    }

    pub(super) fn mem_ops(&self, stream: Stream, ops: &[MemOp], flags: u32, single: bool) -> CuResult<()> {
        let d = &self.driver;
        let s: CUstream = stream.to_driver();
        if let (true, [op]) = (single, ops) {
            let (a, v, f) = (op.address.0, op.value, op.flags);
            // SAFETY: plain values; the session checked that the address lies in the session's device memory.
            return unsafe {
                match op.operation {
                    MEM_OP_WRITE_VALUE_32 => d.cuStreamWriteValue32_v2(s, a, v as u32, f),
                    MEM_OP_WRITE_VALUE_64 => d.cuStreamWriteValue64_v2(s, a, v, f),
                    MEM_OP_WAIT_VALUE_32 => d.cuStreamWaitValue32_v2(s, a, v as u32, f),
                    MEM_OP_WAIT_VALUE_64 => d.cuStreamWaitValue64_v2(s, a, v, f),
                    _ => CUDA_ERROR_INVALID_VALUE,
                }
            }
            .result();
        }
        let mut params: Vec<CUstreamBatchMemOpParams> = ops
            .iter()
            .map(|op| {
                let mut p = CUstreamBatchMemOpParams::default();
                let kind = CUstreamBatchMemOpType(op.operation);
                // The union member that `operation` selects, as the driver reads it (writes to unions are safe).
                match op.operation {
                    MEM_OP_BARRIER => {
                        p.memoryBarrier.operation = kind;
                        p.memoryBarrier.flags = op.flags;
                    }
                    MEM_OP_FLUSH_REMOTE_WRITES => {
                        p.flushRemoteWrites.operation = kind;
                        p.flushRemoteWrites.flags = op.flags;
                    }
                    MEM_OP_WAIT_VALUE_32 | MEM_OP_WAIT_VALUE_64 => {
                        p.waitValue.operation = kind;
                        p.waitValue.address = op.address.0;
                        p.waitValue.__bindgen_anon_1.value64 = op.value;
                        p.waitValue.flags = op.flags;
                    }
                    _ => {
                        p.writeValue.operation = kind;
                        p.writeValue.address = op.address.0;
                        p.writeValue.__bindgen_anon_1.value64 = op.value;
                        p.writeValue.flags = op.flags;
                    }
                }
                p
            })
            .collect();
        // SAFETY: `params` holds `params.len()` complete records and outlives the call.
        unsafe { d.cuStreamBatchMemOp_v2(s, params.len() as u32, params.as_mut_ptr(), flags) }.result()
    }

    pub(super) fn pool_create(&self, dev: i32, max_size: u64) -> CuResult<MemPool> {
        let props = CUmemPoolProps {
            allocType: CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
            location: CUmemLocation {
                type_: CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                id: dev,
            },
            maxSize: max_size as usize,
            ..Default::default()
        };
        let mut pool = std::ptr::null_mut();
        // SAFETY: props is a complete CUmemPoolProps; out-pointer to a local.
        unsafe { self.driver.cuMemPoolCreate(&mut pool, &props) }.result()?;
        Ok(pool.into())
    }

    pub(super) fn pool_attribute(&self, pool: MemPool, attr: u32) -> CuResult<u64> {
        // The reuse attributes (1..=3) are ints; the sizes (4..=8) 64-bit.
        let mut value = 0u64;
        // SAFETY: the driver writes at most 8 bytes into value.
        unsafe {
            self.driver.cuMemPoolGetAttribute(
                pool.to_driver(),
                CUmemPool_attribute(attr),
                &mut value as *mut u64 as *mut c_void,
            )
        }
        .result()?;
        Ok(if (1..=3).contains(&attr) {
            value & 0xffff_ffff
        } else {
            value
        })
    }

    pub(super) fn set_pool_attribute(&self, pool: MemPool, attr: u32, value: u64) -> CuResult<()> {
        let mut wide = value;
        let mut narrow = value as c_int;
        let ptr = if (1..=3).contains(&attr) {
            &mut narrow as *mut c_int as *mut c_void
        } else {
            &mut wide as *mut u64 as *mut c_void
        };
        // SAFETY: ptr points at a value of the width the attribute takes.
        unsafe {
            self.driver
                .cuMemPoolSetAttribute(pool.to_driver(), CUmemPool_attribute(attr), ptr)
        }
        .result()
    }

    pub(super) fn mirror_map(&self, addr: u64, size: u64) -> CuResult<DevicePtr> {
        let len = size as usize;
        // SAFETY: an anonymous private mapping at a fixed address that must be free (MAP_FIXED_NOREPLACE never
        // replaces an existing mapping); nothing else in this process refers to that range.
        let ptr = unsafe {
            libc::mmap(
                addr as *mut c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED || ptr as u64 != addr {
            if ptr != libc::MAP_FAILED {
                // SAFETY: the mapping just made (at another address, by an old kernel ignoring the flag).
                unsafe { libc::munmap(ptr, len) };
            }
            return Err(CUDA_ERROR_ALREADY_MAPPED);
        }
        // SAFETY: the range was mapped just above and stays mapped until mirror_unmap.
        let registered = unsafe {
            self.driver
                .cuMemHostRegister_v2(ptr, len, CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP)
        }
        .result();
        let mut dptr = 0;
        // SAFETY: the range is registered; out-pointer to a local.
        let mapped =
            registered.and_then(|_| unsafe { self.driver.cuMemHostGetDevicePointer_v2(&mut dptr, ptr, 0) }.result());
        if let Err(e) = mapped {
            // SAFETY: undoing the registration (if it happened) and the mapping made above.
            unsafe {
                if registered.is_ok() {
                    self.driver.cuMemHostUnregister(ptr);
                }
                libc::munmap(ptr, len);
            }
            return Err(e);
        }
        Ok(DevicePtr(dptr))
    }

    pub(super) fn mirror_unmap(&self, addr: u64, size: u64) -> CuResult<()> {
        // SAFETY: a range mirror_map mapped and registered; the session forgot it before calling.
        unsafe {
            let r = self.driver.cuMemHostUnregister(addr as usize as *mut c_void).result();
            libc::munmap(addr as usize as *mut c_void, size as usize);
            r
        }
    }

    pub(super) fn create_array(&self, shape: ArrayShape) -> CuResult<Array> {
        let desc = CUDA_ARRAY3D_DESCRIPTOR {
            Width: shape.width as usize,
            Height: shape.height as usize,
            Depth: shape.depth as usize,
            Format: CUarray_format(shape.format),
            NumChannels: shape.channels,
            Flags: shape.flags,
        };
        let mut array = std::ptr::null_mut();
        // SAFETY: desc is a complete descriptor; out-pointer to a local.
        unsafe { self.driver.cuArray3DCreate_v2(&mut array, &desc) }.result()?;
        Ok(array.into())
    }

    pub(super) fn copy_array(&self, array: Array, region: ArrayBox, other: ArrayTransfer<'_>) -> CuResult<()> {
        let inside = Side::array(array, &region);
        // Host rows are packed (pitch = width).
        let (w, h, depth) = (region.width_bytes, region.height, region.depth);
        let m = match other {
            ArrayTransfer::FromHost(data) => {
                copy_3d(Side::host(data.as_ptr() as *mut c_void, w, h), inside, w, h, depth)
            }
            ArrayTransfer::ToHost(data) => {
                copy_3d(inside, Side::host(data.as_mut_ptr() as *mut c_void, w, h), w, h, depth)
            }
            ArrayTransfer::FromDevice {
                ptr,
                pitch,
                rows_per_slice,
            } => copy_3d(Side::device(ptr, pitch, rows_per_slice.max(h)), inside, w, h, depth),
            ArrayTransfer::ToDevice {
                ptr,
                pitch,
                rows_per_slice,
            } => copy_3d(inside, Side::device(ptr, pitch, rows_per_slice.max(h)), w, h, depth),
        };
        // SAFETY: the host side is sized by the session to the packed box; the device side was checked against
        // the session's ranges; the array is this session's and the box lies inside it.
        unsafe { self.driver.cuMemcpy3D_v2(&m) }.result()
    }

    pub(super) fn create_object(
        &self,
        surface: bool,
        resource: &[u8],
        texture: &[u8],
        view: Option<&[u8]>,
    ) -> CuResult<u64> {
        let res: CUDA_RESOURCE_DESC = descriptor(resource)?;
        let mut object = 0;
        if surface {
            // SAFETY: a complete resource descriptor; out-pointer to a local.
            unsafe { self.driver.cuSurfObjectCreate(&mut object, &res) }.result()?;
            return Ok(object);
        }
        let tex: CUDA_TEXTURE_DESC = descriptor(texture)?;
        let view: Option<CUDA_RESOURCE_VIEW_DESC> = view.map(descriptor).transpose()?;
        let v = view
            .as_ref()
            .map_or(std::ptr::null(), |v| v as *const CUDA_RESOURCE_VIEW_DESC);
        // SAFETY: complete descriptors (sizes checked by the session) living across the call.
        unsafe { self.driver.cuTexObjectCreate(&mut object, &res, &tex, v) }.result()?;
        Ok(object)
    }

    pub(super) fn granularity(&self, prop: &MemAllocProp, option: u32) -> CuResult<u64> {
        let prop = allocation_prop(prop);
        let mut g = 0usize;
        // SAFETY: a complete CUmemAllocationProp with a NULL win32 pointer; out-pointer to a local.
        unsafe {
            self.driver
                .cuMemGetAllocationGranularity(&mut g, &prop, CUmemAllocationGranularity_flags(option))
        }
        .result()?;
        Ok(g as u64)
    }

    pub(super) fn create_physical(&self, size: u64, prop: &MemAllocProp, flags: u64) -> CuResult<AllocHandle> {
        let prop = allocation_prop(prop);
        let mut handle = 0;
        // SAFETY: a complete CUmemAllocationProp with a NULL win32 pointer; out-pointer to a local.
        unsafe { self.driver.cuMemCreate(&mut handle, size as usize, &prop, flags) }.result()?;
        Ok(AllocHandle(handle))
    }

    pub(super) fn set_access(&self, ptr: DevicePtr, size: u64, descs: &[MemAccessDesc]) -> CuResult<()> {
        let descs: Vec<CUmemAccessDesc> = descs
            .iter()
            .map(|d| CUmemAccessDesc {
                location: CUmemLocation {
                    type_: CUmemLocationType(d.location_type),
                    id: d.location_id,
                },
                flags: CUmemAccess_flags(d.flags),
            })
            .collect();
        // SAFETY: the driver reads `descs.len()` complete descriptors; the session checked the range.
        unsafe {
            self.driver
                .cuMemSetAccess(ptr.0, size as usize, descs.as_ptr(), descs.len())
        }
        .result()
    }

    pub(super) fn physical_properties(&self, handle: AllocHandle) -> CuResult<MemAllocProp> {
        let mut prop = CUmemAllocationProp::default();
        // SAFETY: the driver fills one CUmemAllocationProp; the handle is this session's.
        unsafe { self.driver.cuMemGetAllocationPropertiesFromHandle(&mut prop, handle.0) }.result()?;
        Ok(wire_prop(&prop))
    }
}
