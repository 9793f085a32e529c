#!/usr/bin/env bash
# Stop 22, device call 5 (about 3 minutes): the final binaries (30c4269: pinned buffers follow their context, the
# bounded book of ended contexts, kept buffers reused within their context) through every e2e program in
# `.device/e2e` over TCP and shm against native, then one round of gpt_train, lm_infer and resnet18_train.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/e2e"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
o=$OUT/e2e
progs=$(ls .device/e2e)
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
  --only $progs --save "$o/e2e-native" > "$o/e2e-native.log" 2>&1; echo "e2e native: $(tail -1 "$o/e2e-native.log")"
for tr in tcp shm; do
  timeout 150 python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $tr \
    --backend real --expected "$o/e2e-native" --only $progs > "$o/e2e-$tr.log" 2>&1
  echo "e2e $tr: $(tail -1 "$o/e2e-$tr.log")"; grep -E "^FAIL" "$o/e2e-$tr.log" | head -5
done
(cd "$o" && tar czf ../e2e.tgz . ) && rm -rf "$o"
echo "[$(( $(date +%s) - start ))s] e2e done"
OUT=$OUT/t MODES="native tcp shm" SPLIT=1 WARMUP=1 TORCH_TIMEOUT_S=60 WORKLOADS=gpt_train,lm_infer,resnet18_train \
  timeout 240 bash tests/torch/run-device.sh > "$OUT/torch.log" 2>&1; echo "torch exit $?"
grep -E "^=== |=> |median_step_ms|median_token_ms|resnet18_train_step" "$OUT/t/torch-compare.txt" 2>/dev/null | head -20
(cd "$OUT" && tar czf t.tgz t torch.log && rm -rf t torch.log)
echo "[$(( $(date +%s) - start ))s] done"
