//! Device memory and copies. Allocation and synchronous copies are one round trip; async copies and memsets
//! are queued; device-to-host async data is pushed back before the synchronizing call that covers it returns.

use std::ffi::{c_int, c_uint, c_void};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::graph;
use super::{need_ctx, Handle};
use crate::state;
use crate::{client, ffi, mirror};

fn stream_id(stream: Handle) -> CuResult<u64> {
    super::exec::stream_id(stream)
}

fn array_create(out: *mut Handle, shape: ArrayShape) -> CuResult<()> {
    need_ctx()?;
    if out.is_null() || shape.element_bytes().is_none() || shape.width == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let array = state::new_id();
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
    state::write().arrays.insert(array, shape);
    ffi::write(out, array as Handle)
}

/// `cuTexObjectCreate`/`cuSurfObjectCreate`: the descriptors travel as they are; the server puts its own
/// array handle in place of the client's.
fn tex_object(out: *mut u64, surface: bool, resource: *const u8, texture: *const u8, view: *const u8) -> CuResult<()> {
    need_ctx()?;
    if out.is_null() || (!surface && texture.is_null()) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut tail = ffi::bytes(resource, RESOURCE_DESC_LEN)?.to_vec();
    let res_type = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if res_type == 0 {
        let id = u64::from_le_bytes(tail[8..16].try_into().map_err(|_| CUDA_ERROR_INVALID_VALUE)?);
        if !state::read().arrays.contains_key(&id) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
    }
    if !surface {
        tail.extend_from_slice(ffi::bytes(texture, TEXTURE_DESC_LEN)?);
        if !view.is_null() {
            tail.extend_from_slice(ffi::bytes(view, RESOURCE_VIEW_DESC_LEN)?);
        }
    }
    let call = TexObjectCreate {
        surface: surface as u32,
        has_view: (!surface && !view.is_null()) as u32,
    };
    let r = client::call(0, &call, &tail)?;
    ffi::write(out, r.object)
}

/// Whether `addr` is pinned host memory named by its device address (the mirror's, `mirror`): copies
/// from or to it are host copies, as the client's memory is the truth for the host.
fn mirrored(addr: u64) -> bool {
    mirror::find(addr as usize).is_some()
}

/// A copy that a device address of pinned host memory turns into a host-side one: in stream order (after
/// the work queued before it, whose kernels' writes to pinned memory come back first), then a plain copy.
/// `dst_dev`/`src_dev`: whether that side is real device memory.
fn copy_via_host(flags: u16, stream: u64, dst: u64, dst_dev: bool, src: u64, src_dev: bool, n: usize) -> CuResult<()> {
    client::call(flags, &StreamSynchronize { stream }, &[])?;
    mirror::after_sync()?;
    match (dst_dev, src_dev) {
        (true, _) => client::call(
            flags,
            &MemcpyHtoD { dst, size: n as u64 },
            ffi::bytes(src as *const u8, n)?,
        )
        .map(|_| ()),
        (false, true) => {
            let out = ffi::bytes_mut(dst as *mut u8, n)?;
            client::with_channel(|ch, _| ch.copy_to_host(flags, &MemcpyDtoH { src, size: n as u64 }, out))
        }
        (false, false) => {
            let from = ffi::bytes(src as *const u8, n)?.to_vec();
            ffi::bytes_mut(dst as *mut u8, n)?.copy_from_slice(&from);
            Ok(())
        }
    }
}

/// Pageable copies at least this large go through the thread's shared staging slots.
const STAGED_MIN: usize = 1 << 20;
/// Size of each of the two staging slots.
const STAGING_SLOT: usize = 8 << 20;

/// Per-thread double buffer in shared pinned memory for pageable device-to-host copies on shared-memory
/// sessions: the GPU writes one slot while this thread copies the other out, so each byte is copied by the CPU
/// once (as in the native driver's own staging), not three times through the ring.
struct Staging {
    ptr: *mut u8,
    region: u64,
    /// Events (created in `ctx`) marking when each slot's copy has landed.
    events: [u64; 2],
    ctx: u64,
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The thread is ending: release this process's mapping (the server keeps its own until the session ends).
        state::write().shared_regions.remove(&(self.ptr as usize));
        ffi::free_shared(self.ptr, 2 * STAGING_SLOT);
    }
}

thread_local! {
    static STAGING: std::cell::RefCell<Option<Staging>> = const { std::cell::RefCell::new(None) };
}

/// Copies `n` bytes from device `src` to pageable `dst` through the staging slots; `None` when staging is not
/// available here (not a local session, sharing turned off, or the server could not map the slots).
fn staged_dtoh(flags: u16, ctx: u64, dst: *mut c_void, src: u64, n: usize) -> Option<CuResult<()>> {
    let (base, region, events) = staging(flags, ctx)?;
    Some(staged_copy_out(flags, base, region, events, dst as *mut u8, src, n))
}

/// Copies `n` bytes from pageable `src` to device `dst` through the staging slots: this thread fills one slot
/// while the GPU reads the other. Returns once every byte has reached the device.
fn staged_htod(flags: u16, ctx: u64, dst: u64, src: *const c_void, n: usize) -> Option<CuResult<()>> {
    let (base, region, events) = staging(flags, ctx)?;
    Some(staged_copy_in(flags, base, region, events, dst, src as *const u8, n))
}

/// This thread's staging slots (created on first use): base address, region id, and the two slot events.
fn staging(flags: u16, ctx: u64) -> Option<(*mut u8, u64, [u64; 2])> {
    let ready = STAGING.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_some_and(|s| s.ctx != ctx) {
            // Events belong to a context: a thread that switched contexts needs new ones (slots stay).
            let old = slot.take()?;
            *slot = Some(Staging {
                events: staging_events()?,
                ctx,
                ..old
            });
        }
        if slot.is_none() {
            let ptr = shared_alloc(flags, 2 * STAGING_SLOT, false, 0)?;
            let region = {
                let mut reg = state::write();
                // Staging is the shim's own memory, not an allocation the app may name.
                reg.host_allocs.remove(&(ptr as usize));
                reg.shared_region(ptr as usize, 1)?.0
            };
            *slot = Some(Staging {
                ptr,
                region,
                events: staging_events()?,
                ctx,
            });
        }
        slot.as_ref().map(|s| (s.ptr as usize, s.region, s.events))
    });
    let (base, region, events) = ready?;
    Some((base as *mut u8, region, events))
}

/// Queues a staging-slot copy and records the slot's event after it, so the slot's next user can wait for it.
fn post_and_mark<C: Call>(flags: u16, copy: &C, event: u64, stream: u64) -> CuResult<()> {
    client::post(flags, copy, &[])?;
    client::post(flags, &EventRecord { event, stream }, &[])
}

