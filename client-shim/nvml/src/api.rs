//! The NVML entry points vGPU implements: initialisation, devices and their identity (from the CUDA shim's
//! cached facts, so NVML and CUDA agree), and live values (memory, utilization, processes) from the server.

use std::ffi::{c_char, c_uint};
use std::mem::offset_of;

use vgpu_cuda_sys::driver::CUdevice_attribute;
use vgpu_cuda_sys::nvml::{
    nvmlDeviceArchitecture_t, nvmlDevice_t, nvmlFieldValue_t, nvmlGpuP2PCapsIndex_t, nvmlGpuP2PStatus_t, nvmlMemory_t,
    nvmlMemory_v2_t, nvmlPciInfo_t, nvmlProcessInfo_t, nvmlProcessInfo_v1_t, nvmlReturn_t, nvmlTemperatureSensors_t,
    nvmlUtilization_t, nvmlValueType_t, nvmlValue_t, NVML_API_VERSION,
};
use vgpu_cuda_sys::{CUresult, NvmlResult};
use vgpu_dataplane::handshake::DeviceFacts;
use vgpu_dataplane::wire::*;

use crate::{ffi, link};

/// The NVML library as vGPU implements it: the `impl Nvml` blocks `entry!` writes (see `exports`).
pub(crate) struct Nvml;

/// What a stub answers: not supported, or uninitialized before `nvmlInit` as every NVML call is.
pub(crate) fn unsupported() -> nvmlReturn_t {
    if link::is_initialized() {
        nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED
    } else {
        nvmlReturn_t::NVML_ERROR_UNINITIALIZED
    }
}

/// Declares implemented entry points: `name, name_v2 => |param, ...| { body }`, each with nvml.h's signature for
/// that name (`vgpu_cuda_sys::nvml_signature!`; a parameter list of the wrong length is a compile error naming
/// it). The body returns `NvmlResult<()>`; with `=> value |...|` it returns the declared type itself.
macro_rules! entry {
    () => {};
    ($($name:ident),+ $(,)? => || $body:block $($rest:tt)*) => {
        entry!(@each [$($name),+] [status, [], $body]);
        entry!($($rest)*);
    };
    ($($name:ident),+ $(,)? => |$($arg:ident),* $(,)?| $body:block $($rest:tt)*) => {
        entry!(@each [$($name),+] [status, [$($arg),*], $body]);
        entry!($($rest)*);
    };
    ($($name:ident),+ $(,)? => value |$($arg:ident),* $(,)?| $body:block $($rest:tt)*) => {
        entry!(@each [$($name),+] [value, [$($arg),*], $body]);
        entry!($($rest)*);
    };
    (@each [$($name:ident),+] $shared:tt) => {
        $( vgpu_cuda_sys::nvml_signature!($name, entry_fn, $shared); )+
    };
}

/// One entry point of `entry!`, called back by `nvml_signature!` with the header's declaration.
macro_rules! entry_fn {
    ([[$mode:ident, [$($arg:ident),*], $body:block]] $name:ident ( $($param:ident : $ty:ty),* ) -> $ret:ty;) => {
        entry_fn!(@pair $name, $ret, $mode, $body, [] [$($arg)*] [$($ty,)*]);
    };
    (@pair $name:ident, $ret:ty, $mode:ident, $body:block, [$($done:tt)*] [$a:ident $($args:ident)*] [$t:ty, $($tys:ty,)*]) => {
        entry_fn!(@pair $name, $ret, $mode, $body, [$($done)* $a: $t,] [$($args)*] [$($tys,)*]);
    };
    (@pair $name:ident, $ret:ty, $mode:ident, $body:block, [$($done:tt)*] [] []) => {
        impl $crate::api::Nvml {
            #[allow(non_snake_case, unused_variables, clippy::redundant_closure_call)]
            pub(crate) unsafe fn $name($($done)*) -> $ret {
                $crate::debug(format_args!("call {}", stringify!($name)));
                entry_fn!(@run $mode, $body)
            }
        }
    };
    (@pair $name:ident, $ret:ty, $mode:ident, $body:block, $done:tt [$($args:ident)*] [$($tys:ty,)*]) => {
        compile_error!(concat!(
            "entry! ", stringify!($name), ": the parameter names do not pair with nvml.h's parameters; left over: [",
            stringify!($($args),*), "] [", stringify!($($tys),*), "]"
        ));
    };
    // The body runs as a closure so that its `return` and `?` end the body, not the entry point.
    (@run status, $body:block) => {{
        let result: NvmlResult<()> = (|| $body)();
        match result {
            Ok(()) => nvmlReturn_t::NVML_SUCCESS,
            Err(e) => e,
        }
    }};
    (@run value, $body:block) => {
        $body
    };
}

