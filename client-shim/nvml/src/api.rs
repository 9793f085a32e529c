//! The NVML entry points vGPU implements: initialisation, devices and their identity (from the CUDA shim's
//! cached facts, so NVML and CUDA agree), and live values (memory, utilization, processes) from the server.

use std::ffi::{c_char, c_int, c_uint, c_void};

use vgpu_dataplane::handshake::DeviceFacts;
use vgpu_dataplane::wire::*;

use crate::{ffi, link};

pub const NVML_SUCCESS: u32 = 0;
pub const NVML_ERROR_UNINITIALIZED: u32 = 1;
pub const NVML_ERROR_INVALID_ARGUMENT: u32 = 2;
pub const NVML_ERROR_NOT_SUPPORTED: u32 = 3;
pub const NVML_ERROR_NO_PERMISSION: u32 = 4;
pub const NVML_ERROR_NOT_FOUND: u32 = 6;
pub const NVML_ERROR_INSUFFICIENT_SIZE: u32 = 7;
pub const NVML_ERROR_DRIVER_NOT_LOADED: u32 = 9;
pub const NVML_ERROR_GPU_IS_LOST: u32 = 15;
pub const NVML_ERROR_LIB_RM_VERSION_MISMATCH: u32 = 18;
pub const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: u32 = 25;
pub const NVML_ERROR_UNKNOWN: u32 = 999;

/// `nvmlGpuP2PStatus_t` values and the last `nvmlGpuP2PCapsIndex_t`.
const NVML_P2P_STATUS_OK: u32 = 0;
const NVML_P2P_STATUS_NOT_SUPPORTED: u32 = 5;
const NVML_P2P_CAPS_INDEX_LAST: u32 = 5;

/// NVML's API generation (`NVML_API_VERSION` in nvml.h), the first field of `nvmlSystemGetNVMLVersion`.
const NVML_API_VERSION: u32 = 13;

/// What a stub answers: not supported, or uninitialized before `nvmlInit` as every NVML call is.
pub(crate) fn unsupported() -> u32 {
    if link::is_initialized() {
        NVML_ERROR_NOT_SUPPORTED
    } else {
        NVML_ERROR_UNINITIALIZED
    }
}

/// Declares exported entry points: each name in the list runs the body, which returns `Result<(), nvmlReturn_t>`.
macro_rules! entry {
    () => {};
    ([$($name:ident),+] $args:tt $body:block $($rest:tt)*) => {
        $( entry_fn!($name, $args, $body); )+
        entry!($($rest)*);
    };
}

macro_rules! entry_fn {
    ($name:ident, ($($arg:ident : $ty:ty),* $(,)?), $body:block) => {
        #[no_mangle]
        pub extern "C" fn $name($($arg: $ty),*) -> u32 {
            $crate::debug(format_args!("call {}", stringify!($name)));
            #[allow(unused_variables)]
            fn body($($arg: $ty),*) -> Result<(), u32> $body
            match body($($arg),*) {
                Ok(()) => NVML_SUCCESS,
                Err(e) => e,
            }
        }
    };
}

type Device = *mut c_void;

/// `nvmlPciInfo_t` (nvml.h, NVML API 13): what `nvmlDeviceGetPciInfo_v2` and `_v3` fill.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PciInfo {
    pub bus_id_legacy: [u8; 16],
    pub domain: c_uint,
    pub bus: c_uint,
    pub device: c_uint,
    pub pci_device_id: c_uint,
    pub pci_subsystem_id: c_uint,
    pub bus_id: [u8; 32],
}

/// The first `nvmlPciInfo_t` (before NVML 2.285's `busIdLegacy`), which the unversioned
/// `nvmlDeviceGetPciInfo` of old binaries fills: 52 bytes, a prefix of the current layout's size.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PciInfoV1 {
    pub bus_id: [u8; 16],
    pub domain: c_uint,
    pub bus: c_uint,
    pub device: c_uint,
    pub pci_device_id: c_uint,
    pub pci_subsystem_id: c_uint,
    pub reserved: [c_uint; 4],
}