fn staged_copy_in(
    flags: u16,
    base: *mut u8,
    region: u64,
    events: [u64; 2],
    dst: u64,
    src: *const u8,
    n: usize,
) -> CuResult<()> {
    state::read().check_range(dst, n as u64)?;
    let input = ffi::bytes(src, n)?;
    let stream = if flags & FLAG_PER_THREAD != 0 { 2 } else { 0 };
    for (i, off) in (0..n).step_by(STAGING_SLOT).enumerate() {
        let len = STAGING_SLOT.min(n - off);
        let slot = i % 2;
        if i >= 2 {
            // The GPU must have finished reading this slot (chunk i - 2) before it is refilled.
            client::call(0, &EventSynchronize { event: events[slot] }, &[])?;
        }
        let staged = ffi::bytes_mut(base.wrapping_add(slot * STAGING_SLOT), len)?;
        copy_parallel(staged, &input[off..off + len]);
        let copy = MemcpyHtoDRegionAsync {
            dst: dst + off as u64,
            region,
            offset: (slot * STAGING_SLOT) as u64,
            size: len as u64,
            stream,
        };
        post_and_mark(flags, &copy, events[slot], stream)?;
    }
    // Both slots are free again when this returns, and every byte is on the device.
    for event in events {
        client::call(0, &EventSynchronize { event }, &[])?;
    }
    Ok(())
}

fn staging_events() -> Option<[u64; 2]> {
    let mut events = [0u64; 2];
    for e in &mut events {
        *e = state::new_id();
        // CU_EVENT_DISABLE_TIMING: the cheapest kind to record and wait for.
        client::post_now(
            0,
            &EventCreate {
                event: *e,
                flags: 2,
                _pad: 0,
            },
            &[],
        )
        .ok()?;
    }
    Some(events)
}

fn staged_copy_out(
    flags: u16,
    base: *mut u8,
    region: u64,
    events: [u64; 2],
    dst: *mut u8,
    src: u64,
    n: usize,
) -> CuResult<()> {
    // Checked here so that a bad range fails before any byte moves, as natively.
    state::read().check_range(src, n as u64)?;
    let out = ffi::bytes_mut(dst, n)?;
    let stream = if flags & FLAG_PER_THREAD != 0 { 2 } else { 0 };
    let chunks: Vec<(usize, usize)> = (0..n)
        .step_by(STAGING_SLOT)
        .map(|off| (off, STAGING_SLOT.min(n - off)))
        .collect();
    let issue = |i: usize| -> CuResult<()> {
        let (off, len) = chunks[i];
        let slot = i % 2;
        let copy = MemcpyDtoHRegionAsync {
            src: src + off as u64,
            region,
            offset: (slot * STAGING_SLOT) as u64,
            size: len as u64,
            stream,
        };
        post_and_mark(flags, &copy, events[slot], stream)
    };
    for i in 0..chunks.len().min(2) {
        issue(i)?;
    }
    for (i, &(off, len)) in chunks.iter().enumerate() {
        let slot = i % 2;
        client::call(0, &EventSynchronize { event: events[slot] }, &[])?;
        // The slot lies inside the shared staging mapping, and the event says the GPU has finished writing it.
        let staged = ffi::bytes(base.wrapping_add(slot * STAGING_SLOT), len)?;
        copy_parallel(&mut out[off..off + len], staged);
        if i + 2 < chunks.len() {
            issue(i + 2)?;
        }
    }
    Ok(())
}

/// One thread's `memcpy` into fresh pageable memory runs well below memory bandwidth; large slots are copied by
/// `VGPU_COPY_THREADS` threads (default 4) at once.
fn copy_parallel(dst: &mut [u8], src: &[u8]) {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = *THREADS.get_or_init(|| {
        std::env::var("VGPU_COPY_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4usize)
            .clamp(1, 16)
    });
    if threads == 1 || dst.len() < (1 << 20) {
        dst.copy_from_slice(src);
        return;
    }
    let part = dst.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut pieces = dst.chunks_mut(part).zip(src.chunks(part));
        let first = pieces.next();
        for (d, s) in pieces {
            scope.spawn(move || d.copy_from_slice(s));
        }
        if let Some((d, s)) = first {
            d.copy_from_slice(s);
        }
    });
}

/// A device-to-host copy into mirrored pinned memory goes into the server's mirror (device address, region
/// base), and the region comes back at the next synchronizing call; landing it here instead would be undone
/// by that pull, which copies the whole mirror back over the host's bytes.
fn into_mirror(dst: *mut c_void, n: usize) -> Option<(u64, usize)> {
    if n == 0 {
        return None;
    }
    let m = mirror::find(dst as usize)?;
    let end = (dst as usize).checked_add(n)?;
    (end <= m.data + m.data_len).then(|| (m.dptr + (dst as usize - m.base) as u64, m.base))
}

/// The shared pinned region holding all of `n` bytes at `ptr`, as (region id, offset).
fn region_of(ptr: *const c_void, n: usize) -> Option<(u64, u64)> {
    if n == 0 {
        return None;
    }
    state::read().shared_region(ptr as usize, n)
}

/// On a shared-memory session, pinned memory lives in a memfd the server maps and registers with the driver,
/// so the GPU copies straight to and from the app's buffer and kernels reach it, as natively. `None` (fall back
/// to mirrored memory): not a local session, turned off with `VGPU_SHM_PINNED=0`, or the server could not map
/// it (at the same address) or pin it.
fn shared_alloc(flags: u16, size: usize, same_address: bool, host_flags: u32) -> Option<*mut u8> {
    static NEXT_REGION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    if !client::session_is_local() || std::env::var("VGPU_SHM_PINNED").is_ok_and(|v| v == "0") {
        return None;
    }
    let (ptr, fd) = ffi::alloc_shared(size).ok()?;
    let id = NEXT_REGION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    use std::os::fd::AsFd;
    // Pinned memory the app can hand to kernels must sit at the same address in the server, where the driver
    // maps it for the device (unified addressing: device pointer == host pointer).
    let addr = if same_address { ptr as u64 } else { 0 };
    let call = HostRegionMap {
        id,
        size: size as u64,
        addr,
    };
    match client::call_with_fd(flags, &call, fd.as_fd(), id) {
        Ok(_) => {
            let mut reg = state::write();
            reg.host_allocs.insert(ptr as usize, size);
            reg.host_alloc_flags.insert(ptr as usize, host_flags);
            reg.shared_regions.insert(ptr as usize, (id, size));
            Some(ptr)
        }
        Err(_) => {
            ffi::free_shared(ptr, size);
            None
        }
    }
}

/// Host-to-device data is read when the call is made. Natively, a copy from pinned memory reads it when the
/// copy runs, after earlier device-to-host copies into that memory have landed (a chain reusing one host
/// buffer): where such a copy is still under way, wait for it first.
fn await_landings(src: *const c_void, n: usize) -> CuResult<()> {
    if client::pending_overlaps(src as usize, n) {
        client::call(0, &CtxSynchronize {}, &[])?;
        mirror::after_sync()?;
    }
    Ok(())
}

