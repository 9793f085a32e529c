//! NVIDIA's management library (`libnvidia-ml.so.1`, loaded at run time): live device values for the real
//! backend's answers to the NVML shim, and GPU utilization for the control plane's heartbeat.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::OnceLock;

type Device = *mut c_void;

// nvml.h's C layouts (NVML API 13), public for the other NVML callers of the workspace (`vgpu smi`, the NVML
// tests), which load an NVML of their own. The NVML shim keeps its own copies: it must not link the server.

/// `nvmlUtilization_t`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Utilization {
    pub gpu: c_uint,
    pub memory: c_uint,
}

/// `nvmlMemory_t`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlPciInfo_t`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PciInfo {
    pub bus_id_legacy: [c_char; 16],
    pub domain: c_uint,
    pub bus: c_uint,
    pub device: c_uint,
    pub pci_device_id: c_uint,
    pub pci_subsystem_id: c_uint,
    pub bus_id: [c_char; 32],
}

/// `nvmlProcessInfo_t` (the `_v3` process queries' element).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessInfo {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
    pub gpu_instance_id: c_uint,
    pub compute_instance_id: c_uint,
}

type GetU32 = unsafe extern "C" fn(Device, *mut c_uint) -> c_int;

/// What NVML says about one GPU right now; `None` where it refuses a value (not every board has every sensor).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceReading {
    /// (total, free, used) in bytes.
    pub memory: Option<(u64, u64, u64)>,
    /// (gpu, memory) percent over NVML's last sample period.
    pub utilization: Option<(u32, u32)>,
    pub temperature_c: Option<u32>,
    pub power_mw: Option<u32>,
    /// (pciDeviceId, pciSubSystemId).
    pub pci_ids: Option<(u32, u32)>,
    pub minor_number: Option<u32>,
    pub brand: Option<u32>,
    pub architecture: Option<u32>,
    /// Device memory NVML attributes to process `pid` (the one asked about), if it runs on this GPU.
    pub process_memory: Option<u64>,
}

/// NVML, initialised once; `None` where it cannot be loaded or initialised.
pub struct Nvml {
    _lib: libloading::Library,
    by_uuid: unsafe extern "C" fn(*const c_char, *mut Device) -> c_int,
    utilization: unsafe extern "C" fn(Device, *mut Utilization) -> c_int,
    memory: Option<unsafe extern "C" fn(Device, *mut Memory) -> c_int>,
    temperature: Option<unsafe extern "C" fn(Device, c_uint, *mut c_uint) -> c_int>,
    power: Option<GetU32>,
    pci: Option<unsafe extern "C" fn(Device, *mut PciInfo) -> c_int>,
    minor: Option<GetU32>,
    brand: Option<GetU32>,
    architecture: Option<GetU32>,
    processes: Option<unsafe extern "C" fn(Device, *mut c_uint, *mut ProcessInfo) -> c_int>,
    driver_version: Option<unsafe extern "C" fn(*mut c_char, c_uint) -> c_int>,
}

// SAFETY: NVML is thread-safe (documented); the struct only holds function pointers and the library handle.
unsafe impl Send for Nvml {}
// SAFETY: as above.
unsafe impl Sync for Nvml {}

impl Nvml {
    pub fn open() -> Option<Nvml> {
        // SAFETY: loading NVIDIA's management library runs only its initialisers.
        let lib = unsafe { libloading::Library::new("libnvidia-ml.so.1") }.ok()?;
        // SAFETY: a symbol only vGPU's own NVML shim exports. A server started with the shim folder on
        // LD_LIBRARY_PATH would otherwise ask itself, through its own client, about its own GPUs.
        if unsafe { lib.get::<*const c_void>(b"vgpu_nvml_shim_marker\0") }.is_ok() {
            tracing::warn!("libnvidia-ml.so.1 is vGPU's own NVML shim, not NVIDIA's: no NVML readings");
            return None;
        }
        // SAFETY (every lookup and the init call): these symbols have these signatures in nvml.h.
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
        macro_rules! optional {
            ($name:literal: $ty:ty) => {
                // SAFETY: as above; a symbol an older NVML lacks leaves that value unread.
                unsafe { lib.get::<$ty>(concat!($name, "\0").as_bytes()) }
                    .ok()
                    .map(|f| *f)
            };
        }
        let nvml = Nvml {
            memory: optional!("nvmlDeviceGetMemoryInfo": unsafe extern "C" fn(Device, *mut Memory) -> c_int),
            temperature: optional!("nvmlDeviceGetTemperature": unsafe extern "C" fn(Device, c_uint, *mut c_uint) -> c_int),
            power: optional!("nvmlDeviceGetPowerUsage": GetU32),
            pci: optional!("nvmlDeviceGetPciInfo_v3": unsafe extern "C" fn(Device, *mut PciInfo) -> c_int),
            minor: optional!("nvmlDeviceGetMinorNumber": GetU32),
            brand: optional!("nvmlDeviceGetBrand": GetU32),
            architecture: optional!("nvmlDeviceGetArchitecture": GetU32),
            processes: optional!("nvmlDeviceGetComputeRunningProcesses_v3":
                unsafe extern "C" fn(Device, *mut c_uint, *mut ProcessInfo) -> c_int),
            driver_version: optional!("nvmlSystemGetDriverVersion": unsafe extern "C" fn(*mut c_char, c_uint) -> c_int),
            _lib: lib,
            by_uuid,
            utilization,
        };
        // SAFETY: nvmlInit_v2 takes no arguments.
        if unsafe { init() } != 0 {
            return None;
        }
        Some(nvml)
    }

