//! The real backend: NVIDIA's `libcuda.so.1`, loaded at run time so the server builds and starts anywhere.
//! Calls are forwarded with cuda.h's own types (`vgpu-cuda-sys`); this module only converts handles.
//!
//! `module.rs` holds module/library loading, function queries and occupancy; `memory.rs` host mirrors, arrays,
//! textures, pools, virtual memory management and the structured copies. Every `unsafe` block calls a
//! documented driver entry point with handles this session obtained from the same driver and with
//! out-pointers to locals or buffers the caller sized (each block says what else it relies on).

use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;

use vgpu_cuda_sys::driver::*;
use vgpu_cuda_sys::DriverLibrary;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::{DeviceFacts, BACKEND_REAL, DEVICE_ATTR_SLOTS};
use vgpu_dataplane::ids::DevicePtr;
use vgpu_dataplane::wire::{ArrayBox, ArrayShape, LaunchShape, MemAccessDesc, MemAllocProp, MemOp, FUNC_ATTR_COUNT};

use crate::backend::*;

mod graph;
mod ipc;
mod memory;
mod module;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("the real backend assumes 64-bit pointers (handles travel as u64)");

/// Conversion of the backend's values into the driver's C types (inferred from the entry point's parameter).
trait ToDriver<T> {
    fn to_driver(self) -> T;
}

impl<T> ToDriver<T> for T {
    fn to_driver(self) -> T {
        self
    }
}

macro_rules! pointer_handles {
    ($($handle:ident => $c:ty),* $(,)?) => {
        $(
            impl ToDriver<$c> for $handle {
                fn to_driver(self) -> $c {
                    self.0 as usize as $c
                }
            }
            impl From<$c> for $handle {
                fn from(p: $c) -> $handle {
                    $handle(p as usize as u64)
                }
            }
        )*
    };
}

pointer_handles! {
    Context => CUcontext,
    Stream => CUstream,
    Event => CUevent,
    Module => CUmodule,
    Library => CUlibrary,
    Function => CUfunction,
    Kernel => CUkernel,
    MemPool => CUmemoryPool,
    Array => CUarray,
}

impl ToDriver<CUdeviceptr> for DevicePtr {
    fn to_driver(self) -> CUdeviceptr {
        self.0
    }
}

impl ToDriver<CUmemGenericAllocationHandle> for AllocHandle {
    fn to_driver(self) -> CUmemGenericAllocationHandle {
        self.0
    }
}

impl ToDriver<usize> for u64 {
    fn to_driver(self) -> usize {
        self as usize
    }
}

impl ToDriver<CUlimit> for u32 {
    fn to_driver(self) -> CUlimit {
        CUlimit(self)
    }
}

impl ToDriver<CUfunction> for Callable {
    fn to_driver(self) -> CUfunction {
        self.raw() as usize as CUfunction
    }
}

/// The operations the call table forwards unchanged, each calling the entry point its row names.
macro_rules! forward_driver_ops {
    ($(
        $(#[$doc:meta])*
        $name:ident = $op:literal, $mode:ident $(, $tail:ident $(($max:expr))?)? { $($field:ident : $ty:ty),* $(,)? }
            -> $reply:ty $(=> $backend:ident ( $($barg:ident : $bty:ty),* ) = $driver:ident)?;
    )*) => {
        impl DriverOps for RealBackend {
            $( $(
                fn $backend(&self, $($barg: $bty),*) -> CuResult<()> {
                    // SAFETY: the session checked every handle and range; the values are passed as they are.
                    unsafe { self.driver.$driver($($barg.to_driver()),*) }.result()
                }
            )? )*
        }
    };
}

vgpu_dataplane::call_table!(forward_driver_ops);

pub struct RealBackend {
    driver: DriverLibrary,
    version: i32,
    devices: Vec<DeviceFacts>,
    /// Each device's own UUID, by ordinal (`devices` may present another: `with_identity`).
    hardware_uuids: Vec<String>,
}

/// Entry points the server cannot work without (a driver lacking one is refused at start).
const REQUIRED: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetAttribute",
    "cuDevicePrimaryCtxRetain",
    "cuCtxSetCurrent",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemHostAlloc",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuStreamSynchronize",
    "cuEventCreate",
    "cuEventQuery",
    "cuModuleLoadData",
    "cuModuleEnumerateFunctions",
    "cuFuncGetParamInfo",
    "cuLibraryLoadData",
    "cuLaunchKernel",
];

