#!/usr/bin/env bash
# Stop 15, GPU run 1 (under 10 minutes): e2e (27 programs, with copies_2d's cuMemcpy3DPeer line) natively, over TCP
# and shm; issue 16 on the GPU (tests/torch/multi-device.sh: two devices in one process over two servers, DDP
# gloo/NCCL with ranks on two servers); `vgpu bench` (loopback rows and the server-to-server rows); the frameworks
# (CuPy first, for G11) natively, over TCP and shm, with what time is left.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
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
timeout 170 vgpu bench --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1; echo "bench exit $?"
grep -A8 "server-to-server" "$OUT/bench.txt"; grep -iE "floor|pinned|pageable|round trip" "$OUT/bench.txt" | head -12
t "bench done"
left=$(( 555 - ($(date +%s) - start) ))
if [ $left -gt 40 ]; then
  OUT=$OUT/frameworks FRAMEWORKS="cupy triton jax hf" FW_BUDGET_S=$((left - 30)) FW_TIMEOUT_S=90 \
    timeout $left bash tests/frameworks/run-device.sh > "$OUT/frameworks-run.log" 2>&1
  grep -E "^\[frameworks" "$OUT/frameworks-run.log" | tail -16
  grep -iE "nnz|differ|G11" "$OUT"/frameworks/*compare* 2>/dev/null | head
fi
t "done"
(cd "$OUT" && tar czf /tmp/gpu-1.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-1.tgz "$OUT/")
