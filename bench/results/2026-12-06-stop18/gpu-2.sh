#!/usr/bin/env bash
# Stop 18, the lean device call (about 3 minutes; gpu-1.sh's budget was spent on refused starts): vGPU's NCCL on the
# GPU. Build as gpu-1.sh says; run from the repository root with `.device` carried.
#  1. `vgpu __nccl-check`, two ranks on two `vgpu server`s of the one GPU over TCP: every collective checked, then
#     256 MiB all-reduce bus bandwidth and the client's bytes during it.
#  2. tests/torch/nccl_collectives.py (PyTorch's NCCL process group, two ranks) and nccl_single_process.py.
#  3. tests/torch/ddp_two.py: two-rank DDP natively with gloo (reference) and through vGPU with NCCL, outputs compared.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
pa=7511; pb=7512
vgpu server --backend real --tcp 127.0.0.1:$pa --shm nc-a --no-tls --device-identity 1 \
  --peer "tcp://127.0.0.1:$pb,shm://nc-b" > "$OUT/nc-server-a.log" 2>&1 &
vgpu server --backend real --tcp 127.0.0.1:$pb --shm nc-b --no-tls --device-identity 2 \
  --peer "tcp://127.0.0.1:$pa,shm://nc-a" > "$OUT/nc-server-b.log" 2>&1 &
for f in a b; do for _ in $(seq 120); do grep -q "ready on" "$OUT/nc-server-$f.log" && break; sleep 0.5; done; done
t "servers ready"
s0=tcp://127.0.0.1:$pa; s1=tcp://127.0.0.1:$pb
timeout 100 vgpu run --server $s0 -- vgpu __nccl-check --rank 0 --nranks 2 --id-file "$OUT/id" --bench-mib 256 \
  > "$OUT/nccl-tcp-0.txt" 2>&1 &
p0=$!
timeout 100 vgpu run --server $s1 -- vgpu __nccl-check --rank 1 --nranks 2 --id-file "$OUT/id" --bench-mib 256 \
  > "$OUT/nccl-tcp-1.txt" 2>&1; e1=$?; wait $p0; e0=$?
echo "nccl-check tcp: exit $e0 $e1"; cat "$OUT/nccl-tcp-0.txt"; grep -E "bench|failed|rror" "$OUT/nccl-tcp-1.txt"
t "nccl-check done"
port=$((29000 + RANDOM % 500))
timeout 80 vgpu run --server $s0 -- python3 tests/torch/nccl_collectives.py 0 2 $port > "$OUT/torch-nccl-0.txt" 2>&1 &
p0=$!
timeout 80 vgpu run --server $s1 -- python3 tests/torch/nccl_collectives.py 1 2 $port > "$OUT/torch-nccl-1.txt" 2>&1
e1=$?; wait $p0; e0=$?
echo "torch nccl_collectives: exit $e0 $e1"; grep -v Warning "$OUT/torch-nccl-0.txt" | tail -9; tail -1 "$OUT/torch-nccl-1.txt"
timeout 60 vgpu run --server $s0,$s1 -- python3 tests/torch/nccl_single_process.py > "$OUT/torch-nccl-single.txt" 2>&1
echo "torch.cuda.nccl single process: exit $? $(tail -1 "$OUT/torch-nccl-single.txt")"
t "torch nccl done"
ddp() { # mode backend
  local port=$((29600 + RANDOM % 300)) r pids=()
  for r in 0 1; do
    if [ $1 = native ]; then
      timeout 90 python3 tests/torch/ddp_two.py $r 2 $port $2 > "$OUT/ddp-$1-$2-$r.txt" 2> "$OUT/ddp-$1-$2-$r.err" &
    else
      s=$s0; [ $r = 1 ] && s=$s1
      timeout 90 vgpu run --server $s -- python3 tests/torch/ddp_two.py $r 2 $port $2 > "$OUT/ddp-$1-$2-$r.txt" \
        2> "$OUT/ddp-$1-$2-$r.err" &
    fi
    pids+=($!)
  done
  for r in 0 1; do wait ${pids[$r]}; echo "  ddp $1 $2 rank $r: exit $? $(grep -E 'bus bandwidth|Error' "$OUT/ddp-$1-$2-$r.err" | tail -2 | tr '\n' ' ')"; done
}
ddp native gloo
ddp vgpu nccl
for r in 0 1; do
  if diff "$OUT/ddp-native-gloo-$r.txt" "$OUT/ddp-vgpu-nccl-$r.txt" > "$OUT/ddp-$r.diff"; then
    echo "  DDP rank $r, NCCL over two vGPU servers: same output as native gloo"
  else echo "  DDP rank $r: differs from native gloo:"; head -8 "$OUT/ddp-$r.diff"; fi
done
t "done"
pkill -f "vgpu server"
(cd "$OUT" && tar czf /tmp/r.tgz . && find . -mindepth 1 -delete && mv /tmp/r.tgz "$OUT/")
