//! Page-locked host memory as the device sees it. Natively pinned memory is mapped: a kernel may read and
//! write it through the very address the host uses. Here the server keeps a mirror at the same address.
//!
//! Each pinned allocation (and each registered range the server can place) gets a server-side mirror at the
//! same virtual address (`HostMirrorMap`), so device pointer and host pointer stay one number, as under
//! unified addressing. The client's memory stays the truth for the host: a kernel whose arguments name a
//! mirrored region gets the region pushed to the server first (in stream order), and what the kernel changed
//! comes back at the next synchronizing call, which is when the host may look at it. Only changed bytes come
//! back (`Pending`): an argument word that merely looks like a pointer into a buffer, and host writes made
//! once the work was done, must not lose the host's newer bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use vgpu_cuda_sys::driver::CUstream_flags;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::digest::{chunk_hashes, CHUNK};
use vgpu_dataplane::handshake::CAP_MIRROR_DIGEST;
use vgpu_dataplane::wire::*;

use crate::client::Route;
use crate::log::{log, DEBUG, WARN};
use crate::{client, ffi};

mod pending;
use pending::Writer;
pub use pending::{Covered, StreamKey};
use pending::{Newest, Pending};

const PAGE: usize = 4096;

/// One mirrored host range: the pages mapped on the server (`base`, `len`, device address `dptr`), and the
/// bytes in them that belong to the app (`data`, `data_len`): all of them for an allocation, exactly the
/// registered range for `cuMemHostRegister` (the rest of its pages is other memory of the process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub base: usize,
    pub len: usize,
    pub dptr: u64,
    pub data: usize,
    pub data_len: usize,
    pub kind: Kind,
    /// The device whose server holds the mirror (the current one when it was made): kernels and copies of
    /// other servers cannot reach it.
    pub device: i32,
}

/// What a mirrored range is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Pinned memory: cuMemHostAlloc/cuMemAllocHost, or a registered range.
    Pinned,
    /// cuMemAllocManaged: the server's managed allocation, at the same address here.
    Managed,
    /// A `__managed__` variable: kernels name it without arguments, so it goes with every launch.
    ManagedGlobal,
}

impl Mirror {
    /// The device address of the app's first byte.
    fn data_dptr(&self) -> u64 {
        self.dptr + (self.data - self.base) as u64
    }
}

struct Mirrors {
    by_base: BTreeMap<usize, Mirror>,
    /// Regions queued device work may have written, by region base: what to bring back at the next
    /// synchronizing call of a thread that queued such work.
    pending: BTreeMap<usize, Pending>,
    /// Pages mapped here for `__managed__` variables (several variables may share one).
    global_pages: BTreeSet<usize>,
    /// `__managed__` variables looked up before any context was current (the runtime does so while it
    /// registers a module): their initial values are fetched once a context is (`fetch_deferred`).
    deferred: BTreeSet<usize>,
}

impl Mirrors {
    /// The mirror whose app bytes hold all of [addr, addr+n) (`n` 0 counts as 1: the byte at `addr`).
    fn holding(&self, addr: usize, n: usize) -> Option<Mirror> {
        let (_, mirror) = self.by_base.range(..=addr).next_back()?;
        let end = addr.checked_add(n.max(1))?;
        (addr >= mirror.data && end <= mirror.data + mirror.data_len).then_some(*mirror)
    }
}

static MIRRORS: Mutex<Mirrors> = Mutex::new(Mirrors {
    by_base: BTreeMap::new(),
    pending: BTreeMap::new(),
    global_pages: BTreeSet::new(),
    deferred: BTreeSet::new(),
});

/// Whether `deferred` may be non-empty (a lock-free check for the context switches that call
/// `fetch_deferred`).
static ANY_DEFERRED: AtomicBool = AtomicBool::new(false);

fn mirrors() -> MutexGuard<'static, Mirrors> {
    MIRRORS.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn page_round(len: usize) -> Option<usize> {
    len.checked_next_multiple_of(PAGE)
}

/// Where pinned allocations are placed: a region of the address space that Linux leaves to explicit
/// requests (the heap is far below, shared libraries and default mmaps far above), so the same address is
/// usually free in the server process too.
const ARENA_START: usize = 0x4000_0000_0000;
const ARENA_END: usize = 0x6800_0000_0000;
static ARENA_NEXT: AtomicUsize = AtomicUsize::new(ARENA_START);
const ARENA_JUMP: usize = 1 << 40;

