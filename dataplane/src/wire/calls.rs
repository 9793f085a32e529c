//! The call table: one row per remoted call, the single source of truth from which the wire structs, their
//! operation codes, the server's dispatch and the backend's forwarded driver operations are generated.
//!
//! A row reads
//! `Name = op, sync|async [, tail] { fields } -> Reply [=> backend_op(args) = cuDriverEntryPoint];`
//! - `sync` calls get a reply frame; `async` calls never do (their errors latch on the server).
//! - the tail is what follows the fixed body: none (default), `bytes(MAX)` (read whole by the server before the
//!   handler runs, at most MAX bytes, growing with what arrives), or `streamed` (the handler reads it itself).
//! - the optional backend clause declares a driver operation the server's backend forwards unchanged: the real
//!   backend's implementation is generated from it (checked against cuda.h's signature), the emulated one writes
//!   its behaviour by hand.
//!
//! Handles are client-chosen ids (`crate::ids`); device pointers are the server's real addresses. Every struct is
//! padded by hand so that it has no implicit padding (checked by zerocopy's `IntoBytes` derive).

/// Hands every row of the call table to `$callback!` (see the module documentation for a row's form). Consumers:
/// `wire` (structs, `Op`, `Call` impls), the server's dispatch and the backend's forwarded operations.
#[macro_export]
macro_rules! call_table {
    ($callback:ident) => {
        $callback! {
            /// `cuDevicePrimaryCtxRetain`: binds `ctx` to device `dev`'s primary context.
            PrimaryCtxRetain = 1, sync { ctx: ContextId, dev: u32, _pad: u32 } -> Empty;
            /// `cuDevicePrimaryCtxRelease`.
            PrimaryCtxRelease = 2, sync { dev: u32, _pad: u32 } -> Empty
                => primary_ctx_release(dev: i32) = cuDevicePrimaryCtxRelease_v2;
            /// `cuDevicePrimaryCtxReset`.
            PrimaryCtxReset = 3, sync { dev: u32, _pad: u32 } -> Empty
                => primary_ctx_reset(dev: i32) = cuDevicePrimaryCtxReset_v2;
            /// `cuCtxCreate`: a new context with client id `ctx`; it becomes current on the calling thread.
            CtxCreate = 4, sync { ctx: ContextId, flags: u32, dev: u32 } -> Empty;
            /// `cuCtxDestroy`.
            CtxDestroy = 5, sync { ctx: ContextId } -> Empty
                => ctx_destroy(ctx: Context) = cuCtxDestroy_v2;
            /// Mirrors the client thread's current context (0 = none) on its server thread.
            CtxSetCurrent = 6, async { ctx: ContextId } -> Empty
                => ctx_set_current(ctx: Context) = cuCtxSetCurrent;
            /// `cuCtxSynchronize`.
            CtxSynchronize = 7, sync { } -> Empty
                => ctx_synchronize() = cuCtxSynchronize;
            /// `cuMemAlloc`.
            MemAlloc = 10, sync { size: u64 } -> MemAllocReply;
            /// `cuMemAllocPitch`.
            MemAllocPitch = 11, sync { width: u64, height: u64, elem_size: u32, _pad: u32 } -> MemAllocPitchReply;
            /// `cuMemFree`.
            MemFree = 12, sync { dptr: DevicePtr } -> Empty
                => mem_free(dptr: DevicePtr) = cuMemFree_v2;
            /// `cuMemGetInfo`.
            MemGetInfo = 13, sync { } -> MemGetInfoReply;
            /// `cuMemcpyHtoD`: `size` bytes of tail to `dst`.
            MemcpyHtoD = 20, sync, streamed { dst: DevicePtr, size: u64 } -> Empty;
            /// `cuMemcpyHtoDAsync`: data captured at call time travels in the tail.
            MemcpyHtoDAsync = 21, async, streamed { dst: DevicePtr, size: u64, stream: StreamId } -> Empty;
            /// `cuMemcpyDtoH`: the reply's tail holds the `size` bytes, then a final status word.
            MemcpyDtoH = 22, sync { src: DevicePtr, size: u64 } -> Empty;
            /// `cuMemcpyDtoHAsync`: the bytes come back in a push frame tagged `pending_id` before the reply of a
            /// later synchronizing call that covers the copy.
            MemcpyDtoHAsync = 23, async { src: DevicePtr, size: u64, stream: StreamId, pending_id: PendingId } -> Empty;
            /// `cuMemcpyDtoD` (also `cuMemcpy` with unified addressing).
            MemcpyDtoD = 24, sync { dst: DevicePtr, src: DevicePtr, size: u64 } -> Empty;
            /// `cuMemcpyDtoDAsync`.
            MemcpyDtoDAsync = 25, async { dst: DevicePtr, src: DevicePtr, size: u64, stream: StreamId } -> Empty
                => memcpy_dtod_async(dst: DevicePtr, src: DevicePtr, size: u64, stream: Stream) = cuMemcpyDtoDAsync_v2;
            /// `cuMemsetD8/D16/D32` and their 2D forms: `width` elements of `elem_size` bytes per row, `height` rows.
            Memset = 26, sync { dst: DevicePtr, pitch: u64, width: u64, height: u64, value: u32, elem_size: u32 } -> Empty;
            /// The `Async` forms of `Memset`.
            MemsetAsync = 27, async {
                dst: DevicePtr, pitch: u64, width: u64, height: u64, stream: StreamId, value: u32, elem_size: u32
            } -> Empty;
            /// `cuMemcpy2D`: `height` rows of `width` bytes. Host rows travel packed (pitch = width) in the tail
            /// (host-to-device) or the reply (device-to-host); `direction` is 0 H→D, 1 D→H, 2 D→D. `src`/`dst` are
            /// device addresses on their device side and unused on the host side.
            Memcpy2D = 28, sync, streamed {
                src: u64, src_pitch: u64, dst: u64, dst_pitch: u64, width: u64, height: u64, direction: u32, _pad: u32
            } -> Empty;
            /// `cuMemcpy2DAsync`; device-to-host rows come back in a push frame tagged `pending_id`.
            Memcpy2DAsync = 29, async, streamed {
                src: u64, src_pitch: u64, dst: u64, dst_pitch: u64, width: u64, height: u64, stream: StreamId,
                pending_id: PendingId, direction: u32, _pad: u32
            } -> Empty;
            /// `cuStreamCreate` / `cuStreamCreateWithPriority` with client id `stream`.
            StreamCreate = 30, async { stream: StreamId, flags: u32, priority: i32 } -> Empty;
            /// `cuStreamDestroy`.
            StreamDestroy = 31, async { stream: StreamId } -> Empty
                => stream_destroy(stream: Stream) = cuStreamDestroy_v2;
            /// `cuStreamSynchronize`.
            StreamSynchronize = 32, sync { stream: StreamId } -> Empty
                => stream_synchronize(stream: Stream) = cuStreamSynchronize;
            /// `cuStreamQuery`.
            StreamQuery = 33, sync { stream: StreamId } -> Empty
                => stream_query(stream: Stream) = cuStreamQuery;
            /// `cuStreamWaitEvent`.
            StreamWaitEvent = 34, async { stream: StreamId, event: EventId, flags: u32, _pad: u32 } -> Empty
                => stream_wait_event(stream: Stream, event: Event, flags: u32) = cuStreamWaitEvent;
            /// `cuEventCreate` with client id `event`.
            EventCreate = 40, async { event: EventId, flags: u32, _pad: u32 } -> Empty;
            /// `cuEventRecord`.
            EventRecord = 41, async { event: EventId, stream: StreamId } -> Empty
                => event_record(event: Event, stream: Stream) = cuEventRecord;
            /// `cuEventSynchronize`.
            EventSynchronize = 42, sync { event: EventId } -> Empty
                => event_synchronize(event: Event) = cuEventSynchronize;
            /// `cuEventQuery`.
            EventQuery = 43, sync { event: EventId } -> Empty
                => event_query(event: Event) = cuEventQuery;
            /// `cuEventElapsedTime`.
            EventElapsedTime = 44, sync { start: EventId, end: EventId } -> EventElapsedReply;
            /// `cuEventDestroy`.
            EventDestroy = 45, async { event: EventId } -> Empty
                => event_destroy(event: Event) = cuEventDestroy_v2;
            /// `cuModuleLoadData`/`cuModuleLoadFatBinary`: tail is the image; the reply's tail lists every function
            /// with its parameter layout and attributes (`FunctionTable`).
            ModuleLoad = 50, sync, bytes(MAX_IMAGE) { module: ModuleId } -> Empty;
            /// `cuModuleUnload`.
            ModuleUnload = 51, sync { module: ModuleId } -> Empty
                => module_unload(module: Module) = cuModuleUnload;
            /// `cuModuleGetFunction` for a name the load reply listed: binds client id `function`. Tail: the name.
            ModuleGetFunction = 52, async, bytes(MAX_NAME) { module: ModuleId, function: FunctionId } -> Empty;
            /// `cuModuleGetGlobal`. Tail: the name.
            ModuleGetGlobal = 53, sync, bytes(MAX_NAME) { module: ModuleId } -> GlobalReply;
            /// `cuLibraryLoadData`: like `ModuleLoad`, for a library; the reply lists its kernels.
            LibraryLoad = 54, sync, bytes(MAX_IMAGE) { library: ModuleId } -> Empty;
            /// `cuLibraryUnload`.
            LibraryUnload = 55, sync { library: ModuleId } -> Empty
                => library_unload(library: Library) = cuLibraryUnload;
            /// `cuLibraryGetKernel` for a listed name: binds client id `kernel`. Tail: the name.
            LibraryGetKernel = 56, async, bytes(MAX_NAME) { library: ModuleId, kernel: FunctionId } -> Empty;
            /// `cuLibraryGetGlobal`. Tail: the name.
            LibraryGetGlobal = 57, sync, bytes(MAX_NAME) { library: ModuleId } -> GlobalReply;
            /// `cuKernelGetFunction`: binds client id `function` to the kernel's function in the current context.
            KernelGetFunction = 58, async { kernel: FunctionId, function: FunctionId } -> Empty;
            /// `cuFuncGetAttribute`/`cuKernelGetAttribute` for a function whose attributes the load left unknown (the
            /// driver loads kernels lazily; asking for attributes is what loads them).
            FuncGetAttributes = 59, sync { function: FunctionId } -> FuncAttrsReply;
            /// `cuLaunchKernel`: the tail holds the arguments packed at the offsets of the function's parameter
            /// layout.
            LaunchKernel = 60, async, bytes(MAX_ARGS) { function: FunctionId, stream: StreamId, dims: LaunchDims } -> Empty;
            /// A kernel name the load reply did not list: asks the driver, so the error is the driver's own. Tail:
            /// the name.
            LookupName = 61, sync, bytes(MAX_NAME) { module: ModuleId, is_library: u32, _pad: u32 } -> Empty;
            /// `cuGetExportTable` for a private table the client does not know: the first word of the server
            /// driver's table (its size in bytes, for most tables), so that the client's stand-in has the same size.
            ExportTableSize = 62, sync { uuid: [u8; 16] } -> ExportTableSizeReply;
            /// `cuFuncSetAttribute`/`cuKernelSetAttribute` (max dynamic shared memory, carveout, ...): applied by the
            /// server's driver, so that later launches that depend on it are accepted there too.
            FuncSetAttribute = 63, async { function: FunctionId, attrib: i32, value: i32 } -> Empty;
            /// `cuLaunchCooperativeKernel`, and `cuLaunchKernelEx` with the cooperative or cluster-dimension
            /// attribute: as `LaunchKernel`, plus a cluster shape (1x1x1 = none).
            LaunchKernelEx = 64, async, bytes(MAX_ARGS) {
                function: FunctionId, stream: StreamId, dims: LaunchDims, cluster: [u32; 3], _pad: u32
            } -> Empty;
            /// `cuMemPoolCreate` of a device pool (pinned device memory) with client id `pool`.
            MemPoolCreate = 65, sync { pool: PoolId, max_size: u64, device: u32, _pad: u32 } -> Empty;
            /// `cuMemPoolDestroy`.
            MemPoolDestroy = 66, sync { pool: PoolId } -> Empty
                => mem_pool_destroy(pool: MemPool) = cuMemPoolDestroy;
            /// `cuMemAllocAsync`/`cuMemAllocFromPoolAsync` (a device's default pool is `PoolId::default_of`).
            /// Synchronous: the pointer is the server's.
            MemAllocAsync = 67, sync { size: u64, stream: StreamId, pool: PoolId } -> MemAllocReply;
            /// `cuMemFreeAsync`.
            MemFreeAsync = 68, async { dptr: DevicePtr, stream: StreamId } -> Empty
                => mem_free_async(dptr: DevicePtr, stream: Stream) = cuMemFreeAsync;
            /// `cuMemPoolGetAttribute`: every attribute travels as a u64 (the int ones widened).
            MemPoolGetAttribute = 69, sync { pool: PoolId, attr: u32, _pad: u32 } -> MemPoolAttrReply;
            /// `cuMemPoolSetAttribute`.
            MemPoolSetAttribute = 70, sync { pool: PoolId, value: u64, attr: u32, _pad: u32 } -> Empty;
            /// `cuMemPoolTrimTo`.
            MemPoolTrimTo = 71, sync { pool: PoolId, min_bytes: u64 } -> Empty
                => mem_pool_trim_to(pool: MemPool, min_bytes: u64) = cuMemPoolTrimTo;
            /// `cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags`, answered by the server's driver.
            OccupancyActiveBlocks = 72, sync { function: FunctionId, dynamic_smem: u64, block_size: i32, flags: u32 }
                -> OccupancyReply;
            /// `cuOccupancyMaxPotentialBlockSizeWithFlags`. Tail: when the app passed a block-size-to-shared-memory
            /// callback, its answer (u64) for every block size 1..=`block_limit`, which stands in for the callback.
            OccupancyPotentialBlockSize = 73, sync, bytes(MAX_BLOCK_TABLE) {
                function: FunctionId, dynamic_smem: u64, block_limit: i32, flags: u32
            } -> OccupancyPotentialReply;
            /// `cuOccupancyAvailableDynamicSMemPerBlock`.
            OccupancyAvailableSmem = 74, sync { function: FunctionId, num_blocks: i32, block_size: i32 } -> OccupancyReply;
            /// `cuOccupancyMaxActiveClusters` and `cuOccupancyMaxPotentialClusterSize` (`potential_size` 1) for a
            /// launch shape with an optional cluster dimension (0: none given).
            OccupancyClusters = 75, sync {
                function: FunctionId,
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
            HostMirrorMap = 76, sync { addr: HostAddr, size: u64 } -> MemAllocReply;
            /// Releases a `HostMirrorMap` region.
            HostMirrorUnmap = 77, sync { addr: HostAddr } -> Empty;
            /// Hashes of `size` bytes of a host mirror from `dptr`, one `u64` per `digest::CHUNK` in the reply's tail:
            /// the client pulls back only chunks whose hash differs from what it pushed. Only sent to a server that
            /// announced `CAP_MIRROR_DIGEST`.
            MirrorDigest = 88, sync { dptr: DevicePtr, size: u64 } -> Empty;
            /// `cuMemAllocManaged`. The client maps its own memory at the same address and keeps it in step the way
            /// it does pinned memory (pushed before kernels that name it, pulled at synchronizing calls).
            MemAllocManaged = 78, sync { size: u64, flags: u32, _pad: u32 } -> MemAllocReply;
            /// `cuLibraryGetManaged`: a `__managed__` variable. Tail: the name.
            LibraryGetManaged = 79, sync, bytes(MAX_NAME) { library: ModuleId } -> GlobalReply;
            /// `cuArray3DCreate`: a CUDA array with client id `array` (depth 0: 2D; height 0 too: 1D).
            ArrayCreate = 80, sync {
                array: ArrayId, width: u64, height: u64, depth: u64, format: u32, channels: u32, flags: u32, _pad: u32
            } -> Empty;
            /// `cuArrayDestroy`.
            ArrayDestroy = 81, sync { array: ArrayId } -> Empty
                => array_destroy(array: Array) = cuArrayDestroy;
            /// A copy between a box of a CUDA array (`x_bytes`, `y`, `z`; `width_bytes` x `height` x `depth`) and
            /// host rows (packed: the request's tail, or the reply's) or device memory (`device`, with its pitch and
            /// rows per slice). `direction`: 0 host→array, 1 array→host, 2 device→array, 3 array→device.
            ArrayCopy = 82, sync, bytes(MAX_ARRAY_COPY) {
                array: ArrayId, x_bytes: u64, y: u64, z: u64, width_bytes: u64, height: u64, depth: u64,
                device: DevicePtr, device_pitch: u64, device_height: u64, direction: u32, _pad: u32
            } -> Empty;
            /// `cuTexObjectCreate` (`surface` 0) or `cuSurfObjectCreate` (1). Tail: `CUDA_RESOURCE_DESC` (its array a
            /// client id), then for a texture `CUDA_TEXTURE_DESC` and, with `has_view`, `CUDA_RESOURCE_VIEW_DESC`.
            /// Reply: the object, by value (kernels receive it as an argument).
            TexObjectCreate = 83, sync, bytes(MAX_TEX_DESCS) { surface: u32, has_view: u32 } -> ObjectReply;
            /// `cuTexObjectDestroy` / `cuSurfObjectDestroy`.
            ObjectDestroy = 84, sync { object: u64, surface: u32, _pad: u32 } -> Empty;
            /// `cuCtxGetLimit` of the current context.
            CtxGetLimit = 85, sync { limit: u32, _pad: u32 } -> LimitReply;
            /// `cuCtxSetLimit` (the printf FIFO and malloc heap sizes shape what kernels can do on the server).
            CtxSetLimit = 86, sync { value: u64, limit: u32, _pad: u32 } -> Empty
                => ctx_set_limit(limit: u32, value: u64) = cuCtxSetLimit;
            /// `cuMemcpyAtoA`: `size` bytes from byte `src_offset` of array `src` to byte `dst_offset` of array
            /// `dst` (1D arrays, or the first row of wider ones, as natively).
            MemcpyAtoA = 87, sync { dst: ArrayId, dst_offset: u64, src: ArrayId, src_offset: u64, size: u64 } -> Empty
                => memcpy_atoa(dst: Array, dst_offset: u64, src: Array, src_offset: u64, size: u64) = cuMemcpyAtoA_v2;
            /// Flushes and reports any latched asynchronous error without doing anything else (tests, exit).
            Ping = 90, sync { } -> Empty;
            /// Shared-memory sessions: the client's pinned host allocation `id` (a memfd of `size` bytes, passed with
            /// `Transport::send_fd` tagged `id` just before this request) is mapped by the server and registered
            /// with the driver, so copies to and from it are direct DMA with no staging. `addr` non-zero: map it at
            /// that same address (it is the client's), so that the device sees it where the app's pointers say.
            HostRegionMap = 100, sync { id: RegionId, size: u64, addr: HostAddr } -> Empty;
            /// Unregisters and unmaps region `id` (`cuMemFreeHost`).
            HostRegionUnmap = 101, sync { id: RegionId } -> Empty;
            /// `cuMemcpyHtoD` from `size` bytes at `offset` in region `region`.
            MemcpyHtoDRegion = 102, sync { dst: DevicePtr, region: RegionId, offset: u64, size: u64 } -> Empty;
            /// `cuMemcpyHtoDAsync` from a region: the GPU reads the client's memory when the copy runs.
            MemcpyHtoDRegionAsync = 103, async {
                dst: DevicePtr, region: RegionId, offset: u64, size: u64, stream: StreamId
            } -> Empty;
            /// `cuMemcpyDtoH` into a region.
            MemcpyDtoHRegion = 104, sync { src: DevicePtr, region: RegionId, offset: u64, size: u64 } -> Empty;
            /// `cuMemcpyDtoHAsync` into a region: the bytes land in the client's memory when the copy runs.
            MemcpyDtoHRegionAsync = 105, async {
                src: DevicePtr, region: RegionId, offset: u64, size: u64, stream: StreamId
            } -> Empty;
            /// NVML's live values for the client's device `device` (memory, utilization, sensors), for the NVML shim:
            /// from NVIDIA's NVML on the real backend, from the session's own bookkeeping on the emulated one. Only
            /// sent to a server that announced `CAP_NVML`.
            NvmlDeviceStatus = 110, sync { device: u32, _pad: u32 } -> NvmlStatusReply;
            /// NVML's system facts: the reply's tail is the server driver's version string.
            NvmlSystemInfo = 111, sync { } -> Empty;
            /// NVML's PCIe link values of the client's device `device`. Only sent to a server that announced
            /// `CAP_NVML_PCIE`.
            NvmlDevicePcie = 112, sync { device: u32, _pad: u32 } -> NvmlPcieReply;
            /// `nvmlDeviceGetFieldValues`: the tail holds `count` `NvmlFieldRequest`s (at most `MAX_NVML_FIELDS`),
            /// the reply's tail as many `NvmlFieldValue`s. Only sent to a server that announced `CAP_NVML_PCIE`.
            NvmlFieldValues = 113, sync, bytes(MAX_NVML_FIELDS * 8) { device: u32, count: u32 } -> Empty;
            /// `nvmlDeviceGetP2PStatus` between two of this server's devices (`dev_a`, `dev_b`: indices in its welcome
            /// list, as NVML numbers them) for capability `index` (`nvmlGpuP2PCapsIndex_t`): the reply's value is the
            /// `nvmlGpuP2PStatus_t`, from the server's NVML (real backend) or the emulator's rules. CUDA_ERROR_
            /// NOT_SUPPORTED where NVML cannot say, CUDA_ERROR_INVALID_VALUE for an index NVML refuses. Only sent to a
            /// server that announced `CAP_NVML_P2P`.
            NvmlP2PStatus = 114, sync { dev_a: u32, dev_b: u32, index: u32, _pad: u32 } -> PeerValueReply;
            // Virtual memory management (`cuMem*` VMM calls). Only sent to a server that announced `CAP_VMM`.
            // Device ordinals in locations are the client's; allocation handles are client-chosen ids.
            /// `cuMemGetAllocationGranularity`: `option` 0 minimum, 1 recommended.
            MemGetAllocationGranularity = 120, sync { prop: MemAllocProp, option: u32, _pad: u32 } -> GranularityReply;
            /// `cuMemAddressReserve`: a virtual address range of the server's driver (`addr` is a hint).
            MemAddressReserve = 121, sync { size: u64, alignment: u64, addr: DevicePtr, flags: u64 } -> MemAllocReply;
            /// `cuMemAddressFree` of a whole reservation.
            MemAddressFree = 122, sync { ptr: DevicePtr, size: u64 } -> Empty;
            /// `cuMemCreate`: physical memory bound to client id `handle`. Synchronous: out-of-memory is its answer.
            MemCreate = 123, sync { handle: AllocHandleId, size: u64, flags: u64, prop: MemAllocProp } -> Empty;
            /// `cuMemRelease`: drops one reference to `handle`.
            MemRelease = 124, sync { handle: AllocHandleId } -> Empty;
            /// `cuMemMap`: `size` bytes of `handle` from `offset` at `ptr`, inside a reservation.
            MemMap = 125, sync { ptr: DevicePtr, size: u64, offset: u64, handle: AllocHandleId, flags: u64 } -> Empty;
            /// `cuMemUnmap` of whole mappings (one, or several back to back).
            MemUnmap = 126, sync { ptr: DevicePtr, size: u64 } -> Empty;
            /// `cuMemSetAccess`. Tail: `count` `MemAccessDesc` records.
            MemSetAccess = 127, sync, bytes(MAX_ACCESS_BYTES) { ptr: DevicePtr, size: u64, count: u32, _pad: u32 } -> Empty;
            /// `cuMemGetAccess` for one location.
            MemGetAccess = 128, sync { ptr: DevicePtr, location_type: u32, location_id: i32 } -> MemAccessReply;
            /// `cuMemGetAllocationPropertiesFromHandle`.
            MemGetAllocationProperties = 129, sync { handle: AllocHandleId } -> MemAllocPropReply;
            /// `cuMemRetainAllocationHandle`: one more reference to the handle mapped at `addr`; the reply is its id.
            MemRetainAllocationHandle = 130, sync { addr: DevicePtr } -> MemHandleReply;
            /// Stream memory operations: `count` `MemOp` records follow. `single` 1: one operation through its own
            /// entry point (`cuStreamWriteValue32` and friends, whose `flags` are the record's), 0:
            /// `cuStreamBatchMemOp` with these batch `flags`.
            StreamMemOps = 140, async, bytes(MAX_MEM_OP_BYTES) { stream: StreamId, count: u32, flags: u32, single: u32, _pad: u32 }
                -> Empty;
            // Several servers in one process. Only sent to a server that announced `CAP_MULTI_SERVER`.
            /// How the client numbers this server's devices, where that is not the server's own order (a process
            /// using several servers, or `CUDA_VISIBLE_DEVICES`). Tail: `count` pairs of u32, (the client's ordinal,
            /// the device's index in this server's welcome list). From then on every device ordinal in a message
            /// is the client's, and an ordinal the list leaves out is an invalid device.
            SetDeviceNumbering = 160, sync, bytes(MAX_NUMBERING_BYTES) { count: u32, _pad: u32 } -> Empty;
            /// The address window the client chose for its device `device` (unified addressing across servers):
            /// the server places the session's `cuMemAlloc`, `cuMemAllocPitch` and `cuMemAllocManaged` memory of
            /// that device in [base, base+size), reserved at that fixed address (see ARCHITECTURE.md).
            VaWindow = 161, sync { device: u32, _pad: u32, base: u64, size: u64 } -> Empty;
            // Copies between servers (issue 16). Only sent to servers that announced `CAP_PEER_COPY`.
            /// The receiving half of a server-to-server copy: `size` bytes for `dst`, on `stream` (NULL: the legacy
            /// stream), arriving from another server that presents `token`. The server registers the one-time grant
            /// with its listener, waits for that server's connection (`PEER_ARRIVAL_TIMEOUT`), writes the bytes in
            /// stream order and answers the sender once they are on the device. Errors latch here, the sender's
            /// included.
            PeerRecv = 162, async { dst: DevicePtr, size: u64, stream: StreamId, token: [u8; 16] } -> Empty;
            /// The sending half: reads `size` bytes at `src` in `stream`'s order and streams them to the server
            /// named by the tail (an endpoint as `VGPU_SERVER` spells it) for session `session`'s grant `token`.
            /// Ends when the receiver confirms the bytes are on its device.
            PeerSend = 163, async, bytes(MAX_PEER_ENDPOINT) {
                src: DevicePtr, size: u64, stream: StreamId, session: u64, token: [u8; 16]
            } -> Empty;
            /// May this server send to the endpoint in the tail (its operator's list of peers, `vgpu server
            /// --peer`)? CUDA_SUCCESS or CUDA_ERROR_NOT_PERMITTED; the client then relays through itself.
            PeerProbe = 164, sync, bytes(MAX_PEER_ENDPOINT) { } -> Empty;
            /// `PeerRecv` of a pitched copy (`CAP_PEER_ROWS`): `height` rows of `width` bytes (at most 8 MiB) written at
            /// `dst` + row × `dst_pitch`; the bytes on the wire are the rows back to back.
            PeerRecvRows = 166, async {
                dst: DevicePtr, dst_pitch: u64, width: u64, height: u64, stream: StreamId, token: [u8; 16]
            } -> Empty;
            /// `PeerSend` of a pitched copy: `height` rows of `width` bytes read at `src` + row × `src_pitch`.
            PeerSendRows = 167, async, bytes(MAX_PEER_ENDPOINT) {
                src: DevicePtr, src_pitch: u64, width: u64, height: u64, stream: StreamId, session: u64, token: [u8; 16]
            } -> Empty;
            /// One rank's part of a collective between servers (`vgpu_dataplane::coll`, vGPU's `libnccl.so.2`;
            /// only sent to a server that announced `CAP_COLL`): the server plans the steps from these numbers as
            /// every rank's server does, and runs them in `stream`'s order, sending to rank `send_peer` (session
            /// `send_session` of the server the tail names) and receiving from rank `recv_peer`, each message under
            /// a token derived from the group's `secret`. `seq`: the collective's number in the group (for
            /// `KIND_SEND_RECV`: the index of this send between the two ranks; `seq2`: of this receive).
            /// `scratch`: device memory of at least `scratch_size` bytes the plan may use. `recv_count`: for
            /// `KIND_SEND_RECV` the elements received (`count` those sent; a peer of `coll::NO_PEER`: none). Errors
            /// latch.
            CollRun = 168, async, bytes(MAX_PEER_ENDPOINT) {
                kind: u32, dtype: u32, op: u32, nranks: u32, rank: u32, root: u32, send_peer: u32, recv_peer: u32,
                count: u64, recv_count: u64, src: DevicePtr, dst: DevicePtr, scratch: DevicePtr, scratch_size: u64,
                stream: StreamId, send_session: u64, seq: u64, seq2: u64, secret: [u8; 16]
            } -> Empty;
            /// Joins `count` lanes to this channel: TCP connections the client opened with `MODE_LANE` hellos naming
            /// `token`. Once all are there (the server waits briefly for them) the reply is the last unstriped frame
            /// from the server, this call the last from the client: from then on both ends speak
            /// `transports::striped` framing, bulk bytes spread over the main connection and the lanes. Only sent to a
            /// server that announced `CAP_LANES`, over TCP or TLS with lanes of the same kind; CUDA_ERROR_NOT_SUPPORTED
            /// (the channel stays as it was) for any other channel, a lane of another kind, a second join, or lanes
            /// that never came, or unknown `flags` (`handshake::LANES_FINE`: segments shorter than the streams' pieces
            /// are cut into one piece per stream, on both ends).
            LanesJoin = 165, sync { token: [u8; 16], count: u32, flags: u32 } -> Empty;
            // CUDA graphs the server holds (`wire::graph`). Only sent to a server that announced `CAP_GRAPHS`.
            // Graphs, nodes and executable graphs are client-chosen ids; the client checks handles, dependencies
            // and parameters first, so these are asynchronous except where the driver's answer is the result.
            /// `cuGraphCreate` (also a capture's new graph).
            GraphCreate = 170, async { graph: GraphId } -> Empty;
            /// `cuGraphDestroy`: the graph, its nodes and the graphs its child and conditional nodes own.
            GraphDestroy = 171, async { graph: GraphId } -> Empty;
            /// Adds node `node` of `kind` to `graph`: the tail holds `dep_count` `GraphNodeId`s it depends on,
            /// then the node (`GraphNodeSpec`).
            GraphAddNode = 172, async, bytes(MAX_GRAPH_NODE) { graph: GraphId, node: GraphNodeId, kind: u32, dep_count: u32 }
                -> Empty;
            /// `cuGraphConditionalHandleCreate` in the current context.
            GraphConditionalHandleCreate = 173, sync { graph: GraphId, default_value: u32, flags: u32 } -> GraphHandleReply;
            /// `cuGraphInstantiateWithFlags`: the driver's answer is the call's.
            GraphInstantiate = 174, sync { graph: GraphId, exec: GraphExecId, flags: u64 } -> Empty;
            /// `cuGraphLaunch`.
            GraphLaunch = 175, async { exec: GraphExecId, stream: StreamId } -> Empty;
            /// `cuGraphUpload`.
            GraphUpload = 176, async { exec: GraphExecId, stream: StreamId } -> Empty;
            /// `cuGraphExecDestroy`.
            GraphExecDestroy = 177, async { exec: GraphExecId } -> Empty;
            /// `cuGraphNodeSetParams` and the per-kind setters: the tail is the node (`GraphNodeSpec`).
            GraphNodeSetParams = 178, async, bytes(MAX_GRAPH_NODE) { node: GraphNodeId, kind: u32, _pad: u32 } -> Empty;
            /// `cuGraphExecNodeSetParams` and the per-kind setters, for the node of `exec` made from `node`.
            GraphExecNodeSetParams = 179, async, bytes(MAX_GRAPH_NODE) {
                exec: GraphExecId, node: GraphNodeId, kind: u32, _pad: u32
            } -> Empty;
            /// `cuGraphExecUpdate`: `exec` takes the parameters of `graph`, of the same shape.
            GraphExecUpdate = 180, sync { exec: GraphExecId, graph: GraphId } -> GraphExecUpdateReply;
            /// `cuGraphDestroyNode`.
            GraphDestroyNode = 181, async { node: GraphNodeId } -> Empty;
            /// `cuGraphAddDependencies` (`remove` 0) or `cuGraphRemoveDependencies` (1): the tail holds `count`
            /// (from, to) pairs of `GraphNodeId`s.
            GraphEdges = 182, async, bytes(MAX_GRAPH_EDGE_BYTES) { graph: GraphId, count: u32, remove: u32 } -> Empty;
            /// `cuGraphExecChildGraphNodeSetParams`: the child node `node` of `exec` takes `child`'s parameters.
            GraphExecChildSetParams = 183, async { exec: GraphExecId, node: GraphNodeId, child: GraphId } -> Empty;
            /// `cuGraphClone` (also the copy a child graph node makes of its graph): `clone` becomes a copy of
            /// `source`; the tail pairs each of `count` nodes of `source` with the id its copy gets.
            GraphClone = 184, async, bytes(MAX_GRAPH_CLONE_BYTES) { source: GraphId, clone: GraphId, count: u32, _pad: u32 }
                -> Empty;
            // Peer access between GPUs of one server: the driver's own peer path. Only sent to a server that
            // announced `CAP_PEER_ACCESS`; devices are the session's ordinals.
            /// `cuDeviceCanAccessPeer`: whether contexts on `dev` can reach memory of `peer` (0 or 1).
            DeviceCanAccessPeer = 185, sync { dev: u32, peer: u32 } -> PeerValueReply;
            /// `cuDeviceGetP2PAttribute` (`attr`: a `CUdevice_P2PAttribute`) from `src` to `dst`.
            DeviceP2PAttribute = 186, sync { attr: u32, src: u32, dst: u32, _pad: u32 } -> PeerValueReply;
            /// `cuCtxEnablePeerAccess`: the current context may reach the memory of context `peer`.
            CtxEnablePeerAccess = 187, sync { peer: ContextId, flags: u32, _pad: u32 } -> Empty
                => ctx_enable_peer_access(peer: Context, flags: u32) = cuCtxEnablePeerAccess;
            /// `cuCtxDisablePeerAccess`.
            CtxDisablePeerAccess = 188, sync { peer: ContextId } -> Empty
                => ctx_disable_peer_access(peer: Context) = cuCtxDisablePeerAccess;
            // Inter-process sharing between sessions of one tenant on one server. Only sent to a server that
            // announced `CAP_IPC`. Handles are `IpcHandle`s the server's IPC registry issued, never the driver's.
            /// `cuIpcGetMemHandle` of the `cuMemAlloc` allocation holding `dptr` (one handle per allocation).
            IpcGetMemHandle = 150, sync { dptr: DevicePtr } -> IpcHandleReply;
            /// `cuIpcOpenMemHandle`: maps the memory another session of the tenant exported.
            IpcOpenMemHandle = 151, sync { handle: IpcHandle, flags: u32, _pad: u32 } -> IpcOpenReply;
            /// `cuIpcCloseMemHandle`: one reference fewer to memory this session opened.
            IpcCloseMemHandle = 152, sync { dptr: DevicePtr } -> Empty
                => ipc_close_mem_handle(dptr: DevicePtr) = cuIpcCloseMemHandle;
            /// `cuIpcGetEventHandle` of an event created with `CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING`.
            IpcGetEventHandle = 153, sync { event: EventId } -> IpcHandleReply;
            /// `cuIpcOpenEventHandle`: binds client id `event` to the event another session exported.
            IpcOpenEventHandle = 154, sync { event: EventId, handle: IpcHandle } -> Empty;
            /// `cuMemExportToShareableHandle` of physical memory `handle` (`handle_type`: a
            /// `CUmemAllocationHandleType`; only POSIX file descriptors are shared).
            MemExportShareable = 155, sync { handle: AllocHandleId, flags: u64, handle_type: u32, _pad: u32 }
                -> IpcHandleReply;
            /// `cuMemImportFromShareableHandle`: binds client id `handle` to the physical memory another session
            /// exported (the handle read from the file descriptor the app passed).
            MemImportShareable = 156, sync { handle: AllocHandleId, token: IpcHandle } -> MemImportReply;
        }
    };
}
