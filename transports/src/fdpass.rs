//! Passing descriptors over a Unix stream socket (`SCM_RIGHTS`): the server hands an accepted connection to the
//! per-session worker process this way, and the shared-memory transport sends its memfd.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::sys;

/// Sends `data` (at least one byte: descriptors ride on data) and `fds` on `sock`. The descriptors travel with the
/// first byte; the rest of `data` follows if the kernel takes it in pieces. The caller keeps its own copies of `fds`.
pub fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors need at least one byte of data",
        ));
    }
    let mut sent = sys::send_vectored(sock.as_raw_fd(), &[io::IoSlice::new(data)], fds)?;
    if sent == 0 {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes"));
    }
    while sent < data.len() {
        let n = sys::send_vectored(sock.as_raw_fd(), &[io::IoSlice::new(&data[sent..])], &[])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes"));
        }
        sent += n;
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and up to `max_fds` descriptors (close-on-exec). `(0, [])` means end of stream.
/// More descriptors than `max_fds` is an error, and the ones that did arrive are closed.
pub fn recv_with_fds(sock: &UnixStream, buf: &mut [u8], max_fds: usize) -> io::Result<(usize, Vec<OwnedFd>)> {
    sys::recv_with_fds(sock.as_raw_fd(), buf, max_fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom, Write};

    fn temp_file(content: &[u8]) -> File {
        let mut f = sys::memfd_create(c"fdpass-test").expect("memfd");
        f.write_all(content).expect("write");
        f
    }

    #[test]
    fn passes_descriptors_that_refer_to_the_same_files() {
        let (a, b) = UnixStream::pair().expect("pair");
        let f1 = temp_file(b"first");
        let f2 = temp_file(b"second");
        send_with_fds(&a, b"xyz", &[f1.as_raw_fd(), f2.as_raw_fd()]).expect("send");
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf, 4).expect("recv");
        assert_eq!(&buf[..n], b"xyz");
        assert_eq!(fds.len(), 2);
        let mut got = Vec::new();
        for (fd, want) in fds.into_iter().zip([&b"first"[..], b"second"]) {
            let mut f = File::from(fd);
            f.seek(SeekFrom::Start(0)).expect("seek");
            let mut s = Vec::new();
            f.read_to_end(&mut s).expect("read");
            assert_eq!(s, want);
            got.push(s);
        }
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn plain_data_eof_and_limits() {
        let (a, b) = UnixStream::pair().expect("pair");
        send_with_fds(&a, b"plain", &[]).expect("send without fds");
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf, 2).expect("recv");
        assert_eq!((&buf[..n], fds.len()), (&b"plain"[..], 0));

        assert_eq!(
            send_with_fds(&a, b"", &[]).expect_err("empty").kind(),
            io::ErrorKind::InvalidInput
        );

        let f = temp_file(b"x");
        send_with_fds(&a, b"!", &[f.as_raw_fd(), f.as_raw_fd()]).expect("send two");
        let err = recv_with_fds(&b, &mut buf, 1).expect_err("more fds than allowed");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        drop(a);
        let (n, fds) = recv_with_fds(&b, &mut buf, 2).expect("eof");
        assert_eq!((n, fds.len()), (0, 0));
    }
}
