//! vGPU's data plane: the wire protocol between the client shim and the GPU server.
//! One fixed-layout message per remoted call (`wire`), the `Transport` trait, the handshake and CUresult names.

#[cfg(target_endian = "big")]
compile_error!("the vGPU wire format is little-endian and is encoded by reinterpreting native structs");

/// Pins a value as an `insta` snapshot under the workspace's `snapshots/dataplane/`.
#[cfg(test)]
macro_rules! snapshot {
    ($value:expr) => {
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/dataplane"),
            prepend_module_to_snapshot => true,
        }, { insta::assert_snapshot!($value) })
    };
}

pub mod coll;
pub mod cuerr;
pub mod digest;
pub mod handshake;
pub mod ids;
pub mod image;
pub mod pinned;
pub mod ranges;
pub mod transport;
pub mod wire;

pub use transport::{shm_socket_path, Endpoint, Transport, TransportError, MAX_SERVERS};