impl RealBackend {
    /// Loads the driver (the dynamic loader's `libcuda.so.1`, or `path`), initialises it and reads every
    /// device's immutable facts.
    pub fn open(path: Option<&str>) -> Result<RealBackend, String> {
        let driver = DriverLibrary::load(path.unwrap_or("libcuda.so.1")).map_err(|e| e.to_string())?;
        driver.require(REQUIRED).map_err(|e| e.to_string())?;
        // SAFETY: cuInit takes flags only.
        unsafe { driver.cuInit(0) }
            .result()
            .map_err(|e| format!("cuInit failed: {}", e.name().unwrap_or("unknown error")))?;
        let mut version = 0;
        // SAFETY: out-pointer to a local.
        unsafe { driver.cuDriverGetVersion(&mut version) }
            .result()
            .map_err(|e| format!("cuDriverGetVersion: {e}"))?;
        let mut count = 0;
        // SAFETY: out-pointer to a local.
        unsafe { driver.cuDeviceGetCount(&mut count) }
            .result()
            .map_err(|e| format!("cuDeviceGetCount: {e}"))?;
        if count == 0 {
            return Err("the driver found no GPU".into());
        }
        let mut devices = Vec::new();
        for ordinal in 0..count {
            devices.push(device_facts(&driver, ordinal)?);
        }
        let hardware_uuids = devices.iter().map(|d| d.uuid_string()).collect();
        Ok(RealBackend {
            driver,
            version,
            devices,
            hardware_uuids,
        })
    }

    /// The backend with its devices presented as virtual GPU `identity` (`crate::identity`); NVML still reads
    /// the hardware by its own UUID.
    pub fn with_identity(mut self, identity: u8) -> RealBackend {
        crate::identity::apply(&mut self.devices, identity);
        self
    }

    /// The ordinal the current context's device has (the kernel attribute calls need one).
    fn current_device(&self) -> CUdevice {
        0
    }
}

fn device_facts(driver: &DriverLibrary, ordinal: i32) -> Result<DeviceFacts, String> {
    let mut dev = 0;
    // SAFETY: out-pointer to a local.
    unsafe { driver.cuDeviceGet(&mut dev, ordinal) }
        .result()
        .map_err(|e| format!("cuDeviceGet: {e}"))?;
    let mut facts = DeviceFacts::default();
    let mut name = [0 as c_char; 256];
    // SAFETY: the buffer holds 256 bytes, as passed.
    unsafe { driver.cuDeviceGetName(name.as_mut_ptr(), 256, dev) };
    // SAFETY: the driver NUL-terminates within the 256 bytes it was given (the buffer starts zeroed).
    let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    facts.set_name(&name);
    let mut total = 0usize;
    // SAFETY: out-pointer to a local.
    unsafe { driver.cuDeviceTotalMem_v2(&mut total, dev) };
    facts.total_mem = total as u64;
    let mut uuid = CUuuid::default();
    // SAFETY: out-pointer to a local CUuuid.
    unsafe { driver.cuDeviceGetUuid_v2(&mut uuid, dev) };
    for (dst, src) in facts.uuid.iter_mut().zip(uuid.bytes) {
        *dst = src as u8;
    }
    for attr in 1..DEVICE_ATTR_SLOTS {
        let mut v = 0;
        // SAFETY: out-pointer to a local; unknown attributes return an error and are skipped.
        if unsafe { driver.cuDeviceGetAttribute(&mut v, CUdevice_attribute(attr as u32), dev) } == CUDA_SUCCESS {
            facts.set_attr(attr, v);
        }
    }
    Ok(facts)
}

fn cstr_name(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: the driver returns a NUL-terminated name that lives as long as its module.
    unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
}

