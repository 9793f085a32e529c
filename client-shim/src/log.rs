//! Diagnostics to stderr, controlled by `VGPU_LOG` (`error`, `warn` (default), `info`, `debug`).
//! `debug` prints every driver call the app makes; unimplemented calls are reported once each at `warn`.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

const UNSET: u8 = 255;
static LEVEL: AtomicU8 = AtomicU8::new(UNSET);

pub const ERROR: u8 = 0;
pub const WARN: u8 = 1;
pub const INFO: u8 = 2;
pub const DEBUG: u8 = 3;

pub fn level() -> u8 {
    let l = LEVEL.load(Ordering::Relaxed);
    if l != UNSET {
        return l;
    }
    let l = match std::env::var("VGPU_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" | "off" => ERROR,
        "info" => INFO,
        "debug" | "trace" => DEBUG,
        _ => WARN,
    };
    LEVEL.store(l, Ordering::Relaxed);
    l
}

pub fn emit(lvl: u8, msg: std::fmt::Arguments<'_>) {
    if level() >= lvl {
        eprintln!("vgpu: {msg}");
    }
}

macro_rules! log {
    ($lvl:expr, $($arg:tt)*) => { $crate::log::emit($lvl, format_args!($($arg)*)) };
}
pub(crate) use log;

/// Logs a call by name at `debug`.
macro_rules! trace_call {
    ($name:expr) => {
        if $crate::log::level() >= $crate::log::DEBUG {
            $crate::log::emit($crate::log::DEBUG, format_args!("call {}", $name));
        }
    };
}
pub(crate) use trace_call;

/// Reports an unimplemented entry point once.
pub fn unimplemented(name: &str, once: &AtomicBool) -> vgpu_dataplane::cuerr::CUresult {
    if !once.swap(true, Ordering::Relaxed) {
        emit(
            WARN,
            format_args!("{name} is not supported by vGPU yet; it returns CUDA_ERROR_NOT_SUPPORTED"),
        );
    } else if level() >= DEBUG {
        emit(DEBUG, format_args!("call {name} (not supported)"));
    }
    vgpu_dataplane::cuerr::CUDA_ERROR_NOT_SUPPORTED
}
