//! Every `unsafe` operation of this crate: memfd, seals, futex, poll, `sendmsg`/`recvmsg` with `SCM_RIGHTS`, socket
//! options, the raw shared mapping, and (feature `rdma`) memory registration, work requests and CQ events.
//! Keeping them here leaves the transports themselves in safe Rust.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, IoSlice};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

/// Creates an anonymous memory file that can be sealed, closed on exec.
pub(crate) fn memfd_create(name: &CStr) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string; the call has no other memory effects.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create, is open, and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Adds seals to a memfd.
pub(crate) fn add_seals(file: &File, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The seals present on a memfd (an error if it is not one).
pub(crate) fn get_seals(file: &File) -> io::Result<libc::c_int> {
    // SAFETY: fcntl on a descriptor we own, no pointer arguments.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

pub(crate) const SEAL_SHRINK: libc::c_int = libc::F_SEAL_SHRINK;
pub(crate) const SEAL_GROW: libc::c_int = libc::F_SEAL_GROW;
pub(crate) const SEAL_SEAL: libc::c_int = libc::F_SEAL_SEAL;

/// How a futex wait ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Woken, interrupted, or the word no longer held the expected value: re-check the condition.
    Maybe,
    /// Nobody woke us within the timeout.
    TimedOut,
}

/// Sleeps while `word == expected`, at most `timeout`. Shared (non-private) futex: the peer is another process.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> Wake {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // SAFETY: `word` is a live, aligned 32-bit atomic (in a shared mapping kept alive by the caller) and `ts` lives
    // for the duration of the call; FUTEX_WAIT only reads both.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT) {
        Wake::TimedOut
    } else {
        Wake::Maybe
    }
}

/// Wakes up to `n` sleepers on `word`.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE does not access the memory beyond its address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<u32>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Whether the peer of a stream socket has hung up (or the socket failed), without blocking.
pub(crate) fn peer_hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// At most this many iovecs per `sendmsg` (Linux's IOV_MAX).
pub(crate) const IOV_MAX: usize = 1024;

/// `sendmsg` of the slices, with MSG_NOSIGNAL: inside an application that does not ignore SIGPIPE (the client shim),
/// a closed peer must become an error, not a killed process. Returns the bytes written.
pub(crate) fn send_vectored(fd: RawFd, bufs: &[IoSlice<'_>], fds: &[RawFd]) -> io::Result<usize> {
    let bufs = &bufs[..bufs.len().min(IOV_MAX)];
    let mut cmsg_buf = CmsgBuf::new(fds.len());
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec (documented guarantee on Unix); sendmsg only reads through it.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    if !fds.is_empty() {
        msg.msg_control = cmsg_buf.as_mut_ptr();
        msg.msg_controllen = cmsg_buf.len() as _;
        // SAFETY: msg_control points to a zeroed, aligned buffer of CMSG_SPACE(fds) bytes, so the first header and
        // its data (fds.len() ints) fit.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c) as *mut RawFd, fds.len());
        }
    }
    loop {
        // SAFETY: `msg` references the slices and the control buffer, all alive across the call.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `recvmsg` into `buf`, accepting up to `max_fds` descriptors (close-on-exec). Returns (bytes, descriptors).
pub(crate) fn recv_with_fds(fd: RawFd, buf: &mut [u8], max_fds: usize) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg_buf = CmsgBuf::new(max_fds);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if max_fds > 0 {
        msg.msg_control = cmsg_buf.as_mut_ptr();
        msg.msg_controllen = cmsg_buf.len() as _;
    }
    let n = loop {
        // SAFETY: `msg` points to `iov` (covering `buf`) and to the control buffer, all alive and writable.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    if max_fds > 0 && msg.msg_controllen > 0 {
        // SAFETY: the kernel filled msg_control with well-formed cmsg headers up to msg_controllen; the CMSG_* macros
        // walk only within it, and each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors that are now
        // ours to own.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data_len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let count = data_len / size_of::<RawFd>();
                    let p = libc::CMSG_DATA(c) as *const RawFd;
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
    // CMSG_SPACE rounds up, so room for `max_fds` may hold one more; the caller's limit is the rule.
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > max_fds {
        // `fds` is dropped here, closing whatever did arrive.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more descriptors arrived than were expected",
        ));
    }
    Ok((n, fds))
}

