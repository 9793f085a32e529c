#!/usr/bin/env bash
# Stop 19, the lean device call (about 2.5 minutes; gpu-2.sh runs it first): collectives off
# the channel on the GPU. Build as gpu-1.sh says; run from the repository root, `.device` carried.
#  1. stop 18's gpu-2.sh with these binaries (every collective over TCP, 256 MiB all-reduce bus bandwidth, PyTorch's
#     NCCL process group, torch.cuda.nccl, DDP over NCCL against native gloo: rank 0's stale .item() of stop 18).
#  2. tests/torch/ddp_overlap.py, two ranks on two servers over TCP, with lanes and with VGPU_COLL_WAIT=channel.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/nccl"
here=$(dirname "$0")
export PATH=$PWD/.device/bin:$PATH
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
OUT=$OUT/nccl timeout 120 bash "$here/../2026-12-06-stop18/gpu-2.sh"
t "stop 18's gpu-2.sh done"
overlap() { # label, server environment
  local label=$1; shift
  pkill -f "vgpu server" 2>/dev/null; sleep 0.5
  env "$@" vgpu server --backend real --tcp 127.0.0.1:7521 --shm ov-a --no-tls --device-identity 1 \
    --peer "tcp://127.0.0.1:7522" > "$OUT/ov-$label-a.log" 2>&1 &
  env "$@" vgpu server --backend real --tcp 127.0.0.1:7522 --shm ov-b --no-tls --device-identity 2 \
    --peer "tcp://127.0.0.1:7521" > "$OUT/ov-$label-b.log" 2>&1 &
  for f in a b; do for _ in $(seq 120); do grep -q "ready on" "$OUT/ov-$label-$f.log" && break; sleep 0.5; done; done
  local port=$((29700 + RANDOM % 200))
  timeout 70 vgpu run --server tcp://127.0.0.1:7521 -- python3 tests/torch/ddp_overlap.py 0 2 $port \
    > "$OUT/overlap-$label-0.txt" 2>&1 &
  local p0=$!
  timeout 70 vgpu run --server tcp://127.0.0.1:7522 -- python3 tests/torch/ddp_overlap.py 1 2 $port \
    > "$OUT/overlap-$label-1.txt" 2>&1; local e1=$?; wait $p0; local e0=$?
  echo "ddp_overlap $label: exit $e0 $e1"; grep -h "^rank" "$OUT/overlap-$label-0.txt" "$OUT/overlap-$label-1.txt"
  grep -hE "Error|error|refused" "$OUT/overlap-$label-0.txt" "$OUT/ov-$label-a.log" | head -3
  t "overlap $label done"
}
overlap lanes VGPU_X=1
overlap channel-waits VGPU_COLL_WAIT=channel
pkill -f "vgpu server"
(cd "$OUT" && tar czf /tmp/r.tgz . && find . -mindepth 1 -delete && mv /tmp/r.tgz "$OUT/")
