//! Pitched copies: `cuMemcpy2D`, `cuMemcpy3D` and `cuMemcpy3DPeer` (sync and async) between host and device
//! memory, one 2D copy per slice; a CUDA array on either side goes to `array`. On a capturing stream they become
//! graph nodes.

use std::ffi::c_void;
use std::mem::size_of;

use vgpu_cuda_sys::driver::{CUmemorytype, CUstream, CUDA_MEMCPY2D, CUDA_MEMCPY3D, CUDA_MEMCPY3D_PEER};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::array::{array_copy, Place};
use super::graph;
use super::need_ctx;
use super::stream::{same_server, stream_id};
use super::ClientHandle;
use super::{route_of_ptr, route_of_stream};
use crate::{client, ffi, state};

/// One side of a 2D copy after resolving memory types and offsets: a host address or a device address, with its
/// pitch.
enum Side {
    Host(usize, usize),
    Device(u64, u64),
}

fn side(kind: CUmemorytype, host: usize, device: u64, x: usize, y: usize, pitch: usize) -> CuResult<Side> {
    let offset = y
        .checked_mul(pitch)
        .and_then(|o| o.checked_add(x))
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    match kind {
        CUmemorytype::CU_MEMORYTYPE_HOST => Ok(Side::Host(host.wrapping_add(offset), pitch)),
        CUmemorytype::CU_MEMORYTYPE_DEVICE => Ok(Side::Device(device.wrapping_add(offset as u64), pitch as u64)),
        // Unified addressing: a pointer the app got from cuMemAlloc is device memory, anything else host.
        CUmemorytype::CU_MEMORYTYPE_UNIFIED if state::read().check_range(device, 1).is_ok() => {
            Ok(Side::Device(device + offset as u64, pitch as u64))
        }
        CUmemorytype::CU_MEMORYTYPE_UNIFIED => Ok(Side::Host(device as usize + offset, pitch)),
        // CUDA arrays are handled before; no other memory type is remoted.
        _ => Err(CUDA_ERROR_NOT_SUPPORTED),
    }
}

/// Records a copy descriptor on a capturing stream (as its bytes: graph nodes keep it as given). `None`: not
/// capturing.
fn capture<T>(
    flags: u16,
    params: *const T,
    stream: Option<CUstream>,
    node: fn(Vec<u8>) -> graph::Node,
) -> Option<CuResult<()>> {
    let s = stream?;
    let key = match stream_id(s) {
        Ok(id) => graph::key(flags, id),
        Err(e) => return Some(Err(e)),
    };
    if !graph::is_capturing(key) {
        return None;
    }
    match ffi::bytes(params as *const u8, size_of::<T>()) {
        Ok(raw) => graph::capture(key, node(raw.to_vec())),
        Err(e) => Some(Err(e)),
    }
}

/// `cuMemcpy2D` and `cuMemcpy2DAsync` (`stream` given).
pub(crate) fn copy_2d(flags: u16, params: *const CUDA_MEMCPY2D, stream: Option<CUstream>) -> CuResult<()> {
    need_ctx()?;
    if let Some(r) = capture(flags, params, stream, graph::Node::Copy2D) {
        return r;
    }
    copy_2d_params(flags, ffi::read(params)?, stream, None)
}

