//! The `Backend` trait: the driver operations a session executes, over raw handles.
//! Two implementations: `real` (NVIDIA's driver, loaded at run time) and `emulated` (no GPU needed).

use vgpu_dataplane::handshake::DeviceFacts;
use vgpu_dataplane::wire::{FunctionInfo, MemAccessDesc, MemAllocProp};

/// A failed driver call: the non-zero CUresult.
pub use vgpu_dataplane::cuerr::CuResult;

/// A kernel found in a loaded module or library, with the real handle the backend launches through.
#[derive(Debug, Clone)]
pub struct LoadedFunction {
    pub info: FunctionInfo,
    pub handle: u64,
}

/// Host memory the GPU can copy to and from directly (pinned, for the real backend).
pub struct HostBuffer {
    pub ptr: *mut u8,
    pub len: usize,
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
    Device(u64, u64),
}

/// Stream handles 0, 1 and 2 keep the driver's meaning (NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD).
pub const STREAM_PER_THREAD: u64 = 2;

/// The driver operations a session needs. Handles are the backend's own (real `CUstream` etc. as integers).
/// Context state is per OS thread, as in the driver: each client thread is served by its own server thread.
pub trait Backend: Send + Sync + 'static {
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
    /// The display driver's version as NVML reports it (`nvmlSystemGetDriverVersion`).
    fn display_driver_version(&self) -> String {
        "unknown".into()
    }

    /// The calling thread's current context (0: none), for the scheduler's bookkeeping.
    fn current_context(&self) -> u64 {
        0
    }
    /// The server ordinal of the device of the calling thread's current context (`None`: no context).
    fn context_device(&self) -> Option<i32> {
        None
    }
    /// Lets the emulated backend queue its simulated kernels on a device timeline shared by every worker of the
    /// server (in the scheduler's shared table); the real backend has a real device.
    fn share_device_timeline(&self, _busy_until: &'static std::sync::atomic::AtomicU64) {}

    fn primary_ctx_retain(&self, dev: i32) -> CuResult<u64>;
    fn primary_ctx_release(&self, dev: i32) -> CuResult<()>;
    fn primary_ctx_reset(&self, dev: i32) -> CuResult<()>;
    fn ctx_create(&self, flags: u32, dev: i32) -> CuResult<u64>;
    fn ctx_destroy(&self, ctx: u64) -> CuResult<()>;
    fn ctx_set_current(&self, ctx: u64) -> CuResult<()>;
    fn ctx_synchronize(&self) -> CuResult<()>;

    fn mem_alloc(&self, size: u64) -> CuResult<u64>;
    fn mem_alloc_pitch(&self, width: u64, height: u64, elem_size: u32) -> CuResult<(u64, u64)>;
    fn mem_free(&self, dptr: u64) -> CuResult<()>;
    fn mem_get_info(&self) -> CuResult<(u64, u64)>;
    fn host_alloc(&self, len: usize) -> CuResult<HostBuffer>;
    fn host_free(&self, buf: HostBuffer);
    /// Page-locks memory the session mapped from its client (`cuMemHostRegister`, portable), so copies to and
    /// from it are direct DMA.
    fn host_register(&self, ptr: *mut u8, len: usize) -> CuResult<()>;
    fn host_unregister(&self, ptr: *mut u8) -> CuResult<()>;
    /// Copies the first `len` bytes of a staging buffer, which stays untouched until the stream passes here.
    fn memcpy_htod_async(&self, dst: u64, src: &HostBuffer, len: usize, stream: u64) -> CuResult<()>;
    /// Copies into the first `len` bytes of a staging buffer.
    fn memcpy_dtoh_async(&self, dst: &HostBuffer, src: u64, len: usize, stream: u64) -> CuResult<()>;
    fn memcpy_dtod_async(&self, dst: u64, src: u64, len: u64, stream: u64) -> CuResult<()>;
    #[allow(clippy::too_many_arguments)]
    fn memset_async(
        &self,
        dst: u64,
        pitch: u64,
        value: u32,
        elem_size: u32,
        width: u64,
        height: u64,
        stream: u64,
    ) -> CuResult<()>;

    /// Copies `height` rows of `width` bytes between two places.
    fn memcpy_2d_async(&self, src: Place<'_>, dst: Place<'_>, width: u64, height: u64, stream: u64) -> CuResult<()>;

    fn stream_create(&self, flags: u32, priority: i32) -> CuResult<u64>;
    fn stream_destroy(&self, stream: u64) -> CuResult<()>;
    fn stream_synchronize(&self, stream: u64) -> CuResult<()>;
    fn stream_query(&self, stream: u64) -> CuResult<()>;
    fn stream_wait_event(&self, stream: u64, event: u64, flags: u32) -> CuResult<()>;
    /// Stream memory operations, their addresses checked by the session. `single`: exactly one, through its own
    /// entry point (`cuStreamWriteValue32` and friends); otherwise `cuStreamBatchMemOp` with `flags`.
    fn stream_mem_ops(
        &self,
        _stream: u64,
        _ops: &[vgpu_dataplane::wire::MemOp],
        _flags: u32,
        _single: bool,
    ) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    fn event_create(&self, flags: u32) -> CuResult<u64>;
    fn event_record(&self, event: u64, stream: u64) -> CuResult<()>;
    fn event_synchronize(&self, event: u64) -> CuResult<()>;
    fn event_query(&self, event: u64) -> CuResult<()>;
    fn event_elapsed(&self, start: u64, end: u64) -> CuResult<f32>;
    fn event_destroy(&self, event: u64) -> CuResult<()>;

    fn module_load(&self, image: &[u8]) -> CuResult<(u64, Vec<LoadedFunction>)>;
    fn module_unload(&self, module: u64) -> CuResult<()>;
    fn module_get_global(&self, module: u64, name: &std::ffi::CStr) -> CuResult<(u64, u64)>;
    /// `device`: the one whose primary context answers the kernels' parameter queries when this thread has
    /// no context current (cudart loads libraries with `__managed__` variables before it makes one).
    fn library_load(&self, image: &[u8], device: i32) -> CuResult<(u64, Vec<LoadedFunction>)>;
    fn library_unload(&self, library: u64) -> CuResult<()>;
    fn library_get_global(&self, library: u64, name: &std::ffi::CStr) -> CuResult<(u64, u64)>;
    /// Every `CUfunction_attribute` of a function (or library kernel), `i32::MIN` where the driver refuses one.
    fn func_attributes(&self, function: u64, is_kernel: bool)
        -> CuResult<[i32; vgpu_dataplane::wire::FUNC_ATTR_COUNT]>;
    /// Looks `name` up in a module or library the normal way, for the driver's own error on a missing name.
    fn lookup(&self, module: u64, is_library: bool, name: &std::ffi::CStr) -> CuResult<()>;
    /// `cuFuncSetAttribute` (or `cuKernelSetAttribute` on the current device) of a settable attribute.
    fn func_set_attribute(&self, function: u64, is_kernel: bool, attrib: i32, value: i32) -> CuResult<()>;
    /// `cuMemPoolCreate` of a pool of pinned memory on device `dev` (`max_size` 0: no limit).
    fn mem_pool_create(&self, _dev: i32, _max_size: u64) -> CuResult<u64> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    fn mem_pool_destroy(&self, _pool: u64) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuDeviceGetDefaultMemPool`.
    fn default_mem_pool(&self, _dev: i32) -> CuResult<u64> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemAllocFromPoolAsync`.
    fn mem_alloc_async(&self, _size: u64, _pool: u64, _stream: u64) -> CuResult<u64> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemFreeAsync`.
    fn mem_free_async(&self, _dptr: u64, _stream: u64) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemPoolGetAttribute`, the int attributes (1..=3) widened to u64.
    fn mem_pool_get_attribute(&self, _pool: u64, _attr: u32) -> CuResult<u64> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    fn mem_pool_set_attribute(&self, _pool: u64, _attr: u32, _value: u64) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    fn mem_pool_trim_to(&self, _pool: u64, _min_bytes: u64) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags`.
    fn occupancy_active_blocks(
        &self,
        function: u64,
        is_kernel: bool,
        block_size: i32,
        dynamic_smem: u64,
        flags: u32,
    ) -> CuResult<i32>;
    /// `cuOccupancyMaxPotentialBlockSizeWithFlags`: (min grid size, block size). `smem_by_block[b - 1]` is the
    /// dynamic shared memory a block of b threads needs, when the app gave a callback.
    fn occupancy_potential_block_size(
        &self,
        function: u64,
        is_kernel: bool,
        dynamic_smem: u64,
        smem_by_block: Option<&[u64]>,
        block_limit: i32,
        flags: u32,
    ) -> CuResult<(i32, i32)>;
    /// `cuOccupancyAvailableDynamicSMemPerBlock`.
    fn occupancy_available_smem(
        &self,
        function: u64,
        is_kernel: bool,
        num_blocks: i32,
        block_size: i32,
    ) -> CuResult<u64>;
    /// `cuOccupancyMaxActiveClusters`, or with `potential_size` `cuOccupancyMaxPotentialClusterSize`.
    fn occupancy_clusters(
        &self,
        function: u64,
        is_kernel: bool,
        shape: vgpu_dataplane::wire::LaunchShape,
        potential_size: bool,
    ) -> CuResult<i32>;
    /// Maps `size` bytes of page-locked host memory at exactly `addr` in this process and registers them
    /// with the driver as device-mapped; returns their device address. `CUDA_ERROR_ALREADY_MAPPED` when
    /// the range is in use here.
    fn host_mirror_map(&self, addr: u64, size: u64) -> CuResult<u64>;
    /// Undoes `host_mirror_map`.
    fn host_mirror_unmap(&self, addr: u64, size: u64) -> CuResult<()>;
    /// `cuMemAllocManaged` (`flags`: CU_MEM_ATTACH_GLOBAL or _HOST). A backend without managed memory hands
    /// out ordinary device memory: the client keeps the host's view itself.
    fn mem_alloc_managed(&self, size: u64, _flags: u32) -> CuResult<u64> {
        self.mem_alloc(size)
    }
    /// `cuLibraryGetManaged`; by default the variable as a global.
    fn library_get_managed(&self, library: u64, name: &std::ffi::CStr) -> CuResult<(u64, u64)> {
        self.library_get_global(library, name)
    }
    /// `cuArray3DCreate`.
    fn array_create(&self, _shape: vgpu_dataplane::wire::ArrayShape) -> CuResult<u64> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    fn array_destroy(&self, _array: u64) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// A copy between a box of an array and packed host rows (`host`, directions 0 and 1) or device memory
    /// (directions 2 and 3), as `wire::ArrayCopy` describes.
    #[allow(clippy::too_many_arguments)]
    fn array_copy(
        &self,
        _array: u64,
        _region: vgpu_dataplane::wire::ArrayBox,
        _direction: u32,
        _device: u64,
        _device_pitch: u64,
        _device_height: u64,
        _host: &mut [u8],
    ) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
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
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    fn object_destroy(&self, _object: u64, _surface: bool) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    // Virtual memory management. Allocation handles are the backend's own; device ordinals in locations are
    // the server's (the session translates the client's). A backend without VMM refuses every call.
    /// `cuMemGetAllocationGranularity` (`option` 0 minimum, 1 recommended).
    fn mem_granularity(&self, _prop: &MemAllocProp, _option: u32) -> CuResult<u64> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemAddressReserve`: the base of a new reservation of `size` bytes (`addr`: a hint, 0 for none).
    fn mem_address_reserve(&self, _size: u64, _alignment: u64, _addr: u64, _flags: u64) -> CuResult<u64> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemAddressFree` of a whole reservation.
    fn mem_address_free(&self, _ptr: u64, _size: u64) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemCreate`: the handle of `size` bytes of physical memory, with one reference.
    fn mem_create(&self, _size: u64, _prop: &MemAllocProp, _flags: u64) -> CuResult<u64> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemRelease`: drops one reference; the memory goes once no reference and no mapping is left.
    fn mem_release(&self, _handle: u64) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemMap`.
    fn mem_map(&self, _ptr: u64, _size: u64, _offset: u64, _handle: u64, _flags: u64) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemUnmap` of whole mappings.
    fn mem_unmap(&self, _ptr: u64, _size: u64) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemSetAccess`.
    fn mem_set_access(&self, _ptr: u64, _size: u64, _descs: &[MemAccessDesc]) -> CuResult<()> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemGetAccess` of the mapping at `ptr` for one location.
    fn mem_get_access(&self, _location_type: u32, _location_id: i32, _ptr: u64) -> CuResult<u64> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemGetAllocationPropertiesFromHandle`.
    fn mem_allocation_properties(&self, _handle: u64) -> CuResult<MemAllocProp> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuMemRetainAllocationHandle`: one more reference to the handle mapped at `addr`, and that handle.
    fn mem_retain_allocation_handle(&self, _addr: u64) -> CuResult<u64> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED)
    }
    /// `cuCtxGetLimit` in the calling thread's current context.
    fn ctx_get_limit(&self, limit: u32) -> CuResult<u64>;
    /// `cuCtxSetLimit` in the calling thread's current context.
    fn ctx_set_limit(&self, limit: u32, value: u64) -> CuResult<()>;
    /// The first word of the driver's private export table `uuid` (its size in bytes, for most tables), so the
    /// client can stand in for a table it does not know with one of the same size. Natively, a UUID the driver
    /// lacks is `CUDA_ERROR_INVALID_VALUE`; so it is for a backend without private tables.
    fn export_table_first_word(&self, _uuid: &[u8; 16]) -> CuResult<u64> {
        Err(vgpu_dataplane::cuerr::CUDA_ERROR_INVALID_VALUE)
    }
    /// The function of `kernel` in the current context.
    fn kernel_get_function(&self, kernel: u64) -> CuResult<u64>;
    /// A launch with launch attributes: cooperative (grid-wide synchronisation) and/or a thread-block
    /// cluster shape. A backend that has no such launches refuses them.
    #[allow(clippy::too_many_arguments)]
    fn launch_ex(
        &self,
        function: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem: u32,
        stream: u64,
        args: &mut [u8],
        params: &[(u32, u32)],
        cooperative: bool,
        cluster: [u32; 3],
    ) -> CuResult<()> {
        if cooperative || cluster.iter().any(|&c| c > 1) {
            return Err(vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED);
        }
        self.launch(function, grid, block, shared_mem, stream, args, params)
    }
    /// Launches `function` with arguments packed at the offsets of `params`.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        function: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem: u32,
        stream: u64,
        args: &mut [u8],
        params: &[(u32, u32)],
    ) -> CuResult<()>;
}
