//! The boundary with C: the caller's pointers (NVML's out-parameters and strings) and the bridge functions of
//! vGPU's `libcuda.so.1`, found with `dlopen`/`dlsym`. Every unsafe operation of this library is here.

use std::ffi::{c_char, c_void, CStr, CString};

use vgpu_cuda_sys::nvml::nvmlReturn_t;
use vgpu_cuda_sys::{CUresult, CuResult, NvmlResult};
use vgpu_dataplane::handshake::DeviceFacts;
use vgpu_dataplane::wire::{NvmlFieldRequest, NvmlFieldValue, NvmlPcieReply, NvmlStatusReply};

const NVML_ERROR_INVALID_ARGUMENT: nvmlReturn_t = nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT;

/// Writes `value` through an out-parameter; NULL is `NVML_ERROR_INVALID_ARGUMENT`, as in NVML.
pub(crate) fn write<T>(ptr: *mut T, value: T) -> NvmlResult<()> {
    if ptr.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: nvml.h makes a non-NULL out-parameter point to writable storage for a T.
    unsafe { ptr.write_unaligned(value) };
    Ok(())
}

/// Reads a value the caller points to (the version field of a versioned struct, an array's length).
pub(crate) fn read<T: Copy>(ptr: *const T) -> NvmlResult<T> {
    if ptr.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: nvml.h makes this pointer valid for a read of T.
    Ok(unsafe { ptr.read_unaligned() })
}

/// Writes `items` into the caller's array of at least `items.len()` elements.
pub(crate) fn write_array<T: Copy>(ptr: *mut T, items: &[T]) -> NvmlResult<()> {
    if items.is_empty() {
        return Ok(());
    }
    if ptr.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    for (i, item) in items.iter().enumerate() {
        // SAFETY: the caller said (through its count argument, checked by the caller of this function) that
        // its array holds at least `items.len()` elements.
        unsafe { ptr.add(i).write_unaligned(*item) };
    }
    Ok(())
}

/// Borrows the caller's `len`-byte string buffer.
pub(crate) fn buffer<'a>(ptr: *mut c_char, len: usize) -> NvmlResult<&'a mut [u8]> {
    if ptr.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: nvml.h makes the buffer writable for the length the caller passes with it.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) })
}

/// A NUL-terminated string argument (a UUID, a PCI bus id).
pub(crate) fn cstr<'a>(ptr: *const c_char) -> NvmlResult<&'a CStr> {
    if ptr.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: nvml.h makes these arguments NUL-terminated strings.
    Ok(unsafe { CStr::from_ptr(ptr) })
}

// own ABI: the `vgpu_nvml_*` bridge exports of vGPU's libcuda.so.1, declared by no header.
type GetU32 = extern "C" fn() -> u32;
// own ABI: bridge export.
type GetI32 = extern "C" fn() -> i32;
// own ABI: bridge export.
type InitFn = extern "C" fn() -> CUresult;
// own ABI: bridge export.
type FactsFn = extern "C" fn(u32, *mut DeviceFacts, usize) -> CUresult;
// own ABI: bridge export.
type StatusFn = extern "C" fn(u32, *mut NvmlStatusReply, usize) -> CUresult;
// own ABI: bridge export.
type TextFn = extern "C" fn(*mut c_char, usize) -> CUresult;
// own ABI: bridge export.
type PcieFn = extern "C" fn(u32, *mut NvmlPcieReply, usize) -> CUresult;
// own ABI: bridge export.
type FieldsFn = extern "C" fn(u32, usize, *const NvmlFieldRequest, *mut NvmlFieldValue, usize) -> CUresult;
// own ABI: bridge export.
type P2pFn = extern "C" fn(u32, u32, u32, *mut u32) -> CUresult;

/// The bridge functions of vGPU's `libcuda.so.1` (`client-shim/src/nvml_bridge.rs`).
pub(crate) struct Bridge {
    version: GetU32,
    init: InitFn,
    device_count: GetI32,
    cuda_driver_version: GetI32,
    device_facts: FactsFn,
    device_status: StatusFn,
    driver_version: TextFn,
    device_pcie: PcieFn,
    field_values: FieldsFn,
    p2p_status: P2pFn,
}

