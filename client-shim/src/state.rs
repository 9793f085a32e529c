//! Client-side object registries: the ids the shim hands out as CUDA handles, what each one is, and the
//! per-thread context stack. Lets most queries and handle checks be answered without a round trip.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use vgpu_dataplane::cuerr::{CUresult, CuResult};

use vgpu_dataplane::wire::{
    AllocHandleId, ArrayId, ContextId, EventId, FunctionId, FunctionInfo, ModuleId, PoolId, RegionId, StreamId,
};

/// Ids start well above 2 (stream ids 0, 1, 2 are the driver's special streams) and are 16-byte aligned so
/// they look like the pointers real handles are.
static NEXT_ID: AtomicU64 = AtomicU64::new(0x10_0000);

pub fn new_id() -> u64 {
    NEXT_ID.fetch_add(0x10, Ordering::Relaxed)
}

/// Primary contexts have fixed ids, one per device.
pub fn primary_ctx_id(dev: i32) -> ContextId {
    ContextId(0x1000 + 0x10 * dev as u64)
}

/// The context id that means "no context" (a thread with none current; `CtxSetCurrent` to none).
pub const NO_CONTEXT: ContextId = ContextId(0);

#[derive(Clone, Copy, Debug)]
pub struct ContextInfo {
    pub device: i32,
    pub primary: bool,
}

#[derive(Clone, Debug)]
pub struct ModuleInfo {
    pub is_library: bool,
    /// A library whose image the server rejected: natively, library loading is lazy, so the error surfaces
    /// at the first kernel lookup instead of at the load.
    pub deferred_error: Option<CUresult>,
    pub functions: HashMap<String, Arc<FunctionInfo>>,
    /// Handles given out so far, by name: the driver hands out one handle per function of a module, however
    /// often it is looked up (cuFFT compares the handles its module walk finds with those it looked up).
    pub bound: HashMap<String, FunctionId>,
    /// A module's device (it lives in the context current at its load); `None` for a library, which belongs
    /// to no context and is loaded on each server that uses it (`api::spread`).
    pub device: Option<i32>,
    /// The servers holding it, as a bit set by server index.
    pub loaded_on: u64,
    /// A library's image, kept while the session spans several servers, for loading it on the next one.
    pub image: Option<Arc<[u8]>>,
}

#[derive(Clone, Debug)]
pub struct FunctionEntry {
    pub info: Arc<FunctionInfo>,
    /// A `CUkernel` (library kernel) rather than a `CUfunction`.
    pub is_kernel: bool,
    pub module: ModuleId,
}

