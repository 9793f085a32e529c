//! The boundary with C callers: reading and writing through the raw pointers the CUDA API hands us.
//! All of the shim's pointer dereferences happen here, each trusting the CUDA API contract for that argument.

use std::ffi::{c_char, CStr};

use vgpu_dataplane::cuerr::CUDA_ERROR_INVALID_VALUE;

/// Writes `value` through an out-parameter; a NULL out-parameter is `CUDA_ERROR_INVALID_VALUE`, as natively.
pub(crate) fn write<T>(ptr: *mut T, value: T) -> Result<(), u32> {
    if ptr.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the CUDA API contract makes a non-NULL out-parameter point to writable storage for a T.
    unsafe { ptr.write_unaligned(value) };
    Ok(())
}

/// Borrows `len` bytes of caller memory (a copy source, kernel argument, module image).
pub(crate) fn bytes<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], u32> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the CUDA API contract makes the caller's buffer readable for the length it passes.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Borrows `len` bytes of caller memory for writing (a copy destination).
pub(crate) fn bytes_mut<'a>(ptr: *mut u8, len: usize) -> Result<&'a mut [u8], u32> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the CUDA API contract makes the caller's buffer writable for the length it passes.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// A NUL-terminated name from the caller.
pub(crate) fn cstr<'a>(ptr: *const c_char) -> Result<&'a CStr, u32> {
    if ptr.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the CUDA API contract makes name arguments NUL-terminated strings.
    Ok(unsafe { CStr::from_ptr(ptr) })
}

/// Reads the `index`th pointer of a caller's pointer array (`kernelParams`, `extra`).
pub(crate) fn array_item<T>(array: *const *mut T, index: usize) -> *mut T {
    // SAFETY: the caller's array holds at least index+1 entries (the kernel's parameter count, or up to the
    // terminating CU_LAUNCH_PARAM_END for `extra`).
    unsafe { *array.add(index) }
}

/// Reads a value the caller points to (a launch-parameter buffer size).
pub(crate) fn read<T: Copy>(ptr: *const T) -> Result<T, u32> {
    if ptr.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the CUDA API contract makes this pointer valid for a read of T.
    Ok(unsafe { ptr.read_unaligned() })
}

/// Writes bytes the server pushed into a caller buffer recorded by an earlier async copy.
pub(crate) fn fill(ptr: usize, data_len: usize) -> &'static mut [u8] {
    // SAFETY: the app promised (by issuing cuMemcpyDtoHAsync) that the buffer stays valid until a
    // synchronizing call covering the copy returns, which is when pushes arrive.
    unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, data_len) }
}

/// Length of a NUL-terminated image (PTX text), including the NUL.
pub(crate) fn strlen_with_nul(ptr: *const u8) -> usize {
    // SAFETY: PTX images passed to cuModuleLoadData are NUL-terminated strings.
    unsafe { CStr::from_ptr(ptr as *const c_char) }.to_bytes().len() + 1
}

const HOST_ALIGN: usize = 4096;

/// Page-aligned, zeroed host memory of `size` bytes (non-zero) for cuMemAllocHost.
pub(crate) fn alloc_host(size: usize) -> Result<*mut u8, u32> {
    let layout = std::alloc::Layout::from_size_align(size, HOST_ALIGN).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    if size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(vgpu_dataplane::cuerr::CUDA_ERROR_OUT_OF_MEMORY);
    }
    Ok(ptr)
}

/// Frees memory from `alloc_host`; the caller guarantees `ptr` came from it with this `size`, once.
pub(crate) fn free_host(ptr: *mut u8, size: usize) -> Result<(), u32> {
    let layout = std::alloc::Layout::from_size_align(size, HOST_ALIGN).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    // SAFETY: per the caller's guarantee, ptr was allocated by alloc_host with exactly this layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    Ok(())
}
