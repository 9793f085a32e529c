//! Message encodings: a 16-byte frame header, then one fixed-layout little-endian body per remoted call, then a
//! raw tail (kernel arguments, copy data, module images, names) that is never serialized, only appended.

use bytes::{BufMut, BytesMut};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Largest fixed body any call has; a header announcing more is malformed.
pub const MAX_BODY: usize = 256;
/// Header flag: the call came through a `_ptds`/`_ptsz` entry point (per-thread default stream semantics).
pub const FLAG_PER_THREAD: u16 = 1;

/// Precedes every request. `len` counts body and tail; `body_len` the fixed body alone.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct RequestHeader {
    pub len: u32,
    pub op: u16,
    pub flags: u16,
    pub body_len: u32,
    pub seq: u32,
}

impl RequestHeader {
    /// Bytes after the fixed body.
    pub fn tail_len(&self) -> usize {
        (self.len - self.body_len) as usize
    }
}

/// Kind of server→client frame: the reply to the pending synchronous call, or data for an earlier async copy.
pub const REPLY_KIND_RESULT: u32 = 0;
pub const REPLY_KIND_PUSH: u32 = 1;
/// A frame of bytes the server's driver printed to its standard output for this session (device-side
/// `printf`): the client writes them to the app's own stdout, where the native driver prints them.
pub const REPLY_KIND_STDOUT: u32 = 2;

/// Precedes every server→client frame. `len` counts the bytes after the header.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct ReplyHeader {
    pub len: u32,
    pub result: u32,
    pub kind: u32,
    pub seq: u32,
}

impl ReplyHeader {
    /// The call's outcome as a CUresult (the wire carries its number).
    pub fn status(&self) -> crate::cuerr::CUresult {
        crate::cuerr::CUresult::from_code(self.result)
    }
}

/// Body of a push frame: the client's pending device-to-host copy `id` completed; `len` bytes follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct PushHeader {
    pub pending_id: u64,
    pub len: u64,
}

/// A malformed frame. The server ends the session that sent it; the client treats it as a lost server.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("unknown operation code {0}")]
    UnknownOp(u16),
    #[error("body of {got} bytes where operation {op:?} has {want}")]
    BodySize { op: Op, got: usize, want: usize },
    #[error("frame header inconsistent: len {len}, body_len {body_len}")]
    BadHeader { len: u32, body_len: u32 },
    #[error("tail of {got} bytes where at most {max} are allowed for {op:?}")]
    TailTooLong { op: Op, got: usize, max: usize },
    #[error("{0}")]
    Malformed(&'static str),
}

/// One remoted call: its body layout, operation code, and whether the client waits for a reply.
pub trait Call: IntoBytes + FromBytes + Immutable + KnownLayout + Copy + Sized {
    const OP: Op;
    /// Synchronous calls get a reply frame; asynchronous ones never do (their errors latch on the server).
    const SYNC: bool;
    /// The fixed reply body of a synchronous call (`Empty` when only the CUresult matters).
    type Reply: IntoBytes + FromBytes + Immutable + KnownLayout + Copy + Default;
}

/// Reply body of calls that return only a CUresult.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct Empty {}

