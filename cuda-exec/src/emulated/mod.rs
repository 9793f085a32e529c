//! The emulated backend: a GPU-less stand-in for CI and laptops. Memory, copies, streams, events, modules and
//! their bookkeeping are real; a kernel launch is checked against the kernel's parameter layout and counted, not run.
//!
//! This file holds the state and the trait implementations; `memory.rs` (pools, arrays, textures, mirrors,
//! structured copies, stream memory operations), `vmm.rs` (virtual memory management), `launch.rs` (launch checks
//! and occupancy), `graph.rs` (CUDA graphs) and `device.rs` (the device's facts) hold the larger behaviours.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::{DeviceFacts, BACKEND_EMULATED};
use vgpu_dataplane::ids::DevicePtr;
use vgpu_dataplane::image as fatbin;
use vgpu_dataplane::wire::{
    ArrayBox, ArrayShape, FunctionInfo, LaunchShape, MemAccessDesc, MemAllocProp, MemOp, NvmlFieldRequest,
    NvmlFieldValue, FUNC_ATTR_COUNT, MEM_LOCATION_DEVICE,
};

use crate::backend::*;
use crate::ptx;
use module::image_key;

mod device;
mod graph;
mod host;
mod ipc;
mod launch;
mod memory;
mod module;
mod peer;
mod state;
#[cfg(test)]
mod tests;
mod vmm;
mod waits;

use launch::cubin_layouts;
use state::{Mapping, Physical, Pool, State};

/// Most bytes of `__device__` globals one module may declare on the emulated backend (their host copies).
const MAX_MODULE_GLOBALS: u64 = 1 << 30;

/// Where emulated device addresses start: far from anything a host pointer could be mistaken for.
const DEVICE_BASE: u64 = 0x7e00_0000_0000;
const ALLOC_ALIGN: u64 = 512;
const EMULATED_TOTAL_MEM: u64 = 16 << 30;
/// VMM granularity, minimum and recommended alike: current NVIDIA GPUs map device memory in 2 MiB pages.
const VMM_GRANULARITY: u64 = 2 << 20;
/// VMM reservations come from a region of their own, below cuMemAlloc's, so the two never meet.
const VMM_BASE: u64 = 0x7d00_0000_0000;
const VMM_END: u64 = DEVICE_BASE;
/// A server with a device identity (`crate::identity`) places its memory this much lower per identity step, as
/// two processes' drivers place theirs apart: two emulated servers sharing a client hand out distinct addresses.
const IDENTITY_SHIFT: u64 = 2 << 40;
/// The lowest address a reservation's fixed-address hint may name (client-chosen windows sit above it).
const HINT_FLOOR: u64 = 0x1000_0000_0000;
/// The host page size reservations are counted in (cuMemAddressReserve's documented unit).
const HOST_PAGE: u64 = 4096;

