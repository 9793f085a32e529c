//! Run-time loaders of NVIDIA's libraries, built from the generated declarations: one struct per library with
//! every entry point resolved once at load, and a method per entry point with the header's exact signature.

use std::ffi::c_void;

/// Why a library could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot load {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{path} is vGPU's own client shim, not NVIDIA's library (is LD_LIBRARY_PATH pointing at the shim?)")]
    IsShim { path: String },
    #[error("{path} lacks {symbol}")]
    Missing { path: String, symbol: &'static str },
}

/// Opens `path`; with `refuse_shim`, refuses vGPU's own shims (which export `vgpu_shim_marker`).
fn open(path: &str, refuse_shim: bool) -> Result<libloading::Library, LoadError> {
    // SAFETY: loading the library runs its initialisers, which is what loading it is for.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Open {
        path: path.into(),
        reason: e.to_string(),
    })?;
    // SAFETY: a symbol only vGPU's shims export; looking it up has no side effects.
    if refuse_shim && unsafe { lib.get::<*const c_void>(b"vgpu_shim_marker\0") }.is_ok() {
        return Err(LoadError::IsShim { path: path.into() });
    }
    Ok(lib)
}

/// What an entry point the loaded library lacks answers, by return type.
pub trait Missing {
    fn missing() -> Self;
}

impl Missing for crate::driver::CUresult {
    fn missing() -> Self {
        crate::driver::CUresult::CUDA_ERROR_NOT_FOUND
    }
}

impl Missing for crate::nvml::nvmlReturn_t {
    fn missing() -> Self {
        crate::nvml::nvmlReturn_t::NVML_ERROR_FUNCTION_NOT_FOUND
    }
}

impl Missing for *const std::ffi::c_char {
    fn missing() -> Self {
        std::ptr::null()
    }
}

/// Defines a library struct from a generated function list.
macro_rules! define_library {
    ([$lib:ident, $doc:literal] $( $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty; )*) => {
        #[doc = $doc]
        #[allow(non_snake_case)]
        pub struct $lib {
            path: String,
            _lib: libloading::Library,
            $( $name: Option<unsafe extern "C" fn($($ty),*) -> $ret>, )*
        }

        #[allow(non_snake_case, clippy::too_many_arguments, clippy::missing_safety_doc)]
        impl $lib {
            /// Opens NVIDIA's library (vGPU's own shim is refused) and resolves every entry point it has.
            pub fn load(path: &str) -> Result<$lib, LoadError> {
                Self::open_with(path, true)
            }

            /// Opens whichever library `path` names, vGPU's shim included (for programs that run the same code
            /// natively and through vGPU).
            pub fn load_any(path: &str) -> Result<$lib, LoadError> {
                Self::open_with(path, false)
            }

            fn open_with(path: &str, refuse_shim: bool) -> Result<$lib, LoadError> {
                let lib = open(path, refuse_shim)?;
                $(
                    // SAFETY: the symbol, where present, has this signature in the header it was generated from.
                    let $name = unsafe {
                        lib.get::<unsafe extern "C" fn($($ty),*) -> $ret>(concat!(stringify!($name), "\0").as_bytes())
                    }
                    .ok()
                    .map(|s| *s);
                )*
                Ok($lib { path: path.into(), _lib: lib, $( $name, )* })
            }

            /// The path the library was opened from.
            pub fn path(&self) -> &str {
                &self.path
            }

            /// The opened library, for symbols beyond the header's (vGPU's own `vgpu_*` exports).
            pub fn library(&self) -> &libloading::Library {
                &self._lib
            }

            /// Fails unless every entry point in `names` is present (for the ones a caller cannot do without).
            pub fn require(&self, names: &[&'static str]) -> Result<(), LoadError> {
                for &symbol in names {
                    let present = match symbol {
                        $( stringify!($name) => self.$name.is_some(), )*
                        _ => false,
                    };
                    if !present {
                        return Err(LoadError::Missing { path: self.path.clone(), symbol });
                    }
                }
                Ok(())
            }

            $(
                /// Calls the library's entry point of this name (the header's signature); absent: the missing code.
                pub unsafe fn $name(&self, $($arg: $ty),*) -> $ret {
                    match self.$name {
                        // SAFETY: the caller upholds the entry point's contract; the pointer came from the library.
                        Some(f) => unsafe { f($($arg),*) },
                        None => <$ret as Missing>::missing(),
                    }
                }
            )*
        }
    };
}

driver_functions!(
    define_library,
    DriverLibrary,
    "NVIDIA's CUDA driver (`libcuda.so.1`), every entry point of cuda.h."
);
nvml_functions!(
    define_library,
    NvmlLibrary,
    "NVIDIA's management library (`libnvidia-ml.so.1`), every entry point of nvml.h."
);
