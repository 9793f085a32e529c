//! The real backend: NVIDIA's `libcuda.so.1`, loaded at run time so the server builds and starts anywhere.
//! Calls are forwarded verbatim; this file only converts between raw handles and the driver's types.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::{DeviceFacts, BACKEND_REAL, DEVICE_ATTR_SLOTS};
use vgpu_dataplane::wire::{
    FunctionInfo, MemAccessDesc, MemAllocProp, MemOp, FUNC_ATTR_COUNT, MEM_OP_BARRIER, MEM_OP_FLUSH_REMOTE_WRITES,
    MEM_OP_WAIT_VALUE_32, MEM_OP_WAIT_VALUE_64, MEM_OP_WRITE_VALUE_32, MEM_OP_WRITE_VALUE_64,
};

use crate::backend::{Backend, CuResult, HostBuffer, LoadedFunction, Place};

type P = *mut c_void;

macro_rules! driver_table {
    ($( $field:ident = $sym:literal : fn($($arg:ty),*); )*) => {
        /// Entry points of the real driver this server uses, resolved once at start-up.
        #[allow(non_snake_case)]
        struct Driver {
            _lib: libloading::Library,
            $( $field: unsafe extern "C" fn($($arg),*) -> CUresult, )*
        }

        impl Driver {
            fn load(path: &str) -> Result<Driver, String> {
                // SAFETY: loading NVIDIA's driver runs its initialisers, which is what loading it is for.
                let lib = unsafe { libloading::Library::new(path) }.map_err(|e| format!("cannot load {path}: {e}"))?;
                // SAFETY: a symbol only the vGPU shim exports; looking it up has no side effects.
                if unsafe { lib.get::<*const c_void>(b"vgpu_shim_marker\0") }.is_ok() {
                    return Err(format!(
                        "{path} is vGPU's own client shim, not NVIDIA's driver (is LD_LIBRARY_PATH pointing at the shim?)"
                    ));
                }
                $(
                    // SAFETY: the symbol has this C signature in CUDA 13.0's cuda.h.
                    let $field = *unsafe { lib.get::<unsafe extern "C" fn($($arg),*) -> CUresult>(concat!($sym, "\0").as_bytes()) }
                        .map_err(|e| format!("{path} lacks {}: {e}", $sym))?;
                )*
                Ok(Driver { _lib: lib, $( $field, )* })
            }
        }
    };
}

