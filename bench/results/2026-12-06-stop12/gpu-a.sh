#!/usr/bin/env bash
# Stop 12, GPU run A (one call, about 8 minutes): everything merged this stop against the native driver on one GPU.
#  1. the e2e suite (25 driver-API programs: new graph_generic, graph_conditional, capture_to_graph, green_ctx, ipc)
#     natively, then through vGPU (real backend) over TCP and shm, against that native run;
#  2. the IPC probe natively and through vGPU; 3. two servers on one GPU (--device-identity) as one process's two
#     devices (issue 16): vgpu __multi-check over tcp, shm and mixed, and PyTorch across them;
#  4. vgpu bench fairness (issue 15: shares, priorities, equal split; native and MPS rows where available).
# Run from the repository root with .device/ carried (release vgpu, shims, e2e programs, probe sources).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH
V=$PWD/.device/bin/vgpu
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
t "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"

OUT=$OUT/e2e WHAT=e2e timeout 240 bash scripts/device-run.sh 2>&1 | tail -12
t "e2e done"

gcc -std=c11 -O1 -I /usr/local/cuda/include -I tests/e2e/programs -o /tmp/ipc_probe tools/probes/ipc_probe.c -ldl \
  -L"$(dirname "$(ldconfig -p | awk '/libcuda.so.1 /{print $NF; exit}')")" -l:libcuda.so.1 2>&1 | tail -3
if [ -x /tmp/ipc_probe ]; then
  timeout 30 /tmp/ipc_probe > "$OUT/ipc-probe-native.txt" 2>&1
  $V server --backend real --tcp 127.0.0.1:7080 --no-shm --no-tls > "$OUT/ipc-server.log" 2>&1 & ipc_srv=$!
  for _ in $(seq 60); do grep -q "ready on" "$OUT/ipc-server.log" && break; sleep 0.5; done
  timeout 60 $V run --server tcp://127.0.0.1:7080 -- /tmp/ipc_probe > "$OUT/ipc-probe-vgpu.txt" 2>&1
  kill $ipc_srv; wait $ipc_srv 2>/dev/null
  if diff "$OUT/ipc-probe-native.txt" "$OUT/ipc-probe-vgpu.txt" > "$OUT/ipc-probe.diff"; then t "ipc probe: identical";
  else t "ipc probe: differs"; head -20 "$OUT/ipc-probe.diff"; fi
fi

$V server --backend real --tcp 127.0.0.1:7071 --shm ms1 --no-tls --device-identity 1 > "$OUT/ms1.log" 2>&1 & s1=$!
$V server --backend real --tcp 127.0.0.1:7072 --shm ms2 --no-tls --device-identity 2 > "$OUT/ms2.log" 2>&1 & s2=$!
for _ in $(seq 60); do grep -q "ready on" "$OUT/ms1.log" && grep -q "ready on" "$OUT/ms2.log" && break; sleep 0.5; done
timeout 60 $V run --server tcp://127.0.0.1:7071,tcp://127.0.0.1:7072 -- $V __multi-check --bench-mib 256 > "$OUT/multi-tcp.txt" 2>&1
timeout 60 $V run --server shm://ms1,shm://ms2 -- $V __multi-check > "$OUT/multi-shm.txt" 2>&1
CUDA_VISIBLE_DEVICES=1,0 timeout 60 $V run --server shm://ms1,tcp://127.0.0.1:7072 -- $V __multi-check > "$OUT/multi-mixed.txt" 2>&1
timeout 30 $V smi --json --server shm://ms1,shm://ms2 > "$OUT/multi-smi.json" 2>&1
timeout 90 $V run --server shm://ms1,shm://ms2 -- python3 -c "import torch;x=torch.arange(1<<22,device='cuda:0',dtype=torch.float32);y=x.to('cuda:1');print(torch.cuda.device_count(),torch.cuda.can_device_access_peer(0,1),torch.equal(y.cpu(),x.cpu()))" > "$OUT/multi-torch.txt" 2>&1
kill $s1 $s2; wait $s1 $s2 2>/dev/null
for f in multi-tcp multi-shm multi-mixed multi-torch; do t "$f: $(grep -c 'verified' "$OUT/$f.txt") verified, $(grep -ciE 'error|fail|mismatch' "$OUT/$f.txt") error lines; last: $(tail -1 "$OUT/$f.txt")"; done

timeout 200 $V bench fairness --json "$OUT/fairness.json" > "$OUT/fairness.txt" 2>&1
tail -40 "$OUT/fairness.txt"
t "fairness done"
