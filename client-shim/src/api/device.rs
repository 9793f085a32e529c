//! Initialisation, driver version, device queries and error strings, all answered from facts the server sent
//! once at session start (no round trip).

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CString};
use std::sync::LazyLock;

use vgpu_cuda_sys::driver::{CUdevice, CUdevice_attribute, CUuuid};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::DeviceFacts;

use crate::{client, ffi};

/// The CUDA API level this shim implements (CUDA 13.0).
const API_VERSION: i32 = 13000;

/// What `cuDriverGetVersion` reports: the server driver's version, capped at the API level this shim
/// implements; before `cuInit` (the runtime asks for entry points first), that API level.
pub(crate) fn reported_driver_version() -> i32 {
    client::session()
        .map(|s| s.driver_version.min(API_VERSION))
        .unwrap_or(API_VERSION)
}

pub(crate) fn device(dev: CUdevice) -> CuResult<&'static DeviceFacts> {
    let s = client::session()?;
    usize::try_from(dev)
        .ok()
        .and_then(|d| s.devices.get(d))
        .ok_or(CUDA_ERROR_INVALID_DEVICE)
}

/// A device attribute as the server reported it (`None`: not reported).
pub(crate) fn attribute(d: &DeviceFacts, attrib: CUdevice_attribute) -> Option<c_int> {
    d.attr(attrib.0 as usize)
}

/// The device's PCI (domain, bus, device), as `cuDeviceGetAttribute` reports them.
pub(crate) fn pci_location(d: &DeviceFacts) -> (c_int, c_int, c_int) {
    let a = |attrib| attribute(d, attrib).unwrap_or(0);
    (
        a(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID),
        a(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID),
        a(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID),
    )
}

/// Parses `[domain]:[bus]:[device].[function]` (hex; the domain may be left out, as `cuDeviceGetByPCIBusId`
/// accepts) into (domain, bus, device).
fn parse_pci_bus_id(text: &str) -> Option<(u32, u32, u32)> {
    let hex = |s: &str| u32::from_str_radix(s.trim(), 16).ok();
    let parts: Vec<&str> = text.split(':').collect();
    let (domain, bus, rest) = match parts.as_slice() {
        [d, b, r] => (hex(d)?, hex(b)?, *r),
        [b, r] => (0, hex(b)?, *r),
        _ => return None,
    };
    let dev = hex(rest.split('.').next()?)?;
    Some((domain, bus, dev))
}

/// Every defined CUresult's name and description as C strings (`cuGetErrorName`/`cuGetErrorString` hand out
/// pointers that must stay valid for the process).
static ERROR_TEXT: LazyLock<HashMap<u32, (CString, CString)>> = LazyLock::new(|| {
    (0..=u16::MAX as u32)
        .filter_map(|code| {
            let c = CUresult::from_code(code);
            Some((
                code,
                (CString::new(c.name()?).ok()?, CString::new(c.description()?).ok()?),
            ))
        })
        .collect()
});

entry! {
    cuInit => |f, flags| {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        client::init().result()
    }
    cuDriverGetVersion => |f, version| {
        ffi::write(version, reported_driver_version())
    }
    cuDeviceGetCount => |f, count| {
        ffi::write(count, client::session()?.devices.len() as c_int)
    }
    cuDeviceGet => |f, out, ordinal| {
        device(ordinal)?;
        ffi::write(out, ordinal)
    }
    cuDeviceGetName => |f, name, len, dev| {
        let d = device(dev)?;
        let len = usize::try_from(len).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let out = ffi::bytes_mut(name as *mut u8, len)?;
        if out.is_empty() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let text = d.name_str().as_bytes();
        let n = text.len().min(out.len() - 1);
        out[..n].copy_from_slice(&text[..n]);
        out[n] = 0;
        Ok(())
    }
    cuDeviceTotalMem_v2 => |f, bytes, dev| {
        ffi::write(bytes, device(dev)?.total_mem as usize)
    }
    cuDeviceGetAttribute => |f, value, attrib, dev| {
        let d = device(dev)?;
        let v = attribute(d, attrib).ok_or_else(|| {
            crate::log::log!(crate::log::DEBUG, "cuDeviceGetAttribute({}): not reported by the server", attrib.0);
            CUDA_ERROR_INVALID_VALUE
        })?;
        ffi::write(value, v)
    }
    cuDeviceGetUuid, cuDeviceGetUuid_v2 => |f, uuid, dev| {
        ffi::write(uuid, CUuuid { bytes: device(dev)?.uuid.map(|b| b as c_char) })
    }
    cuDeviceComputeCapability => |f, major, minor, dev| {
        let d = device(dev)?;
        ffi::write(major, attribute(d, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).unwrap_or(0))?;
        ffi::write(minor, attribute(d, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).unwrap_or(0))
    }
    cuDeviceGetPCIBusId => |f, out, len, dev| {
        let d = device(dev)?;
        // The driver's form: a 4-digit domain, lower-case hex ("0000:1b:00.0"; nvidia-smi prints 8 digits).
        let (domain, bus, device) = pci_location(d);
        let text = format!("{domain:04x}:{bus:02x}:{device:02x}.0");
        let len = usize::try_from(len).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let buf = ffi::bytes_mut(out as *mut u8, len)?;
        if buf.is_empty() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let n = text.len().min(buf.len() - 1);
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        buf[n] = 0;
        Ok(())
    }
    cuDeviceGetByPCIBusId => |f, out, bus_id| {
        let s = client::session()?;
        let text = ffi::cstr(bus_id)?.to_str().map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let (domain, bus, dev) = parse_pci_bus_id(text).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let found = s.devices.iter().position(|d| {
            let (dd, db, dv) = pci_location(d);
            (dd as u32, db as u32, dv as u32) == (domain, bus, dev)
        });
        ffi::write(out, found.ok_or(CUDA_ERROR_INVALID_DEVICE)? as c_int)
    }
    cuGetErrorName => |f, error, text| {
        match ERROR_TEXT.get(&error.code()) {
            Some((name, _)) => ffi::write(text, name.as_ptr()),
            None => {
                let _ = ffi::write(text, std::ptr::null());
                Err(CUDA_ERROR_INVALID_VALUE)
            }
        }
    }
    cuGetErrorString => |f, error, text| {
        match ERROR_TEXT.get(&error.code()) {
            Some((_, s)) => ffi::write(text, s.as_ptr()),
            None => {
                let _ = ffi::write(text, std::ptr::null());
                Err(CUDA_ERROR_INVALID_VALUE)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_bus_ids_parse_with_and_without_domain() {
        assert_eq!(parse_pci_bus_id("00000000:1B:00.0"), Some((0, 0x1b, 0)));
        assert_eq!(parse_pci_bus_id("0001:02:03.0"), Some((1, 2, 3)));
        assert_eq!(parse_pci_bus_id("1b:00.0"), Some((0, 0x1b, 0)));
        assert_eq!(parse_pci_bus_id("nonsense"), None);
    }
}
