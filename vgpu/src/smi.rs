//! `vgpu smi`: an nvidia-smi-like table of the GPUs a vGPU session sees, read through vGPU's own
//! `libnvidia-ml.so.1` (loaded from the shim folder), so the command exercises the NVML shim end to end.

use std::ffi::{c_char, c_uint, CStr};
use std::ops::Deref;
use std::path::Path;

use serde_json::{json, Value};
use vgpu_cuda_sys::nvml::*;
use vgpu_cuda_sys::NvmlLibrary;

/// vGPU's NVML shim, loaded through the generated nvml.h declarations.
struct Nvml {
    lib: NvmlLibrary,
}

impl Deref for Nvml {
    type Target = NvmlLibrary;
    fn deref(&self) -> &NvmlLibrary {
        &self.lib
    }
}

impl Nvml {
    fn load(path: &Path) -> Result<Nvml, String> {
        let lib = NvmlLibrary::load_any(&path.display().to_string()).map_err(|e| e.to_string())?;
        lib.require(&[
            "nvmlInit_v2",
            "nvmlErrorString",
            "nvmlDeviceGetCount_v2",
            "nvmlDeviceGetHandleByIndex_v2",
            "nvmlDeviceGetComputeRunningProcesses_v3",
        ])
        .map_err(|e| e.to_string())?;
        Ok(Nvml { lib })
    }

    fn check(&self, what: &str, code: nvmlReturn_t) -> Result<(), String> {
        if code == nvmlReturn_t::NVML_SUCCESS {
            return Ok(());
        }
        // SAFETY: nvmlErrorString returns a static NUL-terminated string for any code (NULL only if absent).
        let text = unsafe {
            let p = self.nvmlErrorString(code);
            if p.is_null() {
                "unknown error".into()
            } else {
                CStr::from_ptr(p).to_string_lossy()
            }
        };
        Err(format!("{what}: {text} (NVML error {})", code.0))
    }

    /// A value NVML may decline for this device (`NOT_SUPPORTED` → `None`).
    fn optional<T>(&self, what: &str, code: nvmlReturn_t, value: T) -> Result<Option<T>, String> {
        match code {
            nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED => Ok(None),
            c => self.check(what, c).map(|_| Some(value)),
        }
    }

    fn text(&self, what: &str, f: impl FnOnce(*mut c_char, c_uint) -> nvmlReturn_t) -> Result<String, String> {
        let mut buf = [0 as c_char; 96];
        self.check(what, f(buf.as_mut_ptr(), buf.len() as c_uint))?;
        buf[95] = 0;
        // SAFETY: NUL-terminated within the buffer (the last byte was just set to NUL).
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
    }

