//! Load generator for the control plane (`vgpu-control-bench`): the scenarios of issue 17, bounded in time.
//! (filled in below)
