#!/usr/bin/env bash
# Stop 13, GPU run 6 (about 3 minutes): after MirrorDigest (pulls move only changed chunks): e2e pinned_reuse,
# overlap, copies, modules over TCP and shm; PyTorch gpt_train, compile and runtime natively and over TCP.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
  --save "$OUT/e2e-native" > "$OUT/e2e-native.log" 2>&1; echo "e2e native: $(tail -1 "$OUT/e2e-native.log")"
for tr in tcp shm; do
python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $tr --backend real \
  --expected "$OUT/e2e-native" > "$OUT/e2e-$tr.log" 2>&1; echo "e2e $tr: $(tail -1 "$OUT/e2e-$tr.log")"; grep "^FAIL" -A8 "$OUT/e2e-$tr.log" | head -20
done
t "e2e done"
OUT=$OUT/torch MODES="native tcp" WORKLOADS=gpt_train,compile,runtime TORCH_TIMEOUT_S=120 WHAT=torch timeout 200 bash scripts/device-run.sh > "$OUT/torch-run.log" 2>&1
grep -v "^\[" "$OUT"/torch/torch-compare.txt 2>/dev/null | head -30 || tail -20 "$OUT/torch-run.log"
t "done"
(cd "$OUT" && tar czf /tmp/gpu-6.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-6.tgz "$OUT/")
