#!/usr/bin/env bash
# Framework workloads (JAX, CuPy, Triton, Hugging Face) natively and through vGPU (real backend) over TCP and shared
# memory, then tests/torch/compare.py per framework. Runs on the GPU machine, from the repository root, with .device/
# carried (.device/bin/vgpu and the shim in .device/bin/lib/libcuda.so.1); `WHAT=frameworks scripts/device-run.sh`
# calls it. Leaves in $OUT (default /tmp/out) few files, since the device tool brings back at most 8:
#   frameworks-summary.txt     one line per framework and mode: parts ok, matches, shim diagnostics, wall time
#   frameworks-compare.txt     compare.py's tables (every timing), one section per framework
#   frameworks-compare.json    compare.py's summaries, by framework
#   frameworks-logs.tar.gz     every run's log and JSON, the server's log, the environment and the driver probes
# A run that fails, hangs (killed after FW_TIMEOUT_S) or kills the server does not stop the others; parts a dead run
# never reached are recorded as errors. Exit status: 0 when every run finished and matched native, 1 otherwise.
#
# Settings (environment):
#   FRAMEWORKS="cupy triton jax jax_nocmdbuf hf jax_noprealloc"   in this order (most informative first)
#   MODES="native tcp shm"   FW_ARGS=   (more workloads.py arguments, e.g. --quick)
#   FW_TIMEOUT_S=120         wall-clock limit of one run (one framework in one mode)
#   FW_BUDGET_S=330          no new run starts after this many seconds (the whole call must stay near 6 minutes);
#                            the runs left are listed as not run
#   FW_BACKEND=real          the server's backend (emulated: to check this script on a machine without a GPU,
#                            with MODES="tcp shm" FW_ARGS=--emulated; the first mode is then the reference)
#   VGPU=.device/bin/vgpu  VGPU_SHIM_DIR=.device/bin/lib  PYTHON=python3
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
VGPU=${VGPU:-$PWD/.device/bin/vgpu}
SHIM_DIR=${VGPU_SHIM_DIR:-$PWD/.device/bin/lib}
PY=${PYTHON:-python3}
FRAMEWORKS=${FRAMEWORKS:-cupy triton jax jax_nocmdbuf hf jax_noprealloc}
MODES=${MODES:-native tcp shm}
TIMEOUT_S=${FW_TIMEOUT_S:-120}
BUDGET_S=${FW_BUDGET_S:-330}
BACKEND=${FW_BACKEND:-real}
read -r -a EXTRA <<< "${FW_ARGS:-}"
HERE=tests/frameworks
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vgpu-frameworks.XXXXXX")
LOGS="$WORK/frameworks"
mkdir -p "$LOGS"
SERVER_LOG="$LOGS/server.log"
SUMMARY="$OUT/frameworks-summary.txt"
SERVER_PID=
TCP_URL=
SHM_URL=
STATUS=0
T0=$(date +%s)
# Triton's and CuPy's kernel caches: filled by the native run, reused by the vGPU runs (as tests/torch does).
export TRITON_CACHE_DIR="$WORK/triton-cache" CUPY_CACHE_DIR="$WORK/cupy-cache"
export PYTHONUNBUFFERED=1

