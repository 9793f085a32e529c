//! CUDA arrays (1D, 2D, 3D) with client-chosen ids, their copies (to and from host or device memory, and between
//! arrays: `cuMemcpyAtoA`), and the texture and surface objects made from them. Every call is one round trip.

use std::ffi::c_uint;
use std::mem::offset_of;

use vgpu_cuda_sys::driver::{
    CUarray, CUarray_format, CUmemorytype, CUresourcetype, CUDA_ARRAY3D_DESCRIPTOR, CUDA_ARRAY_DESCRIPTOR,
    CUDA_RESOURCE_DESC, CUDA_RESOURCE_VIEW_DESC, CUDA_TEXTURE_DESC,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::stream::same_server;
use super::{need_ctx, route_of_object, route_of_ptr, ClientHandle};
use crate::{client, ffi, state};

fn array_create(out: *mut CUarray, shape: ArrayShape) -> CuResult<()> {
    let dev = super::current_device()?;
    if out.is_null() || shape.element_bytes().is_none() || shape.width == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let array = ArrayId(state::new_id());
    let call = ArrayCreate {
        array,
        width: shape.width,
        height: shape.height,
        depth: shape.depth,
        format: shape.format,
        channels: shape.channels,
        flags: shape.flags,
        _pad: 0,
    };
    client::call(0, &call, &[])?;
    let mut reg = state::write();
    reg.arrays.insert(array, shape);
    reg.owners.insert(array.get(), dev);
    drop(reg);
    ffi::write(out, CUarray::of(array))
}

/// The shape of an array the app holds (`CUDA_ERROR_INVALID_HANDLE` for one it does not).
fn shape_of(array: CUarray) -> CuResult<ArrayShape> {
    state::read()
        .arrays
        .get(&array.id())
        .copied()
        .ok_or(CUDA_ERROR_INVALID_HANDLE)
}

/// Bytes of an array's first row (all of a 1D array).
fn row_bytes(shape: &ArrayShape) -> CuResult<u64> {
    let element = shape.element_bytes().ok_or(CUDA_ERROR_INVALID_VALUE)?;
    shape.width.checked_mul(element).ok_or(CUDA_ERROR_INVALID_VALUE)
}

/// `cuMemcpyAtoA`: `size` bytes from byte `src_offset` of `src`'s first row to byte `dst_offset` of `dst`'s, as
/// natively (1D arrays, or the first row of wider ones). Both arrays must be the app's and the ranges inside
/// those rows; what else the driver asks of the copy (matching element sizes, whole elements) is its answer.
fn copy_array_to_array(
    flags: u16,
    dst: CUarray,
    dst_offset: u64,
    src: CUarray,
    src_offset: u64,
    size: u64,
) -> CuResult<()> {
    need_ctx()?;
    let (dst_shape, src_shape) = (shape_of(dst)?, shape_of(src)?);
    let inside = |offset: u64, shape: &ArrayShape| -> CuResult<()> {
        let end = offset.checked_add(size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if end <= row_bytes(shape)? {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    };
    inside(dst_offset, &dst_shape)?;
    inside(src_offset, &src_shape)?;
    let call = MemcpyAtoA {
        dst: dst.id(),
        dst_offset,
        src: src.id(),
        src_offset,
        size,
    };
    let route = route_of_object(dst.id().get());
    if !same_server(route, route_of_object(src.id().get()))? {
        // Arrays of two servers: not remoted.
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    client::call_to(route, flags, &call, &[]).map(|_| ())
}

/// One side of a 2D or 3D copy, as `CUDA_MEMCPY2D` and `CUDA_MEMCPY3D` describe it: the memory type, the
/// address or array it names, where the copy starts (x in bytes, y, z) and how that memory is laid out.
#[derive(Clone, Copy)]
pub(super) struct Place {
    pub memory_type: CUmemorytype,
    pub host: usize,
    pub device: u64,
    pub array: CUarray,
    pub origin: [usize; 3],
    pub pitch: usize,
    /// Rows per slice.
    pub height: usize,
}

/// A 2D or 3D copy with a CUDA array on at least one side. Array to array: one row at the start of both arrays'
/// first rows (what `cuMemcpyAtoA` can do; a 1D array's whole copy); other shapes are not remoted yet.
pub(super) fn array_copy(flags: u16, src: Place, dst: Place, extent: [usize; 3]) -> CuResult<()> {
    let is_array = |p: &Place| p.memory_type == CUmemorytype::CU_MEMORYTYPE_ARRAY;
    let (to_array, arr, other) = match (is_array(&src), is_array(&dst)) {
        (false, true) => (true, dst, src),
        (true, false) => (false, src, dst),
        (true, true) => {
            let one_row = extent[1] <= 1 && extent[2] <= 1;
            let at_start = |p: &Place| p.origin[1] == 0 && p.origin[2] == 0;
            if !(one_row && at_start(&src) && at_start(&dst)) {
                return Err(CUDA_ERROR_NOT_SUPPORTED);
            }
            let [dst_x, src_x, width] = [dst.origin[0], src.origin[0], extent[0]].map(|v| v as u64);
            return copy_array_to_array(flags, dst.array, dst_x, src.array, src_x, width);
        }
        (false, false) => return Err(CUDA_ERROR_INVALID_VALUE),
    };
    let region = ArrayBox {
        x_bytes: arr.origin[0] as u64,
        y: arr.origin[1] as u64,
        z: arr.origin[2] as u64,
        width_bytes: extent[0] as u64,
        height: extent[1].max(1) as u64,
        depth: extent[2].max(1) as u64,
    };
    array_transfer(flags, arr.array.id(), region, to_array, other)
}

/// A copy between a box of `array` and host or device memory (`other`).
fn array_transfer(flags: u16, array: ArrayId, r: ArrayBox, to_array: bool, other: Place) -> CuResult<()> {
    if !state::read().arrays.contains_key(&array) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (w, h, d) = (r.width_bytes as usize, r.height as usize, r.depth as usize);
    if w == 0 || h == 0 || d == 0 {
        return Ok(());
    }
    if h > 1 && other.pitch < w {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let [other_x, other_y, other_z] = other.origin;
    let rows = other.height.max(h);
    let row_offset = |z: usize, y: usize| -> CuResult<usize> {
        ((other_z + z) * rows + other_y + y)
            .checked_mul(other.pitch)
            .and_then(|o| o.checked_add(other_x))
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    };
    // Unified addressing: device memory the app allocated, or host memory.
    let on_device = match other.memory_type {
        CUmemorytype::CU_MEMORYTYPE_DEVICE => true,
        CUmemorytype::CU_MEMORYTYPE_UNIFIED => state::read().device_range(other.device).is_some(),
        CUmemorytype::CU_MEMORYTYPE_HOST => false,
        _ => return Err(CUDA_ERROR_NOT_SUPPORTED),
    };
    let host_base = if other.memory_type == CUmemorytype::CU_MEMORYTYPE_HOST {
        other.host
    } else {
        other.device as usize
    };
    let mut call = ArrayCopy {
        array,
        x_bytes: r.x_bytes,
        y: r.y,
        z: r.z,
        width_bytes: r.width_bytes,
        height: r.height,
        depth: r.depth,
        device: DevicePtr::NULL,
        device_pitch: 0,
        device_height: 0,
        direction: 0,
        _pad: 0,
    };
    let route = route_of_object(array.get());
    if on_device {
        if !same_server(route, route_of_ptr(other.device))? {
            // An array and device memory of two servers: not remoted.
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        call.device = DevicePtr(other.device).offset(row_offset(0, 0)? as u64);
        call.device_pitch = other.pitch as u64;
        call.device_height = rows as u64;
        call.direction = if to_array { 2 } else { 3 };
        return client::call_to(route, flags, &call, &[]).map(|_| ());
    }
    if to_array {
        let mut packed = Vec::with_capacity(w * h * d);
        for z in 0..d {
            for y in 0..h {
                packed.extend_from_slice(ffi::bytes((host_base + row_offset(z, y)?) as *const u8, w)?);
            }
        }
        return client::call_to(route, flags, &call, &packed).map(|_| ());
    }
    call.direction = 1;
    let mut packed = Vec::new();
    client::call_with_tail_to(route, flags, &call, &[], &mut packed)?;
    if packed.len() != w * h * d {
        return Err(CUDA_ERROR_UNKNOWN);
    }
    for (i, row) in packed.chunks_exact(w).enumerate() {
        let (z, y) = (i / h, i % h);
        ffi::bytes_mut((host_base + row_offset(z, y)?) as *mut u8, w)?.copy_from_slice(row);
    }
    Ok(())
}

/// `cuTexObjectCreate`/`cuSurfObjectCreate`: the descriptors travel as they are; the server puts its own
/// array handle in place of the client's.
fn tex_object(
    out: *mut u64,
    surface: bool,
    resource: *const CUDA_RESOURCE_DESC,
    texture: *const CUDA_TEXTURE_DESC,
    view: *const CUDA_RESOURCE_VIEW_DESC,
) -> CuResult<()> {
    need_ctx()?;
    if out.is_null() || (!surface && texture.is_null()) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut tail = ffi::bytes(resource as *const u8, RESOURCE_DESC_LEN)?.to_vec();
    let res_type = CUresourcetype(ffi::field::<u32>(&tail, offset_of!(CUDA_RESOURCE_DESC, resType))?);
    // Made where its resource lives: an array's device, or linear memory's (the union's first word is the
    // array handle or the device pointer).
    let first_word = ffi::field::<u64>(&tail, offset_of!(CUDA_RESOURCE_DESC, res))?;
    let route = if res_type == CUresourcetype::CU_RESOURCE_TYPE_ARRAY {
        let id = ArrayId(first_word);
        if !state::read().arrays.contains_key(&id) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        route_of_object(id.get())
    } else if res_type == CUresourcetype::CU_RESOURCE_TYPE_LINEAR
        || res_type == CUresourcetype::CU_RESOURCE_TYPE_PITCH2D
    {
        route_of_ptr(first_word)
    } else {
        client::Route::Current
    };
    if !surface {
        tail.extend_from_slice(ffi::bytes(texture as *const u8, TEXTURE_DESC_LEN)?);
        if !view.is_null() {
            tail.extend_from_slice(ffi::bytes(view as *const u8, RESOURCE_VIEW_DESC_LEN)?);
        }
    }
    let call = TexObjectCreate {
        surface: surface as u32,
        has_view: (!surface && !view.is_null()) as u32,
    };
    let r = client::call_to(route, 0, &call, &tail)?;
    // Texture objects are the servers' values: each remembers which server made it, for its destruction.
    state::write()
        .tex_servers
        .insert(r.object, client::server_index(route)?);
    ffi::write(out, r.object)
}

/// Destroys a texture or surface object on the server that made it.
fn object_destroy(object: u64, surface: bool) -> CuResult<()> {
    let server = state::write().tex_servers.remove(&object);
    let route = server.map_or(client::Route::Current, client::Route::Server);
    let call = ObjectDestroy {
        object,
        surface: surface as u32,
        _pad: 0,
    };
    client::call_to(route, 0, &call, &[]).map(|_| ())
}

entry! {
    cuArrayCreate_v2 => |f, out, desc| {
        let d: CUDA_ARRAY_DESCRIPTOR = ffi::read(desc)?;
        let shape = ArrayShape {
            width: d.Width as u64,
            height: d.Height as u64,
            depth: 0,
            format: d.Format.0,
            channels: d.NumChannels,
            flags: 0,
        };
        array_create(out, shape)
    }
    cuArray3DCreate_v2 => |f, out, desc| {
        let d: CUDA_ARRAY3D_DESCRIPTOR = ffi::read(desc)?;
        let shape = ArrayShape {
            width: d.Width as u64,
            height: d.Height as u64,
            depth: d.Depth as u64,
            format: d.Format.0,
            channels: d.NumChannels,
            flags: d.Flags,
        };
        array_create(out, shape)
    }
    cuArrayDestroy => |f, array| {
        let id = array.id();
        let route = route_of_object(id.get());
        {
            let mut reg = state::write();
            if reg.arrays.remove(&id).is_none() {
                return Err(CUDA_ERROR_INVALID_HANDLE);
            }
            reg.owners.remove(&id.get());
        }
        client::call_to(route, 0, &ArrayDestroy { array: id }, &[]).map(|_| ())
    }
    cuArrayGetDescriptor_v2 => |f, out, array| {
        let a = shape_of(array)?;
        let d = CUDA_ARRAY_DESCRIPTOR {
            Width: a.width as usize,
            Height: a.height as usize,
            Format: CUarray_format(a.format),
            NumChannels: a.channels as c_uint,
        };
        ffi::write(out, d)
    }
    cuArray3DGetDescriptor_v2 => |f, out, array| {
        let a = shape_of(array)?;
        let d = CUDA_ARRAY3D_DESCRIPTOR {
            Width: a.width as usize,
            Height: a.height as usize,
            Depth: a.depth as usize,
            Format: CUarray_format(a.format),
            NumChannels: a.channels as c_uint,
            Flags: a.flags as c_uint,
        };
        ffi::write(out, d)
    }
    cuMemcpyAtoA => |f, dst, dst_offset, src, src_offset, size| {
        copy_array_to_array(f, dst, dst_offset as u64, src, src_offset as u64, size as u64)
    }
    cuMemcpyAtoA_v2, cuMemcpyAtoA_v2_ptds => |f, dst, dst_offset, src, src_offset, size| {
        copy_array_to_array(f, dst, dst_offset as u64, src, src_offset as u64, size as u64)
    }
    cuTexObjectCreate => |f, out, resource, texture, view| {
        tex_object(out, false, resource, texture, view)
    }
    cuSurfObjectCreate => |f, out, resource| {
        tex_object(out, true, resource, std::ptr::null(), std::ptr::null())
    }
    cuTexObjectDestroy => |f, object| {
        object_destroy(object, false)
    }
    cuSurfObjectDestroy => |f, object| {
        object_destroy(object, true)
    }
}
