//! Value types the wire carries besides the call bodies: reply bodies, the fixed parts of cuda.h structs that
//! travel field by field, and shapes the server checks (arrays, launches, stream memory operations).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{AllocHandleId, DevicePtr, FUNC_ATTR_COUNT};

/// The fixed fields of cuda.h's `CUmemAllocationProp`. Its `win32HandleMetaData` pointer never travels: it
/// names memory of the client's process, meaningless to the server (the client refuses a non-NULL one).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemAllocProp {
    /// `CUmemAllocationType` (1: pinned).
    pub alloc_type: u32,
    /// `CUmemAllocationHandleType` bits the app asked to be able to export to.
    pub handle_types: u32,
    /// `CUmemLocationType` (1: device) and its id (a device ordinal, the client's numbering on the wire).
    pub location_type: u32,
    pub location_id: i32,
    /// `allocFlags`: compression type, GPUDirect RDMA capability, usage bits, reserved bytes.
    pub compression: u8,
    pub gpu_direct_rdma: u8,
    pub usage: u16,
    pub reserved: [u8; 4],
}

/// `CUmemLocationType` of a device, the only kind of location vGPU's VMM calls take.
pub const MEM_LOCATION_DEVICE: u32 = 1;

/// cuda.h's `CUmemAccessDesc`, which has exactly this layout (12 bytes): a `MemSetAccess` tail is an array of them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemAccessDesc {
    pub location_type: u32,
    pub location_id: i32,
    /// `CUmemAccess_flags`: 0 none, 1 read, 3 read-write.
    pub flags: u32,
}

/// Most access descriptors one `MemSetAccess` carries (one per device and host is the most that means anything).
pub const MAX_ACCESS_DESCS: usize = 64;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct GranularityReply {
    pub granularity: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemAccessReply {
    pub flags: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemAllocPropReply {
    pub prop: MemAllocProp,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemHandleReply {
    pub handle: AllocHandleId,
}

/// One stream memory operation (`CUstreamBatchMemOpParams` without the driver-internal fields): `operation` is a
/// `CUstreamBatchMemOpType`, `value` the 32- or 64-bit operand, `flags` the operation's own flags.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemOp {
    pub operation: u32,
    pub flags: u32,
    pub address: DevicePtr,
    pub value: u64,
}

impl MemOp {
    /// Bytes the operation reads or writes at `address` (0: it names no address), or `None` for an operation the
    /// driver does not have.
    pub fn operand_len(&self) -> Option<u64> {
        match self.operation {
            MEM_OP_WAIT_VALUE_32 | MEM_OP_WRITE_VALUE_32 => Some(4),
            MEM_OP_WAIT_VALUE_64 | MEM_OP_WRITE_VALUE_64 => Some(8),
            MEM_OP_BARRIER | MEM_OP_FLUSH_REMOTE_WRITES => Some(0),
            _ => None,
        }
    }
}

/// `CUstreamBatchMemOpType` values.
pub const MEM_OP_WAIT_VALUE_32: u32 = 1;
pub const MEM_OP_WRITE_VALUE_32: u32 = 2;
pub const MEM_OP_WAIT_VALUE_64: u32 = 4;
pub const MEM_OP_WRITE_VALUE_64: u32 = 5;
pub const MEM_OP_BARRIER: u32 = 6;
pub const MEM_OP_FLUSH_REMOTE_WRITES: u32 = 3;
/// Most operations one batch carries (the driver's own limit is lower: its answer stays the driver's).
pub const MAX_MEM_OPS: usize = 4096;

/// Bits of `NvmlStatusReply::valid`: which optional values the server could read.
pub const NVML_HAS_UTILIZATION: u32 = 1;
pub const NVML_HAS_TEMPERATURE: u32 = 2;
pub const NVML_HAS_POWER: u32 = 4;
pub const NVML_HAS_PCI_IDS: u32 = 8;
pub const NVML_HAS_MINOR_NUMBER: u32 = 16;
pub const NVML_HAS_BRAND: u32 = 32;
pub const NVML_HAS_ARCHITECTURE: u32 = 64;

/// Reply of `NvmlDeviceStatus`. Memory is the session's view: with a memory limit, the limit is the total
/// and the session's own allocations are what is used.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct NvmlStatusReply {
    pub mem_total: u64,
    pub mem_free: u64,
    pub mem_used: u64,
    pub mem_reserved: u64,
    /// Device memory the client process holds on this device (its own entry in the process list).
    pub process_used: u64,
    /// `NVML_HAS_*` bits.
    pub valid: u32,
    /// 1 when the session has a context on this device (so the client process is listed as running there).
    pub process_active: u32,
    pub util_gpu: u32,
    pub util_memory: u32,
    pub temperature_c: u32,
    pub power_mw: u32,
    /// `nvmlPciInfo_t::pciDeviceId` (device id << 16 | vendor id) and `pciSubSystemId`.
    pub pci_device_id: u32,
    pub pci_subsystem_id: u32,
    pub minor_number: u32,
    /// `nvmlBrandType_t` and `nvmlDeviceArchitecture_t` values.
    pub brand: u32,
    pub architecture: u32,
    pub _pad: u32,
}

/// Bits of `NvmlPcieReply::valid`: which of the link values the server could read.
pub const NVML_PCIE_CURR_GEN: u32 = 1;
pub const NVML_PCIE_CURR_WIDTH: u32 = 2;
pub const NVML_PCIE_MAX_GEN: u32 = 4;
pub const NVML_PCIE_MAX_WIDTH: u32 = 8;

/// Reply of `NvmlDevicePcie`: the GPU's PCIe link, now and at most.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct NvmlPcieReply {
    /// `NVML_PCIE_*` bits.
    pub valid: u32,
    pub curr_gen: u32,
    pub curr_width: u32,
    pub max_gen: u32,
    pub max_width: u32,
    pub _pad: u32,
}

