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
pub mod script;
pub mod session;
pub mod striped;
pub mod tickets;

/// Every target by name, for the regression runner and `scripts/fuzz.sh`.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("frames", frames::run),
    ("handshake", handshake::run),
    ("tickets", tickets::run),
    ("fatbin", fatbin::run),
    ("ptx", ptx::run),
    ("session", session::run),
    ("packed", packed::run),
    ("striped", striped::run),
];
