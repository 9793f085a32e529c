#!/usr/bin/env bash
# Installs the Python frameworks of tests/frameworks (JAX with its CUDA 13 plugin, CuPy, Triton, PyTorch and Hugging
# Face transformers, at the GPU machine's versions) into a virtual environment for the emulated smoke test
# (tests/frameworks/emulated.py) that scripts/test.sh runs. No GPU needed: the CUDA libraries come as NVIDIA's PyPI
# wheels, pinned to CUDA 13.0's versions by tests/frameworks/constraints.txt. The environment (about 6 GiB) lives
# outside the checkout, in $VGPU_FRAMEWORKS_VENV (default ~/.cache/vgpu/frameworks-venv), so that CI's fresh clones
# and every worktree share one install.
#
#   scripts/setup-frameworks.sh          install if needed, then print PYTHON=<the venv's python>
#   scripts/setup-frameworks.sh --force  reinstall
#
# Needs Python >= 3.12 (jax 0.11 requires it): python3.12 or python3.13 on PATH, a pyenv version, or python3 itself.
# Measured on the 2-core machine: ~50 s with pip's cache warm, ~2-3 minutes cold; under a second when installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${VGPU_FRAMEWORKS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/vgpu/frameworks-venv}"
CONSTRAINTS="$ROOT/tests/frameworks/constraints.txt"
# The versions KINDS.md lists for the GPU machine's image (2026-11).
PACKAGES=(
  "jax[cuda13]==0.11.2"
  "cupy-cuda13x[ctk]==14.2.0"
  "triton==3.6.0"
  "torch==2.11.0"
  "transformers==5.17.0"
)
STAMP="$DEST/.installed"
WANT="${PACKAGES[*]} | $(sha256sum "$CONSTRAINTS" | cut -c1-16)"

log() { echo "setup-frameworks: $*" >&2; }

force=0
[[ "${1:-}" == "--force" ]] && force=1

find_python() {
  local c v
  for c in python3.12 python3.13 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[23]*/bin/python3 python3; do
    command -v "$c" > /dev/null 2>&1 || [[ -x "$c" ]] || continue
    v=$("$c" -c 'import sys; print(sys.version_info >= (3, 12))' 2> /dev/null) || continue
    if [[ "$v" == True ]]; then command -v "$c" || echo "$c"; return 0; fi
  done
  return 1
}

installed_ok() {
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$DEST/bin/python" ]] &&
    "$DEST/bin/python" -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("jax", "jaxlib", "cupy", "triton", "torch", "transformers")))' 2> /dev/null
}

if [[ $force == 1 ]] || ! installed_ok; then
  PY=$(find_python) || { log "no Python >= 3.12 found (python3.12, python3.13, pyenv, python3): jax 0.11 needs it"; exit 1; }
  log "installing ${PACKAGES[*]} with $PY into $DEST"
  t0=$(date +%s)
  rm -rf "$DEST"
  "$PY" -m venv "$DEST"
  PIP_ROOT_USER_ACTION=ignore "$DEST/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
    --only-binary=:all: -c "$CONSTRAINTS" "${PACKAGES[@]}" >&2
  echo "$WANT" > "$STAMP"
  log "installed in $(( $(date +%s) - t0 )) s, $(du -sh "$DEST" | cut -f1)"
fi
echo "PYTHON=$DEST/bin/python"
