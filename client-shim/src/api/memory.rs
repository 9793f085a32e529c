//! Device memory and copies. Allocation and synchronous copies are one round trip; async copies and memsets
//! are queued; device-to-host async data is pushed back before the synchronizing call that covers it returns.

use std::ffi::{c_uint, c_void};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::{need_ctx, Handle};
use crate::state;
use crate::{client, ffi};

fn stream_id(stream: Handle) -> Result<u64, u32> {
    super::exec::stream_id(stream)
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
fn staged_dtoh(flags: u16, ctx: u64, dst: *mut c_void, src: u64, n: usize) -> Option<Result<(), u32>> {
    let (base, region, events) = staging(flags, ctx)?;
    Some(staged_copy_out(flags, base, region, events, dst as *mut u8, src, n))
}

/// Copies `n` bytes from pageable `src` to device `dst` through the staging slots: this thread fills one slot
/// while the GPU reads the other. Returns once every byte has reached the device.
fn staged_htod(flags: u16, ctx: u64, dst: u64, src: *const c_void, n: usize) -> Option<Result<(), u32>> {
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
            let ptr = shared_alloc(flags, 2 * STAGING_SLOT)?;
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

fn staged_copy_in(
    flags: u16,
    base: *mut u8,
    region: u64,
    events: [u64; 2],
    dst: u64,
    src: *const u8,
    n: usize,
) -> Result<(), u32> {
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
        client::post(flags, &copy, &[])?;
        client::post(
            flags,
            &EventRecord {
                event: events[slot],
                stream,
            },
            &[],
        )?;
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
) -> Result<(), u32> {
    // Checked here so that a bad range fails before any byte moves, as natively.
    state::read().check_range(src, n as u64)?;
    let out = ffi::bytes_mut(dst, n)?;
    let stream = if flags & FLAG_PER_THREAD != 0 { 2 } else { 0 };
    let chunks: Vec<(usize, usize)> = (0..n)
        .step_by(STAGING_SLOT)
        .map(|off| (off, STAGING_SLOT.min(n - off)))
        .collect();
    let issue = |i: usize| -> Result<(), u32> {
        let (off, len) = chunks[i];
        let slot = i % 2;
        let copy = MemcpyDtoHRegionAsync {
            src: src + off as u64,
            region,
            offset: (slot * STAGING_SLOT) as u64,
            size: len as u64,
            stream,
        };
        client::post(flags, &copy, &[])?;
        client::post(
            flags,
            &EventRecord {
                event: events[slot],
                stream,
            },
            &[],
        )
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

/// The shared pinned region holding all of `n` bytes at `ptr`, as (region id, offset).
fn region_of(ptr: *const c_void, n: usize) -> Option<(u64, u64)> {
    if n == 0 {
        return None;
    }
    state::read().shared_region(ptr as usize, n)
}

fn htod(flags: u16, dst: u64, src: *const c_void, n: usize) -> Result<(), u32> {
    let ctx = need_ctx()?;
    if let Some((region, offset)) = region_of(src, n) {
        let call = MemcpyHtoDRegion {
            dst,
            region,
            offset,
            size: n as u64,
        };
        return client::call(flags, &call, &[]).map(|_| ());
    }
    if n >= STAGED_MIN {
        if let Some(done) = staged_htod(flags, ctx, dst, src, n) {
            return done;
        }
    }
    let data = ffi::bytes(src as *const u8, n)?;
    client::call(flags, &MemcpyHtoD { dst, size: n as u64 }, data).map(|_| ())
}

fn dtoh(flags: u16, dst: *mut c_void, src: u64, n: usize) -> Result<(), u32> {
    let ctx = need_ctx()?;
    if let Some((region, offset)) = region_of(dst, n) {
        let call = MemcpyDtoHRegion {
            src,
            region,
            offset,
            size: n as u64,
        };
        return client::call(flags, &call, &[]).map(|_| ());
    }
    if n >= STAGED_MIN {
        if let Some(done) = staged_dtoh(flags, ctx, dst, src, n) {
            return done;
        }
    }
    let out = ffi::bytes_mut(dst as *mut u8, n)?;
    client::with_channel(|ch, _| ch.copy_to_host(flags, &MemcpyDtoH { src, size: n as u64 }, out))
}

fn htod_async(flags: u16, dst: u64, src: *const c_void, n: usize, stream: Handle) -> Result<(), u32> {
    need_ctx()?;
    let stream = stream_id(stream)?;
    state::read().check_range(dst, n as u64)?;
    if let Some((region, offset)) = region_of(src, n) {
        let call = MemcpyHtoDRegionAsync {
            dst,
            region,
            offset,
            size: n as u64,
            stream,
        };
        return client::post(flags, &call, &[]);
    }
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

fn dtoh_async(flags: u16, dst: *mut c_void, src: u64, n: usize, stream: Handle) -> Result<(), u32> {
    need_ctx()?;
    let stream = stream_id(stream)?;
    state::read().check_range(src, n as u64)?;
    if n == 0 {
        return Ok(());
    }
    if dst.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
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

/// The driver's own checks on a memset: element alignment of the address and pitch, and the range.
fn check_memset(dst: u64, pitch: usize, elem: u32, width: usize, height: usize) -> Result<(), u32> {
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

fn memset(flags: u16, dst: u64, pitch: usize, value: u32, elem: u32, width: usize, height: usize) -> Result<(), u32> {
    need_ctx()?;
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
fn memset_async(
    flags: u16,
    dst: u64,
    pitch: usize,
    value: u32,
    elem: u32,
    width: usize,
    height: usize,
    stream: Handle,
) -> Result<(), u32> {
    need_ctx()?;
    let stream = stream_id(stream)?;
    check_memset(dst, pitch, elem, width, height)?;
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

fn side(kind: u32, host: usize, device: u64, x: usize, y: usize, pitch: usize) -> Result<Side, u32> {
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

fn copy_2d(flags: u16, params: *const c_void, stream: Option<Handle>) -> Result<(), u32> {
    need_ctx()?;
    let m: Copy2D = ffi::read(params as *const Copy2D)?;
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
    let host_rows = |addr: usize, pitch: usize| -> Result<Vec<u8>, u32> {
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

/// Page-aligned host memory for cuMemAllocHost/cuMemHostAlloc. The server stages copies through its own
/// pinned buffers, so the client's buffer only needs the alignment programs expect.
fn host_alloc(flags: u16, out: *mut *mut c_void, size: usize) -> Result<(), u32> {
    need_ctx()?;
    if out.is_null() || size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let ptr = match shared_alloc(flags, size) {
        Some(ptr) => ptr,
        None => {
            let ptr = ffi::alloc_host(size)?;
            state::write().host_allocs.insert(ptr as usize, size);
            ptr
        }
    };
    ffi::write(out, ptr as *mut c_void)
}

/// On a shared-memory session, pinned memory lives in a memfd the server maps and registers with the driver,
/// so the GPU copies straight to and from the app's buffer, as natively. `None` (fall back to staged copies):
/// not a local session, turned off with `VGPU_SHM_PINNED=0`, or the server could not map or pin it.
fn shared_alloc(flags: u16, size: usize) -> Option<*mut u8> {
    static NEXT_REGION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    if !client::session_is_local() || std::env::var("VGPU_SHM_PINNED").is_ok_and(|v| v == "0") {
        return None;
    }
    let (ptr, fd) = ffi::alloc_shared(size).ok()?;
    let id = NEXT_REGION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    use std::os::fd::AsFd;
    match client::call_with_fd(flags, &HostRegionMap { id, size: size as u64 }, fd.as_fd(), id) {
        Ok(_) => {
            let mut reg = state::write();
            reg.host_allocs.insert(ptr as usize, size);
            reg.shared_regions.insert(ptr as usize, (id, size));
            Some(ptr)
        }
        Err(_) => {
            ffi::free_shared(ptr, size);
            None
        }
    }
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
        Ok(())
    }
    [cuMemGetInfo_v2] [] (free: *mut usize, total: *mut usize) |f| {
        need_ctx()?;
        let r = client::call(0, &MemGetInfo {}, &[])?;
        ffi::write(free, r.free as usize)?;
        ffi::write(total, r.total as usize)
    }
    [cuMemAllocHost_v2] [] (out: *mut *mut c_void, size: usize) |f| {
        host_alloc(f, out, size)
    }
    [cuMemHostAlloc] [] (out: *mut *mut c_void, size: usize, flags: c_uint) |f| {
        // PORTABLE | DEVICEMAP | WRITECOMBINED are the defined flags.
        if flags & !0x7 != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        host_alloc(f, out, size)
    }
    [cuMemFreeHost] [] (ptr: *mut c_void) |f| {
        client::session()?;
        let (size, shared) = {
            let mut reg = state::write();
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
            None => ffi::free_host(ptr as *mut u8, size),
        }
    }
    [cuMemcpyHtoD_v2] [cuMemcpyHtoD_v2_ptds] (dst: u64, src: *const c_void, n: usize) |f| {
        htod(f, dst, src, n)
    }
    [cuMemcpyDtoH_v2] [cuMemcpyDtoH_v2_ptds] (dst: *mut c_void, src: u64, n: usize) |f| {
        dtoh(f, dst, src, n)
    }
    [cuMemcpyDtoD_v2] [cuMemcpyDtoD_v2_ptds] (dst: u64, src: u64, n: usize) |f| {
        need_ctx()?;
        client::call(f, &MemcpyDtoD { dst, src, size: n as u64 }, &[]).map(|_| ())
    }
    [cuMemcpyHtoDAsync_v2] [cuMemcpyHtoDAsync_v2_ptsz] (dst: u64, src: *const c_void, n: usize, stream: Handle) |f| {
        htod_async(f, dst, src, n, stream)
    }
    [cuMemcpyDtoHAsync_v2] [cuMemcpyDtoHAsync_v2_ptsz] (dst: *mut c_void, src: u64, n: usize, stream: Handle) |f| {
        dtoh_async(f, dst, src, n, stream)
    }
    [cuMemcpyDtoDAsync_v2] [cuMemcpyDtoDAsync_v2_ptsz] (dst: u64, src: u64, n: usize, stream: Handle) |f| {
        need_ctx()?;
        let stream = stream_id(stream)?;
        {
            let reg = state::read();
            reg.check_range(src, n as u64)?;
            reg.check_range(dst, n as u64)?;
        }
        client::post(f, &MemcpyDtoDAsync { dst, src, size: n as u64, stream }, &[])
    }
    [cuMemcpy2D_v2, cuMemcpy2DUnaligned_v2] [cuMemcpy2D_v2_ptds, cuMemcpy2DUnaligned_v2_ptds] (params: *const c_void) |f| {
        copy_2d(f, params, None)
    }
    [cuMemcpy2DAsync_v2] [cuMemcpy2DAsync_v2_ptsz] (params: *const c_void, stream: Handle) |f| {
        copy_2d(f, params, Some(stream))
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
