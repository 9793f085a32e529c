#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root, with .device/ carried:
#   .device/bin/vgpu, .device/bin/lib/libcuda.so.1 and .device/bin/lib/libnvidia-ml.so.1 (the shims, from
#   target/release/libcuda.so and libnvidia_ml.so), .device/e2e/* (test programs), .device/probes/*
# Runs the end-to-end suite natively and through vGPU (real backend) over TCP, TLS and shared memory, the
# quickstart, the CUDA runtime programs (tests/cuda, built here with /usr/local/cuda/bin/nvcc) natively
# and through vGPU over the same three, and the benchmark (with its TLS column), and leaves logs and JSON in $OUT.
# WHAT=probes|e2e|nvml|cuda|bench runs one part (default all). WHAT=torch runs the PyTorch workloads (tests/torch:
# natively, then through vGPU over TCP and shared memory, compared; several minutes), WHAT=frameworks the JAX, CuPy,
# Triton and Hugging Face ones (tests/frameworks, the same way; about 6 minutes), each only when asked for.
# WHAT=links (issue 21): which kernel link emulation this host allows (scripts/link-probe.sh), then the probe through
# loopback, the unshaped relay and each link shape (`vgpu bench --links`, LINKS=standard: 100g-10us 25g-50us 10g-500us
# 1g-5ms; about 3-4 minutes). The PyTorch workloads through the same shapes: WHAT=torch MODES="native tcp"
# LINKS=standard WORKLOADS=gpt_train,resnet18_train,small_ops (tests/torch/run-device.sh, about 5 minutes).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PATH="$PWD/.device/bin:$PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
LIBCUDA=$(ldconfig -p | awk '/libcuda.so.1 /{print $NF; exit}')
echo "native driver: $LIBCUDA"
if [ "${WHAT:-all}" = all ] || [ "${WHAT}" = probes ]; then
  nm -D --defined-only "$LIBCUDA" | awk '$3 ~ /^cu/ {print $3}' | sort > "$OUT/native-exports.txt"
  .device/probes/error_table > "$OUT/error-table.tsv" 2>&1
  echo "native exports: $(wc -l < "$OUT/native-exports.txt"), error codes: $(wc -l < "$OUT/error-table.tsv")"
fi
if [ "${WHAT:-all}" = all ] || [ "${WHAT}" = e2e ]; then
  python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device \
    --save "$OUT/native" > "$OUT/e2e-native.log" 2>&1; tail -1 "$OUT/e2e-native.log"
  for t in tcp tls shm; do
    python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $t \
      --backend real --expected "$OUT/native" > "$OUT/e2e-vgpu-$t.log" 2>&1
    echo "vgpu $t: $(tail -1 "$OUT/e2e-vgpu-$t.log")"; grep -E "^FAIL" "$OUT/e2e-vgpu-$t.log" || true
  done
  vgpu quickstart 2>&1 | tee "$OUT/quickstart.log" | tail -4
fi
if [ "${WHAT:-all}" = all ] || [ "${WHAT}" = nvml ]; then
  # vGPU's NVML shim on the real backend (`vgpu smi`), beside nvidia-smi's own view of the same GPUs.
  nvidia-smi --query-gpu=index,name,uuid,pci.bus_id,memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw \
    --format=csv > "$OUT/nvidia-smi.csv" 2>&1
  vgpu server --backend real --tcp 127.0.0.1:7079 --no-shm --no-tls > "$OUT/smi-server.log" 2>&1 &
  smi_server=$!
  for _ in $(seq 60); do grep -q "ready on" "$OUT/smi-server.log" && break; sleep 0.5; done
  vgpu smi --server tcp://127.0.0.1:7079 2>&1 | tee "$OUT/smi.txt"
  vgpu smi --server tcp://127.0.0.1:7079 --json > "$OUT/smi.json" 2>&1
  kill "$smi_server"; wait "$smi_server" 2>/dev/null
  cat "$OUT/nvidia-smi.csv"