driver_table! {
    init = "cuInit": fn(c_uint);
    driver_get_version = "cuDriverGetVersion": fn(*mut c_int);
    device_get_count = "cuDeviceGetCount": fn(*mut c_int);
    device_get = "cuDeviceGet": fn(*mut c_int, c_int);
    device_get_name = "cuDeviceGetName": fn(*mut c_char, c_int, c_int);
    device_total_mem = "cuDeviceTotalMem_v2": fn(*mut usize, c_int);
    device_get_attribute = "cuDeviceGetAttribute": fn(*mut c_int, c_int, c_int);
    device_get_uuid = "cuDeviceGetUuid_v2": fn(*mut u8, c_int);
    primary_ctx_retain = "cuDevicePrimaryCtxRetain": fn(*mut P, c_int);
    primary_ctx_release = "cuDevicePrimaryCtxRelease_v2": fn(c_int);
    primary_ctx_reset = "cuDevicePrimaryCtxReset_v2": fn(c_int);
    ctx_create = "cuCtxCreate_v4": fn(*mut P, P, c_uint, c_int);
    ctx_destroy = "cuCtxDestroy_v2": fn(P);
    ctx_set_current = "cuCtxSetCurrent": fn(P);
    ctx_get_current = "cuCtxGetCurrent": fn(*mut P);
    ctx_get_device = "cuCtxGetDevice": fn(*mut c_int);
    ctx_synchronize = "cuCtxSynchronize": fn();
    mem_alloc = "cuMemAlloc_v2": fn(*mut u64, usize);
    mem_alloc_pitch = "cuMemAllocPitch_v2": fn(*mut u64, *mut usize, usize, usize, c_uint);
    mem_free = "cuMemFree_v2": fn(u64);
    mem_get_info = "cuMemGetInfo_v2": fn(*mut usize, *mut usize);
    mem_host_alloc = "cuMemHostAlloc": fn(*mut P, usize, c_uint);
    mem_free_host = "cuMemFreeHost": fn(P);
    memcpy_htod_async = "cuMemcpyHtoDAsync_v2": fn(u64, *const c_void, usize, P);
    memcpy_dtoh_async = "cuMemcpyDtoHAsync_v2": fn(P, u64, usize, P);
    memcpy_dtod_async = "cuMemcpyDtoDAsync_v2": fn(u64, u64, usize, P);
    memset_d2d8_async = "cuMemsetD2D8Async": fn(u64, usize, u8, usize, usize, P);
    memset_d2d16_async = "cuMemsetD2D16Async": fn(u64, usize, u16, usize, usize, P);
    memset_d2d32_async = "cuMemsetD2D32Async": fn(u64, usize, c_uint, usize, usize, P);
    memset_d8_async = "cuMemsetD8Async": fn(u64, u8, usize, P);
    memset_d16_async = "cuMemsetD16Async": fn(u64, u16, usize, P);
    memset_d32_async = "cuMemsetD32Async": fn(u64, c_uint, usize, P);
    stream_create = "cuStreamCreateWithPriority": fn(*mut P, c_uint, c_int);
    stream_destroy = "cuStreamDestroy_v2": fn(P);
    stream_synchronize = "cuStreamSynchronize": fn(P);
    stream_query = "cuStreamQuery": fn(P);
    stream_wait_event = "cuStreamWaitEvent": fn(P, P, c_uint);
    stream_write_value32 = "cuStreamWriteValue32_v2": fn(P, u64, u32, c_uint);
    stream_write_value64 = "cuStreamWriteValue64_v2": fn(P, u64, u64, c_uint);
    stream_wait_value32 = "cuStreamWaitValue32_v2": fn(P, u64, u32, c_uint);
    stream_wait_value64 = "cuStreamWaitValue64_v2": fn(P, u64, u64, c_uint);
    stream_batch_mem_op = "cuStreamBatchMemOp_v2": fn(P, c_uint, *mut [u64; 6], c_uint);
    event_create = "cuEventCreate": fn(*mut P, c_uint);
    event_record = "cuEventRecord": fn(P, P);
    event_synchronize = "cuEventSynchronize": fn(P);
    event_query = "cuEventQuery": fn(P);
    event_elapsed = "cuEventElapsedTime_v2": fn(*mut f32, P, P);
    event_destroy = "cuEventDestroy_v2": fn(P);
    module_load_data = "cuModuleLoadData": fn(*mut P, *const c_void);
    module_unload = "cuModuleUnload": fn(P);
    module_get_global = "cuModuleGetGlobal_v2": fn(*mut u64, *mut usize, P, *const c_char);
    module_get_function_count = "cuModuleGetFunctionCount": fn(*mut c_uint, P);
    module_enumerate_functions = "cuModuleEnumerateFunctions": fn(*mut P, c_uint, P);
    func_get_name = "cuFuncGetName": fn(*mut *const c_char, P);
    func_get_param_info = "cuFuncGetParamInfo": fn(P, usize, *mut usize, *mut usize);
    func_get_attribute = "cuFuncGetAttribute": fn(*mut c_int, c_int, P);
    library_load_data = "cuLibraryLoadData": fn(*mut P, *const c_void, P, P, c_uint, P, P, c_uint);
    library_unload = "cuLibraryUnload": fn(P);
    library_get_global = "cuLibraryGetGlobal": fn(*mut u64, *mut usize, P, *const c_char);
    library_get_kernel_count = "cuLibraryGetKernelCount": fn(*mut c_uint, P);
    library_enumerate_kernels = "cuLibraryEnumerateKernels": fn(*mut P, c_uint, P);
    kernel_get_name = "cuKernelGetName": fn(*mut *const c_char, P);
    kernel_get_param_info = "cuKernelGetParamInfo": fn(P, usize, *mut usize, *mut usize);
    kernel_get_attribute = "cuKernelGetAttribute": fn(*mut c_int, c_int, P, c_int);
    kernel_get_function = "cuKernelGetFunction": fn(*mut P, P);
    memcpy_2d_async = "cuMemcpy2DAsync_v2": fn(*const Memcpy2DParams, P);
    module_get_function = "cuModuleGetFunction": fn(*mut P, P, *const c_char);
    func_load = "cuFuncLoad": fn(P);
    library_get_kernel = "cuLibraryGetKernel": fn(*mut P, P, *const c_char);
    func_set_attribute = "cuFuncSetAttribute": fn(P, c_int, c_int);
    kernel_set_attribute = "cuKernelSetAttribute": fn(c_int, c_int, P, c_int);
    get_export_table = "cuGetExportTable": fn(*mut *const u64, *const u8);
    launch_kernel_ex = "cuLaunchKernelEx": fn(*const LaunchConfig, P, *mut *mut c_void, *mut *mut c_void);
    mem_pool_create = "cuMemPoolCreate": fn(*mut P, *const MemPoolProps);
    mem_pool_destroy = "cuMemPoolDestroy": fn(P);
    device_get_default_mem_pool = "cuDeviceGetDefaultMemPool": fn(*mut P, c_int);
    mem_alloc_from_pool_async = "cuMemAllocFromPoolAsync": fn(*mut u64, usize, P, P);
    mem_free_async = "cuMemFreeAsync": fn(u64, P);
    mem_pool_get_attribute = "cuMemPoolGetAttribute": fn(P, c_uint, *mut c_void);
    mem_pool_set_attribute = "cuMemPoolSetAttribute": fn(P, c_uint, *mut c_void);
    mem_pool_trim_to = "cuMemPoolTrimTo": fn(P, usize);
    occupancy_active_blocks = "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags": fn(*mut c_int, P, c_int, usize, c_uint);
    occupancy_potential_block_size = "cuOccupancyMaxPotentialBlockSizeWithFlags":
        fn(*mut c_int, *mut c_int, P, Option<extern "C" fn(c_int) -> usize>, usize, c_int, c_uint);
    occupancy_available_smem = "cuOccupancyAvailableDynamicSMemPerBlock": fn(*mut usize, P, c_int, c_int);
    occupancy_max_active_clusters = "cuOccupancyMaxActiveClusters": fn(*mut c_int, P, *const LaunchConfig);
    occupancy_max_cluster_size = "cuOccupancyMaxPotentialClusterSize": fn(*mut c_int, P, *const LaunchConfig);
    mem_host_register = "cuMemHostRegister_v2": fn(P, usize, c_uint);
    mem_host_unregister = "cuMemHostUnregister": fn(P);
    mem_host_get_device_pointer = "cuMemHostGetDevicePointer_v2": fn(*mut u64, P, c_uint);
    mem_alloc_managed = "cuMemAllocManaged": fn(*mut u64, usize, c_uint);
    library_get_managed = "cuLibraryGetManaged": fn(*mut u64, *mut usize, P, *const c_char);
    array_create = "cuArray3DCreate_v2": fn(*mut P, *const Array3DDescriptor);
    array_destroy = "cuArrayDestroy": fn(P);
    memcpy_3d = "cuMemcpy3D_v2": fn(*const Memcpy3DParams);
    tex_object_create = "cuTexObjectCreate": fn(*mut u64, *const u64, *const u64, *const u64);
    tex_object_destroy = "cuTexObjectDestroy": fn(u64);
    surf_object_create = "cuSurfObjectCreate": fn(*mut u64, *const u64);
    surf_object_destroy = "cuSurfObjectDestroy": fn(u64);
    ctx_get_limit = "cuCtxGetLimit": fn(*mut usize, c_uint);
    ctx_set_limit = "cuCtxSetLimit": fn(c_uint, usize);
    mem_get_allocation_granularity = "cuMemGetAllocationGranularity": fn(*mut usize, *const AllocationProp, c_uint);
    mem_address_reserve = "cuMemAddressReserve": fn(*mut u64, usize, usize, u64, u64);
    mem_address_free = "cuMemAddressFree": fn(u64, usize);
    mem_create = "cuMemCreate": fn(*mut u64, usize, *const AllocationProp, u64);
    mem_release = "cuMemRelease": fn(u64);
    mem_map = "cuMemMap": fn(u64, usize, usize, u64, u64);
    mem_unmap = "cuMemUnmap": fn(u64, usize);
    mem_set_access = "cuMemSetAccess": fn(u64, usize, *const MemAccessDesc, usize);
    mem_get_access = "cuMemGetAccess": fn(*mut u64, *const [u32; 2], u64);
    mem_get_allocation_properties = "cuMemGetAllocationPropertiesFromHandle": fn(*mut AllocationProp, u64);
    mem_retain_allocation_handle = "cuMemRetainAllocationHandle": fn(*mut u64, P);
    launch_kernel = "cuLaunchKernel": fn(P, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, P, *mut *mut c_void, *mut *mut c_void);
}

thread_local! {
    /// The app's block-size-to-shared-memory answers, for the occupancy call running on this thread.
    static SMEM_BY_BLOCK: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Stands in for the app's `CUoccupancyB2DSize` callback with the answers the client collected.
extern "C" fn smem_by_block(block: c_int) -> usize {
    SMEM_BY_BLOCK.with(|t| {
        let t = t.borrow();
        usize::try_from(block - 1)
            .ok()
            .and_then(|i| t.get(i))
            .copied()
            .unwrap_or(0) as usize
    })
}

/// `CUDA_ARRAY3D_DESCRIPTOR` from cuda.h.
#[repr(C)]
struct Array3DDescriptor {
    width: usize,
    height: usize,
    depth: usize,
    format: c_uint,
    channels: c_uint,
    flags: c_uint,
}

/// `CUDA_MEMCPY3D` from cuda.h.
#[repr(C)]
#[derive(Default)]
struct Memcpy3DParams {
    src_x_in_bytes: usize,
    src_y: usize,
    src_z: usize,
    src_lod: usize,
    src_memory_type: c_uint,
    src_host: usize,
    src_device: u64,
    src_array: usize,
    reserved0: usize,
    src_pitch: usize,
    src_height: usize,
    dst_x_in_bytes: usize,
    dst_y: usize,
    dst_z: usize,
    dst_lod: usize,
    dst_memory_type: c_uint,
    dst_host: usize,
    dst_device: u64,
    dst_array: usize,
    reserved1: usize,
    dst_pitch: usize,
    dst_height: usize,
    width_in_bytes: usize,
    height: usize,
    depth: usize,
}

/// Copies a descriptor into 8-byte-aligned words, as the driver reads it.
fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect()
}

