# stream_mem_ops natively + vGPU; PyTorch runtime+libs; the reference bench_torch.py natively and through vGPU.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; export PATH=$PWD/.device/bin:$PATH
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device --only stream_mem_ops vmm module_walk > $OUT/e2e-native.log 2>&1; echo "native: $(tail -1 $OUT/e2e-native.log)"
for t in tcp shm; do python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $t --backend real --expected tests/e2e/expected --no-device --only stream_mem_ops vmm module_walk > $OUT/e2e-$t.log 2>&1; echo "e2e $t: $(tail -1 $OUT/e2e-$t.log)"; done
MODES="native tcp shm" WORKLOADS=runtime,libs WARMUP=0 TORCH_TIMEOUT_S=150 OUT=$OUT/torch bash tests/torch/run-device.sh > $OUT/torch-run.txt 2>&1
grep -E "^===|match|=>|runtime|libs" $OUT/torch/torch-compare.txt | head -20
grep -h -B3 "1734dc26800d47458726c0f1e7dd8bca\[" $OUT/torch/torch-vgpu-tcp.log | head -8
vgpu server --backend real --tcp 127.0.0.1:7090 --shm vgpu-bt > $OUT/bt-server.log 2>&1 & S=$!
for _ in $(seq 60); do grep -q "ready on" $OUT/bt-server.log && break; sleep 0.5; done
(echo "== native"; python3 .device/bench_torch.py; echo "== vgpu tcp"; vgpu run --server tcp://127.0.0.1:7090 -- python3 .device/bench_torch.py; echo "== vgpu shm"; vgpu run --server shm://vgpu-bt -- python3 .device/bench_torch.py) > $OUT/bench_torch.txt 2>&1
kill $S; grep -v "^vgpu:\|^ \|^\]" $OUT/bench_torch.txt
cd $OUT && tar czf /tmp/c.tgz . && rm -rf $OUT/* && mv /tmp/c.tgz $OUT/