/// Tries to mirror [base, base+len) on the server of device `device` at the same address.
fn map_on_server(base: usize, len: usize, device: i32) -> CuResult<u64> {
    let r = client::call_to(
        Route::Device(device),
        0,
        &HostMirrorMap {
            addr: HostAddr(base as u64),
            size: len as u64,
        },
        &[],
    )?;
    Ok(r.dptr.get())
}

/// Page-locked, zeroed host memory of `len` bytes (a page multiple) with a server mirror at the same address
/// where one can be had. Returns (address, mirrored).
pub fn alloc(len: usize) -> CuResult<(usize, bool)> {
    let device = crate::state::current_device().unwrap_or(0);
    for _ in 0..16 {
        // Consecutive allocations keep a guard gap, so that a range the server cannot use at one address
        // does not push every later one onto the same conflict.
        let step = len.saturating_add(2 << 20).next_multiple_of(2 << 20);
        let addr = ARENA_NEXT.fetch_add(step, Ordering::Relaxed);
        if addr.saturating_add(len) > ARENA_END {
            break;
        }
        let Some(base) = ffi::map_pages(addr, len) else {
            continue;
        };
        match map_on_server(base, len, device) {
            Ok(dptr) => {
                let m = Mirror {
                    base,
                    len,
                    dptr,
                    data: base,
                    data_len: len,
                    kind: Kind::Pinned,
                    device,
                };
                mirrors().by_base.insert(base, m);
                return Ok((base, true));
            }
            Err(CUDA_ERROR_ALREADY_MAPPED) => {
                // Taken in the server process (its driver reserves large ranges for device memory): move
                // the arena on by a whole terabyte rather than probing the same neighbourhood again.
                ffi::unmap_pages(base, len);
                ARENA_NEXT.fetch_add(ARENA_JUMP, Ordering::Relaxed);
            }
            Err(e) => {
                // A server without mirrors (or out of memory for them): plain host memory, which copies
                // still serve; kernels cannot reach it.
                log!(
                    DEBUG,
                    "no server mirror for {len} pinned bytes ({e}); kernels cannot reach them"
                );
                return Ok((base, false));
            }
        }
    }
    let base = ffi::map_pages(0, len).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
    Ok((base, false))
}

/// Frees memory from `alloc` (its mirror too).
pub fn free(base: usize, len: usize) {
    // Another thread may be pushing or pulling this region right now: wait for it before the pages go.
    let _no_transfer = TRANSFERS.write().unwrap_or_else(|p| p.into_inner());
    forget(base);
    ffi::unmap_pages(base, len);
}

/// Held (shared) while a thread copies a mirrored region's bytes between this process and the server, and
/// (exclusive) while a region is freed, so that no copy reads or writes pages that are being unmapped.
static TRANSFERS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Mirrors an app range that `cuMemHostRegister` pins: the enclosing pages, if the server can map them at
/// the same address.
pub fn register(ptr: usize, size: usize) {
    let base = ptr & !(PAGE - 1);
    let Some(len) = ptr.checked_add(size).and_then(page_round).map(|end| end - base) else {
        return;
    };
    if mirrors()
        .by_base
        .range(..base + len)
        .next_back()
        .is_some_and(|(_, m)| m.base + m.len > base)
    {
        // Shares pages with a range mirrored already: that mirror covers them.
        return;
    }
    let device = crate::state::current_device().unwrap_or(0);
    match map_on_server(base, len, device) {
        Ok(dptr) => {
            let m = Mirror {
                base,
                len,
                dptr,
                data: ptr,
                data_len: size,
                kind: Kind::Pinned,
                device,
            };
            mirrors().by_base.insert(base, m);
        }
        Err(e) => log!(
            DEBUG,
            "no server mirror for registered range {ptr:#x} ({e}); kernels cannot reach it"
        ),
    }
}

