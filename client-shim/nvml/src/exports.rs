//! Every function nvml.h declares, generated from its declarations (`vgpu_cuda_sys::nvml_functions!`, each with
//! the header's exact signature), so a `dlsym` for any NVML name finds a function.
//!
//! Each `nvmlX` is `#[no_mangle] extern "C" fn nvmlX(args) { Nvml::nvmlX(args) }`: `Nvml`'s inherent functions
//! (the implemented entry points, `api`) take precedence over the defaults of the trait `Unsupported` below,
//! which answer `NVML_ERROR_NOT_SUPPORTED` (or `NVML_ERROR_UNINITIALIZED` before `nvmlInit`).

use std::ffi::c_char;

use vgpu_cuda_sys::nvml::nvmlReturn_t;

use crate::api::Nvml;

/// What an unimplemented entry point answers, by return type.
trait Fallback {
    fn fallback() -> Self;
}

impl Fallback for nvmlReturn_t {
    fn fallback() -> Self {
        crate::api::unsupported()
    }
}

impl Fallback for *const c_char {
    fn fallback() -> Self {
        std::ptr::null()
    }
}

/// Builds the `Unsupported` trait and the exports from nvml.h's declarations.
macro_rules! export_declared {
    ([] $( $name:ident ( $($param:ident : $ty:ty),* ) -> $ret:ty; )*) => {
        /// What an entry point vGPU does not implement answers. Unsupported NVML calls are normal (real boards
        /// lack many sensors too): they are reported at `VGPU_LOG=debug` only. `Nvml`'s inherent functions of the
        /// same names take precedence over these defaults (so the defaults of implemented names are never called).
        #[allow(dead_code)]
        pub(crate) trait Unsupported {
            $(
                #[allow(non_snake_case, unused_variables)]
                unsafe fn $name($($param: $ty),*) -> $ret {
                    $crate::debug(format_args!(concat!(stringify!($name), ": not supported by vGPU")));
                    <$ret as Fallback>::fallback()
                }
            )*
        }

        impl Unsupported for Nvml {}

        $(
            #[no_mangle]
            #[allow(non_snake_case, clippy::missing_safety_doc)]
            pub unsafe extern "C" fn $name($($param: $ty),*) -> $ret {
                // SAFETY: the caller upholds nvml.h's contract for this entry point, which Nvml::$name assumes.
                unsafe { Nvml::$name($($param),*) }
            }
        )*

        /// The declared entry points `Nvml` implements: those whose `Nvml::name` is not the trait's default.
        #[cfg(test)]
        pub(crate) fn implemented() -> Vec<&'static str> {
            let mut out = Vec::new();
            $(
                let inherent: unsafe fn($($ty),*) -> $ret = Nvml::$name;
                let default: unsafe fn($($ty),*) -> $ret = <Nvml as Unsupported>::$name;
                if !std::ptr::fn_addr_eq(inherent, default) {
                    out.push(stringify!($name));
                }
            )*
            out
        }
    };
}

vgpu_cuda_sys::nvml_functions!(export_declared);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implemented_entry_points() {
        let implemented = implemented();
        println!("{} implemented NVML entry points: {implemented:?}", implemented.len());
        assert!(
            implemented.len() >= 45,
            "only {} NVML entry points implemented",
            implemented.len()
        );
        for needed in [
            "nvmlInit_v2",
            "nvmlErrorString",
            "nvmlDeviceGetHandleByPciBusId_v2",
            "nvmlDeviceGetNvLinkRemoteDeviceType",
            "nvmlDeviceGetNvLinkRemotePciInfo_v2",
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlSystemGetCudaDriverVersion_v2",
            "nvmlDeviceGetCount_v2",
            "nvmlDeviceGetHandleByIndex_v2",
            "nvmlDeviceGetUUID",
        ] {
            assert!(implemented.contains(&needed), "PyTorch needs {needed}");
        }
        assert!(!implemented.contains(&"nvmlDeviceGetFanSpeed"));
        assert!(vgpu_cuda_sys::NVML_FUNCTION_NAMES.len() > 300);
    }

    #[test]
    fn unimplemented_entry_points_answer_uninitialized_before_init() {
        let mut speed = 0u32;
        // SAFETY: a valid out-parameter (the stub ignores its arguments anyway).
        let r = unsafe { nvmlDeviceGetFanSpeed(std::ptr::null_mut(), &mut speed) };
        assert_eq!(r, nvmlReturn_t::NVML_ERROR_UNINITIALIZED);
    }
}
