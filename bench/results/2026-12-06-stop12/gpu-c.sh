#!/usr/bin/env bash
# Stop 12, GPU run C (about 6 minutes): after run B's fixes (cuMemHostUnregister no longer routes its mirror's
# unmap under the registry's lock; cuEventCreate refuses an interprocess event with timing; the ipc program checks
# what driver 580 reports for an imported handle): e2e ipc and overlap natively and through vGPU over TCP and shm,
# tests/cuda host_register over TCP, the PyTorch runtime workload over TCP (run B: mismatch), tests/cuda over TLS
# and shm (run B ran out of time after TCP). Run from the repository root with .device/ carried.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
  --only ipc overlap --save "$OUT/e2e-native" > "$OUT/e2e-native.log" 2>&1; echo "native: $(tail -1 "$OUT/e2e-native.log")"
for tr in tcp shm; do
  python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $tr --backend real \
    --expected "$OUT/e2e-native" --only ipc overlap > "$OUT/e2e-$tr.log" 2>&1; echo "== $tr"; grep -v "^starting\|^server ready" "$OUT/e2e-$tr.log" | tail -12
done
python3 tests/cuda/run.py build --nvcc /usr/local/cuda/bin/nvcc --out target/cuda-device > "$OUT/cuda-build.log" 2>&1
python3 tests/cuda/run.py run --bins target/cuda-device --mode native --no-device --expected tests/cuda/expected --save "$OUT/cuda-native" > "$OUT/cuda-native.log" 2>&1
echo "cuda native: $(tail -1 "$OUT/cuda-native.log")"
python3 tests/cuda/run.py run --bins target/cuda-device --mode vgpu --vgpu .device/bin/vgpu --transport tcp --backend real \
  --expected "$OUT/cuda-native" --only host_register > "$OUT/cuda-tcp-hostreg.log" 2>&1; tail -6 "$OUT/cuda-tcp-hostreg.log"
t "host_register done"
OUT=$OUT/torch MODES="native tcp" WORKLOADS=runtime TORCH_TIMEOUT_S=100 WHAT=torch timeout 150 bash scripts/device-run.sh 2>&1 | grep -A12 "=== vgpu-tcp" | head -14
t "torch runtime done"
for tr in tls shm; do
  python3 tests/cuda/run.py run --bins target/cuda-device --mode vgpu --vgpu .device/bin/vgpu --transport $tr --backend real \
    --expected "$OUT/cuda-native" > "$OUT/cuda-$tr.log" 2>&1; echo "cuda vgpu $tr: $(tail -1 "$OUT/cuda-$tr.log")"; grep "^FAIL" "$OUT/cuda-$tr.log" | head -5
  [ $(( $(date +%s) - start )) -gt 480 ] && break
done
t "done"
(cd "$OUT" && tar czf /tmp/gpu-c.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-c.tgz "$OUT/")
