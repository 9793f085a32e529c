//! Linear copies between host and device memory, sync and async, and `cuMemcpy` with unified addressing.
//! Synchronous copies are one round trip; async ones are queued, their device-to-host data pushed back before
//! the synchronizing call that covers them returns. Pinned memory goes through shared regions or mirrors.

use std::ffi::c_void;

use vgpu_cuda_sys::driver::{CUcontext, CUstream};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::graph;
use super::need_ctx;
use super::staging::{staged_dtoh, staged_htod, staged_htod_async, STAGED_MIN};
use super::stream::{same_server, stream_id, wait_for_stream};
use super::ClientHandle;
use super::{route_of_ptr, route_of_stream};
use crate::client::Route;
use crate::{client, ffi, mirror, state};

/// Whether `addr` is pinned host memory named by its device address (the mirror's, `mirror`): copies
/// from or to it are host copies, as the client's memory is the truth for the host.
pub(super) fn mirrored(addr: u64) -> bool {
    mirror::find(addr as usize).is_some()
}

/// A copy that a device address of pinned host memory turns into a host-side one: in stream order (after
/// the work queued before it, whose kernels' writes to pinned memory come back first), then a plain copy.
/// `dst_dev`/`src_dev`: whether that side is real device memory.
pub(super) fn copy_via_host(
    flags: u16,
    stream: StreamId,
    dst: u64,
    dst_dev: bool,
    src: u64,
    src_dev: bool,
    n: usize,
) -> CuResult<()> {
    wait_for_stream(flags, stream)?;
    match (dst_dev, src_dev) {
        (true, _) => client::call_to(
            route_of_ptr(dst),
            flags,
            &MemcpyHtoD {
                dst: DevicePtr(dst),
                size: n as u64,
            },
            ffi::bytes(src as *const u8, n)?,
        )
        .map(|_| ()),
        (false, true) => {
            let out = ffi::bytes_mut(dst as *mut u8, n)?;
            let call = MemcpyDtoH {
                src: DevicePtr(src),
                size: n as u64,
            };
            client::copy_to_host(route_of_ptr(src), flags, &call, out)
        }
        (false, false) => {
            let from = ffi::bytes(src as *const u8, n)?.to_vec();
            ffi::bytes_mut(dst as *mut u8, n)?.copy_from_slice(&from);
            Ok(())
        }
    }
}

/// A device-to-host copy into mirrored pinned memory, where it must land in the mirror: the device address
/// of `dst` there. The range is then marked as copied (`mirror::mark_copied`) and comes back at the next
/// synchronizing call; landing it on the host instead would race with that pull. (Only for a mirror on the
/// copy's own server: `mirror_on`.)
fn into_mirror(dst: *mut c_void, n: usize) -> Option<u64> {
    if n == 0 {
        return None;
    }
    let m = mirror::find(dst as usize)?;
    let end = (dst as usize).checked_add(n)?;
    (end <= m.data + m.data_len).then(|| m.dptr + (dst as usize - m.base) as u64)
}

/// Whether the mirror holding `addr` lives on the server `route` leads to.
fn mirror_on(addr: usize, route: Route) -> bool {
    mirror::find(addr).is_some_and(|m| same_server(route, Route::Device(m.device)).unwrap_or(false))
}

/// The shared pinned region holding all of `n` bytes at `ptr`, as (region id, offset), where the server of
/// `route` maps it.
fn region_of(ptr: *const c_void, n: usize, route: Route) -> Option<(RegionId, u64)> {
    if n == 0 {
        return None;
    }
    let server = client::server_index(route).ok()?;
    state::read().shared_region(ptr as usize, n, server)
}

/// Host-to-device data is read when the call is made. Natively, a copy from pinned memory reads it when the
/// copy runs, after earlier device-to-host copies into that memory have landed (a chain reusing one host
/// buffer): where such a copy is still under way, wait for it first.
fn await_landings(src: *const c_void, n: usize) -> CuResult<()> {
    if let Some(server) = client::pending_overlaps(src as usize, n) {
        client::call_to(Route::Server(server), 0, &CtxSynchronize {}, &[])?;
        mirror::after_sync_of(mirror::Covered::Server(server))?;
    }
    Ok(())
}

/// Bytes of mirrored host memory that copies queued on the server `route` wrote into the mirror: their address
/// there. Where a kernel may have written them, copies wrote only part of them, or the mirror is on another
/// server, the queued work is waited for and what it changed brought back (`mirror::settle`): the host's bytes
/// serve.
fn newer_in_mirror(addr: usize, n: usize, route: Route) -> CuResult<Option<u64>> {
    match mirror::pending_source(addr, n) {
        mirror::Source::Host => Ok(None),
        mirror::Source::Mirror(from, device) if same_server(route, Route::Device(device))? => Ok(Some(from)),
        _ => {
            mirror::settle(addr)?;
            Ok(None)
        }
    }
}

