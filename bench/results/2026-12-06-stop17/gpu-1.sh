#!/usr/bin/env bash
# Stop 17, GPU run 1 (at most 9.5 minutes): issue 21's loopback table in two rounds (round 3 is gpu-2.sh), each
# PyTorch workload in its own process (SPLIT=1), natively, over TCP and over shm, native first in every round so each
# round's ratios are side by side (a native warm-up pass first, not recorded).
# Medians over the rounds: python3 tests/torch/median.py run-*/round-*/torch-compare.json.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
for round in 1 2; do
  warm=0; limit=220; [ $round = 1 ] && warm=1 && limit=320
  OUT=$OUT/round-$round MODES="native tcp shm" SPLIT=1 WARMUP=$warm TORCH_TIMEOUT_S=70 \
    WORKLOADS=gpt_train,vision_infer,lm_infer,compile,cuda_graph,resnet18_train,small_ops \
    timeout $limit bash tests/torch/run-device.sh > "$OUT/torch-round-$round.log" 2>&1; echo "round $round exit $?"
  grep -E "^=== |compiled_step|=> " "$OUT/round-$round/torch-compare.txt" | head -12
  echo "[$(( $(date +%s) - start ))s] round $round done"
done
echo "[$(( $(date +%s) - start ))s] done"
(cd "$OUT" && tar czf /tmp/gpu-1.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-1.tgz "$OUT/")
