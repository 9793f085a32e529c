#!/usr/bin/env bash
# Stop 13, GPU run 2 (about 8 minutes): after the pinned-buffer pool fix (server), the mirror pulls that bring back
# only what device work changed, occupancy answers remembered and one function per kernel and context (shim):
# e2e natively and through vGPU over TCP and shm; the DataLoader diagnosis (dataloader_diag.py) natively and over
# TCP; PyTorch runtime and gpt_train natively, over TCP and shm; tests/cuda over TCP. Run from the repository root
# with .device/ carried (release vgpu, shims, e2e programs built here).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
  --save "$OUT/e2e-native" > "$OUT/e2e-native.log" 2>&1; echo "e2e native: $(tail -1 "$OUT/e2e-native.log")"; grep "^FAIL" -A8 "$OUT/e2e-native.log" | head -30
for tr in tcp shm; do
  python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $tr --backend real \
    --expected "$OUT/e2e-native" --save "$OUT/e2e-$tr" > "$OUT/e2e-$tr.log" 2>&1; echo "e2e $tr: $(tail -1 "$OUT/e2e-$tr.log")"; grep "^FAIL" -A8 "$OUT/e2e-$tr.log" | head -30
done
grep -h "timing:" "$OUT"/e2e-*/overlap* 2>/dev/null
t "e2e done"
setsid .device/bin/vgpu server --backend real --tcp 127.0.0.1:7711 --no-tls --shm vgpu-diag-$$ > "$OUT/server.log" 2>&1 &
SP=$!; for _ in $(seq 100); do grep -q "ready on" "$OUT/server.log" && break; sleep 0.2; done
echo "== DataLoader diagnosis over TCP"; timeout 120 .device/bin/vgpu run --server tcp://127.0.0.1:7711 -- python3 bench/results/2026-12-06-stop13/dataloader_diag.py 2>&1 | tail -12
kill -- -$SP 2>/dev/null; kill $SP 2>/dev/null
t "diag done"
OUT=$OUT/torch MODES="native tcp shm" WORKLOADS=runtime,gpt_train TORCH_TIMEOUT_S=150 WHAT=torch timeout 300 bash scripts/device-run.sh > "$OUT/torch-run.log" 2>&1
grep -v "^\[" "$OUT"/torch/torch-compare.txt 2>/dev/null | head -40 || tail -20 "$OUT/torch-run.log"
t "torch done"
if [ $(( $(date +%s) - start )) -lt 330 ]; then
  python3 tests/cuda/run.py build --nvcc /usr/local/cuda/bin/nvcc --out target/cuda-device > "$OUT/cuda-build.log" 2>&1
  python3 tests/cuda/run.py run --bins target/cuda-device --mode native --no-device --expected tests/cuda/expected --save "$OUT/cuda-native" > "$OUT/cuda-native.log" 2>&1
  echo "cuda native: $(tail -1 "$OUT/cuda-native.log")"
  timeout $(( 540 - ($(date +%s) - start) )) python3 tests/cuda/run.py run --bins target/cuda-device --mode vgpu --vgpu .device/bin/vgpu --transport tcp --backend real \
    --expected "$OUT/cuda-native" > "$OUT/cuda-tcp.log" 2>&1; echo "cuda vgpu tcp: $(tail -1 "$OUT/cuda-tcp.log")"; grep "^FAIL" "$OUT/cuda-tcp.log" | head -5
fi
t "done"
(cd "$OUT" && tar czf /tmp/gpu-2.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-2.tgz "$OUT/")
