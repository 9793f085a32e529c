#!/usr/bin/env bash
# Stop 16, GPU run 2 (about 5 minutes): issue 20's last two framework variants (jax_noprealloc: XLA_PYTHON_CLIENT_
# PREALLOCATE=false; jax_nocmdbuf: XLA command buffers off) natively, over TCP and shm; tests/torch/multi-device.sh
# (two devices on two servers in one process, DDP gloo with its ranks on two servers) after stop 15's review mends
# and this stop's striped channels.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
OUT=$OUT/frameworks FRAMEWORKS="jax_noprealloc jax_nocmdbuf" FW_BUDGET_S=200 FW_TIMEOUT_S=90 \
  timeout 280 bash tests/frameworks/run-device.sh > "$OUT/frameworks-run.log" 2>&1
tail -5 "$OUT/frameworks-run.log"; cat "$OUT/frameworks/frameworks-summary.txt" 2>/dev/null
t "frameworks done"
OUT=$OUT/multi timeout 220 bash tests/torch/multi-device.sh 2>&1 | tee "$OUT/multi-device.txt" | tail -30
t "done"
(cd "$OUT" && tar czf /tmp/gpu-2.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-2.tgz "$OUT/")
