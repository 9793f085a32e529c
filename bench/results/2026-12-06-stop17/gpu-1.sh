#!/usr/bin/env bash
# Stop 17, GPU run 1 (about 9 minutes): issue 21's loopback table twice (rounds 1 and 2; round 3 is gpu-2.sh), each
# PyTorch workload in its own process (SPLIT=1), natively, over TCP and over shm, native first in every round so each
# round's ratios are side by side. Medians over the rounds: tests/torch/median.py.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
for round in 1 2; do
  warm=0; [ $round = 1 ] && warm=1
  OUT=$OUT/round-$round MODES="native tcp shm" SPLIT=1 WARMUP=$warm TORCH_TIMEOUT_S=70 \
    WORKLOADS=gpt_train,vision_infer,lm_infer,compile,cuda_graph,resnet18_train,small_ops \
    timeout 280 bash tests/torch/run-device.sh > "$OUT/torch-round-$round.log" 2>&1; echo "round $round exit $?"
  grep -E "^=== |compiled_step|eager_step|median|replay|small_ops_us|=> " "$OUT/round-$round/torch-compare.txt" | head -40
  echo "[$(( $(date +%s) - start ))s] round $round done"
done
(cd "$OUT" && tar czf /tmp/gpu-1.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-1.tgz "$OUT/")
