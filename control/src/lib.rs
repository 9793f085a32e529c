//! vGPU control plane: tenants and their API keys, GPU servers, assignments of GPUs or slices, session
//! tickets the GPU servers verify offline, usage and cost; served as a REST API and a web UI.
//! Without the `service` feature only the client side is built (what the CUDA shim links).

pub mod client;
pub mod model;
pub mod pin;
pub mod ticket;

#[cfg(feature = "service")]
pub mod api;
#[cfg(feature = "service")]
pub mod auth;
#[cfg(feature = "service")]
pub mod bench;
#[cfg(feature = "service")]
pub mod cli;
#[cfg(feature = "service")]
pub mod layout;
#[cfg(feature = "service")]
pub mod metrics;
#[cfg(feature = "service")]
pub mod pg;
#[cfg(feature = "service")]
pub mod prune;
#[cfg(feature = "service")]
pub mod server;
#[cfg(feature = "service")]
pub mod signing;
#[cfg(feature = "service")]
pub mod store;
#[cfg(feature = "service")]
pub mod tls;

#[cfg(feature = "service")]
pub use cli::{run_admin, AdminArgs};
#[cfg(feature = "service")]
pub use server::{run_control, spawn_for_test, ControlArgs};
#[cfg(feature = "service")]
pub use ticket::verify_ticket;
pub use ticket::{TicketClaims, TicketError};