impl Backend for RealBackend {
    fn kind(&self) -> u32 {
        BACKEND_REAL
    }
    fn describe(&self) -> String {
        format!(
            "real backend (NVIDIA driver, CUDA {}.{})",
            self.version / 1000,
            (self.version % 1000) / 10
        )
    }
    fn driver_version(&self) -> i32 {
        self.version
    }
    fn devices(&self) -> &[DeviceFacts] {
        &self.devices
    }
    fn device_reading(&self, dev: i32, pid: u32) -> Option<crate::nvml::DeviceReading> {
        let uuid = self.hardware_uuids.get(usize::try_from(dev).ok()?)?;
        crate::nvml::Nvml::shared()?.read(uuid, pid)
    }
    fn device_p2p_status(&self, a: i32, b: i32, index: u32) -> Result<u32, u32> {
        let uuid = |d: i32| usize::try_from(d).ok().and_then(|d| self.hardware_uuids.get(d));
        // NVML_ERROR_INVALID_ARGUMENT for a device that is not there, NVML_ERROR_NOT_SUPPORTED without NVML.
        let (Some(a), Some(b)) = (uuid(a), uuid(b)) else {
            return Err(2);
        };
        crate::nvml::Nvml::shared().ok_or(3u32)?.p2p_status(a, b, index)
    }
    fn device_pcie(&self, dev: i32) -> Option<crate::nvml::PcieLink> {
        let facts = self.devices.get(usize::try_from(dev).ok()?)?;
        crate::nvml::Nvml::shared()?.pcie(&facts.uuid_string())
    }
    fn device_field_values(
        &self,
        dev: i32,
        fields: &[vgpu_dataplane::wire::NvmlFieldRequest],
    ) -> Result<Vec<vgpu_dataplane::wire::NvmlFieldValue>, u32> {
        use vgpu_cuda_sys::nvml::nvmlReturn_t;
        let facts = usize::try_from(dev)
            .ok()
            .and_then(|d| self.devices.get(d))
            .ok_or(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT.0)?;
        let nvml = crate::nvml::Nvml::shared().ok_or(nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED.0)?;
        nvml.field_values(&facts.uuid_string(), fields).map_err(|e| e.0)
    }
    fn display_driver_version(&self) -> String {
        crate::nvml::Nvml::shared()
            .and_then(|n| n.driver_version())
            .unwrap_or_else(|| "unknown".into())
    }

