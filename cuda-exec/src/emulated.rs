//! The emulated backend: a GPU-less stand-in for CI and laptops. Memory, copies, streams, events, modules and
//! their bookkeeping are real; a kernel launch is checked against the kernel's parameter layout and counted, not run.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::{DeviceFacts, BACKEND_EMULATED};
use vgpu_dataplane::wire::{
    MemAccessDesc, MemAllocProp, MemOp, MEM_LOCATION_DEVICE, MEM_OP_BARRIER, MEM_OP_FLUSH_REMOTE_WRITES,
    MEM_OP_WAIT_VALUE_32, MEM_OP_WAIT_VALUE_64, MEM_OP_WRITE_VALUE_32, MEM_OP_WRITE_VALUE_64,
};

use crate::backend::{Backend, CuResult, HostBuffer, LoadedFunction, Place};
use crate::ptx;
use vgpu_dataplane::image as fatbin;

/// Where emulated device addresses start: far from anything a host pointer could be mistaken for.
const DEVICE_BASE: u64 = 0x7e00_0000_0000;
const ALLOC_ALIGN: u64 = 512;
const EMULATED_TOTAL_MEM: u64 = 16 << 30;
/// VMM granularity, minimum and recommended alike: current NVIDIA GPUs map device memory in 2 MiB pages.
const VMM_GRANULARITY: u64 = 2 << 20;
/// VMM reservations come from a region of their own, below cuMemAlloc's, so the two never meet.
const VMM_BASE: u64 = 0x7d00_0000_0000;
const VMM_END: u64 = DEVICE_BASE;
/// The host page size reservations are counted in (cuMemAddressReserve's documented unit).
const HOST_PAGE: u64 = 4096;
/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR` and `CU_MEM_HANDLE_TYPE_FABRIC`.
const HANDLE_TYPE_POSIX_FD: u32 = 1;
const HANDLE_TYPE_FABRIC: u32 = 8;

thread_local! {
    static CURRENT_CTX: Cell<u64> = const { Cell::new(0) };
}

#[derive(Default)]
struct State {
    /// base → bytes of each live allocation.
    allocations: BTreeMap<u64, Vec<u8>>,
    used: u64,
    next_addr: u64,
    contexts: HashMap<u64, i32>,
    primary_refs: HashMap<i32, u32>,
    streams: HashMap<u64, ()>,
    /// event → time it was last recorded.
    events: HashMap<u64, Option<Instant>>,
    modules: HashMap<u64, Vec<LoadedFunction>>,
    /// Module-scope variables of each module: name → (address, size).
    globals: HashMap<u64, HashMap<String, (u64, u64)>>,
    functions: HashMap<u64, usize>,
    launches: u64,
    /// Context limits set (`cuCtxSetLimit`), by limit.
    limits: HashMap<u32, u64>,
    /// CUDA arrays: handle → (shape, bytes, rows of `width * element` bytes, slice after slice).
    arrays: HashMap<u64, (vgpu_dataplane::wire::ArrayShape, Vec<u8>)>,
    tex_objects: HashMap<u64, bool>,
    /// Memory pools and which pool each stream-ordered allocation came from.
    pools: HashMap<u64, Pool>,
    pool_allocations: HashMap<u64, (u64, u64)>,
    /// VMM physical memory (`cuMemCreate`) by handle.
    physical: HashMap<u64, Physical>,
    /// VMM address reservations: base → size.
    reservations: BTreeMap<u64, u64>,
    /// VMM mappings: address → what is mapped there.
    mappings: BTreeMap<u64, Mapping>,
}

/// Physical memory made by `cuMemCreate`. Its bytes live here, not at an address: mappings name them, so that an
/// unmapped handle keeps its contents and one handle may be mapped at several addresses (aliases), as natively.
struct Physical {
    bytes: Vec<u8>,
    prop: MemAllocProp,
    /// References not yet released (cuMemCreate's, and one per cuMemRetainAllocationHandle).
    refs: u32,
    /// Mappings of this memory; it is freed once both counts are zero.
    mappings: u32,
}

/// A VMM mapping: `size` bytes of `handle`'s memory from `offset`.
struct Mapping {
    handle: u64,
    offset: u64,
    size: u64,
    /// `CUmemAccess_flags` the device has (cuMemSetAccess); every mapping starts without access. Copies and
    /// memsets do not check it: what a native copy into memory without access does (a fault? an error code?) is
    /// not documented, so the emulator lets it through rather than guess.
    access: u32,
}

/// Where the bytes of one stretch of device memory live: an allocation (by base) or VMM physical memory (by
/// handle), from `offset`, `len` bytes.
#[derive(Clone, Copy)]
struct Piece {
    in_physical: bool,
    key: u64,
    offset: usize,
    len: usize,
}

impl State {
    /// The piece of memory holding address `at`, up to the end of its allocation or mapping.
    fn piece_at(&self, at: u64) -> Option<Piece> {
        if let Some((&base, bytes)) = self.allocations.range(..=at).next_back() {
            let len = bytes.len() as u64;
            if at < base + len {
                return Some(Piece {
                    in_physical: false,
                    key: base,
                    offset: (at - base) as usize,
                    len: (base + len - at) as usize,
                });
            }
        }
        let (&va, m) = self.mappings.range(..=at).next_back()?;
        (at < va + m.size).then(|| Piece {
            in_physical: true,
            key: m.handle,
            offset: (m.offset + at - va) as usize,
            len: (va + m.size - at) as usize,
        })
    }

    /// The pieces [addr, addr+len) covers, in order: one, or several where allocations or mappings lie back to
    /// back (PyTorch maps handles next to each other and copies across the seams). A gap is an invalid range.
    fn pieces(&self, addr: u64, len: u64) -> CuResult<Vec<Piece>> {
        let end = addr.checked_add(len).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if len == 0 {
            // An empty range must still start inside memory, or at its very end.
            let known =
                self.piece_at(addr).is_some() || addr.checked_sub(1).is_some_and(|a| self.piece_at(a).is_some());
            return if known {
                Ok(Vec::new())
            } else {
                Err(CUDA_ERROR_INVALID_VALUE)
            };
        }
        let mut out = Vec::new();
        let mut at = addr;
        while at < end {
            let mut p = self.piece_at(at).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            p.len = p.len.min((end - at) as usize);
            at += p.len as u64;
            out.push(p);
        }
        Ok(out)
    }

    fn piece_bytes(&mut self, p: &Piece) -> CuResult<&mut [u8]> {
        let bytes = if p.in_physical {
            self.physical.get_mut(&p.key).map(|m| &mut m.bytes)
        } else {
            self.allocations.get_mut(&p.key)
        };
        bytes
            .and_then(|b| b.get_mut(p.offset..p.offset + p.len))
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    /// The mappings that exactly tile [ptr, ptr+size), by address: whole mappings, back to back, no gap.
    fn whole_mappings(&self, ptr: u64, size: u64) -> CuResult<Vec<u64>> {
        vgpu_dataplane::ranges::tiling(&self.mappings, |m| m.size, ptr, size)
    }

    /// Frees physical memory nothing refers to any more (no reference left, no mapping).
    fn free_if_unused(&mut self, handle: u64) {
        if self
            .physical
            .get(&handle)
            .is_some_and(|m| m.refs == 0 && m.mappings == 0)
        {
            if let Some(m) = self.physical.remove(&handle) {
                self.used = self.used.saturating_sub(m.bytes.len() as u64);
            }
        }
    }

    /// Whether an allocation (or a host mirror, placed at the client's addresses) overlaps [addr, end).
    fn overlaps_allocation(&self, addr: u64, end: u64) -> bool {
        self.allocations
            .range(..end)
            .next_back()
            .is_some_and(|(&b, v)| b + v.len() as u64 > addr)
    }

    fn overlaps_reservation(&self, addr: u64, end: u64) -> bool {
        self.reservations
            .range(..end)
            .next_back()
            .is_some_and(|(&b, &s)| b + s > addr)
    }
}

/// A memory pool's bookkeeping: what `cuMemPoolGetAttribute` reports.
#[derive(Default)]
struct Pool {
    max_size: u64,
    /// REUSE_FOLLOW_EVENT_DEPENDENCIES, REUSE_ALLOW_OPPORTUNISTIC, REUSE_ALLOW_INTERNAL_DEPENDENCIES.
    reuse: [u64; 3],
    release_threshold: u64,
    reserved: u64,
    reserved_high: u64,
    used: u64,
    used_high: u64,
}

impl Pool {
    fn new(max_size: u64) -> Pool {
        Pool {
            max_size,
            reuse: [1, 1, 1],
            ..Default::default()
        }
    }
}

pub struct EmulatedBackend {
    devices: Vec<DeviceFacts>,
    state: Mutex<State>,
    next_handle: AtomicU64,
    /// Simulated kernel durations (`VGPU_EMULATED_KERNEL_NS`), off by default.
    time: crate::emulated_time::SimulatedTime,
}

impl Default for EmulatedBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl EmulatedBackend {
    pub fn new() -> Self {
        EmulatedBackend {
            devices: vec![emulated_device()],
            state: Mutex::new(State {
                next_addr: DEVICE_BASE,
                ..Default::default()
            }),
            next_handle: AtomicU64::new(0x1000),
            time: crate::emulated_time::SimulatedTime::new(crate::emulated_time::KernelCost::from_env()),
        }
    }

    /// A backend whose kernels take simulated time by `cost`, for tests.
    #[cfg(test)]
    pub(crate) fn with_kernel_cost(cost: crate::emulated_time::KernelCost) -> Self {
        EmulatedBackend {
            time: crate::emulated_time::SimulatedTime::new(Some(cost)),
            ..Self::new()
        }
    }

    fn current(&self) -> u64 {
        CURRENT_CTX.with(|c| c.get())
    }

    /// A backend with `count` identical devices, for tests of device numbering.
    #[cfg(test)]
    pub(crate) fn with_devices(count: usize) -> Self {
        EmulatedBackend {
            devices: vec![emulated_device(); count],
            ..Self::new()
        }
    }

    /// The device ordinal of every piece of VMM physical memory alive, for tests.
    #[cfg(test)]
    pub(crate) fn physical_devices(&self) -> Vec<i32> {
        self.state().physical.values().map(|p| p.prop.location_id).collect()
    }

    /// Device memory in use (allocations and VMM physical memory), for tests.
    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.state().used
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(16, Ordering::Relaxed)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn require_ctx(&self) -> CuResult<()> {
        let ctx = CURRENT_CTX.with(|c| c.get());
        if ctx == 0 || !self.state().contexts.contains_key(&ctx) {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        Ok(())
    }

    fn check_stream(&self, stream: u64) -> CuResult<()> {
        if stream <= 2 {
            // The NULL, legacy and per-thread streams are the current context's: without one, the driver
            // answers CUDA_ERROR_INVALID_CONTEXT.
            self.require_ctx()
        } else if self.state().streams.contains_key(&stream) {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    }

    /// Runs `f` on the bytes of [addr, addr+len): one allocation or mapping, or several back to back.
    fn with_range<R>(&self, addr: u64, len: u64, f: impl FnOnce(&mut [u8]) -> R) -> CuResult<R> {
        let mut st = self.state();
        // The common case, one allocation or mapping holding it all, without building a list.
        if let Some(mut one) = st.piece_at(addr).filter(|p| p.len as u64 >= len) {
            one.len = len as usize;
            return Ok(f(st.piece_bytes(&one)?));
        }
        let pieces = st.pieces(addr, len)?;
        // Across a seam: gather the pieces, run, scatter them back (pieces of one handle mapped twice see the
        // result in order, as a copy engine writing both aliases would leave them).
        let mut joined = Vec::with_capacity(len as usize);
        for p in &pieces {
            joined.extend_from_slice(st.piece_bytes(p)?);
        }
        let r = f(&mut joined);
        let mut at = 0;
        for p in &pieces {
            st.piece_bytes(p)?.copy_from_slice(&joined[at..at + p.len]);
            at += p.len;
        }
        Ok(r)
    }

    /// The checks `cuMemCreate` and `cuMemGetAllocationGranularity` make of an allocation's properties: pinned
    /// memory on this backend's one device.
    fn check_prop(&self, prop: &MemAllocProp) -> CuResult<()> {
        const PINNED: u32 = 1;
        if prop.alloc_type != PINNED || prop.location_type != MEM_LOCATION_DEVICE {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if usize::try_from(prop.location_id).map_or(true, |d| d >= self.devices.len()) {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        Ok(())
    }

    /// Loads a module (into the current context: `need_ctx`) or a library (context-free, as natively).
    fn load(&self, image: &[u8], need_ctx: bool) -> CuResult<(u64, Vec<LoadedFunction>)> {
        if need_ctx {
            self.require_ctx()?;
        }
        let mut variables = Vec::new();
        let infos = match fatbin::classify(image) {
            fatbin::Image::Ptx(text) => {
                if !ptx::looks_compilable(text) {
                    return Err(CUDA_ERROR_INVALID_PTX);
                }
                variables = ptx::globals(text);
                ptx::entries(text).map_err(|_| CUDA_ERROR_INVALID_PTX)?
            }
            fatbin::Image::FatBinary(entries) => {
                // PTX gives names, layouts and globals; without it (nvcc's default is SASS only for one
                // architecture), the cubins' .nv.info sections do. Entries are decompressed as needed.
                let texts: Vec<String> = entries.iter().filter_map(|e| e.ptx()).collect();
                if texts.is_empty() {
                    let elf = entries
                        .iter()
                        .filter(|e| e.kind == 2)
                        .find_map(|e| e.content().ok())
                        .ok_or(CUDA_ERROR_INVALID_IMAGE)?;
                    let (infos, globals) = cubin_layouts(&elf)?;
                    variables = globals;
                    infos
                } else {
                    let mut all: Vec<_> = Vec::new();
                    for t in &texts {
                        for g in ptx::globals(t) {
                            if !variables.iter().any(|v: &(String, u64)| v.0 == g.0) {
                                variables.push(g);
                            }
                        }
                        for f in ptx::entries(t).map_err(|_| CUDA_ERROR_INVALID_PTX)? {
                            if !all
                                .iter()
                                .any(|g: &vgpu_dataplane::wire::FunctionInfo| g.name == f.name)
                            {
                                all.push(f);
                            }
                        }
                    }
                    all
                }
            }
            fatbin::Image::Elf => {
                let (infos, globals) = cubin_layouts(image)?;
                variables = globals;
                infos
            }
            fatbin::Image::Invalid => return Err(CUDA_ERROR_INVALID_IMAGE),
        };
        let module = self.handle();
        let functions: Vec<LoadedFunction> = infos
            .into_iter()
            .map(|info| LoadedFunction {
                info,
                handle: self.handle(),
            })
            .collect();
        let mut st = self.state();
        for f in &functions {
            st.functions.insert(f.handle, f.info.args_size());
        }
        st.modules.insert(module, functions.clone());
        let mut table = HashMap::new();
        for (name, size) in variables {
            let addr = Self::place(&mut st, size.max(1));
            table.insert(name, (addr, size));
        }
        st.globals.insert(module, table);
        Ok((module, functions))
    }

    /// Reserves device addresses for `size` bytes, with a guard gap so that distinct allocations are never
    /// adjacent (a copy running off one must not land in the next, as on a real GPU).
    fn place(st: &mut State, size: u64) -> u64 {
        let addr = st.next_addr;
        st.next_addr = (addr + size).div_ceil(ALLOC_ALIGN) * ALLOC_ALIGN + ALLOC_ALIGN;
        st.allocations.insert(addr, vec![0u8; size as usize]);
        addr
    }

    fn unload(&self, module: u64) -> CuResult<()> {
        let mut st = self.state();
        let functions = st.modules.remove(&module).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        for (addr, _) in st.globals.remove(&module).unwrap_or_default().into_values() {
            st.allocations.remove(&addr);
        }
        for f in functions {
            st.functions.remove(&f.handle);
        }
        Ok(())
    }
}

/// Resident blocks of a function per multiprocessor, for blocks of `block` threads using `smem` bytes of
/// dynamic shared memory: the tightest of the device's per-SM thread, block, register and shared-memory
/// limits, with registers allocated per warp in units of 256 and 1 KiB of shared memory reserved per block.
fn active_blocks(
    dev: &DeviceFacts,
    attrs: &[i32; vgpu_dataplane::wire::FUNC_ATTR_COUNT],
    block: i32,
    smem: u64,
) -> i32 {
    let a = |i: usize, fallback: i32| dev.attr(i).filter(|&v| v > 0).unwrap_or(fallback) as i64;
    let warp = a(10, 32);
    let block = block as i64;
    if block <= 0 || block > attrs[0].max(1) as i64 {
        return 0;
    }
    let warps = (block + warp - 1) / warp;
    let by_threads = a(39, 2048) / (warps * warp);
    let regs_per_warp = ((attrs[4].max(0) as i64 * warp + 255) / 256) * 256;
    let by_regs = match regs_per_warp * warps {
        0 => i64::MAX,
        per_block => a(82, 65536) / per_block,
    };
    let smem_block = attrs[1].max(0) as i64 + smem.min(i64::MAX as u64) as i64 + a(111, 1024);
    let by_smem = a(81, 233472) / smem_block.max(1);
    by_threads.min(by_regs).min(by_smem).min(a(106, 32)).max(0) as i32
}

/// Kernels (names, parameter layouts) and globals of a cubin, as the emulated backend reports them.
type Layouts = (Vec<vgpu_dataplane::wire::FunctionInfo>, Vec<(String, u64)>);

fn cubin_layouts(elf: &[u8]) -> CuResult<Layouts> {
    let kernels = fatbin::cubin_kernels(elf).map_err(|_| CUDA_ERROR_INVALID_IMAGE)?;
    let globals = fatbin::cubin_globals(elf).map_err(|_| CUDA_ERROR_INVALID_IMAGE)?;
    let infos = kernels
        .into_iter()
        .map(|k| vgpu_dataplane::wire::FunctionInfo {
            name: k.name,
            params: k.params,
            attrs: ptx::emulated_attrs(),
        })
        .collect();
    Ok((infos, globals.into_iter().map(|g| (g.name, g.size)).collect()))
}

fn emulated_device() -> DeviceFacts {
    let mut d = DeviceFacts::default();
    d.set_name("vGPU Emulated Device");
    d.uuid = *b"vgpu-emulated-00";
    d.total_mem = EMULATED_TOTAL_MEM;
    // A Hopper-like shape, so that programs sizing launches from attributes behave sensibly.
    let attrs: &[(usize, i32)] = &[
        (1, 1024),
        (2, 1024),
        (3, 1024),
        (4, 64),
        (5, 2147483647),
        (6, 65535),
        (7, 65535),
        (8, 49152),
        (9, 65536),
        (10, 32),
        (11, 2147483647),
        (12, 65536),
        (13, 1980000),
        (14, 512),
        (15, 1),
        (16, 132),
        (17, 0),
        (18, 0),
        (19, 1),
        (20, 0),
        (30, 512),
        (31, 1),
        (32, 0),
        (33, 0),
        (34, 0),
        (35, 0),
        (36, 2619000),
        (37, 5120),
        (38, 52428800),
        (39, 2048),
        (40, 3),
        (41, 1),
        (50, 0),
        (75, 9),
        (76, 0),
        (78, 1),
        (79, 1),
        (80, 1),
        (81, 233472),
        (82, 65536),
        (83, 1),
        (84, 0),
        (85, 0),
        (86, 0),
        (87, 1),
        (88, 1),
        (89, 0),
        (90, 0),
        (91, 0),
        (95, 1),
        (96, 1),
        (97, 232448),
        (98, 1),
        (99, 1),
        (100, 1),
        (101, 1),
        (102, 1),
        // Allocations may ask to be exportable to a file descriptor (PyTorch's expandable segments do); the
        // export itself is not offered through vGPU. No fabric handles (128 stays 0).
        (103, 1),
        (104, 0),
        (105, 0),
        (106, 32),
        (107, 1),
        // H100's persisting-L2 maximum and access policy window limit.
        (108, 32768000),
        (109, 134217728),
        (111, 1024),
        (112, 1),
        (113, 0),
        (114, 0),
        (115, 1),
        (116, 0),
        (117, 0),
        (118, 0),
        (119, 0),
        (120, 1),
        (121, 0),
        (122, 1),
        (123, 1),
        (124, 0),
        (125, 0),
        (126, 0),
    ];
    for &(a, v) in attrs {
        d.set_attr(a, v);
    }
    // Texture and surface limits of a Hopper GPU: the runtime reads all of them for cudaDeviceProp.
    let textures: &[(usize, i32)] = &[
        (21, 131072),
        (22, 131072),
        (23, 65536),
        (24, 16384),
        (25, 16384),
        (26, 16384),
        (27, 32768),
        (28, 32768),
        (29, 2048),
        (42, 32768),
        (43, 2048),
        (45, 32768),
        (46, 32768),
        (47, 8192),
        (48, 8192),
        (49, 32768),
        (51, 32),
        (52, 32768),
        (53, 32768),
        (54, 2046),
        (55, 32768),
        (56, 131072),
        (57, 65536),
        (58, 16384),
        (59, 16384),
        (60, 16384),
        (61, 32768),
        (62, 2048),
        (63, 32768),
        (64, 32768),
        (65, 2048),
        (66, 32768),
        (67, 32768),
        (68, 2046),
        (69, 268435456),
        (70, 131072),
        (71, 65000),
        (72, 2097120),
        (73, 32768),
        (74, 32768),
        (77, 32768),
        (93, 1),
        (127, 1),
        (130, 0),
        (131, -1),
        (134, -1),
    ];
    for &(a, v) in textures {
        d.set_attr(a, v);
    }
    // Every other attribute CUDA 13.0 defines is a capability this device lacks: 0, but answered, as the
    // real driver answers every one of them.
    for a in 1..=147 {
        if d.attr(a).is_none() {
            d.set_attr(a, 0);
        }
    }
    d
}

impl Backend for EmulatedBackend {
    fn kind(&self) -> u32 {
        BACKEND_EMULATED
    }
    fn describe(&self) -> String {
        match self.time.describe() {
            Some(t) => format!("emulated backend (no GPU: kernels are checked and recorded, not run; {t})"),
            None => "emulated backend (no GPU: kernels are checked and recorded, not run)".into(),
        }
    }
    fn current_context(&self) -> u64 {
        self.current()
    }
    fn context_device(&self) -> Option<i32> {
        let ctx = self.current();
        self.state().contexts.get(&ctx).copied()
    }
    fn share_device_timeline(&self, busy_until: &'static AtomicU64) {
        self.time.share(busy_until);
    }
    fn driver_version(&self) -> i32 {
        13000
    }
    fn devices(&self) -> &[DeviceFacts] {
        &self.devices
    }
    fn device_reading(&self, dev: i32, _pid: u32) -> Option<crate::nvml::DeviceReading> {
        usize::try_from(dev).ok().and_then(|d| self.devices.get(d))?;
        // A worker serves one session, so what this backend holds is what the session allocated. No kernel
        // runs, so the GPU is idle; there are no sensors to read.
        let used = self.state().used;
        Some(crate::nvml::DeviceReading {
            memory: Some((EMULATED_TOTAL_MEM, EMULATED_TOTAL_MEM.saturating_sub(used), used)),
            utilization: Some((0, 0)),
            process_memory: Some(used),
            ..Default::default()
        })
    }
    fn display_driver_version(&self) -> String {
        "emulated".into()
    }

    fn primary_ctx_retain(&self, dev: i32) -> CuResult<u64> {
        if dev < 0 || dev as usize >= self.devices.len() {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        let mut st = self.state();
        *st.primary_refs.entry(dev).or_insert(0) += 1;
        let ctx = 0x100 + dev as u64;
        st.contexts.insert(ctx, dev);
        Ok(ctx)
    }
    fn primary_ctx_release(&self, dev: i32) -> CuResult<()> {
        let mut st = self.state();
        match st.primary_refs.get_mut(&dev) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Ok(())
            }
            _ => Err(CUDA_ERROR_INVALID_CONTEXT),
        }
    }
    fn primary_ctx_reset(&self, dev: i32) -> CuResult<()> {
        if dev < 0 || dev as usize >= self.devices.len() {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        // Limits go back to their defaults with the context.
        self.state().limits.clear();
        Ok(())
    }
    fn ctx_create(&self, _flags: u32, dev: i32) -> CuResult<u64> {
        if dev < 0 || dev as usize >= self.devices.len() {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        let ctx = self.handle();
        self.state().contexts.insert(ctx, dev);
        CURRENT_CTX.with(|c| c.set(ctx));
        Ok(ctx)
    }
    fn ctx_destroy(&self, ctx: u64) -> CuResult<()> {
        self.state().contexts.remove(&ctx).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        CURRENT_CTX.with(|c| {
            if c.get() == ctx {
                c.set(0)
            }
        });
        Ok(())
    }
    fn ctx_set_current(&self, ctx: u64) -> CuResult<()> {
        if ctx != 0 && !self.state().contexts.contains_key(&ctx) {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        CURRENT_CTX.with(|c| c.set(ctx));
        Ok(())
    }
    fn ctx_synchronize(&self) -> CuResult<()> {
        self.require_ctx()?;
        self.time.wait_until(self.time.all_done_at());
        Ok(())
    }

    fn mem_alloc(&self, size: u64) -> CuResult<u64> {
        self.require_ctx()?;
        if size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut st = self.state();
        if st.used.saturating_add(size) > EMULATED_TOTAL_MEM {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        st.used += size;
        Ok(Self::place(&mut st, size))
    }
    fn mem_alloc_pitch(&self, width: u64, height: u64, elem_size: u32) -> CuResult<(u64, u64)> {
        if width == 0 || height == 0 || !matches!(elem_size, 4 | 8 | 16) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let pitch = width.div_ceil(512) * 512;
        Ok((self.mem_alloc(pitch * height)?, pitch))
    }
    fn mem_free(&self, dptr: u64) -> CuResult<()> {
        let mut st = self.state();
        if st.globals.values().any(|g| g.values().any(|&(a, _)| a == dptr)) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let bytes = st.allocations.remove(&dptr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        st.used -= bytes.len() as u64;
        Ok(())
    }
    fn mem_get_info(&self) -> CuResult<(u64, u64)> {
        self.require_ctx()?;
        let st = self.state();
        Ok((EMULATED_TOTAL_MEM - st.used, EMULATED_TOTAL_MEM))
    }
    fn host_alloc(&self, len: usize) -> CuResult<HostBuffer> {
        let mut v = vec![0u8; len.max(1)].into_boxed_slice();
        let ptr = v.as_mut_ptr();
        std::mem::forget(v);
        Ok(HostBuffer { ptr, len })
    }
    fn host_free(&self, buf: HostBuffer) {
        // SAFETY: buf was made by host_alloc from a boxed slice of max(len, 1) bytes that was forgotten there.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(buf.ptr, buf.len.max(1))) });
    }
    fn host_register(&self, _ptr: *mut u8, _len: usize) -> CuResult<()> {
        self.require_ctx()
    }
    fn host_unregister(&self, _ptr: *mut u8) -> CuResult<()> {
        Ok(())
    }
    fn memcpy_htod_async(&self, dst: u64, src: &HostBuffer, len: usize, stream: u64) -> CuResult<()> {
        self.check_stream(stream)?;
        let src = src.as_slice().get(..len).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        self.with_range(dst, len as u64, |d| d.copy_from_slice(src))
    }
    fn memcpy_dtoh_async(&self, dst: &HostBuffer, src: u64, len: usize, stream: u64) -> CuResult<()> {
        self.check_stream(stream)?;
        let data = self.with_range(src, len as u64, |s| s.to_vec())?;
        if dst.write_at(0, &data) {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    }
    fn memcpy_dtod_async(&self, dst: u64, src: u64, len: u64, stream: u64) -> CuResult<()> {
        self.check_stream(stream)?;
        let data = self.with_range(src, len, |s| s.to_vec())?;
        self.with_range(dst, len, |d| d.copy_from_slice(&data))
    }
    fn memset_async(
        &self,
        dst: u64,
        pitch: u64,
        value: u32,
        elem_size: u32,
        width: u64,
        height: u64,
        stream: u64,
    ) -> CuResult<()> {
        self.check_stream(stream)?;
        let pattern = value.to_le_bytes();
        let row_bytes = width * elem_size as u64;
        for row in 0..height {
            self.with_range(dst + row * pitch, row_bytes, |d| {
                fill_repeated(d, &pattern[..elem_size as usize])
            })?;
        }
        Ok(())
    }

    fn stream_create(&self, _flags: u32, _priority: i32) -> CuResult<u64> {
        self.require_ctx()?;
        let s = self.handle();
        self.state().streams.insert(s, ());
        Ok(s)
    }
    fn stream_destroy(&self, stream: u64) -> CuResult<()> {
        self.state().streams.remove(&stream).ok_or(CUDA_ERROR_INVALID_HANDLE)
    }
    fn stream_synchronize(&self, stream: u64) -> CuResult<()> {
        self.check_stream(stream)?;
        self.time.wait_until(self.time.done_at(self.current(), stream));
        Ok(())
    }
    fn stream_query(&self, stream: u64) -> CuResult<()> {
        self.check_stream(stream)?;
        if self.time.done_at(self.current(), stream) > crate::sys::monotonic_ns() {
            return Err(CUDA_ERROR_NOT_READY);
        }
        Ok(())
    }
    fn stream_wait_event(&self, stream: u64, event: u64, _flags: u32) -> CuResult<()> {
        self.check_stream(stream)?;
        self.state()
            .events
            .get(&event)
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }
    /// Writes land at once; a wait whose condition does not hold would block the stream for good natively (no
    /// other work runs concurrently here to satisfy it), so it is refused with CUDA_ERROR_NOT_SUPPORTED.
    fn stream_mem_ops(&self, stream: u64, ops: &[MemOp], _flags: u32, _single: bool) -> CuResult<()> {
        self.check_stream(stream)?;
        for op in ops {
            let len = op.operand_len().ok_or(CUDA_ERROR_INVALID_VALUE)?;
            let wide = len == 8;
            match op.operation {
                MEM_OP_WRITE_VALUE_32 | MEM_OP_WRITE_VALUE_64 => self.with_range(op.address, len, |b| {
                    b.copy_from_slice(&op.value.to_le_bytes()[..len as usize])
                })?,
                MEM_OP_WAIT_VALUE_32 | MEM_OP_WAIT_VALUE_64 => {
                    let mut word = [0u8; 8];
                    self.with_range(op.address, len, |b| word[..len as usize].copy_from_slice(b))?;
                    let now = u64::from_le_bytes(word);
                    if !wait_condition_holds(now, op.value, op.flags, wide)? {
                        return Err(CUDA_ERROR_NOT_SUPPORTED);
                    }
                }
                MEM_OP_BARRIER | MEM_OP_FLUSH_REMOTE_WRITES => {}
                _ => return Err(CUDA_ERROR_INVALID_VALUE),
            }
        }
        Ok(())
    }
    fn event_create(&self, _flags: u32) -> CuResult<u64> {
        self.require_ctx()?;
        let e = self.handle();
        self.state().events.insert(e, None);
        Ok(e)
    }
    fn event_record(&self, event: u64, stream: u64) -> CuResult<()> {
        self.check_stream(stream)?;
        let mut st = self.state();
        let slot = st.events.get_mut(&event).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        // With simulated kernel time the event completes when the stream's queued kernels would have.
        *slot = Some(if self.time.enabled() {
            self.time.instant_of(self.time.event_at(self.current(), stream))
        } else {
            Instant::now()
        });
        Ok(())
    }
    fn event_synchronize(&self, event: u64) -> CuResult<()> {
        let at = *self.state().events.get(&event).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        if let Some(at) = at {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
        }
        Ok(())
    }
    fn event_query(&self, event: u64) -> CuResult<()> {
        match *self.state().events.get(&event).ok_or(CUDA_ERROR_INVALID_HANDLE)? {
            Some(at) if at > Instant::now() => Err(CUDA_ERROR_NOT_READY),
            _ => Ok(()),
        }
    }
    fn event_elapsed(&self, start: u64, end: u64) -> CuResult<f32> {
        let st = self.state();
        let a = st.events.get(&start).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let b = st.events.get(&end).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        match (a, b) {
            (Some(a), Some(b)) => Ok(b.saturating_duration_since(*a).as_secs_f32() * 1e3),
            _ => Err(CUDA_ERROR_INVALID_HANDLE),
        }
    }
    fn event_destroy(&self, event: u64) -> CuResult<()> {
        self.state()
            .events
            .remove(&event)
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    fn module_load(&self, image: &[u8]) -> CuResult<(u64, Vec<LoadedFunction>)> {
        self.load(image, true)
    }
    fn module_unload(&self, module: u64) -> CuResult<()> {
        self.unload(module)
    }
    fn module_get_global(&self, module: u64, name: &std::ffi::CStr) -> CuResult<(u64, u64)> {
        let st = self.state();
        let functions = st.modules.get(&module).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let name = name.to_str().map_err(|_| CUDA_ERROR_NOT_FOUND)?;
        if let Some(&(addr, size)) = st.globals.get(&module).and_then(|g| g.get(name)) {
            return Ok((addr, size));
        }
        // A kernel's name is not a variable: the driver answers INVALID_VALUE rather than NOT_FOUND.
        if functions.iter().any(|f| f.info.name == name) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Err(CUDA_ERROR_NOT_FOUND)
    }
    fn library_load(&self, image: &[u8], _device: i32) -> CuResult<(u64, Vec<LoadedFunction>)> {
        self.load(image, false)
    }
    fn library_unload(&self, library: u64) -> CuResult<()> {
        self.unload(library)
    }
    fn library_get_global(&self, library: u64, name: &std::ffi::CStr) -> CuResult<(u64, u64)> {
        self.module_get_global(library, name)
    }
    fn func_attributes(
        &self,
        function: u64,
        _is_kernel: bool,
    ) -> CuResult<[i32; vgpu_dataplane::wire::FUNC_ATTR_COUNT]> {
        let st = self.state();
        st.modules
            .values()
            .flatten()
            .find(|f| f.handle == function)
            .map(|f| f.info.attrs)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }
    #[allow(clippy::too_many_arguments)]
    fn launch_ex(
        &self,
        function: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem: u32,
        stream: u64,
        args: &mut [u8],
        params: &[(u32, u32)],
        cooperative: bool,
        cluster: [u32; 3],
    ) -> CuResult<()> {
        let dev = &self.devices[0];
        let blocks: u64 = grid.iter().map(|&g| g as u64).product();
        let threads: u64 = block.iter().map(|&b| b as u64).product::<u64>().max(1);
        if cooperative {
            // All blocks must be resident at once: at most what the SMs hold by threads and block slots.
            let sms = dev.attr(16).unwrap_or(1).max(1) as u64;
            let per_sm = (dev.attr(39).unwrap_or(2048) as u64 / threads).min(dev.attr(106).unwrap_or(32) as u64);
            if blocks > sms * per_sm {
                return Err(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
            }
        }
        if cluster.iter().any(|&c| c > 1) {
            // The grid must tile by the cluster; 8 blocks is the portable cluster size limit.
            if cluster.contains(&0) || grid.iter().zip(cluster).any(|(&g, c)| g % c != 0) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            if cluster.iter().map(|&c| c as u64).product::<u64>() > 8 {
                return Err(CUDA_ERROR_INVALID_CLUSTER_SIZE);
            }
        }
        self.launch(function, grid, block, shared_mem, stream, args, params)
    }
    fn occupancy_active_blocks(
        &self,
        function: u64,
        is_kernel: bool,
        block_size: i32,
        dynamic_smem: u64,
        _flags: u32,
    ) -> CuResult<i32> {
        let attrs = self.func_attributes(function, is_kernel)?;
        Ok(active_blocks(&self.devices[0], &attrs, block_size, dynamic_smem))
    }
    fn occupancy_potential_block_size(
        &self,
        function: u64,
        is_kernel: bool,
        dynamic_smem: u64,
        smem_by_block: Option<&[u64]>,
        block_limit: i32,
        _flags: u32,
    ) -> CuResult<(i32, i32)> {
        let attrs = self.func_attributes(function, is_kernel)?;
        let dev = &self.devices[0];
        let warp = dev.attr(10).unwrap_or(32).max(1);
        let mut cap = attrs[0].max(warp);
        if block_limit > 0 {
            cap = cap.min(block_limit);
        }
        let (mut best_block, mut best) = (0, 0);
        let mut block = cap - cap % warp;
        while block > 0 {
            let smem = match smem_by_block {
                Some(t) => t.get(block as usize - 1).copied().unwrap_or(0),
                None => dynamic_smem,
            };
            let threads = active_blocks(dev, &attrs, block, smem) * block;
            if threads > best {
                (best_block, best) = (block, threads);
            }
            block -= warp;
        }
        let per_sm = if best_block > 0 { best / best_block } else { 0 };
        Ok((per_sm * dev.attr(16).unwrap_or(1).max(1), best_block))
    }
    fn occupancy_available_smem(&self, function: u64, is_kernel: bool, num_blocks: i32, _block: i32) -> CuResult<u64> {
        let attrs = self.func_attributes(function, is_kernel)?;
        if num_blocks <= 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let dev = &self.devices[0];
        let a = |i: usize| dev.attr(i).unwrap_or(0).max(0) as u64;
        let static_smem = attrs[1].max(0) as u64;
        let share = (a(81) / num_blocks as u64).saturating_sub(a(111) + static_smem);
        Ok(share.min(a(97).saturating_sub(static_smem)))
    }
    fn occupancy_clusters(
        &self,
        function: u64,
        is_kernel: bool,
        shape: vgpu_dataplane::wire::LaunchShape,
        potential_size: bool,
    ) -> CuResult<i32> {
        self.func_attributes(function, is_kernel)?;
        if potential_size {
            // The portable maximum.
            return Ok(8);
        }
        let size: u32 = shape.cluster.iter().map(|&c| c.max(1)).product();
        // As a conservative estimate, one cluster per `size` SMs.
        let sms = self.devices[0].attr(16).unwrap_or(1).max(1);
        Ok((sms / size.max(1) as i32).max(1))
    }
    fn host_mirror_map(&self, addr: u64, size: u64) -> CuResult<u64> {
        // A device range at the client's address, so copies to and from it behave as with the real driver.
        let mut st = self.state();
        let end = addr.checked_add(size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if st.overlaps_allocation(addr, end) || st.overlaps_reservation(addr, end) {
            return Err(CUDA_ERROR_ALREADY_MAPPED);
        }
        st.allocations.insert(addr, vec![0; size as usize]);
        Ok(addr)
    }
    fn host_mirror_unmap(&self, addr: u64, _size: u64) -> CuResult<()> {
        self.state()
            .allocations
            .remove(&addr)
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }
    fn mem_alloc_managed(&self, size: u64, _flags: u32) -> CuResult<u64> {
        // Managed memory is mapped in whole pages (the client maps the same pages on its side): page-aligned,
        // sharing no page with other memory, as the driver's managed allocations do not.
        const PAGE: u64 = 4096;
        {
            let mut st = self.state();
            st.next_addr = st.next_addr.div_ceil(PAGE) * PAGE;
        }
        let dptr = self.mem_alloc(size.div_ceil(PAGE) * PAGE)?;
        let mut st = self.state();
        st.next_addr = st.next_addr.div_ceil(PAGE) * PAGE + PAGE;
        Ok(dptr)
    }
    fn ctx_get_limit(&self, limit: u32) -> CuResult<u64> {
        self.require_ctx()?;
        // The driver's defaults on current GPUs: stack 1 KiB, printf FIFO 1 MiB, malloc heap 8 MiB,
        // device-runtime sync depth 2 and pending launches 2048, L2 fetch granularity 64 B, persisting L2 0.
        let default = match limit {
            0 => 1024,
            1 => 1 << 20,
            2 => 8 << 20,
            3 => 2,
            4 => 2048,
            5 => 64,
            6 => 0,
            // SHMEM_SIZE, CIG_ENABLED, CIG_SHMEM_FALLBACK_ENABLED: defined, not on this device.
            7..=9 => return Err(CUDA_ERROR_UNSUPPORTED_LIMIT),
            // Not a CUlimit at all.
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        };
        Ok(self.state().limits.get(&limit).copied().unwrap_or(default))
    }
    fn ctx_set_limit(&self, limit: u32, value: u64) -> CuResult<()> {
        self.ctx_get_limit(limit)?;
        self.state().limits.insert(limit, value);
        Ok(())
    }
    fn array_create(&self, shape: vgpu_dataplane::wire::ArrayShape) -> CuResult<u64> {
        let elem = shape.element_bytes().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if shape.width == 0 || (shape.height == 0 && shape.depth != 0) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let bytes = shape
            .width
            .checked_mul(elem)
            .and_then(|v| v.checked_mul(shape.height.max(1)))
            .and_then(|v| v.checked_mul(shape.depth.max(1)))
            .filter(|&b| b <= EMULATED_TOTAL_MEM)
            .ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        let handle = self.handle();
        self.state().arrays.insert(handle, (shape, vec![0; bytes as usize]));
        Ok(handle)
    }
    fn array_destroy(&self, array: u64) -> CuResult<()> {
        self.state()
            .arrays
            .remove(&array)
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }
    fn array_copy(
        &self,
        array: u64,
        region: vgpu_dataplane::wire::ArrayBox,
        direction: u32,
        device: u64,
        device_pitch: u64,
        device_height: u64,
        host: &mut [u8],
    ) -> CuResult<()> {
        let mut st = self.state();
        let (shape, mut data) = st.arrays.remove(&array).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let elem = shape.element_bytes().unwrap_or(1);
        let row_bytes = (shape.width * elem) as usize;
        let rows = shape.height.max(1) as usize;
        let w = region.width_bytes as usize;
        drop(st);
        let mut result = Ok(());
        'copy: for z in 0..region.depth as usize {
            for y in 0..region.height as usize {
                let at = ((region.z as usize + z) * rows + region.y as usize + y) * row_bytes + region.x_bytes as usize;
                let packed = (z * region.height as usize + y) * w;
                let dev = device + (z as u64 * device_height.max(region.height) + y as u64) * device_pitch;
                let r = match direction {
                    0 => {
                        data[at..at + w].copy_from_slice(&host[packed..packed + w]);
                        Ok(())
                    }
                    1 => {
                        host[packed..packed + w].copy_from_slice(&data[at..at + w]);
                        Ok(())
                    }
                    2 => self.with_range(dev, w as u64, |src| data[at..at + w].copy_from_slice(src)),
                    _ => self.with_range(dev, w as u64, |dst| dst.copy_from_slice(&data[at..at + w])),
                };
                if r.is_err() {
                    result = r;
                    break 'copy;
                }
            }
        }
        self.state().arrays.insert(array, (shape, data));
        result
    }
    fn tex_object_create(
        &self,
        surface: bool,
        _resource: &[u8],
        _texture: &[u8],
        _view: Option<&[u8]>,
    ) -> CuResult<u64> {
        // Kernels do not run here: an object is a number the launch carries.
        let object = self.handle();
        self.state().tex_objects.insert(object, surface);
        Ok(object)
    }
    fn object_destroy(&self, object: u64, surface: bool) -> CuResult<()> {
        match self.state().tex_objects.remove(&object) {
            Some(s) if s == surface => Ok(()),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    fn mem_pool_create(&self, _dev: i32, max_size: u64) -> CuResult<u64> {
        let pool = self.handle();
        self.state().pools.insert(pool, Pool::new(max_size));
        Ok(pool)
    }
    fn mem_pool_destroy(&self, pool: u64) -> CuResult<()> {
        let mut st = self.state();
        st.pools.remove(&pool).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        // Natively, memory still allocated from a destroyed pool is freed when it is freed; here at once.
        let owned: Vec<u64> = st
            .pool_allocations
            .iter()
            .filter(|(_, &(p, _))| p == pool)
            .map(|(&d, _)| d)
            .collect();
        for d in owned {
            st.pool_allocations.remove(&d);
        }
        Ok(())
    }
    fn default_mem_pool(&self, _dev: i32) -> CuResult<u64> {
        // One device: its default pool has a fixed handle.
        const DEFAULT_POOL: u64 = 0x900;
        self.state().pools.entry(DEFAULT_POOL).or_insert_with(|| Pool::new(0));
        Ok(DEFAULT_POOL)
    }
    fn mem_alloc_async(&self, size: u64, pool: u64, stream: u64) -> CuResult<u64> {
        self.require_ctx()?;
        self.check_stream(stream)?;
        if size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        {
            let st = self.state();
            let p = st.pools.get(&pool).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            if p.max_size != 0 && p.used.saturating_add(size) > p.max_size {
                return Err(CUDA_ERROR_OUT_OF_MEMORY);
            }
        }
        let dptr = self.mem_alloc(size)?;
        let mut st = self.state();
        st.pool_allocations.insert(dptr, (pool, size));
        if let Some(p) = st.pools.get_mut(&pool) {
            p.used += size;
            p.used_high = p.used_high.max(p.used);
            // Pools reserve in 2 MiB granules and keep what they reserved until trimmed.
            let granule = 2 << 20;
            p.reserved = p.reserved.max(p.used.div_ceil(granule) * granule);
            p.reserved_high = p.reserved_high.max(p.reserved);
        }
        Ok(dptr)
    }
    fn mem_free_async(&self, dptr: u64, stream: u64) -> CuResult<()> {
        self.check_stream(stream)?;
        let owner = self.state().pool_allocations.remove(&dptr);
        self.mem_free(dptr)?;
        if let Some((pool, size)) = owner {
            if let Some(p) = self.state().pools.get_mut(&pool) {
                p.used = p.used.saturating_sub(size);
            }
        }
        Ok(())
    }
    fn mem_pool_get_attribute(&self, pool: u64, attr: u32) -> CuResult<u64> {
        let st = self.state();
        let p = st.pools.get(&pool).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        Ok(match attr {
            1..=3 => p.reuse[attr as usize - 1],
            4 => p.release_threshold,
            5 => p.reserved,
            6 => p.reserved_high,
            7 => p.used,
            8 => p.used_high,
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        })
    }
    fn mem_pool_set_attribute(&self, pool: u64, attr: u32, value: u64) -> CuResult<()> {
        let mut st = self.state();
        let p = st.pools.get_mut(&pool).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        match attr {
            1..=3 => p.reuse[attr as usize - 1] = value,
            4 => p.release_threshold = value,
            // The high watermarks can only be reset, to the current value.
            6 if value == 0 => p.reserved_high = p.reserved,
            8 if value == 0 => p.used_high = p.used,
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
        Ok(())
    }
    fn mem_pool_trim_to(&self, pool: u64, min_bytes: u64) -> CuResult<()> {
        let mut st = self.state();
        let p = st.pools.get_mut(&pool).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let granule = 2 << 20;
        p.reserved = p.used.max(min_bytes).div_ceil(granule) * granule;
        p.reserved = p.reserved.min(p.reserved_high.max(p.used));
        Ok(())
    }
    fn mem_granularity(&self, prop: &MemAllocProp, option: u32) -> CuResult<u64> {
        self.check_prop(prop)?;
        match option {
            0 | 1 => Ok(VMM_GRANULARITY),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    fn mem_address_reserve(&self, size: u64, alignment: u64, addr: u64, flags: u64) -> CuResult<u64> {
        if size == 0
            || !size.is_multiple_of(HOST_PAGE)
            || !addr.is_multiple_of(HOST_PAGE)
            || flags != 0
            || (alignment != 0 && !alignment.is_power_of_two())
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let align = alignment.max(VMM_GRANULARITY);
        let mut st = self.state();
        let fits = |st: &State, base: u64| {
            base.is_multiple_of(align)
                && base >= VMM_BASE
                && base.checked_add(size).is_some_and(|end| {
                    end <= VMM_END && !st.overlaps_reservation(base, end) && !st.overlaps_allocation(base, end)
                })
        };
        // The hint is taken where it is free; otherwise, as natively, another place is chosen.
        let base = if addr != 0 && fits(&st, addr) {
            addr
        } else {
            // First fit, so that freed reservations are reused.
            let mut cursor = VMM_BASE;
            let mut found = None;
            for (&b, &s) in &st.reservations {
                let candidate = cursor.next_multiple_of(align);
                if candidate.checked_add(size).is_some_and(|end| end <= b) {
                    found = Some(candidate);
                    break;
                }
                cursor = cursor.max(b + s);
            }
            let base = match found {
                Some(b) => b,
                None => cursor.next_multiple_of(align),
            };
            if !fits(&st, base) {
                return Err(CUDA_ERROR_OUT_OF_MEMORY);
            }
            base
        };
        st.reservations.insert(base, size);
        Ok(base)
    }
    fn mem_address_free(&self, ptr: u64, size: u64) -> CuResult<()> {
        let mut st = self.state();
        if st.reservations.get(&ptr) != Some(&size) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // The range must be unmapped first (the driver's documented order).
        if st.mappings.range(ptr..ptr + size).next().is_some() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        st.reservations.remove(&ptr);
        Ok(())
    }
    fn mem_create(&self, size: u64, prop: &MemAllocProp, flags: u64) -> CuResult<u64> {
        self.check_prop(prop)?;
        if flags != 0 || size == 0 || !size.is_multiple_of(VMM_GRANULARITY) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if prop.handle_types & !(HANDLE_TYPE_POSIX_FD | HANDLE_TYPE_FABRIC) != 0 {
            // Win32 handle types on a Linux host.
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if prop.handle_types & HANDLE_TYPE_FABRIC != 0 {
            // No IMEX fabric here (device attribute 128 is 0): PyTorch tries fabric first and falls back.
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let mut st = self.state();
        if st.used.saturating_add(size) > EMULATED_TOTAL_MEM {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        st.used += size;
        let handle = self.handle();
        st.physical.insert(
            handle,
            Physical {
                bytes: vec![0; size as usize],
                prop: *prop,
                refs: 1,
                mappings: 0,
            },
        );
        Ok(handle)
    }
    fn mem_release(&self, handle: u64) -> CuResult<()> {
        let mut st = self.state();
        let m = st
            .physical
            .get_mut(&handle)
            .filter(|m| m.refs > 0)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        m.refs -= 1;
        st.free_if_unused(handle);
        Ok(())
    }
    fn mem_map(&self, ptr: u64, size: u64, offset: u64, handle: u64, flags: u64) -> CuResult<()> {
        let aligned = |v: u64| v.is_multiple_of(VMM_GRANULARITY);
        if flags != 0 || size == 0 || !aligned(ptr) || !aligned(size) || !aligned(offset) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let end = ptr.checked_add(size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut st = self.state();
        let m = st
            .physical
            .get(&handle)
            .filter(|m| m.refs > 0)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if offset.checked_add(size).is_none_or(|last| last > m.bytes.len() as u64) {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let reserved = st
            .reservations
            .range(..=ptr)
            .next_back()
            .is_some_and(|(&b, &s)| end <= b + s);
        let mapped = st
            .mappings
            .range(..end)
            .next_back()
            .is_some_and(|(&va, m)| va + m.size > ptr);
        if !reserved || mapped {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if let Some(m) = st.physical.get_mut(&handle) {
            m.mappings += 1;
        }
        st.mappings.insert(
            ptr,
            Mapping {
                handle,
                offset,
                size,
                access: 0,
            },
        );
        Ok(())
    }
    fn mem_unmap(&self, ptr: u64, size: u64) -> CuResult<()> {
        let mut st = self.state();
        for va in st.whole_mappings(ptr, size)? {
            if let Some(m) = st.mappings.remove(&va) {
                if let Some(p) = st.physical.get_mut(&m.handle) {
                    p.mappings -= 1;
                }
                st.free_if_unused(m.handle);
            }
        }
        Ok(())
    }
    fn mem_set_access(&self, ptr: u64, size: u64, descs: &[MemAccessDesc]) -> CuResult<()> {
        let mut st = self.state();
        let covered = st.whole_mappings(ptr, size)?;
        if descs.is_empty() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut access = None;
        for d in descs {
            if d.location_type != MEM_LOCATION_DEVICE || !matches!(d.flags, 0 | 1 | 3) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            if usize::try_from(d.location_id).map_or(true, |id| id >= self.devices.len()) {
                return Err(CUDA_ERROR_INVALID_DEVICE);
            }
            access = Some(d.flags);
        }
        if let Some(flags) = access {
            for va in covered {
                if let Some(m) = st.mappings.get_mut(&va) {
                    m.access = flags;
                }
            }
        }
        Ok(())
    }
    fn mem_get_access(&self, location_type: u32, location_id: i32, ptr: u64) -> CuResult<u64> {
        if location_type != MEM_LOCATION_DEVICE {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if usize::try_from(location_id).map_or(true, |id| id >= self.devices.len()) {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        let st = self.state();
        let (&va, m) = st.mappings.range(..=ptr).next_back().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if ptr >= va + m.size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(m.access as u64)
    }
    fn mem_allocation_properties(&self, handle: u64) -> CuResult<MemAllocProp> {
        self.state()
            .physical
            .get(&handle)
            .map(|m| m.prop)
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }
    fn mem_retain_allocation_handle(&self, addr: u64) -> CuResult<u64> {
        let mut st = self.state();
        let (&va, m) = st.mappings.range(..=addr).next_back().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if addr >= va + m.size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let handle = m.handle;
        if let Some(p) = st.physical.get_mut(&handle) {
            p.refs += 1;
        }
        Ok(handle)
    }
    fn func_set_attribute(&self, function: u64, _is_kernel: bool, attrib: i32, value: i32) -> CuResult<()> {
        let mut st = self.state();
        let f = st
            .modules
            .values_mut()
            .flatten()
            .find(|f| f.handle == function)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        // Settable: MAX_DYNAMIC_SHARED_SIZE_BYTES (8), PREFERRED_SHARED_MEMORY_CARVEOUT (9), and the cluster
        // and scheduling attributes (11..=15); the rest are read-only, as natively.
        match attrib {
            8 if value < 0 => Err(CUDA_ERROR_INVALID_VALUE),
            8 | 9 | 11..=15 => {
                if let Some(slot) = f.info.attrs.get_mut(attrib as usize) {
                    *slot = value;
                }
                Ok(())
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    fn lookup(&self, module: u64, _is_library: bool, _name: &std::ffi::CStr) -> CuResult<()> {
        if self.state().modules.contains_key(&module) {
            Err(CUDA_ERROR_NOT_FOUND)
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    }
    fn memcpy_2d_async(&self, src: Place<'_>, dst: Place<'_>, width: u64, height: u64, stream: u64) -> CuResult<()> {
        self.check_stream(stream)?;
        for row in 0..height {
            let data = match src {
                Place::Host(buf, pitch) => {
                    let at = (row * pitch) as usize;
                    buf.as_slice()
                        .get(at..at + width as usize)
                        .ok_or(CUDA_ERROR_INVALID_VALUE)?
                        .to_vec()
                }
                Place::Device(a, pitch) => self.with_range(a + row * pitch, width, |s| s.to_vec())?,
            };
            match dst {
                Place::Host(buf, pitch) => {
                    if !buf.write_at((row * pitch) as usize, &data) {
                        return Err(CUDA_ERROR_INVALID_VALUE);
                    }
                }
                Place::Device(a, pitch) => self.with_range(a + row * pitch, width, |d| d.copy_from_slice(&data))?,
            }
        }
        Ok(())
    }
    fn kernel_get_function(&self, kernel: u64) -> CuResult<u64> {
        self.require_ctx()?;
        if self.state().functions.contains_key(&kernel) {
            Ok(kernel)
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    }
    fn launch(
        &self,
        function: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem: u32,
        stream: u64,
        args: &mut [u8],
        _params: &[(u32, u32)],
    ) -> CuResult<()> {
        self.require_ctx()?;
        self.check_stream(stream)?;
        let dev = &self.devices[0];
        let limit = |a: usize| dev.attr(a).unwrap_or(i32::MAX) as u64;
        let threads = block.iter().map(|&b| b as u64).product::<u64>();
        if grid.contains(&0)
            || block.contains(&0)
            || threads > limit(1)
            || block[0] as u64 > limit(2)
            || block[1] as u64 > limit(3)
            || block[2] as u64 > limit(4)
            || grid[0] as u64 > limit(5)
            || grid[1] as u64 > limit(6)
            || grid[2] as u64 > limit(7)
            || shared_mem as u64 > limit(97)
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut st = self.state();
        let size = *st.functions.get(&function).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        if args.len() != size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        st.launches += 1;
        drop(st);
        let blocks = grid.iter().map(|&g| u64::from(g)).product::<u64>();
        self.time.launch(self.current(), stream, blocks);
        Ok(())
    }
}

/// Fills `d` (a whole number of `elem`s long) with copies of `elem`: one element, then doubling memmoves. A loop per
/// element made a 64 MiB cuMemsetD32 cost seconds in debug builds, which the RDMA VM's e2e run (TCG) multiplied.
fn fill_repeated(d: &mut [u8], elem: &[u8]) {
    if d.len() < elem.len() {
        return;
    }
    d[..elem.len()].copy_from_slice(elem);
    let mut filled = elem.len();
    while filled < d.len() {
        let n = filled.min(d.len() - filled);
        d.copy_within(..n, filled);
        filled += n;
    }
}

/// `CUstreamWaitValue_flags` (low bits; FLUSH is 1 << 30): GEQ compares as a wrapping difference, as the driver
/// documents for 32-bit values.
fn wait_condition_holds(now: u64, value: u64, flags: u32, wide: bool) -> CuResult<bool> {
    let mask = if wide { u64::MAX } else { u32::MAX as u64 };
    let (now, value) = (now & mask, value & mask);
    Ok(match flags & !(1 << 30) {
        0 if wide => (now.wrapping_sub(value) as i64) >= 0,
        0 => (now.wrapping_sub(value) as u32 as i32) >= 0,
        1 => now == value,
        2 => now & value != 0,
        3 => !(now | value) & mask != 0,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memset_patterns_fill_whole_elements() {
        for elem in [&[0xabu8][..], &[1, 2], &[1, 2, 3, 4]] {
            for count in [0usize, 1, 2, 3, 7, 8, 1000, 4097] {
                let mut d = vec![0u8; count * elem.len()];
                fill_repeated(&mut d, elem);
                assert!(d.chunks_exact(elem.len()).all(|c| c == elem), "{elem:?} x {count}");
            }
        }
    }

    #[test]
    fn stream_wait_conditions_follow_the_driver_documentation() {
        // GEQ on 32 bits compares the wrapping difference: 1 is "after" 0xffff_fff0.
        assert_eq!(wait_condition_holds(1, 0xffff_fff0, 0, false), Ok(true));
        assert_eq!(wait_condition_holds(4, 5, 0, false), Ok(false));
        assert_eq!(wait_condition_holds(5, 5, 0, true), Ok(true));
        assert_eq!(wait_condition_holds(7, 7, 1, false), Ok(true));
        assert_eq!(wait_condition_holds(7, 8, 1 | 1 << 30, false), Ok(false));
        assert_eq!(wait_condition_holds(0b0110, 0b0100, 2, false), Ok(true));
        assert_eq!(wait_condition_holds(0b0110, 0b1001, 2, false), Ok(false));
        // NOR: some bit is clear in both.
        assert_eq!(wait_condition_holds(0xffff_0000, 0x0000_ffff, 3, false), Ok(false));
        assert_eq!(wait_condition_holds(0xffff_0000, 0x0000_fffe, 3, false), Ok(true));
        assert_eq!(wait_condition_holds(0, 0, 9, false), Err(CUDA_ERROR_INVALID_VALUE));
    }

    /// nvcc 13.0's fat binary of tests/e2e/kernels/kernels.cu with every entry Zstandard-compressed.
    const COMPRESSED: &[u8] = include_bytes!("../../dataplane/testdata/kernels_zstd.fatbin");

    /// The same, reduced to its (compressed) cubin: what nvcc's default `-arch` produces, SASS only.
    fn cubin_only() -> Vec<u8> {
        let header = u16::from_le_bytes([COMPRESSED[6], COMPRESSED[7]]) as usize;
        let mut at = header;
        let mut out = COMPRESSED[..header].to_vec();
        while at + 64 <= COMPRESSED.len() {
            let e = &COMPRESSED[at..];
            let word = |o: usize| u32::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]) as usize;
            let len = word(4) + word(8).max(word(16));
            if e[0] == 2 {
                out.extend_from_slice(&e[..len]);
            }
            at += len;
        }
        let files = (out.len() - header) as u64;
        out[8..16].copy_from_slice(&files.to_le_bytes());
        out
    }

    #[test]
    fn vmm_follows_the_native_rules() {
        const G: u64 = VMM_GRANULARITY;
        let b = EmulatedBackend::new();
        let ctx = b.primary_ctx_retain(0).expect("primary context");
        b.ctx_set_current(ctx).expect("current");
        let prop = MemAllocProp {
            alloc_type: 1,
            location_type: MEM_LOCATION_DEVICE,
            ..Default::default()
        };
        assert_eq!(b.mem_granularity(&prop, 0), Ok(G));
        assert_eq!(b.mem_granularity(&prop, 1), Ok(G));
        assert_eq!(b.mem_granularity(&prop, 2), Err(CUDA_ERROR_INVALID_VALUE));
        let base = b.mem_address_reserve(4 * G, 0, 0, 0).expect("reserve");
        assert!((VMM_BASE..VMM_END).contains(&base) && base.is_multiple_of(G));
        assert_eq!(b.mem_address_reserve(4097, 0, 0, 0), Err(CUDA_ERROR_INVALID_VALUE));

        assert_eq!(
            b.mem_create(G + 4096, &prop, 0),
            Err(CUDA_ERROR_INVALID_VALUE),
            "not a granule multiple"
        );
        let fabric = MemAllocProp {
            handle_types: HANDLE_TYPE_FABRIC,
            ..prop
        };
        assert_eq!(b.mem_create(G, &fabric, 0), Err(CUDA_ERROR_NOT_SUPPORTED));
        let other_device = MemAllocProp { location_id: 1, ..prop };
        assert_eq!(b.mem_create(G, &other_device, 0), Err(CUDA_ERROR_INVALID_DEVICE));
        assert_eq!(b.mem_create(64 << 30, &prop, 0), Err(CUDA_ERROR_OUT_OF_MEMORY));
        let h = b.mem_create(G, &prop, 0).expect("create");

        assert_eq!(
            b.mem_map(base + 4096, G, 0, h, 0),
            Err(CUDA_ERROR_INVALID_VALUE),
            "misaligned"
        );
        assert_eq!(
            b.mem_map(base, G, 0, h + 1, 0),
            Err(CUDA_ERROR_INVALID_VALUE),
            "unknown handle"
        );
        assert_eq!(
            b.mem_map(base + 4 * G, G, 0, h, 0),
            Err(CUDA_ERROR_INVALID_VALUE),
            "outside"
        );
        assert_eq!(
            b.mem_map(base, 2 * G, 0, h, 0),
            Err(CUDA_ERROR_NOT_SUPPORTED),
            "past the handle"
        );
        b.mem_map(base, G, 0, h, 0).expect("map");
        assert_eq!(
            b.mem_map(base, G, 0, h, 0),
            Err(CUDA_ERROR_INVALID_VALUE),
            "mapped twice"
        );
        // One handle at two addresses: both name the same bytes.
        b.mem_map(base + 2 * G, G, 0, h, 0).expect("alias");
        let mut buf = b.host_alloc(16).expect("host buffer");
        buf.as_mut_slice().copy_from_slice(b"vmm alias bytes!");
        b.memcpy_htod_async(base + 100, &buf, 16, 0).expect("write through one");
        let out = b.host_alloc(16).expect("host buffer");
        b.memcpy_dtoh_async(&out, base + 2 * G + 100, 16, 0)
            .expect("read through the other");
        assert_eq!(out.as_slice(), b"vmm alias bytes!");
        // A copy into the gap between them fails.
        assert_eq!(
            b.memcpy_htod_async(base + G - 8, &buf, 16, 0),
            Err(CUDA_ERROR_INVALID_VALUE)
        );

        assert_eq!(
            b.mem_get_access(MEM_LOCATION_DEVICE, 0, base),
            Ok(0),
            "no access before cuMemSetAccess"
        );
        let rw = MemAccessDesc {
            location_type: MEM_LOCATION_DEVICE,
            location_id: 0,
            flags: 3,
        };
        assert_eq!(
            b.mem_set_access(base, 3 * G, &[rw]),
            Err(CUDA_ERROR_INVALID_VALUE),
            "a gap"
        );
        b.mem_set_access(base, G, &[rw]).expect("set access");
        assert_eq!(b.mem_get_access(MEM_LOCATION_DEVICE, 0, base + 5), Ok(3));

        b.mem_release(h).expect("release while mapped");
        assert_eq!(b.used(), G, "mapped memory lives on");
        assert_eq!(
            b.mem_address_free(base, 4 * G),
            Err(CUDA_ERROR_INVALID_VALUE),
            "still mapped"
        );
        b.mem_unmap(base, G).expect("unmap");
        b.mem_unmap(base + 2 * G, G).expect("unmap the alias");
        assert_eq!(b.used(), 0, "freed with its last mapping");
        assert_eq!(b.mem_release(h), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(
            b.mem_address_free(base, 2 * G),
            Err(CUDA_ERROR_INVALID_VALUE),
            "another size"
        );
        b.mem_address_free(base, 4 * G).expect("free");
        assert_eq!(b.mem_address_reserve(4 * G, 0, 0, 0), Ok(base), "the range is reused");
    }

    #[test]
    fn occupancy_follows_the_per_sm_limits() {
        let dev = emulated_device();
        let mut attrs = [0; vgpu_dataplane::wire::FUNC_ATTR_COUNT];
        attrs[0] = 1024;
        attrs[4] = 32;
        // 256 threads, 32 registers: threads allow 8 blocks, registers 8 (8192 per block).
        assert_eq!(active_blocks(&dev, &attrs, 256, 0), 8);
        attrs[4] = 64;
        assert_eq!(active_blocks(&dev, &attrs, 256, 0), 4);
        attrs[4] = 32;
        // 100 KB of dynamic shared memory: two blocks fit in 228 KB.
        assert_eq!(active_blocks(&dev, &attrs, 256, 100 * 1024), 2);
        assert_eq!(active_blocks(&dev, &attrs, 2048, 0), 0);
    }

    #[test]
    fn compressed_cubins_give_kernel_layouts_and_globals() {
        let b = EmulatedBackend::new();
        let image = cubin_only();
        assert!(matches!(fatbin::classify(&image), fatbin::Image::FatBinary(ref e) if e.len() == 1 && e[0].kind == 2));
        // Libraries load without a context, as natively.
        let (library, functions) = b.library_load(&image, 0).expect("library loads");
        let f = |name: &str| functions.iter().find(|f| f.info.name == name).expect(name);
        assert_eq!(f("vector_add").info.params, vec![(0, 8), (8, 8), (16, 8), (24, 4)]);
        assert_eq!(f("mixed_params").info.args_size(), 56);
        assert!(b
            .library_get_global(library, c"g_table")
            .is_ok_and(|(_, size)| size == 1024));
        // A launch is checked against the layout read from the cubin.
        let ctx = b.primary_ctx_retain(0).expect("primary context");
        b.ctx_set_current(ctx).expect("current");
        let mut args = vec![0u8; 28];
        let saxpy = f("saxpy");
        assert_eq!(
            b.launch(saxpy.handle, [1, 1, 1], [32, 1, 1], 0, 0, &mut args, &saxpy.info.params),
            Ok(())
        );
        let mut short = vec![0u8; 20];
        assert!(b
            .launch(
                saxpy.handle,
                [1, 1, 1],
                [32, 1, 1],
                0,
                0,
                &mut short,
                &saxpy.info.params
            )
            .is_err());
    }
}
