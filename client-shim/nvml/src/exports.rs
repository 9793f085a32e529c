//! Every function nvml.h declares (generated list in `generated/nvml_exports.rs`). Names `api.rs` implements
//! are skipped here; every other one becomes a stub that answers `NVML_ERROR_NOT_SUPPORTED` (or
//! `NVML_ERROR_UNINITIALIZED` before `nvmlInit`), so a `dlsym` for any NVML name finds a function.

/// Defines one stub. x86-64 and AArch64 calling conventions let a function that ignores its arguments stand
/// in for any signature: the caller owns argument cleanup.
macro_rules! stub {
    ($name:ident) => {
        #[no_mangle]
        pub extern "C" fn $name() -> u32 {
            $crate::debug(format_args!(concat!(
                stringify!($name),
                ": not supported by vGPU"
            )));
            $crate::api::unsupported()
        }
    };
}

include!(concat!(env!("OUT_DIR"), "/implemented.rs"));

macro_rules! nvml_exports {
    ($($name:ident),* $(,)?) => {
        /// Every name nvml.h declares, implemented or not.
        #[allow(dead_code)]
        pub const ALL: &[&str] = &[$(stringify!($name)),*];
        $( export_one!($name); )*
    };
}

include!("generated/nvml_exports.rs");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_implemented_name_is_declared_by_nvml_h() {
        for name in IMPLEMENTED {
            assert!(
                ALL.contains(name),
                "{name} is implemented but nvml.h does not declare it"
            );
        }
        for needed in [
            "nvmlInit_v2",
            "nvmlDeviceGetHandleByPciBusId_v2",
            "nvmlDeviceGetNvLinkRemoteDeviceType",
            "nvmlDeviceGetNvLinkRemotePciInfo_v2",
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlSystemGetCudaDriverVersion_v2",
            "nvmlDeviceGetCount_v2",
            "nvmlDeviceGetHandleByIndex_v2",
            "nvmlDeviceGetUUID",
        ] {
            assert!(IMPLEMENTED.contains(&needed), "PyTorch needs {needed}");
        }
        assert!(ALL.len() > 300);
    }
}