/// A control-message buffer aligned for `cmsghdr`, sized for `n` descriptors.
struct CmsgBuf {
    words: Vec<u64>,
    len: usize,
}

impl CmsgBuf {
    fn new(n: usize) -> CmsgBuf {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let len = if n == 0 {
            0
        } else {
            unsafe { libc::CMSG_SPACE((n * size_of::<RawFd>()) as u32) as usize }
        };
        CmsgBuf {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }
    fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.words.as_mut_ptr() as *mut libc::c_void
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// A shared mapping of a whole file, accessed only through atomics and raw byte copies, never through references to
/// its bytes: the other process writes to it concurrently.
pub(crate) struct SharedMap {
    base: *mut u8,
    len: usize,
    _map: memmap2::MmapMut,
}

// SAFETY: the mapping is owned by this value and all access goes through atomics or explicit copies of ranges that the
// ring protocol gives to one side at a time; moving it to another thread changes nothing about that.
unsafe impl Send for SharedMap {}

impl SharedMap {
    /// Maps `len` fresh zeroed bytes, private to this process (the RDMA transport registers them with the NIC, which
    /// then writes into them behind our back just as a peer process writes into a shared file).
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))]
    pub(crate) fn anon(len: usize) -> io::Result<SharedMap> {
        let mut map = memmap2::MmapOptions::new().len(len).map_anon()?;
        let base = map.as_mut_ptr();
        Ok(SharedMap { base, len, _map: map })
    }

    /// Address of the first byte (for registration with a NIC).
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))]
    pub(crate) fn addr(&self) -> usize {
        self.base as usize
    }

    /// Length of the mapping in bytes.
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Maps `len` bytes of `file` shared, read-write.
    pub(crate) fn new(file: &File, len: usize) -> io::Result<SharedMap> {
        // SAFETY: the file is a sealed memfd (cannot shrink, so no SIGBUS within `len`, which the caller checked
        // against its size); the peer writing concurrently is handled by never forming references to the bytes.
        let mut map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(file)? };
        let base = map.as_mut_ptr();
        Ok(SharedMap { base, len, _map: map })
    }

    pub(crate) fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off & 7 == 0 && off + 8 <= self.len, "shared u64 offset out of range");
        // SAFETY: in bounds and 8-aligned (the mapping is page-aligned); AtomicU64 has the layout of u64 and may
        // alias memory other processes modify atomically. The reference lives no longer than `self` (the mapping).
        unsafe { AtomicU64::from_ptr(self.base.add(off) as *mut u64) }
    }

    pub(crate) fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off & 3 == 0 && off + 4 <= self.len, "shared u32 offset out of range");
        // SAFETY: as for u64_at, with 4-byte alignment.
        unsafe { AtomicU32::from_ptr(self.base.add(off) as *mut u32) }
    }

    /// Copies `src` into the mapping at `off`.
    pub(crate) fn write(&self, off: usize, src: &[u8]) {
        assert!(
            off.checked_add(src.len()).is_some_and(|e| e <= self.len),
            "shared write out of range"
        );
        // SAFETY: the destination range is inside the mapping (checked) and cannot overlap `src`, which is ordinary
        // process memory; the ring protocol gives this range to the writer alone until it publishes it.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.add(off), src.len()) }
    }

    /// Copies bytes at `off` out of the mapping into `dst`.
    pub(crate) fn read(&self, off: usize, dst: &mut [u8]) {
        assert!(
            off.checked_add(dst.len()).is_some_and(|e| e <= self.len),
            "shared read out of range"
        );
        // SAFETY: the source range is inside the mapping (checked) and disjoint from `dst`; a misbehaving peer could
        // scribble on it meanwhile, which can only change the bytes we deliver, as it could by sending other bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off), dst.as_mut_ptr(), dst.len()) }
    }
}