/// Whether large copies on `route` may use this thread's shared staging slots, which live on its current
/// context's server.
fn staging_usable(route: Route) -> bool {
    same_server(route, Route::Current).unwrap_or(false)
}

fn htod(flags: u16, dst: u64, src: *const c_void, n: usize) -> CuResult<()> {
    let ctx = need_ctx()?;
    if mirrored(dst) {
        return copy_via_host(flags, StreamId::NULL, dst, false, src as u64, false, n);
    }
    let route = route_of_ptr(dst);
    if let Some((region, offset)) = region_of(src, n, route) {
        let call = MemcpyHtoDRegion {
            dst: DevicePtr(dst),
            region,
            offset,
            size: n as u64,
        };
        client::call_to(route, flags, &call, &[])?;
        return mirror::after_sync_on(route);
    }
    if let Some(from) = newer_in_mirror(src as usize, n, route)? {
        client::call_to(
            route,
            flags,
            &MemcpyDtoD {
                dst: DevicePtr(dst),
                src: DevicePtr(from),
                size: n as u64,
            },
            &[],
        )?;
        return mirror::after_sync_on(route);
    }
    await_landings(src, n)?;
    if n >= STAGED_MIN && staging_usable(route) {
        if let Some(done) = staged_htod(flags, ctx, dst, src, n) {
            return done.and_then(|_| mirror::after_sync_on(route));
        }
    }
    let data = ffi::bytes(src as *const u8, n)?;
    let call = MemcpyHtoD {
        dst: DevicePtr(dst),
        size: n as u64,
    };
    client::call_to(route, flags, &call, data)?;
    // A synchronous copy waits for the work before it: kernels' writes to pinned memory are due now.
    mirror::after_sync_on(route)
}

fn dtoh(flags: u16, dst: *mut c_void, src: u64, n: usize) -> CuResult<()> {
    let ctx = need_ctx()?;
    if mirrored(src) {
        return copy_via_host(flags, StreamId::NULL, dst as u64, false, src, false, n);
    }
    let route = route_of_ptr(src);
    // Into mirrored pinned memory: only when queued work may have written the mirror must the copy go there
    // (the pull at the end would undo a direct landing); otherwise the host's bytes are the truth and the
    // copy lands on them directly, pipelined like a pageable copy (a later launch pushes them).
    let through_mirror = newer_in_mirror(dst as usize, n, route)?.is_some();
    if let Some(dptr) = into_mirror(dst, n).filter(|_| through_mirror) {
        client::call_to(
            route,
            flags,
            &MemcpyDtoD {
                dst: DevicePtr(dptr),
                src: DevicePtr(src),
                size: n as u64,
            },
            &[],
        )?;
        mirror::mark_copied(dst as usize, n, route, flags, StreamId::NULL);
        return mirror::after_sync_on(route);
    }
    if let Some((region, offset)) = region_of(dst, n, route) {
        let call = MemcpyDtoHRegion {
            src: DevicePtr(src),
            region,
            offset,
            size: n as u64,
        };
        client::call_to(route, flags, &call, &[])?;
        return mirror::after_sync_on(route);
    }
    if n >= STAGED_MIN && staging_usable(route) {
        if let Some(done) = staged_dtoh(flags, ctx, dst, src, n) {
            return done.and_then(|_| mirror::after_sync_on(route));
        }
    }
    let out = ffi::bytes_mut(dst as *mut u8, n)?;
    let call = MemcpyDtoH {
        src: DevicePtr(src),
        size: n as u64,
    };
    client::copy_to_host(route, flags, &call, out)?;
    mirror::after_sync_on(route)
}

/// An asynchronous copy whose memory lives on another server than its stream: no stream there can order it, so
/// it runs after the stream's work, synchronously (`then`), as the driver orders a copy after a stream's work.
fn after_stream(flags: u16, stream: StreamId, then: impl FnOnce() -> CuResult<()>) -> CuResult<()> {
    client::flush_all()?;
    wait_for_stream(flags, stream)?;
    then()
}

