//! The emulated backend: a GPU-less stand-in for CI and laptops. Memory, copies, streams, events, modules and
//! their bookkeeping are real; a kernel launch is checked against the kernel's parameter layout and counted, not run.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::{DeviceFacts, BACKEND_EMULATED};

use crate::backend::{Backend, CuResult, HostBuffer, LoadedFunction, Place};
use crate::ptx;
use vgpu_dataplane::image as fatbin;

/// Where emulated device addresses start: far from anything a host pointer could be mistaken for.
const DEVICE_BASE: u64 = 0x7e00_0000_0000;
const ALLOC_ALIGN: u64 = 512;
const EMULATED_TOTAL_MEM: u64 = 16 << 30;

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
}

pub struct EmulatedBackend {
    devices: Vec<DeviceFacts>,
    state: Mutex<State>,
    next_handle: AtomicU64,
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
        }
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
        if stream <= 2 || self.state().streams.contains_key(&stream) {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    }

    /// Runs `f` on the bytes of [addr, addr+len) if they lie inside one allocation.
    fn with_range<R>(&self, addr: u64, len: u64, f: impl FnOnce(&mut [u8]) -> R) -> CuResult<R> {
        let mut st = self.state();
        let (&base, bytes) = st
            .allocations
            .range_mut(..=addr)
            .next_back()
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let off = addr - base;
        let end = off.checked_add(len).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if end > bytes.len() as u64 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(f(&mut bytes[off as usize..end as usize]))
    }

    fn load(&self, image: &[u8]) -> CuResult<(u64, Vec<LoadedFunction>)> {
        self.require_ctx()?;
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
                let texts: Vec<&str> = entries.iter().filter_map(|e| e.ptx_text()).collect();
                if texts.is_empty() {
                    // Only compressed or machine-code entries: the emulated backend cannot read their layouts.
                    return Err(CUDA_ERROR_NOT_SUPPORTED);
                }
                let mut all: Vec<_> = Vec::new();
                for t in texts {
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
            fatbin::Image::Elf => return Err(CUDA_ERROR_NOT_SUPPORTED),
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
        (103, 0),
        (104, 0),
        (105, 0),
        (106, 32),
        (107, 1),
        (108, 0),
        (109, 0),
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
        (122, 0),
        (123, 1),
        (124, 0),
        (125, 0),
        (126, 0),
    ];
    for &(a, v) in attrs {
        d.set_attr(a, v);
    }
    d
}

impl Backend for EmulatedBackend {
    fn kind(&self) -> u32 {
        BACKEND_EMULATED
    }
    fn describe(&self) -> String {
        "emulated backend (no GPU: kernels are checked and recorded, not run)".into()
    }
    fn driver_version(&self) -> i32 {
        13000
    }
    fn devices(&self) -> &[DeviceFacts] {
        &self.devices
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
        self.require_ctx()
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
                for chunk in d.chunks_exact_mut(elem_size as usize) {
                    chunk.copy_from_slice(&pattern[..elem_size as usize]);
                }
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
        self.check_stream(stream)
    }
    fn stream_query(&self, stream: u64) -> CuResult<()> {
        self.check_stream(stream)
    }
    fn stream_wait_event(&self, stream: u64, event: u64, _flags: u32) -> CuResult<()> {
        self.check_stream(stream)?;
        self.state()
            .events
            .get(&event)
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
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
        *slot = Some(Instant::now());
        Ok(())
    }
    fn event_synchronize(&self, event: u64) -> CuResult<()> {
        self.state()
            .events
            .get(&event)
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }
    fn event_query(&self, event: u64) -> CuResult<()> {
        self.event_synchronize(event)
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
        self.load(image)
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
    fn library_load(&self, image: &[u8]) -> CuResult<(u64, Vec<LoadedFunction>)> {
        self.load(image)
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
        Ok(())
    }
}