/// The handle of device `dev`'s primary context.
fn primary_context(dev: i32) -> u64 {
    0x100 + dev as u64
}
/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR` and `CU_MEM_HANDLE_TYPE_FABRIC`.
const HANDLE_TYPE_POSIX_FD: u32 = 1;
const HANDLE_TYPE_FABRIC: u32 = 8;

thread_local! {
    static CURRENT_CTX: Cell<u64> = const { Cell::new(0) };
}

pub struct EmulatedBackend {
    devices: Vec<DeviceFacts>,
    state: Mutex<State>,
    /// CUDA graphs (apart from `state`: a launch runs nodes that take `state` themselves).
    graphs: Mutex<graph::Graphs>,
    next_handle: AtomicU64,
    /// Pinned host buffers, by the context they were made in.
    host: host::HostBuffers,
    /// Where reservations the backend places itself go: [start, end).
    vmm_region: (u64, u64),
    /// Simulated kernel durations (`VGPU_EMULATED_KERNEL_NS`), off by default.
    time: crate::emulated_time::SimulatedTime,
    /// Streams held behind host counters (`stream_wait_counter`).
    waits: waits::Waits,
}

impl Default for EmulatedBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl EmulatedBackend {
    pub fn new() -> Self {
        EmulatedBackend {
            devices: (0..device::count_from_env()).map(device::numbered).collect(),
            state: Mutex::new(State {
                next_addr: DEVICE_BASE,
                ..Default::default()
            }),
            graphs: Mutex::default(),
            next_handle: AtomicU64::new(0x1000),
            host: host::HostBuffers::default(),
            vmm_region: (VMM_BASE, VMM_END),
            time: crate::emulated_time::SimulatedTime::new(crate::emulated_time::KernelCost::from_env()),
            waits: waits::Waits::default(),
        }
    }

    /// The backend with its device presented as virtual GPU `identity` (`crate::identity`), its memory placed at
    /// addresses of its own.
    pub fn with_identity(identity: u8) -> Self {
        let mut b = Self::new();
        crate::identity::apply(&mut b.devices, identity);
        let shift = IDENTITY_SHIFT * u64::from(identity);
        b.vmm_region = (VMM_BASE - shift, VMM_END - shift);
        b.state().next_addr = DEVICE_BASE - shift;
        b
    }

    fn current(&self) -> u64 {
        CURRENT_CTX.with(|c| c.get())
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(16, Ordering::Relaxed)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `CUDA_ERROR_INVALID_DEVICE` unless `dev` is one of this backend's device ordinals.
    fn check_device(&self, dev: i32) -> CuResult<()> {
        match usize::try_from(dev) {
            Ok(d) if d < self.devices.len() => Ok(()),
            _ => Err(CUDA_ERROR_INVALID_DEVICE),
        }
    }

    fn require_ctx(&self) -> CuResult<()> {
        let ctx = CURRENT_CTX.with(|c| c.get());
        if ctx == 0 || !self.state().contexts.contains_key(&ctx) {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        Ok(())
    }

    /// Checks `stream` and waits until work queued on it could run (`waits`).
    fn check_stream(&self, stream: Stream) -> CuResult<()> {
        self.check_stream_handle(stream)?;
        self.waits.await_stream(self.current(), stream.0);
        Ok(())
    }

    fn check_stream_handle(&self, stream: Stream) -> CuResult<()> {
        let stream = stream.0;
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
        self.check_device(prop.location_id)
    }
}

impl DriverOps for EmulatedBackend {
    fn primary_ctx_release(&self, dev: i32) -> CuResult<()> {
        let mut st = self.state();
        let last = match st.primary_refs.get_mut(&dev) {
            Some(n) if *n > 0 => {
                *n -= 1;
                *n == 0
            }
            _ => return Err(CUDA_ERROR_INVALID_CONTEXT),
        };
        drop(st);
        if last {
            // The last reference destroys the context, as a reset does.
            self.primary_ctx_reset(dev)?;
        }
        Ok(())
    }
    fn primary_ctx_reset(&self, dev: i32) -> CuResult<()> {
        self.check_device(dev)?;
        // Limits go back to their defaults with the context, and its pinned host buffers are freed.
        self.state().limits.clear();
        self.host.free_context(primary_context(dev));
        Ok(())
    }
    fn ctx_destroy(&self, ctx: Context) -> CuResult<()> {
        self.state().contexts.remove(&ctx.0).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        // Its pinned host buffers go with it, as the driver's do.
        self.host.free_context(ctx.0);
        CURRENT_CTX.with(|c| {
            if c.get() == ctx.0 {
                c.set(0)
            }
        });
        Ok(())
    }
    fn ctx_set_current(&self, ctx: Context) -> CuResult<()> {
        if ctx.0 != 0 && !self.state().contexts.contains_key(&ctx.0) {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        CURRENT_CTX.with(|c| c.set(ctx.0));
        Ok(())
    }
    fn ctx_enable_peer_access(&self, peer: Context, flags: u32) -> CuResult<()> {
        self.enable_peer_access(peer, flags)
    }
    fn ctx_disable_peer_access(&self, peer: Context) -> CuResult<()> {
        self.disable_peer_access(peer)
    }
    fn ctx_synchronize(&self) -> CuResult<()> {
        self.require_ctx()?;
        self.waits.await_context(self.current());
        self.time.wait_until(self.time.all_done_at());
        Ok(())
    }
    fn mem_free(&self, dptr: DevicePtr) -> CuResult<()> {
        // As the driver's cuMemFree, which waits for the device's work first (implicit synchronization).
        self.waits.await_context(self.current());
        self.free(dptr.0)
    }
    fn memcpy_dtod_async(&self, dst: DevicePtr, src: DevicePtr, size: u64, stream: Stream) -> CuResult<()> {
        self.check_stream(stream)?;
        let data = self.with_range(src.0, size, |s| s.to_vec())?;
        self.with_range(dst.0, size, |d| d.copy_from_slice(&data))
    }
    fn stream_destroy(&self, stream: Stream) -> CuResult<()> {
        self.state()
            .streams
            .remove(&stream.0)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        self.waits.forget_stream(stream.0);
        Ok(())
    }
    fn stream_synchronize(&self, stream: Stream) -> CuResult<()> {
        self.check_stream(stream)?;
        self.time.wait_until(self.time.done_at(self.current(), stream.0));
        Ok(())
    }
    fn stream_query(&self, stream: Stream) -> CuResult<()> {
        self.check_stream_handle(stream)?;
        if self.waits.stream_held(self.current(), stream.0)
            || self.time.done_at(self.current(), stream.0) > crate::sys::monotonic_ns()
        {
            return Err(CUDA_ERROR_NOT_READY);
        }
        Ok(())
    }
    fn stream_wait_event(&self, stream: Stream, event: Event, _flags: u32) -> CuResult<()> {
        self.check_stream_handle(stream)?;
        self.state().events.get(&event.0).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        self.waits.wait_event(self.current(), stream.0, event.0);
        Ok(())
    }
    fn event_record(&self, event: Event, stream: Stream) -> CuResult<()> {
        self.check_stream_handle(stream)?;
        let mut st = self.state();
        let slot = st.events.get_mut(&event.0).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        self.waits.record(event.0, self.current(), stream.0);
        // With simulated kernel time the event completes when the stream's queued kernels would have.
        *slot = Some(if self.time.enabled() {
            self.time.instant_of(self.time.event_at(self.current(), stream.0))
        } else {
            Instant::now()
        });
        Ok(())
    }
    fn event_synchronize(&self, event: Event) -> CuResult<()> {
        let at = *self.state().events.get(&event.0).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        self.waits.await_event(event.0);
        if let Some(at) = at {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
        }
        Ok(())
    }
    fn event_query(&self, event: Event) -> CuResult<()> {
        match *self.state().events.get(&event.0).ok_or(CUDA_ERROR_INVALID_HANDLE)? {
            _ if self.waits.event_held(event.0) => Err(CUDA_ERROR_NOT_READY),
            Some(at) if at > Instant::now() => Err(CUDA_ERROR_NOT_READY),
            _ => Ok(()),
        }
    }
    fn event_destroy(&self, event: Event) -> CuResult<()> {
        let mut st = self.state();
        st.ipc.forget_event(event.0);
        self.waits.forget_event(event.0);
        st.events.remove(&event.0).map(|_| ()).ok_or(CUDA_ERROR_INVALID_HANDLE)
    }
    fn ipc_close_mem_handle(&self, dptr: DevicePtr) -> CuResult<()> {
        self.ipc_close_mem(dptr.0)
    }
    fn module_unload(&self, module: Module) -> CuResult<()> {
        self.unload(module.0)
    }
    fn library_unload(&self, library: Library) -> CuResult<()> {
        self.unload(library.0)
    }
    fn mem_pool_destroy(&self, pool: MemPool) -> CuResult<()> {
        self.pool_destroy(pool.0)
    }
    fn mem_free_async(&self, dptr: DevicePtr, stream: Stream) -> CuResult<()> {
        self.check_stream(stream)?;
        let owner = self.state().pool_allocations.remove(&dptr.0);
        self.free(dptr.0)?;
        if let Some((pool, size)) = owner {
            if let Some(p) = self.state().pools.get_mut(&pool) {
                p.used = p.used.saturating_sub(size);
            }
        }
        Ok(())
    }
    fn mem_pool_trim_to(&self, pool: MemPool, min_bytes: u64) -> CuResult<()> {
        self.pool_trim(pool.0, min_bytes)
    }
    fn array_destroy(&self, array: Array) -> CuResult<()> {
        self.state()
            .arrays
            .remove(&array.0)
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }
    fn ctx_set_limit(&self, limit: u32, value: u64) -> CuResult<()> {
        self.ctx_get_limit(limit)?;
        self.state().limits.insert(limit, value);
        Ok(())
    }
    fn memcpy_atoa(&self, dst: Array, dst_offset: u64, src: Array, src_offset: u64, size: u64) -> CuResult<()> {
        self.array_to_array(dst.0, dst_offset, src.0, src_offset, size)
    }
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
    fn current_context(&self) -> Context {
        Context(self.current())
    }
    fn primary_ctx_active(&self, dev: i32) -> Option<bool> {
        Some(self.state().primary_refs.get(&dev).is_some_and(|&n| n > 0))
    }
    fn device_can_access_peer(&self, dev: i32, peer: i32) -> CuResult<i32> {
        self.can_access_peer(dev, peer)
    }
    fn device_p2p_attribute(&self, attr: u32, src: i32, dst: i32) -> CuResult<i32> {
        self.p2p_attribute(attr, src, dst)
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
    fn device_p2p_status(&self, a: i32, b: i32, index: u32) -> Result<u32, u32> {
        self.nvml_p2p_status(a, b, index)
    }
    fn device_pcie(&self, dev: i32) -> Option<crate::nvml::PcieLink> {
        usize::try_from(dev).ok().and_then(|d| self.devices.get(d))?;
        Some(device::EMULATED_PCIE)
    }
    fn device_field_values(&self, dev: i32, fields: &[NvmlFieldRequest]) -> Result<Vec<NvmlFieldValue>, u32> {
        // NVML_ERROR_INVALID_ARGUMENT for a device that is not there.
        usize::try_from(dev)
            .ok()
            .and_then(|d| self.devices.get(d))
            .ok_or(2u32)?;
        Ok(fields.iter().map(device::field_value).collect())
    }
    fn display_driver_version(&self) -> String {
        device::EMULATED_DISPLAY_DRIVER.into()
    }

    fn primary_ctx_retain(&self, dev: i32) -> CuResult<Context> {
        self.check_device(dev)?;
        let mut st = self.state();
        *st.primary_refs.entry(dev).or_insert(0) += 1;
        let ctx = primary_context(dev);
        st.contexts.insert(ctx, dev);
        Ok(Context(ctx))
    }
    fn ctx_create(&self, _flags: u32, dev: i32) -> CuResult<Context> {
        self.check_device(dev)?;
        let ctx = self.handle();
        self.state().contexts.insert(ctx, dev);
        CURRENT_CTX.with(|c| c.set(ctx));
        Ok(Context(ctx))
    }
    fn mem_alloc(&self, size: u64) -> CuResult<DevicePtr> {
        self.require_ctx()?;
        if size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut st = self.state();
        if st.used.saturating_add(size) > EMULATED_TOTAL_MEM {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        st.used += size;
        Ok(DevicePtr(Self::place(&mut st, size)))
    }
    fn mem_alloc_pitch(&self, width: u64, height: u64, elem_size: u32) -> CuResult<(DevicePtr, u64)> {
        if width == 0 || height == 0 || !matches!(elem_size, 4 | 8 | 16) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let pitch = width.div_ceil(512) * 512;
        Ok((self.mem_alloc(pitch * height)?, pitch))
    }
    fn mem_get_info(&self) -> CuResult<(u64, u64)> {
        self.require_ctx()?;
        let st = self.state();
        Ok((EMULATED_TOTAL_MEM - st.used, EMULATED_TOTAL_MEM))
    }
    fn host_alloc(&self, len: usize) -> CuResult<HostBuffer> {
        Ok(self.host.alloc(len, self.current()))
    }
    fn host_free(&self, buf: HostBuffer) {
        // As cuMemFreeHost, which waits for the device's work first (implicit synchronization).
        self.waits.await_context(self.current());
        self.host.free(buf.ptr);
    }
    fn host_register(&self, _ptr: *mut u8, _len: usize) -> CuResult<()> {
        self.require_ctx()
    }
    fn host_unregister(&self, _ptr: *mut u8) -> CuResult<()> {
        Ok(())
    }
    fn memcpy_htod_async(&self, dst: DevicePtr, src: &HostBuffer, len: usize, stream: Stream) -> CuResult<()> {
        self.check_stream(stream)?;
        let src = src.as_slice().get(..len).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        self.with_range(dst.0, len as u64, |d| d.copy_from_slice(src))
    }
    fn memcpy_dtoh_async(&self, dst: &HostBuffer, src: DevicePtr, len: usize, stream: Stream) -> CuResult<()> {
        self.check_stream(stream)?;
        let data = self.with_range(src.0, len as u64, |s| s.to_vec())?;
        if dst.write_at(0, &data) {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    }
    fn memset_async(&self, dst: DevicePtr, fill: Fill, stream: Stream) -> CuResult<()> {
        self.check_stream(stream)?;
        self.memset(dst.0, fill)
    }
    fn memcpy_2d_async(&self, src: Place<'_>, dst: Place<'_>, width: u64, height: u64, stream: Stream) -> CuResult<()> {
        self.check_stream(stream)?;
        self.copy_2d(src, dst, width, height)
    }
    fn stream_create(&self, flags: u32, _priority: i32) -> CuResult<Stream> {
        self.require_ctx()?;
        let s = self.handle();
        self.state().streams.insert(s, ());
        self.waits.note_stream(s, self.current(), flags);
        Ok(Stream(s))
    }
    fn stream_wait_counter(&self, stream: Stream, counter: &std::sync::Arc<HostCounter>, value: u32) -> CuResult<()> {
        self.check_stream_handle(stream)?;
        self.waits.hold(self.current(), stream.0, counter, value);
        Ok(())
    }
    fn stream_mem_ops(&self, stream: Stream, ops: &[MemOp], _flags: u32, _single: bool) -> CuResult<()> {
        self.check_stream(stream)?;
        self.mem_ops(ops)
    }
    fn event_create(&self, flags: u32) -> CuResult<Event> {
        self.require_ctx()?;
        let e = self.handle();
        let mut st = self.state();
        st.events.insert(e, None);
        st.ipc.note_event(e, flags);
        Ok(Event(e))
    }
    fn event_elapsed(&self, start: Event, end: Event) -> CuResult<f32> {
        let st = self.state();
        let a = st.events.get(&start.0).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let b = st.events.get(&end.0).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        match (a, b) {
            (Some(a), Some(b)) => Ok(b.saturating_duration_since(*a).as_secs_f32() * 1e3),
            _ => Err(CUDA_ERROR_INVALID_HANDLE),
        }
    }
    fn module_load(&self, image: &[u8]) -> CuResult<(Module, Vec<LoadedFunction>)> {
        self.load(image, true).map(|(m, f)| (Module(m), f))
    }
    fn library_load(&self, image: &[u8], _device: i32) -> CuResult<(Library, Vec<LoadedFunction>)> {
        self.load(image, false).map(|(l, f)| (Library(l), f))
    }
    fn image_global(&self, image: Image, name: &CStr) -> CuResult<(DevicePtr, u64)> {
        self.global(image_key(image), name)
    }
    fn func_attributes(&self, function: Callable) -> CuResult<[i32; FUNC_ATTR_COUNT]> {
        self.attributes_of(function)
    }
    fn lookup(&self, image: Image, _name: &CStr) -> CuResult<()> {
        if self.state().modules.contains_key(&image_key(image)) {
            Err(CUDA_ERROR_NOT_FOUND)
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    }
    fn func_set_attribute(&self, function: Callable, attrib: i32, value: i32) -> CuResult<()> {
        self.set_attribute(function, attrib, value)
    }
    fn mem_pool_create(&self, _dev: i32, max_size: u64) -> CuResult<MemPool> {
        let pool = self.handle();
        self.state().pools.insert(pool, Pool::new(max_size));
        Ok(MemPool(pool))
    }
    fn default_mem_pool(&self, _dev: i32) -> CuResult<MemPool> {
        // One device: its default pool has a fixed handle.
        const DEFAULT_POOL: u64 = 0x900;
        self.state().pools.entry(DEFAULT_POOL).or_insert_with(|| Pool::new(0));
        Ok(MemPool(DEFAULT_POOL))
    }
    fn mem_alloc_async(&self, size: u64, pool: MemPool, stream: Stream) -> CuResult<DevicePtr> {
        self.require_ctx()?;
        self.check_stream(stream)?;
        self.pool_alloc(size, pool.0)
    }
    fn mem_pool_get_attribute(&self, pool: MemPool, attr: u32) -> CuResult<u64> {
        self.pool_attribute(pool.0, attr)
    }
    fn mem_pool_set_attribute(&self, pool: MemPool, attr: u32, value: u64) -> CuResult<()> {
        self.set_pool_attribute(pool.0, attr, value)
    }
    fn occupancy_active_blocks(
        &self,
        function: Callable,
        block_size: i32,
        dynamic_smem: u64,
        _flags: u32,
    ) -> CuResult<i32> {
        let attrs = self.attributes_of(function)?;
        Ok(launch::active_blocks(
            &self.devices[0],
            &attrs,
            block_size,
            dynamic_smem,
        ))
    }
    fn occupancy_potential_block_size(
        &self,
        function: Callable,
        dynamic_smem: u64,
        smem_by_block: Option<&[u64]>,
        block_limit: i32,
        _flags: u32,
    ) -> CuResult<(i32, i32)> {
        let attrs = self.attributes_of(function)?;
        Ok(launch::potential_block_size(
            &self.devices[0],
            &attrs,
            dynamic_smem,
            smem_by_block,
            block_limit,
        ))
    }
    fn occupancy_available_smem(&self, function: Callable, num_blocks: i32, _block_size: i32) -> CuResult<u64> {
        let attrs = self.attributes_of(function)?;
        launch::available_smem(&self.devices[0], &attrs, num_blocks)
    }
    fn occupancy_clusters(&self, function: Callable, shape: LaunchShape, potential_size: bool) -> CuResult<i32> {
        self.attributes_of(function)?;
        Ok(launch::clusters(&self.devices[0], shape, potential_size))
    }
    fn host_mirror_map(&self, addr: u64, size: u64) -> CuResult<DevicePtr> {
        self.mirror_map(addr, size)
    }
    fn host_mirror_unmap(&self, addr: u64, _size: u64) -> CuResult<()> {
        self.state()
            .allocations
            .remove(&addr)
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }
    fn mem_alloc_managed(&self, size: u64, _flags: u32) -> CuResult<DevicePtr> {
        self.managed_alloc(size)
    }
    fn device_memory_export(&self) -> Result<String, String> {
        Ok(ipc::RDMA_EXPORT.into())
    }
    fn export_device_memory(&self, addr: u64, len: usize) -> CuResult<vgpu_dataplane::pinned::DeviceExport> {
        self.export_for_rdma(addr, len)
    }
    fn ipc_get_mem_handle(&self, dptr: DevicePtr) -> CuResult<Shared> {
        self.ipc_export_mem(dptr.0)
    }
    fn ipc_open_mem_handle(&self, shared: SharedRef<'_>, flags: u32) -> CuResult<DevicePtr> {
        self.ipc_open_mem(shared, flags).map(DevicePtr)
    }
    fn ipc_get_event_handle(&self, event: Event) -> CuResult<Shared> {
        self.ipc_export_event(event.0)
    }
    fn ipc_open_event_handle(&self, shared: SharedRef<'_>) -> CuResult<Event> {
        self.ipc_open_event(shared).map(Event)
    }
    fn mem_export_shareable(&self, handle: AllocHandle, handle_type: u32, flags: u64) -> CuResult<Shared> {
        self.export_shareable(handle.0, handle_type, flags)
    }
    fn mem_import_shareable(&self, shared: SharedRef<'_>) -> CuResult<AllocHandle> {
        self.import_shareable(shared).map(AllocHandle)
    }
    fn array_create(&self, shape: ArrayShape) -> CuResult<Array> {
        self.create_array(shape).map(Array)
    }
    fn array_copy(&self, array: Array, region: ArrayBox, other: ArrayTransfer<'_>) -> CuResult<()> {
        self.copy_array(array.0, region, other)
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
    fn mem_granularity(&self, prop: &MemAllocProp, option: u32) -> CuResult<u64> {
        self.granularity(prop, option)
    }
    fn mem_address_reserve(&self, size: u64, alignment: u64, addr: DevicePtr, flags: u64) -> CuResult<DevicePtr> {
        self.reserve(size, alignment, addr.0, flags).map(DevicePtr)
    }
    fn mem_address_free(&self, ptr: DevicePtr, size: u64) -> CuResult<()> {
        self.free_reservation(ptr.0, size)
    }
    fn mem_create(&self, size: u64, prop: &MemAllocProp, flags: u64) -> CuResult<AllocHandle> {
        self.create_physical(size, prop, flags).map(AllocHandle)
    }
    fn mem_release(&self, handle: AllocHandle) -> CuResult<()> {
        self.release_physical(handle.0)
    }
    fn mem_map(&self, ptr: DevicePtr, size: u64, offset: u64, handle: AllocHandle, flags: u64) -> CuResult<()> {
        self.map(ptr.0, size, offset, handle.0, flags)
    }
    fn mem_unmap(&self, ptr: DevicePtr, size: u64) -> CuResult<()> {
        self.unmap(ptr.0, size)
    }
    fn mem_set_access(&self, ptr: DevicePtr, size: u64, descs: &[MemAccessDesc]) -> CuResult<()> {
        self.set_access(ptr.0, size, descs)
    }
    fn mem_get_access(&self, location_type: u32, location_id: i32, ptr: DevicePtr) -> CuResult<u64> {
        self.get_access(location_type, location_id, ptr.0)
    }
    fn mem_allocation_properties(&self, handle: AllocHandle) -> CuResult<MemAllocProp> {
        self.state()
            .physical
            .get(&handle.0)
            .map(|m| m.prop)
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }
    fn mem_retain_allocation_handle(&self, addr: DevicePtr) -> CuResult<AllocHandle> {
        self.retain_physical(addr.0).map(AllocHandle)
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
            // CIG_ENABLED: no context here is a CUDA-in-graphics one. cuBLASLt 13 asks for it in cublasLtCtxInit
            // and ignores a failure, reading its never-written result as the GPU architecture (ARCH_MISMATCH, or a
            // crash, at the first GEMM), so the driver must answer it: cuBLAS works natively and through vGPU on
            // the real backend. tests/frameworks/probe_driver.py prints the driver's own answer (GAPS.md).
            8 => 0,
            // SHMEM_SIZE, CIG_SHMEM_FALLBACK_ENABLED: defined, not on this device.
            7 | 9 => return Err(CUDA_ERROR_UNSUPPORTED_LIMIT),
            // Not a CUlimit at all.
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        };
        Ok(self.state().limits.get(&limit).copied().unwrap_or(default))
    }
    fn kernel_get_function(&self, kernel: Kernel) -> CuResult<Function> {
        self.require_ctx()?;
        if self.state().functions.contains_key(&kernel.0) {
            Ok(Function(kernel.0))
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    }
    fn launch(
        &self,
        function: Callable,
        stream: Stream,
        shape: &LaunchShape,
        args: &mut [u8],
        _params: &[(u32, u32)],
    ) -> CuResult<()> {
        self.require_ctx()?;
        self.check_stream(stream)?;
        launch::check_shape(&self.devices[0], shape)?;
        let mut st = self.state();
        let size = *st.functions.get(&function.raw()).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        if args.len() != size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        st.launches += 1;
        drop(st);
        let blocks = shape.grid.iter().map(|&g| u64::from(g)).product::<u64>();
        self.time.launch(self.current(), stream.0, blocks);
        Ok(())
    }
}
