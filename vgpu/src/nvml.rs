//! GPU utilization for the control plane's heartbeat, read through NVIDIA's NVML (`libnvidia-ml.so.1`, loaded at
//! run time). Absent NVML (no driver, the emulated backend) utilization is reported as 0.

use std::ffi::{c_char, c_int, c_uint, c_void, CString};

type Device = *mut c_void;

#[repr(C)]
#[derive(Default)]
struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

/// NVML, initialised once; `None` where it cannot be loaded or initialised.
pub struct Nvml {
    _lib: libloading::Library,
    by_uuid: unsafe extern "C" fn(*const c_char, *mut Device) -> c_int,
    utilization: unsafe extern "C" fn(Device, *mut Utilization) -> c_int,
}

// SAFETY: NVML is thread-safe (documented); the struct only holds function pointers and the library handle.
unsafe impl Send for Nvml {}
// SAFETY: as above.
unsafe impl Sync for Nvml {}

impl Nvml {
    pub fn open() -> Option<Nvml> {
        // SAFETY: loading NVIDIA's management library runs only its initialisers.
        let lib = unsafe { libloading::Library::new("libnvidia-ml.so.1") }.ok()?;
        // SAFETY (the three lookups and the init call): these symbols have these signatures in nvml.h.
        let (init, by_uuid, utilization) = unsafe {
            let init = *lib.get::<unsafe extern "C" fn() -> c_int>(b"nvmlInit_v2\0").ok()?;
            let by_uuid = *lib
                .get::<unsafe extern "C" fn(*const c_char, *mut Device) -> c_int>(b"nvmlDeviceGetHandleByUUID\0")
                .ok()?;
            let utilization = *lib
                .get::<unsafe extern "C" fn(Device, *mut Utilization) -> c_int>(b"nvmlDeviceGetUtilizationRates\0")
                .ok()?;
            (init, by_uuid, utilization)
        };
        // SAFETY: nvmlInit_v2 takes no arguments.
        if unsafe { init() } != 0 {
            return None;
        }
        Some(Nvml {
            _lib: lib,
            by_uuid,
            utilization,
        })
    }

    /// GPU utilization in percent over NVML's last sample period, for the GPU with this `GPU-...` UUID.
    pub fn utilization_pct(&self, uuid: &str) -> Option<f64> {
        let uuid = CString::new(uuid).ok()?;
        let mut dev: Device = std::ptr::null_mut();
        let mut u = Utilization::default();
        // SAFETY: a NUL-terminated UUID and out-pointers to locals, as nvml.h documents.
        unsafe {
            if (self.by_uuid)(uuid.as_ptr(), &mut dev) != 0 || (self.utilization)(dev, &mut u) != 0 {
                return None;
            }
        }
        Some(u.gpu as f64)
    }
}
