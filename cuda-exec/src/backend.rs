//! The `Backend` trait: the driver operations a session executes, over raw handles.
//! Two implementations: `real` (NVIDIA's driver, loaded at run time) and `emulated` (no GPU needed).

use vgpu_dataplane::handshake::DeviceFacts;
use vgpu_dataplane::wire::FunctionInfo;

/// A failed driver call: the non-zero CUresult.
pub type CuResult<T> = Result<T, u32>;

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
    fn event_create(&self, flags: u32) -> CuResult<u64>;
    fn event_record(&self, event: u64, stream: u64) -> CuResult<()>;
    fn event_synchronize(&self, event: u64) -> CuResult<()>;
    fn event_query(&self, event: u64) -> CuResult<()>;
    fn event_elapsed(&self, start: u64, end: u64) -> CuResult<f32>;
    fn event_destroy(&self, event: u64) -> CuResult<()>;

    fn module_load(&self, image: &[u8]) -> CuResult<(u64, Vec<LoadedFunction>)>;
    fn module_unload(&self, module: u64) -> CuResult<()>;
    fn module_get_global(&self, module: u64, name: &std::ffi::CStr) -> CuResult<(u64, u64)>;
    fn library_load(&self, image: &[u8]) -> CuResult<(u64, Vec<LoadedFunction>)>;
    fn library_unload(&self, library: u64) -> CuResult<()>;
    fn library_get_global(&self, library: u64, name: &std::ffi::CStr) -> CuResult<(u64, u64)>;
    /// Every `CUfunction_attribute` of a function (or library kernel), `i32::MIN` where the driver refuses one.
    fn func_attributes(&self, function: u64, is_kernel: bool)
        -> CuResult<[i32; vgpu_dataplane::wire::FUNC_ATTR_COUNT]>;
    /// Looks `name` up in a module or library the normal way, for the driver's own error on a missing name.
    fn lookup(&self, module: u64, is_library: bool, name: &std::ffi::CStr) -> CuResult<()>;
    /// The function of `kernel` in the current context.
    fn kernel_get_function(&self, kernel: u64) -> CuResult<u64>;
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