log() { echo "[frameworks $(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2> /dev/null; then
    kill -TERM -- "-$SERVER_PID" 2> /dev/null
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2> /dev/null || break; sleep 0.1; done
    kill -KILL -- "-$SERVER_PID" 2> /dev/null
  fi
  SERVER_PID=
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
finish() {
  stop_server
  tar -C "$WORK" -czf "$OUT/frameworks-logs.tar.gz" frameworks 2> /dev/null
  rm -rf "$WORK"
}
trap finish EXIT
trap 'exit 130' INT TERM

# `vgpu server` on a free TCP port and a fresh shm name, in its own session (stopped as one process group); ready
# when it prints "vgpu server: ready on <endpoints>".
SERVER_STARTS=0
start_server() {
  local shm="vgpu-fw-$$-$RANDOM" line
  SERVER_STARTS=$((SERVER_STARTS + 1))
  echo "=== $(date +%T) starting: $VGPU server --backend $BACKEND --tcp 127.0.0.1:0 --no-tls --shm $shm" >> "$SERVER_LOG"
  setsid "$VGPU" server --backend "$BACKEND" --tcp 127.0.0.1:0 --no-tls --shm "$shm" < /dev/null >> "$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 600); do
    [ "$(grep -ac 'ready on ' "$SERVER_LOG")" -ge "$SERVER_STARTS" ] && break
    if ! kill -0 "$SERVER_PID" 2> /dev/null; then
      log "vgpu server exited before it was ready; its last lines:"; tail -20 "$SERVER_LOG"; SERVER_PID=; return 1
    fi
    sleep 0.1
  done
  line=$(grep -a 'ready on ' "$SERVER_LOG" | tail -1)
  TCP_URL=$(echo "${line#*ready on }" | sed 's/ *([^)]*)//g' | tr ',' '\n' | tr -d ' ' | grep -m1 '^tcp://')
  SHM_URL=$(echo "${line#*ready on }" | sed 's/ *([^)]*)//g' | tr ',' '\n' | tr -d ' ' | grep -m1 '^shm://')
  if [ -z "$TCP_URL" ] || [ -z "$SHM_URL" ]; then
    log "vgpu server not ready after 60 s (or no tcp/shm endpoint); its last lines:"; tail -20 "$SERVER_LOG"
    stop_server; return 1
  fi
  log "server ready: $TCP_URL $SHM_URL (pid $SERVER_PID)"
}

ensure_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2> /dev/null; then return 0; fi
  [ -n "$SERVER_PID" ] && { log "vgpu server (pid $SERVER_PID) died; last lines:"; tail -10 "$SERVER_LOG"; }
  SERVER_PID=
  start_server
}

# Shim diagnostics in a run's output: every line the shim writes at its default level (warn) starts "vgpu: ".
diagnostics() { grep -a '^vgpu: ' "$1" | sort | uniq -c | sort -rn; }

# run_one FRAMEWORK MODE: one workloads.py process; its JSON is completed for parts it never reached.
run_one() {
  local fw=$1 mode=$2 rc t0 url prefix=()
  local base="$LOGS/$fw-$mode"
  if [ $(( $(date +%s) - T0 )) -ge "$BUDGET_S" ]; then
    log "$fw $mode: not run (time budget of ${BUDGET_S}s spent)"
    "$PY" "$HERE/workloads.py" "$fw" --json "$base.json" --label "$mode" \
      --fill-missing "time budget of ${BUDGET_S}s spent before this run" > /dev/null
    printf '%-16s %-7s not run (time budget)\n' "$fw" "$mode" >> "$SUMMARY"
    STATUS=1; return
  fi
  if [ "$mode" != native ]; then
    if [ ! -x "$VGPU" ] || [ ! -e "$SHIM_DIR/libcuda.so.1" ]; then
      log "$fw $mode: no $VGPU or no $SHIM_DIR/libcuda.so.1: not run"; STATUS=1; return
    fi
    export VGPU_SHIM_DIR="$SHIM_DIR"
    ensure_server || { log "$fw $mode: no vgpu server: not run"; STATUS=1; return; }
    url=$TCP_URL; [ "$mode" = shm ] && url=$SHM_URL
    prefix=("$VGPU" run --server "$url" --)
  fi
  t0=$(date +%s)
  timeout --kill-after=10 "$TIMEOUT_S" "${prefix[@]}" "$PY" "$HERE/workloads.py" "$fw" --label "$mode" \
    --json "$base.json" "${EXTRA[@]}" > "$base.log" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    STATUS=1
    local why="exit $rc"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && why="timed out after ${TIMEOUT_S}s (exit $rc)"
    [ $rc -ge 128 ] && [ $rc -ne 137 ] && why="killed by signal $((rc - 128)) (exit $rc)"
    "$PY" "$HERE/workloads.py" "$fw" --json "$base.json" --label "$mode" \
      --fill-missing "the process ended first: $why" >> "$base.log" 2>&1
  fi
  local parts ok diag
  parts=$(grep -ac '^== ' "$base.log")
  ok=$(grep -ac '^RESULT ' "$base.log")
  diag=$(grep -ac '^vgpu: ' "$base.log")
  log "$fw $mode: exit $rc in $(( $(date +%s) - t0 ))s; parts ok $ok of $parts started; shim diagnostics: $diag"
  grep -a -E '^(ERROR|SKIP|  SELF-CHECK)' "$base.log" | cut -c1-240 | head -8
  diagnostics "$base.log" | head -5
  printf '%-16s %-7s exit %-4s %3ss  ok %2s/%-2s  diagnostics %s\n' "$fw" "$mode" "$rc" "$(( $(date +%s) - t0 ))" \
    "$ok" "$parts" "$diag" >> "$SUMMARY"
  if [ "$mode" != native ] && [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2> /dev/null; then
    log "vgpu server died during $fw $mode (server.log in the archive)"; STATUS=1
  fi
}

: > "$SUMMARY"
log "OUT=$OUT frameworks: $FRAMEWORKS; modes: $MODES; ${TIMEOUT_S}s per run, budget ${BUDGET_S}s ${FW_ARGS:-}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$PY" -c 'import sys; print("python", sys.version.split()[0], sys.executable)'
  for m in jax jaxlib cupy triton torch transformers numpy; do
    "$PY" -c "import $m; print('$m', $m.__version__)" 2>&1 | tail -1
  done
  "$PY" -m pip list 2>/dev/null | grep -iE '^(nvidia-|cuda-|jax|cupy|triton|torch |transformers)'
} > "$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt" | head -12
# The native driver's answers to the calls behind GAPS.md, then vGPU's (TCP).
"$PY" "$HERE/probe_driver.py" > "$LOGS/probe-native.json" 2>&1
if ensure_server; then
  VGPU_SHIM_DIR="$SHIM_DIR" "$VGPU" run --server "$TCP_URL" -- "$PY" "$HERE/probe_driver.py" \
    > "$LOGS/probe-vgpu.json" 2>&1
