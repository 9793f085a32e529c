//! Inter-process sharing: `cuIpc*` handles and POSIX-file-descriptor shareable handles, between processes whose
//! sessions belong to one tenant on one GPU server (the server's IPC registry refuses anyone else).
//!
//! The 64 bytes an app gets (`CUipcMemHandle`, `CUipcEventHandle`) are vGPU's `IpcHandle`: the server's id and a
//! random token, never the driver's handle. A shareable handle is a real file descriptor: a sealed memfd holding
//! the same 64 bytes, which the app may pass to another process over a Unix socket (`SCM_RIGHTS`) or by fork;
//! `cuMemImportFromShareableHandle` there reads the token back from it.

use std::collections::HashMap;
use std::ffi::c_int;
use std::os::fd::IntoRawFd;
use std::sync::Mutex;

use vgpu_cuda_sys::driver::{CUevent, CUevent_flags, CUipcEventHandle, CUipcMemHandle, CUmemAllocationHandleType};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::CAP_IPC;
use vgpu_dataplane::wire::*;
use zerocopy::IntoBytes;

use super::{need_ctx, ClientHandle};
use crate::state::{self, VmmHandle};
use crate::{client, ffi, mirror};

/// Memory this process opened: address → (size, opens not yet closed). The driver returns the same address for a
/// second open of one handle; the last close unmaps it.
static OPENED: Mutex<Option<HashMap<u64, (u64, u32)>>> = Mutex::new(None);

/// The session, if its server runs an IPC registry (an older one would end the session on an unknown operation).
fn ipc_session() -> CuResult<()> {
    if client::session()?.capabilities & CAP_IPC == 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    Ok(())
}

/// The 64 bytes of a CUDA IPC handle as they travel.
fn handle_bytes(reserved: &[std::ffi::c_char; IPC_HANDLE_LEN]) -> [u8; IPC_HANDLE_LEN] {
    reserved.map(|c| c as u8)
}

fn reserved(handle: &IpcHandle) -> [std::ffi::c_char; IPC_HANDLE_LEN] {
    let mut out = [0; IPC_HANDLE_LEN];
    for (o, b) in out.iter_mut().zip(handle.as_bytes()) {
        *o = *b as std::ffi::c_char;
    }
    out
}

/// `handle` if it is a vGPU handle of `kind`: anything else (zeros, a corrupted or foreign handle) is refused here
/// with the driver's answer for a handle it cannot open; the server checks again.
fn parse(bytes: &[u8; IPC_HANDLE_LEN], kind: u16) -> CuResult<IpcHandle> {
    IpcHandle::parse(bytes, kind).ok_or(CUDA_ERROR_INVALID_VALUE)
}

