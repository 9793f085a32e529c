#!/usr/bin/env bash
# Stop 13, GPU run 1: overlap over TCP with the server before (.device/bin/vgpu-old: a release build of f481736) and
# after the pinned-buffer pool fix (8512a3d); the DataLoader diagnosis natively and through vGPU over TCP and shm.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
  --only overlap --save "$OUT/e2e-native" > "$OUT/e2e-native.log" 2>&1; echo "native: $(tail -1 "$OUT/e2e-native.log")"; grep timing "$OUT/e2e-native/overlap"* 
for v in vgpu-old vgpu; do for tr in tcp shm; do
  python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/$v --transport $tr --backend real \
    --expected "$OUT/e2e-native" --only overlap --save "$OUT/e2e-$v-$tr" > "$OUT/e2e-$v-$tr.log" 2>&1; echo "== $v $tr: $(tail -1 "$OUT/e2e-$v-$tr.log")"; grep -h "timing\|overlap seen" "$OUT/e2e-$v-$tr"/* | head -4
done; done
t "overlap done"
# DataLoader diagnosis: native, then through vGPU over TCP and shm.
echo "== native"; timeout 120 python3 bench/results/2026-12-06-stop13/dataloader_diag.py 2>&1 | tail -30
setsid .device/bin/vgpu server --backend real --tcp 127.0.0.1:7711 --no-tls --shm vgpu-diag-$$ > "$OUT/server.log" 2>&1 &
SP=$!; for _ in $(seq 100); do grep -q "ready on" "$OUT/server.log" && break; sleep 0.2; done
for url in tcp://127.0.0.1:7711 shm://vgpu-diag-$$; do
  echo "== vgpu $url"; VGPU_STATS=$OUT/stats-%p.json timeout 150 .device/bin/vgpu run --server $url -- python3 bench/results/2026-12-06-stop13/dataloader_diag.py 2>&1 | tail -30
  t "$url done"
done
kill -- -$SP 2>/dev/null; kill $SP 2>/dev/null
t "diag done"
OUT=$OUT/torch MODES="tcp" WORKLOADS=runtime TORCH_TIMEOUT_S=100 WHAT=torch timeout 150 bash scripts/device-run.sh 2>&1 | grep -A12 "=== vgpu-tcp" | head -14
t "all done"
(cd "$OUT" && tar czf /tmp/gpu-1.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-1.tgz "$OUT/")
