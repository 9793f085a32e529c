#!/usr/bin/env bash
# Stop 17, GPU run 1 (at most 9.5 minutes; the only device call this stop could expect, after nine refused starts):
# issue 21's loopback table once more (all seven PyTorch workloads, each in its own process, natively, over TCP and
# over shm, after an unrecorded native warm-up), then compile alone twice more (native, TCP, shm) for a median of
# three on its compiled step, then compile over TCP with the client striping from 1 MiB sends (VGPU_STRIPE_MIN_KB=1024;
# default 2048). Medians: python3 tests/torch/median.py run-1/*/torch-compare.json (stop 16 run 3 is another round).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
OUT=$OUT/full MODES="native tcp shm" SPLIT=1 WARMUP=1 TORCH_TIMEOUT_S=70 \
  WORKLOADS=gpt_train,vision_infer,lm_infer,compile,cuda_graph,resnet18_train,small_ops \
  timeout 330 bash tests/torch/run-device.sh > "$OUT/torch-full.log" 2>&1; echo "full round exit $?"
grep -E "^=== |compiled_step|=> " "$OUT/full/torch-compare.txt" | head -12
t "full round done"
for r in 2 3; do
  OUT=$OUT/compile-$r MODES="native tcp shm" SPLIT=1 WARMUP=0 TORCH_TIMEOUT_S=40 WORKLOADS=compile \
    timeout 100 bash tests/torch/run-device.sh > "$OUT/torch-compile-$r.log" 2>&1; echo "compile round $r exit $?"
  grep -E "compiled_step" "$OUT/compile-$r/torch-compare.txt" | head -4
  t "compile round $r done"
done
left=$(( 560 - ($(date +%s) - start) ))
if [ $left -gt 30 ]; then
  VGPU_STRIPE_MIN_KB=1024 OUT=$OUT/stripe-1024 MODES="native tcp" SPLIT=1 WARMUP=0 TORCH_TIMEOUT_S=40 WORKLOADS=compile \
    timeout $left bash tests/torch/run-device.sh > "$OUT/torch-stripe-1024.log" 2>&1; echo "stripe 1024 exit $?"
  grep -E "compiled_step|eager_step" "$OUT/stripe-1024/torch-compare.txt" | head -4
fi
t "done"
(cd "$OUT" && tar czf /tmp/gpu-1.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-1.tgz "$OUT/")