    fn gpu(&self, index: u32) -> Result<Value, String> {
        let mut dev: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY (every call below): nvml.h entry points with a handle NVML gave, out-pointers to locals and
        // buffers with their true lengths.
        self.check("nvmlDeviceGetHandleByIndex_v2", unsafe {
            self.nvmlDeviceGetHandleByIndex_v2(index, &mut dev)
        })?;
        let name = self.text("nvmlDeviceGetName", |p, n| unsafe { self.nvmlDeviceGetName(dev, p, n) })?;
        let uuid = self.text("nvmlDeviceGetUUID", |p, n| unsafe { self.nvmlDeviceGetUUID(dev, p, n) })?;
        let mut pci = nvmlPciInfo_t::default();
        self.check("nvmlDeviceGetPciInfo_v3", unsafe {
            self.nvmlDeviceGetPciInfo_v3(dev, &mut pci)
        })?;
        pci.busId[31] = 0;
        // SAFETY: NUL-terminated within the array (the last byte was just set to NUL).
        let bus_id = unsafe { CStr::from_ptr(pci.busId.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut mem = nvmlMemory_t::default();
        self.check("nvmlDeviceGetMemoryInfo", unsafe {
            self.nvmlDeviceGetMemoryInfo(dev, &mut mem)
        })?;
        let mut util = nvmlUtilization_t::default();
        let code = unsafe { self.nvmlDeviceGetUtilizationRates(dev, &mut util) };
        let util = self.optional("nvmlDeviceGetUtilizationRates", code, ())?.map(|_| util);
        let mut temp: c_uint = 0;
        let code =
            unsafe { self.nvmlDeviceGetTemperature(dev, nvmlTemperatureSensors_t::NVML_TEMPERATURE_GPU, &mut temp) };
        let temp = self.optional("nvmlDeviceGetTemperature", code, temp)?;
        let mut power: c_uint = 0;
        let code = unsafe { self.nvmlDeviceGetPowerUsage(dev, &mut power) };
        let power = self.optional("nvmlDeviceGetPowerUsage", code, power)?;
        let mut procs = [nvmlProcessInfo_t::default(); 64];
        let mut n = procs.len() as c_uint;
        self.check("nvmlDeviceGetComputeRunningProcesses_v3", unsafe {
            self.nvmlDeviceGetComputeRunningProcesses_v3(dev, &mut n, procs.as_mut_ptr())
        })?;
        let processes: Vec<Value> = procs[..(n as usize).min(procs.len())]
            .iter()
            .map(|p| json!({"pid": p.pid, "used_memory_bytes": p.usedGpuMemory}))
            .collect();
        Ok(json!({
            "index": index,
            "name": name,
            "uuid": uuid,
            "pci_bus_id": bus_id,
            "memory": {"total_bytes": mem.total, "used_bytes": mem.used, "free_bytes": mem.free},
            "utilization": util.map(|u| json!({"gpu_pct": u.gpu, "memory_pct": u.memory})),
            "temperature_c": temp,
            "power_mw": power,
            "processes": processes,
        }))
    }
}

/// Which backend the session runs on, from vGPU's libcuda.so.1 (the NVML shim loaded it from `dir`).
fn backend(dir: &Path) -> &'static str {
    // SAFETY: the library is already loaded (by the NVML shim, from this path); this takes a reference.
    let Ok(lib) = (unsafe { libloading::Library::new(dir.join("libcuda.so.1")) }) else {
        return "unknown";
    };
    // SAFETY: an argument-less function vGPU's shim exports.
    // own ABI: vgpu_session_backend is vGPU's export, declared by no header.
    match unsafe { lib.get::<unsafe extern "C" fn() -> i32>(b"vgpu_session_backend\0") } {
        Ok(f) => match unsafe { f() } {
            0 => "real",
            1 => "emulated",
            _ => "unknown",
        },
        Err(_) => "unknown",
    }
}

/// Reads everything the session sees, as JSON.
pub fn query(server: Option<&str>, control: Option<&str>) -> Result<Value, String> {
    let dir = crate::local::shim_dir()?;
    let path = dir.join("libnvidia-ml.so.1");
    if !path.exists() {
        return Err(format!(
            "vGPU's libnvidia-ml.so.1 is not in {} (build it with `cargo build -p vgpu-nvml-shim`)",
            dir.display()
        ));
    }
    // The shims read their settings from the environment, as in a program started by `vgpu run`. Nothing else
    // runs yet in this process, so setting them here races with no other thread.
    if let Some(server) = server {
        vgpu_dataplane::Endpoint::parse_list(server)?;
        std::env::set_var("VGPU_SERVER", server);
    }
    if let Some(url) = control {
        std::env::set_var("VGPU_CONTROL_URL", url);
    }
    let nvml = Nvml::load(&path)?;
    // SAFETY (the calls below): nvml.h entry points with out-pointers to locals.
    nvml.check("nvmlInit_v2", unsafe { nvml.nvmlInit_v2() })?;
    let driver = nvml.text("nvmlSystemGetDriverVersion", |p, n| unsafe {
        nvml.nvmlSystemGetDriverVersion(p, n)
    })?;
    let mut cuda = 0;
    nvml.check("nvmlSystemGetCudaDriverVersion_v2", unsafe {
        nvml.nvmlSystemGetCudaDriverVersion_v2(&mut cuda)
    })?;
    let mut count: c_uint = 0;
    nvml.check("nvmlDeviceGetCount_v2", unsafe {
        nvml.nvmlDeviceGetCount_v2(&mut count)
    })?;
    let gpus = (0..count).map(|i| nvml.gpu(i)).collect::<Result<Vec<_>, _>>()?;
    Ok(json!({
        "backend": backend(&dir),
        "driver_version": driver,
        "cuda_version": format!("{}.{}", cuda / 1000, (cuda % 1000) / 10),
        "gpus": gpus,
    }))
}

fn mib(bytes: &Value) -> u64 {
    bytes.as_u64().unwrap_or(0) >> 20
}

fn or_na(v: &Value, f: impl Fn(u64) -> String) -> String {
    v.as_u64().map(f).unwrap_or_else(|| "N/A".into())
}

/// The nvidia-smi-like table.
pub fn render(report: &Value) -> String {
    let mut out = String::new();
    let backend = report["backend"].as_str().unwrap_or("unknown");
    out.push_str("vGPU SMI: the GPUs of this session, read through vGPU's libnvidia-ml.so.1\n");
    out.push_str(&format!(
        "Driver Version: {}   CUDA Version: {}   Backend: {}\n",
        report["driver_version"].as_str().unwrap_or("?"),
        report["cuda_version"].as_str().unwrap_or("?"),
        match backend {
            "emulated" => "emulated (no GPU: memory is the session's bookkeeping, kernels are not run)",
            "real" => "real GPU",
            _ => "unknown",
        }
    ));
    out.push('\n');
    let header = format!(
        "{:>3}  {:<28}  {:<40}  {:<16}  {:>21}  {:>4}  {:>5}  {:>7}\n",
        "GPU", "Name", "UUID", "Bus-Id", "Memory-Usage", "Util", "Temp", "Power"
    );
    out.push_str(&header);
    let empty = Vec::new();
    let gpus = report["gpus"].as_array().unwrap_or(&empty);
    for g in gpus {
        let mem = &g["memory"];
        out.push_str(&format!(
            "{:>3}  {:<28}  {:<40}  {:<16}  {:>21}  {:>4}  {:>5}  {:>7}\n",
            g["index"].as_u64().unwrap_or(0),
            g["name"].as_str().unwrap_or("?"),
            g["uuid"].as_str().unwrap_or("?"),
            g["pci_bus_id"].as_str().unwrap_or("?"),
            format!("{}MiB / {}MiB", mib(&mem["used_bytes"]), mib(&mem["total_bytes"])),
            or_na(&g["utilization"]["gpu_pct"], |u| format!("{u}%")),
            or_na(&g["temperature_c"], |t| format!("{t}C")),
            or_na(&g["power_mw"], |p| format!("{}W", p / 1000)),
        ));
    }
    if gpus.is_empty() {
        out.push_str("No GPUs in this session\n");
    }
    out.push_str("\nProcesses (this session's own; other tenants' are not shown):\n");
    let mut any = false;
    for g in gpus {
        for p in g["processes"].as_array().unwrap_or(&empty) {
            any = true;
            out.push_str(&format!(
                "{:>3}  pid {:<10}  {}MiB\n",
                g["index"].as_u64().unwrap_or(0),
                p["pid"].as_u64().unwrap_or(0),
                mib(&p["used_memory_bytes"])
            ));
        }
    }
    if !any {
        out.push_str("No running processes found\n");
    }
    out
}
