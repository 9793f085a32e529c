#!/usr/bin/env bash
# Stop 20, device call 1 (about 3 minutes): why DDP over vGPU's NCCL failed with lanes on the H100 in stop 19's run
# (`../2026-12-07-stop19/run-1`: "invalid resource handle" at the watchdog's event query after both servers logged
# "request numbers missing; going ahead out of order", and tests/torch/ddp_overlap.py hanging), against the channel
# waiting for each collective (VGPU_COLL_WAIT=channel). Servers log every call holding its channel 300 ms or more
# (VGPU_SLOW_CALL_MS) and each collective failing on a lane. Build as stop 19's gpu-1.sh says; `.device` carried.
#  1. ddp_two.py natively with gloo (the reference), then through vGPU with NCCL, lanes, then VGPU_COLL_WAIT=channel.
#  2. ddp_overlap.py with lanes (timeout 45 s), then with VGPU_COLL_WAIT=channel.
#  Both again with lanes and the GPU scheduler off (VGPU_SCHED=off): its gate waits for batches whose end events sit
#  on streams held behind a collective, a suspect for the stall.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
servers() { # label, server environment
  local label=$1; shift
  pkill -f "vgpu server" 2>/dev/null; sleep 0.5
  env VGPU_SLOW_CALL_MS=300 "$@" vgpu server --backend real --tcp 127.0.0.1:7531 --shm d-a --no-tls --device-identity 1 \
    --peer "tcp://127.0.0.1:7532" > "$OUT/srv-$label-a.log" 2>&1 &
  env VGPU_SLOW_CALL_MS=300 "$@" vgpu server --backend real --tcp 127.0.0.1:7532 --shm d-b --no-tls --device-identity 2 \
    --peer "tcp://127.0.0.1:7531" > "$OUT/srv-$label-b.log" 2>&1 &
  for f in a b; do for _ in $(seq 120); do grep -q "ready on" "$OUT/srv-$label-$f.log" && break; sleep 0.5; done; done
}
two() { # label, seconds, script args after rank...: runs both ranks through vGPU
  local label=$1 secs=$2; shift 2
  local port=$((29800 + RANDOM % 150))
  timeout "$secs" vgpu run --server tcp://127.0.0.1:7531 -- python3 "$1" 0 2 $port "${@:2}" > "$OUT/$label-0.txt" 2> "$OUT/$label-0.err" &
  local p0=$!
  timeout "$secs" vgpu run --server tcp://127.0.0.1:7532 -- python3 "$1" 1 2 $port "${@:2}" > "$OUT/$label-1.txt" 2> "$OUT/$label-1.err"
  local e1=$?; wait $p0; local e0=$?
  echo "$label: exit $e0 $e1"
}
show() { # label: server warnings, errors
  grep -h -v "^vgpu server" "$OUT/srv-$1-a.log" "$OUT/srv-$1-b.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-220 | sort | uniq -c | sort -rn | head -12
}
port=$((29600 + RANDOM % 150))
for r in 0 1; do timeout 90 python3 tests/torch/ddp_two.py $r 2 $port gloo > "$OUT/native-$r.txt" 2> "$OUT/native-$r.err" & done; wait
t "native gloo done"
servers lanes VGPU_X=1
two ddp-lanes 90 tests/torch/ddp_two.py nccl
for r in 0 1; do diff -q "$OUT/native-$r.txt" "$OUT/ddp-lanes-$r.txt" >/dev/null && echo "  rank $r matches native gloo" \
  || { echo "  rank $r differs:"; grep -v "^frame" "$OUT/ddp-lanes-$r.err" | grep -iE "error|what" | head -3; }; done
two ovl-lanes 45 tests/torch/ddp_overlap.py nccl
grep -h "^rank" "$OUT/ovl-lanes-0.txt" "$OUT/ovl-lanes-1.txt"
show lanes
t "lanes done"
servers nosched VGPU_SCHED=off
two ddp-nosched 90 tests/torch/ddp_two.py nccl
for r in 0 1; do diff -q "$OUT/native-$r.txt" "$OUT/ddp-nosched-$r.txt" >/dev/null && echo "  rank $r matches native gloo" \
  || { echo "  rank $r differs:"; grep -v "^frame" "$OUT/ddp-nosched-$r.err" | grep -iE "error|what" | head -3; }; done
two ovl-nosched 45 tests/torch/ddp_overlap.py nccl
grep -h "^rank" "$OUT/ovl-nosched-0.txt" "$OUT/ovl-nosched-1.txt"
show nosched
t "lanes, scheduler off, done"
servers channel VGPU_COLL_WAIT=channel
two ddp-channel 90 tests/torch/ddp_two.py nccl
for r in 0 1; do diff -q "$OUT/native-$r.txt" "$OUT/ddp-channel-$r.txt" >/dev/null && echo "  rank $r matches native gloo" \
  || { echo "  rank $r differs:"; grep -v "^frame" "$OUT/ddp-channel-$r.err" | grep -iE "error|what" | head -3; }; done
two ovl-channel 60 tests/torch/ddp_overlap.py nccl
grep -h "^rank" "$OUT/ovl-channel-0.txt" "$OUT/ovl-channel-1.txt"
show channel
t "channel done"
pkill -f "vgpu server"
(cd "$OUT" && tar czf /tmp/r.tgz . && find . -mindepth 1 -delete && mv /tmp/r.tgz "$OUT/")