pub(crate) fn htod_async(flags: u16, dst: u64, src: *const c_void, n: usize, stream: CUstream) -> CuResult<()> {
    let ctx = need_ctx()?;
    let stream = stream_id(stream)?;
    if let Some(r) = graph::capture(
        graph::key(flags, stream),
        graph::Node::HtoD {
            dst,
            src: src as usize,
            n,
        },
    ) {
        return r;
    }
    if mirrored(dst) {
        return copy_via_host(flags, stream, dst, false, src as u64, false, n);
    }
    state::read().check_range(dst, n as u64)?;
    let route = route_of_stream(stream);
    if !same_server(route, route_of_ptr(dst))? {
        return after_stream(flags, stream, || htod(flags & !FLAG_PER_THREAD, dst, src, n));
    }
    if let Some((region, offset)) = region_of(src, n, route) {
        // The GPU reads the app's buffer when the copy runs, as natively.
        let call = MemcpyHtoDRegionAsync {
            dst: DevicePtr(dst),
            region,
            offset,
            size: n as u64,
            stream,
        };
        return client::post_to(route, flags, &call, &[]);
    }
    if let Some(from) = newer_in_mirror(src as usize, n, route)? {
        let call = MemcpyDtoDAsync {
            dst: DevicePtr(dst),
            src: DevicePtr(from),
            size: n as u64,
            stream,
        };
        return client::post_to(route, flags, &call, &[]);
    }
    await_landings(src, n)?;
    if n >= STAGED_MIN && staging_usable(route) {
        if let Some(done) = staged_htod_async(flags, ctx, dst, src, n, stream) {
            return done;
        }
    }
    let data = ffi::bytes(src as *const u8, n)?;
    let call = MemcpyHtoDAsync {
        dst: DevicePtr(dst),
        size: n as u64,
        stream,
    };
    if vgpu_dataplane::pinned::find(src as usize, n).is_some() {
        return client::post_pinned_to(route, flags, &call, data);
    }
    client::post_to(route, flags, &call, data)
}

pub(crate) fn dtoh_async(flags: u16, dst: *mut c_void, src: u64, n: usize, stream: CUstream) -> CuResult<()> {
    need_ctx()?;
    let stream = stream_id(stream)?;
    if let Some(r) = graph::capture(
        graph::key(flags, stream),
        graph::Node::DtoH {
            dst: dst as usize,
            src,
            n,
        },
    ) {
        return r;
    }
    if mirrored(src) {
        return copy_via_host(flags, stream, dst as u64, false, src, false, n);
    }
    state::read().check_range(src, n as u64)?;
    if n == 0 {
        return Ok(());
    }
    if dst.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let route = route_of_stream(stream);
    if !same_server(route, route_of_ptr(src))? {
        return after_stream(flags, stream, || dtoh(flags & !FLAG_PER_THREAD, dst, src, n));
    }
    if let Some(dptr) = into_mirror(dst, n).filter(|_| mirror_on(dst as usize, route)) {
        let call = MemcpyDtoDAsync {
            dst: DevicePtr(dptr),
            src: DevicePtr(src),
            size: n as u64,
            stream,
        };
        client::post_to(route, flags, &call, &[])?;
        mirror::mark_copied(dst as usize, n, route, flags, stream);
        return Ok(());
    }
    if let Some((region, offset)) = region_of(dst, n, route) {
        // The GPU writes straight into the app's buffer when the copy runs: nothing to deliver later.
        let call = MemcpyDtoHRegionAsync {
            src: DevicePtr(src),
            region,
            offset,
            size: n as u64,
            stream,
        };
        return client::post_to(route, flags, &call, &[]);
    }
    let pending_id = client::pending_register(client::Landing {
        addr: dst as usize,
        pitch: n,
        width: n,
        rows: 1,
        server: client::server_index(route)?,
    });
    client::post_to(
        route,
        flags,
        &MemcpyDtoHAsync {
            src: DevicePtr(src),
            size: n as u64,
            stream,
            pending_id,
        },
        &[],
    )?;
    if mirror::find(dst as usize).is_none() {
        // Into pageable memory the driver returns only once the copy is done, and libraries count on it
        // (cuSPARSE reads a count it copied so at once): the bytes are in place before this returns. Pinned
        // destinations (here: mirrored on another server) stay asynchronous, as natively.
        return wait_for_stream(flags, stream);
    }
    Ok(())
}

pub(crate) fn dtod_async(f: u16, dst: u64, src: u64, n: usize, stream: CUstream) -> CuResult<()> {
    need_ctx()?;
    let stream = stream_id(stream)?;
    if let Some(r) = graph::capture(graph::key(f, stream), graph::Node::DtoD { dst, src, n }) {
        return r;
    }
    if mirrored(dst) || mirrored(src) {
        return copy_via_host(f, stream, dst, !mirrored(dst), src, !mirrored(src), n);
    }
    {
        let reg = state::read();
        reg.check_range(src, n as u64)?;
        reg.check_range(dst, n as u64)?;
    }
    let route = route_of_stream(stream);
    let (to, from) = (route_of_ptr(dst), route_of_ptr(src));
    if !same_server(to, from)? {
        return super::peer::copy(f, dst, src, n, Some(stream));
    }
    if !same_server(route, to)? {
        return after_stream(f, stream, || dtod(f & !FLAG_PER_THREAD, dst, src, n));
    }
    client::post_to(
        route,
        f,
        &MemcpyDtoDAsync {
            dst: DevicePtr(dst),
            src: DevicePtr(src),
            size: n as u64,
            stream,
        },
        &[],
    )
}

