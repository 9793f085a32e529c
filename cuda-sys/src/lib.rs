//! CUDA 13.0's driver API and NVML as Rust declarations generated from cuda.h and nvml.h (tools/gen-sys), so no
//! C type or signature is typed by hand anywhere else in vGPU; plus loaders that open the libraries at run time.
//!
//! - [`driver`] and [`nvml`]: every struct, union, enum (a newtype with named constants) and handle.
//! - [`driver_functions!`] / [`nvml_functions!`]: every declared function handed to a callback macro, and
//!   [`driver_signature!`] / [`nvml_signature!`]: one function's declaration by name. The client shim builds its
//!   exports from them and the loaders below are built from them, so a wrong signature is a compile error.
//! - [`DriverLibrary`] and [`NvmlLibrary`]: NVIDIA's `libcuda.so.1` / `libnvidia-ml.so.1` opened at run time,
//!   every entry point resolved once (a missing one answers `CUDA_ERROR_NOT_FOUND` / `NVML_ERROR_FUNCTION_NOT_FOUND`).

#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    clippy::all,
    clippy::pedantic,
    unsafe_op_in_unsafe_fn
)]
#[rustfmt::skip]
#[path = "generated/driver.rs"]
pub mod driver;

#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    clippy::all,
    clippy::pedantic,
    unsafe_op_in_unsafe_fn
)]
#[rustfmt::skip]
#[path = "generated/nvml.rs"]
pub mod nvml;

/// Every CUresult enumerator as a constant (`use vgpu_cuda_sys::codes::*` names them without a prefix).
#[rustfmt::skip]
#[path = "generated/result_codes.rs"]
pub mod codes;

#[rustfmt::skip]
#[path = "generated/driver_functions.rs"]
#[macro_use]
mod driver_functions;
#[rustfmt::skip]
#[path = "generated/nvml_functions.rs"]
#[macro_use]
mod nvml_functions;
pub use driver_functions::{DRIVER_FUNCTION_NAMES, UNDECLARED_EXPORTS};
pub use nvml_functions::NVML_FUNCTION_NAMES;

mod loader;
mod result;

pub use driver::CUresult;
pub use loader::{DriverLibrary, LoadError, NvmlLibrary};
pub use nvml::nvmlReturn_t;
pub use result::{CuResult, NvmlResult};