/// The last `nvmlGpuP2PCapsIndex_t` NVML answers for.
const NVML_P2P_CAPS_INDEX_LAST: nvmlGpuP2PCapsIndex_t = nvmlGpuP2PCapsIndex_t::NVML_P2P_CAPS_INDEX_PROP;

/// `nvmlMemory_v2` in nvml.h: `NVML_STRUCT_VERSION(Memory, 2)`, the struct's size with the version in the top byte.
pub const NVML_MEMORY_V2: c_uint = std::mem::size_of::<nvmlMemory_v2_t>() as c_uint | (2 << 24);

/// The first `nvmlPciInfo_t` (before NVML 2.285's `busIdLegacy`), which the unversioned `nvmlDeviceGetPciInfo`
/// of old binaries fills: the current layout's first 36 bytes (its 16-byte bus id where `busIdLegacy` is now),
/// then 16 reserved bytes, zero.
const PCI_INFO_V1_LEN: usize = offset_of!(nvmlPciInfo_t, busId) + 16;

/// MIG instance ids of a process on a GPU without MIG.
const NO_INSTANCE: c_uint = 0xFFFF_FFFF;

fn device(handle: nvmlDevice_t) -> NvmlResult<(usize, &'static DeviceFacts)> {
    let index = link::index_of(handle)?;
    let facts = link::devices()?
        .get(index)
        .ok_or(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT)?;
    Ok((index, facts))
}

/// The server's live values for a device, or the error NVML would give when its driver cannot answer.
fn status(index: usize) -> NvmlResult<NvmlStatusReply> {
    link::ready()?.device_status(index as u32).map_err(|e| match e {
        // A server without NVML queries (older than this shim).
        CUresult::CUDA_ERROR_NOT_SUPPORTED => nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED,
        // The server is gone.
        CUresult::CUDA_ERROR_DEVICE_UNAVAILABLE => nvmlReturn_t::NVML_ERROR_GPU_IS_LOST,
        _ => nvmlReturn_t::NVML_ERROR_UNKNOWN,
    })
}

/// Writes one live value of the device behind `handle` to `out`: `pick` chooses it from the server's reading,
/// whose `valid` bit `flag` says whether the server's NVML could answer it (else `NVML_ERROR_NOT_SUPPORTED`).
fn write_live<T>(
    handle: nvmlDevice_t,
    out: *mut T,
    flag: u32,
    pick: impl FnOnce(&NvmlStatusReply) -> T,
) -> NvmlResult<()> {
    let (i, _) = device(handle)?;
    if out.is_null() {
        return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
    }
    let s = status(i)?;
    if s.valid & flag == 0 {
        return Err(nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED);
    }
    ffi::write(out, pick(&s))
}

/// Copies `text` and a NUL into the caller's `len`-byte buffer; too small is `NVML_ERROR_INSUFFICIENT_SIZE`.
fn put_str(out: *mut c_char, len: c_uint, text: &str) -> NvmlResult<()> {
    let buf = ffi::buffer(out, len as usize)?;
    if buf.len() <= text.len() {
        return Err(nvmlReturn_t::NVML_ERROR_INSUFFICIENT_SIZE);
    }
    buf[..text.len()].copy_from_slice(text.as_bytes());
    buf[text.len()] = 0;
    Ok(())
}

