#!/usr/bin/env bash
# Stop 13, GPU run 3 (at most 9.5 minutes): every PyTorch workload natively and through vGPU over TCP and shm (the
# loopback table of issue 21, with the shim's round trips per step), then the framework workloads of issue 20 (CuPy,
# Triton, JAX, Hugging Face) natively, over TCP and shm, for the time left. Run from the repository root with .device/
# carried.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
OUT=$OUT/torch MODES="native tcp shm" WORKLOADS=all TORCH_TIMEOUT_S=150 WHAT=torch timeout 270 bash scripts/device-run.sh > "$OUT/torch-run.log" 2>&1
grep -v "^\[" "$OUT"/torch/torch-compare.txt 2>/dev/null | grep -v "^  *[a-z_0-9]* *part\|^$" | head -60 || tail -20 "$OUT/torch-run.log"
t "torch done"
left=$(( 540 - ($(date +%s) - start) ))
OUT=$OUT/frameworks FRAMEWORKS="cupy triton jax hf" MODES="native tcp shm" WHAT=frameworks timeout $left bash scripts/device-run.sh > "$OUT/frameworks-run.log" 2>&1
tail -40 "$OUT/frameworks-run.log"
t "done"
(cd "$OUT" && tar czf /tmp/gpu-3.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-3.tgz "$OUT/")
