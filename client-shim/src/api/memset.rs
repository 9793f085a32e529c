//! Memsets (8/16/32-bit, 1D and 2D, sync and async): checked here as the driver checks them, queued or sent in
//! one round trip; pinned or managed memory named by its device address is set on the host copy.

use vgpu_cuda_sys::driver::CUstream;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::copy::mirrored;
use super::graph;
use super::need_ctx;
use super::stream::{same_server, stream_id};
use super::{route_of_ptr, route_of_stream};
use crate::{client, ffi, state};

/// The driver's own checks on a memset: element alignment of the address and pitch, and the range.
fn check_memset(dst: u64, pitch: usize, elem: u32, width: usize, height: usize) -> CuResult<()> {
    let e = elem as u64;
    if !dst.is_multiple_of(e)
        || (height > 1 && (!(pitch as u64).is_multiple_of(e) || (pitch as u64) < width as u64 * e))
    {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if width == 0 || height == 0 {
        return Ok(());
    }
    let span = (pitch as u64)
        .saturating_mul(height as u64 - 1)
        .saturating_add(width as u64 * e);
    state::read().check_range(dst, span)
}

/// A memset of pinned or managed memory named by its device address: on the host copy, in stream order.
#[allow(clippy::too_many_arguments)]
fn memset_host(
    flags: u16,
    stream: StreamId,
    dst: u64,
    pitch: usize,
    value: u32,
    elem: u32,
    width: usize,
    height: usize,
) -> CuResult<()> {
    super::stream::wait_for_stream(flags, stream)?;
    let bytes = value.to_le_bytes();
    let row_len = width.checked_mul(elem as usize).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    for row in 0..height {
        let offset = row.checked_mul(pitch).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let at = (dst as usize).checked_add(offset).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let out = ffi::bytes_mut(at as *mut u8, row_len)?;
        for chunk in out.chunks_exact_mut(elem as usize) {
            chunk.copy_from_slice(&bytes[..elem as usize]);
        }
    }
    Ok(())
}

fn memset(flags: u16, dst: u64, pitch: usize, value: u32, elem: u32, width: usize, height: usize) -> CuResult<()> {
    need_ctx()?;
    if mirrored(dst) {
        return memset_host(flags, StreamId::NULL, dst, pitch, value, elem, width, height);
    }
    check_memset(dst, pitch, elem, width, height)?;
    let call = Memset {
        dst: DevicePtr(dst),
        pitch: pitch as u64,
        width: width as u64,
        height: height as u64,
        value,
        elem_size: elem,
    };
    client::call_to(route_of_ptr(dst), flags, &call, &[]).map(|_| ())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn memset_async(
    flags: u16,
    dst: u64,
    pitch: usize,
    value: u32,
    elem: u32,
    width: usize,
    height: usize,
    stream: CUstream,
) -> CuResult<()> {
    need_ctx()?;
    let stream = stream_id(stream)?;
    if mirrored(dst) && !graph::is_capturing(graph::key(flags, stream)) {
        return memset_host(flags, stream, dst, pitch, value, elem, width, height);
    }
    check_memset(dst, pitch, elem, width, height)?;
    let node = graph::Node::Memset {
        dst,
        pitch,
        value,
        elem,
        width,
        height,
    };
    if let Some(r) = graph::capture(graph::key(flags, stream), node) {
        return r;
    }
    let route = route_of_stream(stream);
    if !same_server(route, route_of_ptr(dst))? {
        // Memory of another server than the stream's: after the stream's work, synchronously.
        client::flush_all()?;
        super::stream::wait_for_stream(flags, stream)?;
        return memset(flags & !FLAG_PER_THREAD, dst, pitch, value, elem, width, height);
    }
    let call = MemsetAsync {
        dst: DevicePtr(dst),
        pitch: pitch as u64,
        width: width as u64,
        height: height as u64,
        stream,
        value,
        elem_size: elem,
    };
    client::post_to(route, flags, &call, &[])
}

entry! {
    cuMemsetD8_v2, cuMemsetD8_v2_ptds => |f, dst, value, n| {
        memset(f, dst, n, value as u32, 1, n, 1)
    }
    cuMemsetD16_v2, cuMemsetD16_v2_ptds => |f, dst, value, n| {
        memset(f, dst, n * 2, value as u32, 2, n, 1)
    }
    cuMemsetD32_v2, cuMemsetD32_v2_ptds => |f, dst, value, n| {
        memset(f, dst, n * 4, value, 4, n, 1)
    }
    cuMemsetD2D8_v2, cuMemsetD2D8_v2_ptds => |f, dst, pitch, value, w, h| {
        memset(f, dst, pitch, value as u32, 1, w, h)
    }
    cuMemsetD2D16_v2, cuMemsetD2D16_v2_ptds => |f, dst, pitch, value, w, h| {
        memset(f, dst, pitch, value as u32, 2, w, h)
    }
    cuMemsetD2D32_v2, cuMemsetD2D32_v2_ptds => |f, dst, pitch, value, w, h| {
        memset(f, dst, pitch, value, 4, w, h)
    }
    cuMemsetD8Async, cuMemsetD8Async_ptsz => |f, dst, value, n, stream| {
        memset_async(f, dst, n, value as u32, 1, n, 1, stream)
    }
    cuMemsetD16Async, cuMemsetD16Async_ptsz => |f, dst, value, n, stream| {
        memset_async(f, dst, n * 2, value as u32, 2, n, 1, stream)
    }
    cuMemsetD32Async, cuMemsetD32Async_ptsz => |f, dst, value, n, stream| {
        memset_async(f, dst, n * 4, value, 4, n, 1, stream)
    }
    cuMemsetD2D8Async, cuMemsetD2D8Async_ptsz => |f, dst, pitch, value, w, h, stream| {
        memset_async(f, dst, pitch, value as u32, 1, w, h, stream)
    }
    cuMemsetD2D16Async, cuMemsetD2D16Async_ptsz => |f, dst, pitch, value, w, h, stream| {
        memset_async(f, dst, pitch, value as u32, 2, w, h, stream)
    }
    cuMemsetD2D32Async, cuMemsetD2D32Async_ptsz => |f, dst, pitch, value, w, h, stream| {
        memset_async(f, dst, pitch, value, 4, w, h, stream)
    }
}