/// `nvmlMemory_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Memory {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlMemory_v2_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemoryV2 {
    pub version: c_uint,
    pub total: u64,
    pub reserved: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlMemory_v2` in nvml.h: `NVML_STRUCT_VERSION(Memory, 2)`, the struct's size with the version in the top byte.
pub const NVML_MEMORY_V2: c_uint = std::mem::size_of::<MemoryV2>() as c_uint | (2 << 24);

/// `nvmlUtilization_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Utilization {
    pub gpu: c_uint,
    pub memory: c_uint,
}

/// `nvmlProcessInfo_v1_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessInfoV1 {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
}

/// `nvmlProcessInfo_v2_t` = `nvmlProcessInfo_t` (the `_v2` and `_v3` process queries).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessInfo {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
    pub gpu_instance_id: c_uint,
    pub compute_instance_id: c_uint,
}

/// MIG instance ids of a process on a GPU without MIG.
const NO_INSTANCE: c_uint = 0xFFFF_FFFF;

fn device(handle: Device) -> Result<(usize, &'static DeviceFacts), u32> {
    let index = link::index_of(handle)?;
    let facts = link::devices()?.get(index).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    Ok((index, facts))
}

/// The server's live values for a device, or the error NVML would give when its driver cannot answer.
fn status(index: usize) -> Result<NvmlStatusReply, u32> {
    link::ready()?.device_status(index as u32).map_err(|e| match e {
        // CUDA_ERROR_NOT_SUPPORTED: a server without NVML queries (older than this shim).
        801 => NVML_ERROR_NOT_SUPPORTED,
        // CUDA_ERROR_DEVICE_UNAVAILABLE: the server is gone.
        46 => NVML_ERROR_GPU_IS_LOST,
        _ => NVML_ERROR_UNKNOWN,
    })
}

