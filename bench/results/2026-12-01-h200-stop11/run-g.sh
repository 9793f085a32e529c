# Final check of this stop's main: the e2e suite natively and through vGPU over TCP and shm.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
WHAT=e2e bash .device/device-run.sh 2>&1 | tail -9
cd $OUT && tar czf /tmp/g.tgz *.log && rm -rf $OUT/* && mv /tmp/g.tgz $OUT/