/// Managed memory the server allocated at `dptr`: this process maps the same address, so host and device
/// use one pointer. `CUDA_ERROR_OUT_OF_MEMORY` when the address is taken here.
pub fn adopt_managed(dptr: u64, size: usize, device: i32) -> CuResult<()> {
    let base = dptr as usize & !(PAGE - 1);
    let len = (dptr as usize)
        .checked_add(size)
        .and_then(page_round)
        .ok_or(CUDA_ERROR_OUT_OF_MEMORY)?
        - base;
    if ffi::map_pages(base, len).is_none() {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    let m = Mirror {
        base,
        len,
        dptr: base as u64,
        data: dptr as usize,
        data_len: size,
        kind: Kind::Managed,
        device,
    };
    mirrors().by_base.insert(base, m);
    Ok(())
}

/// A `__managed__` variable at `dptr`: mapped here at the same address (pages another managed variable
/// mapped already are shared), with the server's initial value.
pub fn adopt_managed_global(dptr: u64, size: usize, device: i32) -> CuResult<()> {
    let start = dptr as usize;
    let end = start.checked_add(size.max(1)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if find(start).is_some() {
        return Ok(());
    }
    let mut page = start & !(PAGE - 1);
    while page < end {
        let mapped = mirrors().global_pages.contains(&page);
        if !mapped {
            if ffi::map_pages(page, PAGE).is_none() {
                return Err(CUDA_ERROR_NOT_SUPPORTED);
            }
            mirrors().global_pages.insert(page);
        }
        page += PAGE;
    }
    // Keyed by the variable's own address: several may share a page.
    let m = Mirror {
        base: start,
        len: size,
        dptr,
        data: start,
        data_len: size,
        kind: Kind::ManagedGlobal,
        device,
    };
    // Reading the initial value is a copy, which needs a context on the server; the runtime looks
    // `__managed__` variables up before it has made one current. The host cannot look at the variable
    // before then either (natively it is the runtime's initialisation that follows).
    let fetched = match crate::state::current_ctx() {
        crate::state::NO_CONTEXT => Err(CUDA_ERROR_INVALID_CONTEXT),
        _ => fetch_initial(&m),
    };
    let mut all = mirrors();
    all.by_base.insert(start, m);
    match fetched {
        Ok(()) => Ok(()),
        Err(CUDA_ERROR_INVALID_CONTEXT) => {
            all.deferred.insert(start);
            ANY_DEFERRED.store(true, Ordering::Release);
            Ok(())
        }
        Err(e) => {
            all.by_base.remove(&start);
            Err(e)
        }
    }
}

/// Copies a `__managed__` variable's current value from the server into its pages here.
fn fetch_initial(m: &Mirror) -> CuResult<()> {
    let out = ffi::bytes_mut(m.data as *mut u8, m.data_len)?;
    let call = MemcpyDtoH {
        src: DevicePtr(m.data_dptr()),
        size: m.data_len as u64,
    };
    client::copy_to_host(Route::Device(m.device), 0, &call, out)
}

/// Once a context is current on the server: fetches the initial values of `__managed__` variables looked
/// up before (`adopt_managed_global`). Cheap when there are none.
pub fn fetch_deferred() -> CuResult<()> {
    if !ANY_DEFERRED.load(Ordering::Acquire) {
        return Ok(());
    }
    let due: Vec<Mirror> = {
        let mut m = mirrors();
        ANY_DEFERRED.store(false, Ordering::Release);
        let bases: Vec<usize> = std::mem::take(&mut m.deferred).into_iter().collect();
        bases.iter().filter_map(|b| m.by_base.get(b).copied()).collect()
    };
    for (i, mirror) in due.iter().enumerate() {
        if let Err(e) = fetch_initial(mirror) {
            // Still no usable context: keep the rest for the next time.
            let mut m = mirrors();
            m.deferred.extend(due[i..].iter().map(|x| x.base));
            ANY_DEFERRED.store(true, Ordering::Release);
            return Err(e);
        }
    }
    Ok(())
}

/// Frees the mirror of a managed allocation (the server frees the memory itself).
pub fn drop_managed(dptr: u64) {
    let base = dptr as usize & !(PAGE - 1);
    let m = {
        let mut m = mirrors();
        m.pending.remove(&base);
        m.by_base.remove(&base)
    };
    if let Some(m) = m {
        ffi::unmap_pages(m.base, m.len);
    }
}

/// Drops the mirror of the range based at `ptr`'s page, if any.
pub fn forget(ptr: usize) {
    let base = ptr & !(PAGE - 1);
    let removed = {
        let mut m = mirrors();
        m.pending.remove(&base);
        m.by_base.remove(&base)
    };
    if let Some(m) = removed.filter(|m| m.kind == Kind::Pinned) {
        let _ = client::call_to(
            Route::Device(m.device),
            0,
            &HostMirrorUnmap {
                addr: HostAddr(base as u64),
            },
            &[],
        );
    }
}

/// The mirror containing `addr`.
pub fn find(addr: usize) -> Option<Mirror> {
    mirrors().holding(addr, 1)
}

/// Marks [addr, addr+n) of a mirrored region as written by a copy into the mirror queued on `stream` of the
/// server `route` leads to, to be brought back at the next synchronizing call that covers it (`Covered`).
pub fn mark_copied(addr: usize, n: usize, route: Route, flags: u16, stream: StreamId) {
    let writer = writer(route, flags, stream);
    let mut m = mirrors();
    let Some(mirror) = m.holding(addr, n) else {
        return;
    };
    log!(
        DEBUG,
        "mirror {:#x}: copy into {addr:#x}+{n} queued ({writer:?})",
        mirror.base
    );
    let entry = m.pending.entry(mirror.base).or_default();
    entry.add_owner(writer, next_mark());
    entry.copied.push((addr - mirror.data, n));
}

/// Work queued on `stream` (of a call with `flags`, by this thread) of the server `route` leads to.
fn writer(route: Route, flags: u16, stream: StreamId) -> Writer {
    let key = stream_key(flags, stream);
    let non_blocking = CUstream_flags::CU_STREAM_NON_BLOCKING.0;
    // A stream destroyed meanwhile is taken as blocking (what most streams are).
    let blocking = match key {
        StreamKey::Legacy | StreamKey::PerThread(_) => true,
        StreamKey::Created(_) => crate::state::read()
            .streams
            .get(&stream)
            .is_none_or(|&(f, _)| f & non_blocking == 0),
    };
    Writer {
        server: client::server_index(route).unwrap_or(usize::MAX),
        stream: key,
        blocking,
    }
}

/// Work queued into mirrors so far in this process (`pending::Marks`).
static MARKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The mark of work queued now.
fn next_mark() -> u64 {
    MARKS.fetch_add(1, Ordering::AcqRel) + 1
}

/// The count of work queued into mirrors so far: an event recorded now covers that (on its streams), not later.
pub fn marks_so_far() -> u64 {
    MARKS.load(Ordering::Acquire)
}

/// How mirrors name `stream` in a call with `flags` made by this thread: the null stream of a call without the
/// per-thread flag is the legacy stream; the per-thread default stream is this thread's own.
pub fn stream_key(flags: u16, stream: StreamId) -> StreamKey {
    match stream {
        StreamId::PER_THREAD => StreamKey::PerThread(this_thread()),
        StreamId::NULL if flags & FLAG_PER_THREAD != 0 => StreamKey::PerThread(this_thread()),
        StreamId::NULL | StreamId::LEGACY => StreamKey::Legacy,
        s => StreamKey::Created(s.get()),
    }
}

/// A small number naming the calling thread (its per-thread default stream, `StreamKey::PerThread`).
fn this_thread() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    thread_local! {
        static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed) as u64;
    }
    ID.with(|id| *id)
}

