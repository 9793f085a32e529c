//! The `Backend` trait: the driver operations a session executes, over the backend's own typed handles.
//! Two implementations: `real` (NVIDIA's driver, loaded at run time) and `emulated` (no GPU needed).
//!
//! Operations the call table marks as forwarded unchanged (`=> op(args) = cuEntryPoint` rows in
//! `vgpu_dataplane::wire::calls`) are declared by the generated `DriverOps` trait below; the real backend's
//! implementation of them is generated too (`real::forwarded`), the emulated one is written by hand.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED;
use vgpu_dataplane::handshake::DeviceFacts;
use vgpu_dataplane::ids::DevicePtr;
use vgpu_dataplane::wire::{
    ArrayBox, ArrayShape, FunctionInfo, LaunchShape, MemAccessDesc, MemAllocProp, MemOp, NvmlFieldRequest,
    NvmlFieldValue, FUNC_ATTR_COUNT, IPC_HANDLE_LEN,
};

pub use crate::graph_ops::{ExecUpdateInfo, GraphOps, NodeParams};
pub use crate::handles::*;
pub use crate::host_counter::HostCounter;
/// A failed driver call: the non-zero CUresult.
pub use vgpu_dataplane::cuerr::CuResult;

/// A kernel found in a loaded module or library, with the real handle the backend launches through.
#[derive(Debug, Clone)]
pub struct LoadedFunction {
    pub info: FunctionInfo,
    pub handle: Callable,
}

/// Declares the driver operations the call table forwards unchanged.
macro_rules! declare_driver_ops {
    ($(
        $(#[$doc:meta])*
        $name:ident = $op:literal, $mode:ident $(, $tail:ident $(($max:expr))?)? { $($field:ident : $ty:ty),* $(,)? }
            -> $reply:ty $(=> $backend:ident ( $($barg:ident : $bty:ty),* ) = $driver:ident)?;
    )*) => {
        /// Driver operations forwarded unchanged, one per call-table row with a backend clause (named there with
        /// the driver entry point the real backend calls).
        pub trait DriverOps {
            $( $(
                #[doc = concat!("`", stringify!($driver), "`.")]
                fn $backend(&self, $($barg: $bty),*) -> CuResult<()>;
            )? )*
        }
    };
}

vgpu_dataplane::call_table!(declare_driver_ops);

/// Host memory the GPU can copy to and from directly (pinned, for the real backend).
pub struct HostBuffer {
    pub ptr: *mut u8,
    pub len: usize,
    /// The context current when it was made (0: none, or not the driver's memory): the driver frees the buffer
    /// with that context (its reset or destruction), so its holder must then forget it.
    pub ctx: u64,
    /// The session's epoch of ended contexts just before it was made (0 from the backend; the session stamps it):
    /// only an end after that can have taken it.
    pub epoch: u64,
}

// SAFETY: a HostBuffer is plain memory owned by one channel thread at a time; moving it between threads is safe.
unsafe impl Send for HostBuffer {}

impl HostBuffer {
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the buffer's lifetime (allocated by the backend's host_alloc).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    /// Writes `data` at `offset` (bounds-checked). A buffer is the device's to write as well (async copies
    /// land in it), so writes go through the pointer like the copy engine's do, not through a `&mut`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> bool {
        if offset.checked_add(data.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        // SAFETY: the range was checked to lie inside the buffer, which only its channel thread touches.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len()) };
        true
    }
}

/// One side of a 2D copy: a staging buffer the session owns, or device memory, with its row pitch.
#[derive(Clone, Copy)]
pub enum Place<'a> {
    Host(&'a HostBuffer, u64),
    Device(DevicePtr, u64),
}

/// A loaded image: the driver's module or library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    Module(Module),
    Library(Library),
}

