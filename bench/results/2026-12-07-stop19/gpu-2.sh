#!/usr/bin/env bash
# Stop 19, device call 2 (about 4 minutes; two devices of one server need a two-GPU host: emulated only): collectives
# off the channel (server lanes, the app's stream held behind a host counter with cuStreamWaitValue32) on the GPU.
# Build as gpu-1.sh says; run from the repository root, `.device` carried.
#  1. gpu-3.sh: stop 18's gpu-2.sh with these binaries (every collective over TCP, 256 MiB all-reduce bus bandwidth,
#     PyTorch's NCCL process group, torch.cuda.nccl, DDP over NCCL vs native gloo), then tests/torch/ddp_overlap.py
#     with lanes and with VGPU_COLL_WAIT=channel (the channel waits for each collective, as before stop 19).
#  2. __nccl-check over shm between two servers; a 256 MiB cuMemcpyPeer between them over TCP (the all-reduce's floor).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/lean"
here=$(dirname "$0")
export PATH=$PWD/.device/bin:$PATH
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
OUT=$OUT/lean timeout 300 bash "$here/gpu-3.sh"
t "gpu-3.sh done"
pkill -f "vgpu server" 2>/dev/null; sleep 0.5
vgpu server --backend real --tcp 127.0.0.1:7521 --shm ov-a --no-tls --device-identity 1 \
  --peer "tcp://127.0.0.1:7522,shm://ov-b" > "$OUT/server-a.log" 2>&1 &
vgpu server --backend real --tcp 127.0.0.1:7522 --shm ov-b --no-tls --device-identity 2 \
  --peer "tcp://127.0.0.1:7521,shm://ov-a" > "$OUT/server-b.log" 2>&1 &
for f in a b; do for _ in $(seq 120); do grep -q "ready on" "$OUT/server-$f.log" && break; sleep 0.5; done; done
rm -f "$OUT/id-shm"
timeout 90 vgpu run --server shm://ov-a -- vgpu __nccl-check --rank 0 --nranks 2 --id-file "$OUT/id-shm" --bench-mib 256 \
  > "$OUT/nccl-shm-0.txt" 2>&1 &
p0=$!
timeout 90 vgpu run --server shm://ov-b -- vgpu __nccl-check --rank 1 --nranks 2 --id-file "$OUT/id-shm" --bench-mib 256 \
  > "$OUT/nccl-shm-1.txt" 2>&1; e1=$?; wait $p0; e0=$?
echo "nccl-check shm: exit $e0 $e1"; grep -hE "verified|bench|failed|rror" "$OUT/nccl-shm-0.txt" "$OUT/nccl-shm-1.txt" | sort | uniq -c
t "shm done"
# The floor the all-reduce is compared with: a 256 MiB copy between the same two servers over TCP (cuMemcpyPeer).
timeout 60 vgpu run --server tcp://127.0.0.1:7521,tcp://127.0.0.1:7522 -- vgpu __multi-check --bench-mib 256 \
  > "$OUT/peer-floor.txt" 2>&1; echo "peer copy floor (tcp): exit $? $(grep -h "^bench" "$OUT/peer-floor.txt" | tr '\n' ' ')"
t "done"
pkill -f "vgpu server"
(cd "$OUT" && tar czf /tmp/r.tgz . && find . -mindepth 1 -delete && mv /tmp/r.tgz "$OUT/")
