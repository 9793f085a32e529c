//! CUresult codes for the protocol's users: every enumerator of cuda.h as a `CUresult` constant, its name and the
//! driver's description, all generated from the headers (vgpu-cuda-sys); nothing here is typed by hand.

pub use vgpu_cuda_sys::codes::*;
pub use vgpu_cuda_sys::{CUresult, CuResult};

/// The enumerator name of a code (`CUDA_ERROR_INVALID_VALUE`), or `None` for a code the driver does not define.
pub fn error_name(code: CUresult) -> Option<&'static str> {
    code.name()
}

/// The description `cuGetErrorString` gives (driver 580's own strings), or `None` for an undefined code.
pub fn error_string(code: CUresult) -> Option<&'static str> {
    code.description()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_strings_cover_defined_codes_only() {
        assert_eq!(error_name(CUDA_SUCCESS), Some("CUDA_SUCCESS"));
        assert_eq!(error_name(CUDA_ERROR_INVALID_VALUE), Some("CUDA_ERROR_INVALID_VALUE"));
        assert_eq!(error_name(CUresult::from_code(700)), Some("CUDA_ERROR_ILLEGAL_ADDRESS"));
        assert_eq!(error_name(CUresult::from_code(12345)), None);
        assert_eq!(error_string(CUDA_ERROR_INVALID_VALUE), Some("invalid argument"));
        assert_eq!(
            error_string(CUDA_ERROR_PEER_ACCESS_UNSUPPORTED),
            Some("peer access is not supported between these two devices")
        );
        assert_eq!(error_string(CUresult::from_code(12345)), None);
        for code in 0..1000 {
            let c = CUresult::from_code(code);
            assert_eq!(c.name().is_some(), c.description().is_some(), "code {code}");
        }
    }
}