fn htod(flags: u16, dst: u64, src: *const c_void, n: usize) -> CuResult<()> {
    let ctx = need_ctx()?;
    if mirrored(dst) {
        return copy_via_host(flags, 0, dst, false, src as u64, false, n);
    }
    if let Some((region, offset)) = region_of(src, n) {
        let call = MemcpyHtoDRegion {
            dst,
            region,
            offset,
            size: n as u64,
        };
        client::call(flags, &call, &[])?;
        return mirror::after_sync();
    }
    if let Some(from) = mirror::pending_source(src as usize, n) {
        client::call(
            flags,
            &MemcpyDtoD {
                dst,
                src: from,
                size: n as u64,
            },
            &[],
        )?;
        return mirror::after_sync();
    }
    await_landings(src, n)?;
    if n >= STAGED_MIN {
        if let Some(done) = staged_htod(flags, ctx, dst, src, n) {
            return done.and_then(|_| mirror::after_sync());
        }
    }
    let data = ffi::bytes(src as *const u8, n)?;
    client::call(flags, &MemcpyHtoD { dst, size: n as u64 }, data)?;
    // A synchronous copy waits for the work before it: kernels' writes to pinned memory are due now.
    mirror::after_sync()
}

fn dtoh(flags: u16, dst: *mut c_void, src: u64, n: usize) -> CuResult<()> {
    let ctx = need_ctx()?;
    if mirrored(src) {
        return copy_via_host(flags, 0, dst as u64, false, src, false, n);
    }
    // Into mirrored pinned memory: only when queued work may have written the mirror must the copy go there
    // (the pull at the end would undo a direct landing); otherwise the host's bytes are the truth and the
    // copy lands on them directly, pipelined like a pageable copy (a later launch pushes them).
    let through_mirror = mirror::pending_source(dst as usize, n).is_some();
    if let Some((dptr, base)) = into_mirror(dst, n).filter(|_| through_mirror) {
        client::call(
            flags,
            &MemcpyDtoD {
                dst: dptr,
                src,
                size: n as u64,
            },
            &[],
        )?;
        mirror::mark_pending(base);
        return mirror::after_sync();
    }
    if let Some((region, offset)) = region_of(dst, n) {
        let call = MemcpyDtoHRegion {
            src,
            region,
            offset,
            size: n as u64,
        };
        client::call(flags, &call, &[])?;
        return mirror::after_sync();
    }
    if n >= STAGED_MIN {
        if let Some(done) = staged_dtoh(flags, ctx, dst, src, n) {
            return done.and_then(|_| mirror::after_sync());
        }
    }
    let out = ffi::bytes_mut(dst as *mut u8, n)?;
    client::with_channel(|ch, _| ch.copy_to_host(flags, &MemcpyDtoH { src, size: n as u64 }, out))?;
    mirror::after_sync()
}

pub(crate) fn htod_async(flags: u16, dst: u64, src: *const c_void, n: usize, stream: Handle) -> CuResult<()> {
    need_ctx()?;
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
    if let Some((region, offset)) = region_of(src, n) {
        // The GPU reads the app's buffer when the copy runs, as natively.
        let call = MemcpyHtoDRegionAsync {
            dst,
            region,
            offset,
            size: n as u64,
            stream,
        };
        return client::post(flags, &call, &[]);
    }
    if let Some(from) = mirror::pending_source(src as usize, n) {
        let call = MemcpyDtoDAsync {
            dst,
            src: from,
            size: n as u64,
            stream,
        };
        return client::post(flags, &call, &[]);
    }
    await_landings(src, n)?;
    let data = ffi::bytes(src as *const u8, n)?;
    client::post(
        flags,
        &MemcpyHtoDAsync {
            dst,
            size: n as u64,
            stream,
        },
        data,
    )
}

pub(crate) fn dtoh_async(flags: u16, dst: *mut c_void, src: u64, n: usize, stream: Handle) -> CuResult<()> {
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
    if let Some((dptr, base)) = into_mirror(dst, n) {
        let call = MemcpyDtoDAsync {
            dst: dptr,
            src,
            size: n as u64,
            stream,
        };
        client::post(flags, &call, &[])?;
        mirror::mark_pending(base);
        return Ok(());
    }
    if let Some((region, offset)) = region_of(dst, n) {
        // The GPU writes straight into the app's buffer when the copy runs: nothing to deliver later.
        let call = MemcpyDtoHRegionAsync {
            src,
            region,
            offset,
            size: n as u64,
            stream,
        };
        return client::post(flags, &call, &[]);
    }
    let pending_id = client::pending_register(client::Landing {
        addr: dst as usize,
        pitch: n,
        width: n,
        rows: 1,
    });
    client::post(
        flags,
        &MemcpyDtoHAsync {
            src,
            size: n as u64,
            stream,
            pending_id,
        },
        &[],
    )
}

pub(crate) fn dtod_async(f: u16, dst: u64, src: u64, n: usize, stream: Handle) -> CuResult<()> {
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
    client::post(
        f,
        &MemcpyDtoDAsync {
            dst,
            src,
            size: n as u64,
            stream,
        },
        &[],
    )
}

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
    stream: u64,
    dst: u64,
    pitch: usize,
    value: u32,
    elem: u32,
    width: usize,
    height: usize,
) -> CuResult<()> {
    client::call(flags, &StreamSynchronize { stream }, &[])?;
    mirror::after_sync()?;
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
        return memset_host(flags, 0, dst, pitch, value, elem, width, height);
    }
    check_memset(dst, pitch, elem, width, height)?;
    let call = Memset {
        dst,
        pitch: pitch as u64,
        width: width as u64,
        height: height as u64,
        value,
        elem_size: elem,
    };
    client::call(flags, &call, &[]).map(|_| ())
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
    stream: Handle,
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
    let call = MemsetAsync {
        dst,
        pitch: pitch as u64,
        width: width as u64,
        height: height as u64,
        stream,
        value,
        elem_size: elem,
    };
    client::post(flags, &call, &[])
}

/// `CUDA_MEMCPY2D` from cuda.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct Copy2D {
    src_x_in_bytes: usize,
    src_y: usize,
    src_memory_type: u32,
    src_host: usize,
    src_device: u64,
    src_array: usize,
    src_pitch: usize,
    dst_x_in_bytes: usize,
    dst_y: usize,
    dst_memory_type: u32,
    dst_host: usize,
    dst_device: u64,
    dst_array: usize,
    dst_pitch: usize,
    width_in_bytes: usize,
    height: usize,
}

/// One side of a 2D copy after resolving memory types and offsets.
enum Side {
    Host(usize, usize),
    Device(u64, u64),
}

fn side(kind: u32, host: usize, device: u64, x: usize, y: usize, pitch: usize) -> CuResult<Side> {
    const HOST: u32 = 1;
    const DEVICE: u32 = 2;
    const UNIFIED: u32 = 4;
    let offset = y
        .checked_mul(pitch)
        .and_then(|o| o.checked_add(x))
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    match kind {
        HOST => Ok(Side::Host(host.wrapping_add(offset), pitch)),
        DEVICE => Ok(Side::Device(device.wrapping_add(offset as u64), pitch as u64)),
        // Unified addressing: a pointer the app got from cuMemAlloc is device memory, anything else host.
        UNIFIED if state::read().check_range(device, 1).is_ok() => {
            Ok(Side::Device(device + offset as u64, pitch as u64))
        }
        UNIFIED => Ok(Side::Host(device as usize + offset, pitch)),
        // CUDA arrays are not remoted yet.
        _ => Err(CUDA_ERROR_NOT_SUPPORTED),
    }
}

