# e2e (all) natively + vGPU; PyTorch with the cudaMallocAsync backend (graphs), runtime (NCCL) and libs.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; export PATH=$PWD/.device/bin:$PATH
WHAT=e2e bash .device/device-run.sh 2>&1 | grep -v "quickstart\|sample:" | tail -8
PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync MODES="native tcp shm" WORKLOADS=gpt_train,cuda_graph,runtime WARMUP=0 TORCH_TIMEOUT_S=150 OUT=$OUT/torch-async bash tests/torch/run-device.sh > $OUT/torch-async-run.txt 2>&1
grep -E "^===|match|=>|self check|missing|differ" $OUT/torch-async/torch-compare.txt | head -24
grep -h "failed:\|parts ok" $OUT/torch-async/*.log
grep -h "^vgpu:" $OUT/torch-async/torch-vgpu-*.log | sort | uniq -c | sort -rn | head
MODES="native tcp shm" WORKLOADS=runtime,libs WARMUP=0 TORCH_TIMEOUT_S=150 OUT=$OUT/torch bash tests/torch/run-device.sh > $OUT/torch-run.txt 2>&1
grep -E "^===|match|=>|missing|differ" $OUT/torch/torch-compare.txt | head -20
cd $OUT && tar czf /tmp/e.tgz . && rm -rf $OUT/* && mv /tmp/e.tgz $OUT/
