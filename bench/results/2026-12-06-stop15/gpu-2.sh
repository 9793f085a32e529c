#!/usr/bin/env bash
# Stop 15, GPU run 2 (under 10 minutes): diagnosis of the two wrong results of run 1 (gloo collectives of CUDA
# tensors through vGPU; CuPy's dense-to-CSR, G11) with the shim's call log, then issue 21's PyTorch workloads
# natively and over TCP through the four standard link shapes.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/diag"
export PATH=$PWD/.device/bin:$PATH VGPU_SHIM_DIR=$PWD/.device/bin/lib
D=bench/results/2026-12-06-stop15/diag
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
pa=$((7300 + RANDOM % 300)); pb=$((pa + 400))
vgpu server --backend real --tcp 127.0.0.1:$pa --shm diag-a --no-tls --device-identity 1 > "$OUT/diag/server-a.log" 2>&1 & srv_a=$!
vgpu server --backend real --tcp 127.0.0.1:$pb --shm diag-b --no-tls --device-identity 2 > "$OUT/diag/server-b.log" 2>&1 & srv_b=$!
for f in a b; do for _ in $(seq 120); do grep -q "ready on" "$OUT/diag/server-$f.log" && break; sleep 0.5; done; done
cd "$OUT/diag" >/dev/null; R=$OLDPWD
timeout 60 python3 $R/$D/cupy_diag.py > cupy-native.txt 2>&1; echo "cupy native:"; cat cupy-native.txt
VGPU_LOG=debug timeout 60 vgpu run --server tcp://127.0.0.1:$pa -- python3 $R/$D/cupy_diag.py > cupy-tcp.txt 2> cupy-tcp.err
echo "cupy tcp (exit $?):"; cat cupy-tcp.txt
timeout 60 python3 $R/$D/gloo_diag.py copies > gloo-copies-native.txt 2>&1; echo "copies native:"; cat gloo-copies-native.txt
for tr in tcp shm; do
  if [ $tr = tcp ]; then s=tcp://127.0.0.1:$pa; else s=shm://diag-a; fi
  VGPU_LOG=debug timeout 60 vgpu run --server $s -- python3 $R/$D/gloo_diag.py copies > gloo-copies-$tr.txt 2> gloo-copies-$tr.err
  echo "copies $tr (exit $?):"; cat gloo-copies-$tr.txt
done
for servers in "tcp://127.0.0.1:$pa tcp://127.0.0.1:$pa" "tcp://127.0.0.1:$pa tcp://127.0.0.1:$pb" "shm://diag-a shm://diag-a"; do
  set -- $servers; port=$((29500 + RANDOM % 1000)); tag=$(echo "$1-$2" | tr -c 'a-z0-9-' '_')
  VGPU_LOG=debug timeout 60 vgpu run --server $1 -- python3 $R/$D/gloo_diag.py coll 0 2 $port > coll-0.txt 2> coll-$tag-0.err &
  p0=$!
  timeout 60 vgpu run --server $2 -- python3 $R/$D/gloo_diag.py coll 1 2 $port > coll-1.txt 2> coll-$tag-1.err
  wait $p0; echo "collectives over $servers:"; cat coll-0.txt coll-1.txt; grep -h "Error" coll-$tag-*.err | head -3
done
timeout 60 python3 $R/$D/gloo_diag.py coll 0 2 29411 > coll-n0.txt 2>&1 & p0=$!
timeout 60 python3 $R/$D/gloo_diag.py coll 1 2 29411 > coll-n1.txt 2>&1; wait $p0; echo "collectives native:"; cat coll-n0.txt coll-n1.txt
cd "$R"
kill $srv_a $srv_b 2>/dev/null; wait 2>/dev/null
t "diag done"
OUT=$OUT/torch MODES="native tcp" LINKS=standard WORKLOADS=gpt_train,resnet18_train,small_ops TORCH_TIMEOUT_S=120 \
  WHAT=torch timeout $(( 560 - ($(date +%s) - start) )) bash scripts/device-run.sh > "$OUT/torch-run.log" 2>&1
grep -v "^\[" "$OUT"/torch/torch-compare.txt 2>/dev/null | head -60 || tail -20 "$OUT/torch-run.log"
t "done"
(cd "$OUT" && tar czf /tmp/gpu-2.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-2.tgz "$OUT/")
