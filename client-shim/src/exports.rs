//! Every exported name of CUDA 13.0's driver API (generated list in `generated/driver_exports.rs`).
//! Names `src/api` implements are skipped here; every other one becomes a stub that logs once and returns
//! `CUDA_ERROR_NOT_SUPPORTED`, so no program ever finds a missing symbol or a NULL entry point.

/// Defines one stub. x86-64 and AArch64 calling conventions let a function that ignores its arguments stand
/// in for any signature: the caller owns argument cleanup.
macro_rules! stub {
    ($name:ident) => {
        #[no_mangle]
        pub extern "C" fn $name() -> vgpu_dataplane::cuerr::CUresult {
            static ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            $crate::log::unimplemented(stringify!($name), &ONCE)
        }
    };
}

include!(concat!(env!("OUT_DIR"), "/implemented.rs"));

// Implemented entry points, so that `address_of` can name every export, implemented or stub.
#[allow(unused_imports)]
use crate::api::*;

macro_rules! driver_exports {
    ($($name:ident),* $(,)?) => {
        /// Every name the driver API exports, implemented or not.
        #[allow(dead_code)]
        pub const ALL: &[&str] = &[$(stringify!($name)),*];
        $( export_one!($name); )*

        /// The address of the exported entry point `name` (what `cuGetProcAddress` hands out).
        pub fn address_of(name: &str) -> Option<usize> {
            match name {
                $( stringify!($name) => Some($name as *const () as usize), )*
                _ => None,
            }
        }
    };
}

include!("generated/driver_exports.rs");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_implemented_name_is_a_driver_export() {
        for name in IMPLEMENTED {
            assert!(
                ALL.contains(name),
                "{name} is implemented but is not a CUDA 13.0 driver symbol"
            );
        }
        assert!(
            IMPLEMENTED.len() > 100,
            "only {} entry points implemented",
            IMPLEMENTED.len()
        );
        assert!(ALL.len() > 600);
    }
}
