#!/usr/bin/env bash
# PyTorch's NCCL process group over vGPU's libnccl.so.2 on the emulated backend (CI, issue 16): two ranks, each on
# its own `vgpu server` (allowed to send to each other), over TCP and over shm, run tests/torch/nccl_collectives.py,
# whose values only copies produce (kernels do not run on the emulated backend; copies and collectives do); then one
# process driving both devices through torch.cuda.nccl (tests/torch/nccl_single_process.py), with the devices on two
# servers and on one.
#   tests/torch/nccl-emulated.sh VGPU PYTHON     (ends with "N passed, N failed")
set -u
VGPU=${1:?vgpu binary}; PY=${2:?python with torch}
dir=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
tag="nccl-$$"; pa=$((20000 + RANDOM % 20000)); pb=$((pa + 1))
"$VGPU" server --backend emulated --tcp 127.0.0.1:$pa --no-tls --shm "$tag-a" --device-identity 1 \
  --state-dir "$dir/a" --peer "tcp://127.0.0.1:$pb,shm://$tag-b" > "$dir/server-a.log" 2>&1 &
"$VGPU" server --backend emulated --tcp 127.0.0.1:$pb --no-tls --shm "$tag-b" --device-identity 2 \
  --state-dir "$dir/b" --peer "tcp://127.0.0.1:$pa,shm://$tag-a" > "$dir/server-b.log" 2>&1 &
# A third server with two devices that may send to itself: one process's two ranks on one server (below).
pc=$((pa + 2))
VGPU_EMULATED_DEVICES=2 "$VGPU" server --backend emulated --tcp 127.0.0.1:$pc --no-tls --device-identity 3 \
  --state-dir "$dir/c" --peer "tcp://127.0.0.1:$pc" > "$dir/server-c.log" 2>&1 &
for f in a b c; do for _ in $(seq 120); do grep -q "ready on" "$dir/server-$f.log" && break; sleep 0.5; done; done
pass=0; fail=0
for tr in tcp shm; do
  if [ $tr = tcp ]; then s0=tcp://127.0.0.1:$pa; s1=tcp://127.0.0.1:$pb; else s0=shm://$tag-a; s1=shm://$tag-b; fi
  port=$((30000 + RANDOM % 20000))
  timeout 240 "$VGPU" run --server $s0 -- "$PY" tests/torch/nccl_collectives.py 0 2 $port > "$dir/r0.log" 2>&1 &
  p0=$!
  timeout 240 "$VGPU" run --server $s1 -- "$PY" tests/torch/nccl_collectives.py 1 2 $port > "$dir/r1.log" 2>&1
  e1=$?; wait $p0; e0=$?
  for r in 0 1; do
    e=$e0; [ $r = 1 ] && e=$e1
    if [ "$e" = 0 ] && grep -q "^rank $r: all ok" "$dir/r$r.log"; then
      echo "PASS torch NCCL over two servers ($tr), rank $r: $(grep -v "all ok" "$dir/r$r.log" | grep -c " ok$") collectives checked"
      pass=$((pass + 1))
    else
      echo "FAIL torch NCCL over two servers ($tr), rank $r (exit $e):"; tail -15 "$dir/r$r.log"
      fail=$((fail + 1))
    fi
  done
done
# One process driving both devices (torch.cuda.nccl: ncclCommInitAll, one thread).
single() { # what, servers, log name
  local start=$(date +%s) e
  timeout 240 "$VGPU" run --server "$2" -- "$PY" tests/torch/nccl_single_process.py > "$dir/$3.log" 2>&1
  e=$?
  if [ $e = 0 ] && grep -q "^all ok" "$dir/$3.log"; then
    echo "PASS torch.cuda.nccl, $1: $(grep -v "all ok" "$dir/$3.log" | grep -c " ok$") checks in $(( $(date +%s) - start )) s"
    pass=$((pass + 1))
  else
    echo "FAIL torch.cuda.nccl, $1 (exit $e):"; tail -15 "$dir/$3.log"; fail=$((fail + 1))
  fi
}
single "one process, two devices on two servers" "tcp://127.0.0.1:$pa,tcp://127.0.0.1:$pb" single
# Both devices on one server: each collective runs on its stream's lane on the server, so the first rank's does not
# hold the channel the second rank's call comes on (it did until stop 19: the two waited for each other until the
# peer wait ended).
single "one thread, two devices of one server" "tcp://127.0.0.1:$pc" one
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
