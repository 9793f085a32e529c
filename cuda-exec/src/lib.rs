//! vGPU's GPU server: accepts sessions on every transport, runs one worker process per session, and executes
//! remoted driver calls on NVIDIA's real driver (loaded at run time) or on the emulated backend.

pub mod admission;
pub mod backend;
pub mod emulated;
mod emulated_time;
pub mod gpudirect;
pub mod graph_ops;
pub mod handles;
pub mod host_counter;
pub mod identity;
pub mod nvml;
pub mod ptx;
pub mod real;
pub mod registry;
pub mod sched;
pub mod server;
pub mod session;
pub mod stall;
pub(crate) mod sys;
pub mod tls_identity;

pub use admission::AdmissionLimits;
pub use sched::SlotConfig;
pub use server::{
    open_backend, run_server, run_worker_from_env, Admission, Authority, BackendChoice, Listening, ServerConfig,
    StaticKey, TlsListen, UsageDelta,
};
pub use session::Limits;
