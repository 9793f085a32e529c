#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets of fuzz/ (libFuzzer through cargo-fuzz, on stable Rust without a sanitizer:
# overflow checks and debug assertions on, a malloc limit catches memory amplification). Usage:
#   scripts/fuzz.sh [SECONDS_PER_TARGET | --runs N] [TARGET...]   (default 30 s each, every target; fuzz/src/lib.rs
#   lists them). --runs N runs N inputs per target from a fixed seed: the same inputs every time (what CI uses, so
#   its verdict does not depend on the machine's speed or luck).
# Each run first replays the checked-in seeds (fuzz/corpus/<target>/) and saved crashes (fuzz/regressions/<target>/),
# which are read, never written: new inputs go to target/fuzz-corpus/.
# A crash is saved under fuzz/artifacts/<target>/; fix it, then copy the input into fuzz/regressions/<target>/ so
# `cargo test` in fuzz/ runs it forever. Ends with "N passed, N failed" (one per target).
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=30
limit=()
if [ "${1:-}" = --runs ]; then
  limit=(-runs="${2:?--runs needs a count}" -seed=1); seconds=0; shift 2
elif [ $# -gt 0 ]; then
  seconds=$1; shift
fi
if [ ${#limit[@]} -eq 0 ]; then limit=(-max_total_time="$seconds"); fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=(frames handshake tickets fatbin ptx session packed striped rdma_book); fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (once)"
  cargo install cargo-fuzz --version 0.13.2 --locked >/dev/null 2>&1 || { echo "cargo install cargo-fuzz failed"; echo "0 passed, 1 failed"; exit 1; }
fi
if ! (cd fuzz && cargo fuzz build --sanitizer none -O --debug-assertions 2>&1 | tail -3); then
  echo "cargo fuzz build failed"; echo "0 passed, 1 failed"; exit 1
fi
bin_dir=fuzz/target/x86_64-unknown-linux-gnu/release
pass=0; fail=0
for t in "${targets[@]}"; do
  work=target/fuzz-corpus/$t
  mkdir -p "$work" "fuzz/artifacts/$t"
  saved=("fuzz/corpus/$t")
  if [ -d "fuzz/regressions/$t" ]; then saved+=("fuzz/regressions/$t"); fi
  log=$(mktemp)
  "$bin_dir/$t" "$work" "${saved[@]}" "${limit[@]}" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    echo "PASS fuzz $t: ${runs:-?} inputs (${speed:-?}/s), ${cov:-cov: ?}"
    pass=$((pass + 1))
  else
    echo "FAIL fuzz $t (exit $rc): crash input in fuzz/artifacts/$t/"
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|out-of-memory|malloc\(' "$log" | head -8
    fail=$((fail + 1))
  fi
  rm -f "$log"
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
