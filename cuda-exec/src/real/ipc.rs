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

    /// Whether the driver can export device memory as dma-bufs (every device says
    /// `CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED`), for GPUDirect RDMA.
    pub(super) fn dma_buf_support(&self) -> Result<String, String> {
        // Window memory (VMM) must be registrable too: the session places cuMemAlloc memory there.
        let attrs = [
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED.0 as usize,
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED.0 as usize,
        ];
        let without: Vec<usize> = (0..self.devices.len())
            .filter(|&i| attrs.iter().any(|&a| self.devices[i].attr(a) != Some(1)))
            .collect();
        if self.driver.require(&["cuMemGetHandleForAddressRange"]).is_err() {
            return Err("the driver has no cuMemGetHandleForAddressRange".into());
        }
        match without.is_empty() {
            true => Ok("dma-buf export of device memory (cuMemGetHandleForAddressRange)".into()),
            false => Err(format!(
                "no dma-buf or GPUDirect-with-VMM support on device(s) {without:?} (open kernel module needed)"
            )),
        }
    }

    /// The allocation's `len` bytes at `addr` as a dma-buf descriptor: both must be multiples of the host's page size
    /// (an allocation of its own; a slab's share or an odd length goes through staging rather than exposing its
    /// neighbours' bytes to the NIC).
    pub(super) fn export_dma_buf(&self, addr: u64, len: usize) -> CuResult<vgpu_dataplane::pinned::DeviceExport> {
        // SAFETY: sysconf only reads a system setting.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .unwrap_or(4096)
            .max(1);
        if !addr.is_multiple_of(page) || !(len as u64).is_multiple_of(page) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut fd: c_int = -1;
        // SAFETY: out-pointer to a local int (the dma-buf handle type writes an int); the range is one allocation
        // the session listed, checked by the caller.
        unsafe {
            self.driver.cuMemGetHandleForAddressRange(
                (&mut fd as *mut c_int).cast::<c_void>(),
                addr,
                len,
                CUmemRangeHandleType::CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD,
                0,
            )
        }
        .result()?;
        if fd < 0 {
            return Err(CUDA_ERROR_UNKNOWN);
        }
        Ok(vgpu_dataplane::pinned::DeviceExport {
            kind: vgpu_dataplane::pinned::DeviceExportKind::DmaBuf,
            // SAFETY: the driver returned a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            offset: 0,
            len,
        })
    }

    /// `cuFlushGPUDirectRDMAWrites` for the current context (a driver without it needs no flush: it predates the
    /// call, CUDA 11.3, and orders such writes itself).
    pub(super) fn flush_rdma_writes(&self) -> CuResult<()> {
        if self.driver.require(&["cuFlushGPUDirectRDMAWrites"]).is_err() {
            return Ok(());
        }
        // SAFETY: two enumerators by value; the channel's context is current.
        unsafe {
            self.driver.cuFlushGPUDirectRDMAWrites(
                CUflushGPUDirectRDMAWritesTarget::CU_FLUSH_GPU_DIRECT_RDMA_WRITES_TARGET_CURRENT_CTX,
                CUflushGPUDirectRDMAWritesScope::CU_FLUSH_GPU_DIRECT_RDMA_WRITES_TO_OWNER,
            )
        }
        .result()
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