macro_rules! calls {
    ($( $(#[$doc:meta])* $name:ident = $op:literal, $mode:ident { $($field:ident : $ty:ty),* $(,)? } -> $reply:ty; )*) => {
        /// Operation codes, one per remoted call.
        #[repr(u16)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op { $( $name = $op, )* }

        impl Op {
            pub fn from_u16(v: u16) -> Result<Op, WireError> {
                match v { $( $op => Ok(Op::$name), )* other => Err(WireError::UnknownOp(other)) }
            }
            /// Size of the fixed body of this operation.
            pub fn body_len(self) -> usize {
                match self { $( Op::$name => std::mem::size_of::<$name>(), )* }
            }
            pub fn is_sync(self) -> bool {
                match self { $( Op::$name => <$name as Call>::SYNC, )* }
            }
            pub const ALL: &'static [Op] = &[ $( Op::$name, )* ];
        }

        $(
            $(#[$doc])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, Default, PartialEq, IntoBytes, FromBytes, Immutable, KnownLayout)]
            pub struct $name { $( pub $field: $ty, )* }

            impl Call for $name {
                const OP: Op = Op::$name;
                const SYNC: bool = calls!(@sync $mode);
                type Reply = $reply;
            }
        )*
    };
    (@sync sync) => { true };
    (@sync async) => { false };
}

// Handles (contexts, streams, events, modules, functions, kernels, libraries) are client-chosen ids; 0, 1 and
// 2 as stream ids keep the driver's meaning (NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD). Device pointers
// are the server's real addresses. Every struct is padded by hand so that it has no implicit padding.
calls! {
    /// `cuDevicePrimaryCtxRetain`: binds `ctx` to device `dev`'s primary context. Tail: none.
    PrimaryCtxRetain = 1, sync { ctx: u64, dev: u32, _pad: u32 } -> Empty;
    /// `cuDevicePrimaryCtxRelease`.
    PrimaryCtxRelease = 2, sync { dev: u32, _pad: u32 } -> Empty;
    /// `cuDevicePrimaryCtxReset`.
    PrimaryCtxReset = 3, sync { dev: u32, _pad: u32 } -> Empty;
    /// `cuCtxCreate`: a new context with client id `ctx`; it becomes current on the calling thread.
    CtxCreate = 4, sync { ctx: u64, flags: u32, dev: u32 } -> Empty;
    /// `cuCtxDestroy`.
    CtxDestroy = 5, sync { ctx: u64 } -> Empty;
    /// Mirrors the client thread's current context (0 = none) on its server thread.
    CtxSetCurrent = 6, async { ctx: u64 } -> Empty;
    /// `cuCtxSynchronize`.
    CtxSynchronize = 7, sync { } -> Empty;
    /// `cuMemAlloc`.
    MemAlloc = 10, sync { size: u64 } -> MemAllocReply;
    /// `cuMemAllocPitch`.
    MemAllocPitch = 11, sync { width: u64, height: u64, elem_size: u32, _pad: u32 } -> MemAllocPitchReply;
    /// `cuMemFree`.
    MemFree = 12, sync { dptr: u64 } -> Empty;
    /// `cuMemGetInfo`.
    MemGetInfo = 13, sync { } -> MemGetInfoReply;
    /// `cuMemcpyHtoD`: `size` bytes of tail to `dst`.
    MemcpyHtoD = 20, sync { dst: u64, size: u64 } -> Empty;
    /// `cuMemcpyHtoDAsync`: data captured at call time travels in the tail.
    MemcpyHtoDAsync = 21, async { dst: u64, size: u64, stream: u64 } -> Empty;
    /// `cuMemcpyDtoH`: the reply's tail holds the `size` bytes.
    MemcpyDtoH = 22, sync { src: u64, size: u64 } -> Empty;
    /// `cuMemcpyDtoHAsync`: the bytes come back in a push frame tagged `pending_id` before the reply of a
    /// later synchronizing call that covers the copy.
    MemcpyDtoHAsync = 23, async { src: u64, size: u64, stream: u64, pending_id: u64 } -> Empty;
    /// `cuMemcpyDtoD` (also `cuMemcpy` with unified addressing).
    MemcpyDtoD = 24, sync { dst: u64, src: u64, size: u64 } -> Empty;
    /// `cuMemcpyDtoDAsync`.
    MemcpyDtoDAsync = 25, async { dst: u64, src: u64, size: u64, stream: u64 } -> Empty;
    /// `cuMemsetD8/D16/D32` and their 2D forms: `width` elements of `elem_size` bytes per row, `height` rows.
    Memset = 26, sync { dst: u64, pitch: u64, width: u64, height: u64, value: u32, elem_size: u32 } -> Empty;
    /// The `Async` forms of `Memset`.
    MemsetAsync = 27, async { dst: u64, pitch: u64, width: u64, height: u64, stream: u64, value: u32, elem_size: u32 } -> Empty;
    /// `cuStreamCreate` / `cuStreamCreateWithPriority` with client id `stream`.
    StreamCreate = 30, async { stream: u64, flags: u32, priority: i32 } -> Empty;
    /// `cuStreamDestroy`.
    StreamDestroy = 31, async { stream: u64 } -> Empty;
    /// `cuStreamSynchronize`.
    StreamSynchronize = 32, sync { stream: u64 } -> Empty;
    /// `cuStreamQuery`.
    StreamQuery = 33, sync { stream: u64 } -> Empty;
    /// `cuStreamWaitEvent`.
    StreamWaitEvent = 34, async { stream: u64, event: u64, flags: u32, _pad: u32 } -> Empty;
    /// `cuEventCreate` with client id `event`.
    EventCreate = 40, async { event: u64, flags: u32, _pad: u32 } -> Empty;
    /// `cuEventRecord`.
    EventRecord = 41, async { event: u64, stream: u64 } -> Empty;
    /// `cuEventSynchronize`.
    EventSynchronize = 42, sync { event: u64 } -> Empty;
    /// `cuEventQuery`.
    EventQuery = 43, sync { event: u64 } -> Empty;
    /// `cuEventElapsedTime`.
    EventElapsedTime = 44, sync { start: u64, end: u64 } -> EventElapsedReply;
    /// `cuEventDestroy`.
    EventDestroy = 45, async { event: u64 } -> Empty;
    /// `cuModuleLoadData`/`cuModuleLoadFatBinary`: tail is the image; the reply's tail lists every function
    /// with its parameter layout and attributes (`FunctionTable`).
    ModuleLoad = 50, sync { module: u64 } -> Empty;
    /// `cuModuleUnload`.
    ModuleUnload = 51, sync { module: u64 } -> Empty;
    /// `cuModuleGetFunction` for a name the load reply listed: binds client id `function`. Tail: the name.
    ModuleGetFunction = 52, async { module: u64, function: u64 } -> Empty;
    /// `cuModuleGetGlobal`. Tail: the name.
    ModuleGetGlobal = 53, sync { module: u64 } -> GlobalReply;
    /// `cuLibraryLoadData`: like `ModuleLoad`, for a library; the reply lists its kernels.
    LibraryLoad = 54, sync { library: u64 } -> Empty;
    /// `cuLibraryUnload`.
    LibraryUnload = 55, sync { library: u64 } -> Empty;
    /// `cuLibraryGetKernel` for a listed name: binds client id `kernel`. Tail: the name.
    LibraryGetKernel = 56, async { library: u64, kernel: u64 } -> Empty;
    /// `cuLibraryGetGlobal`. Tail: the name.
    LibraryGetGlobal = 57, sync { library: u64 } -> GlobalReply;
    /// `cuKernelGetFunction`: binds client id `function` to the kernel's function in the current context.
    KernelGetFunction = 58, async { kernel: u64, function: u64 } -> Empty;
    /// `cuFuncGetAttribute`/`cuKernelGetAttribute` for a function whose attributes the load left unknown (the
    /// driver loads kernels lazily; asking for attributes is what loads them).
    FuncGetAttributes = 59, sync { function: u64 } -> FuncAttrsReply;
    /// A kernel name the load reply did not list: asks the driver, so the error is the driver's own. Tail: name.
    LookupName = 61, sync { module: u64, is_library: u32, _pad: u32 } -> Empty;
    /// `cuMemcpy2D`: `height` rows of `width` bytes. Host rows travel packed (pitch = width) in the tail
    /// (host-to-device) or the reply (device-to-host); `direction` is 0 H→D, 1 D→H, 2 D→D.
    Memcpy2D = 28, sync {
        src: u64, src_pitch: u64, dst: u64, dst_pitch: u64, width: u64, height: u64, direction: u32, _pad: u32
    } -> Empty;
    /// `cuMemcpy2DAsync`; device-to-host rows come back in a push frame tagged `pending_id`.
    Memcpy2DAsync = 29, async {
        src: u64, src_pitch: u64, dst: u64, dst_pitch: u64, width: u64, height: u64, stream: u64,
        pending_id: u64, direction: u32, _pad: u32
    } -> Empty;
    /// `cuLaunchKernel`: the tail holds the arguments packed at the offsets of the function's parameter layout.
    LaunchKernel = 60, async {
        function: u64, stream: u64,
        grid_x: u32, grid_y: u32, grid_z: u32,
        block_x: u32, block_y: u32, block_z: u32,
        shared_mem: u32, _pad: u32
    } -> Empty;
    /// `cuGetExportTable` for a private table the client does not know: the first word of the server driver's
    /// table (its size in bytes, for most tables), so that the client's stand-in has the same size.
    ExportTableSize = 62, sync { uuid: [u8; 16] } -> ExportTableSizeReply;
    /// `cuFuncSetAttribute`/`cuKernelSetAttribute` (max dynamic shared memory, carveout, ...): applied by the
    /// server's driver, so that later launches that depend on it are accepted there too.
    FuncSetAttribute = 63, async { function: u64, attrib: i32, value: i32 } -> Empty;
    /// `cuLaunchCooperativeKernel`, and `cuLaunchKernelEx` with the cooperative or cluster-dimension attribute:
    /// as `LaunchKernel`, plus those two launch attributes (cluster 1x1x1 = none).
    LaunchKernelEx = 64, async {
        function: u64, stream: u64,
        grid_x: u32, grid_y: u32, grid_z: u32,
        block_x: u32, block_y: u32, block_z: u32,
        shared_mem: u32, cooperative: u32,
        cluster_x: u32, cluster_y: u32, cluster_z: u32, _pad: u32
    } -> Empty;
    /// `cuMemPoolCreate` of a device pool (pinned device memory) with client id `pool`.
    MemPoolCreate = 65, sync { pool: u64, max_size: u64, device: u32, _pad: u32 } -> Empty;
    /// `cuMemPoolDestroy`.
    MemPoolDestroy = 66, sync { pool: u64 } -> Empty;
    /// `cuMemAllocAsync`/`cuMemAllocFromPoolAsync`: the pool is a client id (a device's default pool is
    /// `default_mem_pool_id(device)`). Synchronous: the pointer is the server's.
    MemAllocAsync = 67, sync { size: u64, stream: u64, pool: u64 } -> MemAllocReply;
    /// `cuMemFreeAsync`.
    MemFreeAsync = 68, async { dptr: u64, stream: u64 } -> Empty;
    /// `cuMemPoolGetAttribute`: every attribute travels as a u64 (the int ones widened).
    MemPoolGetAttribute = 69, sync { pool: u64, attr: u32, _pad: u32 } -> MemPoolAttrReply;
    /// `cuMemPoolSetAttribute`.
    MemPoolSetAttribute = 70, sync { pool: u64, value: u64, attr: u32, _pad: u32 } -> Empty;
    /// `cuMemPoolTrimTo`.
    MemPoolTrimTo = 71, sync { pool: u64, min_bytes: u64 } -> Empty;
    /// `cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags`, answered by the server's driver.
    OccupancyActiveBlocks = 72, sync { function: u64, dynamic_smem: u64, block_size: i32, flags: u32 } -> OccupancyReply;
    /// `cuOccupancyMaxPotentialBlockSizeWithFlags`. Tail: when the app passed a block-size-to-shared-memory
    /// callback, its answer (u64) for every block size 1..=`block_limit`, which stands in for the callback.
    OccupancyPotentialBlockSize = 73, sync { function: u64, dynamic_smem: u64, block_limit: i32, flags: u32 } -> OccupancyPotentialReply;
    /// `cuOccupancyAvailableDynamicSMemPerBlock`.
    OccupancyAvailableSmem = 74, sync { function: u64, num_blocks: i32, block_size: i32 } -> OccupancyReply;
    /// `cuOccupancyMaxActiveClusters` and `cuOccupancyMaxPotentialClusterSize` (`potential_size` 1) for a
    /// launch shape with an optional cluster dimension (0: none given).
    OccupancyClusters = 75, sync {
        function: u64,
        grid_x: u32, grid_y: u32, grid_z: u32,
        block_x: u32, block_y: u32, block_z: u32,
        shared_mem: u32, potential_size: u32,
        cluster_x: u32, cluster_y: u32, cluster_z: u32, _pad: u32
    } -> OccupancyReply;
    /// Page-locked, device-mapped host memory at the same virtual address as the client's (pinned memory is
    /// mapped and has one address for host and device under unified addressing): the server maps `size`
    /// bytes at `addr` and registers them with its driver. Data moves with the ordinary copies: the client
    /// pushes a region before a kernel that names it and pulls it back at the next synchronizing call.
    /// Reply: the device address (`addr` itself where the driver maps host pointers one to one).
    /// CUDA_ERROR_ALREADY_MAPPED (208): that address range is taken in the server process; try another.
    HostMirrorMap = 76, sync { addr: u64, size: u64 } -> MemAllocReply;
    /// Releases a `HostMirrorMap` region.
    HostMirrorUnmap = 77, sync { addr: u64 } -> Empty;
    /// `cuMemAllocManaged`. The client maps its own memory at the same address and keeps it in step the way it
    /// does pinned memory (pushed before kernels that name it, pulled at synchronizing calls).
    MemAllocManaged = 78, sync { size: u64, flags: u32, _pad: u32 } -> MemAllocReply;
    /// `cuLibraryGetManaged`: a `__managed__` variable. Tail: the name.
    LibraryGetManaged = 79, sync { library: u64 } -> GlobalReply;
    /// `cuArray3DCreate`: a CUDA array with client id `array` (depth 0: 2D; height 0 too: 1D).
    ArrayCreate = 80, sync {
        array: u64, width: u64, height: u64, depth: u64, format: u32, channels: u32, flags: u32, _pad: u32
    } -> Empty;
    /// `cuArrayDestroy`.
    ArrayDestroy = 81, sync { array: u64 } -> Empty;
    /// A copy between a box of a CUDA array (`x_bytes`, `y`, `z`; `width_bytes` x `height` x `depth`) and
    /// host rows (packed: the request's tail, or the reply's) or device memory (`device`, with its pitch and
    /// rows per slice). `direction`: 0 host→array, 1 array→host, 2 device→array, 3 array→device.
    ArrayCopy = 82, sync {
        array: u64, x_bytes: u64, y: u64, z: u64, width_bytes: u64, height: u64, depth: u64,
        device: u64, device_pitch: u64, device_height: u64, direction: u32, _pad: u32
    } -> Empty;
    /// `cuTexObjectCreate` (`surface` 0) or `cuSurfObjectCreate` (1). Tail: `CUDA_RESOURCE_DESC` (its array a
    /// client id), then for a texture `CUDA_TEXTURE_DESC` and, with `has_view`, `CUDA_RESOURCE_VIEW_DESC`.
    /// Reply: the object, by value (kernels receive it as an argument).
    TexObjectCreate = 83, sync { surface: u32, has_view: u32 } -> ObjectReply;
    /// `cuTexObjectDestroy` / `cuSurfObjectDestroy`.
    ObjectDestroy = 84, sync { object: u64, surface: u32, _pad: u32 } -> Empty;
    /// `cuCtxGetLimit` of the current context.
    CtxGetLimit = 85, sync { limit: u32, _pad: u32 } -> LimitReply;
    /// `cuCtxSetLimit` (the printf FIFO and malloc heap sizes shape what kernels can do on the server).
    CtxSetLimit = 86, sync { value: u64, limit: u32, _pad: u32 } -> Empty;
    /// Flushes and reports any latched asynchronous error without doing anything else (used by tests and at exit).
    Ping = 90, sync { } -> Empty;
    /// Shared-memory sessions: the client's pinned host allocation `id` (a memfd of `size` bytes, passed with
    /// `Transport::send_fd` tagged `id` just before this request) is mapped by the server and registered with the
    /// driver, so copies to and from it are direct DMA with no staging. `addr` non-zero: map it at that same
    /// address (it is the client's), so that the device sees it where the app's pointers say (unified addressing).
    HostRegionMap = 100, sync { id: u64, size: u64, addr: u64 } -> Empty;
    /// Unregisters and unmaps region `id` (`cuMemFreeHost`).
    HostRegionUnmap = 101, sync { id: u64 } -> Empty;
    /// `cuMemcpyHtoD` from `size` bytes at `offset` in region `region`.
    MemcpyHtoDRegion = 102, sync { dst: u64, region: u64, offset: u64, size: u64 } -> Empty;
    /// `cuMemcpyHtoDAsync` from a region: the GPU reads the client's memory when the copy runs, as natively.
    MemcpyHtoDRegionAsync = 103, async { dst: u64, region: u64, offset: u64, size: u64, stream: u64 } -> Empty;
    /// `cuMemcpyDtoH` into a region.
    MemcpyDtoHRegion = 104, sync { src: u64, region: u64, offset: u64, size: u64 } -> Empty;
    /// `cuMemcpyDtoHAsync` into a region: the bytes land in the client's memory when the copy runs.
    MemcpyDtoHRegionAsync = 105, async { src: u64, region: u64, offset: u64, size: u64, stream: u64 } -> Empty;
    /// NVML's live values for the client's device `device` (memory, utilization, sensors), for the NVML shim:
    /// from NVIDIA's NVML on the real backend, from the session's own bookkeeping on the emulated one. Only
    /// sent to a server that announced `CAP_NVML`.
    NvmlDeviceStatus = 110, sync { device: u32, _pad: u32 } -> NvmlStatusReply;
    /// NVML's system facts: the reply's tail is the server driver's version string (`nvmlSystemGetDriverVersion`).
    NvmlSystemInfo = 111, sync { } -> Empty;
    // Virtual memory management (`cuMem*` VMM calls). Only sent to a server that announced `CAP_VMM`.
    // Device ordinals in locations are the client's; allocation handles are client-chosen ids.
    /// `cuMemGetAllocationGranularity`: `option` 0 minimum, 1 recommended.
    MemGetAllocationGranularity = 120, sync { prop: MemAllocProp, option: u32, _pad: u32 } -> GranularityReply;
    /// `cuMemAddressReserve`: a virtual address range of the server's driver (`addr` is a hint).
    MemAddressReserve = 121, sync { size: u64, alignment: u64, addr: u64, flags: u64 } -> MemAllocReply;
    /// `cuMemAddressFree` of a whole reservation.
    MemAddressFree = 122, sync { ptr: u64, size: u64 } -> Empty;
    /// `cuMemCreate`: physical memory bound to client id `handle`. Synchronous: out-of-memory is its answer.
    MemCreate = 123, sync { handle: u64, size: u64, flags: u64, prop: MemAllocProp } -> Empty;
    /// `cuMemRelease`: drops one reference to `handle`.
    MemRelease = 124, sync { handle: u64 } -> Empty;
    /// `cuMemMap`: `size` bytes of `handle` from `offset` at `ptr`, inside a reservation.
    MemMap = 125, sync { ptr: u64, size: u64, offset: u64, handle: u64, flags: u64 } -> Empty;
    /// `cuMemUnmap` of whole mappings (one, or several back to back).
    MemUnmap = 126, sync { ptr: u64, size: u64 } -> Empty;
    /// `cuMemSetAccess`. Tail: `count` `MemAccessDesc` records.
    MemSetAccess = 127, sync { ptr: u64, size: u64, count: u32, _pad: u32 } -> Empty;
    /// `cuMemGetAccess` for one location.
    MemGetAccess = 128, sync { ptr: u64, location_type: u32, location_id: i32 } -> MemAccessReply;
    /// `cuMemGetAllocationPropertiesFromHandle`.
    MemGetAllocationProperties = 129, sync { handle: u64 } -> MemAllocPropReply;
    /// `cuMemRetainAllocationHandle`: one more reference to the handle mapped at `addr`; the reply is its id.
    MemRetainAllocationHandle = 130, sync { addr: u64 } -> MemHandleReply;
    /// Stream memory operations: `count` `MemOp` records follow. `single` 1: one operation through its own entry
    /// point (`cuStreamWriteValue32` and friends, whose `flags` are the record's), 0: `cuStreamBatchMemOp` with
    /// these batch `flags`.
    StreamMemOps = 140, async { stream: u64, count: u32, flags: u32, single: u32, _pad: u32 } -> Empty;
}

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
    pub handle: u64,
}

/// One stream memory operation (`CUstreamBatchMemOpParams` without the driver-internal fields): `operation` is a
/// `CUstreamBatchMemOpType`, `value` the 32- or 64-bit operand, `flags` the operation's own flags.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemOp {
    pub operation: u32,
    pub flags: u32,
    pub address: u64,
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

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemAllocReply {
    pub dptr: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemAllocPitchReply {
    pub dptr: u64,
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

/// Sizes of the texture descriptors `TexObjectCreate` carries (CUDA 13.0's cuda.h, 64-bit).
pub const RESOURCE_DESC_LEN: usize = 144;
pub const TEXTURE_DESC_LEN: usize = 104;
pub const RESOURCE_VIEW_DESC_LEN: usize = 112;

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

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct OccupancyPotentialReply {
    pub min_grid: i32,
    pub block: i32,
}

/// The launch shape an occupancy question is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LaunchShape {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem: u32,
    /// [0, 0, 0]: no cluster dimension given (the kernel's own, if any).
    pub cluster: [u32; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MemPoolAttrReply {
    pub value: u64,
}

/// The client id of device `device`'s default memory pool (`cuDeviceGetDefaultMemPool`); the server binds it
/// to the driver's default pool on first use.
pub fn default_mem_pool_id(device: u32) -> u64 {
    0x2000 + 0x10 * device as u64
}

/// The device whose default pool `pool` is, if it is one of those ids.
pub fn default_mem_pool_device(pool: u64) -> Option<u32> {
    (0x2000..0x3000)
        .contains(&pool)
        .then(|| pool - 0x2000)
        .filter(|d| d % 0x10 == 0)
        .map(|d| (d / 0x10) as u32)
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct ExportTableSizeReply {
    pub first_word: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct GlobalReply {
    pub dptr: u64,
    pub size: u64,
}

/// Builds the header of a request whose tail has `tail_len` bytes.
pub fn request_header<C: Call>(seq: u32, flags: u16, tail_len: usize) -> RequestHeader {
    let body_len = std::mem::size_of::<C>() as u32;
    RequestHeader {
        len: body_len + tail_len as u32,
        op: C::OP as u16,
        flags,
        body_len,
        seq,
    }
}

/// Appends one whole request (header, body, tail) to a batch buffer.
pub fn encode_request<C: Call>(buf: &mut BytesMut, seq: u32, flags: u16, call: &C, tail: &[u8]) {
    let header = request_header::<C>(seq, flags, tail.len());
    buf.reserve(std::mem::size_of::<RequestHeader>() + header.len as usize);
    buf.put_slice(header.as_bytes());
    buf.put_slice(call.as_bytes());
    buf.put_slice(tail);
}

/// Checks a received request header: known op, body of that op's exact size, no length overflow.
pub fn check_request_header(header: &RequestHeader) -> Result<Op, WireError> {
    let op = Op::from_u16(header.op)?;
    if header.body_len > header.len {
        return Err(WireError::BadHeader {
            len: header.len,
            body_len: header.body_len,
        });
    }
    let want = op.body_len();
    if header.body_len as usize != want {
        return Err(WireError::BodySize {
            op,
            got: header.body_len as usize,
            want,
        });
    }
    Ok(op)
}

/// Reads a call's fixed body.
pub fn decode_body<C: Call>(body: &[u8]) -> Result<C, WireError> {
    C::read_from_bytes(body).map_err(|_| WireError::BodySize {
        op: C::OP,
        got: body.len(),
        want: std::mem::size_of::<C>(),
    })
}

/// Number of `CUfunction_attribute` values (0..=15 in CUDA 13.0: up to the cluster attributes) returned
/// with every function. The runtime's cudaFuncGetAttributes reads every one of them.
pub const FUNC_ATTR_COUNT: usize = 16;

/// One kernel of a loaded module or library, as the server reports it with the load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FunctionInfo {
    pub name: String,
    /// (offset, size) of each parameter in the packed argument buffer, in order.
    pub params: Vec<(u32, u32)>,
    /// `cuFuncGetAttribute` values, indexed by attribute; `i32::MIN` where the driver gave an error or the
    /// value is not known yet (`ATTRS_UNKNOWN`: ask with `FuncGetAttributes`).
    pub attrs: [i32; FUNC_ATTR_COUNT],
}

/// Attributes of a function whose module was loaded lazily: fetched on first use.
pub const ATTRS_UNKNOWN: [i32; FUNC_ATTR_COUNT] = [i32::MIN; FUNC_ATTR_COUNT];

impl FunctionInfo {
    /// Bytes of the packed argument buffer: the end of the last parameter.
    pub fn args_size(&self) -> usize {
        self.params
            .iter()
            .map(|&(o, s)| o as usize + s as usize)
            .max()
            .unwrap_or(0)
    }
}

/// Largest number of functions or parameters accepted in a function table.
const MAX_TABLE_ENTRIES: u32 = 1 << 20;

/// Encodes the function table that follows a module or library load reply.
pub fn encode_function_table(buf: &mut BytesMut, functions: &[FunctionInfo]) {
    buf.put_u32_le(functions.len() as u32);
    for f in functions {
        buf.put_u32_le(f.name.len() as u32);
        buf.put_slice(f.name.as_bytes());
        buf.put_u32_le(f.params.len() as u32);
        for &(offset, size) in &f.params {
            buf.put_u32_le(offset);
            buf.put_u32_le(size);
        }
        for a in f.attrs {
            buf.put_i32_le(a);
        }
    }
}

/// Decodes a function table, refusing truncated or absurd input.
pub fn decode_function_table(mut data: &[u8]) -> Result<Vec<FunctionInfo>, WireError> {
    fn take_u32(d: &mut &[u8]) -> Result<u32, WireError> {
        let (head, rest) = d
            .split_first_chunk::<4>()
            .ok_or(WireError::Malformed("function table truncated"))?;
        *d = rest;
        Ok(u32::from_le_bytes(*head))
    }
    let count = take_u32(&mut data)?;
    if count > MAX_TABLE_ENTRIES {
        return Err(WireError::Malformed("function table too long"));
    }
    let mut out = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        let name_len = take_u32(&mut data)? as usize;
        if name_len > data.len() {
            return Err(WireError::Malformed("function name truncated"));
        }
        let (name, rest) = data.split_at(name_len);
        data = rest;
        let name = String::from_utf8(name.to_vec()).map_err(|_| WireError::Malformed("function name not UTF-8"))?;
        let nparams = take_u32(&mut data)?;
        if nparams > MAX_TABLE_ENTRIES {
            return Err(WireError::Malformed("parameter list too long"));
        }
        let mut params = Vec::with_capacity(nparams.min(4096) as usize);
        for _ in 0..nparams {
            let offset = take_u32(&mut data)?;
            let size = take_u32(&mut data)?;
            params.push((offset, size));
        }
        let mut attrs = [0i32; FUNC_ATTR_COUNT];
        for a in attrs.iter_mut() {
            *a = take_u32(&mut data)? as i32;
        }
        out.push(FunctionInfo { name, params, attrs });
    }
    if !data.is_empty() {
        return Err(WireError::Malformed("trailing bytes after function table"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn op_codes_are_unique_and_bodies_small() {
        let mut seen = std::collections::HashSet::new();
        for op in Op::ALL {
            assert!(seen.insert(*op as u16), "duplicate op {op:?}");
            assert!(op.body_len() <= MAX_BODY, "{op:?} body too large");
            assert_eq!(op.body_len() % 8, 0, "{op:?} body not 8-byte aligned in size");
            assert_eq!(Op::from_u16(*op as u16), Ok(*op));
        }
        assert_eq!(Op::from_u16(0xffff), Err(WireError::UnknownOp(0xffff)));
    }

    #[test]
    fn launch_encoding_is_pinned() {
        let mut buf = BytesMut::new();
        let call = LaunchKernel {
            function: 0x1001,
            stream: 2,
            grid_x: 4,
            grid_y: 1,
            grid_z: 1,
            block_x: 256,
            block_y: 1,
            block_z: 1,
            shared_mem: 0,
            _pad: 0,
        };
        encode_request(&mut buf, 7, 0, &call, &[0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, 0]);
        snapshot!(hex(&buf));
    }

    #[test]
    fn memcpy_and_alloc_encodings_are_pinned() {
        let mut buf = BytesMut::new();
        encode_request(
            &mut buf,
            1,
            FLAG_PER_THREAD,
            &MemcpyHtoD {
                dst: 0x7f00_0000_1000,
                size: 3,
            },
            b"abc",
        );
        encode_request(&mut buf, 2, 0, &MemAlloc { size: 1 << 20 }, &[]);
        snapshot!(hex(&buf));
    }

    #[test]
    fn vmm_encodings_are_pinned() {
        // The fixed fields keep cuda.h's order and offsets up to the win32 pointer (which does not travel).
        assert_eq!(std::mem::size_of::<MemAllocProp>(), 24);
        assert_eq!(std::mem::size_of::<MemAccessDesc>(), 12);
        let prop = MemAllocProp {
            alloc_type: 1,
            handle_types: 1,
            location_type: MEM_LOCATION_DEVICE,
            location_id: 0,
            gpu_direct_rdma: 1,
            ..Default::default()
        };
        let mut buf = BytesMut::new();
        let create = MemCreate {
            handle: 0x10_0040,
            size: 2 << 20,
            flags: 0,
            prop,
        };
        encode_request(&mut buf, 3, 0, &create, &[]);
        let access = MemAccessDesc {
            location_type: MEM_LOCATION_DEVICE,
            location_id: 0,
            flags: 3,
        };
        let set = MemSetAccess {
            ptr: 0x7d00_0000_0000,
            size: 6 << 20,
            count: 1,
            _pad: 0,
        };
        encode_request(&mut buf, 4, 0, &set, access.as_bytes());
        snapshot!(hex(&buf));
    }

    #[test]
    fn header_checks_reject_malformed_frames() {
        let good = request_header::<MemAlloc>(1, 0, 0);
        assert_eq!(check_request_header(&good), Ok(Op::MemAlloc));
        let bad_body = RequestHeader {
            body_len: 16,
            len: 16,
            ..good
        };
        assert!(matches!(
            check_request_header(&bad_body),
            Err(WireError::BodySize { .. })
        ));
        let inverted = RequestHeader {
            body_len: 8,
            len: 4,
            ..good
        };
        assert!(matches!(
            check_request_header(&inverted),
            Err(WireError::BadHeader { .. })
        ));
        let unknown = RequestHeader { op: 999, ..good };
        assert_eq!(check_request_header(&unknown), Err(WireError::UnknownOp(999)));
        assert!(decode_body::<MemAlloc>(&[0u8; 7]).is_err());
        assert_eq!(decode_body::<MemAlloc>(&42u64.to_le_bytes()), Ok(MemAlloc { size: 42 }));
    }

    #[test]
    fn function_table_round_trips_and_rejects_truncation() {
        let fns = vec![
            FunctionInfo {
                name: "vecadd".into(),
                params: vec![(0, 8), (8, 8), (16, 8), (24, 4)],
                attrs: [1; FUNC_ATTR_COUNT],
            },
            FunctionInfo {
                name: "empty".into(),
                params: vec![],
                attrs: [0; FUNC_ATTR_COUNT],
            },
        ];
        let mut buf = BytesMut::new();
        encode_function_table(&mut buf, &fns);
        assert_eq!(decode_function_table(&buf), Ok(fns.clone()));
        assert_eq!(fns[0].args_size(), 28);
        for cut in 0..buf.len() {
            assert!(
                decode_function_table(&buf[..cut]).is_err(),
                "truncation at {cut} accepted"
            );
        }
        let mut huge = BytesMut::new();
        huge.put_u32_le(u32::MAX);
        assert!(decode_function_table(&huge).is_err());
    }
}