/// Where the newest bytes of `[addr, addr+n)` are when it lies in a mirrored region that queued device work may
/// have written and nobody has synchronized with yet. Copies into the mirror that wrote all of the range: the
/// mirror's (read in stream order, without waiting). After a kernel was pushed the region: the mirror's where the
/// host has not changed the range since the push (a kernel may have written it; a graph replayed twice without a
/// sync reads what the first replay wrote), the host's where the host has changed all of it since (it rewrote
/// the buffer once it saw the work done, as frameworks reuse pinned buffers).
pub fn pending_source(addr: usize, n: usize) -> Source {
    let m = mirrors();
    let Some(mirror) = m.holding(addr, n).filter(|_| n > 0) else {
        return Source::Host;
    };
    let Some(p) = m.pending.get(&mirror.base) else {
        return Source::Host;
    };
    let off = addr - mirror.data;
    // Only the region's own bytes are hashed, and only where a push makes the answer depend on them.
    let host = match ffi::bytes(mirror.data as *const u8, mirror.data_len) {
        Ok(h) => h,
        Err(_) => return Source::Unsettled,
    };
    match p.newest(off, n, host) {
        Newest::Mirror => {
            log!(
                DEBUG,
                "mirror {:#x}: {addr:#x}+{n} read from the mirror ({})",
                mirror.base,
                p.summary()
            );
            Source::Mirror(mirror.dptr + (addr - mirror.base) as u64, mirror.device)
        }
        Newest::Host => Source::Host,
        Newest::Unknown => Source::Unsettled,
    }
}