#[derive(Default)]
pub struct Registry {
    pub contexts: HashMap<ContextId, ContextInfo>,
    pub primary_refs: HashMap<i32, u32>,
    pub streams: HashMap<StreamId, (u32, i32)>,
    pub events: HashMap<EventId, u32>,
    pub modules: HashMap<ModuleId, ModuleInfo>,
    pub functions: HashMap<FunctionId, FunctionEntry>,
    /// Host allocations made by cuMemAllocHost/cuMemHostAlloc: address → length.
    pub host_allocs: HashMap<usize, usize>,
    /// The subset of `host_allocs` shared with a server (shared-memory sessions): address → (region id, length,
    /// the server that maps it).
    pub shared_regions: BTreeMap<usize, (RegionId, usize, usize)>,
    /// Device ranges the app may name (allocations and module globals): base → length. Lets asynchronous
    /// copies fail at the call, as natively, instead of at a later synchronizing call.
    pub device_ranges: BTreeMap<u64, u64>,
    /// The device each of `device_ranges` belongs to, by base: where copies, frees and pointer queries of an
    /// address go when the session spans several devices (unified addressing across servers).
    pub range_devices: HashMap<u64, i32>,
    /// The device each object the app created belongs to, by its client id (streams, events, modules, arrays,
    /// VMM handles): the server its calls go to. Ids are unique across kinds (`new_id`).
    pub owners: HashMap<u64, i32>,
    /// `cuKernelGetFunction`'s answers by (kernel, context): the driver gives one function per kernel and context,
    /// and the runtime asks before launches (a new id each time would miss every per-function cache).
    pub kernel_functions: HashMap<(FunctionId, ContextId), FunctionId>,
    /// Attributes fetched on first use for functions whose module was loaded lazily.
    pub func_attrs: HashMap<FunctionId, [i32; vgpu_dataplane::wire::FUNC_ATTR_COUNT]>,
    /// Attributes the app set on library kernels, (attribute, value) in order: applied again on each server the
    /// library is loaded on later.
    pub kernel_attrs_set: HashMap<FunctionId, Vec<(i32, i32)>>,
    /// Libraries unloaded by the app: looking a kernel up in one is CUDA_ERROR_NOT_FOUND natively.
    pub unloaded_libraries: HashSet<ModuleId>,
    /// Context flags (`cuCtxGetFlags`): creation flags, or what `cuCtxSetFlags` set.
    pub ctx_flags: HashMap<ContextId, u32>,
    /// Devices whose primary context was reset (`cuDevicePrimaryCtxReset`) and not retained since: the next
    /// retain must reach the server, whose driver re-creates the context then, as natively.
    pub primary_reset: HashSet<i32>,
    /// Flags of each device's primary context (`cuDevicePrimaryCtxSetFlags`).
    pub primary_flags: HashMap<i32, u32>,
    /// Cache and shared-memory configuration preferences, by context.
    pub cache_config: HashMap<ContextId, u32>,
    /// Host ranges registered with `cuMemHostRegister`: address → (length, flags).
    pub host_registered: BTreeMap<usize, (usize, u32)>,
    /// Flags of `cuMemHostAlloc` allocations, by address.
    pub host_alloc_flags: HashMap<usize, u32>,
    /// Memory pools the app created: id → device.
    pub mem_pools: HashMap<PoolId, i32>,
    /// Each device's current memory pool (`cuDeviceSetMemPool`), where not its default one.
    pub current_pools: HashMap<i32, PoolId>,
    /// Stream attributes set with `cuStreamSetAttribute`: (stream, attribute id) → the `CUstreamAttrValue`.
    pub stream_attrs: HashMap<(StreamId, u32), [u8; crate::api::STREAM_ATTR_LEN]>,
    /// CUDA arrays: id → shape.
    pub arrays: HashMap<ArrayId, vgpu_dataplane::wire::ArrayShape>,
    /// Texture and surface objects (the servers' own values) → the server that made each. Two servers may
    /// hand out one value; the last one made wins (both stay usable in kernels on their own servers).
    pub tex_servers: HashMap<u64, usize>,
    /// VMM physical memory the app created (`cuMemCreate`), by id: what the pointer queries report of it.
    pub vmm_handles: HashMap<AllocHandleId, VmmHandle>,
    /// VMM mappings: address → mapping. Their ranges are in `device_ranges` too, while mapped.
    pub vmm_mappings: BTreeMap<u64, VmmMapping>,
    /// VMM reservations: base → (size, the device of the context current when it was made: its server holds it).
    pub vmm_reservations: BTreeMap<u64, (u64, i32)>,
}

/// The client's view of VMM physical memory: kept while the server keeps it (a reference or a mapping left).
#[derive(Clone, Copy, Debug)]
pub struct VmmHandle {
    /// `CUmemAllocationHandleType` bits the app asked for (`CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES`).
    pub handle_types: u32,
    pub refs: u32,
    pub mappings: u32,
}

#[derive(Clone, Debug)]
pub struct VmmMapping {
    pub size: u64,
    pub handle: AllocHandleId,
    /// `CUmemAccess_flags` each device was given (`cuMemSetAccess`); none at first, as natively.
    pub access: Vec<(i32, u32)>,
}

impl Registry {
    /// The host allocation or registered range containing `addr`: (base, length, flags).
    pub fn host_range(&self, addr: usize) -> Option<(usize, usize, u32)> {
        if let Some((&base, &(len, flags))) = self.host_registered.range(..=addr).next_back() {
            if addr < base.saturating_add(len) {
                return Some((base, len, flags));
            }
        }
        self.host_allocs
            .iter()
            .find(|(&base, &len)| addr >= base && addr < base.saturating_add(len))
            .map(|(&base, &len)| (base, len, self.host_alloc_flags.get(&base).copied().unwrap_or(0)))
    }

    /// The device allocation containing `addr`: (base, length).
    pub fn device_range(&self, addr: u64) -> Option<(u64, u64)> {
        let (&base, &len) = self.device_ranges.range(..=addr).next_back()?;
        (addr < base.saturating_add(len)).then_some((base, len))
    }

    /// The device whose memory holds `addr` (an allocation, a global, a mapping the app may name).
    pub fn device_of(&self, addr: u64) -> Option<i32> {
        let (base, _) = self.device_range(addr)?;
        self.range_devices.get(&base).copied()
    }

