# fft + module walk round: trace of 6e163fbe[7], e2e natively and via vGPU, torch libs workload.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT/trace
( cd .device/fft && nvcc -cubin -arch=sm_90 kern.cu -o kern.cubin && nvcc -cubin -arch=sm_90 k2.cu -o k2.cubin \
  && gcc -O1 trace.c -I/usr/local/cuda/include -o trace -lcuda -L/usr/local/cuda/lib64/stubs 2>/dev/null \
  && ./trace kern.cubin > $OUT/trace/kern.txt 2>&1; QUIET=1 ./trace k2.cubin > $OUT/trace/k2.txt 2>&1 )
WHAT=e2e bash .device/device-run.sh 2>&1 | tail -12
MODES="native tcp shm" WORKLOADS=libs WARMUP=0 TORCH_TIMEOUT_S=200 OUT=$OUT/torch bash tests/torch/run-device.sh > $OUT/torch-run.txt 2>&1
tail -25 $OUT/torch/torch-compare.txt
grep -h "6e163fbe\|private export" $OUT/torch/*.log | sort | uniq -c | head
cd $OUT && tar czf /tmp/a.tgz . && rm -rf $OUT/* && mv /tmp/a.tgz $OUT/