/// `CUmemPoolProps` from cuda.h.
#[repr(C)]
struct MemPoolProps {
    alloc_type: c_uint,
    handle_types: c_uint,
    location_type: c_uint,
    location_id: c_int,
    win32_security_attributes: P,
    max_size: usize,
    usage: u16,
    reserved: [u8; 54],
}

/// `CUmemAllocationProp` from cuda.h: the wire's fixed fields around the win32 pointer, always NULL here.
#[repr(C)]
struct AllocationProp {
    alloc_type: c_uint,
    handle_types: c_uint,
    location_type: c_uint,
    location_id: c_int,
    win32_handle_meta_data: P,
    compression: u8,
    gpu_direct_rdma: u8,
    usage: u16,
    reserved: [u8; 4],
}

impl AllocationProp {
    fn from_wire(p: &MemAllocProp) -> AllocationProp {
        AllocationProp {
            alloc_type: p.alloc_type,
            handle_types: p.handle_types,
            location_type: p.location_type,
            location_id: p.location_id,
            win32_handle_meta_data: std::ptr::null_mut(),
            compression: p.compression,
            gpu_direct_rdma: p.gpu_direct_rdma,
            usage: p.usage,
            reserved: p.reserved,
        }
    }
    fn to_wire(&self) -> MemAllocProp {
        MemAllocProp {
            alloc_type: self.alloc_type,
            handle_types: self.handle_types,
            location_type: self.location_type,
            location_id: self.location_id,
            compression: self.compression,
            gpu_direct_rdma: self.gpu_direct_rdma,
            usage: self.usage,
            reserved: self.reserved,
        }
    }
}

/// `CUlaunchAttribute` from cuda.h: id, padding, a 64-byte value union.
#[repr(C)]
struct LaunchAttribute {
    id: u32,
    _pad: u32,
    value: [u32; 16],
}

/// `CUlaunchConfig` from cuda.h.
#[repr(C)]
struct LaunchConfig {
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared_mem: c_uint,
    stream: P,
    attrs: *const LaunchAttribute,
    num_attrs: c_uint,
}

/// `CUDA_MEMCPY2D` from cuda.h.
#[repr(C)]
#[derive(Default)]
struct Memcpy2DParams {
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

const MEMORYTYPE_HOST: u32 = 1;
const MEMORYTYPE_DEVICE: u32 = 2;

pub struct RealBackend {
    driver: Driver,
    version: i32,
    devices: Vec<DeviceFacts>,
}

fn ok(code: CUresult) -> CuResult<()> {
    if code == CUDA_SUCCESS {
        Ok(())
    } else {
        Err(code)
    }
}

fn h(p: P) -> u64 {
    p as u64
}
fn p(handle: u64) -> P {
    handle as P
}

impl RealBackend {
    /// Loads the driver (the dynamic loader's `libcuda.so.1`, or `path`), initialises it and reads every
    /// device's immutable facts.
    pub fn open(path: Option<&str>) -> Result<RealBackend, String> {
        let driver = Driver::load(path.unwrap_or("libcuda.so.1"))?;
        // Every call below is a documented driver entry point with out-pointers to locals.
        // SAFETY: cuInit takes flags only.
        let r = unsafe { (driver.init)(0) };
        if r != CUDA_SUCCESS {
            return Err(format!("cuInit failed: {}", error_name(r).unwrap_or("unknown error")));
        }
        let mut version = 0;
        // SAFETY: out-pointer to a local.
        ok(unsafe { (driver.driver_get_version)(&mut version) }).map_err(|e| format!("cuDriverGetVersion: {e}"))?;
        let mut count = 0;
        // SAFETY: out-pointer to a local.
        ok(unsafe { (driver.device_get_count)(&mut count) }).map_err(|e| format!("cuDeviceGetCount: {e}"))?;
        if count == 0 {
            return Err("the driver found no GPU".into());
        }
        let mut devices = Vec::new();
        for ordinal in 0..count {
            let mut dev = 0;
            // SAFETY: out-pointer to a local.
            ok(unsafe { (driver.device_get)(&mut dev, ordinal) }).map_err(|e| format!("cuDeviceGet: {e}"))?;
            let mut facts = DeviceFacts::default();
            let mut name = [0 as c_char; 256];
            // SAFETY: the buffer holds 256 bytes, as passed.
            unsafe { (driver.device_get_name)(name.as_mut_ptr(), 256, dev) };
            // SAFETY: the driver NUL-terminates within the 256 bytes it was given.
            let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
            facts.set_name(&name);
            let mut total = 0usize;
            // SAFETY: out-pointer to a local.
            unsafe { (driver.device_total_mem)(&mut total, dev) };
            facts.total_mem = total as u64;
            // SAFETY: CUuuid is 16 bytes.
            unsafe { (driver.device_get_uuid)(facts.uuid.as_mut_ptr(), dev) };
            for attr in 1..DEVICE_ATTR_SLOTS {
                let mut v = 0;
                // SAFETY: out-pointer to a local; unknown attributes return an error and are skipped.
                if unsafe { (driver.device_get_attribute)(&mut v, attr as c_int, dev) } == CUDA_SUCCESS {
                    facts.set_attr(attr, v);
                }
            }
            devices.push(facts);
        }
        Ok(RealBackend {
            driver,
            version,
            devices,
        })
    }

    fn function_info(
        &self,
        name: String,
        param: impl Fn(usize, &mut usize, &mut usize) -> CUresult,
        attr: impl Fn(c_int) -> CuResult<c_int>,
    ) -> FunctionInfo {
        let mut params = Vec::new();
        loop {
            let (mut off, mut size) = (0usize, 0usize);
            if param(params.len(), &mut off, &mut size) != CUDA_SUCCESS {
                break;
            }
            params.push((off as u32, size as u32));
        }
        let mut attrs = [i32::MIN; FUNC_ATTR_COUNT];
        for (i, a) in attrs.iter_mut().enumerate() {
            if let Ok(v) = attr(i as c_int) {
                *a = v;
            }
        }
        FunctionInfo { name, params, attrs }
    }

    /// The occupancy calls take a CUfunction: a library kernel's function in the current context.
    fn occupancy_function(&self, function: u64, is_kernel: bool) -> CuResult<u64> {
        if is_kernel {
            self.kernel_get_function(function)
        } else {
            Ok(function)
        }
    }

    fn current_device(&self) -> c_int {
        0
    }
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
        let facts = self.devices.get(usize::try_from(dev).ok()?)?;
        crate::nvml::Nvml::shared()?.read(&facts.uuid_string(), pid)
    }
    fn display_driver_version(&self) -> String {
        crate::nvml::Nvml::shared()
            .and_then(|n| n.driver_version())
            .unwrap_or_else(|| "unknown".into())
    }

