//! Real backend: the driver's inter-process sharing, between this worker and other workers of the same server
//! (the session's IPC registry decides who may open what; these calls only convert the handles). Every `unsafe`
//! block calls a documented driver entry point with out-pointers to locals.

use std::ffi::{c_char, c_int, c_void};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use vgpu_cuda_sys::driver::*;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::DevicePtr;
use vgpu_dataplane::wire::IPC_HANDLE_LEN;

use super::{RealBackend, ToDriver};
use crate::backend::*;

/// The driver's 64 handle bytes as the registry keeps them.
fn to_bytes(reserved: [c_char; IPC_HANDLE_LEN]) -> [u8; IPC_HANDLE_LEN] {
    reserved.map(|c| c as u8)
}

fn to_reserved(bytes: &[u8; IPC_HANDLE_LEN]) -> [c_char; IPC_HANDLE_LEN] {
    bytes.map(|b| b as c_char)
}

impl RealBackend {
    pub(super) fn ipc_export_mem(&self, dptr: DevicePtr) -> CuResult<Shared> {
        let mut h = CUipcMemHandle::default();
        // SAFETY: out-pointer to a local; the session checked that dptr lies in one of its allocations.
        unsafe { self.driver.cuIpcGetMemHandle(&mut h, dptr.0) }.result()?;
        Ok(Shared {
            driver: to_bytes(h.reserved),
            fd: None,
        })
    }

    pub(super) fn ipc_open_mem(&self, shared: SharedRef<'_>, flags: u32) -> CuResult<DevicePtr> {
        let h = CUipcMemHandle {
            reserved: to_reserved(shared.driver),
        };
        let mut d = 0;
        // SAFETY: out-pointer to a local; the handle is one another worker's driver issued (from the registry).
        unsafe { self.driver.cuIpcOpenMemHandle_v2(&mut d, h, flags) }.result()?;
        Ok(DevicePtr(d))
    }

    pub(super) fn ipc_export_event(&self, event: Event) -> CuResult<Shared> {
        let mut h = CUipcEventHandle::default();
        // SAFETY: out-pointer to a local; the event is this session's.
        unsafe { self.driver.cuIpcGetEventHandle(&mut h, event.to_driver()) }.result()?;
        Ok(Shared {
            driver: to_bytes(h.reserved),
            fd: None,
        })
    }

    pub(super) fn ipc_open_event(&self, shared: SharedRef<'_>) -> CuResult<Event> {
        let h = CUipcEventHandle {
            reserved: to_reserved(shared.driver),
        };
        let mut e = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; the handle is one another worker's driver issued (from the registry).
        unsafe { self.driver.cuIpcOpenEventHandle(&mut e, h) }.result()?;
        Ok(e.into())
    }

    pub(super) fn export_shareable(&self, handle: AllocHandle, handle_type: u32, flags: u64) -> CuResult<Shared> {
        let mut fd: c_int = -1;
        // SAFETY: for a POSIX file descriptor (the only type the session asks for) the driver writes an int to the
        // out-pointer, a local of that type.
        unsafe {
            self.driver.cuMemExportToShareableHandle(
                &mut fd as *mut c_int as *mut c_void,
                handle.to_driver(),
                CUmemAllocationHandleType(handle_type),
                flags,
            )
        }
        .result()?;
        if fd < 0 {
            return Err(CUDA_ERROR_UNKNOWN);
        }
        Ok(Shared {
            driver: [0; IPC_HANDLE_LEN],
            // SAFETY: the driver created this descriptor for the caller, who now owns it.
            fd: Some(unsafe { OwnedFd::from_raw_fd(fd) }),
        })
    }

    pub(super) fn import_shareable(&self, shared: SharedRef<'_>) -> CuResult<AllocHandle> {
        let fd = shared.fd.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut h: CUmemGenericAllocationHandle = 0;
        // SAFETY: out-pointer to a local; a POSIX descriptor travels as the pointer's value, as cuda.h documents,
        // and stays open (ours) for the call.
        unsafe {
            self.driver.cuMemImportFromShareableHandle(
                &mut h,
                fd.as_raw_fd() as usize as *mut c_void,
                CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            )
        }
        .result()?;
        Ok(AllocHandle(h))
    }
}
