# PyTorch libs (+cuSOLVER, cuSPARSE) and runtime (+NCCL/DDP); then the cudaMallocAsync allocator backend.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; export PATH=$PWD/.device/bin:$PATH
MODES="native tcp shm" WORKLOADS=runtime,libs WARMUP=0 TORCH_TIMEOUT_S=150 OUT=$OUT/torch bash tests/torch/run-device.sh > $OUT/torch-run.txt 2>&1
grep -E "^===|match|=>|runtime|libs" $OUT/torch/torch-compare.txt | head -20
grep -h "failed:\|parts ok" $OUT/torch/*.log
grep -h "^vgpu:" $OUT/torch/torch-vgpu-*.log | sort | uniq -c | sort -rn | head
PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync MODES="native tcp shm" WORKLOADS=gpt_train,cuda_graph,runtime WARMUP=0 TORCH_TIMEOUT_S=150 OUT=$OUT/torch-async bash tests/torch/run-device.sh > $OUT/torch-async-run.txt 2>&1
grep -E "^===|match|=>" $OUT/torch-async/torch-compare.txt | head -20
grep -h "failed:\|parts ok" $OUT/torch-async/*.log
grep -h "^vgpu:" $OUT/torch-async/torch-vgpu-*.log | sort | uniq -c | sort -rn | head
cd $OUT && tar czf /tmp/d.tgz . && rm -rf $OUT/* && mv /tmp/d.tgz $OUT/
