#!/usr/bin/env bash
# The project's test command (see README): every crate's unit and integration tests, the end-to-end
# driver-API programs and the nvcc-built CUDA runtime programs (tests/cuda) through vGPU on the emulated
# backend over TCP, TLS and shared memory (the driver-API programs also over RDMA, in the Soft-RoCE VM), and the
# control plane's browser test. Needs python3, gcc, g++ (nvcc's host compiler) and network access to PyPI
# (CUDA headers, nvcc and cudart wheels), npm and Debian packages (Chromium, QEMU) the first time. Ends
# with one summary line: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp -d)
total_pass=0
total_fail=0
count() { # adds up "N passed" / "N failed" lines from a log
  local p f
  p=$(grep -Eo '([0-9]+) passed' "$1" | awk '{s+=$1} END {print s+0}')
  f=$(grep -Eo '([0-9]+) failed' "$1" | awk '{s+=$1} END {print s+0}')
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
}
step() { echo; echo "=== $*"; }

step "build dependencies (cmake, libclang, C/C++ compilers)"
scripts/setup-build-deps.sh || { echo "setup-build-deps.sh failed"; echo "0 passed, 1 failed"; exit 1; }
step "CUDA 13.0 headers, nvcc and cudart from NVIDIA's PyPI wheels"
cuda_env=$(scripts/setup-cuda.sh) || { echo "setup-cuda.sh failed"; echo "0 passed, 1 failed"; exit 1; }
echo "$cuda_env"
NVCC=$(printf '%s\n' "$cuda_env" | sed -n 's/^NVCC=//p')
step "generated driver declarations match cuda.h and nvml.h (tools/gen-sys, bindgen)"
if ! cargo run -q --release --manifest-path tools/gen-sys/Cargo.toml -- --check .cuda/include; then
  total_fail=$((total_fail + 1))
fi

step "no C declaration of cuda.h or nvml.h typed by hand outside cuda-sys (tools/check_declarations.py)"
if python3 tools/check_declarations.py; then total_pass=$((total_pass + 1)); else total_fail=$((total_fail + 1)); fi

step "no hand-written Rust file above 800 lines (tools/check_file_sizes.py)"
if python3 tools/check_file_sizes.py; then total_pass=$((total_pass + 1)); else total_fail=$((total_fail + 1)); fi

step "cargo fmt --check and cargo clippy --workspace --all-targets -D warnings"
if cargo fmt --all -- --check > "$log/fmt.log" 2>&1; then
  echo "fmt: clean"; total_pass=$((total_pass + 1))
else
  head -40 "$log/fmt.log"; echo "fmt: files need formatting"; total_fail=$((total_fail + 1))
fi
if cargo clippy --workspace --all-targets -- -D warnings > "$log/clippy.log" 2>&1; then
  echo "clippy: clean"; total_pass=$((total_pass + 1))
else
  grep -E '^(error|warning)' -A6 "$log/clippy.log" | head -60; echo "clippy: findings"; total_fail=$((total_fail + 1))
fi

step "PostgreSQL server binaries for the control plane's store tests (Debian's postgresql package)"
scripts/setup-postgres.sh || { echo "setup-postgres.sh failed"; total_fail=$((total_fail + 1)); }

step "supply chain: cargo deny (advisories, licences, duplicate crates, sources; deny.toml)"
scripts/cargo-deny.sh 2>&1 | tee "$log/deny.log" | tail -12
count "$log/deny.log"

step "cargo test (every crate)"
cargo build --workspace --all-targets 2>&1 | tail -3
INSTA_UPDATE=no cargo test --workspace --no-fail-fast 2>&1 | tee "$log/cargo.log" | grep -E '^test result|FAILED|panicked'
count "$log/cargo.log"
if grep -q "error\[E\|could not compile" "$log/cargo.log"; then total_fail=$((total_fail + 1)); fi

step "fuzzing: each target replays its seeds and saved crashes, then 100,000 inputs from a fixed seed (fuzz/, scripts/fuzz.sh)"
scripts/fuzz.sh --runs 100000 2>&1 | tee "$log/fuzz.log" | grep -E '^(PASS|FAIL|    )|installing|failed'
tail -1 "$log/fuzz.log" > "$log/fuzz.summary"
count "$log/fuzz.summary"

