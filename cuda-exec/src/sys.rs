//! The few raw system calls the server needs, kept in one place.
//! Each `unsafe` block here wraps one libc call on a descriptor the caller owns.

use std::os::fd::RawFd;

fn set_flag(fd: RawFd, cloexec: bool) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; F_GETFD/F_SETFD only read and write its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let new = if cloexec {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, new) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn clear_cloexec(fd: RawFd) -> std::io::Result<()> {
    set_flag(fd, false)
}

pub fn set_cloexec(fd: RawFd) -> std::io::Result<()> {
    set_flag(fd, true)
}
