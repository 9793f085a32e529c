#!/usr/bin/env bash
# Stop 19, device call 2 (about 4 minutes; two devices of one server need a two-GPU host: emulated only): collectives off the channel (server lanes, the app's stream held behind a
# host counter with cuStreamWaitValue32) on the GPU. Build as gpu-1.sh says; run from the repository root, `.device`
# carried.
#  1. stop 18's gpu-2.sh with these binaries: __nccl-check over TCP (every collective; 256 MiB all-reduce bus
#     bandwidth), PyTorch's NCCL process group, torch.cuda.nccl (two servers), DDP over NCCL vs native gloo.
#  2. __nccl-check over shm between the servers; a 256 MiB cuMemcpyPeer between them over TCP (the all-reduce's floor).
#  3. tests/torch/ddp_overlap.py, two ranks on two servers: DDP step vs its backward alone and its all-reduces alone,
#     with lanes and with VGPU_COLL_WAIT=channel (the channel waits for each collective, as before stop 19).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/nccl"
here=$(dirname "$0")
export PATH=$PWD/.device/bin:$PATH
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
OUT=$OUT/nccl timeout 150 bash "$here/../2026-12-06-stop18/gpu-2.sh"
t "stop 18's gpu-2.sh done"
servers() { # extra environment for both servers
  pkill -f "vgpu server" 2>/dev/null; sleep 0.5
  env "$@" vgpu server --backend real --tcp 127.0.0.1:7521 --shm ov-a --no-tls --device-identity 1 \
    --peer "tcp://127.0.0.1:7522,shm://ov-b" > "$OUT/ov-server-a.log" 2>&1 &
  env "$@" vgpu server --backend real --tcp 127.0.0.1:7522 --shm ov-b --no-tls --device-identity 2 \
    --peer "tcp://127.0.0.1:7521,shm://ov-a" > "$OUT/ov-server-b.log" 2>&1 &
  for f in a b; do for _ in $(seq 120); do grep -q "ready on" "$OUT/ov-server-$f.log" && break; sleep 0.5; done; done
}
servers VGPU_X=1
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
overlap() { # label, server environment
  local label=$1; shift
  servers "$@"
  local port=$((29700 + RANDOM % 200))
  timeout 120 vgpu run --server tcp://127.0.0.1:7521 -- python3 tests/torch/ddp_overlap.py 0 2 $port \
    > "$OUT/overlap-$label-0.txt" 2>&1 &
  local p0=$!
  timeout 120 vgpu run --server tcp://127.0.0.1:7522 -- python3 tests/torch/ddp_overlap.py 1 2 $port \
    > "$OUT/overlap-$label-1.txt" 2>&1; local e1=$?; wait $p0; local e0=$?
  echo "ddp_overlap $label: exit $e0 $e1"; grep -h "^rank" "$OUT/overlap-$label-0.txt" "$OUT/overlap-$label-1.txt"
  grep -hE "Error|error" "$OUT/overlap-$label-0.txt" | head -3
}
overlap lanes VGPU_X=1
overlap channel-waits VGPU_COLL_WAIT=channel

t "done"
pkill -f "vgpu server"
(cd "$OUT" && tar czf /tmp/r.tgz . && find . -mindepth 1 -delete && mv /tmp/r.tgz "$OUT/")
