//! Entry-point and private-table access: `cuGetProcAddress` (both ABIs) and `cuGetExportTable`.
//! Lookups follow `proc_address`'s generated table; the private tables themselves live in `dark`.

use std::ffi::{c_char, c_int, c_void};

use vgpu_cuda_sys::driver::{CUdriverProcAddressQueryResult, CUuuid};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::ExportTableSize;

use crate::proc_address::{self, Lookup};
use crate::{client, dark, exports, ffi};

/// Resolves `symbol` for `version`/`flags`: the address and the `CUdriverProcAddressQueryResult`.
fn resolve(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CuResult<(usize, CUdriverProcAddressQueryResult)> {
    let name = ffi::cstr(symbol)?;
    if pfn.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // A program built for a newer CUDA than the driver reports is refused, as natively.
    if version > super::reported_driver_version() {
        ffi::write(pfn, std::ptr::null_mut())?;
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let found = match name.to_str() {
        Ok(n) => proc_address::lookup(n, version.max(0) as u32, flags),
        Err(_) => Lookup::NotFound,
    };
    let (addr, status) = match found {
        Lookup::Found(sym) => match exports::address_of(sym) {
            Some(a) => (a, CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_SUCCESS),
            None => (0, CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND),
        },
        Lookup::VersionNotSufficient => (
            0,
            CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT,
        ),
        Lookup::NotFound => (0, CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND),
    };
    ffi::write(pfn, addr as *mut c_void)?;
    Ok((addr, status))
}

/// How big the server driver's table `id` is: `Some(bytes)` when its first word is a size, `None` when the
/// server cannot say; `Err` when the server's driver has no such table.
fn server_table_size(id: &dark::Uuid) -> CuResult<Option<u64>> {
    if client::session().is_err() {
        return Ok(None);
    }
    let r = client::call(0, &ExportTableSize { uuid: *id }, &[])?;
    let plausible = r.first_word >= 8 && r.first_word <= 64 * 1024 && r.first_word % 8 == 0;
    Ok(plausible.then_some(r.first_word))
}

/// The bytes of a `CUuuid` (the header declares them as `char`).
fn uuid_bytes(id: CUuuid) -> dark::Uuid {
    id.bytes.map(|b| b as u8)
}

entry! {
    cuGetProcAddress => |f, symbol, pfn, version, flags| {
        // The CUDA 11.3 ABI has no status out-parameter and reports a failed lookup as CUDA_ERROR_NOT_FOUND.
        match resolve(symbol, pfn, version, flags)? {
            (0, _) => Err(CUDA_ERROR_NOT_FOUND),
            _ => Ok(()),
        }
    }
    cuGetProcAddress_v2 => |f, symbol, pfn, version, flags, status| {
        // A failed lookup is CUDA_SUCCESS with a NULL function; `status` says why.
        let (_, s) = resolve(symbol, pfn, version, flags)?;
        if !status.is_null() {
            ffi::write(status, s)?;
        }
        Ok(())
    }
    cuGetExportTable => |f, table, id| {
        if table.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let id = uuid_bytes(ffi::read(id)?);
        crate::log::log!(crate::log::DEBUG, "cuGetExportTable {}", id.iter().map(|b| format!("{b:02x}")).collect::<String>());
        match dark::get(&id, server_table_size) {
            Ok(t) => ffi::write(table, t as *const c_void),
            Err(e) => {
                ffi::write(table, std::ptr::null())?;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exports::{cuGetExportTable, cuGetProcAddress, cuGetProcAddress_v2};
    use std::ffi::CString;
    use CUdriverProcAddressQueryResult as Q;

    /// Calls the exported `cuGetProcAddress_v2` as the runtime does: (result, address, status).
    fn lookup_v2(name: &str, version: c_int, flags: u64) -> (CUresult, usize, Q) {
        let name = CString::new(name).unwrap_or_default();
        let mut pfn: *mut c_void = std::ptr::null_mut();
        let mut status = Q(99);
        // SAFETY: a NUL-terminated name and valid out-parameters.
        let r = unsafe { cuGetProcAddress_v2(name.as_ptr(), &mut pfn, version, flags, &mut status) };
        (r, pfn as usize, status)
    }

    fn address(symbol: &str) -> usize {
        exports::address_of(symbol).unwrap_or_else(|| panic!("{symbol} not exported"))
    }

    #[test]
    fn lookups_hand_out_the_exported_variants() {
        let found = Q::CU_GET_PROC_ADDRESS_SUCCESS;
        assert_eq!(
            lookup_v2("cuMemAlloc", 3020, 0),
            (CUDA_SUCCESS, address("cuMemAlloc_v2"), found)
        );
        assert_eq!(
            lookup_v2("cuMemAlloc", 2000, 0),
            (CUDA_SUCCESS, address("cuMemAlloc"), found)
        );
        assert_eq!(
            lookup_v2("cuLaunchKernel", 12000, 2),
            (CUDA_SUCCESS, address("cuLaunchKernel_ptsz"), found)
        );
        assert_eq!(
            lookup_v2("cuCtxSynchronize", 13000, 0),
            (CUDA_SUCCESS, address("cuCtxSynchronize_v2"), found)
        );
        assert_eq!(
            lookup_v2("cuGetProcAddress", 12000, 0),
            (CUDA_SUCCESS, address("cuGetProcAddress_v2"), found)
        );
        // The runtime's probe, an unknown name, and a name that is too new for the version asked.
        let missing = Q::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        assert_eq!(lookup_v2("", 0, 0), (CUDA_SUCCESS, 0, missing));
        assert_eq!(lookup_v2("cuNoSuchThing", 12000, 0), (CUDA_SUCCESS, 0, missing));
        assert_eq!(
            lookup_v2("cuLaunchKernelEx", 11000, 0),
            (CUDA_SUCCESS, 0, Q::CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT)
        );
        // A version above what cuDriverGetVersion reports is refused.
        assert_eq!(lookup_v2("cuMemAlloc", 13010, 0).0, CUDA_ERROR_INVALID_VALUE);
        // A NULL status pointer is allowed.
        let name = CString::new("cuInit").unwrap_or_default();
        let mut pfn: *mut c_void = std::ptr::null_mut();
        // SAFETY: a NUL-terminated name, a valid out-parameter and the NULL status the API allows.
        let r = unsafe { cuGetProcAddress_v2(name.as_ptr(), &mut pfn, 2000, 0, std::ptr::null_mut()) };
        assert_eq!(r, CUDA_SUCCESS);
        assert_eq!(pfn as usize, address("cuInit"));
    }

    #[test]
    fn the_cuda_11_abi_reports_failed_lookups_as_not_found() {
        let mut pfn: *mut c_void = std::ptr::null_mut();
        let name = CString::new("cuNoSuchThing").unwrap_or_default();
        // SAFETY: NUL-terminated names and valid out-parameters.
        unsafe {
            assert_eq!(
                cuGetProcAddress(name.as_ptr(), &mut pfn, 12000, 0),
                CUDA_ERROR_NOT_FOUND
            );
            assert!(pfn.is_null());
            let name = CString::new("cuStreamSynchronize").unwrap_or_default();
            assert_eq!(cuGetProcAddress(name.as_ptr(), &mut pfn, 12000, 2), CUDA_SUCCESS);
        }
        assert_eq!(pfn as usize, address("cuStreamSynchronize_ptsz"));
    }

    #[test]
    fn export_tables_come_back_by_uuid() {
        let mut table: *const c_void = std::ptr::null();
        let integrity = CUuuid {
            bytes: [
                0xd4, 0x08, 0x20, 0x55, 0xbd, 0xe6, 0x70, 0x4b, 0x8d, 0x34, 0xba, 0x12, 0x3c, 0x66, 0xe1, 0xf2,
            ]
            .map(|b: u8| b as c_char),
        };
        // SAFETY: valid out-parameters and a valid UUID; then the NULL out-parameter the driver refuses.
        unsafe {
            assert_eq!(cuGetExportTable(&mut table, &integrity), CUDA_SUCCESS);
            assert_eq!(ffi::read(table as *const u64), Ok(24));
            assert_eq!(
                cuGetExportTable(std::ptr::null_mut(), &integrity),
                CUDA_ERROR_INVALID_VALUE
            );
        }
    }
}