pub(crate) fn copy_2d(flags: u16, params: *const c_void, stream: Option<Handle>) -> CuResult<()> {
    need_ctx()?;
    if let Some(s) = stream {
        let key = graph::key(flags, stream_id(s)?);
        if graph::is_capturing(key) {
            let raw = ffi::bytes(params as *const u8, std::mem::size_of::<Copy2D>())?.to_vec();
            if let Some(r) = graph::capture(key, graph::Node::Copy2D(raw)) {
                return r;
            }
        }
    }
    let m: Copy2D = ffi::read(params as *const Copy2D)?;
    copy_2d_params(flags, m, stream)
}

/// `CUDA_MEMCPY3D` from cuda.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct Copy3D {
    src_x_in_bytes: usize,
    src_y: usize,
    src_z: usize,
    src_lod: usize,
    src_memory_type: u32,
    src_host: usize,
    src_device: u64,
    src_array: usize,
    _reserved0: usize,
    src_pitch: usize,
    src_height: usize,
    dst_x_in_bytes: usize,
    dst_y: usize,
    dst_z: usize,
    dst_lod: usize,
    dst_memory_type: u32,
    dst_host: usize,
    dst_device: u64,
    dst_array: usize,
    _reserved1: usize,
    dst_pitch: usize,
    dst_height: usize,
    width_in_bytes: usize,
    height: usize,
    depth: usize,
}

/// Size of `CUDA_MEMCPY3D`, as graph memcpy nodes keep it.
pub(crate) const COPY3D_SIZE: usize = std::mem::size_of::<Copy3D>();

/// `cuMemcpy3D`: one 2D copy per slice, each slice `pitch * height` bytes after the previous one.
pub(crate) fn copy_3d(flags: u16, params: *const c_void, stream: Option<Handle>) -> CuResult<()> {
    need_ctx()?;
    if let Some(s) = stream {
        let key = graph::key(flags, stream_id(s)?);
        if graph::is_capturing(key) {
            let raw = ffi::bytes(params as *const u8, COPY3D_SIZE)?.to_vec();
            if let Some(r) = graph::capture(key, graph::Node::Copy3D(raw)) {
                return r;
            }
        }
    }
    let m: Copy3D = ffi::read(params as *const Copy3D)?;
    if m.src_lod != 0 || m.dst_lod != 0 {
        // Mipmapped levels are not remoted yet.
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    if m.src_memory_type == MEMORYTYPE_ARRAY || m.dst_memory_type == MEMORYTYPE_ARRAY {
        if let Some(s) = stream {
            let id = stream_id(s)?;
            client::call(flags, &StreamSynchronize { stream: id }, &[])?;
        }
        let src = (
            m.src_memory_type,
            m.src_host,
            m.src_device,
            m.src_array as u64,
            [m.src_x_in_bytes, m.src_y, m.src_z],
            m.src_pitch,
            m.src_height,
        );
        let dst = (
            m.dst_memory_type,
            m.dst_host,
            m.dst_device,
            m.dst_array as u64,
            [m.dst_x_in_bytes, m.dst_y, m.dst_z],
            m.dst_pitch,
            m.dst_height,
        );
        return array_copy_from_params(flags, src, dst, [m.width_in_bytes, m.height, m.depth]);
    }
    if m.depth > 1 && (m.src_height < m.height || m.dst_height < m.height) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let slice = |pitch: usize, height: usize, z: usize| pitch.checked_mul(height)?.checked_mul(z);
    for z in 0..m.depth {
        let src_off = slice(m.src_pitch, m.src_height, m.src_z + z).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let dst_off = slice(m.dst_pitch, m.dst_height, m.dst_z + z).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let plane = Copy2D {
            src_x_in_bytes: m.src_x_in_bytes,
            src_y: m.src_y,
            src_memory_type: m.src_memory_type,
            src_host: m.src_host.wrapping_add(src_off),
            src_device: m.src_device.wrapping_add(src_off as u64),
            src_array: 0,
            src_pitch: m.src_pitch,
            dst_x_in_bytes: m.dst_x_in_bytes,
            dst_y: m.dst_y,
            dst_memory_type: m.dst_memory_type,
            dst_host: m.dst_host.wrapping_add(dst_off),
            dst_device: m.dst_device.wrapping_add(dst_off as u64),
            dst_array: 0,
            dst_pitch: m.dst_pitch,
            width_in_bytes: m.width_in_bytes,
            height: m.height,
        };
        copy_2d_params(flags, plane, stream)?;
    }
    Ok(())
}

/// One CUDA-array copy, whatever the call that asked for it: the array's box and the other side's place.
struct ArrayTransfer {
    array: u64,
    region: ArrayBox,
    to_array: bool,
    other_type: u32,
    other_host: usize,
    other_device: u64,
    other_x: usize,
    other_y: usize,
    other_z: usize,
    other_pitch: usize,
    other_height: usize,
}

const MEMORYTYPE_ARRAY: u32 = 3;

fn array_transfer(flags: u16, t: ArrayTransfer) -> CuResult<()> {
    if !state::read().arrays.contains_key(&t.array) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let r = t.region;
    let (w, h, d) = (r.width_bytes as usize, r.height as usize, r.depth as usize);
    if w == 0 || h == 0 || d == 0 {
        return Ok(());
    }
    if h > 1 && t.other_pitch < w {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let rows = t.other_height.max(h);
    let row_offset = |z: usize, y: usize| -> CuResult<usize> {
        ((t.other_z + z) * rows + t.other_y + y)
            .checked_mul(t.other_pitch)
            .and_then(|o| o.checked_add(t.other_x))
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    };
    // Unified addressing: device memory the app allocated, or host memory.
    let on_device = match t.other_type {
        2 => true,
        4 => state::read().device_range(t.other_device).is_some(),
        1 => false,
        _ => return Err(CUDA_ERROR_NOT_SUPPORTED),
    };
    let host_base = if t.other_type == 1 {
        t.other_host
    } else {
        t.other_device as usize
    };
    let mut call = ArrayCopy {
        array: t.array,
        x_bytes: r.x_bytes,
        y: r.y,
        z: r.z,
        width_bytes: r.width_bytes,
        height: r.height,
        depth: r.depth,
        device: 0,
        device_pitch: 0,
        device_height: 0,
        direction: 0,
        _pad: 0,
    };
    if on_device {
        call.device = t.other_device.wrapping_add(row_offset(0, 0)? as u64);
        call.device_pitch = t.other_pitch as u64;
        call.device_height = rows as u64;
        call.direction = if t.to_array { 2 } else { 3 };
        return client::call(flags, &call, &[]).map(|_| ());
    }
    if t.to_array {
        let mut packed = Vec::with_capacity(w * h * d);
        for z in 0..d {
            for y in 0..h {
                packed.extend_from_slice(ffi::bytes((host_base + row_offset(z, y)?) as *const u8, w)?);
            }
        }
        return client::call(flags, &call, &packed).map(|_| ());
    }
    call.direction = 1;
    let mut packed = Vec::new();
    client::call_with_tail(flags, &call, &[], &mut packed)?;
    if packed.len() != w * h * d {
        return Err(CUDA_ERROR_UNKNOWN);
    }
    for (i, row) in packed.chunks_exact(w).enumerate() {
        let (z, y) = (i / h, i % h);
        ffi::bytes_mut((host_base + row_offset(z, y)?) as *mut u8, w)?.copy_from_slice(row);
    }
    Ok(())
}

/// A 2D or 3D copy with a CUDA array on one side (`src_array`/`dst_array` set by the memory types).
#[allow(clippy::too_many_arguments)]
fn array_copy_from_params(
    flags: u16,
    src: (u32, usize, u64, u64, [usize; 3], usize, usize),
    dst: (u32, usize, u64, u64, [usize; 3], usize, usize),
    extent: [usize; 3],
) -> CuResult<()> {
    // (memory type, host, device, array, [x, y, z], pitch, height) for each side.
    let (to_array, arr, other) = match (src.0 == MEMORYTYPE_ARRAY, dst.0 == MEMORYTYPE_ARRAY) {
        (false, true) => (true, dst, src),
        (true, false) => (false, src, dst),
        // Array to array copies are not remoted yet.
        _ => return Err(CUDA_ERROR_NOT_SUPPORTED),
    };
    array_transfer(
        flags,
        ArrayTransfer {
            array: arr.3,
            region: ArrayBox {
                x_bytes: arr.4[0] as u64,
                y: arr.4[1] as u64,
                z: arr.4[2] as u64,
                width_bytes: extent[0] as u64,
                height: extent[1].max(1) as u64,
                depth: extent[2].max(1) as u64,
            },
            to_array,
            other_type: other.0,
            other_host: other.1,
            other_device: other.2,
            other_x: other.4[0],
            other_y: other.4[1],
            other_z: other.4[2],
            other_pitch: other.5,
            other_height: other.6,
        },
    )
}

fn copy_2d_params(flags: u16, m: Copy2D, stream: Option<Handle>) -> CuResult<()> {
    if m.src_memory_type == MEMORYTYPE_ARRAY || m.dst_memory_type == MEMORYTYPE_ARRAY {
        if let Some(s) = stream {
            // Array copies run synchronously on the server: after the stream's earlier work.
            let id = stream_id(s)?;
            client::call(flags, &StreamSynchronize { stream: id }, &[])?;
        }
        let src = (
            m.src_memory_type,
            m.src_host,
            m.src_device,
            m.src_array as u64,
            [m.src_x_in_bytes, m.src_y, 0],
            m.src_pitch,
            m.height,
        );
        let dst = (
            m.dst_memory_type,
            m.dst_host,
            m.dst_device,
            m.dst_array as u64,
            [m.dst_x_in_bytes, m.dst_y, 0],
            m.dst_pitch,
            m.height,
        );
        return array_copy_from_params(flags, src, dst, [m.width_in_bytes, m.height, 1]);
    }
    let stream = stream.map(stream_id).transpose()?;
    let src = side(
        m.src_memory_type,
        m.src_host,
        m.src_device,
        m.src_x_in_bytes,
        m.src_y,
        m.src_pitch,
    )?;
    let dst = side(
        m.dst_memory_type,
        m.dst_host,
        m.dst_device,
        m.dst_x_in_bytes,
        m.dst_y,
        m.dst_pitch,
    )?;
    let (w, h) = (m.width_in_bytes, m.height);
    if h > 1 && (m.src_pitch < w || m.dst_pitch < w) {
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
            client::call_with_tail(flags, &call, &tail, &mut reply)?;
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
                }),
                _ => 0,
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
            client::post(flags, &call, &tail)
        }
    }
}

