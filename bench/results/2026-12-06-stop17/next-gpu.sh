#!/usr/bin/env bash
# Prepared at stop 17 for the next device call (about 9 minutes), for what this stop could not measure. Build first,
# here: cargo build --release -p vgpu -p vgpu-client-shim -p vgpu-nvml-shim; copy vgpu to .device/bin/, libcuda.so to
# .device/bin/lib/libcuda.so.1, libnvidia_ml.so to .device/bin/lib/libnvidia-ml.so.1 (strip --strip-debug), and
# python3 tests/e2e/run.py build --cuda-include .cuda/include --lib-dir target/release --out .device/e2e; then run
# this from the repository root with `.device` carried.
#  1. e2e `staged_async` natively: its expected output was written by hand at stop 17.
#  2. compile's compiled step, three rounds natively / TCP / shm: the shm fix (no staging-slot wait after a stream
#     wait; predicted 1.11 -> 1.0-1.05) and TCP with the default striping threshold.
#  3. the same over TCP with VGPU_STRIPE_MIN_KB=1024, two rounds (one round at stop 17: 1.09, with two 512 KiB pieces;
#     now fine pieces: 256 KiB on each of the 4 streams).
#  4. `vgpu bench --quick --repeat 1`: TLS lanes' gain on a 16-core host (one TLS stream: 3.9-4.9 GB/s, stop 12).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
  --only staged_async > "$OUT/e2e-native-staged.log" 2>&1; echo "e2e native staged_async: $(tail -1 "$OUT/e2e-native-staged.log")"
OUT=$OUT/compile ROUNDS=3 MODES="native tcp shm" SPLIT=1 WARMUP=1 TORCH_TIMEOUT_S=40 WORKLOADS=compile \
  timeout 280 bash tests/torch/run-device.sh > "$OUT/torch-compile.log" 2>&1; echo "compile rounds exit $?"
grep -E "===|compiled_step" "$OUT/compile/torch-medians.txt"; t "compile rounds done"
VGPU_STRIPE_MIN_KB=1024 OUT=$OUT/stripe-1024 ROUNDS=2 MODES="native tcp" SPLIT=1 WARMUP=0 TORCH_TIMEOUT_S=40 \
  WORKLOADS=compile timeout 110 bash tests/torch/run-device.sh > "$OUT/torch-stripe.log" 2>&1; echo "stripe exit $?"
grep -E "===|compiled_step" "$OUT/stripe-1024/torch-medians.txt"; t "stripe rounds done"
timeout 150 vgpu bench --quick --repeat 1 --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1; echo "bench exit $?"
grep -E "GB/s|floors" "$OUT/bench.txt" | head -12; t "done"
(cd "$OUT" && tar czf /tmp/next.tgz . && find . -mindepth 1 -delete && mv /tmp/next.tgz "$OUT/")