fi
if [ "${WHAT:-all}" = all ] || [ "${WHAT}" = cuda ]; then
  # tests/cuda: CUDA runtime programs built here by the device's nvcc (static and shared cudart), run
  # natively, then through vGPU (real backend) over TCP and shared memory against those native outputs.
  CUDA_NVCC=${CUDA_NVCC:-/usr/local/cuda/bin/nvcc}
  CUDA_BUILD=${CUDA_BUILD:-target/cuda-device}
  python3 tests/cuda/run.py build --nvcc "$CUDA_NVCC" --out "$CUDA_BUILD" > "$OUT/cuda-build.log" 2>&1
  echo "cuda build: $(tail -1 "$OUT/cuda-build.log") ($(grep '^time: build' "$OUT/cuda-build.log"))"
  grep -A12 '^FAILED' "$OUT/cuda-build.log" || true
  if ls tests/cuda/expected/*.out > /dev/null 2>&1; then
    # References are in the tree: check the native run against them (device: lines may differ).
    cuda_native=(--expected tests/cuda/expected --no-device)
  else
    # None yet: write them to $OUT/cuda-expected (copy into tests/cuda/expected/ to keep them).
    cuda_native=(--save-expected "$OUT/cuda-expected")
  fi
  python3 tests/cuda/run.py run --bins "$CUDA_BUILD" --mode native "${cuda_native[@]}" --save "$OUT/cuda-native" \
    > "$OUT/cuda-native.log" 2>&1
  echo "cuda native: $(tail -1 "$OUT/cuda-native.log")"; grep -E "^FAIL" "$OUT/cuda-native.log" || true
  for t in tcp tls shm; do
    python3 tests/cuda/run.py run --bins "$CUDA_BUILD" --mode vgpu --vgpu .device/bin/vgpu --transport $t \
      --backend real --expected "$OUT/cuda-native" --save "$OUT/cuda-vgpu-$t" > "$OUT/cuda-vgpu-$t.log" 2>&1
    echo "cuda vgpu $t: $(tail -1 "$OUT/cuda-vgpu-$t.log")"; grep -E "^FAIL" "$OUT/cuda-vgpu-$t.log" || true
  done
fi
if [ "${WHAT:-all}" = all ] || [ "${WHAT}" = bench ]; then
  vgpu bench --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
fi
if [ "${WHAT:-all}" = links ]; then
  bash scripts/link-probe.sh 2>&1 | tee "$OUT/link-probe.txt"
  vgpu bench --links "${LINKS:-standard}" --repeat "${LINKS_REPEAT:-1}" --json "$OUT/links.json" 2>&1 |
    tee "$OUT/links.txt"
  # LINKS_WIRE=1: the same shapes across the packet-level wire too (TUN devices in a network namespace: TCP end to
  # end with the kernel's windows), where link-probe.sh found namespaces and TUN; another ~3 minutes.
  if [ "${LINKS_WIRE:-0}" = 1 ]; then
    vgpu bench --links "${LINKS:-standard}" --wire --repeat 1 --json "$OUT/links-wire.json" 2>&1 |
      tee "$OUT/links-wire.txt"
  fi
fi
if [ "${WHAT:-all}" = frameworks ]; then
  # JAX, CuPy, Triton, Hugging Face (tests/frameworks), natively and through vGPU over TCP and shared memory,
  # compared; about 6 minutes. Settings (FRAMEWORKS, MODES, FW_ARGS, FW_TIMEOUT_S, FW_BUDGET_S): see
  # tests/frameworks/run-device.sh.
  OUT="$OUT" bash tests/frameworks/run-device.sh
fi
if [ "${WHAT:-all}" = torch ]; then
  # Settings (MODES, WORKLOADS, TORCH_ARGS, TORCH_TIMEOUT_S, SPLIT): see tests/torch/run-device.sh.
  OUT="$OUT" bash tests/torch/run-device.sh
fi
