//! NVIDIA's management library (`libnvidia-ml.so.1`, loaded at run time through `vgpu-cuda-sys`): live device
//! values for the real backend's answers to the NVML shim, and GPU utilization for the control plane's heartbeat.

use std::ffi::{c_char, CStr, CString};
use std::sync::OnceLock;

use vgpu_cuda_sys::nvml::*;
use vgpu_cuda_sys::NvmlLibrary;

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

/// A GPU's PCIe link as NVML reports it: (generation, width) now and at most; `None` where NVML refuses one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PcieLink {
    pub curr_gen: Option<u32>,
    pub curr_width: Option<u32>,
    pub max_gen: Option<u32>,
    pub max_width: Option<u32>,
}

/// NVML, initialised once; `None` where it cannot be loaded or initialised.
pub struct Nvml {
    lib: NvmlLibrary,
}

// SAFETY: NVML is thread-safe (documented); the struct only holds the library and its entry points.
unsafe impl Send for Nvml {}
// SAFETY: as above.
unsafe impl Sync for Nvml {}

impl Nvml {
    pub fn open() -> Option<Nvml> {
        let lib = match NvmlLibrary::load("libnvidia-ml.so.1") {
            Ok(lib) => lib,
            Err(vgpu_cuda_sys::LoadError::IsShim { .. }) => {
                // A server started with the shim folder on LD_LIBRARY_PATH would otherwise ask itself, through
                // its own client, about its own GPUs.
                tracing::warn!("libnvidia-ml.so.1 is vGPU's own NVML shim, not NVIDIA's: no NVML readings");
                return None;
            }
            Err(_) => return None,
        };
        lib.require(&[
            "nvmlInit_v2",
            "nvmlDeviceGetHandleByUUID",
            "nvmlDeviceGetUtilizationRates",
        ])
        .ok()?;
        // SAFETY: nvmlInit_v2 takes no arguments.
        unsafe { lib.nvmlInit_v2() }.result().ok()?;
        Some(Nvml { lib })
    }

