//! The RDMA transport's stand-in for builds without the `rdma` cargo feature: the same public names, so the server
//! and the client need no conditional code, and every entry point explains that RDMA was left out of this build.

use std::io;
use std::net::TcpStream;
use std::time::Duration;

use vgpu_dataplane::transport::{Transport, TransportError};

pub use crate::rdma_stats::{counters, RdmaCounters};

const WHY: &str = "this vGPU was built without the `rdma` cargo feature";

fn off() -> TransportError {
    TransportError::Io(io::Error::new(io::ErrorKind::Unsupported, WHY))
}

/// Tunables of the RDMA transport (unused in this build).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RdmaConfig {
    pub ring_bytes: usize,
    pub spin: Duration,
    pub sq_depth: u32,
    pub rq_depth: u32,
    pub pull_min: usize,
    pub reg_max_bytes: usize,
}

impl RdmaConfig {
    /// Always the defaults: nothing to configure without RDMA.
    pub fn from_env() -> Result<RdmaConfig, TransportError> {
        Ok(RdmaConfig::default())
    }
}

/// Why this build cannot serve RDMA.
pub fn available() -> Result<Vec<String>, String> {
    Err(WHY.into())
}

/// No GPUDirect RDMA without RDMA.
pub fn peer_memory() -> String {
    format!("no RDMA: {WHY}")
}

/// Refuses: no RDMA in this build.
pub fn connect_with(_addr: &str, _hello: &[u8], _config: &RdmaConfig) -> Result<RdmaTransport, TransportError> {
    Err(off())
}

/// Never constructed in this build.
pub struct RdmaTransport(std::convert::Infallible);

impl RdmaTransport {
    /// Refuses: no RDMA in this build.
    pub fn accept(_stream: TcpStream) -> Result<Self, TransportError> {
        Err(off())
    }
    /// Refuses: no RDMA in this build.
    pub fn accept_with(_stream: TcpStream, _config: &RdmaConfig) -> Result<Self, TransportError> {
        Err(off())
    }
}

impl Transport for RdmaTransport {
    fn send(&mut self, _parts: &[&[u8]]) -> Result<(), TransportError> {
        match self.0 {}
    }
    fn recv_exact(&mut self, _buf: &mut [u8]) -> Result<(), TransportError> {
        match self.0 {}
    }
    fn kind(&self) -> &'static str {
        "rdma"
    }
}