/// Most field values one `NvmlFieldValues` asks for (the NVML shim splits longer requests).
pub const MAX_NVML_FIELDS: usize = 64;

/// One field an `NvmlFieldValues` asks for (`nvmlFieldValue_t`'s input part).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct NvmlFieldRequest {
    pub field_id: u32,
    pub scope_id: u32,
}

/// One answered field, `nvmlFieldValue_t`'s members in its order: `value_type` is an `nvmlValueType_t`,
/// `nvml_return` the field's own `nvmlReturn_t`, `value` the union's 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct NvmlFieldValue {
    pub field_id: u32,
    pub scope_id: u32,
    pub timestamp_us: i64,
    pub latency_us: i64,
    pub value_type: u32,
    pub nvml_return: u32,
    pub value: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemAllocReply {
    pub dptr: DevicePtr,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemAllocPitchReply {
    pub dptr: DevicePtr,
    pub pitch: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemGetInfoReply {
    pub free: u64,
    pub total: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct EventElapsedReply {
    pub ms: f32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct FuncAttrsReply {
    pub attrs: [i32; FUNC_ATTR_COUNT],
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct LimitReply {
    pub value: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct ObjectReply {
    pub object: u64,
}

/// Sizes of the texture descriptors `TexObjectCreate` carries (cuda.h's structs, as generated).
pub const RESOURCE_DESC_LEN: usize = std::mem::size_of::<vgpu_cuda_sys::driver::CUDA_RESOURCE_DESC>();
pub const TEXTURE_DESC_LEN: usize = std::mem::size_of::<vgpu_cuda_sys::driver::CUDA_TEXTURE_DESC>();
pub const RESOURCE_VIEW_DESC_LEN: usize = std::mem::size_of::<vgpu_cuda_sys::driver::CUDA_RESOURCE_VIEW_DESC>();

/// A CUDA array's shape (`CUDA_ARRAY3D_DESCRIPTOR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArrayShape {
    pub width: u64,
    pub height: u64,
    pub depth: u64,
    pub format: u32,
    pub channels: u32,
    pub flags: u32,
}

impl ArrayShape {
    /// Bytes of one element, or `None` for a format vGPU does not handle (block-compressed, NV12).
    pub fn element_bytes(&self) -> Option<u64> {
        let component = match self.format {
            0x01 | 0x08 | 0xc0..=0xc2 | 0xc6..=0xc8 => 1,
            0x02 | 0x09 | 0x10 | 0xc3..=0xc5 | 0xc9..=0xcb => 2,
            0x03 | 0x0a | 0x20 => 4,
            _ => return None,
        };
        // The normalized formats name their channel count themselves.
        let channels = match self.format {
            0xc0 | 0xc3 | 0xc6 | 0xc9 => 1,
            0xc1 | 0xc4 | 0xc7 | 0xca => 2,
            0xc2 | 0xc5 | 0xc8 | 0xcb => 4,
            _ => self.channels as u64,
        };
        matches!(channels, 1 | 2 | 4).then_some(component * channels)
    }
}

/// A box of a CUDA array in an `ArrayCopy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArrayBox {
    pub x_bytes: u64,
    pub y: u64,
    pub z: u64,
    pub width_bytes: u64,
    pub height: u64,
    pub depth: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct OccupancyReply {
    pub value: i64,
}

/// `cuDeviceCanAccessPeer`'s answer (0 or 1) or a `cuDeviceGetP2PAttribute` value.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct PeerValueReply {
    pub value: i64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct OccupancyPotentialReply {
    pub min_grid: i32,
    pub block: i32,
}

/// The fixed part of every launch on the wire: grid, block, dynamic shared memory and whether the launch is
/// cooperative (grid-wide synchronisation).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem: u32,
    /// 1: `cuLaunchCooperativeKernel` or the cooperative launch attribute.
    pub cooperative: u32,
}

/// A whole launch description (or the shape an occupancy question is about), as the shim builds it and the
/// backend receives it: the wire carries it as `LaunchDims` plus, for `LaunchKernelEx`, the cluster shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LaunchShape {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem: u32,
    pub cooperative: bool,
    /// [0, 0, 0] (or 1x1x1 for a launch): no cluster dimension given (the kernel's own, if any).
    pub cluster: [u32; 3],
}

impl LaunchShape {
    /// The part that travels in `LaunchDims`.
    pub fn dims(&self) -> LaunchDims {
        LaunchDims {
            grid: self.grid,
            block: self.block,
            shared_mem: self.shared_mem,
            cooperative: self.cooperative as u32,
        }
    }

    /// Whether the launch needs `LaunchKernelEx` (a cluster shape); plain launches travel as `LaunchKernel`.
    pub fn has_cluster(&self) -> bool {
        self.cluster.iter().any(|&c| c > 1)
    }

    pub fn from_dims(dims: LaunchDims, cluster: [u32; 3]) -> LaunchShape {
        LaunchShape {
            grid: dims.grid,
            block: dims.block,
            shared_mem: dims.shared_mem,
            cooperative: dims.cooperative != 0,
            cluster,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemPoolAttrReply {
    pub value: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct ExportTableSizeReply {
    pub first_word: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct GlobalReply {
    pub dptr: DevicePtr,
    pub size: u64,
}
