//! GPU utilization for the control plane's heartbeat, read through NVIDIA's NVML (`libnvidia-ml.so.1`, loaded at
//! run time by `vgpu_cuda_exec::nvml`). Absent NVML (no driver, the emulated backend) utilization is reported as 0.

pub use vgpu_cuda_exec::nvml::Nvml;
