//! The real backend: NVIDIA's `libcuda.so.1`, loaded at run time so the server builds and starts anywhere.
//! Calls are forwarded verbatim; this file only converts between raw handles and the driver's types.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::{DeviceFacts, BACKEND_REAL, DEVICE_ATTR_SLOTS};
use vgpu_dataplane::wire::{FunctionInfo, FUNC_ATTR_COUNT};

use crate::backend::{Backend, CuResult, HostBuffer, LoadedFunction, Place};

type P = *mut c_void;

macro_rules! driver_table {
    ($( $field:ident = $sym:literal : fn($($arg:ty),*); )*) => {
        /// Entry points of the real driver this server uses, resolved once at start-up.
        #[allow(non_snake_case)]
        struct Driver {
            _lib: libloading::Library,
            $( $field: unsafe extern "C" fn($($arg),*) -> u32, )*
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
                    let $field = *unsafe { lib.get::<unsafe extern "C" fn($($arg),*) -> u32>(concat!($sym, "\0").as_bytes()) }
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
    ctx_synchronize = "cuCtxSynchronize": fn();
    mem_alloc = "cuMemAlloc_v2": fn(*mut u64, usize);
    mem_alloc_pitch = "cuMemAllocPitch_v2": fn(*mut u64, *mut usize, usize, usize, c_uint);
    mem_free = "cuMemFree_v2": fn(u64);
    mem_get_info = "cuMemGetInfo_v2": fn(*mut usize, *mut usize);
    mem_host_alloc = "cuMemHostAlloc": fn(*mut P, usize, c_uint);
    mem_free_host = "cuMemFreeHost": fn(P);
    mem_host_register = "cuMemHostRegister_v2": fn(P, usize, c_uint);
    mem_host_unregister = "cuMemHostUnregister": fn(P);
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
    launch_kernel = "cuLaunchKernel": fn(P, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, P, *mut *mut c_void, *mut *mut c_void);
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

fn ok(code: u32) -> CuResult<()> {
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
        param: impl Fn(usize, &mut usize, &mut usize) -> u32,
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

    // SAFETY (every call in this impl): a documented driver entry point, called with handles the session
    // obtained from this driver and with out-pointers to locals or host buffers sized by the caller.
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
        // CU_MEMHOSTREGISTER_PORTABLE: usable from every context the session creates.
        // SAFETY: ptr..ptr+len is a live shared mapping the session owns until it unregisters it.
        ok(unsafe { (self.driver.mem_host_register)(ptr as P, len, 1) })
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
    fn library_load(&self, image: &[u8]) -> CuResult<(u64, Vec<LoadedFunction>)> {
        let mut l = std::ptr::null_mut();
        let null = std::ptr::null_mut();
        ok(unsafe {
            (self.driver.library_load_data)(&mut l, image.as_ptr() as *const c_void, null, null, 0, null, null, 0)
        })?;
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
