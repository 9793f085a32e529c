//! vGPU's `libnvidia-ml.so.1`: NVML for programs that run through vGPU, answered from the session of vGPU's
//! `libcuda.so.1` (same devices, UUIDs and PCI ids as the CUDA API shows) and the server's live values.

mod api;
mod exports;
mod ffi;
mod link;

/// Lets the server tell this shim apart from NVIDIA's NVML when both are named libnvidia-ml.so.1.
#[no_mangle]
pub static vgpu_nvml_shim_marker: u32 = 0x5647_4e4d;

/// `VGPU_LOG=debug`: every NVML call and each unsupported one, on stderr. Unsupported NVML calls are normal
/// (real boards lack many sensors too), so they are not reported at the default level.
pub(crate) fn debug(msg: std::fmt::Arguments<'_>) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = ON.get_or_init(|| {
        std::env::var("VGPU_LOG").is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "debug" | "trace"))
    });
    if *on {
        eprintln!("vgpu: {msg}");
    }
}
