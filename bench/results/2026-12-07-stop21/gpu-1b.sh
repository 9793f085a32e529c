#!/usr/bin/env bash
# Stop 21, device call 1 as run (gpu-1.sh never got a machine: six refused starts cost 810 s of the budget, so the
# collectives part gave way): stop 17's issue-21 measurements (staged_async natively, compile's compiled step in
# three rounds natively / TCP / shm, 1 MiB striping with fine pieces, `vgpu bench --quick`), then the copy-heavy
# e2e programs over vGPU TCP and shm against their native output and `__copy-data --mib 256` over TCP and shm, for
# this stop's change to asynchronous bulk tails (sent from the app's memory on every transport). Build as gpu-1.sh
# says, at this commit; `.device` carried (with `.device/e2e` from stop 12's build).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/next" "$OUT/copies"
here=$(dirname "$0")
start=$(date +%s)
OUT=$OUT/next timeout 350 bash "$here/../2026-12-06-stop17/next-gpu.sh"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
o=$OUT/copies
progs="copies staged_async overlap pinned_reuse saxpy threads_order"
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
  --only $progs --save "$o/e2e-native" > "$o/e2e-native.log" 2>&1; echo "e2e native: $(tail -1 "$o/e2e-native.log")"
for tr in tcp shm; do
  timeout 90 python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $tr \
    --backend real --expected "$o/e2e-native" --only $progs > "$o/e2e-$tr.log" 2>&1
  echo "e2e $tr: $(tail -1 "$o/e2e-$tr.log")"
done
echo "[$(( $(date +%s) - start ))s] e2e done"
vgpu server --backend real --tcp 127.0.0.1:7090 --shm cd21 --no-tls > "$o/copy-server.log" 2>&1 & srv=$!
for _ in $(seq 120); do grep -q "ready on" "$o/copy-server.log" && break; sleep 0.5; done
for ep in tcp://127.0.0.1:7090 shm://cd21; do
  timeout 45 vgpu run --server $ep -- vgpu __copy-data --kind floats --mib 256 > "$o/copy-${ep%%:*}.txt" 2>&1
  echo "copy-data $ep exit $?"; grep -E "copy-data" "$o/copy-${ep%%:*}.txt"
done
kill $srv; wait $srv 2>/dev/null
echo "[$(( $(date +%s) - start ))s] done"
(cd "$o" && tar czf /tmp/copies.tgz . && find . -mindepth 1 -delete && mv /tmp/copies.tgz .)