/// Writes one live value of the device behind `handle` to `out`: `pick` chooses it from the server's reading,
/// whose `valid` bit `flag` says whether the server's NVML could answer it (else `NVML_ERROR_NOT_SUPPORTED`).
fn write_live<T>(handle: Device, out: *mut T, flag: u32, pick: impl FnOnce(&NvmlStatusReply) -> T) -> Result<(), u32> {
    let (i, _) = device(handle)?;
    if out.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let s = status(i)?;
    if s.valid & flag == 0 {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    ffi::write(out, pick(&s))
}

/// Copies `text` and a NUL into the caller's `len`-byte buffer; too small is `NVML_ERROR_INSUFFICIENT_SIZE`.
fn put_str(out: *mut c_char, len: c_uint, text: &str) -> Result<(), u32> {
    let buf = ffi::buffer(out, len as usize)?;
    if buf.len() <= text.len() {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    buf[..text.len()].copy_from_slice(text.as_bytes());
    buf[text.len()] = 0;
    Ok(())
}

fn fixed<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = text.len().min(N - 1);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

/// (domain, bus, device) from the CUDA attributes the CUDA shim answers `cuDeviceGetAttribute` with.
fn pci_location(d: &DeviceFacts) -> (u32, u32, u32) {
    // CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID (50), _PCI_BUS_ID (33), _PCI_DEVICE_ID (34).
    let attr = |a| d.attr(a).unwrap_or(0) as u32;
    (attr(50), attr(33), attr(34))
}

/// NVML's bus id form, `NVML_DEVICE_PCI_BUS_ID_FMT`: "%08X:%02X:%02X.0".
pub fn pci_bus_id(d: &DeviceFacts) -> String {
    let (domain, bus, dev) = pci_location(d);
    format!("{domain:08X}:{bus:02X}:{dev:02X}.0")
}

/// `NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT`: "%04X:%02X:%02X.0".
fn pci_bus_id_legacy(d: &DeviceFacts) -> String {
    let (domain, bus, dev) = pci_location(d);
    format!("{domain:04X}:{bus:02X}:{dev:02X}.0")
}

/// Parses `[domain:]bus:device.function` (hex, any case, domain of any width) into (domain, bus, device).
pub fn parse_pci_bus_id(text: &str) -> Option<(u32, u32, u32)> {
    let hex = |s: &str| u32::from_str_radix(s.trim(), 16).ok();
    let parts: Vec<&str> = text.trim().split(':').collect();
    let (domain, bus, rest) = match parts.as_slice() {
        [d, b, r] => (hex(d)?, hex(b)?, *r),
        [b, r] => (0, hex(b)?, *r),
        _ => return None,
    };
    let mut dev_fn = rest.split('.');
    let dev = hex(dev_fn.next()?)?;
    if let Some(f) = dev_fn.next() {
        hex(f)?;
    }
    Some((domain, bus, dev))
}

/// `nvmlDeviceArchitecture_t` from the compute capability, where the server's NVML gave none.
fn architecture_of(major: i32, minor: i32) -> u32 {
    match (major, minor) {
        (3, _) => 2,        // Kepler
        (5, _) => 3,        // Maxwell
        (6, _) => 4,        // Pascal
        (7, 0..=2) => 5,    // Volta
        (7, _) => 6,        // Turing
        (8, 9) => 8,        // Ada
        (8, _) => 7,        // Ampere
        (9, _) => 9,        // Hopper
        (10..=12, _) => 10, // Blackwell
        _ => 0xFFFF_FFFF,   // NVML_DEVICE_ARCH_UNKNOWN
    }
}

fn pci_info(index: usize, d: &DeviceFacts) -> PciInfo {
    // The vendor and subsystem ids come from the server's NVML; the emulated backend has none (0).
    let ids = status(index)
        .ok()
        .filter(|s| s.valid & NVML_HAS_PCI_IDS != 0)
        .map(|s| (s.pci_device_id, s.pci_subsystem_id))
        .unwrap_or((0, 0));
    let (domain, bus, device) = pci_location(d);
    PciInfo {
        bus_id_legacy: fixed(&pci_bus_id_legacy(d)),
        domain,
        bus,
        device,
        pci_device_id: ids.0,
        pci_subsystem_id: ids.1,
        bus_id: fixed(&pci_bus_id(d)),
    }
}

/// This process's entry in a device's process list (a client process sees only itself: the server runs its
/// work in a worker of its own, and other tenants' processes are not this session's to see).
fn own_process(index: usize) -> Result<Option<ProcessInfo>, u32> {
    let s = status(index)?;
    Ok((s.process_active != 0).then(|| ProcessInfo {
        pid: std::process::id(),
        used_gpu_memory: s.process_used,
        gpu_instance_id: NO_INSTANCE,
        compute_instance_id: NO_INSTANCE,
    }))
}

/// The process queries' shared contract: `*count` in is the array's capacity, out the number of processes;
/// a capacity too small gets the number needed and `NVML_ERROR_INSUFFICIENT_SIZE`.
fn put_processes<T: Copy>(count: *mut c_uint, infos: *mut T, list: &[T]) -> Result<(), u32> {
    let capacity = ffi::read(count)? as usize;
    ffi::write(count, list.len() as c_uint)?;
    if capacity < list.len() {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    ffi::write_array(infos, list)
}

/// Every process query for a kind of work vGPU never runs (graphics, MPS) lists nothing.
fn no_processes(handle: Device, count: *mut c_uint) -> Result<(), u32> {
    device(handle)?;
    ffi::read(count)?;
    ffi::write(count, 0)
}

fn device_by(pred: impl Fn(&DeviceFacts) -> bool, out: *mut Device) -> Result<(), u32> {
    let devices = link::devices()?;
    let index = devices.iter().position(pred).ok_or(NVML_ERROR_NOT_FOUND)?;
    ffi::write(out, link::handle_of(index))
}

entry! {
    [nvmlInit, nvmlInit_v2] () {
        link::init()
    }
    [nvmlInitWithFlags] (flags: c_uint) {
        // NVML_INIT_FLAG_NO_GPUS / NO_ATTACH change nothing here: the session either opens or it does not.
        link::init()
    }
    [nvmlShutdown] () {
        link::shutdown()
    }
    [nvmlSystemGetDriverVersion] (version: *mut c_char, length: c_uint) {
        let text = driver_version()?;
        put_str(version, length, &text)
    }
    [nvmlSystemGetNVMLVersion] (version: *mut c_char, length: c_uint) {
        let text = format!("{NVML_API_VERSION}.{}", driver_version()?);
        put_str(version, length, &text)
    }
    [nvmlSystemGetCudaDriverVersion, nvmlSystemGetCudaDriverVersion_v2] (version: *mut c_int) {
        let v = link::ready()?.cuda_driver_version().ok_or(NVML_ERROR_UNINITIALIZED)?;
        ffi::write(version, v)
    }
    [nvmlDeviceGetCount, nvmlDeviceGetCount_v2] (count: *mut c_uint) {
        ffi::write(count, link::devices()?.len() as c_uint)
    }
    [nvmlDeviceGetHandleByIndex, nvmlDeviceGetHandleByIndex_v2] (index: c_uint, out: *mut Device) {
        if index as usize >= link::devices()?.len() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        ffi::write(out, link::handle_of(index as usize))
    }
    [nvmlDeviceGetHandleByUUID] (uuid: *const c_char, out: *mut Device) {
        let text = ffi::cstr(uuid)?.to_str().map_err(|_| NVML_ERROR_INVALID_ARGUMENT)?;
        link::devices()?;
        if out.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        device_by(|d| d.uuid_string().eq_ignore_ascii_case(text.trim()), out)
    }
    [nvmlDeviceGetHandleByPciBusId, nvmlDeviceGetHandleByPciBusId_v2] (bus_id: *const c_char, out: *mut Device) {
        let text = ffi::cstr(bus_id)?.to_str().map_err(|_| NVML_ERROR_INVALID_ARGUMENT)?;
        link::devices()?;
        if out.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let want = parse_pci_bus_id(text).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        device_by(|d| pci_location(d) == want, out)
    }
    [nvmlDeviceGetName] (handle: Device, name: *mut c_char, length: c_uint) {
        let (_, d) = device(handle)?;
        put_str(name, length, d.name_str())
    }
    [nvmlDeviceGetUUID] (handle: Device, uuid: *mut c_char, length: c_uint) {
        let (_, d) = device(handle)?;
        put_str(uuid, length, &d.uuid_string())
    }
    [nvmlDeviceGetIndex] (handle: Device, index: *mut c_uint) {
        let (i, _) = device(handle)?;
        ffi::write(index, i as c_uint)
    }
    [nvmlDeviceGetMinorNumber] (handle: Device, minor: *mut c_uint) {
        write_live(handle, minor, NVML_HAS_MINOR_NUMBER, |s| s.minor_number)
    }
    [nvmlDeviceGetPciInfo] (handle: Device, pci: *mut PciInfoV1) {
        let (i, d) = device(handle)?;
        if pci.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let p = pci_info(i, d);
        ffi::write(pci, PciInfoV1 {
            bus_id: p.bus_id_legacy,
            domain: p.domain,
            bus: p.bus,
            device: p.device,
            pci_device_id: p.pci_device_id,
            pci_subsystem_id: p.pci_subsystem_id,
            reserved: [0; 4],
        })
    }
    [nvmlDeviceGetPciInfo_v2, nvmlDeviceGetPciInfo_v3] (handle: Device, pci: *mut PciInfo) {
        let (i, d) = device(handle)?;
        if pci.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        ffi::write(pci, pci_info(i, d))
    }
    [nvmlDeviceGetMemoryInfo] (handle: Device, memory: *mut Memory) {
        let (i, _) = device(handle)?;
        if memory.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let s = status(i)?;
        ffi::write(memory, Memory { total: s.mem_total, free: s.mem_free, used: s.mem_used })
    }
    [nvmlDeviceGetMemoryInfo_v2] (handle: Device, memory: *mut MemoryV2) {
        let (i, _) = device(handle)?;
        // The version field is the caller's promise about the struct's layout: check it before writing.
        let version = ffi::read(memory as *const c_uint)?;
        if version != NVML_MEMORY_V2 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let s = status(i)?;
        ffi::write(memory, MemoryV2 {
            version,
            total: s.mem_total,
            reserved: s.mem_reserved,
            free: s.mem_free,
            used: s.mem_used,
        })
    }
    [nvmlDeviceGetUtilizationRates] (handle: Device, utilization: *mut Utilization) {
        write_live(handle, utilization, NVML_HAS_UTILIZATION, |s| Utilization { gpu: s.util_gpu, memory: s.util_memory })
    }
    [nvmlDeviceGetTemperature] (handle: Device, sensor: c_uint, temperature: *mut c_uint) {
        // A bad handle is reported before a bad sensor.
        device(handle)?;
        // NVML_TEMPERATURE_GPU is the only sensor nvml.h defines.
        if sensor != 0 {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        write_live(handle, temperature, NVML_HAS_TEMPERATURE, |s| s.temperature_c)
    }
    [nvmlDeviceGetPowerUsage] (handle: Device, power: *mut c_uint) {
        write_live(handle, power, NVML_HAS_POWER, |s| s.power_mw)
    }
    [nvmlDeviceGetCudaComputeCapability] (handle: Device, major: *mut c_int, minor: *mut c_int) {
        let (_, d) = device(handle)?;
        if major.is_null() || minor.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR (75) and _MINOR (76), as cuDeviceGetAttribute gives.
        ffi::write(major, d.attr(75).unwrap_or(0))?;
        ffi::write(minor, d.attr(76).unwrap_or(0))
    }
    [nvmlDeviceGetBrand] (handle: Device, brand: *mut c_uint) {
        write_live(handle, brand, NVML_HAS_BRAND, |s| s.brand)
    }
    [nvmlDeviceGetArchitecture] (handle: Device, arch: *mut c_uint) {
        let (i, d) = device(handle)?;
        if arch.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let from_server = status(i).ok().filter(|s| s.valid & NVML_HAS_ARCHITECTURE != 0).map(|s| s.architecture);
        let value = from_server.unwrap_or_else(|| architecture_of(d.attr(75).unwrap_or(0), d.attr(76).unwrap_or(0)));
        ffi::write(arch, value)
    }
    [nvmlDeviceGetComputeRunningProcesses] (handle: Device, count: *mut c_uint, infos: *mut ProcessInfoV1) {
        let (i, _) = device(handle)?;
        ffi::read(count)?;
        let list: Vec<ProcessInfoV1> = own_process(i)?
            .map(|p| ProcessInfoV1 { pid: p.pid, used_gpu_memory: p.used_gpu_memory })
            .into_iter()
            .collect();
        put_processes(count, infos, &list)
    }
    [nvmlDeviceGetComputeRunningProcesses_v2, nvmlDeviceGetComputeRunningProcesses_v3] (handle: Device, count: *mut c_uint, infos: *mut ProcessInfo) {
        let (i, _) = device(handle)?;
        ffi::read(count)?;
        let list: Vec<ProcessInfo> = own_process(i)?.into_iter().collect();
        put_processes(count, infos, &list)
    }
    [nvmlDeviceGetGraphicsRunningProcesses, nvmlDeviceGetGraphicsRunningProcesses_v2, nvmlDeviceGetGraphicsRunningProcesses_v3, nvmlDeviceGetMPSComputeRunningProcesses, nvmlDeviceGetMPSComputeRunningProcesses_v2, nvmlDeviceGetMPSComputeRunningProcesses_v3] (handle: Device, count: *mut c_uint, infos: *mut c_void) {
        no_processes(handle, count)
    }
    [nvmlDeviceGetP2PStatus] (device1: Device, device2: Device, index: c_uint, status: *mut c_uint) {
        // A GPU reaches itself; two GPUs never reach each other through vGPU (peer access is not remoted).
        let (a, _) = device(device1)?;
        let (b, _) = device(device2)?;
        let value = if a == b { NVML_P2P_STATUS_OK } else { NVML_P2P_STATUS_NOT_SUPPORTED };
        if index > NVML_P2P_CAPS_INDEX_LAST {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        ffi::write(status, value)
    }
    [nvmlDeviceGetNvLinkRemoteDeviceType, nvmlDeviceGetNvLinkState, nvmlDeviceGetNvLinkRemotePciInfo, nvmlDeviceGetNvLinkRemotePciInfo_v2] (handle: Device, link: c_uint, out: *mut c_void) {
        // No NVLink is remoted: what the driver says of a GPU without NVLink.
        device(handle)?;
        Err(NVML_ERROR_NOT_SUPPORTED)
    }
}

fn driver_version() -> Result<String, u32> {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(v) = VERSION.get() {
        link::ready()?;
        return Ok(v.clone());
    }
    let v = link::ready()?.driver_version().map_err(|e| match e {
        801 => NVML_ERROR_NOT_SUPPORTED,
        _ => NVML_ERROR_UNKNOWN,
    })?;
    Ok(VERSION.get_or_init(|| v).clone())
}

/// `nvmlErrorString`: NVML's own texts.
#[no_mangle]
pub extern "C" fn nvmlErrorString(result: u32) -> *const c_char {
    let text: &'static std::ffi::CStr = match result {
        0 => c"Success",
        1 => c"Uninitialized",
        2 => c"Invalid Argument",
        3 => c"Not Supported",
        4 => c"Insufficient Permissions",
        5 => c"Already Initialized",
        6 => c"Not Found",
        7 => c"Insufficient Size",
        8 => c"Insufficient External Power",
        9 => c"Driver Not Loaded",
        10 => c"Timeout",
        11 => c"Interrupt Request Issue",
        12 => c"NVML Shared Library Not Found",
        13 => c"Function Not Found",
        14 => c"Corrupted infoROM",
        15 => c"GPU is lost",
        16 => c"GPU requires restart",
        17 => c"The operating system has blocked the request.",
        18 => c"RM has detected an NVML/RM version mismatch.",
        19 => c"In use by another client",
        20 => c"Insufficient Memory",
        21 => c"No data",
        22 => c"The requested vgpu operation is not available on target device, becasue ECC is enabled",
        23 => c"Insufficient resources for request",
        24 => c"Frequency not supported",
        25 => c"Argument version mismatch",
        26 => c"Deprecated",
        27 => c"Not Ready",
        28 => c"GPU not found",
        29 => c"Invalid state",
        30 => c"Reset type not supported",
        _ => c"Unknown Error",
    };
    text.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_nvml_h() {
        // Sizes and offsets from nvml.h (NVML API 13) on 64-bit Linux.
        assert_eq!(std::mem::size_of::<PciInfo>(), 68);
        assert_eq!(std::mem::offset_of!(PciInfo, domain), 16);
        assert_eq!(std::mem::offset_of!(PciInfo, bus_id), 36);
        assert_eq!(std::mem::size_of::<PciInfoV1>(), 52);
        assert_eq!(std::mem::size_of::<Memory>(), 24);
        assert_eq!(std::mem::size_of::<MemoryV2>(), 40);
        assert_eq!(std::mem::offset_of!(MemoryV2, total), 8);
        assert_eq!(NVML_MEMORY_V2, 0x0200_0028);
        assert_eq!(std::mem::size_of::<Utilization>(), 8);
        assert_eq!(std::mem::size_of::<ProcessInfoV1>(), 16);
        assert_eq!(std::mem::size_of::<ProcessInfo>(), 24);
        assert_eq!(std::mem::offset_of!(ProcessInfo, gpu_instance_id), 16);
    }

    #[test]
    fn pci_bus_ids_format_and_parse() {
        let mut d = DeviceFacts::default();
        d.set_attr(50, 0);
        d.set_attr(33, 0x1b);
        d.set_attr(34, 3);
        assert_eq!(pci_bus_id(&d), "00000000:1B:03.0");
        assert_eq!(pci_bus_id_legacy(&d), "0000:1B:03.0");
        assert_eq!(parse_pci_bus_id("00000000:1B:03.0"), Some((0, 0x1b, 3)));
        assert_eq!(parse_pci_bus_id("0000:1b:03.0"), Some((0, 0x1b, 3)));
        assert_eq!(parse_pci_bus_id("1b:03.0"), Some((0, 0x1b, 3)));
        assert_eq!(parse_pci_bus_id("1b:03.x"), None);
        assert_eq!(parse_pci_bus_id("GPU-1234"), None);
    }

    #[test]
    fn architectures_follow_compute_capability() {
        assert_eq!(architecture_of(9, 0), 9);
        assert_eq!(architecture_of(8, 0), 7);
        assert_eq!(architecture_of(8, 9), 8);
        assert_eq!(architecture_of(7, 5), 6);
        assert_eq!(architecture_of(1, 0), 0xFFFF_FFFF);
    }

    #[test]
    fn calls_before_init_are_uninitialized() {
        let mut n: c_uint = 7;
        assert_eq!(nvmlDeviceGetCount_v2(&mut n), NVML_ERROR_UNINITIALIZED);
        assert_eq!(nvmlShutdown(), NVML_ERROR_UNINITIALIZED);
        let mut h: Device = std::ptr::null_mut();
        assert_eq!(nvmlDeviceGetHandleByIndex_v2(0, &mut h), NVML_ERROR_UNINITIALIZED);
    }
}
