#!/usr/bin/env bash
# Stop 12, GPU run D (about 6 minutes): `vgpu bench --quick` (the table with its TLS column, issue 14), then the six
# fuzz targets on the GPU host's CPUs, two workers each for 200 s (the binaries built by scripts/fuzz.sh here,
# stripped, in .device/fuzz; seeds and saved crashes from fuzz/). Run from the repository root with .device/ carried.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PATH=$PWD/.device/bin:$PATH
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
timeout 150 vgpu bench --quick --repeat 1 --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1; tail -30 "$OUT/bench.txt"
t "bench done"
for f in frames handshake tickets fatbin ptx session; do
  mkdir -p "/tmp/fz/$f" "$OUT/fuzz-$f"
  extra=(); [ -d "fuzz/regressions/$f" ] && extra=("fuzz/regressions/$f")
  (cd "$OUT/fuzz-$f" && timeout 230 "$OLDPWD/.device/fuzz/$f" "/tmp/fz/$f" "$OLDPWD/fuzz/corpus/$f" "${extra[@]/#/$OLDPWD/}" \
     -jobs=2 -workers=2 -max_total_time=200 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
     -print_final_stats=1 > run.log 2>&1; echo "exit $?" >> run.log) &
done
wait
for f in frames handshake tickets fatbin ptx session; do
  runs=$(grep -h "stat::number_of_executed_units" "$OUT/fuzz-$f"/fuzz-*.log 2>/dev/null | awk '{s+=$2} END {print s+0}')
  crash=$(ls "$OUT/fuzz-$f" | grep -cE '^(crash|oom|timeout|leak)-')
  t "fuzz $f: $runs inputs in 200 s on 2 workers, $crash crash files, corpus $(ls /tmp/fz/$f | wc -l)"
done
(cd "$OUT" && tar czf /tmp/gpu-d.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-d.tgz "$OUT/")
