#!/usr/bin/env bash
# Stop 13, GPU run 4 (about 4 minutes): after the mirror change of run 3's finding (a copy from a kernel-pushed
# pinned region reads the mirror or the host's bytes by hashes of just the copied chunks): e2e pinned_reuse,
# overlap and copies over TCP; the DataLoader diagnosis over TCP; PyTorch workloads natively and over TCP.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device --only pinned_reuse overlap copies modules \
  --save "$OUT/e2e-native" > "$OUT/e2e-native.log" 2>&1; echo "e2e native: $(tail -1 "$OUT/e2e-native.log")"
python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport tcp --backend real --only pinned_reuse overlap copies modules \
  --expected "$OUT/e2e-native" --save "$OUT/e2e-tcp" > "$OUT/e2e-tcp.log" 2>&1; echo "e2e tcp: $(tail -1 "$OUT/e2e-tcp.log")"; grep "^FAIL" -A8 "$OUT/e2e-tcp.log" | head -20
setsid .device/bin/vgpu server --backend real --tcp 127.0.0.1:7711 --no-tls --shm vgpu-diag-$$ > "$OUT/server.log" 2>&1 &
SP=$!; for _ in $(seq 100); do grep -q "ready on" "$OUT/server.log" && break; sleep 0.2; done
echo "== DataLoader diagnosis over TCP"; timeout 120 .device/bin/vgpu run --server tcp://127.0.0.1:7711 -- python3 bench/results/2026-12-06-stop13/dataloader_diag.py 2>&1 | tail -8
kill -- -$SP 2>/dev/null; kill $SP 2>/dev/null
t "diag done"
OUT=$OUT/torch MODES="native tcp" WORKLOADS=gpt_train,lm_infer,vision_infer,compile,runtime TORCH_TIMEOUT_S=150 WHAT=torch timeout 240 bash scripts/device-run.sh > "$OUT/torch-run.log" 2>&1
grep -v "^\[" "$OUT"/torch/torch-compare.txt 2>/dev/null | head -40 || tail -20 "$OUT/torch-run.log"
t "done"
(cd "$OUT" && tar czf /tmp/gpu-4.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-4.tgz "$OUT/")
