#!/usr/bin/env bash
# Stop 18, device call 1 (about 5 minutes): vGPU's NCCL (libnccl.so.2, collectives run server to server) on the GPU.
# Build first, here: cargo build --release -p vgpu -p vgpu-client-shim -p vgpu-nvml-shim -p vgpu-nccl-shim; copy vgpu
# to .device/bin/, libcuda.so to .device/bin/lib/libcuda.so.1, libnvidia_ml.so to .device/bin/lib/libnvidia-ml.so.1,
# libnccl.so to .device/bin/lib/libnccl.so.2 (strip --strip-debug); run from the repository root, `.device` carried.
#  1. `vgpu __nccl-check`, two ranks, each on its own `vgpu server` of the one GPU (distinct virtual GPUs that may
#     send to each other), over TCP and over shm: every collective checked on known data, then all-reduce bus
#     bandwidth of 256 MiB and the client's own bytes during it.
#  2. `vgpu bench`'s floor between the servers for comparison is stop 15's (server-to-server TCP 4.2-4.6 GB/s).
#  3. tests/torch/nccl_collectives.py (PyTorch's NCCL process group, two ranks) and nccl_single_process.py
#     (torch.cuda.nccl, one process, both servers) through vGPU, values checked.
#  4. tests/torch/multi-device.sh: two devices in one process, and two-rank DDP over two servers with gloo and NCCL.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
pa=7511; pb=7512
vgpu server --backend real --tcp 127.0.0.1:$pa --shm nc-a --no-tls --device-identity 1 \
  --peer "tcp://127.0.0.1:$pb,shm://nc-b" > "$OUT/nc-server-a.log" 2>&1 &
vgpu server --backend real --tcp 127.0.0.1:$pb --shm nc-b --no-tls --device-identity 2 \
  --peer "tcp://127.0.0.1:$pa,shm://nc-a" > "$OUT/nc-server-b.log" 2>&1 &
for f in a b; do for _ in $(seq 120); do grep -q "ready on" "$OUT/nc-server-$f.log" && break; sleep 0.5; done; done
for tr in tcp shm; do
  if [ $tr = tcp ]; then s0=tcp://127.0.0.1:$pa; s1=tcp://127.0.0.1:$pb; else s0=shm://nc-a; s1=shm://nc-b; fi
  rm -f "$OUT/id-$tr"
  timeout 150 vgpu run --server $s0 -- vgpu __nccl-check --rank 0 --nranks 2 --id-file "$OUT/id-$tr" --bench-mib 256 \
    > "$OUT/nccl-$tr-0.txt" 2>&1 &
  p0=$!
  timeout 150 vgpu run --server $s1 -- vgpu __nccl-check --rank 1 --nranks 2 --id-file "$OUT/id-$tr" --bench-mib 256 \
    > "$OUT/nccl-$tr-1.txt" 2>&1
  e1=$?; wait $p0; e0=$?
  echo "nccl-check $tr: exit $e0 $e1"; grep -hE "verified|bench|failed|error" "$OUT/nccl-$tr-0.txt" "$OUT/nccl-$tr-1.txt" | sort | uniq -c
  t "nccl $tr done"
done
# PyTorch's NCCL process group (two ranks, TCP) and torch.cuda.nccl (one process, both servers) through vGPU.
port=$((29000 + RANDOM % 500))
timeout 150 vgpu run --server tcp://127.0.0.1:$pa -- python3 tests/torch/nccl_collectives.py 0 2 $port \
  > "$OUT/torch-nccl-0.txt" 2>&1 &
p0=$!
timeout 150 vgpu run --server tcp://127.0.0.1:$pb -- python3 tests/torch/nccl_collectives.py 1 2 $port \
  > "$OUT/torch-nccl-1.txt" 2>&1; e1=$?; wait $p0; e0=$?
echo "torch nccl_collectives: exit $e0 $e1"; tail -2 "$OUT/torch-nccl-0.txt" "$OUT/torch-nccl-1.txt"
timeout 150 vgpu run --server tcp://127.0.0.1:$pa,tcp://127.0.0.1:$pb -- python3 tests/torch/nccl_single_process.py \
  > "$OUT/torch-nccl-single.txt" 2>&1; echo "torch.cuda.nccl single process: exit $? $(tail -1 "$OUT/torch-nccl-single.txt")"
t "torch nccl done"
pkill -f "vgpu server" ; sleep 1
timeout 330 bash tests/torch/multi-device.sh > "$OUT/multi-device.log" 2>&1; echo "multi-device exit $?"
cat "$OUT/multi-device.log"; t "done"
(cd "$OUT" && tar czf /tmp/r.tgz . && find . -mindepth 1 -delete && mv /tmp/r.tgz "$OUT/")
