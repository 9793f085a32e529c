//! Typed values that travel in wire messages: client-chosen object ids (one type per kind of object) and the two
//! kinds of addresses, so a stream id can never be passed where an event id or a device address is meant.
//!
//! Ids are chosen by the client (no round trip to create an object); the server maps each to its driver's real
//! handle. Device pointers are the server's real addresses (programs do arithmetic on them); host addresses are
//! the client's (pinned memory the server mirrors at the same address).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

macro_rules! wire_ids {
    ($( $(#[$doc:meta])* $name:ident; )*) => {
        $(
            $(#[$doc])*
            #[repr(transparent)]
            #[derive(
                Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
                IntoBytes, FromBytes, Immutable, KnownLayout,
            )]
            pub struct $name(pub u64);

            impl $name {
                /// The raw number (for logs and for maps shared by several id kinds).
                pub const fn get(self) -> u64 {
                    self.0
                }
            }

            impl std::fmt::Display for $name {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    write!(f, "{}#{:x}", stringify!($name), self.0)
                }
            }
        )*
    };
}

wire_ids! {
    /// A context (`cuCtxCreate`, or a device's primary context retained by the client).
    ContextId;
    /// A stream. 0, 1 and 2 keep the driver's meaning: NULL, `CU_STREAM_LEGACY`, `CU_STREAM_PER_THREAD`.
    StreamId;
    /// An event.
    EventId;
    /// A module (`cuModuleLoad*`) or a library (`cuLibraryLoad*`): one id space, as their handles are opaque alike.
    ModuleId;
    /// A function of a module, or a kernel of a library (a `CUkernel` may be launched as a `CUfunction`).
    FunctionId;
    /// A memory pool; a device's default pool has a reserved id (`PoolId::default_of`).
    PoolId;
    /// A CUDA array.
    ArrayId;
    /// Physical memory of the virtual memory management API (`cuMemCreate`'s handle).
    AllocHandleId;
    /// A client host region shared with the server (shared-memory sessions: a memfd both processes map).
    RegionId;
    /// A device-to-host asynchronous copy whose bytes the server pushes back later.
    PendingId;
    /// A CUDA graph (`cuGraphCreate`, a capture's graph, a conditional node's body, a child node's graph).
    GraphId;
    /// A node of a CUDA graph.
    GraphNodeId;
    /// An executable graph (`cuGraphInstantiate`).
    GraphExecId;
    /// A device address: the server's real address (valid in kernels, arithmetic allowed).
    DevicePtr;
    /// A host address in the client process (pinned memory the server maps at the same address).
    HostAddr;
}

impl StreamId {
    /// The NULL stream (the legacy default stream, or the per-thread one for `_ptsz`/`_ptds` entry points).
    pub const NULL: StreamId = StreamId(0);
    /// `CU_STREAM_LEGACY`.
    pub const LEGACY: StreamId = StreamId(1);
    /// `CU_STREAM_PER_THREAD`.
    pub const PER_THREAD: StreamId = StreamId(2);

    /// Whether this is one of the three ids that name a driver-defined stream rather than a created one.
    pub const fn is_builtin(self) -> bool {
        self.0 <= 2
    }
}

impl PoolId {
    const DEFAULT_BASE: u64 = 0x2000;
    const DEFAULT_STRIDE: u64 = 0x10;

    /// The id of device `device`'s default memory pool (`cuDeviceGetDefaultMemPool`); the server binds it to the
    /// driver's default pool on first use.
    pub const fn default_of(device: u32) -> PoolId {
        PoolId(Self::DEFAULT_BASE + Self::DEFAULT_STRIDE * device as u64)
    }

    /// The device whose default pool this is, if it is one of those ids.
    pub fn default_device(self) -> Option<u32> {
        (Self::DEFAULT_BASE..Self::DEFAULT_BASE + 0x1000)
            .contains(&self.0)
            .then(|| self.0 - Self::DEFAULT_BASE)
            .filter(|d| d % Self::DEFAULT_STRIDE == 0)
            .map(|d| (d / Self::DEFAULT_STRIDE) as u32)
    }
}

impl DevicePtr {
    pub const NULL: DevicePtr = DevicePtr(0);

    /// `offset` bytes further, or `None` past the end of the address space.
    pub fn checked_add(self, offset: u64) -> Option<DevicePtr> {
        self.0.checked_add(offset).map(DevicePtr)
    }

    /// `offset` bytes further; callers have checked the range first.
    pub const fn offset(self, offset: u64) -> DevicePtr {
        DevicePtr(self.0.wrapping_add(offset))
    }

    pub const fn is_null(self) -> bool {
        self.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pool_ids_round_trip_and_others_are_not_defaults() {
        for dev in [0, 1, 7, 255] {
            assert_eq!(PoolId::default_of(dev).default_device(), Some(dev));
        }
        assert_eq!(PoolId(0x2001).default_device(), None);
        assert_eq!(PoolId(0x1fff).default_device(), None);
        assert_eq!(PoolId(0x3000).default_device(), None);
        assert_eq!(PoolId(77).default_device(), None);
    }

    #[test]
    fn ids_are_transparent_u64s_on_the_wire() {
        assert_eq!(std::mem::size_of::<StreamId>(), 8);
        assert_eq!(StreamId(0x1122).as_bytes(), 0x1122u64.to_le_bytes());
        assert!(StreamId::PER_THREAD.is_builtin() && !StreamId(3).is_builtin());
        assert_eq!(DevicePtr(10).checked_add(u64::MAX), None);
        assert_eq!(DevicePtr(10).offset(6), DevicePtr(16));
    }
}