impl Bridge {
    /// Finds vGPU's `libcuda.so.1`: the one this process already loaded, else the one beside this library (both
    /// shims live in one folder), else the dynamic loader's choice. `Err` says why there is none.
    pub(crate) fn open() -> Result<Bridge, String> {
        let name = c"libcuda.so.1";
        // SAFETY: RTLD_NOLOAD only looks for an already-loaded library; nothing is run.
        let mut handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if handle.is_null() {
            if let Some(path) = beside_self() {
                // SAFETY: loading vGPU's CUDA shim runs only its initialisers.
                handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
            }
        }
        if handle.is_null() {
            // SAFETY: as above; whichever libcuda.so.1 the loader finds is checked for the bridge below.
            handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
        }
        if handle.is_null() {
            return Err("no libcuda.so.1 can be loaded".into());
        }
        macro_rules! find {
            ($sym:literal: $ty:ty) => {{
                // SAFETY: dlsym on a live handle with a NUL-terminated name.
                let f = unsafe { libc::dlsym(handle, concat!($sym, "\0").as_ptr() as *const c_char) };
                if f.is_null() {
                    return Err(format!(
                        "the libcuda.so.1 loaded is not vGPU's (it lacks {}): NVML has no driver",
                        $sym
                    ));
                }
                // SAFETY: vGPU's libcuda.so.1 exports this symbol with the signature of the field it fills
                // (nvml_bridge.rs, same build: the bridge version is checked next).
                unsafe { std::mem::transmute::<*mut c_void, $ty>(f) }
            }};
        }
        let bridge = Bridge {
            version: find!("vgpu_nvml_bridge_version": GetU32),
            init: find!("vgpu_nvml_init": InitFn),
            device_count: find!("vgpu_nvml_device_count": GetI32),
            cuda_driver_version: find!("vgpu_nvml_cuda_driver_version": GetI32),
            device_facts: find!("vgpu_nvml_device_facts": FactsFn),
            device_status: find!("vgpu_nvml_device_status": StatusFn),
            driver_version: find!("vgpu_nvml_driver_version": TextFn),
            device_pcie: find!("vgpu_nvml_device_pcie": PcieFn),
            field_values: find!("vgpu_nvml_field_values": FieldsFn),
            p2p_status: find!("vgpu_nvml_p2p_status": P2pFn),
        };
        match (bridge.version)() {
            3 => Ok(bridge),
            v => Err(format!(
                "vGPU's libcuda.so.1 speaks NVML bridge version {v}; this libnvidia-ml.so.1 speaks 3"
            )),
        }
    }

    /// Opens (or joins) the session; `cuInit`'s result.
    pub(crate) fn init(&self) -> CUresult {
        (self.init)()
    }

    pub(crate) fn device_count(&self) -> Option<u32> {
        u32::try_from((self.device_count)()).ok()
    }

    pub(crate) fn cuda_driver_version(&self) -> Option<i32> {
        Some((self.cuda_driver_version)()).filter(|&v| v >= 0)
    }

    pub(crate) fn device_facts(&self, index: u32) -> CuResult<DeviceFacts> {
        let mut facts = DeviceFacts::default();
        (self.device_facts)(index, &mut facts, std::mem::size_of::<DeviceFacts>()).result()?;
        Ok(facts)
    }

    pub(crate) fn device_status(&self, index: u32) -> CuResult<NvmlStatusReply> {
        let mut status = NvmlStatusReply::default();
        (self.device_status)(index, &mut status, std::mem::size_of::<NvmlStatusReply>()).result()?;
        Ok(status)
    }

    pub(crate) fn device_pcie(&self, index: u32) -> CuResult<NvmlPcieReply> {
        let mut r = NvmlPcieReply::default();
        (self.device_pcie)(index, &mut r, std::mem::size_of::<NvmlPcieReply>()).result()?;
        Ok(r)
    }

    /// The server's answers to `requests`, one per request, in order.
    pub(crate) fn field_values(&self, index: u32, requests: &[NvmlFieldRequest]) -> CuResult<Vec<NvmlFieldValue>> {
        let mut out = vec![NvmlFieldValue::default(); requests.len()];
        let size = std::mem::size_of::<NvmlFieldValue>();
        (self.field_values)(index, requests.len(), requests.as_ptr(), out.as_mut_ptr(), size).result()?;
        Ok(out)
    }

    /// NVML's peer status between system devices `a` and `b` for capability `index`.
    pub(crate) fn p2p_status(&self, a: u32, b: u32, index: u32) -> CuResult<u32> {
        let mut status = 0u32;
        (self.p2p_status)(a, b, index, &mut status).result()?;
        Ok(status)
    }

    pub(crate) fn driver_version(&self) -> CuResult<String> {
        let mut buf = [0u8; 80];
        (self.driver_version)(buf.as_mut_ptr() as *mut c_char, buf.len()).result()?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }
}

/// `<folder of this library>/libcuda.so.1`, when that file exists.
fn beside_self() -> Option<CString> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr on an address inside this library, with an out-pointer to a local.
    if unsafe { libc::dladdr(beside_self as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr gives the loaded object's NUL-terminated path, which lives as long as the object.
    let me = unsafe { CStr::from_ptr(info.dli_fname) }.to_str().ok()?;
    let path = std::path::Path::new(me).parent()?.join("libcuda.so.1");
    path.exists().then(|| CString::new(path.to_str()?).ok()).flatten()
}
