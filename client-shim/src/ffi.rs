//! The boundary with C callers: reading and writing through the raw pointers the CUDA API hands us.
//! All of the shim's pointer dereferences happen here, each trusting the CUDA API contract for that argument.

use std::ffi::{c_char, c_int, c_void, CStr};

use vgpu_cuda_sys::driver::{CUhostFn, CUoccupancyB2DSize, CUstream, CUstreamCallback};
use vgpu_dataplane::cuerr::{CUresult, CuResult, CUDA_ERROR_INVALID_VALUE};

/// Writes `value` through an out-parameter; a NULL out-parameter is `CUDA_ERROR_INVALID_VALUE`, as natively.
pub(crate) fn write<T>(ptr: *mut T, value: T) -> CuResult<()> {
    if ptr.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the CUDA API contract makes a non-NULL out-parameter point to writable storage for a T.
    unsafe { ptr.write_unaligned(value) };
    Ok(())
}

/// Borrows `len` bytes of caller memory (a copy source, kernel argument, module image).
pub(crate) fn bytes<'a>(ptr: *const u8, len: usize) -> CuResult<&'a [u8]> {
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
pub(crate) fn bytes_mut<'a>(ptr: *mut u8, len: usize) -> CuResult<&'a mut [u8]> {
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
pub(crate) fn cstr<'a>(ptr: *const c_char) -> CuResult<&'a CStr> {
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
pub(crate) fn read<T: Copy>(ptr: *const T) -> CuResult<T> {
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

/// Maps `len` bytes (a multiple of the page size) of zeroed memory at exactly `addr`, or anywhere when `addr`
/// is 0; `None` when that range is taken (or memory is exhausted).
pub(crate) fn map_pages(addr: usize, len: usize) -> Option<usize> {
    // Inside a device's address window (`va`), which this process holds reserved and unused, the pages replace
    // that reservation (managed memory has the server's address here too).
    let fixed = if crate::va::reserved_here(addr, len) {
        libc::MAP_FIXED
    } else {
        libc::MAP_FIXED_NOREPLACE
    };
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if addr != 0 { fixed } else { 0 };
    // SAFETY: an anonymous mapping; with MAP_FIXED_NOREPLACE it never replaces an existing mapping, so no
    // memory the process uses is affected; MAP_FIXED only replaces part of a window reservation of ours, which
    // holds no memory.
    let ptr = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    if addr != 0 && ptr as usize != addr {
        // An old kernel that ignores MAP_FIXED_NOREPLACE placed it elsewhere: not what was asked.
        unmap_pages(ptr as usize, len);
        return None;
    }
    Some(ptr as usize)
}

/// Unmaps memory from `map_pages`; the caller guarantees it came from there with this length and that the
/// app is done with it (cuMemFreeHost).
pub(crate) fn unmap_pages(addr: usize, len: usize) {
    if crate::va::reserved_here(addr, len) {
        // Inside a window: back to reserved and unused, so nothing else of the process lands there.
        reserve_range(addr, len, true);
        return;
    }
    // SAFETY: per the caller's guarantee, [addr, addr+len) is a mapping of ours that nothing uses any more.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

/// Reserves [addr, addr+len) of this process's address space, inaccessible and without memory behind it, so that
/// no other mapping lands there; `replace`: over pages of ours in that range. Whether it got exactly that range.
pub(crate) fn reserve_range(addr: usize, len: usize, replace: bool) -> bool {
    let fixed = if replace {
        libc::MAP_FIXED
    } else {
        libc::MAP_FIXED_NOREPLACE
    };
    // SAFETY: an anonymous inaccessible mapping; with MAP_FIXED_NOREPLACE it replaces nothing, and MAP_FIXED is
    // only asked for over pages of a window of ours that the app is done with (`unmap_pages`).
    let ptr = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | fixed,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return false;
    }
    if ptr as usize != addr {
        // SAFETY: the mapping just made elsewhere (an old kernel ignoring MAP_FIXED_NOREPLACE), ours alone.
        unsafe { libc::munmap(ptr, len) };
        return false;
    }
    true
}

/// Gives back a reservation from `reserve_range` that was never used.
pub(crate) fn release_range(addr: usize, len: usize) {
    // SAFETY: [addr, addr+len) is a reservation of ours with nothing mapped in it.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

/// The calling thread's `pthread_t` (what the driver mixes into its integrity check as the thread id).
pub(crate) fn pthread_self_id() -> usize {
    // SAFETY: pthread_self has no preconditions and always succeeds.
    unsafe { libc::pthread_self() as usize }
}

/// Runs a host function the app enqueued with `cuLaunchHostFunc` (NULL: nothing to run; callers refuse it first).
pub(crate) fn call_host_fn(f: CUhostFn, user: usize) {
    if let Some(f) = f {
        // SAFETY: the app's CUhostFn, called with the userData it gave, as the driver would.
        unsafe { f(user as *mut c_void) }
    }
}

/// Runs a stream callback the app enqueued with `cuStreamAddCallback`: (hStream, status, userData).
pub(crate) fn call_stream_callback(f: CUstreamCallback, stream: CUstream, status: CUresult, user: *mut c_void) {
    if let Some(f) = f {
        // SAFETY: the app's CUstreamCallback, called with its stream and userData, as the driver would.
        unsafe { f(stream, status, user) }
    }
}

/// Asks the app's `CUoccupancyB2DSize` callback how much dynamic shared memory a block of `block` threads uses
/// (0 without a callback).
pub(crate) fn call_block_to_smem(f: CUoccupancyB2DSize, block: c_int) -> usize {
    match f {
        // SAFETY: the app's callback, called with a block size, as the driver would.
        Some(f) => unsafe { f(block) },
        None => 0,
    }
}

/// The plain value at byte `at` of bytes read from the app: a field of a cuda.h struct or of a union's live
/// member, at its `offset_of!` in the generated declaration. Reading through bytes (with zerocopy's checks) keeps
/// union members, whose live one the caller chose by the union's tag, out of unsafe code.
pub(crate) fn field<T: zerocopy::FromBytes>(bytes: &[u8], at: usize) -> CuResult<T> {
    bytes
        .get(at..)
        .and_then(|b| T::read_from_prefix(b).ok())
        .map(|(v, _)| v)
        .ok_or(CUDA_ERROR_INVALID_VALUE)
}

/// Page-aligned, zeroed host memory of `size` bytes backed by a memfd that the server can map too (pinned
/// allocations of shared-memory sessions). The mapping stays after the descriptor is passed on and dropped.
pub(crate) fn alloc_shared(size: usize) -> CuResult<(*mut u8, std::os::fd::OwnedFd)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let oom = vgpu_dataplane::cuerr::CUDA_ERROR_OUT_OF_MEMORY;
    if size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: memfd_create with a static NUL-terminated name; the result is checked before use.
    let raw = unsafe { libc::memfd_create(c"vgpu-pinned".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(oom);
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ftruncate and fcntl on the descriptor owned above.
    let sized = unsafe {
        libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) == 0
            && libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            ) == 0
    };
    if !sized {
        return Err(oom);
    }
    // SAFETY: a fresh shared mapping of the memfd sized above; the kernel chooses the (page-aligned) address.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(oom);
    }
    Ok((ptr as *mut u8, fd))
}

/// A new sealed file holding `contents` (nothing can change or resize it): what `cuMemExportToShareableHandle`
/// gives the app as its POSIX file descriptor, for another process to receive and import.
pub(crate) fn sealed_file(contents: &[u8]) -> CuResult<std::os::fd::OwnedFd> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let oom = vgpu_dataplane::cuerr::CUDA_ERROR_OUT_OF_MEMORY;
    // SAFETY: memfd_create with a static NUL-terminated name; the result is checked before use. Not close-on-exec:
    // like the driver's own descriptor, it is the app's to pass on.
    let raw = unsafe { libc::memfd_create(c"vgpu-ipc-handle".as_ptr(), libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(oom);
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = std::fs::File::from(fd);
    file.write_all(contents).map_err(|_| oom)?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on the descriptor owned above.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(oom);
    }
    Ok(OwnedFd::from(file))
}

/// Reads exactly `buf.len()` bytes from the start of the app's descriptor `fd` without moving its offset; anything
/// else (a closed descriptor, a pipe, a shorter file) is `CUDA_ERROR_INVALID_VALUE`.
pub(crate) fn read_file_start(fd: c_int, buf: &mut [u8]) -> CuResult<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: pread into a buffer of the given length; a bad descriptor is an error return, not UB.
        let n = unsafe { libc::pread(fd, rest.as_mut_ptr() as *mut c_void, rest.len(), done as libc::off_t) };
        if n <= 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        done += n as usize;
    }
    Ok(())
}

/// Unmaps memory from `alloc_shared`; the caller guarantees `ptr` came from it with this `size`, once.
pub(crate) fn free_shared(ptr: *mut u8, size: usize) {
    // SAFETY: per the caller's guarantee, this is exactly one mapping made by alloc_shared.
    unsafe { libc::munmap(ptr as *mut libc::c_void, size) };
}

extern "C" {
    /// The C library's `stdout` stream (glibc exports it as a variable).
    static mut stdout: *mut libc::FILE;
}

/// Writes device-side `printf` output into the app's C `stdout` stream, where the native driver prints it, so it
/// keeps its place among the app's own buffered output.
pub(crate) fn write_stdout(text: &[u8]) {
    // SAFETY: glibc's `stdout` is initialised before any user code runs, and fwrite locks the stream itself.
    unsafe {
        libc::fwrite(text.as_ptr() as *const libc::c_void, 1, text.len(), stdout);
    }
}
