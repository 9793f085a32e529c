//! Emulated backend: inter-process sharing with the driver's rules. Exported memory moves into a shared-memory
//! file, which the opening process (another worker, another backend instance) maps: both see the same bytes, as
//! two processes see the same device memory. A handle opened in the process that exported it is refused
//! (`CUDA_ERROR_INVALID_CONTEXT`); a second open of one export returns the same address with one more reference;
//! memory freed by its exporter stays readable where it is open until it is closed (natively undefined: the
//! driver keeps the memory while mapped elsewhere; to be checked natively). Events: an opened event is an event of
//! this backend; the emulated device runs work at submission, so an event already orders everything across
//! processes.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;

use vgpu_cuda_sys::driver::CUevent_flags;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::{MemAllocProp, IPC_HANDLE_LEN};
use zerocopy::{FromBytes, IntoBytes};

use super::state::{Bytes, Physical};
use super::{EmulatedBackend, HANDLE_TYPE_POSIX_FD};
use crate::backend::*;
use crate::sys::SharedRegion;

/// What the emulated backend's handles start with, and the kinds of export they name.
const MAGIC: [u8; 8] = *b"vgpuemul";
const KIND_MEM: u64 = 1;
const KIND_EVENT: u64 = 2;
const KIND_SHAREABLE: u64 = 3;

/// One export: the backend instance that made it and its serial there.
type Key = (u64, u64);

pub(super) struct IpcState {
    /// This backend's identity in the handles it issues (one backend per worker process).
    instance: u64,
    next_serial: u64,
    /// Events created with `CU_EVENT_INTERPROCESS`: event → its creation flags.
    interprocess_events: HashMap<u64, u32>,
    /// Memory opened from another process: address → (export, references).
    pub(super) opened: HashMap<u64, (Key, u32)>,
    by_key: HashMap<Key, u64>,
    /// Physical memory imported from another process: its bytes are that process's device memory.
    pub(super) imported: HashSet<u64>,
}

impl Default for IpcState {
    fn default() -> IpcState {
        IpcState {
            instance: rand::random::<u64>() | 1,
            next_serial: 0,
            interprocess_events: HashMap::new(),
            opened: HashMap::new(),
            by_key: HashMap::new(),
            imported: HashSet::new(),
        }
    }
}

impl IpcState {
    pub(super) fn note_event(&mut self, event: u64, flags: u32) {
        if flags & CUevent_flags::CU_EVENT_INTERPROCESS.0 != 0 {
            self.interprocess_events.insert(event, flags);
        }
    }

    pub(super) fn forget_event(&mut self, event: u64) {
        self.interprocess_events.remove(&event);
    }
}

