//! The driver entry points vGPU implements, grouped by area. Each is declared with `entry!`, which exports
//! it under all of its names (legacy, `_v2`, and the `_ptds`/`_ptsz` per-thread-default-stream forms).

use std::ffi::c_void;
use vgpu_dataplane::cuerr::CuResult;

pub(crate) type Handle = *mut c_void;

/// Declares an exported entry point. Names in the first list run with flags 0; names in the second with
/// `FLAG_PER_THREAD` (their NULL stream is the calling thread's per-thread default stream).
macro_rules! entry {
    () => {};
    ([$($name:ident),*] [$($pt:ident),*] $args:tt |$flags:ident| $body:block $($rest:tt)*) => {
        $( $crate::api::entry_fn!($name, 0, $args, $flags, $body); )*
        $( $crate::api::entry_fn!($pt, vgpu_dataplane::wire::FLAG_PER_THREAD, $args, $flags, $body); )*
        $crate::api::entry!($($rest)*);
    };
}

macro_rules! entry_fn {
    ($name:ident, $flag_value:expr, ($($arg:ident : $ty:ty),* $(,)?), $flags:ident, $body:block) => {
        #[no_mangle]
        pub extern "C" fn $name($($arg: $ty),*) -> vgpu_dataplane::cuerr::CUresult {
            $crate::log::trace_call!(stringify!($name));
            // The driver's signatures are what they are: some entry points take a dozen arguments.
            #[allow(unused_variables, clippy::too_many_arguments)]
            fn body($flags: u16, $($arg: $ty),*) -> CuResult<()> $body
            let r = body($flag_value, $($arg),*);
            if let Err(e) = r {
                if $crate::log::level() >= $crate::log::DEBUG {
                    $crate::log::emit($crate::log::DEBUG, format_args!("{} returned {e}", stringify!($name)));
                }
            }
            $crate::api::code(r)
        }
    };
}
pub(crate) use entry;
pub(crate) use entry_fn;

pub(crate) fn code(r: CuResult<()>) -> vgpu_dataplane::cuerr::CUresult {
    vgpu_dataplane::cuerr::CUresult::of(r)
}

/// Fails with `CUDA_ERROR_INVALID_CONTEXT` when the calling thread has no current context, as the driver does.
pub(crate) fn need_ctx() -> CuResult<u64> {
    crate::client::session()?;
    match crate::state::current_ctx() {
        0 => Err(vgpu_dataplane::cuerr::CUDA_ERROR_INVALID_CONTEXT),
        c => Ok(c),
    }
}

mod context;
mod device;
mod driver;
mod exec;
mod graph;
mod memory;
mod query;
mod stream_mem;
mod vmm;

// Every exported entry point, for `exports::address_of` (cuGetProcAddress hands out their addresses).
pub(crate) use context::*;
pub(crate) use device::*;
pub(crate) use driver::*;
pub(crate) use exec::*;
pub(crate) use graph::*;
pub(crate) use memory::*;
pub(crate) use query::*;
pub(crate) use stream_mem::*;
pub(crate) use vmm::*;
