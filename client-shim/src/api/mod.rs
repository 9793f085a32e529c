//! The driver entry points vGPU implements, grouped by area: each is an inherent associated function of
//! `Driver`, written with `entry!`, which takes its C signature from cuda.h (`vgpu_cuda_sys::driver_signature!`).
//!
//! `exports` turns every name cuda.h declares into an exported C function that calls `Driver::name`: the
//! inherent function where an area file wrote one, else the default of the generated `exports::Unsupported`
//! trait (inherent associated functions take precedence in path resolution), which logs once and answers
//! `CUDA_ERROR_NOT_SUPPORTED`. A body whose parameters do not match cuda.h's is a compile error there.

use vgpu_cuda_sys::driver::{
    CUarray, CUcontext, CUevent, CUfunction, CUkernel, CUlibrary, CUmemoryPool, CUmodule, CUstream,
};
use vgpu_dataplane::cuerr::CuResult;
use vgpu_dataplane::ids::{ArrayId, ContextId, EventId, FunctionId, ModuleId, PoolId, StreamId};

/// A cuda.h handle the shim gives out: its pointer value is the client-chosen wire id of the object (`ids`).
pub(crate) trait ClientHandle: Copy {
    type Id: Copy;
    /// The id this handle carries (checked against the registries by the callers that need it to exist).
    fn id(self) -> Self::Id;
    /// The handle the app gets for `id`.
    fn of(id: Self::Id) -> Self;
}

macro_rules! client_handles {
    ($($handle:ty => $id:ident),* $(,)?) => {
        $(
            impl ClientHandle for $handle {
                type Id = $id;
                fn id(self) -> $id {
                    $id(self as u64)
                }
                fn of(id: $id) -> $handle {
                    id.get() as $handle
                }
            }
        )*
    };
}

client_handles! {
    CUcontext => ContextId,
    CUstream => StreamId,
    CUevent => EventId,
    CUmodule => ModuleId,
    CUlibrary => ModuleId,
    CUfunction => FunctionId,
    CUkernel => FunctionId,
    CUmemoryPool => PoolId,
    CUarray => ArrayId,
}

/// The driver API vGPU implements: the `impl Driver` blocks of the area modules, written with `entry!`.
pub(crate) struct Driver;

/// Declares implemented entry points: `name, name_v2, name_ptsz => |flags, param, ...| { body }`. Each name gets
/// cuda.h's signature for it (the parameter names are this list's, in order: a count that differs from the
/// header's is a compile error) and runs the body, which returns `CuResult<()>`. `flags` is `FLAG_PER_THREAD` for
/// the `_ptsz`/`_ptds` names (their NULL stream is the calling thread's per-thread default stream), else 0.
macro_rules! entry {
    () => {};
    ($($name:ident),+ $(,)? => |$flags:ident $(, $arg:ident)* $(,)?| $body:block $($rest:tt)*) => {
        entry!(@each [$($name),+] [$flags, [$($arg),*], $body]);
        entry!($($rest)*);
    };
    (@each [$($name:ident),+] $shared:tt) => {
        $( vgpu_cuda_sys::driver_signature!($name, entry_fn, $shared); )+
    };
}

/// One entry point of `entry!`, called back by `driver_signature!` with the header's declaration: pairs the
/// parameter names with the header's types one by one, so that a list of the wrong length is an error naming the
/// entry point and the types cuda.h declares.
macro_rules! entry_fn {
    ([[$flags:ident, [$($arg:ident),*], $body:block]] $name:ident ( $($param:ident : $ty:ty),* ) -> $ret:ty;) => {
        entry_fn!(@pair $name, $ret, $flags, $body, [] [$($arg)*] [$($ty,)*]);
    };
    (@pair $name:ident, $ret:ty, $flags:ident, $body:block, [$($done:tt)*] [$a:ident $($args:ident)*] [$t:ty, $($tys:ty,)*]) => {
        entry_fn!(@pair $name, $ret, $flags, $body, [$($done)* $a: $t,] [$($args)*] [$($tys,)*]);
    };
    (@pair $name:ident, $ret:ty, $flags:ident, $body:block, [$($done:tt)*] [] []) => {
        impl $crate::api::Driver {
            // The driver's names and signatures are what they are: some entry points take a dozen arguments. The
            // body runs as a closure so that its `return` and `?` end the body, not the entry point.
            #[allow(non_snake_case, unused_variables, clippy::too_many_arguments, clippy::redundant_closure_call)]
            pub(crate) unsafe fn $name($($done)*) -> $ret {
                const FLAGS: u16 = $crate::api::per_thread_flag(stringify!($name));
                $crate::log::trace_call!(stringify!($name));
                let $flags: u16 = FLAGS;
                let result: CuResult<()> = (|| $body)();
                $crate::api::finish(stringify!($name), result)
            }
        }
    };
    (@pair $name:ident, $ret:ty, $flags:ident, $body:block, $done:tt [$($args:ident)*] [$($tys:ty,)*]) => {
        compile_error!(concat!(
            "entry! ", stringify!($name), ": the parameter names do not pair with cuda.h's parameters; left over: [",
            stringify!($($args),*), "] [", stringify!($($tys),*), "]"
        ));
    };
}

