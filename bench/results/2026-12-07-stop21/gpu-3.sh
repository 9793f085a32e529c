#!/usr/bin/env bash
# Stop 21, device call 3 (about 2.5 minutes, what the budget left after gpu-2b.sh's three refused starts allows):
# vision_infer (ResNet-50 and ViT-B/16 inference) in two rounds natively / TCP / shm, for the ViT row whose median
# over two earlier rounds (1.02, 1.24) did not settle. `.device` carried (this stop's binaries).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
OUT=$OUT/vision ROUNDS=2 MODES="native tcp shm" SPLIT=1 WARMUP=1 TORCH_TIMEOUT_S=40 WORKLOADS=vision_infer \
  timeout ${VISION_TIMEOUT_S:-140} bash tests/torch/run-device.sh > "$OUT/torch-vision.log" 2>&1; echo "vision exit $?"
grep -E "^=== |vision_infer|_ms|match" "$OUT/torch-vision.log" | grep -v "^  workload" | head -40
cp "$OUT"/vision/torch-medians.* "$OUT/" 2>/dev/null
for r in 1 2; do cp "$OUT/vision/round-$r/torch-compare.json" "$OUT/compare-round-$r.json" 2>/dev/null; done