    // SAFETY (every call in this impl): a documented driver entry point, called with handles the session
    // obtained from this driver and with out-pointers to locals or host buffers sized by the caller.
    fn current_context(&self) -> u64 {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        if unsafe { (self.driver.ctx_get_current)(&mut ctx) } != CUDA_SUCCESS {
            return 0;
        }
        h(ctx)
    }
    fn context_device(&self) -> Option<i32> {
        let mut dev: c_int = 0;
        // SAFETY: out-pointer to a local.
        (unsafe { (self.driver.ctx_get_device)(&mut dev) } == CUDA_SUCCESS).then_some(dev)
    }
    fn primary_ctx_retain(&self, dev: i32) -> CuResult<u64> {
        let mut ctx = std::ptr::null_mut();
        ok(unsafe { (self.driver.primary_ctx_retain)(&mut ctx, dev) })?;
        Ok(h(ctx))
    }
    fn primary_ctx_release(&self, dev: i32) -> CuResult<()> {
        ok(unsafe { (self.driver.primary_ctx_release)(dev) })
    }
    fn primary_ctx_reset(&self, dev: i32) -> CuResult<()> {
        ok(unsafe { (self.driver.primary_ctx_reset)(dev) })
    }
    fn ctx_create(&self, flags: u32, dev: i32) -> CuResult<u64> {
        let mut ctx = std::ptr::null_mut();
        ok(unsafe { (self.driver.ctx_create)(&mut ctx, std::ptr::null_mut(), flags, dev) })?;
        Ok(h(ctx))
    }
    fn ctx_destroy(&self, ctx: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.ctx_destroy)(p(ctx)) })
    }
    fn ctx_set_current(&self, ctx: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.ctx_set_current)(p(ctx)) })
    }
    fn ctx_synchronize(&self) -> CuResult<()> {
        ok(unsafe { (self.driver.ctx_synchronize)() })
    }
    fn mem_alloc(&self, size: u64) -> CuResult<u64> {
        let mut d = 0u64;
        ok(unsafe { (self.driver.mem_alloc)(&mut d, size as usize) })?;
        Ok(d)
    }
    fn mem_alloc_pitch(&self, width: u64, height: u64, elem_size: u32) -> CuResult<(u64, u64)> {
        let (mut d, mut pitch) = (0u64, 0usize);
        ok(unsafe { (self.driver.mem_alloc_pitch)(&mut d, &mut pitch, width as usize, height as usize, elem_size) })?;
        Ok((d, pitch as u64))
    }
    fn mem_free(&self, dptr: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.mem_free)(dptr) })
    }
    fn mem_get_info(&self) -> CuResult<(u64, u64)> {
        let (mut free, mut total) = (0usize, 0usize);
        ok(unsafe { (self.driver.mem_get_info)(&mut free, &mut total) })?;
        Ok((free as u64, total as u64))
    }
    fn host_alloc(&self, len: usize) -> CuResult<HostBuffer> {
        let mut ptr = std::ptr::null_mut();
        // CU_MEMHOSTALLOC_PORTABLE: usable from every context the session creates.
        ok(unsafe { (self.driver.mem_host_alloc)(&mut ptr, len.max(1), 1) })?;
        Ok(HostBuffer {
            ptr: ptr as *mut u8,
            len,
        })
    }
    fn host_free(&self, buf: HostBuffer) {
        unsafe { (self.driver.mem_free_host)(buf.ptr as P) };
    }
    fn host_register(&self, ptr: *mut u8, len: usize) -> CuResult<()> {
        // PORTABLE | DEVICEMAP: usable from every context, and mapped for the device at the same address
        // (unified addressing), so kernels can dereference the app's pointers into it.
        // SAFETY: ptr..ptr+len is a live shared mapping the session owns until it unregisters it.
        ok(unsafe { (self.driver.mem_host_register)(ptr as P, len, 3) })
    }
    fn host_unregister(&self, ptr: *mut u8) -> CuResult<()> {
        // SAFETY: ptr was registered by host_register above.
        ok(unsafe { (self.driver.mem_host_unregister)(ptr as P) })
    }
    fn memcpy_htod_async(&self, dst: u64, src: &HostBuffer, len: usize, stream: u64) -> CuResult<()> {
        if len > src.len {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        ok(unsafe { (self.driver.memcpy_htod_async)(dst, src.ptr as *const c_void, len, p(stream)) })
    }
    fn memcpy_dtoh_async(&self, dst: &HostBuffer, src: u64, len: usize, stream: u64) -> CuResult<()> {
        if len > dst.len {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        ok(unsafe { (self.driver.memcpy_dtoh_async)(dst.ptr as P, src, len, p(stream)) })
    }
    fn memcpy_dtod_async(&self, dst: u64, src: u64, len: u64, stream: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.memcpy_dtod_async)(dst, src, len as usize, p(stream)) })
    }
    fn memset_async(
        &self,
        dst: u64,
        pitch: u64,
        value: u32,
        elem: u32,
        width: u64,
        height: u64,
        stream: u64,
    ) -> CuResult<()> {
        let (w, hgt, s) = (width as usize, height as usize, p(stream));
        let r = match (elem, height) {
            (1, 1) => unsafe { (self.driver.memset_d8_async)(dst, value as u8, w, s) },
            (2, 1) => unsafe { (self.driver.memset_d16_async)(dst, value as u16, w, s) },
            (4, 1) => unsafe { (self.driver.memset_d32_async)(dst, value, w, s) },
            (1, _) => unsafe { (self.driver.memset_d2d8_async)(dst, pitch as usize, value as u8, w, hgt, s) },
            (2, _) => unsafe { (self.driver.memset_d2d16_async)(dst, pitch as usize, value as u16, w, hgt, s) },
            (4, _) => unsafe { (self.driver.memset_d2d32_async)(dst, pitch as usize, value, w, hgt, s) },
            _ => CUDA_ERROR_INVALID_VALUE,
        };
        ok(r)
    }
    fn stream_create(&self, flags: u32, priority: i32) -> CuResult<u64> {
        let mut s = std::ptr::null_mut();
        ok(unsafe { (self.driver.stream_create)(&mut s, flags, priority) })?;
        Ok(h(s))
    }
    fn stream_destroy(&self, stream: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.stream_destroy)(p(stream)) })
    }
    fn stream_synchronize(&self, stream: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.stream_synchronize)(p(stream)) })
    }
    fn stream_query(&self, stream: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.stream_query)(p(stream)) })
    }
    fn stream_wait_event(&self, stream: u64, event: u64, flags: u32) -> CuResult<()> {
        ok(unsafe { (self.driver.stream_wait_event)(p(stream), p(event), flags) })
    }
    fn stream_mem_ops(&self, stream: u64, ops: &[MemOp], flags: u32, single: bool) -> CuResult<()> {
        let d = &self.driver;
        if let (true, [op]) = (single, ops) {
            let (s, a, v, f) = (p(stream), op.address, op.value, op.flags);
            // SAFETY: plain values; the session checked that the address lies in the session's device memory.
            return ok(unsafe {
                match op.operation {
                    MEM_OP_WRITE_VALUE_32 => (d.stream_write_value32)(s, a, v as u32, f),
                    MEM_OP_WRITE_VALUE_64 => (d.stream_write_value64)(s, a, v, f),
                    MEM_OP_WAIT_VALUE_32 => (d.stream_wait_value32)(s, a, v as u32, f),
                    MEM_OP_WAIT_VALUE_64 => (d.stream_wait_value64)(s, a, v, f),
                    _ => CUDA_ERROR_INVALID_VALUE,
                }
            });
        }
        // CUstreamBatchMemOpParams: operation at byte 0; waits and writes put the address in word 1, the value in
        // word 2 and their flags in word 3; barriers and flushes their flags at byte 4.
        let mut params: Vec<[u64; 6]> = ops
            .iter()
            .map(|op| match op.operation {
                MEM_OP_BARRIER | MEM_OP_FLUSH_REMOTE_WRITES => {
                    [op.operation as u64 | (op.flags as u64) << 32, 0, 0, 0, 0, 0]
                }
                _ => [op.operation as u64, op.address, op.value, op.flags as u64, 0, 0],
            })
            .collect();
        // SAFETY: `params` holds `params.len()` records of the driver's 48-byte layout and outlives the call.
        ok(unsafe { (d.stream_batch_mem_op)(p(stream), params.len() as c_uint, params.as_mut_ptr(), flags) })
    }
    fn event_create(&self, flags: u32) -> CuResult<u64> {
        let mut e = std::ptr::null_mut();
        ok(unsafe { (self.driver.event_create)(&mut e, flags) })?;
        Ok(h(e))
    }
    fn event_record(&self, event: u64, stream: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.event_record)(p(event), p(stream)) })
    }
    fn event_synchronize(&self, event: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.event_synchronize)(p(event)) })
    }
    fn event_query(&self, event: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.event_query)(p(event)) })
    }
    fn event_elapsed(&self, start: u64, end: u64) -> CuResult<f32> {
        let mut ms = 0f32;
        ok(unsafe { (self.driver.event_elapsed)(&mut ms, p(start), p(end)) })?;
        Ok(ms)
    }
    fn event_destroy(&self, event: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.event_destroy)(p(event)) })
    }
    fn module_load(&self, image: &[u8]) -> CuResult<(u64, Vec<LoadedFunction>)> {
        let mut m = std::ptr::null_mut();
        ok(unsafe { (self.driver.module_load_data)(&mut m, image.as_ptr() as *const c_void) })?;
        let mut count = 0u32;
        ok(unsafe { (self.driver.module_get_function_count)(&mut count, m) })?;
        let mut handles = vec![std::ptr::null_mut(); count as usize];
        ok(unsafe { (self.driver.module_enumerate_functions)(handles.as_mut_ptr(), count, m) })?;
        let functions = handles
            .into_iter()
            .map(|f| {
                let mut name = std::ptr::null();
                unsafe { (self.driver.func_get_name)(&mut name, f) };
                // Attributes are left for FuncGetAttributes: querying them here would load every kernel of
                // the module, which the driver otherwise does lazily.
                let info = self.function_info(
                    cstr_name(name),
                    |i, off, size| unsafe { (self.driver.func_get_param_info)(f, i, off, size) },
                    |_| Err(CUDA_ERROR_NOT_READY),
                );
                LoadedFunction { info, handle: h(f) }
            })
            .collect();
        Ok((h(m), functions))
    }
    fn module_unload(&self, module: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.module_unload)(p(module)) })
    }
    fn module_get_global(&self, module: u64, name: &CStr) -> CuResult<(u64, u64)> {
        let (mut d, mut size) = (0u64, 0usize);
        ok(unsafe { (self.driver.module_get_global)(&mut d, &mut size, p(module), name.as_ptr()) })?;
        Ok((d, size as u64))
    }
    fn library_load(&self, image: &[u8], device: i32) -> CuResult<(u64, Vec<LoadedFunction>)> {
        let mut l = std::ptr::null_mut();
        let null = std::ptr::null_mut();
        ok(unsafe {
            (self.driver.library_load_data)(&mut l, image.as_ptr() as *const c_void, null, null, 0, null, null, 0)
        })?;
        // Without a current context the driver cannot answer parameter queries, and a launch needs the layout.
        // The app makes the primary context current right after (the runtime loads libraries with `__managed__`
        // variables first): retain it now, for the worker's life, and borrow it on this thread for the queries.
        let mut current = std::ptr::null_mut();
        unsafe { (self.driver.ctx_get_current)(&mut current) };
        let borrowed = current.is_null() && {
            let mut primary = std::ptr::null_mut();
            let retained = unsafe { (self.driver.primary_ctx_retain)(&mut primary, device) };
            retained == CUDA_SUCCESS && unsafe { (self.driver.ctx_set_current)(primary) } == CUDA_SUCCESS
        };
        let mut count = 0u32;
        ok(unsafe { (self.driver.library_get_kernel_count)(&mut count, l) })?;
        let mut handles = vec![std::ptr::null_mut(); count as usize];
        ok(unsafe { (self.driver.library_enumerate_kernels)(handles.as_mut_ptr(), count, l) })?;
        let kernels = handles
            .into_iter()
            .map(|k| {
                let mut name = std::ptr::null();
                unsafe { (self.driver.kernel_get_name)(&mut name, k) };
                let info = self.function_info(
                    cstr_name(name),
                    |i, off, size| unsafe { (self.driver.kernel_get_param_info)(k, i, off, size) },
                    |_| Err(CUDA_ERROR_NOT_READY),
                );
                LoadedFunction { info, handle: h(k) }
            })
            .collect();
        if borrowed {
            unsafe { (self.driver.ctx_set_current)(std::ptr::null_mut()) };
        }
        Ok((h(l), kernels))
    }
    fn library_unload(&self, library: u64) -> CuResult<()> {
        ok(unsafe { (self.driver.library_unload)(p(library)) })
    }
    fn library_get_global(&self, library: u64, name: &CStr) -> CuResult<(u64, u64)> {
        let (mut d, mut size) = (0u64, 0usize);
        ok(unsafe { (self.driver.library_get_global)(&mut d, &mut size, p(library), name.as_ptr()) })?;
        Ok((d, size as u64))
    }
    fn func_attributes(&self, function: u64, is_kernel: bool) -> CuResult<[i32; FUNC_ATTR_COUNT]> {
        let dev = self.current_device();
        if !is_kernel {
            // Functions enumerated from a lazily loaded module answer attribute queries with
            // CUDA_ERROR_FUNCTION_NOT_LOADED until loaded; the app's own cuModuleGetFunction handle would not.
            // SAFETY: a function handle this session's module load produced.
            let _ = unsafe { (self.driver.func_load)(p(function)) };
        }
        let mut attrs = [i32::MIN; FUNC_ATTR_COUNT];
        for (i, a) in attrs.iter_mut().enumerate() {
            let mut v = 0;
            let r = if is_kernel {
                unsafe { (self.driver.kernel_get_attribute)(&mut v, i as c_int, p(function), dev) }
            } else {
                unsafe { (self.driver.func_get_attribute)(&mut v, i as c_int, p(function)) }
            };
            if r == CUDA_SUCCESS {
                *a = v;
            } else if i == 0 {
                // The first attribute failing means the function itself is unusable: report the driver's error.
                return Err(r);
            }
        }
        Ok(attrs)
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
        // CU_LAUNCH_ATTRIBUTE_COOPERATIVE (2) and CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION (4).
        let mut attrs = Vec::new();
        if cooperative {
            let mut value = [0u32; 16];
            value[0] = 1;
            attrs.push(LaunchAttribute { id: 2, _pad: 0, value });
        }
        if cluster.iter().any(|&c| c > 1) {
            let mut value = [0u32; 16];
            value[..3].copy_from_slice(&cluster);
            attrs.push(LaunchAttribute { id: 4, _pad: 0, value });
        }
        let config = LaunchConfig {
            grid,
            block,
            shared_mem,
            stream: p(stream),
            attrs: attrs.as_ptr(),
            num_attrs: attrs.len() as c_uint,
        };
        let mut ptrs: Vec<*mut c_void> = params
            .iter()
            .map(|&(offset, _)| args.as_mut_ptr().wrapping_add(offset as usize) as *mut c_void)
            .collect();
        let kp = if params.is_empty() {
            std::ptr::null_mut()
        } else {
            ptrs.as_mut_ptr()
        };
        // SAFETY: config and its attributes live across the call; kernelParams points into `args`, packed at
        // the offsets of the function's own parameter layout; the function handle is this session's.
        ok(unsafe { (self.driver.launch_kernel_ex)(&config, p(function), kp, std::ptr::null_mut()) })
    }
    fn occupancy_active_blocks(
        &self,
        function: u64,
        is_kernel: bool,
        block_size: i32,
        dynamic_smem: u64,
        flags: u32,
    ) -> CuResult<i32> {
        let f = self.occupancy_function(function, is_kernel)?;
        let mut n = 0;
        // SAFETY: the driver writes one int; f is a function of this session.
        ok(unsafe { (self.driver.occupancy_active_blocks)(&mut n, p(f), block_size, dynamic_smem as usize, flags) })?;
        Ok(n)
    }
    fn occupancy_potential_block_size(
        &self,
        function: u64,
        is_kernel: bool,
        dynamic_smem: u64,
        smem_by_block_table: Option<&[u64]>,
        block_limit: i32,
        flags: u32,
    ) -> CuResult<(i32, i32)> {
        let f = self.occupancy_function(function, is_kernel)?;
        let callback = smem_by_block_table.map(|t| {
            SMEM_BY_BLOCK.with(|s| *s.borrow_mut() = t.to_vec());
            smem_by_block as extern "C" fn(c_int) -> usize
        });
        let (mut grid, mut block) = (0, 0);
        // SAFETY: the driver writes two ints; the callback reads this thread's table, set just above.
        ok(unsafe {
            (self.driver.occupancy_potential_block_size)(
                &mut grid,
                &mut block,
                p(f),
                callback,
                dynamic_smem as usize,
                block_limit,
                flags,
            )
        })?;
        Ok((grid, block))
    }
    fn occupancy_available_smem(
        &self,
        function: u64,
        is_kernel: bool,
        num_blocks: i32,
        block_size: i32,
    ) -> CuResult<u64> {
        let f = self.occupancy_function(function, is_kernel)?;
        let mut n = 0usize;
        // SAFETY: the driver writes one size_t.
        ok(unsafe { (self.driver.occupancy_available_smem)(&mut n, p(f), num_blocks, block_size) })?;
        Ok(n as u64)
    }
    fn occupancy_clusters(
        &self,
        function: u64,
        is_kernel: bool,
        shape: vgpu_dataplane::wire::LaunchShape,
        potential_size: bool,
    ) -> CuResult<i32> {
        let f = self.occupancy_function(function, is_kernel)?;
        let mut value = [0u32; 16];
        value[..3].copy_from_slice(&shape.cluster);
        let attrs = [LaunchAttribute { id: 4, _pad: 0, value }];
        let config = LaunchConfig {
            grid: shape.grid,
            block: shape.block,
            shared_mem: shape.shared_mem,
            stream: std::ptr::null_mut(),
            attrs: attrs.as_ptr(),
            num_attrs: if shape.cluster == [0, 0, 0] { 0 } else { 1 },
        };
        let mut n = 0;
        // SAFETY: config and its attribute live across the call; the driver writes one int.
        ok(unsafe {
            if potential_size {
                (self.driver.occupancy_max_cluster_size)(&mut n, p(f), &config)
            } else {
                (self.driver.occupancy_max_active_clusters)(&mut n, p(f), &config)
            }
        })?;
        Ok(n)
    }
    fn host_mirror_map(&self, addr: u64, size: u64) -> CuResult<u64> {
        let len = size as usize;
        // SAFETY: an anonymous private mapping at a fixed address that must be free (MAP_FIXED_NOREPLACE never
        // replaces an existing mapping); nothing else in this process refers to that range.
        let ptr = unsafe {
            libc::mmap(
                addr as *mut c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED || ptr as u64 != addr {
            if ptr != libc::MAP_FAILED {
                // SAFETY: the mapping just made (at another address, by an old kernel ignoring the flag).
                unsafe { libc::munmap(ptr, len) };
            }
            return Err(CUDA_ERROR_ALREADY_MAPPED);
        }
        // CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP.
        // SAFETY: the range was mapped just above and stays mapped until host_mirror_unmap.
        let registered = ok(unsafe { (self.driver.mem_host_register)(ptr, len, 0x3) });
        let mut dptr = 0u64;
        let mapped = registered
            // SAFETY: the range is registered; the driver writes one device pointer.
            .and_then(|_| ok(unsafe { (self.driver.mem_host_get_device_pointer)(&mut dptr, ptr, 0) }));
        if let Err(e) = mapped {
            // SAFETY: undoing the registration (if it happened) and the mapping made above.
            unsafe {
                if registered.is_ok() {
                    (self.driver.mem_host_unregister)(ptr);
                }
                libc::munmap(ptr, len);
            }
            return Err(e);
        }
        Ok(dptr)
    }
    fn host_mirror_unmap(&self, addr: u64, size: u64) -> CuResult<()> {
        // SAFETY: a range host_mirror_map mapped and registered; the session forgot it before calling.
        unsafe {
            let r = ok((self.driver.mem_host_unregister)(addr as P));
            libc::munmap(addr as *mut c_void, size as usize);
            r
        }
    }
    fn mem_alloc_managed(&self, size: u64, flags: u32) -> CuResult<u64> {
        let mut d = 0u64;
        // SAFETY: the driver writes one device pointer.
        ok(unsafe { (self.driver.mem_alloc_managed)(&mut d, size as usize, flags) })?;
        Ok(d)
    }
    fn library_get_managed(&self, library: u64, name: &CStr) -> CuResult<(u64, u64)> {
        let (mut d, mut size) = (0u64, 0usize);
        // SAFETY: the driver writes an address and a size; name is NUL-terminated.
        ok(unsafe { (self.driver.library_get_managed)(&mut d, &mut size, p(library), name.as_ptr()) })?;
        Ok((d, size as u64))
    }
    fn array_create(&self, shape: vgpu_dataplane::wire::ArrayShape) -> CuResult<u64> {
        let desc = Array3DDescriptor {
            width: shape.width as usize,
            height: shape.height as usize,
            depth: shape.depth as usize,
            format: shape.format,
            channels: shape.channels,
            flags: shape.flags,
        };
        let mut array = std::ptr::null_mut();
        // SAFETY: desc is a complete descriptor; the driver writes one handle.
        ok(unsafe { (self.driver.array_create)(&mut array, &desc) })?;
        Ok(h(array))
    }
    fn array_destroy(&self, array: u64) -> CuResult<()> {
        // SAFETY: an array this session created.
        ok(unsafe { (self.driver.array_destroy)(p(array)) })
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
        // CU_MEMORYTYPE_HOST 1, _DEVICE 2, _ARRAY 3. Host rows are packed (pitch = width).
        let (other_type, other_host, other_device, other_pitch, other_height) = match direction {
            0 | 1 => (1, host.as_mut_ptr() as usize, 0, region.width_bytes, region.height),
            _ => (2, 0, device, device_pitch, device_height.max(region.height)),
        };
        let mut m = Memcpy3DParams {
            width_in_bytes: region.width_bytes as usize,
            height: region.height as usize,
            depth: region.depth as usize,
            ..Default::default()
        };
        if direction == 0 || direction == 2 {
            m.src_memory_type = other_type;
            m.src_host = other_host;
            m.src_device = other_device;
            m.src_pitch = other_pitch as usize;
            m.src_height = other_height as usize;
            m.dst_memory_type = 3;
            m.dst_array = array as usize;
            m.dst_x_in_bytes = region.x_bytes as usize;
            m.dst_y = region.y as usize;
            m.dst_z = region.z as usize;
        } else {
            m.dst_memory_type = other_type;
            m.dst_host = other_host;
            m.dst_device = other_device;
            m.dst_pitch = other_pitch as usize;
            m.dst_height = other_height as usize;
            m.src_memory_type = 3;
            m.src_array = array as usize;
            m.src_x_in_bytes = region.x_bytes as usize;
            m.src_y = region.y as usize;
            m.src_z = region.z as usize;
        }
        // SAFETY: the host side is `host`, sized by the session to the packed box; the device side was
        // checked against the session's ranges; the array is this session's.
        ok(unsafe { (self.driver.memcpy_3d)(&m) })
    }
    fn tex_object_create(&self, surface: bool, resource: &[u8], texture: &[u8], view: Option<&[u8]>) -> CuResult<u64> {
        let (res, tex) = (words(resource), words(texture));
        let view = view.map(words);
        let mut object = 0u64;
        // SAFETY: the descriptors are complete copies of the app's (sizes checked by the session), 8-byte
        // aligned; the driver writes one object value.
        ok(unsafe {
            if surface {
                (self.driver.surf_object_create)(&mut object, res.as_ptr())
            } else {
                let v = view.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
                (self.driver.tex_object_create)(&mut object, res.as_ptr(), tex.as_ptr(), v)
            }
        })?;
        Ok(object)
    }
    fn object_destroy(&self, object: u64, surface: bool) -> CuResult<()> {
        // SAFETY: an object this session created.
        ok(unsafe {
            if surface {
                (self.driver.surf_object_destroy)(object)
            } else {
                (self.driver.tex_object_destroy)(object)
            }
        })
    }
    fn ctx_get_limit(&self, limit: u32) -> CuResult<u64> {
        let mut v = 0usize;
        // SAFETY: the driver writes one size_t.
        ok(unsafe { (self.driver.ctx_get_limit)(&mut v, limit) })?;
        Ok(v as u64)
    }
    fn ctx_set_limit(&self, limit: u32, value: u64) -> CuResult<()> {
        // SAFETY: plain values.
        ok(unsafe { (self.driver.ctx_set_limit)(limit, value as usize) })
    }
    fn mem_pool_create(&self, dev: i32, max_size: u64) -> CuResult<u64> {
        // CU_MEM_ALLOCATION_TYPE_PINNED on CU_MEM_LOCATION_TYPE_DEVICE `dev`.
        let props = MemPoolProps {
            alloc_type: 1,
            handle_types: 0,
            location_type: 1,
            location_id: dev,
            win32_security_attributes: std::ptr::null_mut(),
            max_size: max_size as usize,
            usage: 0,
            reserved: [0; 54],
        };
        let mut pool = std::ptr::null_mut();
        // SAFETY: props is a complete CUmemPoolProps; the driver writes one handle.
        ok(unsafe { (self.driver.mem_pool_create)(&mut pool, &props) })?;
        Ok(h(pool))
    }
    fn mem_pool_destroy(&self, pool: u64) -> CuResult<()> {
        // SAFETY: a pool handle this session created.
        ok(unsafe { (self.driver.mem_pool_destroy)(p(pool)) })
    }
    fn default_mem_pool(&self, dev: i32) -> CuResult<u64> {
        let mut pool = std::ptr::null_mut();
        // SAFETY: the driver writes one handle.
        ok(unsafe { (self.driver.device_get_default_mem_pool)(&mut pool, dev) })?;
        Ok(h(pool))
    }
    fn mem_alloc_async(&self, size: u64, pool: u64, stream: u64) -> CuResult<u64> {
        let mut dptr = 0u64;
        // SAFETY: the driver writes one device pointer; pool and stream are this session's handles.
        ok(unsafe { (self.driver.mem_alloc_from_pool_async)(&mut dptr, size as usize, p(pool), p(stream)) })?;
        Ok(dptr)
    }
    fn mem_free_async(&self, dptr: u64, stream: u64) -> CuResult<()> {
        // SAFETY: an allocation of this session (the session checked) and its stream.
        ok(unsafe { (self.driver.mem_free_async)(dptr, p(stream)) })
    }
    fn mem_pool_get_attribute(&self, pool: u64, attr: u32) -> CuResult<u64> {
        // The reuse attributes (1..=3) are ints; the sizes (4..=8) 64-bit.
        let mut value = 0u64;
        // SAFETY: the driver writes at most 8 bytes into value.
        ok(unsafe { (self.driver.mem_pool_get_attribute)(p(pool), attr, &mut value as *mut u64 as *mut c_void) })?;
        Ok(if (1..=3).contains(&attr) {
            value & 0xffff_ffff
        } else {
            value
        })
    }
    fn mem_pool_set_attribute(&self, pool: u64, attr: u32, value: u64) -> CuResult<()> {
        let mut wide = value;
        let mut narrow = value as c_int;
        let ptr = if (1..=3).contains(&attr) {
            &mut narrow as *mut c_int as *mut c_void
        } else {
            &mut wide as *mut u64 as *mut c_void
        };
        // SAFETY: ptr points at a value of the width the attribute takes.
        ok(unsafe { (self.driver.mem_pool_set_attribute)(p(pool), attr, ptr) })
    }
    fn mem_pool_trim_to(&self, pool: u64, min_bytes: u64) -> CuResult<()> {
        // SAFETY: a pool handle of this session.
        ok(unsafe { (self.driver.mem_pool_trim_to)(p(pool), min_bytes as usize) })
    }
    fn mem_granularity(&self, prop: &MemAllocProp, option: u32) -> CuResult<u64> {
        let prop = AllocationProp::from_wire(prop);
        let mut g = 0usize;
        // SAFETY: prop is a complete CUmemAllocationProp with a NULL win32 pointer; the driver writes one size_t.
        ok(unsafe { (self.driver.mem_get_allocation_granularity)(&mut g, &prop, option) })?;
        Ok(g as u64)
    }
    fn mem_address_reserve(&self, size: u64, alignment: u64, addr: u64, flags: u64) -> CuResult<u64> {
        let mut ptr = 0u64;
        // SAFETY: plain values; the driver writes one device address.
        ok(unsafe { (self.driver.mem_address_reserve)(&mut ptr, size as usize, alignment as usize, addr, flags) })?;
        Ok(ptr)
    }
    fn mem_address_free(&self, ptr: u64, size: u64) -> CuResult<()> {
        // SAFETY: a reservation of this session (the session checked it, and that it has no mapping left).
        ok(unsafe { (self.driver.mem_address_free)(ptr, size as usize) })
    }
    fn mem_create(&self, size: u64, prop: &MemAllocProp, flags: u64) -> CuResult<u64> {
        let prop = AllocationProp::from_wire(prop);
        let mut handle = 0u64;
        // SAFETY: prop is a complete CUmemAllocationProp with a NULL win32 pointer; the driver writes one handle.
        ok(unsafe { (self.driver.mem_create)(&mut handle, size as usize, &prop, flags) })?;
        Ok(handle)
    }
    fn mem_release(&self, handle: u64) -> CuResult<()> {
        // SAFETY: a handle of this session with a reference left (the session counts them).
        ok(unsafe { (self.driver.mem_release)(handle) })
    }
    fn mem_map(&self, ptr: u64, size: u64, offset: u64, handle: u64, flags: u64) -> CuResult<()> {
        // SAFETY: the session checked that the range lies in one of its reservations, unmapped, and that the
        // handle is its own.
        ok(unsafe { (self.driver.mem_map)(ptr, size as usize, offset as usize, handle, flags) })
    }
    fn mem_unmap(&self, ptr: u64, size: u64) -> CuResult<()> {
        // SAFETY: the session checked that the range is exactly some of its mappings.
        ok(unsafe { (self.driver.mem_unmap)(ptr, size as usize) })
    }
    fn mem_set_access(&self, ptr: u64, size: u64, descs: &[MemAccessDesc]) -> CuResult<()> {
        // SAFETY: MemAccessDesc has CUmemAccessDesc's layout; the driver reads `descs.len()` of them.
        ok(unsafe { (self.driver.mem_set_access)(ptr, size as usize, descs.as_ptr(), descs.len()) })
    }
    fn mem_get_access(&self, location_type: u32, location_id: i32, ptr: u64) -> CuResult<u64> {
        // CUmemLocation: type, id.
        let location = [location_type, location_id as u32];
        let mut flags = 0u64;
        // SAFETY: location has CUmemLocation's layout; the driver writes one unsigned long long.
        ok(unsafe { (self.driver.mem_get_access)(&mut flags, &location, ptr) })?;
        Ok(flags)
    }
    fn mem_allocation_properties(&self, handle: u64) -> CuResult<MemAllocProp> {
        let mut prop = AllocationProp::from_wire(&MemAllocProp::default());
        // SAFETY: the driver fills one CUmemAllocationProp.
        ok(unsafe { (self.driver.mem_get_allocation_properties)(&mut prop, handle) })?;
        Ok(prop.to_wire())
    }
    fn mem_retain_allocation_handle(&self, addr: u64) -> CuResult<u64> {
        let mut handle = 0u64;
        // SAFETY: the driver only looks the address up (the session checked it is one of its mappings) and
        // writes one handle.
        ok(unsafe { (self.driver.mem_retain_allocation_handle)(&mut handle, addr as P) })?;
        Ok(handle)
    }
    fn func_set_attribute(&self, function: u64, is_kernel: bool, attrib: i32, value: i32) -> CuResult<()> {
        ok(if is_kernel {
            let dev = self.current_device();
            // SAFETY: plain values and a kernel handle this session's library load produced.
            unsafe { (self.driver.kernel_set_attribute)(attrib, value, p(function), dev) }
        } else {
            // SAFETY: plain values and a function handle this session's module load produced.
            unsafe { (self.driver.func_set_attribute)(p(function), attrib, value) }
        })
    }
    fn export_table_first_word(&self, uuid: &[u8; 16]) -> CuResult<u64> {
        let mut table: *const u64 = std::ptr::null();
        // SAFETY: cuGetExportTable writes one pointer through its first argument and reads 16 bytes of UUID.
        ok(unsafe { (self.driver.get_export_table)(&mut table, uuid.as_ptr()) })?;
        if table.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: a table the driver hands out starts with at least one readable word.
        Ok(unsafe { table.read() })
    }
    fn lookup(&self, module: u64, is_library: bool, name: &CStr) -> CuResult<()> {
        let mut out = std::ptr::null_mut();
        let r = if is_library {
            unsafe { (self.driver.library_get_kernel)(&mut out, p(module), name.as_ptr()) }
        } else {
            unsafe { (self.driver.module_get_function)(&mut out, p(module), name.as_ptr()) }
        };
        match r {
            CUDA_SUCCESS => Err(CUDA_ERROR_NOT_FOUND),
            e => Err(e),
        }
    }
    fn memcpy_2d_async(&self, src: Place<'_>, dst: Place<'_>, width: u64, height: u64, stream: u64) -> CuResult<()> {
        let mut m = Memcpy2DParams {
            width_in_bytes: width as usize,
            height: height as usize,
            ..Default::default()
        };
        match src {
            Place::Host(buf, pitch) => {
                m.src_memory_type = MEMORYTYPE_HOST;
                m.src_host = buf.ptr as usize;
                m.src_pitch = pitch as usize;
            }
            Place::Device(addr, pitch) => {
                m.src_memory_type = MEMORYTYPE_DEVICE;
                m.src_device = addr;
                m.src_pitch = pitch as usize;
            }
        }
        match dst {
            Place::Host(buf, pitch) => {
                m.dst_memory_type = MEMORYTYPE_HOST;
                m.dst_host = buf.ptr as usize;
                m.dst_pitch = pitch as usize;
            }
            Place::Device(addr, pitch) => {
                m.dst_memory_type = MEMORYTYPE_DEVICE;
                m.dst_device = addr;
                m.dst_pitch = pitch as usize;
            }
        }
        ok(unsafe { (self.driver.memcpy_2d_async)(&m, p(stream)) })
    }
    fn kernel_get_function(&self, kernel: u64) -> CuResult<u64> {
        let mut f = std::ptr::null_mut();
        ok(unsafe { (self.driver.kernel_get_function)(&mut f, p(kernel)) })?;
        Ok(h(f))
    }
    fn launch(
        &self,
        function: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem: u32,
        stream: u64,
        args: &mut [u8],
        params: &[(u32, u32)],
    ) -> CuResult<()> {
        // kernelParams: one pointer per parameter, into the packed buffer at that parameter's offset.
        let mut ptrs: smallvec_like::PtrVec = smallvec_like::PtrVec::new();
        for &(offset, _) in params {
            ptrs.push(args.as_mut_ptr().wrapping_add(offset as usize) as *mut c_void);
        }
        let kp = if params.is_empty() {
            std::ptr::null_mut()
        } else {
            ptrs.as_mut_ptr()
        };
        ok(unsafe {
            (self.driver.launch_kernel)(
                p(function),
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
                shared_mem,
                p(stream),
                kp,
                std::ptr::null_mut(),
            )
        })
    }
}

/// A pointer array that stays on the stack for the common case of few parameters (no allocation per launch).
mod smallvec_like {
    use std::ffi::c_void;
    const INLINE: usize = 32;
    pub struct PtrVec {
        inline: [*mut c_void; INLINE],
        len: usize,
        heap: Vec<*mut c_void>,
    }
    impl PtrVec {
        pub fn new() -> Self {
            PtrVec {
                inline: [std::ptr::null_mut(); INLINE],
                len: 0,
                heap: Vec::new(),
            }
        }
        pub fn push(&mut self, p: *mut c_void) {
            if self.len < INLINE {
                self.inline[self.len] = p;
            } else {
                if self.heap.is_empty() {
                    self.heap.extend_from_slice(&self.inline);
                }
                self.heap.push(p);
            }
            self.len += 1;
        }
        pub fn as_mut_ptr(&mut self) -> *mut *mut c_void {
            if self.len <= INLINE {
                self.inline.as_mut_ptr()
            } else {
                self.heap.as_mut_ptr()
            }
        }
    }
}