/// The driver operations a session needs. Handles are the backend's own (`crate::handles`).
/// Context state is per OS thread, as in the driver: each client thread is served by its own server thread.
pub trait Backend: DriverOps + GraphOps + Send + Sync + 'static {
    /// `handshake::BACKEND_REAL` or `BACKEND_EMULATED`.
    fn kind(&self) -> u32;
    fn describe(&self) -> String;
    fn driver_version(&self) -> i32;
    fn devices(&self) -> &[DeviceFacts];
    /// Live values of device `dev` (the server's ordinal) for the NVML shim; `pid` is the process whose share
    /// of the device's memory is asked for (this worker). `None`: nothing can be read.
    fn device_reading(&self, _dev: i32, _pid: u32) -> Option<crate::nvml::DeviceReading> {
        None
    }
    /// The PCIe link of device `dev` (the server's ordinal) for the NVML shim; `None`: nothing can be read.
    fn device_pcie(&self, _dev: i32) -> Option<crate::nvml::PcieLink> {
        None
    }
    /// `nvmlDeviceGetP2PStatus` between devices `a` and `b` (the server's ordinals) for capability `index`: the
    /// `nvmlGpuP2PStatus_t`, or the `nvmlReturn_t` of the call.
    fn device_p2p_status(&self, _a: i32, _b: i32, _index: u32) -> Result<u32, u32> {
        // NVML_ERROR_NOT_SUPPORTED.
        Err(3)
    }
    /// NVML field values of device `dev`: each field's answer, or the `nvmlReturn_t` of the whole call.
    fn device_field_values(&self, _dev: i32, _fields: &[NvmlFieldRequest]) -> Result<Vec<NvmlFieldValue>, u32> {
        // NVML_ERROR_NOT_SUPPORTED.
        Err(3)
    }
    /// The display driver's version as NVML reports it (`nvmlSystemGetDriverVersion`).
    fn display_driver_version(&self) -> String {
        "unknown".into()
    }

    /// The calling thread's current context (`Context(0)`: none), for the scheduler's bookkeeping.
    fn current_context(&self) -> Context {
        Context(0)
    }
    /// Whether device `dev`'s primary context is alive (`cuDevicePrimaryCtxGetState`); `None`: not known. The driver
    /// destroys it when its last reference is released, which the worker's own references can hold off.
    fn primary_ctx_active(&self, _dev: i32) -> Option<bool> {
        None
    }
    /// The server ordinal of the device of the calling thread's current context (`None`: no context).
    fn context_device(&self) -> Option<i32> {
        None
    }
    /// Lets the emulated backend queue its simulated kernels on a device timeline shared by every worker of the
    /// server (in the scheduler's shared table); the real backend has a real device.
    fn share_device_timeline(&self, _busy_until: &'static std::sync::atomic::AtomicU64) {}

    fn primary_ctx_retain(&self, dev: i32) -> CuResult<Context>;
    fn ctx_create(&self, flags: u32, dev: i32) -> CuResult<Context>;

    fn mem_alloc(&self, size: u64) -> CuResult<DevicePtr>;
    /// (base, pitch).
    fn mem_alloc_pitch(&self, width: u64, height: u64, elem_size: u32) -> CuResult<(DevicePtr, u64)>;
    /// (free, total).
    fn mem_get_info(&self) -> CuResult<(u64, u64)>;
    fn host_alloc(&self, len: usize) -> CuResult<HostBuffer>;
    fn host_free(&self, buf: HostBuffer);
    /// Page-locks memory the session mapped from its client (`cuMemHostRegister`, portable), so copies to and
    /// from it are direct DMA.
    fn host_register(&self, ptr: *mut u8, len: usize) -> CuResult<()>;
    fn host_unregister(&self, ptr: *mut u8) -> CuResult<()>;
    /// Copies the first `len` bytes of a staging buffer, which stays untouched until the stream passes here.
    fn memcpy_htod_async(&self, dst: DevicePtr, src: &HostBuffer, len: usize, stream: Stream) -> CuResult<()>;
    /// Copies into the first `len` bytes of a staging buffer.
    fn memcpy_dtoh_async(&self, dst: &HostBuffer, src: DevicePtr, len: usize, stream: Stream) -> CuResult<()>;
    /// `width` elements of `fill.elem_size` bytes per row, `height` rows `pitch` apart.
    fn memset_async(&self, dst: DevicePtr, fill: Fill, stream: Stream) -> CuResult<()>;

    /// Copies `height` rows of `width` bytes between two places.
    fn memcpy_2d_async(&self, src: Place<'_>, dst: Place<'_>, width: u64, height: u64, stream: Stream) -> CuResult<()>;

    fn stream_create(&self, flags: u32, priority: i32) -> CuResult<Stream>;
    /// Stream memory operations, their addresses checked by the session. `single`: exactly one, through its own
    /// entry point (`cuStreamWriteValue32` and friends); otherwise `cuStreamBatchMemOp` with `flags`.
    fn stream_mem_ops(&self, _stream: Stream, _ops: &[MemOp], _flags: u32, _single: bool) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// Holds the work queued on `stream` after this call until `counter` reaches `value` (in wrapping order),
    /// without blocking the caller: the server gates the app's stream behind work a thread of its own runs (a
    /// collective between servers).
    fn stream_wait_counter(&self, stream: Stream, counter: &Arc<HostCounter>, value: u32) -> CuResult<()>;
    fn event_create(&self, flags: u32) -> CuResult<Event>;
    fn event_elapsed(&self, start: Event, end: Event) -> CuResult<f32>;

    fn module_load(&self, image: &[u8]) -> CuResult<(Module, Vec<LoadedFunction>)>;
    /// `device`: the one whose primary context answers the kernels' parameter queries when this thread has
    /// no context current (cudart loads libraries with `__managed__` variables before it makes one).
    fn library_load(&self, image: &[u8], device: i32) -> CuResult<(Library, Vec<LoadedFunction>)>;
    /// A global variable of a loaded image: (address, size).
    fn image_global(&self, image: Image, name: &CStr) -> CuResult<(DevicePtr, u64)>;
    /// Every `CUfunction_attribute` of a function (or library kernel), `i32::MIN` where the driver refuses one.
    fn func_attributes(&self, function: Callable) -> CuResult<[i32; FUNC_ATTR_COUNT]>;
    /// Looks `name` up in a module or library the normal way, for the driver's own error on a missing name.
    fn lookup(&self, image: Image, name: &CStr) -> CuResult<()>;
    /// `cuFuncSetAttribute` (or `cuKernelSetAttribute` on the current device) of a settable attribute.
    fn func_set_attribute(&self, function: Callable, attrib: i32, value: i32) -> CuResult<()>;
    /// `cuMemPoolCreate` of a pool of pinned memory on device `dev` (`max_size` 0: no limit).
    fn mem_pool_create(&self, _dev: i32, _max_size: u64) -> CuResult<MemPool> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuDeviceGetDefaultMemPool`.
    fn default_mem_pool(&self, _dev: i32) -> CuResult<MemPool> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemAllocFromPoolAsync`.
    fn mem_alloc_async(&self, _size: u64, _pool: MemPool, _stream: Stream) -> CuResult<DevicePtr> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemPoolGetAttribute`, the int attributes (1..=3) widened to u64.
    fn mem_pool_get_attribute(&self, _pool: MemPool, _attr: u32) -> CuResult<u64> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    fn mem_pool_set_attribute(&self, _pool: MemPool, _attr: u32, _value: u64) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuDeviceCanAccessPeer` between two of this server's devices (server ordinals): 0 or 1.
    fn device_can_access_peer(&self, _dev: i32, _peer: i32) -> CuResult<i32> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuDeviceGetP2PAttribute` (`attr`: a `CUdevice_P2PAttribute`) from `src` to `dst` (server ordinals).
    fn device_p2p_attribute(&self, _attr: u32, _src: i32, _dst: i32) -> CuResult<i32> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags`.
    fn occupancy_active_blocks(
        &self,
        function: Callable,
        block_size: i32,
        dynamic_smem: u64,
        flags: u32,
    ) -> CuResult<i32>;
    /// `cuOccupancyMaxPotentialBlockSizeWithFlags`: (min grid size, block size). `smem_by_block[b - 1]` is the
    /// dynamic shared memory a block of b threads needs, when the app gave a callback.
    fn occupancy_potential_block_size(
        &self,
        function: Callable,
        dynamic_smem: u64,
        smem_by_block: Option<&[u64]>,
        block_limit: i32,
        flags: u32,
    ) -> CuResult<(i32, i32)>;
    /// `cuOccupancyAvailableDynamicSMemPerBlock`.
    fn occupancy_available_smem(&self, function: Callable, num_blocks: i32, block_size: i32) -> CuResult<u64>;
    /// `cuOccupancyMaxActiveClusters`, or with `potential_size` `cuOccupancyMaxPotentialClusterSize`.
    fn occupancy_clusters(&self, function: Callable, shape: LaunchShape, potential_size: bool) -> CuResult<i32>;
    /// Maps `size` bytes of page-locked host memory at exactly `addr` in this process and registers them
    /// with the driver as device-mapped; returns their device address. `CUDA_ERROR_ALREADY_MAPPED` when
    /// the range is in use here.
    fn host_mirror_map(&self, addr: u64, size: u64) -> CuResult<DevicePtr>;
    /// Undoes `host_mirror_map`.
    fn host_mirror_unmap(&self, addr: u64, size: u64) -> CuResult<()>;
    /// `cuMemAllocManaged` (`flags`: CU_MEM_ATTACH_GLOBAL or _HOST). A backend without managed memory hands
    /// out ordinary device memory: the client keeps the host's view itself.
    fn mem_alloc_managed(&self, size: u64, _flags: u32) -> CuResult<DevicePtr> {
        self.mem_alloc(size)
    }
    /// `cuLibraryGetManaged`; by default the variable as a global.
    fn library_get_managed(&self, library: Library, name: &CStr) -> CuResult<(DevicePtr, u64)> {
        self.image_global(Image::Library(library), name)
    }
    /// `cuArray3DCreate`.
    fn array_create(&self, _shape: ArrayShape) -> CuResult<Array> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// A copy between a box of an array and packed host rows or device memory, as `ArrayTransfer` says.
    fn array_copy(&self, _array: Array, _region: ArrayBox, _other: ArrayTransfer<'_>) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuTexObjectCreate` (or `cuSurfObjectCreate`) from the descriptors as cuda.h lays them out, the
    /// resource's array already the backend's own handle.
    fn tex_object_create(
        &self,
        _surface: bool,
        _resource: &[u8],
        _texture: &[u8],
        _view: Option<&[u8]>,
    ) -> CuResult<u64> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    fn object_destroy(&self, _object: u64, _surface: bool) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    // Virtual memory management. Allocation handles are the backend's own; device ordinals in locations are
    // the server's (the session translates the client's). A backend without VMM refuses every call.
    /// `cuMemGetAllocationGranularity` (`option` 0 minimum, 1 recommended).
    fn mem_granularity(&self, _prop: &MemAllocProp, _option: u32) -> CuResult<u64> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemAddressReserve`: the base of a new reservation of `size` bytes (`addr`: a hint, 0 for none).
    fn mem_address_reserve(&self, _size: u64, _alignment: u64, _addr: DevicePtr, _flags: u64) -> CuResult<DevicePtr> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemAddressFree` of a whole reservation.
    fn mem_address_free(&self, _ptr: DevicePtr, _size: u64) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemCreate`: the handle of `size` bytes of physical memory, with one reference.
    fn mem_create(&self, _size: u64, _prop: &MemAllocProp, _flags: u64) -> CuResult<AllocHandle> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemRelease`: drops one reference; the memory goes once no reference and no mapping is left.
    fn mem_release(&self, _handle: AllocHandle) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemMap`.
    fn mem_map(&self, _ptr: DevicePtr, _size: u64, _offset: u64, _handle: AllocHandle, _flags: u64) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemUnmap` of whole mappings.
    fn mem_unmap(&self, _ptr: DevicePtr, _size: u64) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemSetAccess`.
    fn mem_set_access(&self, _ptr: DevicePtr, _size: u64, _descs: &[MemAccessDesc]) -> CuResult<()> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemGetAccess` of the mapping at `ptr` for one location.
    fn mem_get_access(&self, _location_type: u32, _location_id: i32, _ptr: DevicePtr) -> CuResult<u64> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemGetAllocationPropertiesFromHandle`.
    fn mem_allocation_properties(&self, _handle: AllocHandle) -> CuResult<MemAllocProp> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemRetainAllocationHandle`: one more reference to the handle mapped at `addr`, and that handle.
    fn mem_retain_allocation_handle(&self, _addr: DevicePtr) -> CuResult<AllocHandle> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// Whether this backend can export its device memory for an RDMA device to reach it directly (GPUDirect RDMA,
    /// `crate::gpudirect`): how, or why not.
    fn device_memory_export(&self) -> Result<String, String> {
        Err("this backend cannot export device memory".into())
    }
    /// Exports the `len` bytes of device memory at `addr` (a whole allocation the session listed in
    /// `pinned::DEVICE`) for registration with an RDMA device.
    fn export_device_memory(&self, _addr: u64, _len: usize) -> CuResult<vgpu_dataplane::pinned::DeviceExport> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// Makes the RDMA device's writes into the current context's memory visible to work queued after this call
    /// (`cuFlushGPUDirectRDMAWrites`), after bytes were received straight into device memory.
    fn flush_direct_writes(&self) -> CuResult<()> {
        Ok(())
    }
    // Inter-process sharing (the session's IPC registry decides who may open what; these are the driver's own
    // operations). A backend without IPC refuses every call.
    /// `cuIpcGetMemHandle`: the driver's handle for the allocation holding `dptr`.
    fn ipc_get_mem_handle(&self, _dptr: DevicePtr) -> CuResult<Shared> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuIpcOpenMemHandle` of memory another process exported.
    fn ipc_open_mem_handle(&self, _shared: SharedRef<'_>, _flags: u32) -> CuResult<DevicePtr> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuIpcGetEventHandle`.
    fn ipc_get_event_handle(&self, _event: Event) -> CuResult<Shared> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuIpcOpenEventHandle` of an event another process exported.
    fn ipc_open_event_handle(&self, _shared: SharedRef<'_>) -> CuResult<Event> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemExportToShareableHandle` (`handle_type`: a `CUmemAllocationHandleType`): the file descriptor in `fd`.
    fn mem_export_shareable(&self, _handle: AllocHandle, _handle_type: u32, _flags: u64) -> CuResult<Shared> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemImportFromShareableHandle` of a POSIX file descriptor another process exported.
    fn mem_import_shareable(&self, _shared: SharedRef<'_>) -> CuResult<AllocHandle> {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuCtxGetLimit` in the calling thread's current context.
    fn ctx_get_limit(&self, limit: u32) -> CuResult<u64>;
    /// The first word of the driver's private export table `uuid` (its size in bytes, for most tables), so the
    /// client can stand in for a table it does not know with one of the same size. Natively, a UUID the driver
    /// lacks is `CUDA_ERROR_INVALID_VALUE`; so it is for a backend without private tables.
    fn export_table_first_word(&self, _uuid: &[u8; 16]) -> CuResult<u64> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_INVALID_VALUE)
    }
    /// The function of `kernel` in the current context.
    fn kernel_get_function(&self, kernel: Kernel) -> CuResult<Function>;
    /// Launches `function` with arguments packed at the offsets of `params` (cooperative and cluster launches
    /// included: a backend that has none refuses them).
    fn launch(
        &self,
        function: Callable,
        stream: Stream,
        shape: &LaunchShape,
        args: &mut [u8],
        params: &[(u32, u32)],
    ) -> CuResult<()>;
}