/// What cuMemHostGetFlags reports for memory from cuMemHostAlloc(`flags`), as NVIDIA's driver does (H100,
/// driver 580): every allocation is mapped under unified addressing, so DEVICEMAP is always reported;
/// WRITECOMBINED as asked; PORTABLE only when it was asked for without DEVICEMAP (0 -> 0x2, PORTABLE -> 0x3,
/// WRITECOMBINED -> 0x6, PORTABLE | DEVICEMAP -> 0x2).
fn reported_host_alloc_flags(flags: u32) -> u32 {
    const PORTABLE: u32 = 0x1;
    const DEVICEMAP: u32 = 0x2;
    const WRITECOMBINED: u32 = 0x4;
    let portable = if flags & DEVICEMAP == 0 { flags & PORTABLE } else { 0 };
    DEVICEMAP | (flags & WRITECOMBINED) | portable
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
    let mut reg = state::write();
    reg.host_allocs.insert(ptr, len);
    reg.host_alloc_flags.insert(ptr, flags);
    drop(reg);
    ffi::write(out, ptr as *mut c_void)
}

/// Where a unified-addressing pointer lives: device memory the app allocated, or anywhere on the host.
fn is_device(addr: u64) -> bool {
    state::read().device_range(addr).is_some()
}

/// `cuMemcpy`/`cuMemcpyAsync`: unified addressing decides the direction from the pointers themselves.
fn copy_unified(flags: u16, dst: u64, src: u64, n: usize, stream: Option<Handle>) -> CuResult<()> {
    need_ctx()?;
    match (is_device(dst), is_device(src), stream) {
        (true, true, None) => client::call(
            flags,
            &MemcpyDtoD {
                dst,
                src,
                size: n as u64,
            },
            &[],
        )
        .map(|_| ()),
        (true, true, Some(s)) => dtod_async(flags, dst, src, n, s),
        (true, false, None) => htod(flags, dst, src as *const c_void, n),
        (true, false, Some(s)) => htod_async(flags, dst, src as *const c_void, n, s),
        (false, true, None) => dtoh(flags, dst as *mut c_void, src, n),
        (false, true, Some(s)) => dtoh_async(flags, dst as *mut c_void, src, n, s),
        (false, false, stream) => {
            // Host to host: in stream order, after the work already queued on the stream.
            if let Some(s) = stream {
                let id = stream_id(s)?;
                client::call(flags, &StreamSynchronize { stream: id }, &[])?;
            }
            let from = ffi::bytes(src as *const u8, n)?.to_vec();
            ffi::bytes_mut(dst as *mut u8, n)?.copy_from_slice(&from);
            Ok(())
        }
    }
}

/// `CUmemPoolProps` from cuda.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct MemPoolProps {
    alloc_type: u32,
    handle_types: u32,
    location_type: u32,
    location_id: i32,
    win32_security_attributes: usize,
    max_size: usize,
    usage: u16,
    reserved: [u8; 54],
}

fn check_device(dev: c_int) -> CuResult<()> {
    let n = client::session()?.devices.len();
    if dev < 0 || dev as usize >= n {
        return Err(CUDA_ERROR_INVALID_DEVICE);
    }
    Ok(())
}