    /// Records [base, base+len) as memory of device `dev`. Across servers each allocates on its own, so one
    /// address could be handed out twice (by two servers' drivers placing memory themselves): a range that
    /// overlaps another device's is refused (`Err` names that device), never recorded where it would send the
    /// other device's calls astray.
    pub fn add_device_range(&mut self, base: u64, len: u64, dev: i32) -> Result<(), i32> {
        let end = base.saturating_add(len.max(1));
        // Ranges starting inside the new one, and the one before it if it reaches in.
        let before = self
            .device_ranges
            .range(..base)
            .next_back()
            .filter(|(&b, &l)| b.saturating_add(l.max(1)) > base);
        let clash = self
            .device_ranges
            .range(base..end)
            .chain(before)
            .find_map(|(b, _)| self.range_devices.get(b).copied().filter(|&d| d != dev));
        if let Some(other) = clash {
            return Err(other);
        }
        self.device_ranges.insert(base, len);
        self.range_devices.insert(base, dev);
        Ok(())
    }

    /// Forgets the range based at `base`; its length, if it was known.
    pub fn remove_device_range(&mut self, base: u64) -> Option<u64> {
        self.range_devices.remove(&base);
        self.device_ranges.remove(&base)
    }

    /// The shared region holding all of [addr, addr+len) that server `server` maps, as (region id, offset).
    pub fn shared_region(&self, addr: usize, len: usize, server: usize) -> Option<(RegionId, u64)> {
        let (&base, &(id, size, on)) = self.shared_regions.range(..=addr).next_back()?;
        let end = addr.checked_add(len)?;
        (end <= base + size && on == server).then_some((id, (addr - base) as u64))
    }

    /// CUDA_ERROR_INVALID_VALUE unless [addr, addr+len) lies inside known device ranges without a gap: one, or
    /// several back to back (VMM mappings next to each other, which PyTorch copies across).
    pub fn check_range(&self, addr: u64, len: u64) -> CuResult<()> {
        vgpu_dataplane::ranges::covered(&self.device_ranges, addr, len)
    }

    /// The VMM mapping holding `addr`: (its address, the mapping).
    pub fn vmm_mapping(&self, addr: u64) -> Option<(u64, &VmmMapping)> {
        let (&va, m) = self.vmm_mappings.range(..=addr).next_back()?;
        (addr < va.saturating_add(m.size)).then_some((va, m))
    }

    /// Forgets VMM physical memory the server freed (no reference and no mapping left).
    pub fn forget_unused_vmm(&mut self, handle: AllocHandleId) {
        if self
            .vmm_handles
            .get(&handle)
            .is_some_and(|h| h.refs == 0 && h.mappings == 0)
        {
            self.vmm_handles.remove(&handle);
        }
    }
}

static REGISTRY: RwLock<Option<Registry>> = RwLock::new(None);

pub struct ReadGuard(RwLockReadGuard<'static, Option<Registry>>);
pub struct WriteGuard(RwLockWriteGuard<'static, Option<Registry>>);

impl std::ops::Deref for ReadGuard {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        match &*self.0 {
            Some(r) => r,
            None => unreachable!("registry initialised before any read guard is handed out"),
        }
    }
}
impl std::ops::Deref for WriteGuard {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        match &*self.0 {
            Some(r) => r,
            None => unreachable!("registry initialised before any write guard is handed out"),
        }
    }
}
impl std::ops::DerefMut for WriteGuard {
    fn deref_mut(&mut self) -> &mut Registry {
        self.0.get_or_insert_with(Registry::default)
    }
}

pub fn read() -> ReadGuard {
    {
        let g = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
        if g.is_some() {
            return ReadGuard(g);
        }
    }
    drop(write());
    ReadGuard(REGISTRY.read().unwrap_or_else(|p| p.into_inner()))
}

pub fn write() -> WriteGuard {
    let mut g = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(Registry::default);
    WriteGuard(g)
}

thread_local! {
    static CTX_STACK: RefCell<Vec<ContextId>> = const { RefCell::new(Vec::new()) };
    /// The server of the last context `current_server` resolved, by context id (a context's device never changes).
    static SERVER_OF_CURRENT: std::cell::Cell<(ContextId, usize)> = const { std::cell::Cell::new((NO_CONTEXT, 0)) };
}

/// The server holding the calling thread's current context's device; with none current, the server of device 0
/// (context-free calls: library loads, queries made before any context).
pub fn current_server() -> usize {
    let ctx = current_ctx();
    if ctx == NO_CONTEXT {
        return crate::client::session()
            .ok()
            .and_then(|s| s.placement.first())
            .map_or(0, |p| p.server);
    }
    if let Ok((cached, server)) = SERVER_OF_CURRENT.try_with(|c| c.get()) {
        if cached == ctx {
            return server;
        }
    }
    let server = server_of_ctx(ctx);
    let _ = SERVER_OF_CURRENT.try_with(|c| c.set((ctx, server)));
    server
}