/// What a backend gives out when memory or an event is shared with another process: the driver's own handle
/// (`CUipcMemHandle`, `CUipcEventHandle`; zeros where the driver's answer is a descriptor), and a file descriptor
/// where there is one (a shareable handle; the emulated backend's shared memory file). The session hands both to
/// the server's IPC registry and never to the client.
pub struct Shared {
    pub driver: [u8; IPC_HANDLE_LEN],
    pub fd: Option<OwnedFd>,
}

/// The same, as the opening process receives it from the registry, with the exported memory's size.
#[derive(Clone, Copy)]
pub struct SharedRef<'a> {
    pub driver: &'a [u8; IPC_HANDLE_LEN],
    pub fd: Option<&'a OwnedFd>,
    pub size: u64,
}

/// A memset's pattern and extent: `width` elements of `elem_size` (1, 2 or 4) bytes holding `value`, per row;
/// `height` rows `pitch` bytes apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub value: u32,
    pub elem_size: u32,
    pub width: u64,
    pub height: u64,
    pub pitch: u64,
}

/// The other side of an array copy.
pub enum ArrayTransfer<'a> {
    /// Packed rows from the host, into the array.
    FromHost(&'a [u8]),
    /// Packed rows out of the array, into this buffer (of exactly the box's size).
    ToHost(&'a mut [u8]),
    /// Device memory (`pitch` bytes per row, `rows_per_slice` rows per slice), into the array.
    FromDevice {
        ptr: DevicePtr,
        pitch: u64,
        rows_per_slice: u64,
    },
    /// Device memory, out of the array.
    ToDevice {
        ptr: DevicePtr,
        pitch: u64,
        rows_per_slice: u64,
    },
}
