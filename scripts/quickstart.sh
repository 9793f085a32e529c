#!/usr/bin/env bash
# The project's main job (see README): builds vGPU and runs `vgpu quickstart`, which starts a GPU server on
# this machine (real GPU if NVIDIA's driver works here, else the emulated backend) and runs the bundled
# sample through the shim over TCP and shared memory.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-build-deps.sh
cargo build --release -p vgpu -p vgpu-client-shim -p vgpu-nvml-shim
exec target/release/vgpu quickstart "$@"