entry! {
    cuIpcGetMemHandle => |f, handle, dptr| {
        need_ctx()?;
        ipc_session()?;
        if handle.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if mirror::find(dptr as usize).is_some_and(|m| m.kind != mirror::Kind::Pinned) {
            // Managed memory cannot be shared this way, natively neither.
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let r = client::call(0, &IpcGetMemHandle { dptr: DevicePtr(dptr) }, &[])?;
        ffi::write(handle, CUipcMemHandle { reserved: reserved(&r.handle) })
    }
    cuIpcOpenMemHandle, cuIpcOpenMemHandle_v2 => |f, pdptr, handle, flags| {
        need_ctx()?;
        ipc_session()?;
        if pdptr.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let handle = parse(&handle_bytes(&handle.reserved), IPC_KIND_MEM)?;
        let r = client::call(0, &IpcOpenMemHandle { handle, flags, _pad: 0 }, &[])?;
        let dptr = r.dptr.get();
        {
            let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
            let entry = opened.get_or_insert_with(HashMap::new).entry(dptr).or_insert((r.size, 0));
            entry.1 += 1;
        }
        // Copies and kernels may name it from now on, and the pointer queries answer for it.
        state::write().device_ranges.insert(dptr, r.size);
        ffi::write(pdptr, dptr)
    }
    cuIpcCloseMemHandle => |f, dptr| {
        need_ctx()?;
        ipc_session()?;
        client::call(0, &IpcCloseMemHandle { dptr: DevicePtr(dptr) }, &[])?;
        let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
        let map = opened.get_or_insert_with(HashMap::new);
        if let Some(entry) = map.get_mut(&dptr) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&dptr);
                state::write().device_ranges.remove(&dptr);
            }
        }
        Ok(())
    }
    cuIpcGetEventHandle => |f, handle, event| {
        ipc_session()?;
        if handle.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let event = super::event::event_id(event)?;
        let r = client::call(0, &IpcGetEventHandle { event }, &[])?;
        ffi::write(handle, CUipcEventHandle { reserved: reserved(&r.handle) })
    }
    cuIpcOpenEventHandle => |f, ph_event, handle| {
        need_ctx()?;
        ipc_session()?;
        if ph_event.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let handle = parse(&handle_bytes(&handle.reserved), IPC_KIND_EVENT)?;
        let event = EventId(state::new_id());
        client::call(0, &IpcOpenEventHandle { event, handle }, &[])?;
        // It behaves as an event created with these flags (cuda.h): no timing, and its records are made visible to
        // the other process at once (`event::record`).
        let flags = CUevent_flags::CU_EVENT_DISABLE_TIMING.0 | CUevent_flags::CU_EVENT_INTERPROCESS.0;
        state::write().events.insert(event, flags);
        ffi::write(ph_event, CUevent::of(event))
    }
    cuMemExportToShareableHandle => |f, shareable, handle, handle_type, flags| {
        super::vmm::vmm_session()?;
        ipc_session()?;
        if shareable.is_null() || handle_type != CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR {
            // Only POSIX file descriptors are shared (no fabric here, no Win32 handles on Linux).
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let call = MemExportShareable { handle: AllocHandleId(handle), flags, handle_type: handle_type.0, _pad: 0 };
        let r = client::call(0, &call, &[])?;
        // A new descriptor each call, as natively; the app owns it.
        let fd = ffi::sealed_file(r.handle.as_bytes())?.into_raw_fd();
        ffi::write(shareable as *mut c_int, fd)
    }
    cuMemImportFromShareableHandle => |f, handle, os_handle, handle_type| {
        super::vmm::vmm_session()?;
        ipc_session()?;
        if handle.is_null() || handle_type != CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // A POSIX descriptor travels as the pointer's value (cuda.h).
        let fd = c_int::try_from(os_handle as usize).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let mut bytes = [0u8; IPC_HANDLE_LEN];
        ffi::read_file_start(fd, &mut bytes)?;
        let token = parse(&bytes, IPC_KIND_SHAREABLE)?;
        let id = AllocHandleId(state::new_id());
        let r = client::call(0, &MemImportShareable { handle: id, token }, &[])?;
        let info = VmmHandle { handle_types: r.prop.handle_types, refs: 1, mappings: 0 };
        state::write().vmm_handles.insert(id, info);
        ffi::write(handle, id.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_keep_their_bytes_through_cuda_h_types() {
        let h = IpcHandle::new(IPC_KIND_EVENT, 0xfeed_f00d, [0xa5; 16]);
        let back = handle_bytes(&reserved(&h));
        assert_eq!(parse(&back, IPC_KIND_EVENT), Ok(h));
        assert_eq!(parse(&back, IPC_KIND_MEM), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(std::mem::size_of::<CUipcMemHandle>(), IPC_HANDLE_LEN);
        assert_eq!(std::mem::size_of::<CUipcEventHandle>(), IPC_HANDLE_LEN);
    }

    #[test]
    fn shareable_files_carry_the_token_and_refuse_changes() {
        use std::os::fd::AsRawFd;
        let h = IpcHandle::new(IPC_KIND_SHAREABLE, 3, [1; 16]);
        let fd = ffi::sealed_file(h.as_bytes()).expect("file");
        let mut bytes = [0u8; IPC_HANDLE_LEN];
        ffi::read_file_start(fd.as_raw_fd(), &mut bytes).expect("read");
        assert_eq!(parse(&bytes, IPC_KIND_SHAREABLE), Ok(h));
        let mut file = std::fs::File::from(fd);
        assert!(
            std::io::Write::write_all(&mut file, b"x").is_err(),
            "sealed against writes"
        );
        assert_eq!(ffi::read_file_start(-1, &mut bytes), Err(CUDA_ERROR_INVALID_VALUE));
    }
}