/// The emulated driver's handle: magic, kind, instance, serial (an event's handle for events), size, and the
/// allocation properties of shareable memory.
fn encode(kind: u64, instance: u64, serial: u64, size: u64, prop: MemAllocProp) -> [u8; IPC_HANDLE_LEN] {
    let mut out = [0u8; IPC_HANDLE_LEN];
    out[..8].copy_from_slice(&MAGIC);
    for (i, v) in [kind, instance, serial, size].into_iter().enumerate() {
        out[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    out[40..64].copy_from_slice(prop.as_bytes());
    out
}

struct Decoded {
    instance: u64,
    serial: u64,
    size: u64,
    prop: MemAllocProp,
}

fn decode(bytes: &[u8; IPC_HANDLE_LEN], kind: u64) -> CuResult<Decoded> {
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[8 + 8 * i..16 + 8 * i]);
        u64::from_le_bytes(w)
    };
    if bytes[..8] != MAGIC || word(0) != kind {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(Decoded {
        instance: word(1),
        serial: word(2),
        size: word(3),
        prop: MemAllocProp::read_from_bytes(&bytes[40..64]).map_err(|_| CUDA_ERROR_INVALID_VALUE)?,
    })
}

/// Moves `bytes` into a shared-memory file (once) and returns its export serial and a descriptor of the file.
fn share(bytes: &mut Bytes, next_serial: &mut u64) -> CuResult<(u64, OwnedFd)> {
    if let Bytes::Own(v) = &*bytes {
        let fd = crate::sys::shared_memory(v.len()).map_err(|_| CUDA_ERROR_OUT_OF_MEMORY)?;
        let mut region = SharedRegion::map(&fd, v.len(), 0).map_err(|_| CUDA_ERROR_OUT_OF_MEMORY)?;
        region.as_mut_slice().copy_from_slice(v);
        *next_serial += 1;
        *bytes = Bytes::Shared {
            region,
            fd,
            serial: *next_serial,
        };
    }
    match bytes {
        Bytes::Shared { fd, serial, .. } => Ok((*serial, fd.try_clone().map_err(|_| CUDA_ERROR_OUT_OF_MEMORY)?)),
        Bytes::Own(_) => Err(CUDA_ERROR_UNKNOWN),
    }
}

/// Maps the shared-memory file of an export (`size` bytes) in this process.
fn map_export(shared: &SharedRef<'_>, size: u64, serial: u64) -> CuResult<Bytes> {
    let fd = shared.fd.ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let len = usize::try_from(size).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    let region = SharedRegion::map(fd, len, 0).map_err(|_| CUDA_ERROR_MAP_FAILED)?;
    let fd = fd.try_clone().map_err(|_| CUDA_ERROR_OUT_OF_MEMORY)?;
    Ok(Bytes::Shared { region, fd, serial })
}

/// How the emulated backend exports device memory for RDMA devices (`Backend::device_memory_export`).
pub(super) const RDMA_EXPORT: &str =
    "emulated: device memory exported as shared-memory files the RDMA device registers (a stand-in for dma-buf, for tests)";

impl EmulatedBackend {
    /// `cuIpcGetMemHandle`: the `cuMemAlloc` allocation holding `dptr` (not pool memory, module globals, or
    /// memory opened from another process).
    pub(super) fn ipc_export_mem(&self, dptr: u64) -> CuResult<Shared> {
        self.require_ctx()?;
        let mut guard = self.state();
        let st = &mut *guard;
        let (&base, bytes) = st
            .allocations
            .range(..=dptr)
            .next_back()
            .filter(|&(&b, v)| dptr < b + v.len() as u64)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let global = st.globals.values().any(|g| g.values().any(|&(a, _)| a == base));
        if global || st.pool_allocations.contains_key(&base) || st.ipc.opened.contains_key(&base) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let size = bytes.len() as u64;
        let bytes = st.allocations.get_mut(&base).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let (serial, fd) = share(bytes, &mut st.ipc.next_serial)?;
        Ok(Shared {
            driver: encode(KIND_MEM, st.ipc.instance, serial, size, MemAllocProp::default()),
            fd: Some(fd),
        })
    }

    /// GPUDirect RDMA's stand-in: the `len` bytes at `addr` (an allocation, or memory mapped there: the session's
    /// windows place `cuMemAlloc` memory with VMM), their allocation's or physical memory's bytes moved into a
    /// shared-memory file (as an IPC export does) that the RDMA device registers through a mapping of its own.
    pub(super) fn export_for_rdma(&self, addr: u64, len: usize) -> CuResult<vgpu_dataplane::pinned::DeviceExport> {
        let mut guard = self.state();
        let st = &mut *guard;
        let piece = st.piece_at(addr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if piece.len < len {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let bytes = if piece.in_physical {
            st.physical.get_mut(&piece.key).map(|p| &mut p.bytes)
        } else {
            st.allocations.get_mut(&piece.key)
        }
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let (_, fd) = share(bytes, &mut st.ipc.next_serial)?;
        Ok(vgpu_dataplane::pinned::DeviceExport {
            kind: vgpu_dataplane::pinned::DeviceExportKind::HostFile,
            fd,
            offset: piece.offset as u64,
            len,
        })
    }

    /// `cuIpcOpenMemHandle`: `flags` 0 or `CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS`.
    pub(super) fn ipc_open_mem(&self, shared: SharedRef<'_>, flags: u32) -> CuResult<u64> {
        self.require_ctx()?;
        if flags & !1 != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let d = decode(shared.driver, KIND_MEM)?;
        let mut st = self.state();
        if d.instance == st.ipc.instance {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        let key = (d.instance, d.serial);
        if let Some(&addr) = st.ipc.by_key.get(&key) {
            if let Some((_, refs)) = st.ipc.opened.get_mut(&addr) {
                *refs += 1;
            }
            return Ok(addr);
        }
        let bytes = map_export(&shared, d.size, d.serial)?;
        let addr = Self::next_address(&mut st, d.size);
        st.allocations.insert(addr, bytes);
        st.ipc.opened.insert(addr, (key, 1));
        st.ipc.by_key.insert(key, addr);
        Ok(addr)
    }

    /// `cuIpcCloseMemHandle`: the last close unmaps.
    pub(super) fn ipc_close_mem(&self, dptr: u64) -> CuResult<()> {
        self.require_ctx()?;
        let mut st = self.state();
        let (key, refs) = st.ipc.opened.get_mut(&dptr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        *refs -= 1;
        if *refs == 0 {
            let key = *key;
            st.ipc.opened.remove(&dptr);
            st.ipc.by_key.remove(&key);
            st.allocations.remove(&dptr);
        }
        Ok(())
    }

    /// `cuIpcGetEventHandle`: the event must have been created interprocess and without timing.
    pub(super) fn ipc_export_event(&self, event: u64) -> CuResult<Shared> {
        let st = self.state();
        if !st.events.contains_key(&event) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let untimed = CUevent_flags::CU_EVENT_DISABLE_TIMING.0;
        match st.ipc.interprocess_events.get(&event) {
            Some(flags) if flags & untimed != 0 => Ok(Shared {
                driver: encode(KIND_EVENT, st.ipc.instance, event, 0, MemAllocProp::default()),
                fd: None,
            }),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    /// `cuIpcOpenEventHandle`: a new event of this backend (timing disabled, as natively).
    pub(super) fn ipc_open_event(&self, shared: SharedRef<'_>) -> CuResult<u64> {
        self.require_ctx()?;
        let d = decode(shared.driver, KIND_EVENT)?;
        let mut st = self.state();
        if d.instance == st.ipc.instance {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        let e = self.handle();
        st.events.insert(e, None);
        let flags = CUevent_flags::CU_EVENT_INTERPROCESS.0 | CUevent_flags::CU_EVENT_DISABLE_TIMING.0;
        st.ipc.note_event(e, flags);
        Ok(e)
    }

    /// `cuMemExportToShareableHandle` as a POSIX file descriptor: the memory must have asked for that handle type
    /// at `cuMemCreate`.
    pub(super) fn export_shareable(&self, handle: u64, handle_type: u32, flags: u64) -> CuResult<Shared> {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut guard = self.state();
        let st = &mut *guard;
        let p = st
            .physical
            .get_mut(&handle)
            .filter(|p| p.refs > 0)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if handle_type != HANDLE_TYPE_POSIX_FD || p.prop.handle_types & HANDLE_TYPE_POSIX_FD == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let size = p.bytes.len() as u64;
        let prop = p.prop;
        let (serial, fd) = share(&mut p.bytes, &mut st.ipc.next_serial)?;
        Ok(Shared {
            driver: encode(KIND_SHAREABLE, st.ipc.instance, serial, size, prop),
            fd: Some(fd),
        })
    }

    /// `cuMemImportFromShareableHandle`: new physical memory of this backend whose bytes are the exporter's.
    pub(super) fn import_shareable(&self, shared: SharedRef<'_>) -> CuResult<u64> {
        let d = decode(shared.driver, KIND_SHAREABLE)?;
        let bytes = map_export(&shared, d.size, d.serial)?;
        let handle = self.handle();
        let mut st = self.state();
        st.physical.insert(
            handle,
            Physical {
                bytes,
                prop: d.prop,
                refs: 1,
                mappings: 0,
            },
        );
        st.ipc.imported.insert(handle);
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpu_dataplane::ids::DevicePtr;

    /// A backend with device 0's primary context current on this thread.
    fn with_context() -> EmulatedBackend {
        let b = EmulatedBackend::new();
        let ctx = b.primary_ctx_retain(0).expect("context");
        b.ctx_set_current(ctx).expect("current");
        b
    }

    fn opened<'a>(s: &'a Shared) -> SharedRef<'a> {
        SharedRef {
            driver: &s.driver,
            fd: s.fd.as_ref(),
            size: 0,
        }
    }

    fn write(b: &EmulatedBackend, at: u64, data: &[u8]) {
        b.with_range(at, data.len() as u64, |d| d.copy_from_slice(data))
            .expect("write");
    }

    fn read(b: &EmulatedBackend, at: u64, len: u64) -> Vec<u8> {
        b.with_range(at, len, |d| d.to_vec()).expect("read")
    }

    #[test]
    fn exported_memory_is_shared_between_processes_with_the_drivers_rules() {
        let (exporter, opener) = (with_context(), with_context());
        let dptr = exporter.mem_alloc(8192).expect("alloc");
        write(&exporter, dptr.0, b"before the export");
        let shared = exporter
            .ipc_get_mem_handle(DevicePtr(dptr.0 + 100))
            .expect("an interior pointer");
        let again = exporter.ipc_get_mem_handle(dptr).expect("again");
        assert_eq!(shared.driver, again.driver, "one handle per allocation");
        assert_eq!(
            decode(&shared.driver, KIND_MEM).map(|d| d.size),
            Ok(8192),
            "the whole allocation"
        );
        assert_eq!(read(&exporter, dptr.0, 17), b"before the export", "contents kept");
        // In the exporting process: the driver's error.
        assert_eq!(
            exporter.ipc_open_mem_handle(opened(&shared), 1).err(),
            Some(CUDA_ERROR_INVALID_CONTEXT)
        );
        assert_eq!(
            opener.ipc_open_mem_handle(opened(&shared), 2).err(),
            Some(CUDA_ERROR_INVALID_VALUE),
            "flags"
        );
        let at = opener.ipc_open_mem_handle(opened(&shared), 1).expect("open");
        assert_eq!(read(&opener, at.0, 17), b"before the export");
        // Both write, both see.
        write(&opener, at.0 + 4096, b"from the opener");
        assert_eq!(read(&exporter, dptr.0 + 4096, 15), b"from the opener");
        // A second open: the same address, one more reference.
        assert_eq!(opener.ipc_open_mem_handle(opened(&shared), 0), Ok(at));
        assert_eq!(opener.mem_free(at), Err(CUDA_ERROR_INVALID_VALUE), "not freed, closed");
        // Freed by the exporter while open: the opener keeps its mapping until it closes it.
        exporter.mem_free(dptr).expect("free");
        assert!(
            exporter.with_range(dptr.0, 1, |_| ()).is_err(),
            "gone from the exporter"
        );
        assert_eq!(read(&opener, at.0 + 4096, 15), b"from the opener");
        opener.ipc_close_mem_handle(at).expect("close 1");
        assert_eq!(read(&opener, at.0, 6), b"before");
        opener.ipc_close_mem_handle(at).expect("close 2");
        assert!(
            opener.with_range(at.0, 1, |_| ()).is_err(),
            "unmapped at the last close"
        );
        assert_eq!(opener.ipc_close_mem_handle(at), Err(CUDA_ERROR_INVALID_VALUE));
        let garbage = [0u8; IPC_HANDLE_LEN];
        let bogus = SharedRef {
            driver: &garbage,
            fd: None,
            size: 0,
        };
        assert_eq!(
            opener.ipc_open_mem_handle(bogus, 0).err(),
            Some(CUDA_ERROR_INVALID_VALUE)
        );
    }

    #[test]
    fn only_interprocess_untimed_events_are_exported() {
        let (a, b) = (with_context(), with_context());
        let interprocess = CUevent_flags::CU_EVENT_INTERPROCESS.0 | CUevent_flags::CU_EVENT_DISABLE_TIMING.0;
        let plain = a.event_create(0).expect("event");
        assert_eq!(a.ipc_get_event_handle(plain).err(), Some(CUDA_ERROR_INVALID_VALUE));
        let timed = a.event_create(CUevent_flags::CU_EVENT_INTERPROCESS.0).expect("event");
        assert_eq!(a.ipc_get_event_handle(timed).err(), Some(CUDA_ERROR_INVALID_VALUE));
        let ev = a.event_create(interprocess).expect("event");
        let shared = a.ipc_get_event_handle(ev).expect("handle");
        assert_eq!(
            a.ipc_open_event_handle(opened(&shared)).err(),
            Some(CUDA_ERROR_INVALID_CONTEXT)
        );
        let there = b.ipc_open_event_handle(opened(&shared)).expect("open");
        b.event_record(there, Stream::NULL).expect("record");
        b.event_synchronize(there).expect("synchronize");
        b.event_destroy(there).expect("destroy");
        assert_eq!(
            a.ipc_get_event_handle(Event(0x42)).err(),
            Some(CUDA_ERROR_INVALID_HANDLE)
        );
    }

    #[test]
    fn shareable_memory_needs_the_posix_handle_type_and_maps_in_the_importer() {
        let (a, b) = (with_context(), with_context());
        let prop = |handle_types| MemAllocProp {
            alloc_type: 1,
            handle_types,
            location_type: vgpu_dataplane::wire::MEM_LOCATION_DEVICE,
            ..Default::default()
        };
        let size = 2 << 20;
        let plain = a.mem_create(size, &prop(0), 0).expect("create");
        assert_eq!(
            a.mem_export_shareable(plain, HANDLE_TYPE_POSIX_FD, 0).err(),
            Some(CUDA_ERROR_INVALID_VALUE)
        );
        let h = a.mem_create(size, &prop(HANDLE_TYPE_POSIX_FD), 0).expect("create");
        let va = a.mem_address_reserve(size, 0, DevicePtr(0), 0).expect("reserve");
        a.mem_map(va, size, 0, h, 0).expect("map");
        write(&a, va.0 + 10, b"vmm bytes");
        let shared = a.mem_export_shareable(h, HANDLE_TYPE_POSIX_FD, 0).expect("export");
        let imported = b.mem_import_shareable(opened(&shared)).expect("import");
        assert_eq!(
            b.mem_allocation_properties(imported).map(|p| p.handle_types),
            Ok(HANDLE_TYPE_POSIX_FD)
        );
        let vb = b.mem_address_reserve(size, 0, DevicePtr(0), 0).expect("reserve");
        b.mem_map(vb, size, 0, imported, 0).expect("map the import");
        assert_eq!(read(&b, vb.0 + 10, 9), b"vmm bytes");
        let used = b.used();
        b.mem_unmap(vb, size).expect("unmap");
        b.mem_release(imported).expect("release");
        assert_eq!(b.used(), used, "the importer never counted the exporter's memory");
    }

    #[test]
    fn device_memory_is_exported_for_rdma_from_allocations_and_mappings() {
        let a = with_context();
        let mib = 1usize << 20;
        // A plain allocation: the file holds its bytes, and bytes written through the file (as a NIC would) are the
        // device's.
        let d = a.mem_alloc(3 * mib as u64).expect("alloc");
        write(&a, d.0 + 5, b"plain");
        let e = a.export_device_memory(d.0, 3 * mib).expect("export");
        assert!(matches!(e.kind, vgpu_dataplane::pinned::DeviceExportKind::HostFile) && e.offset == 0);
        let region = SharedRegion::map(&e.fd, 3 * mib, 0).expect("map");
        assert_eq!(&region.as_slice()[5..10], b"plain");
        let mut region = region;
        region.as_mut_slice()[100..103].copy_from_slice(b"nic");
        assert_eq!(read(&a, d.0 + 100, 3), b"nic");
        // Memory mapped with VMM (as the session's windows place cuMemAlloc memory): the range's offset in the file.
        let prop = MemAllocProp {
            alloc_type: 1,
            location_type: vgpu_dataplane::wire::MEM_LOCATION_DEVICE,
            ..Default::default()
        };
        let h = a.mem_create(4 * mib as u64, &prop, 0).expect("create");
        let va = a
            .mem_address_reserve(4 * mib as u64, 0, DevicePtr(0), 0)
            .expect("reserve");
        a.mem_map(va, 4 * mib as u64, 0, h, 0).expect("map");
        write(&a, va.0 + mib as u64 + 7, b"mapped");
        let e = a
            .export_device_memory(va.0 + mib as u64, 2 * mib)
            .expect("export mapped");
        assert_eq!((e.offset, e.len), (mib as u64, 2 * mib));
        let region = SharedRegion::map(&e.fd, 4 * mib, 0).expect("map file");
        assert_eq!(&region.as_slice()[mib + 7..mib + 13], b"mapped");
        // Past the end of what is there, or nothing there at all.
        assert_eq!(
            a.export_device_memory(va.0 + 3 * mib as u64, 2 * mib).err(),
            Some(CUDA_ERROR_INVALID_VALUE)
        );
        assert_eq!(a.export_device_memory(0x10, 4096).err(), Some(CUDA_ERROR_INVALID_VALUE));
    }
}
