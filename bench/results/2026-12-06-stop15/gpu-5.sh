#!/usr/bin/env bash
# Stop 15, GPU run 5 (about 4 minutes), after "a wait covers only the streams it waited for": e2e (28) natively,
# over TCP and shm; tests/torch/multi-device.sh (DDP gloo across two servers must now match native); the compile
# workload over TCP with this shim and with stop 14's (.device/bin/lib-old, built from 005048f), to see which one
# uploads 18.9 MB an eager step (run 3) where stop 13 run 6 uploaded 2.1 MB.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
  --save "$OUT/e2e-native" > "$OUT/e2e-native.log" 2>&1; echo "e2e native: $(tail -1 "$OUT/e2e-native.log")"
grep "^FAIL" -A8 "$OUT/e2e-native.log" | head -20
for tr in tcp shm; do
python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $tr --backend real \
  --expected "$OUT/e2e-native" > "$OUT/e2e-$tr.log" 2>&1; echo "e2e $tr: $(tail -1 "$OUT/e2e-$tr.log")"; grep "^FAIL" -A8 "$OUT/e2e-$tr.log" | head -20
done
t "e2e done"
OUT=$OUT/multi timeout 200 bash tests/torch/multi-device.sh 2>&1 | tee "$OUT/multi-device.txt"
t "multi-device done"
OUT=$OUT/torch-new MODES="native tcp" WORKLOADS=compile,lm_infer TORCH_TIMEOUT_S=100 WHAT=torch timeout 200 \
  bash scripts/device-run.sh > "$OUT/torch-new.log" 2>&1
grep -E "compile|eager|lm_infer|token" "$OUT"/torch-new/torch-compare.txt | head -12
OUT=$OUT/torch-old VGPU_SHIM_DIR=$PWD/.device/bin/lib-old MODES="native tcp" WORKLOADS=compile,lm_infer TORCH_TIMEOUT_S=100 \
  WHAT=torch timeout 200 bash scripts/device-run.sh > "$OUT/torch-old.log" 2>&1
echo "stop 14 shim:"; grep -E "compile|eager|lm_infer|token" "$OUT"/torch-old/torch-compare.txt | head -12
t "done"
(cd "$OUT" && tar czf /tmp/gpu-5.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-5.tgz "$OUT/")
