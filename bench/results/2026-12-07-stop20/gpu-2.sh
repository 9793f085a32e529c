#!/usr/bin/env bash
# Stop 20, device call 2 (about 2 minutes): collectives with VGPU_COLL_WAIT unset (auto): a lone collective holds
# its channel, one issued inside an NCCL group runs on its stream's lane. Build as stop 19's gpu-1.sh says; `.device`
# carried.
#  1. stop 18's gpu-2.sh: __nccl-check over TCP (every collective; the send/recv ring on two streams needs lanes),
#     PyTorch's NCCL process group, torch.cuda.nccl, two-rank DDP over vGPU's NCCL against native gloo.
#  2. tests/torch/ddp_overlap.py, two ranks on two servers over TCP.
#  3. ddp_two.py and ddp_overlap.py with VGPU_COLL_WAIT=lanes, frees now waiting for idle lanes (run-1's suspect).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/nccl"
here=$(dirname "$0")
export PATH=$PWD/.device/bin:$PATH
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
OUT=$OUT/nccl timeout 150 bash "$here/../2026-12-06-stop18/gpu-2.sh"
t "stop 18's gpu-2.sh done"
pkill -f "vgpu server" 2>/dev/null; sleep 0.5
for x in a:7521:7522:1 b:7522:7521:2; do
  IFS=: read -r f p q id <<< "$x"
  VGPU_SLOW_CALL_MS=300 vgpu server --backend real --tcp 127.0.0.1:$p --shm ov-$f --no-tls --device-identity $id \
    --peer "tcp://127.0.0.1:$q" > "$OUT/ov-$f.log" 2>&1 &
done
for f in a b; do for _ in $(seq 120); do grep -q "ready on" "$OUT/ov-$f.log" && break; sleep 0.5; done; done
port=$((29700 + RANDOM % 200))
timeout 60 vgpu run --server tcp://127.0.0.1:7521 -- python3 tests/torch/ddp_overlap.py 0 2 $port > "$OUT/ovl-0.txt" 2>&1 &
p0=$!
timeout 60 vgpu run --server tcp://127.0.0.1:7522 -- python3 tests/torch/ddp_overlap.py 1 2 $port > "$OUT/ovl-1.txt" 2>&1
e1=$?; wait $p0; e0=$?
echo "ddp_overlap auto: exit $e0 $e1"; grep -h "^rank" "$OUT/ovl-0.txt" "$OUT/ovl-1.txt"
grep -h -v "^vgpu server" "$OUT/ov-a.log" "$OUT/ov-b.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-200 | head -8
t "auto done"
# Lanes for every collective again, now that frees wait for the session's lanes to be idle (the suspect of run-1).
pkill -f "vgpu server" 2>/dev/null; sleep 0.5
for x in a:7521:7522:1 b:7522:7521:2; do
  IFS=: read -r f p q id <<< "$x"
  VGPU_COLL_WAIT=lanes VGPU_SLOW_CALL_MS=300 vgpu server --backend real --tcp 127.0.0.1:$p --shm ln-$f --no-tls \
    --device-identity $id --peer "tcp://127.0.0.1:$q" > "$OUT/ln-$f.log" 2>&1 &
done
for f in a b; do for _ in $(seq 120); do grep -q "ready on" "$OUT/ln-$f.log" && break; sleep 0.5; done; done
for script in ddp_two ddp_overlap; do
  port=$((29500 + RANDOM % 100)); extra=""; [ $script = ddp_two ] && extra=nccl
  timeout 50 vgpu run --server tcp://127.0.0.1:7521 -- python3 tests/torch/$script.py 0 2 $port $extra > "$OUT/ln-$script-0.txt" 2> "$OUT/ln-$script-0.err" &
  p0=$!
  timeout 50 vgpu run --server tcp://127.0.0.1:7522 -- python3 tests/torch/$script.py 1 2 $port $extra > "$OUT/ln-$script-1.txt" 2> "$OUT/ln-$script-1.err"
  e1=$?; wait $p0; e0=$?
  echo "$script with lanes for all: exit $e0 $e1"
  [ $script = ddp_two ] && for r in 0 1; do diff -q "$OUT/nccl/ddp-native-gloo-$r.txt" "$OUT/ln-ddp_two-$r.txt" >/dev/null 2>&1 \
    && echo "  rank $r matches native gloo" || echo "  rank $r differs"; done
  grep -h "^rank" "$OUT/ln-$script-0.txt" "$OUT/ln-$script-1.txt"
done
grep -h -v "^vgpu server" "$OUT/ln-a.log" "$OUT/ln-b.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-200 | head -8
t "done"
pkill -f "vgpu server"
(cd "$OUT" && tar czf /tmp/r.tgz . && find . -mindepth 1 -delete && mv /tmp/r.tgz "$OUT/")
