#!/usr/bin/env bash
# Stop 15, GPU run 3 (under 10 minutes), after the fixes of run 2's findings (copies into pageable memory done when
# the call returns; a wait for a stream covers the copies any thread queued on it; a thread's batch goes out when
# it ends): e2e (28, with the new sync_scope) natively, over TCP and shm; the gloo diagnosis again; CuPy natively,
# over TCP and shm (G11); tests/torch/multi-device.sh (two devices in one process, DDP gloo/NCCL across two
# servers); every PyTorch workload natively and over TCP (regressions, ratios).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/diag"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
D=$PWD/bench/results/2026-12-06-stop15/diag
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
  --save "$OUT/e2e-native" > "$OUT/e2e-native.log" 2>&1; echo "e2e native: $(tail -1 "$OUT/e2e-native.log")"
grep "^FAIL" -A8 "$OUT/e2e-native.log" | head -20
for tr in tcp shm; do
python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $tr --backend real \
  --expected "$OUT/e2e-native" > "$OUT/e2e-$tr.log" 2>&1; echo "e2e $tr: $(tail -1 "$OUT/e2e-$tr.log")"; grep "^FAIL" -A8 "$OUT/e2e-$tr.log" | head -20
done
t "e2e done"
pa=$((7300 + RANDOM % 300)); pb=$((pa + 400))
vgpu server --backend real --tcp 127.0.0.1:$pa --shm diag3-a --no-tls --device-identity 1 > "$OUT/diag/server-a.log" 2>&1 & srv_a=$!
vgpu server --backend real --tcp 127.0.0.1:$pb --shm diag3-b --no-tls --device-identity 2 > "$OUT/diag/server-b.log" 2>&1 & srv_b=$!
for f in a b; do for _ in $(seq 120); do grep -q "ready on" "$OUT/diag/server-$f.log" && break; sleep 0.5; done; done
(cd "$OUT/diag"
VGPU_STATS=1 timeout 60 vgpu run --server tcp://127.0.0.1:$pa -- python3 $D/cupy_diag.py > cupy-tcp.txt 2> cupy-tcp.err
echo "cupy diag tcp (exit $?):"; grep -v "^@@" cupy-tcp.txt
VGPU_STATS=1 timeout 60 vgpu run --server tcp://127.0.0.1:$pa -- python3 $D/gloo_diag.py copies > gloo-copies-tcp.txt 2> gloo-copies-tcp.err
echo "copies tcp (exit $?):"; cat gloo-copies-tcp.txt
port=$((29500 + RANDOM % 1000))
timeout 60 vgpu run --server tcp://127.0.0.1:$pa -- python3 $D/gloo_diag.py coll 0 2 $port > coll-0.txt 2> coll-0.err & p0=$!
timeout 60 vgpu run --server tcp://127.0.0.1:$pb -- python3 $D/gloo_diag.py coll 1 2 $port > coll-1.txt 2> coll-1.err
wait $p0; echo "collectives over two servers (TCP):"; cat coll-0.txt coll-1.txt; grep -h "Error" coll-*.err | head -3)
kill $srv_a $srv_b 2>/dev/null; wait $srv_a $srv_b 2>/dev/null
t "diag done"
OUT=$OUT/frameworks FRAMEWORKS="cupy" FW_BUDGET_S=90 FW_TIMEOUT_S=60 timeout 120 bash tests/frameworks/run-device.sh \
  > "$OUT/frameworks-run.log" 2>&1
grep -E "^\[frameworks" "$OUT/frameworks-run.log" | tail -5; grep -E "=>|NO " "$OUT"/frameworks/frameworks-compare.txt | head
t "cupy done"
OUT=$OUT/multi timeout 200 bash tests/torch/multi-device.sh 2>&1 | tee "$OUT/multi-device.txt"
t "multi-device done"
left=$(( 570 - ($(date +%s) - start) ))
OUT=$OUT/torch MODES="native tcp" WORKLOADS=all TORCH_TIMEOUT_S=150 WHAT=torch timeout $left bash scripts/device-run.sh \
  > "$OUT/torch-run.log" 2>&1
grep -v "^\[" "$OUT"/torch/torch-compare.txt 2>/dev/null | head -45 || tail -20 "$OUT/torch-run.log"
t "done"
(cd "$OUT" && tar czf /tmp/gpu-3.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-3.tgz "$OUT/")
