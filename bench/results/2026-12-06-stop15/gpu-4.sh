#!/usr/bin/env bash
# Stop 15, GPU run 4 (about 2 minutes): DDP gloo with ranks on two servers gives stale all_gather values of the
# losses from step 2 on (run 3): the same over TCP with the shim's debug log (mirror decisions) on rank 0, and
# with both ranks on one server over shm, for comparison.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
pa=$((7300 + RANDOM % 300)); pb=$((pa + 400))
vgpu server --backend real --tcp 127.0.0.1:$pa --shm d4-a --no-tls --device-identity 1 > "$OUT/server-a.log" 2>&1 & srv_a=$!
vgpu server --backend real --tcp 127.0.0.1:$pb --shm d4-b --no-tls --device-identity 2 > "$OUT/server-b.log" 2>&1 & srv_b=$!
for f in a b; do for _ in $(seq 120); do grep -q "ready on" "$OUT/server-$f.log" && break; sleep 0.5; done; done
port=$((29500 + RANDOM % 1000))
timeout 120 python3 tests/torch/ddp_two.py 0 2 $port gloo > "$OUT/native-0.txt" 2> "$OUT/native-0.err" & p0=$!
timeout 120 python3 tests/torch/ddp_two.py 1 2 $port gloo > "$OUT/native-1.txt" 2> "$OUT/native-1.err"; wait $p0
port=$((29500 + RANDOM % 1000))
VGPU_LOG=debug timeout 120 vgpu run --server tcp://127.0.0.1:$pa -- python3 tests/torch/ddp_two.py 0 2 $port gloo > "$OUT/tcp-0.txt" 2> "$OUT/tcp-0.err" & p0=$!
timeout 120 vgpu run --server tcp://127.0.0.1:$pb -- python3 tests/torch/ddp_two.py 1 2 $port gloo > "$OUT/tcp-1.txt" 2> "$OUT/tcp-1.err"; wait $p0
port=$((29500 + RANDOM % 1000))
timeout 120 vgpu run --server shm://d4-a -- python3 tests/torch/ddp_two.py 0 2 $port gloo > "$OUT/shm-0.txt" 2> "$OUT/shm-0.err" & p0=$!
timeout 120 vgpu run --server shm://d4-b -- python3 tests/torch/ddp_two.py 1 2 $port gloo > "$OUT/shm-1.txt" 2> "$OUT/shm-1.err"; wait $p0
for m in tcp shm; do for r in 0 1; do
  if diff "$OUT/native-$r.txt" <(cat "$OUT/$m-$r.txt") > /dev/null; then echo "$m rank $r: same as native"; else echo "$m rank $r: DIFFERS"; diff "$OUT/native-$r.txt" "$OUT/$m-$r.txt" | head -8; fi
done; done
grep -c "" "$OUT/tcp-0.err"; grep -E "^@@|mirror 0x" "$OUT/tcp-0.err" | head -5
kill $srv_a $srv_b 2>/dev/null; wait $srv_a $srv_b 2>/dev/null
(cd "$OUT" && tar czf /tmp/gpu-4.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-4.tgz "$OUT/")
