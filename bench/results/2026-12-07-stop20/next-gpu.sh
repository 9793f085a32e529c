#!/usr/bin/env bash
# Prepared for the next device call (about 9 minutes), never run: stop 20's gpu-2.sh with the binaries of the review
# mends (collectives with VGPU_COLL_WAIT unset; lanes for all again), then stop 17's issue-21 measurements
# (../2026-12-06-stop17/next-gpu.sh: staged_async natively, compile rounds native/tcp/shm, VGPU_STRIPE_MIN_KB=1024,
# `vgpu bench --quick`), which have never had a machine. Build as stop 19's gpu-1.sh says; `.device` carried.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/coll" "$OUT/next"
here=$(dirname "$0")
OUT=$OUT/coll timeout 200 bash "$here/gpu-2.sh"
echo "==== issue 21 (stop 17's next-gpu.sh)"
OUT=$OUT/next timeout 350 bash "$here/../2026-12-06-stop17/next-gpu.sh"
