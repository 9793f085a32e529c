#!/usr/bin/env bash
# Issue 16 on the GPU machine: tests/torch/multi_device.py (two devices in one process) natively and through two
# vGPU servers on the same GPU (distinct virtual GPUs, allowed to send to each other) over TCP and shm, outputs
# compared; tests/torch/ddp_two.py (two-rank DDP) natively with gloo (both ranks on the one GPU) and through
# vGPU with each rank on its own server, gloo and then NCCL. Run from the repository root with .device/bin carried
# (as scripts/device-run.sh). About two minutes; every run is bounded.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PATH="$PWD/.device/bin:$PATH"
PY=${PYTHON:-python3}
pa=$((7300 + RANDOM % 300)); pb=$((pa + 400))
sa="md-a-$$"; sb="md-b-$$"
vgpu server --backend real --tcp 127.0.0.1:$pb --shm "$sb" --no-tls --device-identity 2 \
  --peer "tcp://127.0.0.1:$pa,shm://$sa" > "$OUT/md-server-b.log" 2>&1 &
srv_b=$!
vgpu server --backend real --tcp 127.0.0.1:$pa --shm "$sa" --no-tls --device-identity 1 \
  --peer "tcp://127.0.0.1:$pb,shm://$sb" > "$OUT/md-server-a.log" 2>&1 &
srv_a=$!
for f in a b; do for _ in $(seq 120); do grep -q "ready on" "$OUT/md-server-$f.log" && break; sleep 0.5; done; done
status=0
same() { # name file
  if diff "$OUT/$2-native.txt" "$OUT/$2-$1.txt" > "$OUT/$2-$1.diff"; then echo "  $1: same output as native"
  else echo "  $1: DIFFERS from native:"; head -20 "$OUT/$2-$1.diff"; status=1; fi
}
echo "multi_device.py (two devices, one process)"
timeout 120 $PY tests/torch/multi_device.py > "$OUT/md-native.txt" 2> "$OUT/md-native.err"
echo "  native: exit $? $(tr '\n' ' ' < "$OUT/md-native.err" | tail -c 300)"
for t in tcp shm; do
  if [ $t = tcp ]; then servers="tcp://127.0.0.1:$pa,tcp://127.0.0.1:$pb"; else servers="shm://$sa,shm://$sb"; fi
  VGPU_STATS=1 timeout 180 vgpu run --server "$servers" -- $PY tests/torch/multi_device.py > "$OUT/md-$t.txt" \
    2> "$OUT/md-$t.err"
  echo "  vgpu $t: exit $? $(grep -v '^{' "$OUT/md-$t.err" | tr '\n' ' ' | tail -c 300)"
  same $t md
done
ddp() { # mode backend -> writes ddp-<mode>-<backend>-rank{0,1}
  local port=$((29500 + RANDOM % 1000)) mode=$1 be=$2 r pids=()
  for r in 0 1; do
    if [ $mode = native ]; then
      timeout 120 $PY tests/torch/ddp_two.py $r 2 $port $be > "$OUT/ddp-$mode-$be-$r.txt" 2> "$OUT/ddp-$mode-$be-$r.err" &
    else
      if [ $r = 0 ]; then s=tcp://127.0.0.1:$pa; else s=tcp://127.0.0.1:$pb; fi
      timeout 120 vgpu run --server $s -- $PY tests/torch/ddp_two.py $r 2 $port $be \
        > "$OUT/ddp-$mode-$be-$r.txt" 2> "$OUT/ddp-$mode-$be-$r.err" &
    fi
    pids+=($!)
  done
  for r in 0 1; do wait ${pids[$r]}; echo "  $mode $be rank $r: exit $? $(grep -E 'bus bandwidth|Error|error' "$OUT/ddp-$mode-$be-$r.err" | tail -2 | tr '\n' ' ')"; done
}
echo "ddp_two.py (two ranks)"
ddp native gloo
ddp vgpu gloo
for r in 0 1; do
  if diff "$OUT/ddp-native-gloo-$r.txt" "$OUT/ddp-vgpu-gloo-$r.txt" > "$OUT/ddp-gloo-$r.diff"; then
    echo "  gloo rank $r over two servers: same output as native"
  else echo "  gloo rank $r: DIFFERS:"; head -10 "$OUT/ddp-gloo-$r.diff"; status=1; fi
done
NCCL_DEBUG=WARN ddp vgpu nccl
for r in 0 1; do
  if diff "$OUT/ddp-native-gloo-$r.txt" "$OUT/ddp-vgpu-nccl-$r.txt" > "$OUT/ddp-nccl-$r.diff"; then
    echo "  nccl rank $r over two servers: same output as native gloo"
  else echo "  nccl rank $r: differs from native gloo:"; head -6 "$OUT/ddp-nccl-$r.diff"; fi
done
kill $srv_a $srv_b 2>/dev/null; wait 2>/dev/null
exit $status