/// Where the newest bytes of a range of mirrored host memory are (`pending_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The host's: nothing queued may have written them.
    Host,
    /// The mirror's on the server of the device, at this device address: copies queued there wrote all of them.
    Mirror(u64, i32),
    /// Not known until the queued work is done: `settle` first, then the host's bytes are the newest.
    Unsettled,
}

/// Waits for the work queued on the server of the region holding `addr` and brings back what it wrote into the
/// region (whichever streams it was queued on), so that the host's bytes are the newest.
pub fn settle(addr: usize) -> CuResult<()> {
    let Some(mirror) = find(addr) else {
        return Ok(());
    };
    client::call_to(Route::Device(mirror.device), 0, &CtxSynchronize {}, &[])?;
    let _transfer = TRANSFERS.read().unwrap_or_else(|p| p.into_inner());
    let Some(pending) = mirrors().pending.remove(&mirror.base) else {
        return Ok(());
    };
    pull(&mirror, &pending).map(|_| ())
}

/// Brings back what queued work changed in `mirror` (see `Pending`). Where the whole region was compared,
/// returns the hashes of what the mirror holds now (a later pull, for work on other streams, compares with those).
fn pull(mirror: &Mirror, pending: &Pending) -> CuResult<Option<Vec<u64>>> {
    let host = ffi::bytes_mut(mirror.data as *mut u8, mirror.data_len)?;
    let fetch = |off: usize, out: &mut [u8]| {
        let call = MemcpyDtoH {
            src: DevicePtr(mirror.data_dptr() + off as u64),
            size: out.len() as u64,
        };
        client::copy_to_host(Route::Device(mirror.device), 0, &call, out)
    };
    if pending.whole {
        fetch(0, host)?;
        return Ok(Some(chunk_hashes(host)));
    }
    let Some(pushed) = &pending.pushed else {
        for &(off, len) in &pending.copied {
            if let Some(out) = host.get_mut(off..off + len) {
                fetch(off, out)?;
            }
        }
        return Ok(None);
    };
    if client::session()?.capabilities & CAP_MIRROR_DIGEST != 0 {
        // The server hashes its side: only the changed runs travel. One that cannot hash this range still
        // serves the whole of it below.
        match mirror_hashes(mirror) {
            Ok(now) => {
                for (from, to) in pending.changed_runs(pushed, &now, mirror.data_len) {
                    fetch(from, &mut host[from..to])?;
                }
                return Ok(Some(now));
            }
            Err(e) if e != client::LOST => {
                log!(
                    DEBUG,
                    "mirror digest at {:#x} refused ({e:?}): pulling it whole",
                    mirror.data
                )
            }
            Err(e) => return Err(e),
        }
    }
    let mut whole = vec![0u8; mirror.data_len];
    fetch(0, &mut whole)?;
    let now = chunk_hashes(&whole);
    for (from, to) in pending.changed_runs(pushed, &now, mirror.data_len) {
        host[from..to].copy_from_slice(&whole[from..to]);
    }
    Ok(Some(now))
}

/// The server's hashes of `mirror`'s bytes, one per `CHUNK` (`MirrorDigest`): a kernel argument word that only
/// looked like a pointer into a large buffer then costs the hashes, not the buffer.
fn mirror_hashes(mirror: &Mirror) -> CuResult<Vec<u64>> {
    let call = MirrorDigest {
        dptr: DevicePtr(mirror.data_dptr()),
        size: mirror.data_len as u64,
    };
    let mut tail = Vec::new();
    client::call_with_tail_to(Route::Device(mirror.device), 0, &call, &[], &mut tail)?;
    if tail.len() != mirror.data_len.div_ceil(CHUNK) * 8 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(tail
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .collect())
}