/// `cuMemcpyDtoD`: on the server holding both sides (one server's driver copies between its devices), or from
/// server to server.
fn dtod(flags: u16, dst: u64, src: u64, n: usize) -> CuResult<()> {
    need_ctx()?;
    if mirrored(dst) || mirrored(src) {
        return copy_via_host(flags, StreamId::NULL, dst, !mirrored(dst), src, !mirrored(src), n);
    }
    let (to, from) = (route_of_ptr(dst), route_of_ptr(src));
    if !same_server(to, from)? {
        return super::peer::copy(flags, dst, src, n, None);
    }
    let call = MemcpyDtoD {
        dst: DevicePtr(dst),
        src: DevicePtr(src),
        size: n as u64,
    };
    client::call_to(to, flags, &call, &[]).map(|_| ())
}

/// `cuMemcpyPeer`'s contexts must be live contexts of this process, as the driver requires.
fn peer_contexts(dst: CUcontext, src: CUcontext) -> CuResult<()> {
    for ctx in [dst, src] {
        if ctx.is_null() || !state::read().contexts.contains_key(&ctx.id()) {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
    }
    Ok(())
}

/// Where a unified-addressing pointer lives: device memory the app allocated, or anywhere on the host.
fn is_device(addr: u64) -> bool {
    state::read().device_range(addr).is_some()
}

/// `cuMemcpy`/`cuMemcpyAsync`: unified addressing decides the direction from the pointers themselves.
fn copy_unified(flags: u16, dst: u64, src: u64, n: usize, stream: Option<CUstream>) -> CuResult<()> {
    need_ctx()?;
    match (is_device(dst), is_device(src), stream) {
        (true, true, None) => dtod(flags, dst, src, n),
        (true, true, Some(s)) => dtod_async(flags, dst, src, n, s),
        (true, false, None) => htod(flags, dst, src as *const c_void, n),
        (true, false, Some(s)) => htod_async(flags, dst, src as *const c_void, n, s),
        (false, true, None) => dtoh(flags, dst as *mut c_void, src, n),
        (false, true, Some(s)) => dtoh_async(flags, dst as *mut c_void, src, n, s),
        (false, false, stream) => {
            // Host to host: in stream order, after the work already queued on the stream.
            if let Some(s) = stream {
                let id = stream_id(s)?;
                client::call_to(route_of_stream(id), flags, &StreamSynchronize { stream: id }, &[])?;
            }
            let from = ffi::bytes(src as *const u8, n)?.to_vec();
            ffi::bytes_mut(dst as *mut u8, n)?.copy_from_slice(&from);
            Ok(())
        }
    }
}

entry! {
    cuMemcpy, cuMemcpy_ptds => |f, dst, src, n| {
        copy_unified(f, dst, src, n, None)
    }
    cuMemcpyAsync, cuMemcpyAsync_ptsz => |f, dst, src, n, stream| {
        copy_unified(f, dst, src, n, Some(stream))
    }
    cuMemcpyHtoD_v2, cuMemcpyHtoD_v2_ptds => |f, dst, src, n| {
        htod(f, dst, src, n)
    }
    cuMemcpyDtoH_v2, cuMemcpyDtoH_v2_ptds => |f, dst, src, n| {
        dtoh(f, dst, src, n)
    }
    cuMemcpyDtoD_v2, cuMemcpyDtoD_v2_ptds => |f, dst, src, n| {
        dtod(f, dst, src, n)
    }
    cuMemcpyHtoDAsync_v2, cuMemcpyHtoDAsync_v2_ptsz => |f, dst, src, n, stream| {
        htod_async(f, dst, src, n, stream)
    }
    cuMemcpyDtoHAsync_v2, cuMemcpyDtoHAsync_v2_ptsz => |f, dst, src, n, stream| {
        dtoh_async(f, dst, src, n, stream)
    }
    cuMemcpyDtoDAsync_v2, cuMemcpyDtoDAsync_v2_ptsz => |f, dst, src, n, stream| {
        dtod_async(f, dst, src, n, stream)
    }
    // Unified addressing names each pointer's device, so a peer copy is a device-to-device copy; the contexts
    // only have to be real ones (on one server the server's driver copies, across servers `peer` moves it).
    cuMemcpyPeer, cuMemcpyPeer_ptds => |f, dst, dst_ctx, src, src_ctx, n| {
        peer_contexts(dst_ctx, src_ctx)?;
        dtod(f, dst, src, n)
    }
    cuMemcpyPeerAsync, cuMemcpyPeerAsync_ptsz => |f, dst, dst_ctx, src, src_ctx, n, stream| {
        peer_contexts(dst_ctx, src_ctx)?;
        dtod_async(f, dst, src, n, stream)
    }
}
