//! The boundary with C: the caller's pointers (NCCL's out-parameters and strings) and the functions of vGPU's
//! `libcuda.so.1` this library calls, found with `dlopen`/`dlsym`. Every unsafe operation of this library is here.

use std::ffi::{c_char, c_int, CStr};
use std::sync::OnceLock;

use vgpu_cuda_sys::driver::{CUcontext, CUdevice, CUdeviceptr, CUstream};
use vgpu_cuda_sys::DriverLibrary;

use vgpu_dataplane::coll::CollDesc;

/// A CUDA driver call's result code: 0 is success.
pub type CuResult = u32;

/// vGPU's `libcuda.so.1`: the driver entry points this library calls (cuda.h's, through `vgpu-cuda-sys`) and the
/// collective bridge (`client-shim/src/coll_bridge.rs`).
pub struct Cuda {
    driver: DriverLibrary,
    device_server: DeviceServer,
    run: Run,
}

// own ABI: vGPU's `vgpu_coll_*` exports (coll_bridge.rs), declared by no header.
type Version = extern "C" fn() -> u32;
// own ABI: as above.
type DeviceServer = extern "C" fn(c_int, *mut c_char, usize, *mut u64) -> CuResult;
// own ABI: as above.
type Run = extern "C" fn(*const CollDesc, *const c_char) -> CuResult;

/// The bridge version this library speaks (`client-shim/src/coll_bridge.rs`).
const COLL_BRIDGE_VERSION: u32 = 1;

/// vGPU's CUDA library, loaded once: `Err` says why NCCL cannot run (another `libcuda.so.1`, another version).
pub fn cuda() -> Result<&'static Cuda, String> {
    static CUDA: OnceLock<Result<Cuda, String>> = OnceLock::new();
    CUDA.get_or_init(open).as_ref().map_err(Clone::clone)
}

fn open() -> Result<Cuda, String> {
    let driver = DriverLibrary::load_any("libcuda.so.1")
        .map_err(|e| format!("no libcuda.so.1 can be loaded ({e}): vGPU's NCCL runs only under vGPU (`vgpu run`)"))?;
    let lib = driver.library();
    macro_rules! find {
        ($sym:literal: $ty:ty) => {{
            // SAFETY: vGPU's libcuda.so.1 exports this symbol with the signature `$ty` declares (coll_bridge.rs,
            // same build: the bridge version is checked below).
            match unsafe { lib.get::<$ty>(concat!($sym, "\0").as_bytes()) } {
                Ok(f) => *f,
                Err(_) => {
                    return Err(format!(
                        "the libcuda.so.1 loaded is not vGPU's (it lacks {}): vGPU's NCCL runs only under vGPU",
                        $sym
                    ))
                }
            }
        }};
    }
    let version = find!("vgpu_coll_bridge_version": Version);
    if version() != COLL_BRIDGE_VERSION {
        return Err(format!(
            "vGPU's libcuda.so.1 speaks collective bridge version {}, this libnccl.so.2 {COLL_BRIDGE_VERSION}: \
             use the two libraries of one build",
            version()
        ));
    }
    let device_server = find!("vgpu_coll_device_server": DeviceServer);
    let run = find!("vgpu_coll_run": Run);
    Ok(Cuda {
        driver,
        device_server,
        run,
    })
}

impl Cuda {
    /// `vgpu_coll_device_server`: device `device`'s server endpoint and this process's session there.
    pub fn device_server(&self, device: c_int) -> Result<(String, u64), CuResult> {
        let mut text = [0u8; 1024];
        let mut session = 0u64;
        let r = (self.device_server)(device, text.as_mut_ptr().cast(), text.len(), &mut session);
        if r != 0 {
            return Err(r);
        }
        let len = text.iter().position(|b| *b == 0).unwrap_or(text.len());
        Ok((String::from_utf8_lossy(&text[..len]).into_owned(), session))
    }

    /// `vgpu_coll_run`: `desc` sent to its device's server; `peer` the endpoint of the rank it sends to.
    pub fn run(&self, desc: &CollDesc, peer: Option<&CStr>) -> CuResult {
        (self.run)(desc, peer.map_or(std::ptr::null(), CStr::as_ptr))
    }

    pub fn ctx_get_device(&self) -> Result<c_int, CuResult> {
        let mut device: CUdevice = -1;
        // SAFETY: an out-parameter on the stack.
        let r = unsafe { self.driver.cuCtxGetDevice(&mut device) };
        if r.0 == 0 {
            Ok(device)
        } else {
            Err(r.0)
        }
    }

