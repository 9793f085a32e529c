#!/usr/bin/env bash
# Installs NVIDIA's CUDA 13.0 headers and nvcc from PyPI wheels into <repo>/.cuda (ignored by git).
#
#   scripts/setup-cuda.sh          install if needed, then print the paths
#   scripts/setup-cuda.sh --force  reinstall
#
# Needs only python3 with pip (no GPU, no CUDA toolkit, no root). Idempotent: when the pinned
# versions are already there it only checks them and prints the paths (well under a second).
# Output, one KEY=VALUE a line, on stdout:
#   CUDA_ROOT=<repo>/.cuda/root         the wheels' toolkit tree (bin/ include/ lib/ nvvm/);
#                                       lib/ holds libcudart.so(.13) and libcudart_static.a
#   CUDA_INCLUDE=<repo>/.cuda/include   holds cuda.h (CUDA 13.0) and nvml.h
#   NVCC=<repo>/.cuda/bin/nvcc          only when nvcc compiled a test kernel to PTX here
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.cuda"
PY="${PYTHON:-python3}"

# Pinned CUDA 13.0 wheels. The runtime wheel holds include/cuda.h and the runtime itself
# (lib/libcudart.so.13, lib/libcudart_static.a: what nvcc links by default and with -cudart shared);
# nvcc, crt (host headers nvcc needs) and nvvm (cicc, libdevice) together make a working `nvcc -ptx`;
# cccl (include/nv, include/cccl: libcu++, CUB, Thrust) is needed by cooperative_groups.h and
# friends when whole programs are compiled (tests/cuda); nvml-dev holds include/nvml.h, from which the NVML
# declarations (and so the NVML shim's exports) are generated (tools/gen-sys).
PACKAGES=(
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-nvml-dev==13.0.87
)
STAMP="$DEST/.installed"
WANT="${PACKAGES[*]}"

log() { echo "setup-cuda: $*" >&2; }

force=0
[[ "${1:-}" == "--force" ]] && force=1

installed_ok() {
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" \
     && -f "$DEST/py/nvidia/cu13/include/cuda.h" \
     && -f "$DEST/py/nvidia/cu13/include/nvml.h" \
     && -x "$DEST/py/nvidia/cu13/bin/nvcc" \
     && -x "$DEST/py/nvidia/cu13/nvvm/bin/cicc" \
     && -f "$DEST/py/nvidia/cu13/include/nv/target" ]]
}

if [[ $force == 1 ]] || ! installed_ok; then
  log "installing ${WANT} into $DEST/py"
  mkdir -p "$DEST"
  rm -rf "$DEST/py.tmp"
  PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --disable-pip-version-check --no-input --quiet --no-deps \
    --only-binary=:all: --target "$DEST/py.tmp" "${PACKAGES[@]}" >&2
  rm -rf "$DEST/py"
  mv "$DEST/py.tmp" "$DEST/py"
  echo "$WANT" > "$STAMP"
fi

TREE="$DEST/py/nvidia/cu13"
[[ -f "$TREE/include/cuda.h" ]] || { log "cuda.h missing under $TREE/include"; exit 1; }

# Stable paths. bin must be a link to the directory (not to the nvcc file): nvcc finds cicc,
# ptxas and the headers relative to the directory it was started from (nvcc.profile: $(_HERE_)/..).
ln -sfn py/nvidia/cu13 "$DEST/root"
ln -sfn py/nvidia/cu13/include "$DEST/include"
ln -sfn py/nvidia/cu13/bin "$DEST/bin"
# The wheel ships only libcudart.so.13; `nvcc -cudart shared` links with -lcudart, which needs the
# unversioned name (a toolkit install has it).
# nvcc links from <root>/lib64 (nvcc.profile); the wheels put the libraries in lib/.
if [[ -f "$TREE/lib/libcudart.so.13" ]]; then
  ln -sfn libcudart.so.13 "$TREE/lib/libcudart.so"
  [[ -e "$TREE/lib64" ]] || ln -sfn lib "$TREE/lib64"
fi

echo "CUDA_ROOT=$DEST/root"
echo "CUDA_INCLUDE=$DEST/include"

# Check that nvcc really works here (only PTX is ever needed: no host compiler pass).
NVCC_OK="$DEST/.nvcc-ok"
if [[ -f "$NVCC_OK" && "$(cat "$NVCC_OK")" == "$WANT" ]]; then
  echo "NVCC=$DEST/bin/nvcc"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  printf 'extern "C" __global__ void k(float *p) { p[threadIdx.x] += 1.0f; }\n' > "$tmp/k.cu"
  if "$DEST/bin/nvcc" -ptx -arch=compute_80 "$tmp/k.cu" -o "$tmp/k.ptx" >&2 \
     && grep -q '\.entry k' "$tmp/k.ptx"; then
    echo "$WANT" > "$NVCC_OK"
    echo "NVCC=$DEST/bin/nvcc"
  else
    log "nvcc is not usable here (cuda.h is); PTX must be generated elsewhere"
  fi
fi
