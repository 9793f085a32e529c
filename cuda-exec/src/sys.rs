//! The few raw system calls the server needs, kept in one place.
//! Each `unsafe` block here wraps one libc call on a descriptor the caller owns.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Makes the child `cmd` starts inherit `fds`, and no other child: their close-on-exec flag is cleared between
/// fork and exec, in the child only. (Clearing it in the parent would let a child another thread starts meanwhile
/// inherit them too.)
pub fn inherit_in_child(cmd: &mut std::process::Command, fds: Vec<RawFd>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec: it only calls fcntl, which is
    // async-signal-safe, on descriptors inherited from the parent, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A client's memory region mapped into this process (shared, read-write), unmapped on drop.
pub struct SharedRegion {
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: the mapping is plain shared memory; who may touch it when is the session's business, not the thread's.
unsafe impl Send for SharedRegion {}
// SAFETY: as above; the struct itself is immutable.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Maps `len` bytes of a memfd the client sent, after checking it cannot shrink under us (a shrink would turn
    /// our accesses into SIGBUS).
    /// `at` non-zero: map exactly there or fail (never over an existing mapping).
    pub fn map(fd: &OwnedFd, len: usize, at: usize) -> std::io::Result<SharedRegion> {
        let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string());
        if len == 0 {
            return Err(bad("empty region"));
        }
        // SAFETY: fcntl(F_GET_SEALS) only reads the descriptor's seals.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(bad("the region is not a memfd sealed against shrinking"));
        }
        // SAFETY: fstat into a zeroed local.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if (st.st_size as u64) < len as u64 {
            return Err(bad("the region is smaller than announced"));
        }
        // SAFETY: a fresh shared mapping of a descriptor we hold; the kernel picks the address.
        let fixed = if at != 0 { libc::MAP_FIXED_NOREPLACE } else { 0 };
        let ptr = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | fixed,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        if at != 0 && ptr as usize != at {
            // Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat the address as a hint.
            // SAFETY: unmaps the mapping just made, which nothing else has seen.
            unsafe { libc::munmap(ptr, len) };
            return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "address taken"));
        }
        Ok(SharedRegion {
            ptr: ptr as *mut u8,
            len,
        })
    }
}

