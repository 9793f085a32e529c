#!/usr/bin/env bash
# Stop 21, device call 2 (about 9 minutes), binaries of this stop's RDMA change (async bulk tails now sent from the
# app's memory on every transport: checked here over TCP and shm on the GPU). Build as gpu-1.sh says; `.device`
# carried (with `.device/e2e` from stop 12's build).
#  1. The copy-heavy e2e programs natively (saved), then over vGPU TCP and shm against that output.
#  2. `vgpu __copy-data --mib 256` over TCP and shm: pageable and pinned, sync and async, every byte checked.
#  3. The loopback table: all seven PyTorch workloads, each in its own process, natively / TCP / shm (a third full
#     round for issue 21's medians, after stop 16 run 3 and stop 17 run 1).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
progs="copies staged_async overlap pinned_reuse saxpy threads_order sync_scope"
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
  --only $progs --save "$OUT/e2e-native" > "$OUT/e2e-native.log" 2>&1; echo "e2e native: $(tail -1 "$OUT/e2e-native.log")"
for tr in tcp shm; do
  timeout 120 python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $tr \
    --backend real --expected "$OUT/e2e-native" --only $progs > "$OUT/e2e-$tr.log" 2>&1
  echo "e2e $tr: $(tail -1 "$OUT/e2e-$tr.log")"
done
t "e2e done"
vgpu server --backend real --tcp 127.0.0.1:7090 --shm cd21 --no-tls > "$OUT/copy-server.log" 2>&1 & srv=$!
for _ in $(seq 120); do grep -q "ready on" "$OUT/copy-server.log" && break; sleep 0.5; done
for ep in tcp://127.0.0.1:7090 shm://cd21; do
  timeout 60 vgpu run --server $ep -- vgpu __copy-data --kind floats --mib 256 > "$OUT/copy-${ep%%:*}.txt" 2>&1
  echo "copy-data $ep exit $?"; grep -E "copy-data" "$OUT/copy-${ep%%:*}.txt"
done
kill $srv; wait $srv 2>/dev/null
t "copy-data done"
left=$(( 565 - ($(date +%s) - start) ))
OUT=$OUT/full MODES="native tcp shm" SPLIT=1 WARMUP=1 TORCH_TIMEOUT_S=70 \
  WORKLOADS=gpt_train,vision_infer,lm_infer,compile,cuda_graph,resnet18_train,small_ops \
  timeout $left bash tests/torch/run-device.sh > "$OUT/torch-full.log" 2>&1; echo "full round exit $?"
grep -E "^=== |=> " "$OUT/full/torch-compare.txt" | head -40
t "done"
(cd "$OUT" && tar czf /tmp/gpu-2.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-2.tgz "$OUT/")