    /// The process-wide instance, opened on first use.
    pub fn shared() -> Option<&'static Nvml> {
        static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
        NVML.get_or_init(Nvml::open).as_ref()
    }

    fn device(&self, uuid: &str) -> Option<nvmlDevice_t> {
        let uuid = CString::new(uuid).ok()?;
        let mut dev: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY: a NUL-terminated UUID and an out-pointer to a local, as nvml.h documents.
        unsafe { self.lib.nvmlDeviceGetHandleByUUID(uuid.as_ptr(), &mut dev) }
            .result()
            .ok()
            .map(|_| dev)
    }

    /// GPU utilization in percent over NVML's last sample period, for the GPU with this `GPU-...` UUID.
    pub fn utilization_pct(&self, uuid: &str) -> Option<f64> {
        let dev = self.device(uuid)?;
        let mut u = nvmlUtilization_t::default();
        // SAFETY: a handle NVML gave and an out-pointer to a local.
        unsafe { self.lib.nvmlDeviceGetUtilizationRates(dev, &mut u) }
            .result()
            .ok()?;
        Some(u.gpu as f64)
    }

    /// `nvmlDeviceGetP2PStatus` between the GPUs with these `GPU-...` UUIDs for capability `index`: the status, or
    /// NVML's error (NVML_ERROR_NOT_FOUND, 6, for a UUID it does not know).
    pub fn p2p_status(&self, a: &str, b: &str, index: u32) -> Result<u32, u32> {
        let (Some(a), Some(b)) = (self.device(a), self.device(b)) else {
            return Err(6);
        };
        let mut status = nvmlGpuP2PStatus_t(0);
        // SAFETY: two handles NVML gave and an out-pointer to a local; NVML checks the index itself.
        let r = unsafe {
            self.lib
                .nvmlDeviceGetP2PStatus(a, b, nvmlGpuP2PCapsIndex_t(index), &mut status)
        };
        match r.0 {
            0 => Ok(status.0),
            code => Err(code),
        }
    }

    /// The display driver's version (`nvmlSystemGetDriverVersion`, e.g. "580.65.06").
    pub fn driver_version(&self) -> Option<String> {
        let mut buf = [0 as c_char; 80];
        // SAFETY: the buffer holds the 80 bytes passed (NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE).
        unsafe { self.lib.nvmlSystemGetDriverVersion(buf.as_mut_ptr(), buf.len() as u32) }
            .result()
            .ok()?;
        buf[79] = 0;
        // SAFETY: NUL-terminated within the buffer (the last byte was just set to NUL).
        Some(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
    }

    /// Every value NVML gives for the GPU with this UUID, with `pid`'s share of its memory.
    pub fn read(&self, uuid: &str, pid: u32) -> Option<DeviceReading> {
        let dev = self.device(uuid)?;
        let nvml = &self.lib;
        let value = |f: &dyn Fn(&mut u32) -> nvmlReturn_t| {
            let mut v = 0u32;
            f(&mut v).result().ok().map(|_| v)
        };
        // SAFETY (every call below): a handle NVML gave and out-pointers to locals of the nvml.h types.
        let mut r = DeviceReading {
            power_mw: value(&|v| unsafe { nvml.nvmlDeviceGetPowerUsage(dev, v) }),
            minor_number: value(&|v| unsafe { nvml.nvmlDeviceGetMinorNumber(dev, v) }),
            brand: value(&|v| {
                let mut b = nvmlBrandType_t(0);
                let r = unsafe { nvml.nvmlDeviceGetBrand(dev, &mut b) };
                *v = b.0;
                r
            }),
            architecture: value(&|v| unsafe { nvml.nvmlDeviceGetArchitecture(dev, v) }),
            temperature_c: value(&|v| unsafe {
                nvml.nvmlDeviceGetTemperature(dev, nvmlTemperatureSensors_t::NVML_TEMPERATURE_GPU, v)
            }),
            ..Default::default()
        };
        let mut u = nvmlUtilization_t::default();
        if unsafe { nvml.nvmlDeviceGetUtilizationRates(dev, &mut u) }
            .result()
            .is_ok()
        {
            r.utilization = Some((u.gpu, u.memory));
        }
        let mut m = nvmlMemory_t::default();
        if unsafe { nvml.nvmlDeviceGetMemoryInfo(dev, &mut m) }.result().is_ok() {
            r.memory = Some((m.total, m.free, m.used));
        }
        let mut p = nvmlPciInfo_t::default();
        if unsafe { nvml.nvmlDeviceGetPciInfo_v3(dev, &mut p) }.result().is_ok() {
            r.pci_ids = Some((p.pciDeviceId, p.pciSubSystemId));
        }
        let mut list = [nvmlProcessInfo_t::default(); 64];
        let mut count = list.len() as u32;
        if unsafe { nvml.nvmlDeviceGetComputeRunningProcesses_v3(dev, &mut count, list.as_mut_ptr()) }
            .result()
            .is_ok()
        {
            let n = (count as usize).min(list.len());
            r.process_memory = list[..n].iter().find(|p| p.pid == pid).map(|p| p.usedGpuMemory);
        }
        Some(r)
    }

    /// The PCIe link of the GPU with this UUID.
    pub fn pcie(&self, uuid: &str) -> Option<PcieLink> {
        let dev = self.device(uuid)?;
        let nvml = &self.lib;
        let value = |f: &dyn Fn(&mut u32) -> nvmlReturn_t| {
            let mut v = 0u32;
            f(&mut v).result().ok().map(|_| v)
        };
        // SAFETY (every call below): a handle NVML gave and an out-pointer to a local.
        Some(PcieLink {
            curr_gen: value(&|v| unsafe { nvml.nvmlDeviceGetCurrPcieLinkGeneration(dev, v) }),
            curr_width: value(&|v| unsafe { nvml.nvmlDeviceGetCurrPcieLinkWidth(dev, v) }),
            max_gen: value(&|v| unsafe { nvml.nvmlDeviceGetMaxPcieLinkGeneration(dev, v) }),
            max_width: value(&|v| unsafe { nvml.nvmlDeviceGetMaxPcieLinkWidth(dev, v) }),
        })
    }

    /// `nvmlDeviceGetFieldValues` for the GPU with this UUID: each field's answer, or the call's own error.
    pub fn field_values(
        &self,
        uuid: &str,
        fields: &[vgpu_dataplane::wire::NvmlFieldRequest],
    ) -> Result<Vec<vgpu_dataplane::wire::NvmlFieldValue>, nvmlReturn_t> {
        let dev = self.device(uuid).ok_or(nvmlReturn_t::NVML_ERROR_NOT_FOUND)?;
        let mut values: Vec<nvmlFieldValue_t> = fields
            .iter()
            .map(|f| nvmlFieldValue_t {
                fieldId: f.field_id,
                scopeId: f.scope_id,
                ..Default::default()
            })
            .collect();
        let count = i32::try_from(values.len()).map_err(|_| nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT)?;
        // SAFETY: an array of `count` field values, their ids set, as nvml.h documents.
        unsafe { self.lib.nvmlDeviceGetFieldValues(dev, count, values.as_mut_ptr()) }.result()?;
        Ok(values
            .iter()
            .map(|v| vgpu_dataplane::wire::NvmlFieldValue {
                field_id: v.fieldId,
                scope_id: v.scopeId,
                timestamp_us: v.timestamp,
                latency_us: v.latencyUsec,
                value_type: v.valueType.0,
                nvml_return: v.nvmlReturn.0,
                // SAFETY: every member of the union is a plain number within its 8 bytes, which start zeroed.
                value: unsafe { v.value.ullVal },
            })
            .collect())
    }
}
