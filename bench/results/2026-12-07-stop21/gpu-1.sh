#!/usr/bin/env bash
# Stop 21, device call 1 (about 9.5 minutes): stop 17's issue-21 measurements first (they never had a machine:
# staged_async natively, compile's compiled step in three rounds natively / TCP / shm with the shm fix, 1 MiB
# striping with fine pieces, `vgpu bench --quick`), then, with what time is left, stop 20's collectives script with
# the review mends' binaries. Build: cargo build --release -p vgpu -p vgpu-client-shim -p vgpu-nvml-shim
# -p vgpu-nccl-shim at this commit; copy vgpu to .device/bin/, libcuda.so, libnvidia_ml.so, libnccl.so to
# .device/bin/lib/ as libcuda.so.1, libnvidia-ml.so.1, libnccl.so.2 (strip --strip-debug); `.device` carried.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/next" "$OUT/coll"
here=$(dirname "$0")
start=$(date +%s)
OUT=$OUT/next timeout 360 bash "$here/../2026-12-06-stop17/next-gpu.sh"
left=$(( 575 - ($(date +%s) - start) ))
echo "==== collectives (stop 20's gpu-2.sh), ${left}s left"
if [ $left -gt 60 ]; then OUT=$OUT/coll timeout $left bash "$here/../2026-12-07-stop20/gpu-2.sh"; fi
(cd "$OUT/coll" && tar czf /tmp/coll.tgz . && find . -mindepth 1 -delete && mv /tmp/coll.tgz .) 2>/dev/null
echo "[$(( $(date +%s) - start ))s] done"