impl SharedRegion {
    /// The mapping's bytes. Another process may map and write them too (memory shared through IPC): they are plain
    /// data, read and written as device memory is, and this process serialises its own accesses.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the mapping's lifetime (made by `map`).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// As `as_slice`, writable; `&mut self` gives this process's exclusive access.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The address of `size` bytes at `offset`, if they lie inside the mapping.
    pub fn at(&self, offset: u64, size: u64) -> Option<*mut u8> {
        let end = offset.checked_add(size)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: offset is within the mapping (checked above), so the pointer stays inside the allocation.
        Some(unsafe { self.ptr.add(offset as usize) })
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` created; nothing uses it after the drop.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// A new shared-memory file of `len` zero bytes, sealed against shrinking and growing (so that a mapping of it can
/// never fault): the emulated backend's device memory once it is shared with another process through IPC.
pub fn shared_memory(len: usize) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a static NUL-terminated name; the result is checked before use.
    let raw = unsafe { libc::memfd_create(c"vgpu-ipc".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let size = libc::off_t::try_from(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: ftruncate and fcntl on the descriptor owned above.
    let sealed = unsafe {
        libc::ftruncate(fd.as_raw_fd(), size) == 0
            && libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            ) == 0
    };
    if !sealed {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Raises this process's soft limit on open descriptors to its hard limit (the listener keeps descriptors of
/// memory shared through IPC).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Points this process's standard output (fd 1) at a pipe and returns its non-blocking read end: the driver
/// prints device-side `printf` output to stdout, which the session forwards to its client.
pub fn capture_stdout() -> std::io::Result<RawFd> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: dup2 onto fd 1 and closing the now-duplicated write end; fcntl on the read end we own.
    unsafe {
        if libc::dup2(fds[1], 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::close(fds[1]);
        let flags = libc::fcntl(fds[0], libc::F_GETFL);
        libc::fcntl(fds[0], libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok(fds[0])
}

/// Flushes the C library's output buffers (the driver's `printf` output sits in stdout's buffer until then).
pub fn flush_stdio() {
    // SAFETY: fflush(NULL) flushes every open output stream.
    unsafe { libc::fflush(std::ptr::null_mut()) };
}

/// Appends whatever the non-blocking descriptor has to `out`, without waiting.
pub fn read_available(fd: RawFd, out: &mut Vec<u8>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        // SAFETY: read into a local buffer of its size.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n <= 0 {
            return;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

/// Waits up to `ms` milliseconds for `fd` to become readable.
pub fn wait_readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// Shuts a socket down in both directions: a thread blocked reading or writing it wakes with end-of-stream or an
/// error. The descriptor stays open (its owner closes it).
pub fn shutdown_socket(fd: RawFd) {
    // SAFETY: shutdown on a descriptor the caller keeps open for the duration of the call.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// The uid of the process at the other end of a Unix socket (SO_PEERCRED).
pub fn peer_uid(fd: RawFd) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred of exactly that size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

/// Wakes every sleeper on a futex word in shared memory (another process may be waiting on it).
pub fn futex_wake_all(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE does not access memory beyond its address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<u32>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Sleeps while `word == expected`, at most `timeout` (a shared futex: wakers live in other processes).
pub fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32, timeout: std::time::Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // SAFETY: `word` is a live, aligned 32-bit atomic and `ts` outlives the call; FUTEX_WAIT only reads both.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host (unlike `Instant`, it can be shared).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A new sealed memfd of `len` zeroed bytes (it cannot shrink or grow), inherited by child processes only where
/// the caller clears close-on-exec.
pub fn sealed_memfd(name: &std::ffi::CStr, len: usize) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: `name` is NUL-terminated; memfd_create has no other memory effects.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just made and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate and fcntl on the descriptor we own, integer arguments only.
    unsafe {
        if libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(fd)
}

impl SharedRegion {
    /// The scheduler's table laid over this mapping, if it is large enough and carries the table's magic number.
    pub fn sched_region(&self) -> Option<&crate::sched::table::Region> {
        use crate::sched::table::{Region, MAGIC};
        if self.len < std::mem::size_of::<Region>()
            || !(self.ptr as usize).is_multiple_of(std::mem::align_of::<Region>())
        {
            return None;
        }
        // SAFETY: the mapping is large enough and aligned (checked above) and lives as long as `self`; `Region` is
        // `repr(C)` of atomics only, for which every bit pattern (zeroes included) is valid, and shared access goes
        // through atomic operations alone.
        let region = unsafe { &*(self.ptr as *const Region) };
        (region.magic.load(std::sync::atomic::Ordering::Acquire) == MAGIC).then_some(region)
    }

    /// Writes the scheduler's initial table into a fresh (zeroed) mapping.
    pub fn init_sched_region(&self) -> Option<&crate::sched::table::Region> {
        use crate::sched::table::{Region, MAGIC};
        if self.len < std::mem::size_of::<Region>()
            || !(self.ptr as usize).is_multiple_of(std::mem::align_of::<Region>())
        {
            return None;
        }
        // SAFETY: as in `sched_region`; a fresh memfd reads as zeroes, a valid `Region`.
        let region = unsafe { &*(self.ptr as *const Region) };
        region.magic.store(MAGIC, std::sync::atomic::Ordering::Release);
        Some(region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::process::Command;

    fn cloexec(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads the flags of a descriptor this test owns.
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    fn has_fd(fd: RawFd) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("test -e /proc/self/fd/{fd}")]);
        cmd
    }

    #[test]
    fn the_child_inherits_the_descriptor_and_the_parent_keeps_it_close_on_exec() {
        let (_a, b) = UnixStream::pair().expect("pair");
        let fd = b.as_raw_fd();
        let mut cmd = has_fd(fd);
        inherit_in_child(&mut cmd, vec![fd]);
        assert!(
            cmd.status().expect("sh").success(),
            "the child did not get descriptor {fd}"
        );
        assert!(cloexec(fd), "the parent's descriptor lost close-on-exec");
        assert!(
            !has_fd(fd).status().expect("sh").success(),
            "a plain child inherited it"
        );
    }

    #[test]
    fn a_child_started_meanwhile_by_another_thread_never_inherits_it() {
        let (_a, b) = UnixStream::pair().expect("pair");
        let fd = b.as_raw_fd();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spawner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut cmd = Command::new("true");
                    inherit_in_child(&mut cmd, vec![fd]);
                    let _ = cmd.status();
                }
            })
        };
        let leaks = (0..200).filter(|_| has_fd(fd).status().expect("sh").success()).count();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spawner.join().expect("spawner");
        assert_eq!(
            leaks, 0,
            "{leaks} of 200 children started beside inheriting ones got descriptor {fd}"
        );
    }
}
