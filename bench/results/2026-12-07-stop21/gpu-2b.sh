#!/usr/bin/env bash
# Stop 21, device call 2 (about 4.5 minutes, what the budget left allowed): the loopback table, all seven
# PyTorch workloads each in its own process, natively / TCP / shm after a native warm-up, with this stop's
# binaries (a third full round for issue 21's medians, after stop 16 run 3 and stop 17 run 1). `.device` carried.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
OUT=$OUT/full MODES="native tcp shm" SPLIT=1 WARMUP=1 TORCH_TIMEOUT_S=70 \
  WORKLOADS=gpt_train,vision_infer,lm_infer,compile,cuda_graph,resnet18_train,small_ops \
  timeout ${FULL_TIMEOUT_S:-320} bash tests/torch/run-device.sh > "$OUT/torch-full.log" 2>&1; echo "full round exit $?"
grep -E "^=== | ms| s |=> " "$OUT/full/torch-compare.txt" | grep -v "^  workload" | head -60
echo "[$(( $(date +%s) - start ))s] done"
(cd "$OUT" && tar czf /tmp/gpu-2b.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-2b.tgz "$OUT/")
