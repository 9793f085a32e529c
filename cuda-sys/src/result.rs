//! The driver's and NVML's status codes as Rust results: `Err` always holds a non-success code, so `?` carries
//! a native CUresult unchanged from the driver (or the protocol) to the application.

use crate::driver::CUresult;
use crate::nvml::nvmlReturn_t;

/// A driver operation's outcome: `Err` is the (non-success) CUresult the application will see.
pub type CuResult<T> = Result<T, CUresult>;
/// An NVML operation's outcome: `Err` is the (non-success) nvmlReturn_t.
pub type NvmlResult<T> = Result<T, nvmlReturn_t>;

impl CUresult {
    /// `Ok(())` for `CUDA_SUCCESS`, the code itself otherwise.
    pub fn result(self) -> CuResult<()> {
        if self == CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// The code as the wire and the C ABI carry it.
    pub const fn code(self) -> u32 {
        self.0
    }

    /// A code from the wire or the C ABI (any value: unknown codes pass through as the driver's would).
    pub const fn from_code(code: u32) -> CUresult {
        CUresult(code)
    }

    /// The code a `CuResult<()>` stands for.
    pub fn of(r: CuResult<()>) -> CUresult {
        match r {
            Ok(()) => CUresult::CUDA_SUCCESS,
            Err(e) => e,
        }
    }
}

impl std::fmt::Display for CUresult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "CUresult {}", self.0),
        }
    }
}

impl nvmlReturn_t {
    /// `Ok(())` for `NVML_SUCCESS`, the code itself otherwise.
    pub fn result(self) -> NvmlResult<()> {
        if self == nvmlReturn_t::NVML_SUCCESS {
            Ok(())
        } else {
            Err(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_their_numbers_and_names() {
        assert_eq!(CUresult::CUDA_ERROR_INVALID_VALUE.code(), 1);
        assert_eq!(CUresult::CUDA_ERROR_NOT_SUPPORTED.code(), 801);
        assert_eq!(CUresult::from_code(400).name(), Some("CUDA_ERROR_INVALID_HANDLE"));
        assert_eq!(CUresult::from_code(12345).name(), None);
        assert_eq!(CUresult::CUDA_SUCCESS.result(), Ok(()));
        assert_eq!(
            CUresult::CUDA_ERROR_OUT_OF_MEMORY.result(),
            Err(CUresult::CUDA_ERROR_OUT_OF_MEMORY)
        );
        assert_eq!(CUresult::CUDA_ERROR_NOT_READY.to_string(), "CUDA_ERROR_NOT_READY (600)");
    }

    #[test]
    fn loading_a_missing_library_is_a_clear_error() {
        let e = crate::DriverLibrary::load("/nonexistent/libcuda.so.1")
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.starts_with("cannot load /nonexistent/libcuda.so.1")));
    }

    #[test]
    fn the_function_lists_cover_the_driver_api() {
        assert!(crate::DRIVER_FUNCTION_NAMES.len() > 600);
        assert!(crate::DRIVER_FUNCTION_NAMES.contains(&"cuMemAlloc_v2"));
        assert!(crate::DRIVER_FUNCTION_NAMES.contains(&"cuLaunchKernel_ptsz"));
        assert!(crate::NVML_FUNCTION_NAMES.contains(&"nvmlInit_v2"));
        assert!(crate::NVML_FUNCTION_NAMES.contains(&"nvmlInit"));
    }
}
