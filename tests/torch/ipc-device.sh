#!/usr/bin/env bash
# tests/torch/ipc.py natively, then through vGPU (real backend) over TCP and shared memory, with the default
# caching allocator and with expandable segments (VMM memory shared as file descriptors); each output must equal
# the native one. Run on the GPU machine from the repository root with .device/bin carried (as
# scripts/device-run.sh: .device/bin/vgpu, .device/bin/lib/libcuda.so.1). About a minute; every run is bounded.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PATH="$PWD/.device/bin:$PATH"
PY=${PYTHON:-python3}
port=$((7200 + RANDOM % 500))
shm="ipc-torch-$$"
vgpu server --backend real --tcp 127.0.0.1:$port --shm "$shm" > "$OUT/ipc-server.log" 2>&1 &
server=$!
for _ in $(seq 120); do grep -q "ready on" "$OUT/ipc-server.log" && break; sleep 0.5; done
status=0
for alloc in default expandable_segments:True; do
  tag=${alloc%%:*}
  if [ "$alloc" = default ]; then unset PYTORCH_CUDA_ALLOC_CONF; else export PYTORCH_CUDA_ALLOC_CONF=$alloc; fi
  timeout 60 $PY tests/torch/ipc.py > "$OUT/ipc-$tag-native.txt" 2> "$OUT/ipc-$tag-native.err"
  echo "native ($alloc): exit $? $(tail -1 "$OUT/ipc-$tag-native.txt")"
  for t in tcp://127.0.0.1:$port shm://$shm; do
    name=${t%%:*}
    timeout 60 vgpu run --server "$t" -- $PY tests/torch/ipc.py > "$OUT/ipc-$tag-$name.txt" 2> "$OUT/ipc-$tag-$name.err"
    rc=$?
    if diff "$OUT/ipc-$tag-native.txt" "$OUT/ipc-$tag-$name.txt" > "$OUT/ipc-$tag-$name.diff"; then
      echo "vgpu $name ($alloc): exit $rc, same output as native"
    else
      echo "vgpu $name ($alloc): exit $rc, DIFFERS from native:"; head -20 "$OUT/ipc-$tag-$name.diff"; status=1
    fi
    [ $rc -eq 0 ] || status=1
  done
done
kill $server 2>/dev/null; wait $server 2>/dev/null
exit $status