/// The server holding context `ctx`'s device (0 for an unknown context).
pub fn server_of_ctx(ctx: ContextId) -> usize {
    server_of_device_in(&read(), ctx).unwrap_or(0)
}

/// The server holding context `ctx`'s device, by the registry `reg` (`None`: an unknown context).
pub fn server_of_device_in(reg: &Registry, ctx: ContextId) -> Option<usize> {
    let dev = reg.contexts.get(&ctx)?.device;
    crate::client::session().ok()?.server_of(dev).ok()
}

/// The device of the calling thread's current context (`None`: no context current).
pub fn current_device() -> Option<i32> {
    let ctx = current_ctx();
    read().contexts.get(&ctx).map(|c| c.device)
}

/// The calling thread's current context (`NO_CONTEXT` = none).
pub fn current_ctx() -> ContextId {
    // After the thread's locals are destroyed (atexit handlers), no context is current.
    CTX_STACK
        .try_with(|s| s.borrow().last().copied().unwrap_or(NO_CONTEXT))
        .unwrap_or(NO_CONTEXT)
}

pub fn set_current_ctx(ctx: ContextId) {
    let _ = CTX_STACK.try_with(|s| {
        let mut s = s.borrow_mut();
        match s.last_mut() {
            Some(top) => *top = ctx,
            None if ctx == NO_CONTEXT => {}
            None => s.push(ctx),
        }
    });
}

pub fn push_ctx(ctx: ContextId) {
    let _ = CTX_STACK.try_with(|s| s.borrow_mut().push(ctx));
}

/// Pops the current context; returns it and the new current one.
pub fn pop_ctx() -> Option<(ContextId, ContextId)> {
    CTX_STACK
        .try_with(|s| {
            let mut s = s.borrow_mut();
            let top = s.pop()?;
            Some((top, s.last().copied().unwrap_or(NO_CONTEXT)))
        })
        .ok()
        .flatten()
}

/// Removes a destroyed context from the calling thread's stack.
pub fn forget_ctx(ctx: ContextId) {
    let _ = CTX_STACK.try_with(|s| s.borrow_mut().retain(|&c| c != ctx));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_back_to_back_cover_a_copy_and_gaps_do_not() {
        let mut reg = Registry::default();
        reg.device_ranges.insert(0x20_0000, 0x20_0000);
        reg.device_ranges.insert(0x40_0000, 0x20_0000);
        reg.device_ranges.insert(0x80_0000, 0x20_0000);
        assert_eq!(reg.check_range(0x3f_fff0, 0x20), Ok(()), "across a seam");
        assert_eq!(reg.check_range(0x20_0000, 0x40_0000), Ok(()), "two whole ranges");
        assert!(reg.check_range(0x5f_fff0, 0x20).is_err(), "into a gap");
        assert!(reg.check_range(0x60_0000, 1).is_err(), "inside a gap");
        assert!(reg.check_range(0x1f_ffff, 2).is_err(), "before the first");
        assert_eq!(reg.check_range(0xa0_0000, 0), Ok(()), "empty, at the end");
    }

    #[test]
    fn ranges_of_two_devices_never_overlap() {
        let mut reg = Registry::default();
        assert_eq!(reg.add_device_range(0x1000, 0x1000, 0), Ok(()));
        assert_eq!(reg.add_device_range(0x3000, 0x1000, 1), Ok(()));
        assert_eq!(
            reg.add_device_range(0x1800, 0x100, 1),
            Err(0),
            "inside device 0's range"
        );
        assert_eq!(reg.add_device_range(0x0800, 0x1000, 1), Err(0), "over its start");
        assert_eq!(reg.add_device_range(0x2fff, 0x2, 0), Err(1), "over device 1's start");
        assert_eq!(reg.add_device_range(0x2000, 0x1000, 1), Ok(()), "back to back is fine");
        assert_eq!(reg.device_of(0x1fff), Some(0));
        assert_eq!(reg.device_of(0x3fff), Some(1));
        assert_eq!(reg.device_of(0x4000), None);
        assert_eq!(reg.remove_device_range(0x3000), Some(0x1000));
        assert_eq!(reg.device_of(0x3000), None);
        assert_eq!(reg.add_device_range(0x3000, 0x10, 0), Ok(()), "free again");
    }
}
