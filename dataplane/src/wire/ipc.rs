//! Inter-process sharing on the wire: the 64 bytes an app holds as a `CUipcMemHandle`, `CUipcEventHandle` or (inside
//! the file descriptor `cuMemExportToShareableHandle` gives it) a shareable handle, and the replies of the IPC calls.
//!
//! The handle names an entry of the GPU server's IPC registry (server id + random token), never the driver's own
//! handle: the registry keeps that, and opens it only for a session of the exporter's tenant on the same server.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DevicePtr, MemAllocProp};

/// First bytes of every vGPU IPC handle ("vGPi"), so that bytes that are not one are told apart at once.
pub const IPC_HANDLE_MAGIC: [u8; 4] = *b"vGPi";
/// Layout version of `IpcHandle`.
pub const IPC_HANDLE_VERSION: u16 = 1;

/// What an IPC handle shares.
pub const IPC_KIND_MEM: u16 = 1;
pub const IPC_KIND_EVENT: u16 = 2;
/// VMM physical memory exported as a POSIX file descriptor (`cuMemExportToShareableHandle`).
pub const IPC_KIND_SHAREABLE: u16 = 3;

/// The 64 bytes of a `CUipcMemHandle`/`CUipcEventHandle` as vGPU fills them (also the content of the file a
/// shareable handle is). Opaque to the app, as the driver's are; only the registry that issued it can resolve it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct IpcHandle {
    pub magic: [u8; 4],
    pub version: u16,
    /// `IPC_KIND_*`.
    pub kind: u16,
    /// The GPU server whose registry issued it (random per `vgpu server` start).
    pub server_id: u64,
    /// Random, unguessable: the entry's name in that registry.
    pub token: [u8; 16],
    pub reserved: [u8; 32],
}

/// Bytes of a CUDA IPC handle (`CUipcMemHandle::reserved`).
pub const IPC_HANDLE_LEN: usize = 64;
const _: () = assert!(std::mem::size_of::<IpcHandle>() == IPC_HANDLE_LEN);

impl IpcHandle {
    pub fn new(kind: u16, server_id: u64, token: [u8; 16]) -> IpcHandle {
        IpcHandle {
            magic: IPC_HANDLE_MAGIC,
            version: IPC_HANDLE_VERSION,
            kind,
            server_id,
            token,
            reserved: [0; 32],
        }
    }

    /// The handle in 64 bytes an app passed, if they are one of vGPU's of `kind` (anything else — zeros, another
    /// driver's handle, a corrupted copy — is `None`).
    pub fn parse(bytes: &[u8], kind: u16) -> Option<IpcHandle> {
        let h = IpcHandle::read_from_bytes(bytes).ok()?;
        (h.magic == IPC_HANDLE_MAGIC && h.version == IPC_HANDLE_VERSION && h.kind == kind && h.reserved == [0; 32])
            .then_some(h)
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct IpcHandleReply {
    pub handle: IpcHandle,
}

/// `cuIpcOpenMemHandle`'s answer: where the memory is mapped in this session, and its size (the exporter's whole
/// allocation).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct IpcOpenReply {
    pub dptr: DevicePtr,
    pub size: u64,
}

/// `cuMemImportFromShareableHandle`'s answer: the imported memory's size and properties (the exporter's).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemImportReply {
    pub size: u64,
    pub prop: MemAllocProp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_parse_only_as_what_they_are() {
        let h = IpcHandle::new(IPC_KIND_MEM, 0x1234, [7; 16]);
        assert_eq!(IpcHandle::parse(h.as_bytes(), IPC_KIND_MEM), Some(h));
        assert_eq!(IpcHandle::parse(h.as_bytes(), IPC_KIND_EVENT), None, "another kind");
        assert_eq!(IpcHandle::parse(&[0u8; 64], IPC_KIND_MEM), None, "zeros");
        assert_eq!(IpcHandle::parse(&h.as_bytes()[..63], IPC_KIND_MEM), None, "short");
        let mut bent = h;
        bent.reserved[31] = 1;
        assert_eq!(
            IpcHandle::parse(bent.as_bytes(), IPC_KIND_MEM),
            None,
            "reserved bytes set"
        );
    }
}