/// A pool id the app may name: one it created, or a device's default pool.
fn known_pool(pool: Handle) -> CuResult<u64> {
    let id = pool as u64;
    let n = client::session()?.devices.len() as u32;
    let is_default = default_mem_pool_device(id).is_some_and(|d| d < n);
    if is_default || state::read().mem_pools.contains_key(&id) {
        Ok(id)
    } else {
        Err(CUDA_ERROR_INVALID_VALUE)
    }
}

fn current_pool(dev: i32) -> u64 {
    state::read()
        .current_pools
        .get(&dev)
        .copied()
        .unwrap_or(default_mem_pool_id(dev as u32))
}

fn alloc_async(flags: u16, out: *mut u64, size: usize, pool: u64, stream: Handle) -> CuResult<()> {
    need_ctx()?;
    let stream = stream_id(stream)?;
    if out.is_null() || size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let r = client::call(
        flags,
        &MemAllocAsync {
            size: size as u64,
            stream,
            pool,
        },
        &[],
    )?;
    state::write().device_ranges.insert(r.dptr, size as u64);
    graph::capture_alloc(graph::key(flags, stream), r.dptr);
    ffi::write(out, r.dptr)
}

/// Which pool attributes are ints (the reuse policies); the others are 64-bit sizes.
fn pool_attr_is_int(attr: c_uint) -> bool {
    (1..=3).contains(&attr)
}

