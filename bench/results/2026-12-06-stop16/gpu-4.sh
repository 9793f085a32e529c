#!/usr/bin/env bash
# Stop 16, GPU run 4 (about 4 minutes), with a99cd34 (pitched rows server to server): two real-backend servers on the
# GPU, each naming the other as a peer; `vgpu __multi-check --bench-mib 256` through both over TCP and shm (every copy
# entry point between them verified, the contiguous and the pitched bench with the client's bytes), and with
# VGPU_PEER_COPY=relay for comparison; then tests/torch/multi-device.sh (its transposed and sliced copies between the
# two devices are pitched).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
pa=7171; pb=7172; sa=mc-a-$$; sb=mc-b-$$
vgpu server --backend real --tcp 127.0.0.1:$pb --shm "$sb" --no-tls --device-identity 2 \
  --peer "tcp://127.0.0.1:$pa,shm://$sa" > "$OUT/mc-server-b.log" 2>&1 &
vgpu server --backend real --tcp 127.0.0.1:$pa --shm "$sa" --no-tls --device-identity 1 \
  --peer "tcp://127.0.0.1:$pb,shm://$sb" > "$OUT/mc-server-a.log" 2>&1 &
for _ in $(seq 120); do grep -q "ready on" "$OUT/mc-server-a.log" && grep -q "ready on" "$OUT/mc-server-b.log" && break; sleep 0.5; done
for servers in "tcp://127.0.0.1:$pa,tcp://127.0.0.1:$pb" "shm://$sa,shm://$sb"; do
  for how in direct relay; do
    if [ $how = relay ]; then env=(VGPU_PEER_COPY=relay); else env=(VGPU_PEER_COPY=direct); fi
    echo "== $servers $how"
    env "${env[@]}" timeout 120 vgpu run --server "$servers" -- vgpu __multi-check --bench-mib 256 2>&1 | tee -a "$OUT/multi-check.txt" |
      grep -E "verified|WRONG|bench|FAIL|rror" | grep -vE "^(peer|async peer|dtod|unified) copy .*verified$"
  done
done
kill %1 %2; wait 2>/dev/null
t "multi-check done"
OUT=$OUT/multi timeout 220 bash tests/torch/multi-device.sh 2>&1 | tee "$OUT/multi-device.txt" | head -12
t "done"
(cd "$OUT" && tar czf /tmp/gpu-4.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-4.tgz "$OUT/")
