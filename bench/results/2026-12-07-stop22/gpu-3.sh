#!/usr/bin/env bash
# Stop 22, device call 3 (about 5 minutes): compile's compiled step in four rounds natively / TCP / shm with the
# workload's 60 measured steps (15 before), for the median issue 21 asks; then `vgpu bench --quick --repeat 1` for
# one TCP stream's rate on this host (the step's bound, NOTES §25). Binaries as call 2; `.device` carried.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
OUT=$OUT/c ROUNDS=4 MODES="native tcp shm" SPLIT=1 WARMUP=1 TORCH_TIMEOUT_S=45 WORKLOADS=compile \
  timeout 430 bash tests/torch/run-device.sh > "$OUT/compile.log" 2>&1; echo "compile exit $?"
grep -E "^=== |compiled_step|eager_step  " "$OUT/compile.log" | grep -v "^  workload" | head -60
cp "$OUT/c/torch-medians.txt" "$OUT/medians-compile.txt" 2>/dev/null
for r in 1 2 3 4; do cp "$OUT/c/round-$r/torch-compare.json" "$OUT/compile-round-$r.json" 2>/dev/null; done
(cd "$OUT" && tar czf c.tgz c compile.log && rm -rf c compile.log)
left=$(( 560 - ($(date +%s) - start) ))
echo "==== bench, ${left}s left"
if [ $left -gt 60 ]; then
  timeout $(( left - 5 )) vgpu bench --quick --repeat 1 > "$OUT/bench.txt" 2>&1; echo "bench exit $?"
  grep -iE "floor|stream|pinned|pageable" "$OUT/bench.txt" | head -20
fi
echo "[$(( $(date +%s) - start ))s] done"
