//! The TCP transport: the default, across machines. Vectored writes send bulk tails without copying them; a small
//! read buffer saves syscalls on headers while large reads land straight in their destination.

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use vgpu_dataplane::transport::{Transport, TransportError};

use crate::{io_to_transport, send_all};

/// Reads smaller than this go through the internal buffer; larger ones go straight to the caller's memory.
const READ_BUF: usize = 64 * 1024;

/// How long a reader polls the socket without sleeping before it blocks (`VGPU_TCP_SPIN_US`, default 20 µs).
/// A blocked reader pays the scheduler's wake-up on every message, which on loopback is a large part of a round
/// trip; replies usually arrive within this window.
pub(crate) fn spin_budget() -> std::time::Duration {
    static SPIN: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var("VGPU_TCP_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20u64);
        std::time::Duration::from_micros(us.min(10_000))
    })
}

/// A TCP connection carrying one client thread's calls.
pub struct TcpTransport {
    stream: TcpStream,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    spin: std::time::Duration,
}

impl TcpTransport {
    /// Wraps a connected stream (either side) and sets TCP_NODELAY, since every flush is latency-critical.
    ///
    /// Socket buffer sizes are left to the kernel on purpose: fixing SO_RCVBUF/SO_SNDBUF (4 MiB was tried) turns
    /// off Linux's autotuning, which grows them further (tcp_rmem max, 32 MiB here); loopback bulk measured
    /// 2.3-2.8 GB/s with 4 MiB fixed against 3.0-5.3 GB/s autotuned.
    pub fn from_stream(stream: TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(TcpTransport {
            stream,
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            pos: 0,
            end: 0,
            spin: spin_budget(),
        })
    }

    /// Client side: connects to `addr` (`host:port`) and writes the already-framed `hello`.
    pub fn connect(addr: &str, hello: &[u8]) -> Result<Self, TransportError> {
        let stream = TcpStream::connect(addr)?;
        let t = TcpTransport::from_stream(stream)?;
        send_all(t.stream.as_raw_fd(), &[hello]).map_err(io_to_transport)?;
        Ok(t)
    }

    /// The underlying stream, e.g. for the peer address in logs.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

pub(crate) fn read_some(
    stream: &mut TcpStream,
    buf: &mut [u8],
    spin: std::time::Duration,
) -> Result<usize, TransportError> {
    if !spin.is_zero() {
        let start = std::time::Instant::now();
        loop {
            match crate::sys::recv_nonblocking(stream.as_raw_fd(), buf) {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_to_transport(e)),
            }
            if start.elapsed() >= spin {
                break;
            }
            std::hint::spin_loop();
        }
    }
    loop {
        match stream.read(buf) {
            Ok(0) => return Err(TransportError::Closed),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_to_transport(e)),
        }
    }
}

impl Transport for TcpTransport {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        send_all(self.stream.as_raw_fd(), parts).map_err(io_to_transport)
    }

    fn recv_exact(&mut self, mut out: &mut [u8]) -> Result<(), TransportError> {
        let buffered = (self.end - self.pos).min(out.len());
        out[..buffered].copy_from_slice(&self.buf[self.pos..self.pos + buffered]);
        self.pos += buffered;
        out = &mut out[buffered..];
        while !out.is_empty() {
            if out.len() >= READ_BUF {
                let n = read_some(&mut self.stream, out, self.spin)?;
                out = &mut out[n..];
            } else {
                let n = read_some(&mut self.stream, &mut self.buf, self.spin)?;
                let take = n.min(out.len());
                out[..take].copy_from_slice(&self.buf[..take]);
                self.pos = take;
                self.end = n;
                out = &mut out[take..];
            }
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "tcp"
    }
}
