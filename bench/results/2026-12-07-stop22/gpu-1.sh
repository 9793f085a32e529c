#!/usr/bin/env bash
# Stop 22, device call 1 (about 9.5 minutes): issue 21's missing loopback medians with the binaries of 2bee505.
# (1) a full round of all seven PyTorch workloads natively / TCP / shm (stop 21's gpu-2b.sh, never run there);
# (2) vision_infer in two rounds (stop 21's gpu-3.sh: the ViT-B/16 row over TCP); (3) with what is left,
# compile in further rounds (the compiled step's median). Build: cargo build --release -p vgpu -p vgpu-client-shim
# -p vgpu-nvml-shim -p vgpu-nccl-shim; vgpu to .device/bin/, libcuda.so, libnvidia_ml.so, libnccl.so to
# .device/bin/lib/ as libcuda.so.1, libnvidia-ml.so.1, libnccl.so.2 (strip --strip-debug); `.device` carried.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
start=$(date +%s)
OUT=$OUT/a FULL_TIMEOUT_S=300 bash "$here/../2026-12-07-stop21/gpu-2b.sh"
echo "[$(( $(date +%s) - start ))s] full round done"
OUT=$OUT/b VISION_TIMEOUT_S=150 bash "$here/../2026-12-07-stop21/gpu-3.sh"
(cd "$OUT/b" && tar czf /tmp/vision.tgz vision && rm -rf vision && mv /tmp/vision.tgz .) 2>/dev/null
left=$(( 580 - ($(date +%s) - start) ))
echo "==== compile rounds, ${left}s left"
if [ $left -gt 70 ]; then
  export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
  OUT=$OUT/c/compile ROUNDS=3 MODES="native tcp shm" SPLIT=1 WARMUP=1 TORCH_TIMEOUT_S=40 WORKLOADS=compile \
    timeout $(( left - 10 )) bash tests/torch/run-device.sh > "$OUT/c-compile.log" 2>&1; echo "compile exit $?"
  grep -E "^=== |compile|_ms" "$OUT/c-compile.log" | grep -v "^  workload" | head -30
  cp "$OUT"/c/compile/torch-medians.* "$OUT/" 2>/dev/null
  for r in 1 2 3; do cp "$OUT/c/compile/round-$r/torch-compare.json" "$OUT/compile-round-$r.json" 2>/dev/null; done
  (cd "$OUT" && tar czf c.tgz c && rm -rf c) 2>/dev/null
fi
echo "[$(( $(date +%s) - start ))s] done"
