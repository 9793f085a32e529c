//! vGPU control plane: tenants and their API keys, GPU servers, assignments of GPUs or slices, session
//! tickets the GPU servers verify offline, usage and cost; served as a REST API and a web UI.

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod metrics;
pub mod model;
pub mod server;
pub mod store;
pub mod ticket;

pub use cli::{run_admin, AdminArgs};
pub use server::{run_control, spawn_for_test, ControlArgs};
pub use ticket::{verify_ticket, TicketClaims, TicketError};
