//! `Transport` implementations for vGPU: TLS (across machines), TCP (loopback and trusted networks), shared memory
//! (same host) and RDMA (feature `rdma`), plus the descriptor passing and measurement helpers the server and
//! `vgpu bench` build on.
//!
//! A client calls [`connect`]; a server accepts a socket itself, reads the hello with [`read_raw_hello`] (TLS:
//! [`tls::TlsAcceptor::accept`] then [`tls::TlsTransport::recv_hello`]), and then wraps the socket with
//! [`tcp::TcpTransport::from_stream`], [`shm::ShmTransport::accept`], [`rdma::RdmaTransport::accept`] or
//! [`tls::TlsTransport::resume`].

pub mod fdpass;
pub mod floor;
pub mod link;
pub mod packed;
#[cfg(feature = "rdma")]
pub mod rdma;
/// Stand-in for the RDMA transport in builds without the `rdma` feature: same names, every call says why not.
#[cfg(not(feature = "rdma"))]
#[path = "rdma_off.rs"]
pub mod rdma;
pub mod rdma_stats;
pub mod shm;
pub mod striped;
mod sys;
pub mod tcp;
pub mod tls;

use std::io::{self, Read};

pub use vgpu_dataplane::transport::{shm_socket_path, Endpoint, Transport, TransportError};

/// Client side: opens a channel to `endpoint`, writes `hello` raw on the socket (the caller passes bytes already
/// framed as `[u32 LE length][payload]`), then completes the transport-specific setup. Returns the ready transport.
///
/// For shared memory the ring size comes from `VGPU_SHM_RING_MB` and the spin time from `VGPU_SHM_SPIN_US`; use
/// [`shm::connect_with`] to choose them explicitly. RDMA reads `VGPU_RDMA_RING_MB` and `VGPU_RDMA_SPIN_US`
/// ([`rdma::connect_with`]).
pub fn connect(endpoint: &Endpoint, hello: &[u8]) -> Result<Box<dyn Transport>, TransportError> {
    match endpoint {
        Endpoint::Tcp(addr) => Ok(Box::new(tcp::TcpTransport::connect(addr, hello)?)),
        Endpoint::Tls { addr, sha256 } => Ok(Box::new(tls::connect(addr, sha256.as_deref(), hello)?)),
        Endpoint::Shm(name) => {
            let config = shm::ShmConfig::from_env()?;
            Ok(Box::new(shm::connect_with(&shm_socket_path(name), hello, &config)?))
        }
        Endpoint::Rdma(addr) => {
            let config = rdma::RdmaConfig::from_env()?;
            Ok(Box::new(rdma::connect_with(addr, hello, &config)?))
        }
    }
}

/// Server side: reads one raw hello (`[u32 LE len][payload]`) from a freshly accepted socket and returns the payload.
/// A length above `max` is refused (`InvalidData`) before anything is allocated. Reads exactly the hello and no byte
/// more, so whatever the client sent after it stays in the socket for the transport.
pub fn read_raw_hello<R: Read>(r: &mut R, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("hello of {len} bytes exceeds the limit of {max}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(payload)
}

/// The two settings of a ring transport (shared memory, RDMA), as their environment variables spell them: the
/// ring's size in MiB (a power of two up to 1024) and how long a waiting side spins, in µs (up to one second).
/// `None` leaves a setting at its default; a bad value is an error naming the variable and the rule.
pub(crate) fn ring_settings(
    ring: (&str, Option<&str>),
    spin: (&str, Option<&str>),
) -> Result<(Option<usize>, Option<std::time::Duration>), TransportError> {
    let ring_bytes = match ring.1 {
        Some(v) => {
            let mb: usize = v
                .trim()
                .parse()
                .map_err(|_| bad_setting(ring.0, v, "a power of two from 1 to 1024"))?;
            if !mb.is_power_of_two() || mb > 1024 {
                return Err(bad_setting(ring.0, v, "a power of two from 1 to 1024"));
            }
            Some(mb << 20)
        }
        None => None,
    };
    let spin_time = whole_setting(spin, 1_000_000)?.map(|us| std::time::Duration::from_micros(us as u64));
    Ok((ring_bytes, spin_time))
}

/// A whole-number setting `(name, value)` from 0 to `max`; `None` when unset, an error naming it otherwise.
pub(crate) fn whole_setting((name, value): (&str, Option<&str>), max: usize) -> Result<Option<usize>, TransportError> {
    let Some(text) = value else { return Ok(None) };
    match text.trim().parse::<usize>() {
        Ok(n) if n <= max => Ok(Some(n)),
        _ => Err(bad_setting(name, text, &format!("a whole number from 0 to {max}"))),
    }
}

/// The error for setting `name` set to `value`, which breaks `rule`.
pub(crate) fn bad_setting(name: &str, value: &str, rule: &str) -> TransportError {
    TransportError::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{name}={value:?}: must be {rule}"),
    ))
}

