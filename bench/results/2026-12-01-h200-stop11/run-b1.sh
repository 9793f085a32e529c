# e2e natively and via vGPU (new: module_walk, stream_mem_ops, vmm), then tests/cuda natively and via vGPU.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
WHAT=e2e bash .device/device-run.sh 2>&1 | grep -v quickstart | tail -8
for f in vmm stream_mem_ops module_walk; do diff $OUT/native/$f.out tests/e2e/expected/$f.out > $OUT/diff-$f.txt 2>&1 && echo "$f: native = expected" || { echo "$f: native differs:"; cat $OUT/diff-$f.txt; }; done
WHAT=cuda bash .device/device-run.sh 2>&1 | tail -12
cd $OUT && tar czf /tmp/b1.tgz . && rm -rf $OUT/* && mv /tmp/b1.tgz $OUT/