fi

for fw in $FRAMEWORKS; do
  for mode in $MODES; do run_one "$fw" "$mode"; done
  files=()
  for mode in $MODES; do [ -s "$LOGS/$fw-$mode.json" ] && files+=("$LOGS/$fw-$mode.json"); done
  if [ ${#files[@]} -lt 2 ]; then
    log "$fw: nothing to compare (fewer than two results)"
    echo "=== $fw: nothing to compare" >> "$OUT/frameworks-compare.txt"
    continue
  fi
  "$PY" tests/torch/compare.py "${files[@]}" --all-timings --json "$LOGS/$fw-compare.json" \
    > "$LOGS/$fw-compare.txt" 2>&1 || STATUS=1
  { echo; echo "######## $fw"; cat "$LOGS/$fw-compare.txt"; } >> "$OUT/frameworks-compare.txt"
  grep -a -E '^(===|  =>)' "$LOGS/$fw-compare.txt"
  grep -a -E '  NO ' "$LOGS/$fw-compare.txt" | head -5
done
stop_server
"$PY" - "$LOGS" "$OUT/frameworks-compare.json" $FRAMEWORKS << 'EOF'
import json, os, sys
logs, out, fws = sys.argv[1], sys.argv[2], sys.argv[3:]
doc = {}
for fw in fws:
    p = os.path.join(logs, f"{fw}-compare.json")
    if os.path.exists(p):
        with open(p) as f:
            doc[fw] = json.load(f)
with open(out, "w") as f:
    json.dump(doc, f, indent=1)
EOF
{ echo; echo "compare: $(grep -a -c '=> all match' "$OUT/frameworks-compare.txt") matching, $(grep -a -c '=> MISMATCH' \
  "$OUT/frameworks-compare.txt") mismatching vGPU runs; total $(( $(date +%s) - T0 ))s"; } >> "$SUMMARY"
cat "$SUMMARY"
log "done: $([ $STATUS = 0 ] && echo 'every run finished and matched native' || echo 'FAILURES above')"
exit $STATUS
