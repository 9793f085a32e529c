//! PTX text as the emulated backend reads it (kernel signatures, globals, target version): the only PTX a vGPU
//! server parses itself; the real backend hands PTX to NVIDIA's driver.
//!
//! Asserts: parsing never panics or overflows; accepted kernels' parameters are laid out in order, aligned, and
//! inside the argument buffer, so their function table reaches the client.

use vgpu_cuda_exec::ptx;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ptx::target_version(text);
    let _ = ptx::looks_compilable(text);
    let _ = ptx::globals(text);
    if let Ok(entries) = ptx::entries(text) {
        for f in &entries {
            let mut end = 0u64;
            for &(offset, size) in &f.params {
                assert!(u64::from(offset) >= end, "{}: parameters overlap", f.name);
                end = u64::from(offset) + u64::from(size);
            }
        }
        crate::fatbin::crosses_the_wire(&entries);
    }
}
