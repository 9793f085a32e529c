#!/usr/bin/env bash
# Stop 12, GPU run 1: the restructured server and shim (issue 13: generated declarations, call table, typed
# handles, the real backend on cuda-sys's DriverLibrary) against the native driver on the same GPU: the e2e suite
# (21 programs, `arrays` new), tests/cuda (36 programs x static/shared cudart) and `vgpu bench`.
# Run from the repository root with .device/ carried (release vgpu, the shims, e2e programs, probes).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/logs"
export PATH=$PWD/.device/bin:$PATH
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
t "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
OUT=$OUT/logs WHAT=e2e bash scripts/device-run.sh 2>&1 | tail -8
t "e2e done"
OUT=$OUT/logs WHAT=cuda bash scripts/device-run.sh 2>&1 | tail -10
t "tests/cuda done"
OUT=$OUT/logs WHAT=bench bash scripts/device-run.sh 2>&1 | tail -45
t "bench done"
(cd "$OUT/logs" && tar czf "$OUT/run1.tgz" .)
