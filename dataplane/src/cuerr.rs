//! CUresult codes: the ones the protocol itself produces, and name/description lookup for `cuGetErrorName`.
//! Names come from CUDA 13.0's cuda.h (generated); descriptions are the driver's own strings where known.

pub use crate::generated::cu_result_names::CU_RESULT_NAMES;

/// A CUresult as the driver returns it.
pub type CuResultCode = u32;

pub const CUDA_SUCCESS: u32 = 0;
pub const CUDA_ERROR_INVALID_VALUE: u32 = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY: u32 = 2;
pub const CUDA_ERROR_NOT_INITIALIZED: u32 = 3;
pub const CUDA_ERROR_DEINITIALIZED: u32 = 4;
pub const CUDA_ERROR_NO_DEVICE: u32 = 100;
pub const CUDA_ERROR_INVALID_DEVICE: u32 = 101;
pub const CUDA_ERROR_INVALID_IMAGE: u32 = 200;
pub const CUDA_ERROR_FILE_NOT_FOUND: u32 = 301;
pub const CUDA_ERROR_INVALID_CONTEXT: u32 = 201;
pub const CUDA_ERROR_ALREADY_MAPPED: u32 = 208;
pub const CUDA_ERROR_CONTEXT_ALREADY_IN_USE: u32 = 216;
pub const CUDA_ERROR_INVALID_PTX: u32 = 218;
pub const CUDA_ERROR_INVALID_SOURCE: u32 = 300;
pub const CUDA_ERROR_UNSUPPORTED_LIMIT: u32 = 215;
pub const CUDA_ERROR_INVALID_HANDLE: u32 = 400;
pub const CUDA_ERROR_NOT_FOUND: u32 = 500;
pub const CUDA_ERROR_NOT_READY: u32 = 600;
pub const CUDA_ERROR_ILLEGAL_ADDRESS: u32 = 700;
pub const CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: u32 = 701;
pub const CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED: u32 = 712;
pub const CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED: u32 = 713;
pub const CUDA_ERROR_LAUNCH_FAILED: u32 = 719;
pub const CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE: u32 = 720;
pub const CUDA_ERROR_NOT_PERMITTED: u32 = 800;
pub const CUDA_ERROR_NOT_SUPPORTED: u32 = 801;
pub const CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: u32 = 803;
pub const CUDA_ERROR_INVALID_CLUSTER_SIZE: u32 = 912;
pub const CUDA_ERROR_UNKNOWN: u32 = 999;

/// The enumerator name of a code (`CUDA_ERROR_INVALID_VALUE`), or `None` for a code the driver does not define.
pub fn error_name(code: u32) -> Option<&'static str> {
    CU_RESULT_NAMES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

/// The description `cuGetErrorString` gives. The strings for common codes are the driver's own (checked against
/// driver 580 on the H100); other defined codes get their name turned into words.
pub fn error_string(code: u32) -> Option<&'static str> {
    let known = match code {
        0 => "no error",
        1 => "invalid argument",
        2 => "out of memory",
        3 => "initialization error",
        4 => "driver shutting down",
        100 => "no CUDA-capable device is detected",
        101 => "invalid device ordinal",
        200 => "device kernel image is invalid",
        201 => "invalid device context",
        218 => "a PTX JIT compilation failed",
        400 => "invalid resource handle",
        500 => "named symbol not found",
        600 => "device not ready",
        700 => "an illegal memory access was encountered",
        701 => "too many resources requested for launch",
        719 => "unspecified launch failure",
        801 => "operation not supported",
        999 => "unknown error",
        _ => "",
    };
    if !known.is_empty() {
        return Some(known);
    }
    GENERATED_STRINGS.iter().find(|(c, _)| *c == code).map(|(_, s)| *s)
}

/// Fallback descriptions for the remaining codes: the enumerator name in lower case, made once.
static GENERATED_STRINGS: std::sync::LazyLock<Vec<(u32, &'static str)>> = std::sync::LazyLock::new(|| {
    CU_RESULT_NAMES
        .iter()
        .map(|(c, n)| {
            let words = n
                .trim_start_matches("CUDA_ERROR_")
                .trim_start_matches("CUDA_")
                .replace('_', " ")
                .to_lowercase();
            (*c, &*Box::leak(words.into_boxed_str()))
        })
        .collect()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_strings_cover_defined_codes_only() {
        assert_eq!(error_name(0), Some("CUDA_SUCCESS"));
        assert_eq!(error_name(1), Some("CUDA_ERROR_INVALID_VALUE"));
        assert_eq!(error_name(700), Some("CUDA_ERROR_ILLEGAL_ADDRESS"));
        assert_eq!(error_name(12345), None);
        assert_eq!(error_string(1), Some("invalid argument"));
        assert_eq!(error_string(12345), None);
        for (code, _) in CU_RESULT_NAMES {
            assert!(
                error_string(*code).is_some_and(|s| !s.is_empty()),
                "code {code} has no string"
            );
        }
    }
}