    /// The process-wide instance, opened on first use.
    pub fn shared() -> Option<&'static Nvml> {
        static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
        NVML.get_or_init(Nvml::open).as_ref()
    }

    fn device(&self, uuid: &str) -> Option<Device> {
        let uuid = CString::new(uuid).ok()?;
        let mut dev: Device = std::ptr::null_mut();
        // SAFETY: a NUL-terminated UUID and an out-pointer to a local, as nvml.h documents.
        (unsafe { (self.by_uuid)(uuid.as_ptr(), &mut dev) } == 0).then_some(dev)
    }

    /// GPU utilization in percent over NVML's last sample period, for the GPU with this `GPU-...` UUID.
    pub fn utilization_pct(&self, uuid: &str) -> Option<f64> {
        let dev = self.device(uuid)?;
        let mut u = Utilization::default();
        // SAFETY: a handle NVML gave and an out-pointer to a local.
        (unsafe { (self.utilization)(dev, &mut u) } == 0).then_some(u.gpu as f64)
    }

    /// The display driver's version (`nvmlSystemGetDriverVersion`, e.g. "580.65.06").
    pub fn driver_version(&self) -> Option<String> {
        let f = self.driver_version?;
        let mut buf = [0 as c_char; 80];
        // SAFETY: the buffer holds the 80 bytes passed (NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE).
        if unsafe { f(buf.as_mut_ptr(), buf.len() as c_uint) } != 0 {
            return None;
        }
        buf[79] = 0;
        // SAFETY: NUL-terminated within the buffer (the last byte was just set to NUL).
        Some(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
    }

    /// Every value NVML gives for the GPU with this UUID, with `pid`'s share of its memory.
    pub fn read(&self, uuid: &str, pid: u32) -> Option<DeviceReading> {
        let dev = self.device(uuid)?;
        let u32_of = |f: Option<GetU32>| {
            let f = f?;
            let mut v: c_uint = 0;
            // SAFETY: a handle NVML gave and an out-pointer to a local.
            (unsafe { f(dev, &mut v) } == 0).then_some(v)
        };
        let mut r = DeviceReading {
            power_mw: u32_of(self.power),
            minor_number: u32_of(self.minor),
            brand: u32_of(self.brand),
            architecture: u32_of(self.architecture),
            ..Default::default()
        };
        let mut u = Utilization::default();
        // SAFETY (this and the calls below): a handle NVML gave and out-pointers to locals of the nvml.h types.
        if unsafe { (self.utilization)(dev, &mut u) } == 0 {
            r.utilization = Some((u.gpu, u.memory));
        }
        if let Some(f) = self.memory {
            let mut m = Memory::default();
            if unsafe { f(dev, &mut m) } == 0 {
                r.memory = Some((m.total, m.free, m.used));
            }
        }
        if let Some(f) = self.temperature {
            let mut t: c_uint = 0;
            // Sensor 0 is NVML_TEMPERATURE_GPU.
            if unsafe { f(dev, 0, &mut t) } == 0 {
                r.temperature_c = Some(t);
            }
        }
        if let Some(f) = self.pci {
            let mut p = PciInfo::default();
            if unsafe { f(dev, &mut p) } == 0 {
                r.pci_ids = Some((p.pci_device_id, p.pci_subsystem_id));
            }
        }
        if let Some(f) = self.processes {
            let mut list = [ProcessInfo::default(); 64];
            let mut count = list.len() as c_uint;
            if unsafe { f(dev, &mut count, list.as_mut_ptr()) } == 0 {
                let n = (count as usize).min(list.len());
                r.process_memory = list[..n].iter().find(|p| p.pid == pid).map(|p| p.used_gpu_memory);
            }
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_nvml_h() {
        // Sizes from nvml.h (NVML API 13) on 64-bit Linux.
        assert_eq!(std::mem::size_of::<PciInfo>(), 68);
        assert_eq!(std::mem::size_of::<ProcessInfo>(), 24);
        assert_eq!(std::mem::size_of::<Memory>(), 24);
        assert_eq!(std::mem::size_of::<Utilization>(), 8);
    }
}