fn host_register(ptr: *mut c_void, size: usize, flags: c_uint) -> CuResult<()> {
    need_ctx()?;
    // PORTABLE | DEVICEMAP | IOMEMORY | READ_ONLY.
    if ptr.is_null() || size == 0 || flags & !0xf != 0 {
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
    mirror::register(base, size);
    Ok(())
}

entry! {
    [cuMemAlloc_v2] [] (out: *mut u64, size: usize) |f| {
        need_ctx()?;
        if out.is_null() || size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let r = client::call(0, &MemAlloc { size: size as u64 }, &[])?;
        state::write().device_ranges.insert(r.dptr, size as u64);
        ffi::write(out, r.dptr)
    }
    [cuMemAllocPitch_v2] [] (out: *mut u64, pitch: *mut usize, width: usize, height: usize, elem: c_uint) |f| {
        need_ctx()?;
        if out.is_null() || pitch.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let call = MemAllocPitch { width: width as u64, height: height as u64, elem_size: elem, _pad: 0 };
        let r = client::call(0, &call, &[])?;
        state::write().device_ranges.insert(r.dptr, r.pitch.saturating_mul(height as u64));
        ffi::write(out, r.dptr)?;
        ffi::write(pitch, r.pitch as usize)
    }
    [cuMemFree_v2] [] (dptr: u64) |f| {
        need_ctx()?;
        client::call(0, &MemFree { dptr }, &[])?;
        state::write().device_ranges.remove(&dptr);
        if mirror::find(dptr as usize).is_some_and(|m| m.kind == mirror::Kind::Managed && m.data == dptr as usize) {
            mirror::drop_managed(dptr);
        }
        Ok(())
    }
    [cuMemAllocManaged] [] (out: *mut u64, size: usize, flags: c_uint) |f| {
        need_ctx()?;
        // CU_MEM_ATTACH_GLOBAL (1) or CU_MEM_ATTACH_HOST (2).
        if out.is_null() || size == 0 || !matches!(flags, 1 | 2) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let r = client::call(0, &MemAllocManaged { size: size as u64, flags, _pad: 0 }, &[])?;
        if let Err(e) = mirror::adopt_managed(r.dptr, size) {
            // The server's address is taken in this process: the memory cannot have one address for both.
            crate::log::log!(crate::log::WARN, "cuMemAllocManaged: address {:#x} is in use in this process", r.dptr);
            let _ = client::call(0, &MemFree { dptr: r.dptr }, &[]);
            return Err(e);
        }
        ffi::write(out, r.dptr)
    }
    [cuMemAdvise, cuMemAdvise_v2] [] (dptr: u64, count: usize, advice: c_uint, _location: u64) |f| {
        need_ctx()?;
        // Placement advice: the host copy here and the server's managed memory are kept in step anyway.
        match mirror::find(dptr as usize) {
            Some(m) if m.kind != mirror::Kind::Pinned && (dptr as usize) + count <= m.data + m.data_len && advice <= 6 => Ok(()),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    [cuMemPrefetchAsync, cuMemPrefetchAsync_v2] [cuMemPrefetchAsync_ptsz, cuMemPrefetchAsync_v2_ptsz] (dptr: u64, count: usize, _location: u64, _flags: c_uint, stream: Handle) |f| {
        // A performance hint in stream order: nothing to move ahead of time here (the host copy comes back
        // at the next synchronizing call whatever the prefetch target).
        need_ctx()?;
        match mirror::find(dptr as usize) {
            Some(m) if m.kind != mirror::Kind::Pinned && (dptr as usize) + count <= m.data + m.data_len => Ok(()),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    [cuStreamAttachMemAsync] [cuStreamAttachMemAsync_ptsz] (stream: Handle, dptr: u64, _length: usize, flags: c_uint) |f| {
        need_ctx()?;
        stream_id(stream)?;
        // CU_MEM_ATTACH_GLOBAL, _HOST or _SINGLE: visibility rules for concurrent access, which the host
        // copy here keeps trivially.
        if !matches!(flags, 1 | 2 | 4) || mirror::find(dptr as usize).is_none() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(())
    }
    [cuMemGetInfo_v2] [] (free: *mut usize, total: *mut usize) |f| {
        need_ctx()?;
        let r = client::call(0, &MemGetInfo {}, &[])?;
        ffi::write(free, r.free as usize)?;
        ffi::write(total, r.total as usize)
    }
    [cuMemAllocHost_v2] [] (out: *mut *mut c_void, size: usize) |f| {
        // Memory from cuMemAllocHost is portable and mapped, as with cuMemHostAlloc(PORTABLE | DEVICEMAP).
        host_alloc(out, size, 0x3)
    }
    [cuMemHostAlloc] [] (out: *mut *mut c_void, size: usize, flags: c_uint) |f| {
        // PORTABLE | DEVICEMAP | WRITECOMBINED are the defined flags.
        if flags & !0x7 != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        host_alloc(out, size, flags)
    }
    [cuMemFreeHost] [] (ptr: *mut c_void) |f| {
        client::session()?;
        let (size, shared) = {
            let mut reg = state::write();
            reg.host_alloc_flags.remove(&(ptr as usize));
            let size = reg.host_allocs.remove(&(ptr as usize)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            (size, reg.shared_regions.remove(&(ptr as usize)))
        };
        // Removed from the registry above, so it is freed exactly once.
        match shared {
            Some((id, _)) => {
                // The server waits for copies still using it and unpins it before this process unmaps it.
                let unmapped = client::call(f, &HostRegionUnmap { id }, &[]).map(|_| ());
                ffi::free_shared(ptr as *mut u8, size);
                unmapped
            }
            None => {
                mirror::free(ptr as usize, size);
                Ok(())
            }
        }
    }
    [cuMemHostRegister, cuMemHostRegister_v2] [] (ptr: *mut c_void, size: usize, flags: c_uint) |f| {
        host_register(ptr, size, flags)
    }
    [cuMemHostUnregister] [] (ptr: *mut c_void) |f| {
        need_ctx()?;
        if ptr.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        match state::write().host_registered.remove(&(ptr as usize)) {
            Some(_) => {
                mirror::forget(ptr as usize);
                Ok(())
            }
            None => Err(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED),
        }
    }
    [cuMemHostGetDevicePointer_v2] [] (out: *mut u64, host: *mut c_void, flags: c_uint) |f| {
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
    [cuMemHostGetFlags] [] (out: *mut c_uint, host: *mut c_void) |f| {
        need_ctx()?;
        let reg = state::read();
        let (base, _, flags) = reg.host_range(host as usize).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let flags = if reg.host_allocs.contains_key(&base) { reported_host_alloc_flags(flags) } else { flags };
        drop(reg);
        ffi::write(out, flags)
    }
    [cuMemGetAddressRange_v2] [] (base: *mut u64, size: *mut usize, dptr: u64) |f| {
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
    [cuDeviceGetDefaultMemPool] [] (out: *mut Handle, dev: c_int) |f| {
        check_device(dev)?;
        ffi::write(out, default_mem_pool_id(dev as u32) as Handle)
    }
    [cuDeviceGetMemPool] [] (out: *mut Handle, dev: c_int) |f| {
        check_device(dev)?;
        ffi::write(out, current_pool(dev) as Handle)
    }
    [cuDeviceSetMemPool] [] (dev: c_int, pool: Handle) |f| {
        check_device(dev)?;
        let id = known_pool(pool)?;
        let mut reg = state::write();
        match reg.mem_pools.get(&id) {
            Some(&d) if d != dev => return Err(CUDA_ERROR_INVALID_DEVICE),
            _ => {}
        }
        reg.current_pools.insert(dev, id);
        Ok(())
    }
    [cuMemPoolCreate] [] (out: *mut Handle, props: *const c_void) |f| {
        client::session()?;
        let p: MemPoolProps = ffi::read(props as *const MemPoolProps)?;
        // Pinned device memory pools only: host-located (NUMA) pools and exportable handles are not
        // remoted yet.
        const PINNED: u32 = 1;
        const LOCATION_DEVICE: u32 = 1;
        if p.alloc_type != PINNED || out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if p.location_type != LOCATION_DEVICE || p.handle_types != 0 {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        check_device(p.location_id).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let pool = state::new_id();
        let call = MemPoolCreate { pool, max_size: p.max_size as u64, device: p.location_id as u32, _pad: 0 };
        client::call(0, &call, &[])?;
        state::write().mem_pools.insert(pool, p.location_id);
        ffi::write(out, pool as Handle)
    }
    [cuMemPoolDestroy] [] (pool: Handle) |f| {
        let id = pool as u64;
        if !state::read().mem_pools.contains_key(&id) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        client::call(0, &MemPoolDestroy { pool: id }, &[])?;
        let mut reg = state::write();
        reg.mem_pools.remove(&id);
        // A destroyed current pool leaves its device with the default one.
        reg.current_pools.retain(|_, p| *p != id);
        Ok(())
    }
    [cuMemAllocAsync] [cuMemAllocAsync_ptsz] (out: *mut u64, size: usize, stream: Handle) |f| {
        let ctx = need_ctx()?;
        let dev = state::read().contexts.get(&ctx).map(|c| c.device).unwrap_or(0);
        alloc_async(f, out, size, current_pool(dev), stream)
    }
    [cuMemAllocFromPoolAsync] [cuMemAllocFromPoolAsync_ptsz] (out: *mut u64, size: usize, pool: Handle, stream: Handle) |f| {
        let pool = known_pool(pool)?;
        alloc_async(f, out, size, pool, stream)
    }
    [cuMemFreeAsync] [cuMemFreeAsync_ptsz] (dptr: u64, stream: Handle) |f| {
        need_ctx()?;
        let stream = stream_id(stream)?;
        if let Some(r) = graph::capture_free(graph::key(f, stream), dptr) {
            return r;
        }
        let mut reg = state::write();
        // A VMM mapping is no allocation to free (cuMemUnmap undoes it).
        if reg.vmm_mappings.contains_key(&dptr) || reg.device_ranges.remove(&dptr).is_none() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        drop(reg);
        client::post(f, &MemFreeAsync { dptr, stream }, &[])
    }
    [cuMemPoolGetAttribute] [] (pool: Handle, attr: c_uint, value: *mut c_void) |f| {
        let pool = known_pool(pool)?;
        let r = client::call(0, &MemPoolGetAttribute { pool, attr, _pad: 0 }, &[])?;
        if pool_attr_is_int(attr) {
            ffi::write(value as *mut i32, r.value as i32)
        } else {
            ffi::write(value as *mut u64, r.value)
        }
    }
    [cuMemPoolSetAttribute] [] (pool: Handle, attr: c_uint, value: *mut c_void) |f| {
        let pool = known_pool(pool)?;
        let v = if pool_attr_is_int(attr) {
            ffi::read(value as *const i32)? as u32 as u64
        } else {
            ffi::read(value as *const u64)?
        };
        client::call(0, &MemPoolSetAttribute { pool, value: v, attr, _pad: 0 }, &[]).map(|_| ())
    }
    [cuMemPoolTrimTo] [] (pool: Handle, min_bytes: usize) |f| {
        let pool = known_pool(pool)?;
        client::call(0, &MemPoolTrimTo { pool, min_bytes: min_bytes as u64 }, &[]).map(|_| ())
    }
    [cuArrayCreate_v2] [] (out: *mut Handle, desc: *const [usize; 3]) |f| {
        // CUDA_ARRAY_DESCRIPTOR: width, height, then format and channel count (two u32 in the third word).
        let [width, height, fc] = ffi::read(desc)?;
        array_create(out, ArrayShape { width: width as u64, height: height as u64, depth: 0, format: fc as u32, channels: (fc >> 32) as u32, flags: 0 })
    }
    [cuArray3DCreate_v2] [] (out: *mut Handle, desc: *const [usize; 5]) |f| {
        // CUDA_ARRAY3D_DESCRIPTOR: width, height, depth, format, channels, flags.
        let [width, height, depth, fc, fl] = ffi::read(desc)?;
        let shape = ArrayShape {
            width: width as u64,
            height: height as u64,
            depth: depth as u64,
            format: fc as u32,
            channels: (fc >> 32) as u32,
            flags: fl as u32,
        };
        array_create(out, shape)
    }
    [cuArrayDestroy] [] (array: Handle) |f| {
        let id = array as u64;
        if state::write().arrays.remove(&id).is_none() {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        client::call(0, &ArrayDestroy { array: id }, &[]).map(|_| ())
    }
    [cuArrayGetDescriptor_v2] [] (out: *mut [usize; 3], array: Handle) |f| {
        let a = state::read().arrays.get(&(array as u64)).copied().ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        ffi::write(out, [a.width as usize, a.height as usize, a.format as usize | (a.channels as usize) << 32])
    }
    [cuArray3DGetDescriptor_v2] [] (out: *mut [usize; 5], array: Handle) |f| {
        let a = state::read().arrays.get(&(array as u64)).copied().ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        ffi::write(out, [a.width as usize, a.height as usize, a.depth as usize, a.format as usize | (a.channels as usize) << 32, a.flags as usize])
    }
    [cuTexObjectCreate] [] (out: *mut u64, resource: *const u8, texture: *const u8, view: *const u8) |f| {
        tex_object(out, false, resource, texture, view)
    }
    [cuSurfObjectCreate] [] (out: *mut u64, resource: *const u8) |f| {
        tex_object(out, true, resource, std::ptr::null(), std::ptr::null())
    }
    [cuTexObjectDestroy] [] (object: u64) |f| {
        client::call(0, &ObjectDestroy { object, surface: 0, _pad: 0 }, &[]).map(|_| ())
    }
    [cuSurfObjectDestroy] [] (object: u64) |f| {
        client::call(0, &ObjectDestroy { object, surface: 1, _pad: 0 }, &[]).map(|_| ())
    }
    [cuMemcpy] [cuMemcpy_ptds] (dst: u64, src: u64, n: usize) |f| {
        copy_unified(f, dst, src, n, None)
    }
    [cuMemcpyAsync] [cuMemcpyAsync_ptsz] (dst: u64, src: u64, n: usize, stream: Handle) |f| {
        copy_unified(f, dst, src, n, Some(stream))
    }
    [cuMemcpyHtoD_v2] [cuMemcpyHtoD_v2_ptds] (dst: u64, src: *const c_void, n: usize) |f| {
        htod(f, dst, src, n)
    }
    [cuMemcpyDtoH_v2] [cuMemcpyDtoH_v2_ptds] (dst: *mut c_void, src: u64, n: usize) |f| {
        dtoh(f, dst, src, n)
    }
    [cuMemcpyDtoD_v2] [cuMemcpyDtoD_v2_ptds] (dst: u64, src: u64, n: usize) |f| {
        need_ctx()?;
        if mirrored(dst) || mirrored(src) {
            return copy_via_host(f, 0, dst, !mirrored(dst), src, !mirrored(src), n);
        }
        client::call(f, &MemcpyDtoD { dst, src, size: n as u64 }, &[]).map(|_| ())
    }
    [cuMemcpyHtoDAsync_v2] [cuMemcpyHtoDAsync_v2_ptsz] (dst: u64, src: *const c_void, n: usize, stream: Handle) |f| {
        htod_async(f, dst, src, n, stream)
    }
    [cuMemcpyDtoHAsync_v2] [cuMemcpyDtoHAsync_v2_ptsz] (dst: *mut c_void, src: u64, n: usize, stream: Handle) |f| {
        dtoh_async(f, dst, src, n, stream)
    }
    [cuMemcpyDtoDAsync_v2] [cuMemcpyDtoDAsync_v2_ptsz] (dst: u64, src: u64, n: usize, stream: Handle) |f| {
        dtod_async(f, dst, src, n, stream)
    }
    [cuMemcpy2D_v2, cuMemcpy2DUnaligned_v2] [cuMemcpy2D_v2_ptds, cuMemcpy2DUnaligned_v2_ptds] (params: *const c_void) |f| {
        copy_2d(f, params, None)
    }
    [cuMemcpy2DAsync_v2] [cuMemcpy2DAsync_v2_ptsz] (params: *const c_void, stream: Handle) |f| {
        copy_2d(f, params, Some(stream))
    }
    [cuMemcpy3D_v2] [cuMemcpy3D_v2_ptds] (params: *const c_void) |f| {
        copy_3d(f, params, None)
    }
    [cuMemcpy3DAsync_v2] [cuMemcpy3DAsync_v2_ptsz] (params: *const c_void, stream: Handle) |f| {
        copy_3d(f, params, Some(stream))
    }
    [cuMemsetD8_v2] [cuMemsetD8_v2_ptds] (dst: u64, value: u8, n: usize) |f| {
        memset(f, dst, n, value as u32, 1, n, 1)
    }
    [cuMemsetD16_v2] [cuMemsetD16_v2_ptds] (dst: u64, value: u16, n: usize) |f| {
        memset(f, dst, n * 2, value as u32, 2, n, 1)
    }
    [cuMemsetD32_v2] [cuMemsetD32_v2_ptds] (dst: u64, value: u32, n: usize) |f| {
        memset(f, dst, n * 4, value, 4, n, 1)
    }
    [cuMemsetD2D8_v2] [cuMemsetD2D8_v2_ptds] (dst: u64, pitch: usize, value: u8, w: usize, h: usize) |f| {
        memset(f, dst, pitch, value as u32, 1, w, h)
    }
    [cuMemsetD2D16_v2] [cuMemsetD2D16_v2_ptds] (dst: u64, pitch: usize, value: u16, w: usize, h: usize) |f| {
        memset(f, dst, pitch, value as u32, 2, w, h)
    }
    [cuMemsetD2D32_v2] [cuMemsetD2D32_v2_ptds] (dst: u64, pitch: usize, value: u32, w: usize, h: usize) |f| {
        memset(f, dst, pitch, value, 4, w, h)
    }
    [cuMemsetD8Async] [cuMemsetD8Async_ptsz] (dst: u64, value: u8, n: usize, stream: Handle) |f| {
        memset_async(f, dst, n, value as u32, 1, n, 1, stream)
    }
    [cuMemsetD16Async] [cuMemsetD16Async_ptsz] (dst: u64, value: u16, n: usize, stream: Handle) |f| {
        memset_async(f, dst, n * 2, value as u32, 2, n, 1, stream)
    }
    [cuMemsetD32Async] [cuMemsetD32Async_ptsz] (dst: u64, value: u32, n: usize, stream: Handle) |f| {
        memset_async(f, dst, n * 4, value, 4, n, 1, stream)
    }
    [cuMemsetD2D8Async] [cuMemsetD2D8Async_ptsz] (dst: u64, pitch: usize, value: u8, w: usize, h: usize, stream: Handle) |f| {
        memset_async(f, dst, pitch, value as u32, 1, w, h, stream)
    }
    [cuMemsetD2D16Async] [cuMemsetD2D16Async_ptsz] (dst: u64, pitch: usize, value: u16, w: usize, h: usize, stream: Handle) |f| {
        memset_async(f, dst, pitch, value as u32, 2, w, h, stream)
    }
    [cuMemsetD2D32Async] [cuMemsetD2D32Async_ptsz] (dst: u64, pitch: usize, value: u32, w: usize, h: usize, stream: Handle) |f| {
        memset_async(f, dst, pitch, value, 4, w, h, stream)
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
