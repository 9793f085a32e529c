//! Copies between devices of different servers (`cuMemcpyPeer`, `cuMemcpyDtoD`, unified `cuMemcpy`, 2D/3D peer
//! copies). Today the bytes are relayed through this process in chunks (read from the source server, written to
//! the destination server); a direct server-to-server path (issue 16) is not built yet.

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::route_of_ptr;
use super::route_of_stream;
use crate::client;

/// Bytes relayed per round: bounds this process's buffer while keeping each call large.
const RELAY_CHUNK: usize = 8 << 20;

/// Copies `n` bytes from `src` to `dst`, devices of two different servers; in `stream`'s order, or synchronously.
/// Each chunk is a synchronous device-to-host copy on the source server (ordered after that server's legacy
/// stream work, as the driver orders a synchronous copy) and a synchronous host-to-device copy on the
/// destination server. An asynchronous copy first waits for its stream's earlier work, as `after_stream` does
/// for other copies that no single server's stream can order; it has finished when the call returns.
pub(crate) fn copy(flags: u16, dst: u64, src: u64, n: usize, stream: Option<StreamId>) -> CuResult<()> {
    let flags = after_stream(flags, stream)?;
    relay(flags, dst, src, n)
}

/// Waits for `stream`'s queued work (if any) on its server; the flags for the synchronous copies that follow.
fn after_stream(flags: u16, stream: Option<StreamId>) -> CuResult<u16> {
    client::flush_all()?;
    if let Some(stream) = stream {
        client::call_to(route_of_stream(stream), flags, &StreamSynchronize { stream }, &[])?;
        crate::mirror::after_sync()?;
        return Ok(flags & !FLAG_PER_THREAD);
    }
    Ok(flags)
}

/// The chunked relay of [src, src+n) on one server to [dst, dst+n) on another.
fn relay(flags: u16, dst: u64, src: u64, n: usize) -> CuResult<()> {
    let (to, from) = (route_of_ptr(dst), route_of_ptr(src));
    let mut buf = vec![0u8; n.min(RELAY_CHUNK)];
    let mut done = 0usize;
    while done < n {
        let len = (n - done).min(RELAY_CHUNK);
        let chunk = &mut buf[..len];
        let read = MemcpyDtoH {
            src: DevicePtr(src + done as u64),
            size: len as u64,
        };
        client::copy_to_host(from, flags, &read, chunk)?;
        let write = MemcpyHtoD {
            dst: DevicePtr(dst + done as u64),
            size: len as u64,
        };
        client::call_to(to, flags, &write, chunk)?;
        done += len;
    }
    Ok(())
}

/// A pitched copy between device memory of two servers: `height` rows of `width` bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rows {
    pub dst: u64,
    pub dst_pitch: u64,
    pub src: u64,
    pub src_pitch: u64,
    pub width: u64,
    pub height: u64,
}

/// `cuMemcpy2D`/`cuMemcpy3D` (one slice at a time) between devices of two servers: one relay when both sides are
/// contiguous (pitch = width), else one relay per row.
pub(crate) fn copy_rows(flags: u16, rows: Rows, stream: Option<StreamId>) -> CuResult<()> {
    let flags = after_stream(flags, stream)?;
    let w = usize::try_from(rows.width).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    if rows.dst_pitch == rows.width && rows.src_pitch == rows.width {
        let n = w
            .checked_mul(usize::try_from(rows.height).map_err(|_| CUDA_ERROR_INVALID_VALUE)?)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        return relay(flags, rows.dst, rows.src, n);
    }
    for row in 0..rows.height {
        let at = |base: u64, pitch: u64| {
            row.checked_mul(pitch)
                .and_then(|o| base.checked_add(o))
                .ok_or(CUDA_ERROR_INVALID_VALUE)
        };
        relay(flags, at(rows.dst, rows.dst_pitch)?, at(rows.src, rows.src_pitch)?, w)?;
    }
    Ok(())
}
