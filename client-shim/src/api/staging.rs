//! Shared staging for large pageable copies on shared-memory sessions: per app thread, two slots of shared pinned
//! memory the GPU reads or writes while this thread fills or empties the other one, so each byte is copied by the
//! CPU once (as in the native driver's own staging) instead of three times through the ring.

use std::ffi::c_void;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use crate::mirror::StreamKey;
use crate::{client, ffi, state};

/// Per slot, the stream an asynchronous copy that may still read it was queued on.
type Busy = [Option<StreamKey>; 2];

/// Pageable copies at least this large go through the thread's shared staging slots.
pub(super) const STAGED_MIN: usize = 1 << 20;
/// Size of each of the two staging slots.
const STAGING_SLOT: usize = 8 << 20;

/// Per-thread double buffer in shared pinned memory for pageable device-to-host copies on shared-memory
/// sessions: the GPU writes one slot while this thread copies the other out, so each byte is copied by the CPU
/// once (as in the native driver's own staging), not three times through the ring.
struct Staging {
    ptr: *mut u8,
    region: RegionId,
    /// Events (created in `ctx`) marking when each slot's copy has landed.
    events: [EventId; 2],
    ctx: ContextId,
    /// A slot an asynchronous copy may still be reading (`staged_htod_async`), and the stream it was queued on: its
    /// next user waits for its event, unless this thread has since waited for that stream or the whole context.
    busy: Busy,
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The thread is ending: release this process's mapping (the server keeps its own until the session ends).
        state::write().shared_regions.remove(&(self.ptr as usize));
        ffi::free_shared(self.ptr, 2 * STAGING_SLOT);
    }
}

