//! A minimal driver-API binding for the bundled sample and the benchmark probe, loaded at run time so the
//! same code runs on NVIDIA's driver (native) or on vGPU's shim, whichever `libcuda.so.1` the loader finds.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

pub type P = *mut c_void;

macro_rules! api {
    ($( $field:ident = $sym:literal : fn($($arg:ty),*); )*) => {
        #[allow(non_snake_case)]
        pub struct Cuda {
            lib: libloading::Library,
            $( pub $field: unsafe extern "C" fn($($arg),*) -> u32, )*
        }
        impl Cuda {
            /// Loads `libcuda.so.1` as the dynamic loader resolves it (LD_LIBRARY_PATH decides native vs vGPU).
            pub fn load() -> Result<Cuda, String> {
                // SAFETY: loading the CUDA driver (or vGPU's shim) runs only its initialisers.
                let lib = unsafe { libloading::Library::new("libcuda.so.1") }.map_err(|e| format!("cannot load libcuda.so.1: {e}"))?;
                $(
                    // SAFETY: the symbol has this signature in CUDA 13.0's cuda.h.
                    let $field = *unsafe { lib.get::<unsafe extern "C" fn($($arg),*) -> u32>(concat!($sym, "\0").as_bytes()) }
                        .map_err(|e| format!("libcuda.so.1 lacks {}: {e}", $sym))?;
                )*
                Ok(Cuda { lib, $( $field, )* })
            }
        }
    };
}

api! {
    init = "cuInit": fn(c_uint);
    device_get_count = "cuDeviceGetCount": fn(*mut c_int);
    device_get_name = "cuDeviceGetName": fn(*mut c_char, c_int, c_int);
    primary_ctx_retain = "cuDevicePrimaryCtxRetain": fn(*mut P, c_int);
    ctx_set_current = "cuCtxSetCurrent": fn(P);
    ctx_synchronize = "cuCtxSynchronize": fn();
    mem_alloc = "cuMemAlloc_v2": fn(*mut u64, usize);
    mem_free = "cuMemFree_v2": fn(u64);
    mem_get_info = "cuMemGetInfo_v2": fn(*mut usize, *mut usize);
    mem_alloc_host = "cuMemAllocHost_v2": fn(*mut P, usize);
    mem_free_host = "cuMemFreeHost": fn(P);
    memcpy_htod = "cuMemcpyHtoD_v2": fn(u64, *const c_void, usize);
    memcpy_dtoh = "cuMemcpyDtoH_v2": fn(P, u64, usize);
    memcpy_htod_async = "cuMemcpyHtoDAsync_v2": fn(u64, *const c_void, usize, P);
    memcpy_dtoh_async = "cuMemcpyDtoHAsync_v2": fn(P, u64, usize, P);
    module_load_data = "cuModuleLoadData": fn(*mut P, *const c_void);
    module_get_function = "cuModuleGetFunction": fn(*mut P, P, *const c_char);
    launch_kernel = "cuLaunchKernel": fn(P, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, P, *mut P, *mut P);
    stream_synchronize = "cuStreamSynchronize": fn(P);
    get_error_name = "cuGetErrorName": fn(u32, *mut *const c_char);
}

impl Cuda {
    /// Turns a CUresult into `Err("<what>: CUDA_ERROR_...")`.
    pub fn check(&self, what: &str, code: u32) -> Result<(), String> {
        if code == 0 {
            return Ok(());
        }
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorName writes a pointer to a static string (or NULL) into a local.
        unsafe { (self.get_error_name)(code, &mut name) };
        let name = if name.is_null() {
            format!("CUresult {code}")
        } else {
            // SAFETY: the driver returned a NUL-terminated static string.
            unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
        };
        Err(format!("{what} failed: {name}"))
    }

    /// -1 native driver; with vGPU's shim: 0 real GPU, 1 emulated backend (after cuInit).
    pub fn vgpu_backend(&self) -> i32 {
        // SAFETY: an optional, argument-less function only vGPU's shim exports.
        match unsafe { self.lib.get::<unsafe extern "C" fn() -> i32>(b"vgpu_session_backend\0") } {
            Ok(f) => unsafe { f() },
            Err(_) => -2,
        }
    }

    pub fn device_name(&self) -> String {
        let mut buf = [0 as c_char; 256];
        // SAFETY: the buffer is 256 bytes, as passed.
        unsafe { (self.device_get_name)(buf.as_mut_ptr(), 256, 0) };
        // SAFETY: the driver NUL-terminates within the buffer.
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    }

    /// Initialises the driver and makes device 0's primary context current.
    pub fn open_device(&self) -> Result<(), String> {
        // SAFETY (this block): documented driver calls with out-pointers to locals.
        unsafe {
            self.check("cuInit", (self.init)(0))?;
            let mut ctx = std::ptr::null_mut();
            self.check("cuDevicePrimaryCtxRetain", (self.primary_ctx_retain)(&mut ctx, 0))?;
            self.check("cuCtxSetCurrent", (self.ctx_set_current)(ctx))
        }
    }

    /// Loads PTX text and returns the named kernel.
    pub fn kernel(&self, ptx: &str, name: &str) -> Result<P, String> {
        let ptx = CString::new(ptx).map_err(|_| "PTX contains NUL")?;
        let name = CString::new(name).map_err(|_| "kernel name contains NUL")?;
        let (mut module, mut f) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: ptx and name are NUL-terminated and outlive the calls; out-pointers are locals.
        unsafe {
            self.check(
                "cuModuleLoadData",
                (self.module_load_data)(&mut module, ptx.as_ptr() as *const c_void),
            )?;
            self.check(
                "cuModuleGetFunction",
                (self.module_get_function)(&mut f, module, name.as_ptr()),
            )?;
        }
        Ok(f)
    }
}

/// PTX for the sample and the benchmark: an empty kernel and `y[i] = a*x[i] + y[i]`.
pub const PTX: &str = r#"
.version 7.0
.target sm_70
.address_size 64
.visible .entry empty()
{
    ret;
}
.visible .entry saxpy(
    .param .u32 saxpy_n,
    .param .f32 saxpy_a,
    .param .u64 saxpy_x,
    .param .u64 saxpy_y
)
{
    .reg .pred %p;
    .reg .f32 %f<4>;
    .reg .b32 %r<6>;
    .reg .b64 %rd<8>;
    ld.param.u32 %r1, [saxpy_n];
    ld.param.f32 %f1, [saxpy_a];
    ld.param.u64 %rd1, [saxpy_x];
    ld.param.u64 %rd2, [saxpy_y];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    setp.ge.u32 %p, %r5, %r1;
    @%p bra DONE;
    cvta.to.global.u64 %rd3, %rd1;
    cvta.to.global.u64 %rd4, %rd2;
    mul.wide.u32 %rd5, %r5, 4;
    add.s64 %rd6, %rd3, %rd5;
    add.s64 %rd7, %rd4, %rd5;
    ld.global.f32 %f2, [%rd6];
    ld.global.f32 %f3, [%rd7];
    fma.rn.f32 %f3, %f1, %f2, %f3;
    st.global.f32 [%rd7], %f3;
DONE:
    ret;
}
"#;
