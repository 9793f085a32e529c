#!/usr/bin/env bash
# Stop 22, device call 2 (about 7 minutes), binaries of this commit (pinned buffers follow their context):
# (1) what the real driver frees with a context (ctx_lifetimes.c, natively), the assumption of the session's rule;
# (2) e2e programs that reset and destroy contexts, and the copy-heavy ones, over vGPU TCP and shm against native;
# (3) vision_infer in two rounds natively / TCP / shm with the GPU scheduler on (the default) and two with
# VGPU_SCHED=off, each step's enqueue time recorded (ViT-B/16 was 1.10-1.24 in call 1's vision-only rounds against
# 1.05 in its full round). Build as gpu-1.sh says; `.device` carried (with `.device/e2e`).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/e2e"
here=$(cd "$(dirname "$0")" && pwd)
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
nvcc -o /tmp/ctx_lifetimes "$here/ctx_lifetimes.c" -lcuda && timeout 20 /tmp/ctx_lifetimes | tee "$OUT/ctx-lifetimes.txt"
o=$OUT/e2e
progs="context errors_handles copies staged_async overlap pinned_reuse"
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
  --only $progs --save "$o/e2e-native" > "$o/e2e-native.log" 2>&1; echo "e2e native: $(tail -1 "$o/e2e-native.log")"
for tr in tcp shm; do
  timeout 90 python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $tr \
    --backend real --expected "$o/e2e-native" --only $progs > "$o/e2e-$tr.log" 2>&1
  echo "e2e $tr: $(tail -1 "$o/e2e-$tr.log")"
done
(cd "$o" && tar czf ../e2e.tgz . ) && rm -rf "$o"
echo "[$(( $(date +%s) - start ))s] e2e done"
for sched in on off; do
  left=$(( 570 - ($(date +%s) - start) ))
  [ $left -gt 80 ] || { echo "vision sched=$sched: no time left"; break; }
  v=$OUT/v-$sched
  if [ $sched = off ]; then export VGPU_SCHED=off; fi
  OUT=$v ROUNDS=2 MODES="native tcp shm" SPLIT=1 WARMUP=1 TORCH_TIMEOUT_S=40 WORKLOADS=vision_infer \
    timeout $(( left - 5 )) bash tests/torch/run-device.sh > "$OUT/vision-$sched.log" 2>&1; echo "vision sched=$sched exit $?"
  grep -E "^=== |vit_b_16|resnet50" "$OUT/vision-$sched.log" | grep -v "^  workload" | head -40
  python3 - "$v" "$OUT/samples-$sched.json" <<'PY'
import json, sys, glob, os
out = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "round-*", "torch-*", "vision_infer.json"))):
    w = json.load(open(f))["workloads"]["vision_infer"]
    key = "/".join(f.split(os.sep)[-3:-1])
    out[key] = {"timing": w.get("timing"), "samples": w.get("samples")}
    t = w.get("timing") or {}
    print(f"  {key:32s} vit step {t.get('vit_b_16_median_ms', 0):7.3f} enqueue {t.get('vit_b_16_enqueue_ms', 0):7.3f} "
          f"resnet50 step {t.get('resnet50_median_ms', 0):7.3f} enqueue {t.get('resnet50_enqueue_ms', 0):7.3f}")
json.dump(out, open(sys.argv[2], "w"), indent=1)
PY
  cp "$v/torch-medians.txt" "$OUT/medians-$sched.txt" 2>/dev/null
  (cd "$OUT" && tar czf "v-$sched.tgz" "v-$sched" && rm -rf "v-$sched")
done
unset VGPU_SCHED
echo "[$(( $(date +%s) - start ))s] done"