/// `text` as a NUL-terminated `char` array of a struct (cut to fit).
fn fixed<const N: usize>(text: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (o, &b) in out.iter_mut().zip(text.as_bytes().iter().take(N - 1)) {
        *o = b as c_char;
    }
    out
}

/// A CUDA device attribute as the CUDA shim answers `cuDeviceGetAttribute` (0 where the server gave none).
fn attribute(d: &DeviceFacts, a: CUdevice_attribute) -> i32 {
    d.attr(a.0 as usize).unwrap_or(0)
}

/// (domain, bus, device) from the CUDA attributes.
fn pci_location(d: &DeviceFacts) -> (u32, u32, u32) {
    use CUdevice_attribute as A;
    let attr = |a| attribute(d, a) as u32;
    (
        attr(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID),
        attr(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID),
        attr(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID),
    )
}

/// The compute capability (major, minor) from the CUDA attributes.
fn compute_capability(d: &DeviceFacts) -> (i32, i32) {
    (
        attribute(d, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
        attribute(d, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
    )
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
fn architecture_of(major: i32, minor: i32) -> nvmlDeviceArchitecture_t {
    use vgpu_cuda_sys::nvml::*;
    match (major, minor) {
        (3, _) => NVML_DEVICE_ARCH_KEPLER,
        (5, _) => NVML_DEVICE_ARCH_MAXWELL,
        (6, _) => NVML_DEVICE_ARCH_PASCAL,
        (7, 0..=2) => NVML_DEVICE_ARCH_VOLTA,
        (7, _) => NVML_DEVICE_ARCH_TURING,
        (8, 9) => NVML_DEVICE_ARCH_ADA,
        (8, _) => NVML_DEVICE_ARCH_AMPERE,
        (9, _) => NVML_DEVICE_ARCH_HOPPER,
        (10..=12, _) => NVML_DEVICE_ARCH_BLACKWELL,
        _ => NVML_DEVICE_ARCH_UNKNOWN,
    }
}

fn pci_info(index: usize, d: &DeviceFacts) -> nvmlPciInfo_t {
    // The vendor and subsystem ids come from the server's NVML; the emulated backend has none (0).
    let ids = status(index)
        .ok()
        .filter(|s| s.valid & NVML_HAS_PCI_IDS != 0)
        .map(|s| (s.pci_device_id, s.pci_subsystem_id))
        .unwrap_or((0, 0));
    let (domain, bus, device) = pci_location(d);
    nvmlPciInfo_t {
        busIdLegacy: fixed(&pci_bus_id_legacy(d)),
        domain,
        bus,
        device,
        pciDeviceId: ids.0,
        pciSubSystemId: ids.1,
        busId: fixed(&pci_bus_id(d)),
    }
}

/// The first `nvmlPciInfo_t`'s bytes (`PCI_INFO_V1_LEN`) for `p`: its fields up to `busId`, which old binaries
/// know as their bus id, and zeros where they have reserved words.
fn pci_info_v1(p: &nvmlPciInfo_t) -> [u8; PCI_INFO_V1_LEN] {
    let mut out = [0u8; PCI_INFO_V1_LEN];
    let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
    put(offset_of!(nvmlPciInfo_t, busIdLegacy), &p.busIdLegacy.map(|c| c as u8));
    put(offset_of!(nvmlPciInfo_t, domain), &p.domain.to_ne_bytes());
    put(offset_of!(nvmlPciInfo_t, bus), &p.bus.to_ne_bytes());
    put(offset_of!(nvmlPciInfo_t, device), &p.device.to_ne_bytes());
    put(offset_of!(nvmlPciInfo_t, pciDeviceId), &p.pciDeviceId.to_ne_bytes());
    put(
        offset_of!(nvmlPciInfo_t, pciSubSystemId),
        &p.pciSubSystemId.to_ne_bytes(),
    );
    out
}

/// This process's entry in a device's process list (a client process sees only itself: the server runs its
/// work in a worker of its own, and other tenants' processes are not this session's to see).
fn own_process(index: usize) -> NvmlResult<Option<nvmlProcessInfo_t>> {
    let s = status(index)?;
    Ok((s.process_active != 0).then(|| nvmlProcessInfo_t {
        pid: std::process::id(),
        usedGpuMemory: s.process_used,
        gpuInstanceId: NO_INSTANCE,
        computeInstanceId: NO_INSTANCE,
    }))
}

/// The process queries' shared contract: `*count` in is the array's capacity, out the number of processes;
/// a capacity too small gets the number needed and `NVML_ERROR_INSUFFICIENT_SIZE`.
fn put_processes<T: Copy>(count: *mut c_uint, infos: *mut T, list: &[T]) -> NvmlResult<()> {
    let capacity = ffi::read(count)? as usize;
    ffi::write(count, list.len() as c_uint)?;
    if capacity < list.len() {
        return Err(nvmlReturn_t::NVML_ERROR_INSUFFICIENT_SIZE);
    }
    ffi::write_array(infos, list)
}

/// Every process query for a kind of work vGPU never runs (graphics, MPS) lists nothing.
fn no_processes(handle: nvmlDevice_t, count: *mut c_uint) -> NvmlResult<()> {
    device(handle)?;
    ffi::read(count)?;
    ffi::write(count, 0)
}

fn device_by(pred: impl Fn(&DeviceFacts) -> bool, out: *mut nvmlDevice_t) -> NvmlResult<()> {
    let devices = link::devices()?;
    let index = devices
        .iter()
        .position(pred)
        .ok_or(nvmlReturn_t::NVML_ERROR_NOT_FOUND)?;
    ffi::write(out, link::handle_of(index))
}

fn driver_version() -> NvmlResult<String> {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(v) = VERSION.get() {
        link::ready()?;
        return Ok(v.clone());
    }
    let v = link::ready()?.driver_version().map_err(|e| match e {
        CUresult::CUDA_ERROR_NOT_SUPPORTED => nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED,
        _ => nvmlReturn_t::NVML_ERROR_UNKNOWN,
    })?;
    Ok(VERSION.get_or_init(|| v).clone())
}

/// NVML's own text for a status code (`nvmlErrorString`).
fn error_text(result: nvmlReturn_t) -> &'static std::ffi::CStr {
    use nvmlReturn_t as R;
    match result {
        R::NVML_SUCCESS => c"Success",
        R::NVML_ERROR_UNINITIALIZED => c"Uninitialized",
        R::NVML_ERROR_INVALID_ARGUMENT => c"Invalid Argument",
        R::NVML_ERROR_NOT_SUPPORTED => c"Not Supported",
        R::NVML_ERROR_NO_PERMISSION => c"Insufficient Permissions",
        R::NVML_ERROR_ALREADY_INITIALIZED => c"Already Initialized",
        R::NVML_ERROR_NOT_FOUND => c"Not Found",
        R::NVML_ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
        R::NVML_ERROR_INSUFFICIENT_POWER => c"Insufficient External Power",
        R::NVML_ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
        R::NVML_ERROR_TIMEOUT => c"Timeout",
        R::NVML_ERROR_IRQ_ISSUE => c"Interrupt Request Issue",
        R::NVML_ERROR_LIBRARY_NOT_FOUND => c"NVML Shared Library Not Found",
        R::NVML_ERROR_FUNCTION_NOT_FOUND => c"Function Not Found",
        R::NVML_ERROR_CORRUPTED_INFOROM => c"Corrupted infoROM",
        R::NVML_ERROR_GPU_IS_LOST => c"GPU is lost",
        R::NVML_ERROR_RESET_REQUIRED => c"GPU requires restart",
        R::NVML_ERROR_OPERATING_SYSTEM => c"The operating system has blocked the request.",
        R::NVML_ERROR_LIB_RM_VERSION_MISMATCH => c"RM has detected an NVML/RM version mismatch.",
        R::NVML_ERROR_IN_USE => c"In use by another client",
        R::NVML_ERROR_MEMORY => c"Insufficient Memory",
        R::NVML_ERROR_NO_DATA => c"No data",
        R::NVML_ERROR_VGPU_ECC_NOT_SUPPORTED => {
            c"The requested vgpu operation is not available on target device, becasue ECC is enabled"
        }
        R::NVML_ERROR_INSUFFICIENT_RESOURCES => c"Insufficient resources for request",
        R::NVML_ERROR_FREQ_NOT_SUPPORTED => c"Frequency not supported",
        R::NVML_ERROR_ARGUMENT_VERSION_MISMATCH => c"Argument version mismatch",
        R::NVML_ERROR_DEPRECATED => c"Deprecated",
        R::NVML_ERROR_NOT_READY => c"Not Ready",
        R::NVML_ERROR_GPU_NOT_FOUND => c"GPU not found",
        R::NVML_ERROR_INVALID_STATE => c"Invalid state",
        R::NVML_ERROR_RESET_TYPE_NOT_SUPPORTED => c"Reset type not supported",
        _ => c"Unknown Error",
    }
}

entry! {
    nvmlInit, nvmlInit_v2 => || {
        link::init()
    }
    nvmlInitWithFlags => |flags| {
        // NVML_INIT_FLAG_NO_GPUS / NO_ATTACH change nothing here: the session either opens or it does not.
        link::init()
    }
    nvmlShutdown => || {
        link::shutdown()
    }
    nvmlErrorString => value |result| {
        error_text(result).as_ptr()
    }
    nvmlSystemGetDriverVersion => |version, length| {
        let text = driver_version()?;
        put_str(version, length, &text)
    }
    nvmlSystemGetNVMLVersion => |version, length| {
        let text = format!("{NVML_API_VERSION}.{}", driver_version()?);
        put_str(version, length, &text)
    }
    nvmlSystemGetCudaDriverVersion, nvmlSystemGetCudaDriverVersion_v2 => |version| {
        let v = link::ready()?.cuda_driver_version().ok_or(nvmlReturn_t::NVML_ERROR_UNINITIALIZED)?;
        ffi::write(version, v)
    }
    nvmlDeviceGetCount, nvmlDeviceGetCount_v2 => |count| {
        ffi::write(count, link::devices()?.len() as c_uint)
    }
    nvmlDeviceGetHandleByIndex, nvmlDeviceGetHandleByIndex_v2 => |index, out| {
        if index as usize >= link::devices()?.len() {
            return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
        }
        ffi::write(out, link::handle_of(index as usize))
    }
    nvmlDeviceGetHandleByUUID => |uuid, out| {
        let text = ffi::cstr(uuid)?.to_str().map_err(|_| nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT)?;
        link::devices()?;
        if out.is_null() {
            return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
        }
        device_by(|d| d.uuid_string().eq_ignore_ascii_case(text.trim()), out)
    }
    nvmlDeviceGetHandleByPciBusId, nvmlDeviceGetHandleByPciBusId_v2 => |bus_id, out| {
        let text = ffi::cstr(bus_id)?.to_str().map_err(|_| nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT)?;
        link::devices()?;
        if out.is_null() {
            return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
        }
        let want = parse_pci_bus_id(text).ok_or(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT)?;
        device_by(|d| pci_location(d) == want, out)
    }
    nvmlDeviceGetName => |handle, name, length| {
        let (_, d) = device(handle)?;
        put_str(name, length, d.name_str())
    }
    nvmlDeviceGetUUID => |handle, uuid, length| {
        let (_, d) = device(handle)?;
        put_str(uuid, length, &d.uuid_string())
    }
    nvmlDeviceGetIndex => |handle, index| {
        let (i, _) = device(handle)?;
        ffi::write(index, i as c_uint)
    }
    nvmlDeviceGetMinorNumber => |handle, minor| {
        write_live(handle, minor, NVML_HAS_MINOR_NUMBER, |s| s.minor_number)
    }
    nvmlDeviceGetPciInfo => |handle, pci| {
        let (i, d) = device(handle)?;
        if pci.is_null() {
            return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
        }
        // An old binary's struct: only the first PCI_INFO_V1_LEN bytes are its.
        let bytes = pci_info_v1(&pci_info(i, d));
        ffi::buffer(pci as *mut c_char, bytes.len())?.copy_from_slice(&bytes);
        Ok(())
    }
    nvmlDeviceGetPciInfo_v2, nvmlDeviceGetPciInfo_v3 => |handle, pci| {
        let (i, d) = device(handle)?;
        if pci.is_null() {
            return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
        }
        ffi::write(pci, pci_info(i, d))
    }
    nvmlDeviceGetMemoryInfo => |handle, memory| {
        let (i, _) = device(handle)?;
        if memory.is_null() {
            return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
        }
        let s = status(i)?;
        ffi::write(memory, nvmlMemory_t { total: s.mem_total, free: s.mem_free, used: s.mem_used })
    }
    nvmlDeviceGetMemoryInfo_v2 => |handle, memory| {
        let (i, _) = device(handle)?;
        // The version field is the caller's promise about the struct's layout: check it before writing.
        let version = ffi::read(memory as *const c_uint)?;
        if version != NVML_MEMORY_V2 {
            return Err(nvmlReturn_t::NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let s = status(i)?;
        ffi::write(memory, nvmlMemory_v2_t {
            version,
            total: s.mem_total,
            reserved: s.mem_reserved,
            free: s.mem_free,
            used: s.mem_used,
        })
    }
    nvmlDeviceGetUtilizationRates => |handle, utilization| {
        write_live(handle, utilization, NVML_HAS_UTILIZATION, |s| nvmlUtilization_t { gpu: s.util_gpu, memory: s.util_memory })
    }
    nvmlDeviceGetTemperature => |handle, sensor, temperature| {
        // A bad handle is reported before a bad sensor.
        device(handle)?;
        if sensor != nvmlTemperatureSensors_t::NVML_TEMPERATURE_GPU {
            return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
        }
        write_live(handle, temperature, NVML_HAS_TEMPERATURE, |s| s.temperature_c)
    }
    nvmlDeviceGetPowerUsage => |handle, power| {
        write_live(handle, power, NVML_HAS_POWER, |s| s.power_mw)
    }
    nvmlDeviceGetCudaComputeCapability => |handle, major, minor| {
        let (_, d) = device(handle)?;
        if major.is_null() || minor.is_null() {
            return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
        }
        let (ma, mi) = compute_capability(d);
        ffi::write(major, ma)?;
        ffi::write(minor, mi)
    }
    nvmlDeviceGetBrand => |handle, brand| {
        write_live(handle, brand, NVML_HAS_BRAND, |s| vgpu_cuda_sys::nvml::nvmlBrandType_t(s.brand))
    }
    nvmlDeviceGetArchitecture => |handle, arch| {
        let (i, d) = device(handle)?;
        if arch.is_null() {
            return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
        }
        let from_server = status(i).ok().filter(|s| s.valid & NVML_HAS_ARCHITECTURE != 0).map(|s| s.architecture);
        let value = from_server.unwrap_or_else(|| {
            let (major, minor) = compute_capability(d);
            architecture_of(major, minor)
        });
        ffi::write(arch, value)
    }
    nvmlDeviceGetComputeRunningProcesses => |handle, count, infos| {
        let (i, _) = device(handle)?;
        ffi::read(count)?;
        let list: Vec<nvmlProcessInfo_v1_t> = own_process(i)?
            .map(|p| nvmlProcessInfo_v1_t { pid: p.pid, usedGpuMemory: p.usedGpuMemory })
            .into_iter()
            .collect();
        put_processes(count, infos, &list)
    }
    nvmlDeviceGetComputeRunningProcesses_v2, nvmlDeviceGetComputeRunningProcesses_v3 => |handle, count, infos| {
        let (i, _) = device(handle)?;
        ffi::read(count)?;
        let list: Vec<nvmlProcessInfo_t> = own_process(i)?.into_iter().collect();
        put_processes(count, infos, &list)
    }
    nvmlDeviceGetGraphicsRunningProcesses, nvmlDeviceGetGraphicsRunningProcesses_v2,
    nvmlDeviceGetGraphicsRunningProcesses_v3, nvmlDeviceGetMPSComputeRunningProcesses,
    nvmlDeviceGetMPSComputeRunningProcesses_v2, nvmlDeviceGetMPSComputeRunningProcesses_v3 => |handle, count, infos| {
        no_processes(handle, count)
    }
    nvmlDeviceGetP2PStatus => |device1, device2, index, status| {
        // A GPU reaches itself; two GPUs of one server are what that server's NVML says; GPUs of two servers never
        // reach each other (a kernel cannot dereference another server's memory).
        let (a, _) = device(device1)?;
        let (b, _) = device(device2)?;
        if index.0 > NVML_P2P_CAPS_INDEX_LAST.0 {
            return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
        }
        let value = link::ready()?.p2p_status(a as u32, b as u32, index.0).map_err(|e| match e {
            CUresult::CUDA_ERROR_INVALID_VALUE => nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT,
            CUresult::CUDA_ERROR_NOT_SUPPORTED => nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED,
            CUresult::CUDA_ERROR_DEVICE_UNAVAILABLE => nvmlReturn_t::NVML_ERROR_GPU_IS_LOST,
            _ => nvmlReturn_t::NVML_ERROR_UNKNOWN,
        })?;
        ffi::write(status, nvmlGpuP2PStatus_t(value))
    }
    nvmlDeviceGetNvLinkRemoteDeviceType, nvmlDeviceGetNvLinkState, nvmlDeviceGetNvLinkRemotePciInfo,
    nvmlDeviceGetNvLinkRemotePciInfo_v2 => |handle, link, out| {
        // No NVLink is remoted: what the driver says of a GPU without NVLink.
        device(handle)?;
        Err(nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED)
    }
}

/// One of the PCIe link values of the device behind `handle`, from the server's NVML (`bit` says which).
fn pcie_value(handle: nvmlDevice_t, out: *mut c_uint, bit: u32, pick: fn(&NvmlPcieReply) -> u32) -> NvmlResult<()> {
    let (i, _) = device(handle)?;
    if out.is_null() {
        return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
    }
    let r = link::ready()?.device_pcie(i as u32).map_err(|e| match e {
        // A server without these queries (older than this shim).
        CUresult::CUDA_ERROR_NOT_SUPPORTED => nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED,
        CUresult::CUDA_ERROR_DEVICE_UNAVAILABLE => nvmlReturn_t::NVML_ERROR_GPU_IS_LOST,
        _ => nvmlReturn_t::NVML_ERROR_UNKNOWN,
    })?;
    if r.valid & bit == 0 {
        return Err(nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED);
    }
    ffi::write(out, pick(&r))
}

/// Most fields one `nvmlDeviceGetFieldValues` may ask for here (NVML has a few hundred field ids).
const MAX_FIELD_VALUES: usize = 4096;

/// `nvmlDeviceGetFieldValues`: every field asked of the server's NVML; each answer has its own status.
fn field_values(handle: nvmlDevice_t, count: i32, values: *mut nvmlFieldValue_t) -> NvmlResult<()> {
    let (i, _) = device(handle)?;
    let n = usize::try_from(count).map_err(|_| nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT)?;
    if n == 0 {
        return Ok(());
    }
    if values.is_null() || n > MAX_FIELD_VALUES {
        return Err(nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT);
    }
    let mut asked = Vec::with_capacity(n);
    for k in 0..n {
        let v: nvmlFieldValue_t = ffi::read(values.wrapping_add(k))?;
        asked.push(NvmlFieldRequest {
            field_id: v.fieldId,
            scope_id: v.scopeId,
        });
    }
    let answers = link::ready()?.field_values(i as u32, &asked).map_err(|e| match e {
        CUresult::CUDA_ERROR_NOT_SUPPORTED => nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED,
        CUresult::CUDA_ERROR_DEVICE_UNAVAILABLE => nvmlReturn_t::NVML_ERROR_GPU_IS_LOST,
        _ => nvmlReturn_t::NVML_ERROR_UNKNOWN,
    })?;
    for (k, a) in answers.iter().enumerate() {
        let mut v: nvmlFieldValue_t = ffi::read(values.wrapping_add(k))?;
        v.timestamp = a.timestamp_us;
        v.latencyUsec = a.latency_us;
        v.valueType = nvmlValueType_t(a.value_type);
        v.nvmlReturn = nvmlReturn_t(a.nvml_return);
        v.value = nvmlValue_t { ullVal: a.value };
        ffi::write(values.wrapping_add(k), v)?;
    }
    Ok(())
}

entry! {
    nvmlDeviceGetCurrPcieLinkGeneration => |handle, out| {
        pcie_value(handle, out, NVML_PCIE_CURR_GEN, |r| r.curr_gen)
    }
    nvmlDeviceGetCurrPcieLinkWidth => |handle, out| {
        pcie_value(handle, out, NVML_PCIE_CURR_WIDTH, |r| r.curr_width)
    }
    nvmlDeviceGetMaxPcieLinkGeneration => |handle, out| {
        pcie_value(handle, out, NVML_PCIE_MAX_GEN, |r| r.max_gen)
    }
    nvmlDeviceGetMaxPcieLinkWidth => |handle, out| {
        pcie_value(handle, out, NVML_PCIE_MAX_WIDTH, |r| r.max_width)
    }
    nvmlDeviceGetFieldValues => |handle, count, values| {
        field_values(handle, count, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exports::{nvmlDeviceGetCount_v2, nvmlDeviceGetHandleByIndex_v2, nvmlErrorString, nvmlShutdown};

    #[test]
    fn the_legacy_pci_struct_is_the_current_ones_prefix() {
        // nvml.h (NVML API 13) on 64-bit Linux: the current struct is 68 bytes; the first one was 52.
        assert_eq!(std::mem::size_of::<nvmlPciInfo_t>(), 68);
        assert_eq!(PCI_INFO_V1_LEN, 52);
        assert_eq!(NVML_MEMORY_V2, 0x0200_0028);
        let p = nvmlPciInfo_t {
            busIdLegacy: fixed("0000:1B:03.0"),
            domain: 0,
            bus: 0x1b,
            device: 3,
            pciDeviceId: 0x2330_10de,
            pciSubSystemId: 7,
            busId: fixed("00000000:1B:03.0"),
        };
        let v1 = pci_info_v1(&p);
        assert_eq!(&v1[..12], b"0000:1B:03.0");
        assert_eq!(v1[20..24], 0x1bu32.to_ne_bytes());
        assert_eq!(v1[28..32], 0x2330_10deu32.to_ne_bytes());
        assert!(v1[36..].iter().all(|&b| b == 0), "reserved words are zero");
    }

    #[test]
    fn pci_bus_ids_format_and_parse() {
        let mut d = DeviceFacts::default();
        d.set_attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID.0 as usize, 0);
        d.set_attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID.0 as usize, 0x1b);
        d.set_attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID.0 as usize, 3);
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
        let mut h: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY: valid out-parameters.
        unsafe {
            assert_eq!(nvmlDeviceGetCount_v2(&mut n), nvmlReturn_t::NVML_ERROR_UNINITIALIZED);
            assert_eq!(nvmlShutdown(), nvmlReturn_t::NVML_ERROR_UNINITIALIZED);
            assert_eq!(
                nvmlDeviceGetHandleByIndex_v2(0, &mut h),
                nvmlReturn_t::NVML_ERROR_UNINITIALIZED
            );
        }
    }

    #[test]
    fn error_strings_are_nvmls() {
        // SAFETY: nvmlErrorString takes any code and returns a static string.
        let text = |r| {
            unsafe { std::ffi::CStr::from_ptr(nvmlErrorString(r)) }
                .to_str()
                .unwrap_or("")
        };
        assert_eq!(text(nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED), "Not Supported");
        assert_eq!(text(nvmlReturn_t(12345)), "Unknown Error");
    }
}
