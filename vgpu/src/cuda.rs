//! A minimal driver-API binding for the bundled sample and the benchmark probe, loaded at run time so the
//! same code runs on NVIDIA's driver (native) or on vGPU's shim, whichever `libcuda.so.1` the loader finds.
//! Every entry point is cuda.h's own (through `vgpu-cuda-sys`); this file only adds error text and helpers.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ops::Deref;

use vgpu_cuda_sys::driver::{CUfunction, CUresult};
use vgpu_cuda_sys::DriverLibrary;

pub struct Cuda {
    lib: DriverLibrary,
}

impl Deref for Cuda {
    type Target = DriverLibrary;
    fn deref(&self) -> &DriverLibrary {
        &self.lib
    }
}

impl Cuda {
    /// Loads `libcuda.so.1` as the dynamic loader resolves it (LD_LIBRARY_PATH decides native vs vGPU).
    pub fn load() -> Result<Cuda, String> {
        let lib = DriverLibrary::load_any("libcuda.so.1").map_err(|e| e.to_string())?;
        lib.require(&[
            "cuInit",
            "cuDevicePrimaryCtxRetain",
            "cuMemAlloc_v2",
            "cuModuleLoadData",
            "cuLaunchKernel",
        ])
        .map_err(|e| e.to_string())?;
        Ok(Cuda { lib })
    }

    /// Turns a CUresult into `Err("<what>: CUDA_ERROR_...")`.
    pub fn check(&self, what: &str, code: CUresult) -> Result<(), String> {
        if code == CUresult::CUDA_SUCCESS {
            return Ok(());
        }
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorName writes a pointer to a static string (or NULL) into a local.
        unsafe { self.cuGetErrorName(code, &mut name) };
        let name = if name.is_null() {
            format!("CUresult {}", code.0)
        } else {
            // SAFETY: the driver returned a NUL-terminated static string.
            unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
        };
        Err(format!("{what} failed: {name}"))
    }

    /// -1 native driver; with vGPU's shim: 0 real GPU, 1 emulated backend (after cuInit).
    pub fn vgpu_backend(&self) -> i32 {
        // own ABI: vgpu_session_backend is vGPU's export, declared by no header.
        type SessionBackend = unsafe extern "C" fn() -> i32;
        // SAFETY: an optional, argument-less function only vGPU's shim exports (not a driver entry point).
        match unsafe { self.lib.library().get::<SessionBackend>(b"vgpu_session_backend\0") } {
            // SAFETY: as above; it only reads the session's state.
            Ok(f) => unsafe { f() },
            Err(_) => -2,
        }
    }

    /// vGPU's traffic counters (`vgpu_stat`: round trips, flushes, bytes, ...) by name; `None` natively or with a
    /// shim that predates them.
    pub fn vgpu_stats(&self) -> Option<Vec<(String, u64)>> {
        // SAFETY: optional functions only vGPU's shim exports, taking an index and returning a value or a pointer to
        // a static NUL-terminated name (NULL past the last).
        unsafe {
            let lib = self.lib.library();
            let stat = lib.get::<unsafe extern "C" fn(u32) -> u64>(b"vgpu_stat\0").ok()?;
            let name = lib
                .get::<unsafe extern "C" fn(u32) -> *const c_char>(b"vgpu_stat_name\0")
                .ok()?;
            let mut out = Vec::new();
            for i in 0..64u32 {
                let p = name(i);
                if p.is_null() {
                    break;
                }
                out.push((CStr::from_ptr(p).to_string_lossy().into_owned(), stat(i)));
            }
            Some(out)
        }
    }

    pub fn device_name(&self) -> String {
        let mut buf = [0 as c_char; 256];
        // SAFETY: the buffer is 256 bytes, as passed.
        unsafe { self.cuDeviceGetName(buf.as_mut_ptr(), 256, 0) };
        buf[255] = 0;
        // SAFETY: NUL-terminated within the buffer (the last byte was just set to NUL).
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    }

    /// Initialises the driver and makes device 0's primary context current.
    pub fn open_device(&self) -> Result<(), String> {
        // SAFETY (this block): documented driver calls with out-pointers to locals.
        unsafe {
            self.check("cuInit", self.cuInit(0))?;
            let mut ctx = std::ptr::null_mut();
            self.check("cuDevicePrimaryCtxRetain", self.cuDevicePrimaryCtxRetain(&mut ctx, 0))?;
            self.check("cuCtxSetCurrent", self.cuCtxSetCurrent(ctx))
        }
    }

    /// Loads PTX text and returns the named kernel.
    pub fn kernel(&self, ptx: &str, name: &str) -> Result<CUfunction, String> {
        let ptx = CString::new(ptx).map_err(|_| "PTX contains NUL")?;
        let name = CString::new(name).map_err(|_| "kernel name contains NUL")?;
        let (mut module, mut f) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: ptx and name are NUL-terminated and outlive the calls; out-pointers are locals.
        unsafe {
            self.check(
                "cuModuleLoadData",
                self.cuModuleLoadData(&mut module, ptx.as_ptr() as *const c_void),
            )?;
            self.check(
                "cuModuleGetFunction",
                self.cuModuleGetFunction(&mut f, module, name.as_ptr()),
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