/// `cuMemcpy3D`: one 2D copy per slice, each slice `pitch * height` bytes after the previous one.
pub(crate) fn copy_3d(flags: u16, params: *const CUDA_MEMCPY3D, stream: Option<CUstream>) -> CuResult<()> {
    need_ctx()?;
    if let Some(r) = capture(flags, params, stream, graph::Node::Copy3D) {
        return r;
    }
    let m: CUDA_MEMCPY3D = ffi::read(params)?;
    if m.srcLOD != 0 || m.dstLOD != 0 {
        // Mipmapped levels are not remoted yet.
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    if m.srcMemoryType == CUmemorytype::CU_MEMORYTYPE_ARRAY || m.dstMemoryType == CUmemorytype::CU_MEMORYTYPE_ARRAY {
        if let Some(s) = stream {
            // Array copies run synchronously on the server: after the stream's earlier work.
            let id = stream_id(s)?;
            client::call_to(route_of_stream(id), flags, &StreamSynchronize { stream: id }, &[])?;
        }
        let src = Place {
            memory_type: m.srcMemoryType,
            host: m.srcHost as usize,
            device: m.srcDevice,
            array: m.srcArray,
            origin: [m.srcXInBytes, m.srcY, m.srcZ],
            pitch: m.srcPitch,
            height: m.srcHeight,
        };
        let dst = Place {
            memory_type: m.dstMemoryType,
            host: m.dstHost as usize,
            device: m.dstDevice,
            array: m.dstArray,
            origin: [m.dstXInBytes, m.dstY, m.dstZ],
            pitch: m.dstPitch,
            height: m.dstHeight,
        };
        return array_copy(flags, src, dst, [m.WidthInBytes, m.Height, m.Depth]);
    }
    if m.Depth > 1 && (m.srcHeight < m.Height || m.dstHeight < m.Height) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let slice = |pitch: usize, height: usize, z: usize| pitch.checked_mul(height)?.checked_mul(z);
    let owed = std::cell::Cell::new(false);
    for z in 0..m.Depth {
        let src_off = slice(m.srcPitch, m.srcHeight, m.srcZ + z).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let dst_off = slice(m.dstPitch, m.dstHeight, m.dstZ + z).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let plane = CUDA_MEMCPY2D {
            srcXInBytes: m.srcXInBytes,
            srcY: m.srcY,
            srcMemoryType: m.srcMemoryType,
            srcHost: (m.srcHost as usize).wrapping_add(src_off) as *const c_void,
            srcDevice: m.srcDevice.wrapping_add(src_off as u64),
            srcArray: std::ptr::null_mut(),
            srcPitch: m.srcPitch,
            dstXInBytes: m.dstXInBytes,
            dstY: m.dstY,
            dstMemoryType: m.dstMemoryType,
            dstHost: (m.dstHost as usize).wrapping_add(dst_off) as *mut c_void,
            dstDevice: m.dstDevice.wrapping_add(dst_off as u64),
            dstArray: std::ptr::null_mut(),
            dstPitch: m.dstPitch,
            WidthInBytes: m.WidthInBytes,
            Height: m.Height,
        };
        copy_2d_params(flags, plane, stream, Some(&owed))?;
    }
    match stream {
        // Slices into pageable memory: one wait for all of them, as the driver returns once the copy is done.
        Some(s) if owed.get() => super::stream::wait_for_stream(flags, stream_id(s)?),
        _ => Ok(()),
    }
}

/// `owed`: where an async copy into pageable memory records that its stream must still be waited for (a 3D copy
/// waits once after its slices); `None`: it waits itself.
fn copy_2d_params(
    flags: u16,
    m: CUDA_MEMCPY2D,
    stream: Option<CUstream>,
    owed: Option<&std::cell::Cell<bool>>,
) -> CuResult<()> {
    if m.srcMemoryType == CUmemorytype::CU_MEMORYTYPE_ARRAY || m.dstMemoryType == CUmemorytype::CU_MEMORYTYPE_ARRAY {
        if let Some(s) = stream {
            // Array copies run synchronously on the server: after the stream's earlier work.
            let id = stream_id(s)?;
            client::call_to(route_of_stream(id), flags, &StreamSynchronize { stream: id }, &[])?;
        }
        let src = Place {
            memory_type: m.srcMemoryType,
            host: m.srcHost as usize,
            device: m.srcDevice,
            array: m.srcArray,
            origin: [m.srcXInBytes, m.srcY, 0],
            pitch: m.srcPitch,
            height: m.Height,
        };
        let dst = Place {
            memory_type: m.dstMemoryType,
            host: m.dstHost as usize,
            device: m.dstDevice,
            array: m.dstArray,
            origin: [m.dstXInBytes, m.dstY, 0],
            pitch: m.dstPitch,
            height: m.Height,
        };
        return array_copy(flags, src, dst, [m.WidthInBytes, m.Height, 1]);
    }
    let stream = stream.map(stream_id).transpose()?;
    let src = side(
        m.srcMemoryType,
        m.srcHost as usize,
        m.srcDevice,
        m.srcXInBytes,
        m.srcY,
        m.srcPitch,
    )?;
    let dst = side(
        m.dstMemoryType,
        m.dstHost as usize,
        m.dstDevice,
        m.dstXInBytes,
        m.dstY,
        m.dstPitch,
    )?;
    let (w, h) = (m.WidthInBytes, m.Height);
    if h > 1 && (m.srcPitch < w || m.dstPitch < w) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let span = |pitch: u64| {
        pitch
            .saturating_mul(h.saturating_sub(1) as u64)
            .saturating_add(w as u64)
    };
    let (direction, src_addr, src_pitch, dst_addr, dst_pitch) = match (&src, &dst) {
        (Side::Host(_, _), Side::Device(d, dp)) => (0, 0, 0, *d, *dp),
        (Side::Device(s, sp), Side::Host(_, _)) => (1, *s, *sp, 0, 0),
        (Side::Device(s, sp), Side::Device(d, dp)) => (2, *s, *sp, *d, *dp),
        // Host to host: the driver does it with a plain copy; so do we, without the server.
        (Side::Host(s, sp), Side::Host(d, dp)) => {
            for row in 0..h {
                let from = ffi::bytes((s + row * sp) as *const u8, w)?.to_vec();
                ffi::bytes_mut((d + row * dp) as *mut u8, w)?.copy_from_slice(&from);
            }
            return Ok(());
        }
    };
    {
        let reg = state::read();
        if direction != 0 {
            reg.check_range(src_addr, span(src_pitch))?;
        }
        if direction != 1 {
            reg.check_range(dst_addr, span(dst_pitch))?;
        }
    }
    // The server holding the device side (both sides: one server, or a copy from server to server).
    let route = match direction {
        0 => route_of_ptr(dst_addr),
        1 => route_of_ptr(src_addr),
        _ => {
            let (to, from) = (route_of_ptr(dst_addr), route_of_ptr(src_addr));
            if !same_server(to, from)? {
                let rows = super::peer::Rows {
                    dst: dst_addr,
                    dst_pitch,
                    src: src_addr,
                    src_pitch,
                    width: w as u64,
                    height: h as u64,
                };
                return super::peer::copy_rows(flags, rows, stream);
            }
            to
        }
    };
    if let Some(id) = stream.filter(|&id| !same_server(route_of_stream(id), route).unwrap_or(true)) {
        // The memory is on another server than the stream: after the stream's work, synchronously.
        client::flush_all()?;
        super::stream::wait_for_stream(flags, id)?;
        return copy_2d_params(flags & !FLAG_PER_THREAD, m, None, None);
    }
    let packed_len = w.checked_mul(h).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let host_rows = |addr: usize, pitch: usize| -> CuResult<Vec<u8>> {
        let mut v = Vec::with_capacity(packed_len);
        for row in 0..h {
            v.extend_from_slice(ffi::bytes((addr + row * pitch) as *const u8, w)?);
        }
        Ok(v)
    };
    let tail = match src {
        Side::Host(a, p) => host_rows(a, p)?,
        _ => Vec::new(),
    };
    let (width, height) = (w as u64, h as u64);
    match stream {
        None => {
            let call = Memcpy2D {
                src: src_addr,
                src_pitch,
                dst: dst_addr,
                dst_pitch,
                width,
                height,
                direction,
                _pad: 0,
            };
            let mut reply = Vec::new();
            client::call_with_tail_to(route, flags, &call, &tail, &mut reply)?;
            if let Side::Host(a, p) = dst {
                if reply.len() != packed_len {
                    return Err(CUDA_ERROR_UNKNOWN);
                }
                for (row, chunk) in reply.chunks_exact(w.max(1)).enumerate().take(h) {
                    ffi::bytes_mut((a + row * p) as *mut u8, w)?.copy_from_slice(chunk);
                }
            }
            Ok(())
        }
        Some(stream) => {
            let pending_id = match dst {
                Side::Host(a, p) if packed_len > 0 => client::pending_register(client::Landing {
                    addr: a,
                    pitch: p,
                    width: w,
                    rows: h,
                    server: client::server_index(route)?,
                }),
                _ => PendingId::default(),
            };
            let call = Memcpy2DAsync {
                src: src_addr,
                src_pitch,
                dst: dst_addr,
                dst_pitch,
                width,
                height,
                stream,
                pending_id,
                direction,
                _pad: 0,
            };
            client::post_to(route, flags, &call, &tail)?;
            match dst {
                // Into pageable memory the driver returns only once the copy is done, as for linear copies.
                Side::Host(a, _) if packed_len > 0 && crate::mirror::find(a).is_none() => match owed {
                    Some(owed) => {
                        owed.set(true);
                        Ok(())
                    }
                    None => super::stream::wait_for_stream(flags, stream),
                },
                _ => Ok(()),
            }
        }
    }
}

/// `cuMemcpy3DPeer`/`cuMemcpy3DPeerAsync`: under unified addressing the pointers name their devices, so the copy
/// is the `cuMemcpy3D` of the same description (between servers, server to server where it can, see `peer`); the
/// two contexts must be live contexts of this process, as the driver requires.
pub(crate) fn copy_3d_peer(flags: u16, params: *const CUDA_MEMCPY3D_PEER, stream: Option<CUstream>) -> CuResult<()> {
    need_ctx()?;
    let p: CUDA_MEMCPY3D_PEER = ffi::read(params)?;
    for ctx in [p.srcContext, p.dstContext] {
        if ctx.is_null() || !state::read().contexts.contains_key(&ctx.id()) {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
    }
    let m = CUDA_MEMCPY3D {
        srcXInBytes: p.srcXInBytes,
        srcY: p.srcY,
        srcZ: p.srcZ,
        srcLOD: p.srcLOD,
        srcMemoryType: p.srcMemoryType,
        srcHost: p.srcHost,
        srcDevice: p.srcDevice,
        srcArray: p.srcArray,
        reserved0: std::ptr::null_mut(),
        srcPitch: p.srcPitch,
        srcHeight: p.srcHeight,
        dstXInBytes: p.dstXInBytes,
        dstY: p.dstY,
        dstZ: p.dstZ,
        dstLOD: p.dstLOD,
        dstMemoryType: p.dstMemoryType,
        dstHost: p.dstHost,
        dstDevice: p.dstDevice,
        dstArray: p.dstArray,
        reserved1: std::ptr::null_mut(),
        dstPitch: p.dstPitch,
        dstHeight: p.dstHeight,
        WidthInBytes: p.WidthInBytes,
        Height: p.Height,
        Depth: p.Depth,
    };
    copy_3d(flags, &m, stream)
}

entry! {
    cuMemcpy3DPeer, cuMemcpy3DPeer_ptds => |f, params| {
        copy_3d_peer(f, params, None)
    }
    cuMemcpy3DPeerAsync, cuMemcpy3DPeerAsync_ptsz => |f, params, stream| {
        copy_3d_peer(f, params, Some(stream))
    }
    cuMemcpy2D_v2, cuMemcpy2DUnaligned_v2, cuMemcpy2D_v2_ptds, cuMemcpy2DUnaligned_v2_ptds => |f, params| {
        copy_2d(f, params, None)
    }
    cuMemcpy2DAsync_v2, cuMemcpy2DAsync_v2_ptsz => |f, params, stream| {
        copy_2d(f, params, Some(stream))
    }
    cuMemcpy3D_v2, cuMemcpy3D_v2_ptds => |f, params| {
        copy_3d(f, params, None)
    }
    cuMemcpy3DAsync_v2, cuMemcpy3DAsync_v2_ptsz => |f, params, stream| {
        copy_3d(f, params, Some(stream))
    }
}