    fn current_context(&self) -> Context {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        match unsafe { self.driver.cuCtxGetCurrent(&mut ctx) }.result() {
            Ok(()) => ctx.into(),
            Err(_) => Context(0),
        }
    }
    fn context_device(&self) -> Option<i32> {
        let mut dev = 0;
        // SAFETY: out-pointer to a local.
        unsafe { self.driver.cuCtxGetDevice(&mut dev) }
            .result()
            .ok()
            .map(|_| dev)
    }
    fn primary_ctx_active(&self, dev: i32) -> Option<bool> {
        let (mut flags, mut active) = (0u32, 0i32);
        // SAFETY: out-pointers to locals.
        let r = unsafe { self.driver.cuDevicePrimaryCtxGetState(dev, &mut flags, &mut active) };
        r.result().ok().map(|_| active != 0)
    }
    fn primary_ctx_retain(&self, dev: i32) -> CuResult<Context> {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        unsafe { self.driver.cuDevicePrimaryCtxRetain(&mut ctx, dev) }.result()?;
        Ok(ctx.into())
    }
    fn ctx_create(&self, flags: u32, dev: i32) -> CuResult<Context> {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; no creation parameters (NULL).
        unsafe { self.driver.cuCtxCreate_v4(&mut ctx, std::ptr::null_mut(), flags, dev) }.result()?;
        Ok(ctx.into())
    }
    fn mem_alloc(&self, size: u64) -> CuResult<DevicePtr> {
        let mut d = 0;
        // SAFETY: out-pointer to a local.
        unsafe { self.driver.cuMemAlloc_v2(&mut d, size as usize) }.result()?;
        Ok(DevicePtr(d))
    }
    fn mem_alloc_pitch(&self, width: u64, height: u64, elem_size: u32) -> CuResult<(DevicePtr, u64)> {
        let (mut d, mut pitch) = (0, 0usize);
        // SAFETY: out-pointers to locals.
        unsafe {
            self.driver
                .cuMemAllocPitch_v2(&mut d, &mut pitch, width as usize, height as usize, elem_size)
        }
        .result()?;
        Ok((DevicePtr(d), pitch as u64))
    }
    fn mem_get_info(&self) -> CuResult<(u64, u64)> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: out-pointers to locals.
        unsafe { self.driver.cuMemGetInfo_v2(&mut free, &mut total) }.result()?;
        Ok((free as u64, total as u64))
    }
    fn host_alloc(&self, len: usize) -> CuResult<HostBuffer> {
        let mut ptr = std::ptr::null_mut();
        // CU_MEMHOSTALLOC_PORTABLE: usable from every context the session creates.
        // SAFETY: out-pointer to a local.
        unsafe {
            self.driver
                .cuMemHostAlloc(&mut ptr, len.max(1), CU_MEMHOSTALLOC_PORTABLE)
        }
        .result()?;
        // Listed for transports that read and write it in place (RDMA registers it once, on first use).
        vgpu_dataplane::pinned::add(ptr as usize, len);
        Ok(HostBuffer {
            ptr: ptr as *mut u8,
            len,
            // 0 (no context) cannot happen: without a current context cuMemHostAlloc fails above.
            ctx: self.current_context().0,
            epoch: 0,
        })
    }
    fn host_free(&self, buf: HostBuffer) {
        vgpu_dataplane::pinned::remove(buf.ptr as usize);
        // SAFETY: a buffer host_alloc returned, given back once.
        unsafe { self.driver.cuMemFreeHost(buf.ptr as *mut c_void) };
    }
    fn host_register(&self, ptr: *mut u8, len: usize) -> CuResult<()> {
        // PORTABLE | DEVICEMAP: usable from every context, and mapped for the device at the same address
        // (unified addressing), so kernels can dereference the app's pointers into it.
        // SAFETY: ptr..ptr+len is a live shared mapping the session owns until it unregisters it.
        unsafe {
            self.driver.cuMemHostRegister_v2(
                ptr as *mut c_void,
                len,
                CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP,
            )
        }
        .result()
    }
    fn host_unregister(&self, ptr: *mut u8) -> CuResult<()> {
        // SAFETY: ptr was registered by host_register above.
        unsafe { self.driver.cuMemHostUnregister(ptr as *mut c_void) }.result()
    }
    fn memcpy_htod_async(&self, dst: DevicePtr, src: &HostBuffer, len: usize, stream: Stream) -> CuResult<()> {
        if len > src.len {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: the buffer holds len bytes and stays untouched until the stream passes the copy.
        unsafe {
            self.driver
                .cuMemcpyHtoDAsync_v2(dst.0, src.ptr as *const c_void, len, stream.to_driver())
        }
        .result()
    }
    fn memcpy_dtoh_async(&self, dst: &HostBuffer, src: DevicePtr, len: usize, stream: Stream) -> CuResult<()> {
        if len > dst.len {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: the buffer holds len bytes and is not read until the stream passes the copy.
        unsafe {
            self.driver
                .cuMemcpyDtoHAsync_v2(dst.ptr as *mut c_void, src.0, len, stream.to_driver())
        }
        .result()
    }
    fn memset_async(&self, dst: DevicePtr, fill: Fill, stream: Stream) -> CuResult<()> {
        let (w, h, pitch, s, v) = (
            fill.width as usize,
            fill.height as usize,
            fill.pitch as usize,
            stream.to_driver(),
            fill.value,
        );
        let d = &self.driver;
        // SAFETY: the session checked the whole span against the session's device memory.
        unsafe {
            match (fill.elem_size, fill.height) {
                (1, 1) => d.cuMemsetD8Async(dst.0, v as u8, w, s),
                (2, 1) => d.cuMemsetD16Async(dst.0, v as u16, w, s),
                (4, 1) => d.cuMemsetD32Async(dst.0, v, w, s),
                (1, _) => d.cuMemsetD2D8Async(dst.0, pitch, v as u8, w, h, s),
                (2, _) => d.cuMemsetD2D16Async(dst.0, pitch, v as u16, w, h, s),
                (4, _) => d.cuMemsetD2D32Async(dst.0, pitch, v, w, h, s),
                _ => CUDA_ERROR_INVALID_VALUE,
            }
        }
        .result()
    }
    fn memcpy_2d_async(&self, src: Place<'_>, dst: Place<'_>, width: u64, height: u64, stream: Stream) -> CuResult<()> {
        self.copy_2d(src, dst, width, height, stream)
    }
    fn stream_create(&self, flags: u32, priority: i32) -> CuResult<Stream> {
        let mut s = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        unsafe { self.driver.cuStreamCreateWithPriority(&mut s, flags, priority) }.result()?;
        Ok(s.into())
    }
    fn stream_mem_ops(&self, stream: Stream, ops: &[MemOp], flags: u32, single: bool) -> CuResult<()> {
        self.mem_ops(stream, ops, flags, single)
    }
    fn stream_wait_counter(&self, stream: Stream, counter: &Arc<HostCounter>, value: u32) -> CuResult<()> {
        let addr = match counter.device_addr.get() {
            Some(a) => *a,
            None => {
                let mut a: CUdeviceptr = 0;
                // SAFETY: out-pointer to a local; the word lies in pinned memory of this backend's `host_alloc`.
                let mapped = unsafe {
                    self.driver
                        .cuMemHostGetDevicePointer_v2(&mut a, counter.host_addr().cast(), 0)
                };
                // Under unified addressing pinned memory is mapped at its host address.
                let a = if mapped.result().is_ok() {
                    a
                } else {
                    counter.host_addr() as u64
                };
                *counter.device_addr.get_or_init(|| a)
            }
        };
        let geq = CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ.0;
        // SAFETY: plain values; the address is the counter's pinned word, which outlives every wait on it (its
        // owner frees it only after the last value it waits for was set).
        unsafe { self.driver.cuStreamWaitValue32_v2(stream.to_driver(), addr, value, geq) }.result()
    }
    fn event_create(&self, flags: u32) -> CuResult<Event> {
        let mut e = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        unsafe { self.driver.cuEventCreate(&mut e, flags) }.result()?;
        Ok(e.into())
    }
    fn event_elapsed(&self, start: Event, end: Event) -> CuResult<f32> {
        let mut ms = 0f32;
        // SAFETY: out-pointer to a local.
        unsafe {
            self.driver
                .cuEventElapsedTime_v2(&mut ms, start.to_driver(), end.to_driver())
        }
        .result()?;
        Ok(ms)
    }
    fn module_load(&self, image: &[u8]) -> CuResult<(Module, Vec<LoadedFunction>)> {
        self.load_module(image)
    }
    fn library_load(&self, image: &[u8], device: i32) -> CuResult<(Library, Vec<LoadedFunction>)> {
        self.load_library(image, device)
    }
    fn image_global(&self, image: Image, name: &CStr) -> CuResult<(DevicePtr, u64)> {
        self.global(image, name)
    }
    fn func_attributes(&self, function: Callable) -> CuResult<[i32; FUNC_ATTR_COUNT]> {
        self.attributes(function)
    }
    fn lookup(&self, image: Image, name: &CStr) -> CuResult<()> {
        self.lookup_name(image, name)
    }
    fn func_set_attribute(&self, function: Callable, attrib: i32, value: i32) -> CuResult<()> {
        self.set_attribute(function, attrib, value)
    }
    fn mem_pool_create(&self, dev: i32, max_size: u64) -> CuResult<MemPool> {
        self.pool_create(dev, max_size)
    }
    fn default_mem_pool(&self, dev: i32) -> CuResult<MemPool> {
        let mut pool = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        unsafe { self.driver.cuDeviceGetDefaultMemPool(&mut pool, dev) }.result()?;
        Ok(pool.into())
    }
    fn mem_alloc_async(&self, size: u64, pool: MemPool, stream: Stream) -> CuResult<DevicePtr> {
        let mut dptr = 0;
        // SAFETY: out-pointer to a local; pool and stream are this session's handles.
        unsafe {
            self.driver
                .cuMemAllocFromPoolAsync(&mut dptr, size as usize, pool.to_driver(), stream.to_driver())
        }
        .result()?;
        Ok(DevicePtr(dptr))
    }
    fn mem_pool_get_attribute(&self, pool: MemPool, attr: u32) -> CuResult<u64> {
        self.pool_attribute(pool, attr)
    }
    fn mem_pool_set_attribute(&self, pool: MemPool, attr: u32, value: u64) -> CuResult<()> {
        self.set_pool_attribute(pool, attr, value)
    }
    fn occupancy_active_blocks(
        &self,
        function: Callable,
        block_size: i32,
        dynamic_smem: u64,
        flags: u32,
    ) -> CuResult<i32> {
        self.active_blocks(function, block_size, dynamic_smem, flags)
    }
    fn occupancy_potential_block_size(
        &self,
        function: Callable,
        dynamic_smem: u64,
        smem_by_block: Option<&[u64]>,
        block_limit: i32,
        flags: u32,
    ) -> CuResult<(i32, i32)> {
        self.potential_block_size(function, dynamic_smem, smem_by_block, block_limit, flags)
    }
    fn occupancy_available_smem(&self, function: Callable, num_blocks: i32, block_size: i32) -> CuResult<u64> {
        self.available_smem(function, num_blocks, block_size)
    }
    fn occupancy_clusters(&self, function: Callable, shape: LaunchShape, potential_size: bool) -> CuResult<i32> {
        self.clusters(function, shape, potential_size)
    }
    fn host_mirror_map(&self, addr: u64, size: u64) -> CuResult<DevicePtr> {
        self.mirror_map(addr, size)
    }
    fn host_mirror_unmap(&self, addr: u64, size: u64) -> CuResult<()> {
        self.mirror_unmap(addr, size)
    }
    fn mem_alloc_managed(&self, size: u64, flags: u32) -> CuResult<DevicePtr> {
        let mut d = 0;
        // SAFETY: out-pointer to a local.
        unsafe { self.driver.cuMemAllocManaged(&mut d, size as usize, flags) }.result()?;
        Ok(DevicePtr(d))
    }
    fn library_get_managed(&self, library: Library, name: &CStr) -> CuResult<(DevicePtr, u64)> {
        let (mut d, mut size) = (0, 0usize);
        // SAFETY: out-pointers to locals; name is NUL-terminated.
        unsafe {
            self.driver
                .cuLibraryGetManaged(&mut d, &mut size, library.to_driver(), name.as_ptr())
        }
        .result()?;
        Ok((DevicePtr(d), size as u64))
    }
    fn array_create(&self, shape: ArrayShape) -> CuResult<Array> {
        self.create_array(shape)
    }
    fn array_copy(&self, array: Array, region: ArrayBox, other: ArrayTransfer<'_>) -> CuResult<()> {
        self.copy_array(array, region, other)
    }
    fn tex_object_create(&self, surface: bool, resource: &[u8], texture: &[u8], view: Option<&[u8]>) -> CuResult<u64> {
        self.create_object(surface, resource, texture, view)
    }
    fn object_destroy(&self, object: u64, surface: bool) -> CuResult<()> {
        // SAFETY: an object this session created.
        unsafe {
            if surface {
                self.driver.cuSurfObjectDestroy(object)
            } else {
                self.driver.cuTexObjectDestroy(object)
            }
        }
        .result()
    }
    fn mem_granularity(&self, prop: &MemAllocProp, option: u32) -> CuResult<u64> {
        self.granularity(prop, option)
    }
    fn mem_address_reserve(&self, size: u64, alignment: u64, addr: DevicePtr, flags: u64) -> CuResult<DevicePtr> {
        let mut ptr = 0;
        // SAFETY: plain values; out-pointer to a local.
        unsafe {
            self.driver
                .cuMemAddressReserve(&mut ptr, size as usize, alignment as usize, addr.0, flags)
        }
        .result()?;
        Ok(DevicePtr(ptr))
    }
    fn mem_address_free(&self, ptr: DevicePtr, size: u64) -> CuResult<()> {
        // SAFETY: a reservation of this session (the session checked it, and that it has no mapping left).
        unsafe { self.driver.cuMemAddressFree(ptr.0, size as usize) }.result()
    }
    fn device_memory_export(&self) -> Result<String, String> {
        self.dma_buf_support()
    }
    fn export_device_memory(&self, addr: u64, len: usize) -> CuResult<vgpu_dataplane::pinned::DeviceExport> {
        self.export_dma_buf(addr, len)
    }
    fn flush_direct_writes(&self) -> CuResult<()> {
        self.flush_rdma_writes()
    }
    fn ipc_get_mem_handle(&self, dptr: DevicePtr) -> CuResult<Shared> {
        self.ipc_export_mem(dptr)
    }
    fn ipc_open_mem_handle(&self, shared: SharedRef<'_>, flags: u32) -> CuResult<DevicePtr> {
        self.ipc_open_mem(shared, flags)
    }
    fn ipc_get_event_handle(&self, event: Event) -> CuResult<Shared> {
        self.ipc_export_event(event)
    }
    fn ipc_open_event_handle(&self, shared: SharedRef<'_>) -> CuResult<Event> {
        self.ipc_open_event(shared)
    }
    fn mem_export_shareable(&self, handle: AllocHandle, handle_type: u32, flags: u64) -> CuResult<Shared> {
        self.export_shareable(handle, handle_type, flags)
    }
    fn mem_import_shareable(&self, shared: SharedRef<'_>) -> CuResult<AllocHandle> {
        self.import_shareable(shared)
    }
    fn mem_create(&self, size: u64, prop: &MemAllocProp, flags: u64) -> CuResult<AllocHandle> {
        self.create_physical(size, prop, flags)
    }
    fn mem_release(&self, handle: AllocHandle) -> CuResult<()> {
        // SAFETY: a handle of this session with a reference left (the session counts them).
        unsafe { self.driver.cuMemRelease(handle.0) }.result()
    }
    fn mem_map(&self, ptr: DevicePtr, size: u64, offset: u64, handle: AllocHandle, flags: u64) -> CuResult<()> {
        // SAFETY: the session checked that the range lies in one of its reservations, unmapped, and that the
        // handle is its own.
        unsafe {
            self.driver
                .cuMemMap(ptr.0, size as usize, offset as usize, handle.0, flags)
        }
        .result()
    }
    fn mem_unmap(&self, ptr: DevicePtr, size: u64) -> CuResult<()> {
        // SAFETY: the session checked that the range is exactly some of its mappings.
        unsafe { self.driver.cuMemUnmap(ptr.0, size as usize) }.result()
    }
    fn mem_set_access(&self, ptr: DevicePtr, size: u64, descs: &[MemAccessDesc]) -> CuResult<()> {
        self.set_access(ptr, size, descs)
    }
    fn mem_get_access(&self, location_type: u32, location_id: i32, ptr: DevicePtr) -> CuResult<u64> {
        let location = CUmemLocation {
            type_: CUmemLocationType(location_type),
            id: location_id,
        };
        let mut flags = 0;
        // SAFETY: out-pointer to a local; the location is a complete CUmemLocation.
        unsafe { self.driver.cuMemGetAccess(&mut flags, &location, ptr.0) }.result()?;
        Ok(flags)
    }
    fn mem_allocation_properties(&self, handle: AllocHandle) -> CuResult<MemAllocProp> {
        self.physical_properties(handle)
    }
    fn mem_retain_allocation_handle(&self, addr: DevicePtr) -> CuResult<AllocHandle> {
        let mut handle = 0;
        // SAFETY: the driver only looks the address up (the session checked it is one of its mappings).
        unsafe {
            self.driver
                .cuMemRetainAllocationHandle(&mut handle, addr.0 as usize as *mut c_void)
        }
        .result()?;
        Ok(AllocHandle(handle))
    }
    fn device_can_access_peer(&self, dev: i32, peer: i32) -> CuResult<i32> {
        let mut can = 0;
        // SAFETY: out-pointer to a local; the driver checks the ordinals.
        unsafe { self.driver.cuDeviceCanAccessPeer(&mut can, dev, peer) }.result()?;
        Ok(can)
    }
    fn device_p2p_attribute(&self, attr: u32, src: i32, dst: i32) -> CuResult<i32> {
        let mut value = 0;
        // SAFETY: out-pointer to a local; the driver checks the attribute and ordinals.
        unsafe {
            self.driver
                .cuDeviceGetP2PAttribute(&mut value, CUdevice_P2PAttribute(attr), src, dst)
        }
        .result()?;
        Ok(value)
    }
    fn ctx_get_limit(&self, limit: u32) -> CuResult<u64> {
        let mut v = 0usize;
        // SAFETY: out-pointer to a local.
        unsafe { self.driver.cuCtxGetLimit(&mut v, CUlimit(limit)) }.result()?;
        Ok(v as u64)
    }
    fn export_table_first_word(&self, uuid: &[u8; 16]) -> CuResult<u64> {
        let mut table: *const c_void = std::ptr::null();
        let id = CUuuid {
            bytes: uuid.map(|b| b as c_char),
        };
        // SAFETY: cuGetExportTable writes one pointer and reads the 16-byte UUID.
        unsafe { self.driver.cuGetExportTable(&mut table, &id) }.result()?;
        if table.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: a table the driver hands out starts with at least one readable word.
        Ok(unsafe { (table as *const u64).read() })
    }
    fn kernel_get_function(&self, kernel: Kernel) -> CuResult<Function> {
        let mut f = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; a kernel handle this session's library load produced.
        unsafe { self.driver.cuKernelGetFunction(&mut f, kernel.to_driver()) }.result()?;
        Ok(f.into())
    }
    fn launch(
        &self,
        function: Callable,
        stream: Stream,
        shape: &LaunchShape,
        args: &mut [u8],
        params: &[(u32, u32)],
    ) -> CuResult<()> {
        self.launch_kernel(function, stream, shape, args, params)
    }
}
