#!/usr/bin/env bash
# Stop 19, device call 1 (about 9 minutes): stop 18's two mirror/order fixes re-run on the GPU, then stop 17's
# prepared issue-21 measurements (bench/results/2026-12-06-stop17/next-gpu.sh), which never ran.
# Build first, here: cargo build --release -p vgpu -p vgpu-client-shim -p vgpu-nvml-shim -p vgpu-nccl-shim; copy vgpu
# to .device/bin/, libcuda.so to .device/bin/lib/libcuda.so.1, libnvidia_ml.so to .device/bin/lib/libnvidia-ml.so.1,
# libnccl.so to .device/bin/lib/libnccl.so.2 (strip --strip-debug); run from the repository root, `.device` carried.
#  1. stop 18's gpu-2.sh: __nccl-check over TCP (every collective, 256 MiB all-reduce bus bandwidth), PyTorch's NCCL
#     process group, torch.cuda.nccl, two-rank DDP over NCCL vs native gloo (rank 0's stale .item() should be gone).
#  2. stop 17's next-gpu.sh: e2e staged_async natively, compile rounds native/tcp/shm, VGPU_STRIPE_MIN_KB=1024,
#     `vgpu bench --quick` (TLS lanes on 16 cores).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/nccl" "$OUT/next"
here=$(dirname "$0")
OUT=$OUT/nccl timeout 200 bash "$here/../2026-12-06-stop18/gpu-2.sh"
echo "==== issue 21 (stop 17's next-gpu.sh)"
OUT=$OUT/next timeout 500 bash "$here/../2026-12-06-stop17/next-gpu.sh"