    /// `mem_alloc` in device `device`'s primary context, whichever context is current (a process driving several
    /// devices allocates each communicator's scratch on its own device); the current context is restored.
    pub fn mem_alloc_on(&self, device: c_int, bytes: usize) -> Result<u64, CuResult> {
        if self.ctx_get_device() == Ok(device) {
            return self.mem_alloc(bytes);
        }
        let mut ctx: CUcontext = std::ptr::null_mut();
        // SAFETY: an out-parameter on the stack. The retain is kept: releasing what may be the last reference would
        // free the scratch with the context.
        let r = unsafe { self.driver.cuDevicePrimaryCtxRetain(&mut ctx, device) };
        if r.0 != 0 {
            return Err(r.0);
        }
        // SAFETY: a context the driver just returned.
        let pushed = unsafe { self.driver.cuCtxPushCurrent_v2(ctx) };
        let result = if pushed.0 == 0 {
            self.mem_alloc(bytes)
        } else {
            Err(pushed.0)
        };
        let mut popped: CUcontext = std::ptr::null_mut();
        if pushed.0 == 0 {
            // SAFETY: pops the context pushed above.
            unsafe { self.driver.cuCtxPopCurrent_v2(&mut popped) };
        }
        result
    }

    pub fn mem_alloc(&self, bytes: usize) -> Result<u64, CuResult> {
        let mut ptr: CUdeviceptr = 0;
        // SAFETY: an out-parameter on the stack.
        let r = unsafe { self.driver.cuMemAlloc_v2(&mut ptr, bytes) };
        if r.0 == 0 {
            Ok(ptr)
        } else {
            Err(r.0)
        }
    }

    /// A synchronous copy of `data` to device address `dst`.
    pub fn memcpy_htod(&self, dst: u64, data: &[u8]) -> CuResult {
        // SAFETY: `data` is readable for its length; the driver checks the device range.
        unsafe { self.driver.cuMemcpyHtoD_v2(dst, data.as_ptr().cast(), data.len()) }.0
    }

    /// A synchronous copy of `out.len()` bytes from device address `src` (after the legacy stream's work).
    pub fn memcpy_dtoh(&self, out: &mut [u8], src: u64) -> CuResult {
        // SAFETY: `out` is writable for its length; the driver checks the device range.
        unsafe { self.driver.cuMemcpyDtoH_v2(out.as_mut_ptr().cast(), src, out.len()) }.0
    }

    pub fn mem_free(&self, ptr: u64) -> CuResult {
        // SAFETY: device memory this library or the app allocated; the driver checks the address.
        unsafe { self.driver.cuMemFree_v2(ptr) }.0
    }

    pub fn memcpy_dtod_async(&self, dst: u64, src: u64, bytes: usize, stream: u64) -> CuResult {
        // SAFETY: device addresses and a stream handle the app passed to NCCL; the driver checks them.
        unsafe {
            self.driver
                .cuMemcpyDtoDAsync_v2(dst, src, bytes, stream as usize as CUstream)
        }
        .0
    }
}

/// Writes `value` through an out-parameter; `false` for NULL.
pub fn write<T>(ptr: *mut T, value: T) -> bool {
    if ptr.is_null() {
        return false;
    }
    // SAFETY: NCCL's API makes a non-NULL out-parameter point to writable storage for a T.
    unsafe { ptr.write_unaligned(value) };
    true
}

/// Writes `value` as element `index` of the caller's array; `false` for NULL.
pub fn write_at<T>(array: *mut T, index: usize, value: T) -> bool {
    if array.is_null() {
        return false;
    }
    // SAFETY: NCCL's API makes an output array hold as many elements as the count passed with it (`index` is below).
    unsafe { array.add(index).write_unaligned(value) };
    true
}

/// Reads `n` elements of a caller's array; `None` for NULL.
pub fn read_array<T: Copy>(array: *const T, n: usize) -> Option<Vec<T>> {
    if array.is_null() {
        return None;
    }
    // SAFETY: NCCL's API makes an input array hold as many elements as the count passed with it.
    Some((0..n).map(|i| unsafe { array.add(i).read_unaligned() }).collect())
}

/// Reads a value the caller points to; `None` for NULL.
pub fn read<T: Copy>(ptr: *const T) -> Option<T> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: NCCL's API makes this pointer valid for a read of T.
    Some(unsafe { ptr.read_unaligned() })
}

/// The comm a handle names: handles are `Box<Comm>`s this library made (`into_raw`), live until destroyed.
pub fn comm<'a, T>(handle: *mut T) -> Option<&'a T> {
    // SAFETY: a non-NULL communicator handle is one this library returned and the app has not destroyed (NCCL's
    // API contract: using a destroyed communicator is undefined there too).
    unsafe { handle.as_ref() }
}

/// Takes back a handle made by `Box::into_raw` (destroy/abort).
pub fn take<T>(handle: *mut T) -> Option<Box<T>> {
    if handle.is_null() {
        return None;
    }
    // SAFETY: as `comm`; the app hands a communicator to destroy or abort once.
    Some(unsafe { Box::from_raw(handle) })
}