thread_local! {
    /// The thread's staging slots on each server it has staged copies with, by server index.
    static STAGING: std::cell::RefCell<Vec<Option<Staging>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Copies `n` bytes from device `src` to pageable `dst` through the staging slots; `None` when staging is not
/// available here (not a local session, sharing turned off, or the server could not map the slots).
pub(super) fn staged_dtoh(flags: u16, ctx: ContextId, dst: *mut c_void, src: u64, n: usize) -> Option<CuResult<()>> {
    let (base, region, events) = staging(flags, ctx)?;
    Some(staged_copy_out(flags, base, region, events, dst as *mut u8, src, n))
}

/// Copies `n` bytes from pageable `src` to device `dst` through the staging slots: this thread fills one slot
/// while the GPU reads the other. Returns once every byte has reached the device.
pub(super) fn staged_htod(flags: u16, ctx: ContextId, dst: u64, src: *const c_void, n: usize) -> Option<CuResult<()>> {
    let slots = staging(flags, ctx)?;
    Some(staged_copy_in(flags, slots, dst, src as *const u8, n, None))
}

/// `cuMemcpyHtoDAsync` from pageable `src` on the NULL or per-thread stream, through the staging slots: returns once
/// every byte is in a slot (as the driver's own staging returns once the bytes are staged), the GPU reading the
/// last slots in stream order after the call; their next user waits for that. One CPU copy instead of two through
/// the ring.
pub(super) fn staged_htod_async(
    flags: u16,
    ctx: ContextId,
    dst: u64,
    src: *const c_void,
    n: usize,
    stream: StreamId,
) -> Option<CuResult<()>> {
    if stream != StreamId::NULL && stream != StreamId::PER_THREAD {
        // The slots' events belong to the thread's context; another stream may be of another one.
        return None;
    }
    let slots = staging(flags, ctx)?;
    Some(staged_copy_in(flags, slots, dst, src as *const u8, n, Some(stream)))
}

/// This thread's slots on the current server: which an asynchronous copy may still be reading.
fn busy_slots() -> Busy {
    let server = client::current_server();
    STAGING.with(|cell| {
        cell.borrow()
            .get(server)
            .and_then(|s| s.as_ref().map(|s| s.busy))
            .unwrap_or_default()
    })
}

fn set_busy(busy: Busy) {
    let server = client::current_server();
    STAGING.with(|cell| {
        if let Some(Some(s)) = cell.borrow_mut().get_mut(server) {
            s.busy = busy;
        }
    });
}

/// This thread has waited for `stream` on `server` (`None`: for its whole current context there): slots whose
/// asynchronous copies were queued there are free again, and their next user need not wait for their events.
pub(crate) fn waited(server: usize, stream: Option<StreamKey>) {
    let ctx = state::current_ctx();
    STAGING.with(|cell| {
        if let Some(Some(s)) = cell.borrow_mut().get_mut(server) {
            for b in &mut s.busy {
                if b.is_some() && (stream.is_none() && s.ctx == ctx || *b == stream) {
                    *b = None;
                }
            }
        }
    });
}

/// Before slot `slot` is filled or written: an asynchronous copy that may still read it is waited for.
fn free_slot(events: &[EventId; 2], busy: &mut Busy, slot: usize) -> CuResult<()> {
    if busy[slot].take().is_some() {
        client::call(0, &EventSynchronize { event: events[slot] }, &[])?;
    }
    Ok(())
}

/// This thread's staging slots (created on first use): base address, region id, and the two slot events.
fn staging(flags: u16, ctx: ContextId) -> Option<(*mut u8, RegionId, [EventId; 2])> {
    let server = client::current_server();
    let ready = STAGING.with(|cell| {
        let mut all = cell.borrow_mut();
        if all.len() <= server {
            all.resize_with(server + 1, || None);
        }
        let slot = &mut all[server];
        if let Some(s) = slot.as_mut().filter(|s| s.ctx != ctx) {
            // Events belong to a context: a thread that switched contexts needs new ones (the slots stay mapped;
            // replacing the whole `Staging` would unmap them in its drop), once the old ones say no asynchronous
            // copy still reads a slot.
            for (event, busy) in s.events.iter().zip(s.busy) {
                if busy.is_some() {
                    client::call(0, &EventSynchronize { event: *event }, &[]).ok()?;
                }
            }
            let events = staging_events()?;
            for old in std::mem::replace(&mut s.events, events) {
                let _ = client::post_now(0, &EventDestroy { event: old }, &[]);
            }
            s.ctx = ctx;
            s.busy = [None; 2];
        }
        if slot.is_none() {
            let ptr = super::host::shared_alloc(flags, 2 * STAGING_SLOT, false, 0)?;
            let region = {
                let mut reg = state::write();
                // Staging is the shim's own memory, not an allocation the app may name.
                reg.host_allocs.remove(&(ptr as usize));
                reg.shared_region(ptr as usize, 1, server)?.0
            };
            *slot = Some(Staging {
                ptr,
                region,
                events: staging_events()?,
                ctx,
                busy: [None; 2],
            });
        }
        slot.as_ref().map(|s| (s.ptr as usize, s.region, s.events))
    });
    let (base, region, events) = ready?;
    Some((base as *mut u8, region, events))
}

/// Queues a staging-slot copy and records the slot's event after it, so the slot's next user can wait for it.
fn post_and_mark<C: AsyncCall>(flags: u16, copy: &C, event: EventId, stream: StreamId) -> CuResult<()> {
    client::post(flags, copy, &[])?;
    client::post(flags, &EventRecord { event, stream }, &[])
}

/// Fills the slots in turn and queues their copies to `dst`; synchronous (`on: None`, the NULL or per-thread stream by
/// `flags`) returns once every byte is on the device, asynchronous (`on: Some(stream)`) once every byte is staged.
fn staged_copy_in(
    flags: u16,
    (base, region, events): (*mut u8, RegionId, [EventId; 2]),
    dst: u64,
    src: *const u8,
    n: usize,
    on: Option<StreamId>,
) -> CuResult<()> {
    state::read().check_range(dst, n as u64)?;
    let input = ffi::bytes(src, n)?;
    let stream = on.unwrap_or(if flags & FLAG_PER_THREAD != 0 {
        StreamId::PER_THREAD
    } else {
        StreamId::NULL
    });
    let mut busy = busy_slots();
    // Start with a free slot where there is one: back-to-back asynchronous copies then alternate, each waiting
    // only for the copy two before it.
    let first = usize::from(busy[0].is_some() && busy[1].is_none());
    for (i, off) in (0..n).step_by(STAGING_SLOT).enumerate() {
        let len = STAGING_SLOT.min(n - off);
        let slot = (first + i) % 2;
        // The GPU must have finished reading this slot (chunk i - 2, or an earlier asynchronous copy) before it is
        // refilled.
        free_slot(&events, &mut busy, slot)?;
        let staged = ffi::bytes_mut(base.wrapping_add(slot * STAGING_SLOT), len)?;
        copy_parallel(staged, &input[off..off + len]);
        let copy = MemcpyHtoDRegionAsync {
            dst: DevicePtr(dst + off as u64),
            region,
            offset: (slot * STAGING_SLOT) as u64,
            size: len as u64,
            stream,
        };
        post_and_mark(flags, &copy, events[slot], stream)?;
        busy[slot] = Some(crate::mirror::stream_key(flags, stream));
    }
    if on.is_some() {
        // The GPU reads the last slots after this returns: their next user waits.
        set_busy(busy);
        return Ok(());
    }
    // Both slots are free again when this returns, and every byte is on the device.
    for slot in 0..2 {
        free_slot(&events, &mut busy, slot)?;
    }
    set_busy(busy);
    Ok(())
}

fn staging_events() -> Option<[EventId; 2]> {
    let mut events = [EventId::default(); 2];
    for e in &mut events {
        *e = EventId(state::new_id());
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
    region: RegionId,
    events: [EventId; 2],
    dst: *mut u8,
    src: u64,
    n: usize,
) -> CuResult<()> {
    // Checked here so that a bad range fails before any byte moves, as natively.
    state::read().check_range(src, n as u64)?;
    let out = ffi::bytes_mut(dst, n)?;
    let stream = if flags & FLAG_PER_THREAD != 0 {
        StreamId::PER_THREAD
    } else {
        StreamId::NULL
    };
    let chunks: Vec<(usize, usize)> = (0..n)
        .step_by(STAGING_SLOT)
        .map(|off| (off, STAGING_SLOT.min(n - off)))
        .collect();
    let mut busy = busy_slots();
    for slot in 0..2 {
        free_slot(&events, &mut busy, slot)?;
    }
    set_busy(busy);
    let issue = |i: usize| -> CuResult<()> {
        let (off, len) = chunks[i];
        let slot = i % 2;
        let copy = MemcpyDtoHRegionAsync {
            src: DevicePtr(src + off as u64),
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
