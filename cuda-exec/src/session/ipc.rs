//! Handlers: inter-process sharing (`cuIpc*`, `cuMemExportToShareableHandle`/`cuMemImportFromShareableHandle`)
//! between sessions of one tenant on this server, through the server's IPC registry (`crate::registry`).
//!
//! Exports go to the registry with the driver's own handle; the client gets an `IpcHandle` (server id, token).
//! Opens ask the registry, which answers only a session of the exporter's tenant. Memory a session opened or
//! imported does not count against its memory limit (natively it is the exporter's memory, and cuMemGetInfo of the
//! opener does not change); it stays counted against the exporter's limit, even after the exporter freed it, until
//! the last session that opened it closes it (`held`), so that sharing cannot carry a tenant past its limits.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::*;
use vgpu_dataplane::wire::*;

use super::channel::{Channel, Cx, Serve, Served};
use super::Session;
use crate::backend::*;
use crate::registry::{RegistryLink, Token};

/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`: the one shareable handle type shared between sessions.
const HANDLE_TYPE_POSIX_FD: u32 = 1;

/// A session's link to the registry and its IPC books.
#[derive(Default)]
pub(super) struct Ipc {
    link: OnceLock<RegistryLink>,
    books: Mutex<Books>,
}

#[derive(Default)]
struct Books {
    /// This session's exports: allocation base, physical memory or event → the handle the client got (one per
    /// object, however often it asks, as natively).
    mem_exports: HashMap<u64, IpcHandle>,
    physical_exports: HashMap<AllocHandleId, IpcHandle>,
    event_exports: HashMap<EventId, IpcHandle>,
    /// Memory this session freed while other sessions still had it open: token → bytes still counted here.
    held: HashMap<Token, u64>,
    /// Memory this session opened: address → what is mapped there.
    opened: HashMap<u64, OpenedMem>,
    /// Physical memory this session imported: client id → the export's token.
    imported: HashMap<AllocHandleId, Token>,
}

struct OpenedMem {
    token: Token,
    /// Opens not yet closed (the driver returns the same address for a second open, with a reference more).
    refs: u32,
}

impl Session {
    /// Connects the session to the server's IPC registry (the worker does this once, from its handoff).
    pub fn attach_registry(&self, link: RegistryLink) {
        let _ = self.ipc.link.set(link);
    }

    /// The registry, or `CUDA_ERROR_NOT_SUPPORTED` for a session served without one.
    pub(super) fn registry(&self) -> CuResult<&RegistryLink> {
        self.ipc.link.get().ok_or(CUDA_ERROR_NOT_SUPPORTED)
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        self.ipc.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops counting memory this session freed once no other session has it open any more. Cheap when nothing is
    /// held; called at every usage reading and before an allocation is refused.
    pub(super) fn release_held(&self) {
        let mut books = self.books();
        if books.held.is_empty() {
            return;
        }
        let Ok(link) = self.registry() else { return };
        let held: Vec<(Token, u64)> = books.held.iter().map(|(t, s)| (*t, *s)).collect();
        for (token, size) in held {
            if link.open_count(token).is_ok_and(|n| n == 0) {
                books.held.remove(&token);
                self.unreserve(size);
            }
        }
    }

    /// Withdraws an export whose object the session let go. Returns true where other sessions still have the
    /// memory open: its `charged` bytes stay counted (`held`) until they close it.
    fn withdraw(&self, books: &mut Books, handle: IpcHandle, charged: u64) -> bool {
        let Ok(link) = self.registry() else { return false };
        match link.revoke(handle.token) {
            Ok(open) if open > 0 && charged > 0 => {
                books.held.insert(handle.token, charged);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!("cannot withdraw an IPC export: {e}");
                false
            }
        }
    }

    /// `cuMemFree`/`cuMemFreeAsync` of an allocation the driver freed: the session forgets it, withdraws its export,
    /// and returns its bytes to the limit unless another session still has it open.
    pub(super) fn free_allocation(&self, dptr: DevicePtr) {
        let size = {
            let Some(size) = self.objects().remove_allocation(dptr) else {
                return;
            };
            size
        };
        let mut books = self.books();
        let held = match books.mem_exports.remove(&dptr.0) {
            Some(handle) => self.withdraw(&mut books, handle, size),
            None => false,
        };
        drop(books);
        if !held {
            self.unreserve(size);
        }
    }

    /// Physical memory the session held is gone: an export of it is withdrawn, an import of it closed. Returns
    /// true where other sessions still have it open (its `charged` bytes stay counted).
    pub(super) fn ipc_physical_gone(&self, id: AllocHandleId, charged: u64) -> bool {
        let mut books = self.books();
        if let Some(token) = books.imported.remove(&id) {
            if let Ok(link) = self.registry() {
                let _ = link.close(token);
            }
        }
        match books.physical_exports.remove(&id) {
            Some(handle) => self.withdraw(&mut books, handle, charged),
            None => false,
        }
    }

    /// `cuEventDestroy`: an export of the event is withdrawn.
    pub(super) fn ipc_event_destroyed(&self, id: EventId) {
        let mut books = self.books();
        if let Some(handle) = books.event_exports.remove(&id) {
            self.withdraw(&mut books, handle, 0);
        }
    }

    /// `cuIpcGetMemHandle`: the `cuMemAlloc` allocation holding `dptr` (its base is what the handle names).
    fn ipc_get_mem_handle(&self, dptr: DevicePtr) -> CuResult<IpcHandle> {
        let link = self.registry()?;
        let (base, size) = {
            let objs = self.objects();
            let (&base, &len) = objs
                .ranges
                .range(..=dptr.0)
                .next_back()
                .ok_or(CUDA_ERROR_INVALID_VALUE)?;
            if dptr.0 >= base.saturating_add(len) || objs.allocations.get(&base) != Some(&len) {
                // Not an allocation of this session (module globals, mappings, opened memory, host mirrors).
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            (base, len)
        };
        let mut books = self.books();
        if let Some(&handle) = books.mem_exports.get(&base) {
            return Ok(handle);
        }
        let shared = self.backend.ipc_get_mem_handle(dptr)?;
        let e = link.export(IPC_KIND_MEM, size, shared.driver, shared.fd.as_ref())?;
        let handle = IpcHandle::new(IPC_KIND_MEM, e.server_id, e.token);
        books.mem_exports.insert(base, handle);
        Ok(handle)
    }

    /// `cuIpcOpenMemHandle`: maps memory another session of the tenant exported; copies and kernels may name it.
    fn ipc_open_mem_handle(&self, handle: &IpcHandle, flags: u32) -> CuResult<IpcOpenReply> {
        let link = self.registry()?;
        let h =
            IpcHandle::parse(zerocopy::IntoBytes::as_bytes(handle), IPC_KIND_MEM).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut books = self.books();
        super::under_cap(books.opened.len(), self.limits.caps.allocations)?;
        let opened = link.open(IPC_KIND_MEM, h.server_id, h.token)?;
        let shared = SharedRef {
            driver: &opened.driver,
            fd: opened.fd.as_ref(),
            size: opened.size,
        };
        let dptr = match self.backend.ipc_open_mem_handle(shared, flags) {
            Ok(d) => d,
            Err(e) => {
                let _ = link.close(h.token);
                return Err(e);
            }
        };
        match books.opened.get_mut(&dptr.0) {
            Some(o) => o.refs = o.refs.saturating_add(1),
            None => {
                books.opened.insert(
                    dptr.0,
                    OpenedMem {
                        token: h.token,
                        refs: 1,
                    },
                );
                self.objects().ranges.insert(dptr.0, opened.size);
            }
        }
        Ok(IpcOpenReply {
            dptr,
            size: opened.size,
        })
    }

    /// `cuIpcCloseMemHandle` of an address `ipc_open_mem_handle` returned; the last close unmaps it.
    fn ipc_close_mem_handle(&self, dptr: DevicePtr) -> CuResult<()> {
        let mut books = self.books();
        let token = books
            .opened
            .get(&dptr.0)
            .map(|o| o.token)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        self.backend.ipc_close_mem_handle(dptr)?;
        if let Some(o) = books.opened.get_mut(&dptr.0) {
            o.refs -= 1;
            if o.refs == 0 {
                books.opened.remove(&dptr.0);
                self.objects().ranges.remove(&dptr.0);
            }
        }
        if let Ok(link) = self.registry() {
            let _ = link.close(token);
        }
        Ok(())
    }

    fn ipc_get_event_handle(&self, id: EventId, event: Event) -> CuResult<IpcHandle> {
        let link = self.registry()?;
        let mut books = self.books();
        if let Some(&handle) = books.event_exports.get(&id) {
            return Ok(handle);
        }
        let shared = self.backend.ipc_get_event_handle(event)?;
        let e = link.export(IPC_KIND_EVENT, 0, shared.driver, None)?;
        let handle = IpcHandle::new(IPC_KIND_EVENT, e.server_id, e.token);
        books.event_exports.insert(id, handle);
        Ok(handle)
    }

    /// `cuIpcOpenEventHandle`, bound to client id `id` (an event like any other from then on).
    fn ipc_open_event_handle(&self, id: EventId, handle: &IpcHandle) -> CuResult<()> {
        let link = self.registry()?;
        let h =
            IpcHandle::parse(zerocopy::IntoBytes::as_bytes(handle), IPC_KIND_EVENT).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        self.check_cap(|o| o.events.len(), |c| c.events)?;
        if self.objects().events.contains_key(&id) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let opened = link.open(IPC_KIND_EVENT, h.server_id, h.token)?;
        let shared = SharedRef {
            driver: &opened.driver,
            fd: opened.fd.as_ref(),
            size: 0,
        };
        let event = self.backend.ipc_open_event_handle(shared)?;
        self.objects().events.insert(id, event);
        Ok(())
    }

    /// `cuMemExportToShareableHandle` of physical memory the session holds, as a POSIX file descriptor.
    fn mem_export_shareable(&self, c: &MemExportShareable) -> CuResult<IpcHandle> {
        let link = self.registry()?;
        if c.handle_type != HANDLE_TYPE_POSIX_FD {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let (real, size) = self.physical_memory(c.handle).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut books = self.books();
        if let Some(&handle) = books.physical_exports.get(&c.handle) {
            return Ok(handle);
        }
        let shared = self.backend.mem_export_shareable(real, c.handle_type, c.flags)?;
        if shared.fd.is_none() {
            return Err(CUDA_ERROR_UNKNOWN);
        }
        let e = link.export(IPC_KIND_SHAREABLE, size, shared.driver, shared.fd.as_ref())?;
        let handle = IpcHandle::new(IPC_KIND_SHAREABLE, e.server_id, e.token);
        books.physical_exports.insert(c.handle, handle);
        Ok(handle)
    }

    /// `cuMemImportFromShareableHandle`, bound to client id `id`: physical memory like the session's own (it may
    /// be mapped, released, retained), counted against the exporter's limit.
    fn mem_import_shareable(&self, id: AllocHandleId, handle: &IpcHandle) -> CuResult<MemImportReply> {
        let link = self.registry()?;
        let h = IpcHandle::parse(zerocopy::IntoBytes::as_bytes(handle), IPC_KIND_SHAREABLE)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut books = self.books();
        let opened = link.open(IPC_KIND_SHAREABLE, h.server_id, h.token)?;
        let shared = SharedRef {
            driver: &opened.driver,
            fd: opened.fd.as_ref(),
            size: opened.size,
        };
        let imported = self.backend.mem_import_shareable(shared).and_then(|real| {
            let prop = self.backend.mem_allocation_properties(real).and_then(|mut prop| {
                if prop.location_type == MEM_LOCATION_DEVICE {
                    // Memory on a GPU this session does not see cannot be mapped here.
                    prop.location_id = self.client_device(prop.location_id).ok_or(CUDA_ERROR_INVALID_DEVICE)?;
                }
                self.add_imported_physical(id, real, opened.size)?;
                Ok(prop)
            });
            if prop.is_err() {
                let _ = self.backend.mem_release(real);
            }
            prop
        });
        match imported {
            Ok(prop) => {
                books.imported.insert(id, h.token);
                Ok(MemImportReply {
                    size: opened.size,
                    prop,
                })
            }
            Err(e) => {
                let _ = link.close(h.token);
                Err(e)
            }
        }
    }
}

impl Serve<IpcGetMemHandle> for Channel {
    fn serve(&mut self, c: IpcGetMemHandle, _cx: &mut Cx<'_>) -> Served<IpcHandleReply> {
        Ok(self
            .s()
            .ipc_get_mem_handle(c.dptr)
            .map(|handle| IpcHandleReply { handle }))
    }
}

impl Serve<IpcOpenMemHandle> for Channel {
    fn serve(&mut self, c: IpcOpenMemHandle, _cx: &mut Cx<'_>) -> Served<IpcOpenReply> {
        Ok(self.s().ipc_open_mem_handle(&c.handle, c.flags))
    }
}

impl Serve<IpcCloseMemHandle> for Channel {
    fn serve(&mut self, c: IpcCloseMemHandle, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.s().ipc_close_mem_handle(c.dptr).map(|_| Empty {}))
    }
}

impl Serve<IpcGetEventHandle> for Channel {
    fn serve(&mut self, c: IpcGetEventHandle, _cx: &mut Cx<'_>) -> Served<IpcHandleReply> {
        Ok(self
            .event(c.event)
            .and_then(|event| self.s().ipc_get_event_handle(c.event, event))
            .map(|handle| IpcHandleReply { handle }))
    }
}

impl Serve<IpcOpenEventHandle> for Channel {
    fn serve(&mut self, c: IpcOpenEventHandle, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.s().ipc_open_event_handle(c.event, &c.handle).map(|_| Empty {}))
    }
}

impl Serve<MemExportShareable> for Channel {
    fn serve(&mut self, c: MemExportShareable, _cx: &mut Cx<'_>) -> Served<IpcHandleReply> {
        Ok(self
            .s()
            .mem_export_shareable(&c)
            .map(|handle| IpcHandleReply { handle }))
    }
}

impl Serve<MemImportShareable> for Channel {
    fn serve(&mut self, c: MemImportShareable, _cx: &mut Cx<'_>) -> Served<MemImportReply> {
        Ok(self.s().mem_import_shareable(c.handle, &c.token))
    }
}
