//! Every exported symbol of `libcuda.so.1`, generated from cuda.h's declarations (`vgpu_cuda_sys::driver_functions!`,
//! each with the header's exact signature) and the driver's undeclared exports (`undeclared_exports!`).
//!
//! Each declared `cuX` is `#[no_mangle] extern "C" fn cuX(args) { Driver::cuX(args) }`. Path resolution prefers
//! `Driver`'s inherent associated functions (the implemented entry points, `api`) over the defaults of the trait
//! `Unsupported` below, so an implemented name calls its implementation and every other one logs once and answers
//! `CUDA_ERROR_NOT_SUPPORTED`: no program finds a missing symbol or a NULL entry point.

use std::sync::atomic::AtomicBool;

use vgpu_cuda_sys::CUresult;

use crate::api::Driver;

/// Builds the `Unsupported` trait, the declared exports and their address lookup from cuda.h's declarations.
macro_rules! export_declared {
    ([] $( $name:ident ( $($param:ident : $ty:ty),* ) -> $ret:ty; )*) => {
        /// What an entry point vGPU does not implement answers: `CUDA_ERROR_NOT_SUPPORTED`, naming itself on stderr
        /// once. `Driver`'s inherent functions of the same names take precedence over these defaults (so the
        /// defaults of implemented names are never called: that is the point).
        #[allow(dead_code)]
        pub(crate) trait Unsupported {
            $(
                #[allow(non_snake_case, unused_variables, clippy::too_many_arguments)]
                unsafe fn $name($($param: $ty),*) -> $ret {
                    static ONCE: AtomicBool = AtomicBool::new(false);
                    $crate::log::unimplemented(stringify!($name), &ONCE)
                }
            )*
        }

        impl Unsupported for Driver {}

        $(
            #[no_mangle]
            #[allow(non_snake_case, clippy::too_many_arguments, clippy::missing_safety_doc)]
            pub unsafe extern "C" fn $name($($param: $ty),*) -> $ret {
                // SAFETY: the caller upholds cuda.h's contract for this entry point, which Driver::$name assumes.
                unsafe { Driver::$name($($param),*) }
            }
        )*

        /// The address of the declared export `name`, if cuda.h declares it.
        fn declared_address(name: &str) -> Option<usize> {
            match name {
                $( stringify!($name) => Some($name as *const () as usize), )*
                _ => None,
            }
        }

        /// The declared entry points `Driver` implements: those whose `Driver::name` is not the trait's default.
        #[cfg(test)]
        pub(crate) fn implemented() -> Vec<&'static str> {
            let mut out = Vec::new();
            $(
                let inherent: unsafe fn($($ty),*) -> $ret = Driver::$name;
                let default: unsafe fn($($ty),*) -> $ret = <Driver as Unsupported>::$name;
                if !std::ptr::fn_addr_eq(inherent, default) {
                    out.push(stringify!($name));
                }
            )*
            out
        }
    };
}

vgpu_cuda_sys::driver_functions!(export_declared);

/// Builds the stubs of the symbols NVIDIA's driver exports beyond the parsed headers (GL/EGL/VDPAU interop, the
/// profiler): no declaration gives their signatures, and x86-64 and AArch64 calling conventions let a function
/// that ignores its arguments stand in for any signature (the caller owns argument cleanup).
macro_rules! export_undeclared {
    ([] $($name:ident),* $(,)?) => {
        $(
            #[no_mangle]
            #[allow(non_snake_case)]
            pub extern "C" fn $name() -> CUresult {
                static ONCE: AtomicBool = AtomicBool::new(false);
                $crate::log::unimplemented(stringify!($name), &ONCE)
            }
        )*

        fn undeclared_address(name: &str) -> Option<usize> {
            match name {
                $( stringify!($name) => Some($name as *const () as usize), )*
                _ => None,
            }
        }
    };
}

vgpu_cuda_sys::undeclared_exports!(export_undeclared);

/// The address of the exported entry point `name`, implemented or not (what `cuGetProcAddress` hands out).
pub fn address_of(name: &str) -> Option<usize> {
    declared_address(name).or_else(|| undeclared_address(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The implemented entry points, counted from the exports themselves (the README's figure): printed with
    /// `cargo test -p vgpu-client-shim implemented_entry_points -- --nocapture`.
    #[test]
    fn implemented_entry_points() {
        let implemented = implemented();
        println!("{} implemented entry points:", implemented.len());
        for name in &implemented {
            println!("  {name}");
        }
        // 304 names before the exports were generated from cuda.h, minus the spurious cuGetProcAddress_v2_ptsz
        // (a static inline of cuda.h, not a driver export), plus cuMemcpyAtoA and cuMemcpyAtoA_v2.
        assert!(
            implemented.len() >= 305,
            "only {} entry points implemented",
            implemented.len()
        );
        for name in [
            "cuInit",
            "cuLaunchKernel_ptsz",
            "cuMemcpyHtoDAsync_v2",
            "cuGetProcAddress_v2",
        ] {
            assert!(implemented.contains(&name), "{name} is not implemented");
        }
        for name in ["cuGraphicsMapResources", "cuGraphicsUnregisterResource"] {
            assert!(!implemented.contains(&name), "{name} is implemented");
        }
    }

    #[test]
    fn every_header_name_and_undeclared_export_has_an_address() {
        for name in vgpu_cuda_sys::DRIVER_FUNCTION_NAMES
            .iter()
            .chain(vgpu_cuda_sys::UNDECLARED_EXPORTS)
        {
            assert!(address_of(name).is_some(), "{name} is not exported");
        }
        assert_eq!(address_of("cuNoSuchThing"), None);
        assert_ne!(address_of("cuInit"), address_of("cuDriverGetVersion"));
    }

    #[test]
    fn unimplemented_entry_points_answer_not_supported() {
        // SAFETY: a stub ignores its arguments; NULL is what a careless caller might pass.
        let r = unsafe { cuGraphicsUnregisterResource(std::ptr::null_mut()) };
        assert_eq!(r, CUresult::CUDA_ERROR_NOT_SUPPORTED);
        assert_eq!(cuProfilerStart(), CUresult::CUDA_ERROR_NOT_SUPPORTED);
    }
}
