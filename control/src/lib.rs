//! vGPU control plane (placeholder while it is being written).
