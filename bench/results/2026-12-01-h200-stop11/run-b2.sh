# stream_mem_ops and vmm natively + vGPU; PyTorch: runtime+libs, expandable segments, bench_torch.py; vgpu bench.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; export PATH=$PWD/.device/bin:$PATH
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device --only stream_mem_ops vmm --save $OUT/native > $OUT/e2e-native.log 2>&1; tail -1 $OUT/e2e-native.log; grep -A14 FAIL $OUT/e2e-native.log | head -30
for t in tcp shm; do python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $t --backend real --expected tests/e2e/expected --no-device --only stream_mem_ops vmm > $OUT/e2e-$t.log 2>&1; echo "e2e $t: $(tail -1 $OUT/e2e-$t.log)"; done
MODES="native tcp shm" WORKLOADS=runtime,libs WARMUP=0 TORCH_TIMEOUT_S=150 OUT=$OUT/torch bash tests/torch/run-device.sh > $OUT/torch-run.txt 2>&1
tail -30 $OUT/torch/torch-compare.txt
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True MODES="native tcp shm" WORKLOADS=gpt_train,cuda_graph,runtime WARMUP=0 TORCH_TIMEOUT_S=150 OUT=$OUT/torch-expandable bash tests/torch/run-device.sh > $OUT/torch-expandable-run.txt 2>&1
grep -E "^===|match|=>" $OUT/torch-expandable/torch-compare.txt | head -30
grep -h "not supported\|NOT_SUPPORTED\|vgpu:" $OUT/torch*/torch-vgpu-*.log | sort | uniq -c | sort -rn | head -12
timeout 420 vgpu bench --json $OUT/bench.json > $OUT/bench.txt 2>&1; grep -i "H→D\|D→H\|floor" $OUT/bench.txt | head -20
cd $OUT && tar czf /tmp/b2.tgz . && rm -rf $OUT/* && mv /tmp/b2.tgz $OUT/
