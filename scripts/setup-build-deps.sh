#!/usr/bin/env bash
# Installs the Debian packages the Rust build needs beyond a toolchain: cmake and libclang (the RDMA transport's
# `sideway` crate generates its rdma-core bindings at build time; at run time rdma-core is optional) and a C/C++
# compiler. Idempotent: does nothing when they are present. Uses sudo when not root.
set -euo pipefail
need=(cmake libclang-dev pkg-config gcc g++)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
((${#missing[@]})) || exit 0
if ! command -v apt-get >/dev/null; then
  echo "setup-build-deps: install ${missing[*]} (no apt-get here), or build with --no-default-features (no RDMA)" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "setup-build-deps: installing ${missing[*]}" >&2
$sudo apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null
