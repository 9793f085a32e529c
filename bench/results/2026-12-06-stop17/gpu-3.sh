#!/usr/bin/env bash
# Stop 17, GPU run 3 (about 5 minutes): `vgpu bench --quick --repeat 1` (native, TCP, TLS, shm) with one stream per
# channel (VGPU_TCP_STREAMS=1) and with the default 4: TLS lanes' gain on a 16-core host (issue 21), and the shm
# pageable rows after the staged async copies (c0bb17c).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
for n in 1 4; do
  VGPU_TCP_STREAMS=$n timeout 170 vgpu bench --quick --repeat 1 --json "$OUT/bench-streams$n.json" \
    > "$OUT/bench-streams$n.txt" 2>&1; echo "bench streams=$n exit $?"
  grep -E "GB/s|µs|floors|channel" "$OUT/bench-streams$n.txt" | head -24
  echo "[$(( $(date +%s) - start ))s] streams $n done"
done
(cd "$OUT" && tar czf /tmp/gpu-3.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-3.tgz "$OUT/")