/// Before a launch on `stream`: pushes every mirrored region one of the kernel's argument words points
/// into, in stream order, and remembers it for the next synchronizing call. A region that earlier queued
/// work may have written (pending) is not pushed: the server's copy is the newer one until a sync brings
/// it back, and the host cannot have written it meanwhile without racing that work.
pub fn before_launch(flags: u16, route: Route, stream: StreamId, args: &[u8]) -> CuResult<()> {
    // A `__managed__` variable's initial value must be here before this pushes it.
    fetch_deferred()?;
    let _transfer = TRANSFERS.read().unwrap_or_else(|p| p.into_inner());
    let named: Vec<Mirror> = {
        let m = mirrors();
        if m.by_base.is_empty() {
            return Ok(());
        }
        // `__managed__` variables are named by the kernel's code, not its arguments: they always go.
        let mut named: Vec<Mirror> = m
            .by_base
            .values()
            .filter(|x| x.kind == Kind::ManagedGlobal)
            .copied()
            .collect();
        for word in args.chunks_exact(8) {
            let v = u64::from_le_bytes([word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7]]);
            if let Some(mirror) = m.holding(v as usize, 1).filter(|x| !named.contains(x)) {
                named.push(mirror);
            }
        }
        named
    };
    let me = writer(route, flags, stream);
    let at = if named.is_empty() { 0 } else { next_mark() };
    let server = match route {
        Route::Server(s) => s,
        Route::Device(d) => client::session()?.server_of(d)?,
        Route::Current => client::current_server(),
    };
    for mirror in named {
        if client::session()?.server_of(mirror.device)? != server {
            // Host memory is mirrored on the server where it was allocated; kernels of other servers see none.
            warn_unreachable(mirror.data);
            continue;
        }
        {
            let mut m = mirrors();
            if let Some(p) = m.pending.get_mut(&mirror.base) {
                // The mirror may be newer than the host: this kernel works on it as it is. After a push, what it
                // changes shows against the pushed hashes; after copies only, any byte may come back.
                p.add_owner(me, at);
                p.whole |= p.pushed.is_none();
                continue;
            }
        }
        let data = ffi::bytes(mirror.data as *const u8, mirror.data_len)?;
        let pushed = chunk_hashes(data);
        client::post_to(
            route,
            flags,
            &MemcpyHtoDAsync {
                dst: DevicePtr(mirror.data_dptr()),
                size: mirror.data_len as u64,
                stream,
            },
            data,
        )?;
        let mut m = mirrors();
        let entry = m.pending.entry(mirror.base).or_default();
        entry.add_owner(me, at);
        entry.pushed = Some(pushed);
    }
    Ok(())
}

/// After a synchronizing call that names no stream (a copy or memset on the legacy default stream) made to the
/// server `route` leads to: brings back what the work it waited for may have written into mirrored regions.
pub fn after_sync_on(route: Route) -> CuResult<()> {
    after_sync_of(Covered::Legacy(client::server_index(route)?))
}

/// After a synchronizing call that waited for `covered`: brings back what that work may have written into mirrored
/// regions.
pub fn after_sync_of(covered: Covered) -> CuResult<()> {
    after_sync_before(covered, u64::MAX)
}

/// `after_sync_of` for a wait that covered only work queued up to mark `before` (an event's record): work queued
/// after it on the same streams (another thread's copy into the same pinned buffer) is left for its own wait.
pub fn after_sync_before(covered: Covered, before: u64) -> CuResult<()> {
    let _transfer = TRANSFERS.read().unwrap_or_else(|p| p.into_inner());
    let due: Vec<Mirror> = {
        let m = mirrors();
        if m.pending.is_empty() {
            return Ok(());
        }
        m.pending
            .iter()
            .filter(|(_, p)| p.some_done(covered, before))
            .filter_map(|(b, _)| m.by_base.get(b).copied())
            .collect()
    };
    for mirror in due {
        let Some(pending) = mirrors().pending.remove(&mirror.base) else {
            continue;
        };
        log!(
            DEBUG,
            "mirror {:#x}: pulled after {covered:?} ({})",
            mirror.base,
            pending.summary()
        );
        let now = pull(&mirror, &pending)?;
        // Work this call did not wait for may still be running on the region: the syncs that cover it pull what
        // it changes, compared with what the host holds now.
        let mut rest = pending;
        rest.forget_done(covered, before);
        if rest.owners.is_empty() {
            continue;
        }
        if let Some(hashes) = now {
            rest.pushed = Some(hashes);
            rest.copied.clear();
            rest.whole = false;
        }
        let mut m = mirrors();
        let entry = m.pending.entry(mirror.base).or_default();
        entry.add_owners(rest.owners);
        entry.copied.extend(rest.copied);
        entry.whole |= rest.whole;
        if entry.pushed.is_none() {
            entry.pushed = rest.pushed;
        }
    }
    Ok(())
}

/// Says once that a kernel named host memory mirrored on another server than its own.
fn warn_unreachable(addr: usize) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        log!(
            WARN,
            "a kernel names pinned or managed host memory ({addr:#x}) that lives on another server's device: host \
             memory is mapped for kernels only on the server it was allocated on"
        );
    }
}
