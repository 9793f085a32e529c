#!/usr/bin/env bash
# Stop 17, GPU run 2 (about 6 minutes): round 3 of the loopback table (as gpu-1.sh), then compile alone over TCP with
# the client striping from 1 MiB and from 512 KiB sends (VGPU_STRIPE_MIN_KB; default 2048) against native, for the
# compiled step's two 1 MiB pageable copies.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
OUT=$OUT/round-3 MODES="native tcp shm" SPLIT=1 WARMUP=1 TORCH_TIMEOUT_S=70 \
  WORKLOADS=gpt_train,vision_infer,lm_infer,compile,cuda_graph,resnet18_train,small_ops \
  timeout 330 bash tests/torch/run-device.sh > "$OUT/torch-round-3.log" 2>&1; echo "round 3 exit $?"
grep -E "^=== |compiled_step|eager_step|median|replay|small_ops_us|=> " "$OUT/round-3/torch-compare.txt" | head -40
echo "[$(( $(date +%s) - start ))s] round 3 done"
for kb in 1024 512; do
  VGPU_STRIPE_MIN_KB=$kb OUT=$OUT/stripe-$kb MODES="native tcp" SPLIT=1 WARMUP=0 TORCH_TIMEOUT_S=60 WORKLOADS=compile \
    timeout 120 bash tests/torch/run-device.sh > "$OUT/torch-stripe-$kb.log" 2>&1; echo "stripe $kb exit $?"
  grep -E "compiled_step|eager_step|compile .*compiled_step|=> " "$OUT/stripe-$kb/torch-compare.txt" | head -8
  echo "[$(( $(date +%s) - start ))s] stripe $kb done"
done
(cd "$OUT" && tar czf /tmp/gpu-2.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-2.tgz "$OUT/")
