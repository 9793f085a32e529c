# The runtime workload with expandable segments (its comparison was lost to a harness bug in run-b2).
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True MODES="native tcp shm" WORKLOADS=runtime WARMUP=0 TORCH_TIMEOUT_S=100 OUT=$OUT/torch-expandable-runtime bash tests/torch/run-device.sh > $OUT/run.txt 2>&1
grep -E "^===|yes|NO|=>|missing|differ" $OUT/torch-expandable-runtime/torch-compare.txt
cd $OUT && tar czf /tmp/h.tgz torch-expandable-runtime/torch-compare.* && rm -rf $OUT/* && mv /tmp/h.tgz $OUT/
