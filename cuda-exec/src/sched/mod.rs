//! Enforced GPU sharing: one scheduler per GPU, shared by every worker process of the server, that decides when
//! each session's submitted work reaches the driver, from GPU time measured on the GPU. Design: `bench/NOTES.md` §7.

pub mod policy;
#[cfg(test)]
mod sim;
pub mod table;
