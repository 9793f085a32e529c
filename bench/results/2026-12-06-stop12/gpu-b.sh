#!/usr/bin/env bash
# Stop 12, GPU run B (one call, under 10 minutes): PyTorch workloads natively and through vGPU over TCP and shm
# (GPT training, ResNet-18 training, small ops, the runtime and library workloads), PyTorch IPC between processes
# (tests/torch/ipc-device.sh), then tests/cuda (nvcc programs, static and shared cudart) natively and through vGPU.
# Run from the repository root with .device/ carried.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
t "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
OUT=$OUT/torch MODES="native tcp shm" WORKLOADS=${WORKLOADS:-gpt_train,resnet18_train,small_ops,runtime,libs} \
  TORCH_TIMEOUT_S=150 WHAT=torch timeout 300 bash scripts/device-run.sh 2>&1 | tail -25
t "torch done"
OUT=$OUT/torch-ipc timeout 100 bash tests/torch/ipc-device.sh 2>&1 | tail -8
t "torch ipc done"
OUT=$OUT/cuda WHAT=cuda timeout $(( 560 - ($(date +%s) - start) )) bash scripts/device-run.sh 2>&1 | tail -10
t "tests/cuda done"