step "end-to-end driver-API programs through vGPU (emulated backend)"
python3 tests/e2e/run.py build --cuda-include .cuda/include --lib-dir target/debug --out target/e2e | tail -1
for transport in tcp tls shm; do
  python3 tests/e2e/run.py run --bins target/e2e --mode vgpu --vgpu target/debug/vgpu --transport $transport \
    --backend emulated --expected tests/e2e/expected \
    2>&1 | tee "$log/e2e-$transport.log" | grep -Ev '^    '
  count "$log/e2e-$transport.log"
done

step "CUDA runtime programs (nvcc; static and shared cudart) through vGPU (emulated backend)"
# tests/cuda/README.md: on the emulated backend kernels do not run; each program must get through
# initialisation, module loading, copies and launches (print "done", exit 0) without a shim diagnostic.
if [ -z "$NVCC" ]; then
  echo "nvcc is not usable here (setup-cuda.sh printed no NVCC=)"; total_fail=$((total_fail + 1))
else
  python3 tests/cuda/run.py build --nvcc "$NVCC" --out target/cuda 2>&1 | tee "$log/cuda-build.log" \
    | grep -E '^(FAILED|    |time:|[0-9]+ built)'
  count "$log/cuda-build.log"
  for transport in tcp tls shm; do
    python3 tests/cuda/run.py run --bins target/cuda --mode vgpu --vgpu target/debug/vgpu --transport $transport \
      --backend emulated 2>&1 | tee "$log/cuda-$transport.log" | grep -Ev '^      |^    (stderr|last stdout lines):$'
    count "$log/cuda-$transport.log"
  done
fi

step "framework workloads (CuPy, Triton, JAX, PyTorch + transformers) through vGPU (emulated backend)"
# tests/frameworks/README.md: each framework initialises, allocates, copies, compiles and loads its modules and
# runs its parts through the shim without a diagnostic; kernels do not run here, numbers are compared on the GPU.
if fw_env=$(scripts/setup-frameworks.sh); then
  FW_PYTHON=$(printf '%s\n' "$fw_env" | sed -n 's/^PYTHON=//p')
  python3 tests/frameworks/emulated.py --vgpu target/debug/vgpu --python "$FW_PYTHON" 2>&1 \
    | tee "$log/frameworks.log" | grep -Ev '^PASS '
  count "$log/frameworks.log"
  step "PyTorch's NCCL process group over vGPU's libnccl.so.2, two ranks on two servers (tests/torch/nccl-emulated.sh)"
  tests/torch/nccl-emulated.sh target/debug/vgpu "$FW_PYTHON" 2>&1 | tee "$log/torch-nccl.log"
  count "$log/torch-nccl.log"
else
  echo "setup-frameworks.sh failed"; total_fail=$((total_fail + 1))
fi
step "control plane API contract: schemathesis, property-based and stateful (control/tests/contract/run.sh)"
control/tests/contract/run.sh 2>&1 | tee "$log/contract.log" | tail -12
count "$log/contract.log"
if ! grep -qE '[0-9]+ passed' "$log/contract.log"; then total_fail=$((total_fail + 1)); fi

if [ -x control/tests/ui/run.sh ]; then
  step "control plane web UI in headless Chromium"
  control/tests/ui/run.sh 2>&1 | tee "$log/ui.log" | tail -15
  count "$log/ui.log"
fi

step "RDMA transport in a Soft-RoCE VM (QEMU, Debian kernel; tests/rdma/run-vm.sh, transport tests and the e2e suite over rdma://, 2 to 4 minutes)"
tests/rdma/run-vm.sh 2>&1 | tee "$log/rdma-vm.log" | grep -E '^(PASS|FAIL|rdma vm:|[a-z ]+: [0-9]+ passed)|test result'
tail -1 "$log/rdma-vm.log" > "$log/rdma-vm.summary"  # only the script's own line: inner suites print theirs too
count "$log/rdma-vm.summary"

echo
echo "=== all suites"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
