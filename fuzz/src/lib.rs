//! Fuzz targets for every decoder that reads hostile bytes, as plain functions: `cargo fuzz` (fuzz_targets/) and the
//! regression tests (tests/regressions.rs, every input under `regressions/` and `corpus/`) call the same `run`.
//!
//! Each target asserts more than "no panic": bounds the decoder promises (memory committed, counts, lengths) are
//! checked on its output, and a refused input must be refused with an error, never a partial result.

pub mod fatbin;
pub mod frames;
pub mod handshake;
pub mod packed;
pub mod ptx;
pub mod rdma_book;
pub mod script;
pub mod session;
pub mod striped;
pub mod tickets;

use std::collections::VecDeque;

use vgpu_dataplane::{Transport, TransportError};

/// A target's entry point: one input, asserting on what it decodes.
pub type Target = fn(&[u8]);

/// Every target by name, for the regression runner and `scripts/fuzz.sh`.
pub const TARGETS: &[(&str, Target)] = &[
    ("frames", frames::run),
    ("handshake", handshake::run),
    ("tickets", tickets::run),
    ("fatbin", fatbin::run),
    ("ptx", ptx::run),
    ("session", session::run),
    ("packed", packed::run),
    ("striped", striped::run),
    ("rdma_book", rdma_book::run),
];

/// Bytes written on one side, read on the other, in order; a read the bytes cannot fill is a closed connection (and
/// empties the pipe). The in-memory transport the stream targets (`packed`, `striped`) feed hostile bytes through.
#[derive(Default)]
pub struct Pipe(pub VecDeque<u8>);

impl Transport for Pipe {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        for p in parts {
            self.0.extend(p.iter());
        }
        Ok(())
    }
    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        if self.0.len() < buf.len() {
            self.0.clear();
            return Err(TransportError::Closed);
        }
        let n = buf.len();
        for (b, v) in buf.iter_mut().zip(self.0.drain(..n)) {
            *b = v;
        }
        Ok(())
    }
    fn kind(&self) -> &'static str {
        "pipe"
    }
}
