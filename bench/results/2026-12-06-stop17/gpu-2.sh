#!/usr/bin/env bash
# Stop 17, GPU run 2 (at most 8 minutes, on the machine gpu-1.sh left warm): round 3 of the loopback table (as
# gpu-1.sh, no warm-up pass); compile alone over TCP with the client striping from 1 MiB sends (VGPU_STRIPE_MIN_KB=1024;
# default 2048) against native, for the compiled step's two 1 MiB pageable copies; then `vgpu bench --quick --repeat
# 1` with the default 4 streams per channel: TLS lanes' gain on a 16-core host (one TLS stream: 3.9-4.9 GB/s on the
# H100 host, stop 12 run d) and the shm pageable rows.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
OUT=$OUT/round-3 MODES="native tcp shm" SPLIT=1 WARMUP=0 TORCH_TIMEOUT_S=70 \
  WORKLOADS=gpt_train,vision_infer,lm_infer,compile,cuda_graph,resnet18_train,small_ops \
  timeout 230 bash tests/torch/run-device.sh > "$OUT/torch-round-3.log" 2>&1; echo "round 3 exit $?"
grep -E "^=== |compiled_step|=> " "$OUT/round-3/torch-compare.txt" | head -12
echo "[$(( $(date +%s) - start ))s] round 3 done"
VGPU_STRIPE_MIN_KB=1024 OUT=$OUT/stripe-1024 MODES="native tcp" SPLIT=1 WARMUP=0 TORCH_TIMEOUT_S=40 WORKLOADS=compile \
  timeout 90 bash tests/torch/run-device.sh > "$OUT/torch-stripe-1024.log" 2>&1; echo "stripe 1024 exit $?"
grep -E "compiled_step|eager_step|=> " "$OUT/stripe-1024/torch-compare.txt" | head -6
echo "[$(( $(date +%s) - start ))s] stripe done"
timeout 170 vgpu bench --quick --repeat 1 --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1; echo "bench exit $?"
grep -E "GB/s|floors|channel" "$OUT/bench.txt" | head -16
echo "[$(( $(date +%s) - start ))s] done"
(cd "$OUT" && tar czf /tmp/gpu-2.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-2.tgz "$OUT/")