/// `recv` with MSG_DONTWAIT: returns `WouldBlock` at once when nothing is queued.
pub(crate) fn recv_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most buf.len() bytes into the caller's buffer.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `send` with MSG_DONTWAIT | MSG_NOSIGNAL: writes what fits in the socket buffer now, never blocks.
pub(crate) fn send_nonblocking(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send reads at most buf.len() bytes from the caller's buffer.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A blocking `recv` into `buf`.
pub(crate) fn recv_blocking(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most buf.len() bytes into the caller's buffer.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Shuts down the reading side of a socket: a thread blocked reading it wakes with end-of-stream.
pub(crate) fn shutdown_read(fd: RawFd) {
    // SAFETY: shutdown on a descriptor the caller keeps open for the duration of the call.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
}

/// `poll` on a few descriptors for `events`, at most `timeout`; returns each one's `revents` (0 when nothing).
pub(crate) fn poll_fds<const N: usize>(fds: [RawFd; N], events: i16, timeout: Duration) -> io::Result<[i16; N]> {
    let mut p = fds.map(|fd| libc::pollfd { fd, events, revents: 0 });
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `p` is an array of N valid pollfd structs that lives across the call.
    let r = unsafe { libc::poll(p.as_mut_ptr(), N as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([0; N]);
        }
        return Err(e);
    }
    Ok(p.map(|x| x.revents))
}

/// The verbs calls that sideway leaves `unsafe` (registration, scatter-gather entries, CQ events), each wrapped so
/// that the RDMA transport stays in safe Rust.
#[cfg(feature = "rdma")]
pub(crate) mod verbs {
    use std::io;
    use std::sync::Arc;

    use sideway::ibverbs::completion::{BasicCompletionQueue, CompletionChannel, CompletionQueue};
    use sideway::ibverbs::memory_region::MemoryRegion;
    use sideway::ibverbs::protection_domain::ProtectionDomain;
    use sideway::ibverbs::queue_pair::{
        BasicQueuePair, PostSendError, PostSendGuard, QueuePair, SetScatterGatherEntry, WorkRequestFlags,
    };
    use sideway::ibverbs::AccessFlags;

    use super::SharedMap;

    /// Zeroed memory registered with a protection domain. The NIC may write into it at any time (that is the point),
    /// so it is only ever accessed through `SharedMap`'s raw copies. Field order matters: the registration is
    /// dropped (deregistered) before the mapping is unmapped.
    pub(crate) struct Registered {
        mr: Arc<MemoryRegion>,
        map: SharedMap,
    }

    impl Registered {
        pub(crate) fn new(pd: &Arc<ProtectionDomain>, len: usize, access: AccessFlags) -> io::Result<Registered> {
            let map = SharedMap::anon(len)?;
            // SAFETY: the mapping is valid for `len` bytes and is owned by the returned value together with the
            // registration, which is dropped first (field order), so the NIC never sees freed memory through it.
            let mr = unsafe { pd.reg_mr(map.addr(), map.len(), access) }
                .map_err(|e| io::Error::other(format!("cannot register {len} bytes with the RDMA device: {e}")))?;
            Ok(Registered { mr, map })
        }
        pub(crate) fn map(&self) -> &SharedMap {
            &self.map
        }
        pub(crate) fn addr(&self) -> u64 {
            self.map.addr() as u64
        }
        pub(crate) fn rkey(&self) -> u32 {
            self.mr.rkey()
        }
    }

    /// Posts one signaled RDMA write with immediate data of `len` bytes starting at `off` in `src` (no data when
    /// `len` is 0) to `remote_addr`/`rkey` in the peer's memory.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn post_write_imm(
        qp: &mut BasicQueuePair,
        wr_id: u64,
        src: &Registered,
        off: usize,
        len: u32,
        remote_addr: u64,
        rkey: u32,
        imm: u32,
    ) -> Result<(), PostSendError> {
        assert!(
            off.checked_add(len as usize).is_some_and(|e| e <= src.map.len()),
            "RDMA write source out of range"
        );
        let mut guard = qp.start_post_send();
        let wr = guard
            .construct_wr(wr_id, WorkRequestFlags::Signaled)
            .setup_write_imm(rkey, remote_addr, imm);
        if len > 0 {
            // SAFETY: the entry covers `len` bytes at `off` inside `src`'s registered mapping (checked above), which
            // the transport keeps alive, and does not reuse, until this work request has completed or the queue pair
            // is destroyed (the queue pair is dropped before the registered memory).
            unsafe { wr.setup_sge(src.mr.lkey(), (src.map.addr() + off) as u64, len) };
        }
        guard.post()
    }

    /// Memory the device may read into or send from: one of this module's own buffers, or a listed range.
    pub(crate) trait LocalMemory {
        fn lkey(&self) -> u32;
        fn base(&self) -> usize;
        fn size(&self) -> usize;
    }

    impl LocalMemory for Registered {
        fn lkey(&self) -> u32 {
            self.mr.lkey()
        }
        fn base(&self) -> usize {
            self.map.addr()
        }
        fn size(&self) -> usize {
            self.map.len()
        }
    }

    /// A device registration of a range listed in `vgpu_dataplane::pinned` (memory this module did not allocate).
    pub(crate) struct ListedRegistration {
        mr: Arc<MemoryRegion>,
        addr: usize,
        len: usize,
    }

    impl ListedRegistration {
        pub(crate) fn new(
            pd: &Arc<ProtectionDomain>,
            addr: usize,
            len: usize,
            access: AccessFlags,
        ) -> io::Result<ListedRegistration> {
            // SAFETY: a listed range is mapped for `len` bytes while listed (the registry's contract with whoever
            // lists it). Registration takes the device's own reference to its pages, so the range being freed
            // later cannot make the device touch memory this process reuses: the transport only uses a
            // registration while its range is still listed under the same id, and drops it otherwise.
            let mr = unsafe { pd.reg_mr(addr, len, access) }
                .map_err(|e| io::Error::other(format!("cannot register {len} bytes with the RDMA device: {e}")))?;
            Ok(ListedRegistration { mr, addr, len })
        }
        pub(crate) fn rkey(&self) -> u32 {
            self.mr.rkey()
        }
    }

    impl LocalMemory for ListedRegistration {
        fn lkey(&self) -> u32 {
            self.mr.lkey()
        }
        fn base(&self) -> usize {
            self.addr
        }
        fn size(&self) -> usize {
            self.len
        }
    }

    /// A device registration of a listed device range (`vgpu_dataplane::pinned::DEVICE`), from the server backend's
    /// export: a dma-buf of GPU memory, or (the emulated backend) a file whose mapping holds the bytes. Field order
    /// matters: the registration is dropped before the mapping.
    pub(crate) struct DeviceRegistration {
        mr: Arc<MemoryRegion>,
        _mapping: Option<SharedMap>,
        /// The range's device address, and the address work requests name for its first byte.
        device_addr: usize,
        base: usize,
        len: usize,
    }

    impl DeviceRegistration {
        /// Registers `len` bytes of listed device memory at `addr` through `export` (which covers them).
        pub(crate) fn new(
            pd: &Arc<ProtectionDomain>,
            export: vgpu_dataplane::pinned::DeviceExport,
            addr: usize,
            len: usize,
            access: AccessFlags,
        ) -> io::Result<DeviceRegistration> {
            use std::os::fd::AsRawFd;
            use vgpu_dataplane::pinned::DeviceExportKind;
            if export.len < len {
                return Err(io::Error::other(format!(
                    "the device memory export covers {} of {len} bytes",
                    export.len
                )));
            }
            let refused = |e: &dyn std::fmt::Display| {
                io::Error::other(format!(
                    "cannot register {len} bytes of device memory with the RDMA device: {e}"
                ))
            };
            match export.kind {
                DeviceExportKind::DmaBuf => {
                    // SAFETY: the descriptor is a dma-buf of the GPU allocation listed at `addr` for `export.len`
                    // bytes from `export.offset` (the exporter's contract). The registration takes its own
                    // reference to the buffer; the transport uses it only while the range stays listed under the
                    // same id, and drops it otherwise. The I/O virtual address is the device address, so work
                    // requests name device memory by its own addresses.
                    let mr = unsafe {
                        pd.reg_dmabuf_mr(export.offset, export.len, addr as u64, export.fd.as_raw_fd(), access)
                    }
                    .map_err(|e| refused(&e))?;
                    Ok(DeviceRegistration {
                        mr,
                        _mapping: None,
                        device_addr: addr,
                        base: addr,
                        len,
                    })
                }
                DeviceExportKind::HostFile => {
                    let skip = usize::try_from(export.offset).map_err(|e| refused(&e))?;
                    let end = skip
                        .checked_add(export.len)
                        .ok_or_else(|| refused(&"export range overflows"))?;
                    let file = std::fs::File::from(export.fd);
                    if file.metadata()?.len() < end as u64 {
                        return Err(refused(&"the exported file is shorter than the range"));
                    }
                    let map = SharedMap::new(&file, end)?;
                    let base = map.addr() + skip;
                    // SAFETY: the mapping is valid for `end` bytes, so for `export.len` bytes from `skip`, and is
                    // owned by the returned value with the registration, which is dropped first (field order).
                    let mr = unsafe { pd.reg_mr(base, export.len, access) }.map_err(|e| refused(&e))?;
                    Ok(DeviceRegistration {
                        mr,
                        device_addr: addr,
                        base,
                        _mapping: Some(map),
                        len,
                    })
                }
            }
        }
        pub(crate) fn rkey(&self) -> u32 {
            self.mr.rkey()
        }
        /// The device address of the registered range's first byte.
        pub(crate) fn device_addr(&self) -> usize {
            self.device_addr
        }
    }

    impl LocalMemory for DeviceRegistration {
        fn lkey(&self) -> u32 {
            self.mr.lkey()
        }
        fn base(&self) -> usize {
            self.base
        }
        fn size(&self) -> usize {
            self.len
        }
    }

    /// Posts one signaled RDMA READ of `len` bytes from `remote_addr`/`rkey` in the peer's memory into `dst` at
    /// `off`. The caller waits for its completion (or moves the queue pair to the error state, which flushes it)
    /// before `dst`'s bytes are used or released.
    pub(crate) fn post_read(
        qp: &mut BasicQueuePair,
        wr_id: u64,
        dst: &dyn LocalMemory,
        off: usize,
        len: u32,
        remote_addr: u64,
        rkey: u32,
    ) -> Result<(), PostSendError> {
        assert!(
            len > 0 && off.checked_add(len as usize).is_some_and(|e| e <= dst.size()),
            "RDMA read destination out of range"
        );
        let mut guard = qp.start_post_send();
        let wr = guard
            .construct_wr(wr_id, WorkRequestFlags::Signaled)
            .setup_read(rkey, remote_addr);
        // SAFETY: the entry covers `len` bytes at `off` inside `dst` (checked above): a buffer of this module that
        // lives as long as the queue pair, or a listed range the caller borrows until the read completes or is
        // flushed (see the doc comment); the device writes nothing else.
        unsafe { wr.setup_sge(dst.lkey(), (dst.base() + off) as u64, len) };
        guard.post()
    }

    /// Posts one signaled RDMA FETCH_AND_ADD of `add` on the 8 bytes at `remote_addr`/`rkey` in the peer's memory; the
    /// old value lands in `dst` at `off` (8-aligned) once it completes.
    pub(crate) fn post_fetch_add(
        qp: &mut BasicQueuePair,
        wr_id: u64,
        dst: &Registered,
        off: usize,
        remote_addr: u64,
        rkey: u32,
        add: u64,
    ) -> Result<(), PostSendError> {
        assert!(
            off.is_multiple_of(8) && off + 8 <= dst.map.len(),
            "atomic result out of range"
        );
        let mut guard = qp.start_post_send();
        let wr = guard
            .construct_wr(wr_id, WorkRequestFlags::Signaled)
            .setup_atomic_fetch_add(rkey, remote_addr, add);
        // SAFETY: the entry covers 8 bytes at `off` inside `dst`'s registered mapping (checked above), which lives as
        // long as the queue pair.
        unsafe { wr.setup_sge(dst.mr.lkey(), (dst.map.addr() + off) as u64, 8) };
        guard.post()
    }

    /// Asks for a completion event on the channel at the next completion of `cq`.
    pub(crate) fn arm_cq(cq: &BasicCompletionQueue) -> io::Result<()> {
        // SAFETY: `cq` is a live completion queue (borrowed for the call); req_notify_cq only rings its doorbell.
        let r = unsafe { rdma_mummy_sys::ibv_req_notify_cq(cq.cq().as_ptr(), 0) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r.abs()));
        }
        Ok(())
    }

    /// Takes one pending event off a non-blocking completion channel and acknowledges it at once (a CQ with
    /// unacknowledged events cannot be destroyed). Returns whether there was one.
    pub(crate) fn take_cq_event(channel: &CompletionChannel) -> bool {
        let mut cq = std::ptr::null_mut();
        let mut ctx = std::ptr::null_mut();
        // SAFETY: the channel is live (borrowed); the out-pointers point to locals.
        let r = unsafe { rdma_mummy_sys::ibv_get_cq_event(channel.comp_channel().as_ptr(), &mut cq, &mut ctx) };
        if r != 0 || cq.is_null() {
            return false;
        }
        // SAFETY: `cq` was just returned by ibv_get_cq_event for a CQ this process owns and still holds.
        unsafe { rdma_mummy_sys::ibv_ack_cq_events(cq, 1) };
        true
    }

    /// `ibv_wc_status_str` for a completion status.
    pub(crate) fn wc_status_str(status: u32) -> String {
        // SAFETY: ibv_wc_status_str returns a pointer to a static string for any value (or NULL when libibverbs
        // could not be loaded, checked here).
        let p = unsafe { rdma_mummy_sys::ibv_wc_status_str(status) };
        if p.is_null() {
            return format!("status {status}");
        }
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Sets this thread's timer slack (how late the kernel may wake a sleeping thread to batch wake-ups; 50 µs by
/// default). The link relay's writers sleep until a chunk is due and need wake-ups within a few µs.
pub(crate) fn set_timer_slack_ns(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and only changes the calling thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags (the rest of the 40-byte union unused).
#[repr(C)]
struct TunRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// Opens a new TUN device named `name` that carries whole IP packets without a header (IFF_TUN | IFF_NO_PI); it
/// lives as long as the returned file. Needs CAP_NET_ADMIN.
pub(crate) fn tun_open(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name of 1..15 bytes",
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = TunRequest {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _rest: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may update) a struct ifreq; `req` has its layout and lives across the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut TunRequest) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Moves the calling thread (only it) into the network namespace `ns` refers to (a file such as /run/netns/NAME).
pub(crate) fn enter_netns(ns: &File) -> io::Result<()> {
    // SAFETY: setns on a descriptor we hold open; it changes only this thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
