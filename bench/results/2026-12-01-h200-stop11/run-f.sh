# graph_memory natively + vGPU; PyTorch cudaMallocAsync backend; then every workload with the default allocator.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; export PATH=$PWD/.device/bin:$PATH
python3 tests/e2e/run.py run --bins .device/e2e --mode native --expected tests/e2e/expected --no-device --only graph_memory > $OUT/e2e-native.log 2>&1; echo "native: $(tail -1 $OUT/e2e-native.log)"
for t in tcp shm; do python3 tests/e2e/run.py run --bins .device/e2e --mode vgpu --vgpu .device/bin/vgpu --transport $t --backend real --expected tests/e2e/expected --no-device --only graph_memory > $OUT/e2e-$t.log 2>&1; echo "e2e $t: $(tail -1 $OUT/e2e-$t.log)"; done
PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync MODES="native tcp shm" WORKLOADS=gpt_train,cuda_graph,runtime WARMUP=0 TORCH_TIMEOUT_S=150 OUT=$OUT/torch-async bash tests/torch/run-device.sh > $OUT/torch-async-run.txt 2>&1
grep -E "^===|match|=>|self check|missing|differ|not run" $OUT/torch-async/torch-compare.txt | head -24
grep -h "Warning\|terminate\|what()" $OUT/torch-async/torch-vgpu-tcp.log | head -5
MODES="native tcp shm" WORKLOADS=all WARMUP=1 TORCH_TIMEOUT_S=200 OUT=$OUT/torch-all bash tests/torch/run-device.sh > $OUT/torch-all-run.txt 2>&1
grep -E "^===|yes|NO|=>" $OUT/torch-all/torch-compare.txt | head -40
grep -h "^vgpu:" $OUT/torch-all/torch-vgpu-*.log | sort | uniq -c | sort -rn | head -6
cd $OUT && tar czf /tmp/f.tgz . && rm -rf $OUT/* && mv /tmp/f.tgz $OUT/
