#!/usr/bin/env bash
# Stop 22, device call 4 (about 2 minutes): reset_leak.c natively, then through a vGPU server built before the fix
# (2bee505, `.device/old/vgpu`) and one built after it (`.device/bin/vgpu`), over shm and TCP, sampling the largest
# resident set of any worker process every 0.1 s. Same shims for both (the fix is the server's). `.device` carried.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
export VGPU_SHIM_DIR=$PWD/.device/bin/lib
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
nvcc -o /tmp/reset_leak "$here/reset_leak.c" -lcuda || exit 1
echo "native: $(timeout 60 /tmp/reset_leak 40)"
port=7191
for build in old new; do
  bin=$PWD/.device/bin/vgpu; [ $build = old ] && bin=$PWD/.device/old/vgpu
  for tr in shm tcp; do
    port=$((port + 1)); shm=leak-$build-$tr-$$
    log=$OUT/server-$build-$tr.log
    "$bin" server --backend real --tcp 127.0.0.1:$port --no-tls --shm $shm > "$log" 2>&1 & srv=$!
    for _ in $(seq 120); do grep -q "ready on" "$log" && break; sleep 0.5; done
    ep=shm://$shm; [ $tr = tcp ] && ep=tcp://127.0.0.1:$port
    rss=$OUT/rss-$build-$tr.txt; : > "$rss"
    ( while kill -0 $srv 2>/dev/null; do
        m=0; for p in $(pgrep -f -- "__worker"); do
          r=$(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null); [ -n "$r" ] && [ "$r" -gt $m ] && m=$r; done
        echo "$m" >> "$rss"; sleep 0.1; done ) & smp=$!
    sleep 1
    base=$(sort -n "$rss" | tail -1)
    res=$(timeout 90 "$bin" run --server $ep -- /tmp/reset_leak 40 2>&1 | tail -1)
    sleep 0.5
    peak=$(sort -n "$rss" | tail -1)
    echo "$build $tr: $res; worker resident set before ${base:-?} kB, peak ${peak:-?} kB"
    kill $srv 2>/dev/null; wait $srv 2>/dev/null; kill $smp 2>/dev/null; wait $smp 2>/dev/null
  done
done