/// A peer broke the transport's protocol.
pub(crate) fn protocol(msg: impl Into<String>) -> TransportError {
    TransportError::Protocol(msg.into())
}

/// Maps socket errors that mean "the peer is gone" to `Closed`, so callers see one outcome for a dead peer.
pub(crate) fn io_to_transport(e: io::Error) -> TransportError {
    use io::ErrorKind::*;
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof | WriteZero | NotConnected => {
            TransportError::Closed
        }
        _ => TransportError::Io(e),
    }
}

/// Writes all of `bufs` to a socket with MSG_NOSIGNAL, handling partial writes without copying.
pub(crate) fn send_all(fd: std::os::fd::RawFd, parts: &[&[u8]]) -> io::Result<()> {
    use std::io::IoSlice;
    // Up to this many parts live on the stack; the data path sends a header, a body and maybe a tail.
    const INLINE: usize = 8;
    let mut inline = [IoSlice::new(&[]); INLINE];
    let mut heap;
    let slices: &mut [IoSlice<'_>] = if parts.len() <= INLINE {
        for (s, p) in inline.iter_mut().zip(parts) {
            *s = IoSlice::new(p);
        }
        &mut inline[..parts.len()]
    } else {
        heap = parts.iter().map(|p| IoSlice::new(p)).collect::<Vec<_>>();
        &mut heap
    };
    let mut slices = slices;
    // Drop leading empty parts so a zero-byte write never looks like a closed peer.
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = sys::send_vectored(fd, slices, &[])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes"));
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_limit() {
        let mut framed = 5u32.to_le_bytes().to_vec();
        framed.extend_from_slice(b"hello after");
        let mut r = &framed[..];
        assert_eq!(read_raw_hello(&mut r, 5).expect("hello"), b"hello");
        assert_eq!(r, b" after", "read_raw_hello must not read past the hello");
        let mut r = &framed[..];
        assert_eq!(
            read_raw_hello(&mut r, 4).expect_err("too long").kind(),
            io::ErrorKind::InvalidData
        );
        let mut short = &[1u8, 0][..];
        assert_eq!(
            read_raw_hello(&mut short, 10).expect_err("short").kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn send_all_handles_many_and_empty_parts() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
        use std::os::fd::AsRawFd;
        let owned: Vec<Vec<u8>> = (0..2000).map(|i| vec![(i % 251) as u8; i % 3]).collect();
        let parts: Vec<&[u8]> = owned.iter().map(|v| &v[..]).collect();
        let expect: Vec<u8> = owned.concat();
        let t = std::thread::spawn(move || {
            let mut got = vec![0u8; expect.len()];
            b.read_exact(&mut got).expect("read");
            assert_eq!(got, expect);
        });
        send_all(a.as_raw_fd(), &parts).expect("send_all");
        t.join().expect("reader");
        send_all(a.as_raw_fd(), &[&[], &[]]).expect("nothing to send is fine");
    }
}
