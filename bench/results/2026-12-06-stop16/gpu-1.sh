#!/usr/bin/env bash
# Stop 16, GPU run 1 (about 6 minutes): e2e (28 programs) natively, over TCP, TLS, shm, and TCP with VGPU_COMPRESS=lz4
# (stop 15's changes after its last GPU run, and striped TCP channels: a channel that has moved 8 MiB opens lanes);
# then the copy probe through the 100G x 10 us link shape (and loopback, and the unshaped relay) with one TCP stream
# per channel (VGPU_TCP_STREAMS=1, as before this stop), 4 (the new default) and 8.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
  --save "$OUT/e2e-native" > "$OUT/e2e-native.log" 2>&1; echo "e2e native: $(tail -1 "$OUT/e2e-native.log")"
grep "^FAIL" -A8 "$OUT/e2e-native.log" | head -20
for tr in tcp tls shm lz4; do
  if [ $tr = lz4 ]; then env=(VGPU_COMPRESS=lz4); wire=tcp; else env=(VGPU_COMPRESS=off); wire=$tr; fi
  env "${env[@]}" python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $wire \
    --backend real --expected "$OUT/e2e-native" > "$OUT/e2e-$tr.log" 2>&1
  echo "e2e $tr: $(tail -1 "$OUT/e2e-$tr.log")"; grep "^FAIL" -A8 "$OUT/e2e-$tr.log" | head -20
done
t "e2e done"
for n in 1 4 8; do
  VGPU_TCP_STREAMS=$n timeout 150 vgpu bench --links 100g-10us --repeat 1 --json "$OUT/links-streams$n.json" \
    > "$OUT/links-streams$n.txt" 2>&1; echo "links streams=$n exit $?"
  grep -iE "pinned|pageable|floor|stream" "$OUT/links-streams$n.txt" | head -14
  t "streams $n done"
done
(cd "$OUT" && tar czf /tmp/gpu-1.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-1.tgz "$OUT/")