/// `FLAG_PER_THREAD` for the per-thread-default-stream variants (`_ptsz`, `_ptds`), 0 for every other name.
pub(crate) const fn per_thread_flag(name: &str) -> u16 {
    let b = name.as_bytes();
    let n = b.len();
    let per_thread = n > 5
        && b[n - 5] == b'_'
        && b[n - 4] == b'p'
        && b[n - 3] == b't'
        && ((b[n - 2] == b's' && b[n - 1] == b'z') || (b[n - 2] == b'd' && b[n - 1] == b's'));
    if per_thread {
        vgpu_dataplane::wire::FLAG_PER_THREAD
    } else {
        0
    }
}

/// An entry point's outcome as its CUresult, logged at `debug` when it is an error.
pub(crate) fn finish(name: &str, r: CuResult<()>) -> vgpu_dataplane::cuerr::CUresult {
    if let Err(e) = r {
        if crate::log::level() >= crate::log::DEBUG {
            crate::log::emit(crate::log::DEBUG, format_args!("{name} returned {e}"));
        }
    }
    code(r)
}

pub(crate) fn code(r: CuResult<()>) -> vgpu_dataplane::cuerr::CUresult {
    vgpu_dataplane::cuerr::CUresult::of(r)
}

/// Fails with `CUDA_ERROR_INVALID_CONTEXT` when the calling thread has no current context, as the driver does.
pub(crate) fn need_ctx() -> CuResult<vgpu_dataplane::ids::ContextId> {
    crate::client::session()?;
    match crate::state::current_ctx() {
        crate::state::NO_CONTEXT => Err(vgpu_dataplane::cuerr::CUDA_ERROR_INVALID_CONTEXT),
        c => Ok(c),
    }
}

/// The device of the calling thread's current context (`CUDA_ERROR_INVALID_CONTEXT` without one).
pub(crate) fn current_device() -> CuResult<i32> {
    need_ctx()?;
    crate::state::current_device().ok_or(vgpu_dataplane::cuerr::CUDA_ERROR_INVALID_CONTEXT)
}

/// Records [base, base+len) as memory of device `dev` that copies and kernels may name. Two servers' drivers
/// could hand out one address (memory they place themselves: module globals, pool allocations): such a clash is
/// reported and the memory refused, never recorded where calls about it would reach the wrong server.
pub(crate) fn record_range(base: u64, len: u64, dev: i32) -> CuResult<()> {
    crate::state::write().add_device_range(base, len, dev).map_err(|other| {
        crate::log::log!(
            crate::log::ERROR,
            "device {dev}'s server placed memory at {base:#x} (+{len:#x}) where device {other}'s memory already is: \
             two servers gave out one address, which this process cannot tell apart; refused (CUDA_ERROR_OUT_OF_MEMORY)"
        );
        vgpu_dataplane::cuerr::CUDA_ERROR_OUT_OF_MEMORY
    })
}

/// Where a call about device address `addr` goes: the server of the device whose memory holds it (the current
/// context's server for an address the client does not know, whose error the server gives).
pub(crate) fn route_of_ptr(addr: u64) -> crate::client::Route {
    match crate::state::read().device_of(addr) {
        Some(dev) => crate::client::Route::Device(dev),
        None => crate::va::route_of(addr).unwrap_or(crate::client::Route::Current),
    }
}

/// Where a call about an object the app created goes (stream, event, array, ...): the server of its device.
pub(crate) fn route_of_object(id: u64) -> crate::client::Route {
    match crate::state::read().owners.get(&id) {
        Some(&dev) => crate::client::Route::Device(dev),
        None => crate::client::Route::Current,
    }
}

/// Where a call on stream `stream` goes: a created stream's device; the NULL, legacy and per-thread streams
/// are the current context's.
pub(crate) fn route_of_stream(stream: StreamId) -> crate::client::Route {
    if stream.is_builtin() {
        crate::client::Route::Current
    } else {
        route_of_object(stream.get())
    }
}

/// The device a route names (the current context's for `Current`).
pub(crate) fn route_device(route: crate::client::Route) -> Option<i32> {
    match route {
        crate::client::Route::Device(d) => Some(d),
        _ => crate::state::current_device(),
    }
}

mod array;
mod context;
mod copy;
mod copy2d;
mod device;
mod driver;
mod event;
mod graph;
mod host;
mod ipc;
mod launch;
mod memory;
mod memset;
mod module;
mod peer;
mod peer_access;
mod pool;
mod query;
mod spread;
mod staging;
mod stream;
mod stream_mem;
mod vmm;

pub(crate) use device::{pci_location, reported_driver_version};
pub(crate) use graph::is_capturing;
pub(crate) use module::{load_module_image, module_functions};
pub(crate) use stream::{stream_id, STREAM_ATTR_LEN};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_thread_names_get_the_per_thread_flag() {
        use vgpu_dataplane::wire::FLAG_PER_THREAD;
        assert_eq!(per_thread_flag("cuMemcpyHtoDAsync_v2_ptsz"), FLAG_PER_THREAD);
        assert_eq!(per_thread_flag("cuMemcpyHtoD_v2_ptds"), FLAG_PER_THREAD);
        assert_eq!(per_thread_flag("cuMemcpyHtoD_v2"), 0);
        assert_eq!(per_thread_flag("cuInit"), 0);
        assert_eq!(per_thread_flag("_ptsz"), 0);
    }
}
