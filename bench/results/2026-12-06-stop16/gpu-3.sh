#!/usr/bin/env bash
# Stop 16, GPU run 3 (at most 9 minutes): issue 21's loopback table, each PyTorch workload in its own process
# (SPLIT=1), natively, over TCP (now striped over 4 streams once a channel moved 8 MiB) and over shm.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s)
OUT=$OUT/torch MODES="native tcp shm" SPLIT=1 TORCH_TIMEOUT_S=70 \
  WORKLOADS=gpt_train,vision_infer,lm_infer,compile,cuda_graph,resnet18_train,small_ops \
  timeout 520 bash tests/torch/run-device.sh > "$OUT/torch-run.log" 2>&1; echo "torch exit $?"
tail -40 "$OUT/torch/torch-compare.txt" 2>/dev/null || tail -20 "$OUT/torch-run.log"
echo "[$(( $(date +%s) - start ))s] done"
(cd "$OUT" && tar czf /tmp/gpu-3.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-3.tgz "$OUT/")
