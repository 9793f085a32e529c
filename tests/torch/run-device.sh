#!/usr/bin/env bash
# PyTorch workloads natively and through vGPU (real backend) over TCP and shared memory, then compare.py.
# Runs on the GPU machine, from the repository root, with .device/ carried (.device/bin/vgpu and the shim in
# .device/bin/lib/libcuda.so.1). Leaves in $OUT (default /tmp/out):
#   torch-server.log             the vgpu server's output (all modes)
#   torch-<mode>.log / .json     each run's output and results (mode: native, vgpu-tcp, vgpu-shm, vgpu-tcp-SHAPE)
#   torch-relay-<shape>.log      the link relay's counters (tcp@SHAPE modes)
#   torch-compare.txt / .json    compare.py's table and summary
# A mode that fails, hangs (killed after TORCH_TIMEOUT_S) or kills the server does not stop the others; the
# server is restarted if it died. Exit status: 0 when every mode ran and matched native, 1 otherwise.
#
# Settings (environment):
#   MODES="native tcp shm"   which runs (native always first when listed: the others are compared with it);
#                            tcp@SHAPE runs over TCP through `vgpu link-relay --shape SHAPE` (RATE-RTT, e.g.
#                            tcp@10g-500us: the relay delays each direction by half the RTT and limits the rate)
#   LINKS=                   more modes: each shape in it (space-separated; `standard` = 100g-10us 25g-50us
#                            10g-500us 1g-5ms) adds tcp@SHAPE after MODES
#   WORKLOADS=all            workloads.py's NAME: all, or a comma-separated list
#   TORCH_ARGS=              more workloads.py arguments, e.g. --quick
#   TORCH_TIMEOUT_S=300      wall-clock limit of one run (SPLIT=1: of one workload)
#   WARMUP=1                 0: no unrecorded native --quick pass before the measured runs
#   SPLIT=0                  1: one process per workload (a crash or hang costs one workload, not the rest)
#   ROUNDS=1                 N: the whole comparison N times into OUT/round-K/ (the warm-up before the first only),
#                            then the medians over the rounds (median.py) in torch-medians.txt / .json
#   FRESH_INDUCTOR_CACHE=0   1: each mode compiles from an empty inductor/triton cache (default: the native run
#                            fills a cache the vGPU runs reuse, which saves ~tens of seconds per mode)
#   TORCH_BACKEND=real       the server's backend (emulated: to check this script, and count round trips, on a
#                            machine without a GPU; kernels do not run there, so numbers are not compared)
#   VGPU=.device/bin/vgpu  VGPU_SHIM_DIR=.device/bin/lib  PYTHON=python3
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
VGPU=${VGPU:-$PWD/.device/bin/vgpu}
SHIM_DIR=${VGPU_SHIM_DIR:-$PWD/.device/bin/lib}
PY=${PYTHON:-python3}
MODES=${MODES:-native tcp shm}
BACKEND=${TORCH_BACKEND:-real}
for shape in ${LINKS:-}; do
  if [ "$shape" = standard ]; then MODES="$MODES tcp@100g-10us tcp@25g-50us tcp@10g-500us tcp@1g-5ms"
  else MODES="$MODES tcp@$shape"; fi
done
WORKLOADS=${WORKLOADS:-all}
TIMEOUT_S=${TORCH_TIMEOUT_S:-300}
SPLIT=${SPLIT:-0}
read -r -a EXTRA <<< "${TORCH_ARGS:-}"
HERE=tests/torch
ROUNDS=${ROUNDS:-1}
if ! [[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]]; then
  echo "ROUNDS=$ROUNDS: a whole number from 1 to 99"; exit 2
fi
if [ "$ROUNDS" -gt 1 ]; then
  STATUS=0
  for k in $(seq "$ROUNDS"); do
    warm=0; [ "$k" = 1 ] && warm=${WARMUP:-1}
    ROUNDS=1 WARMUP=$warm OUT="$OUT/round-$k" bash "$0" || STATUS=1
  done
  compared=("$OUT"/round-*/torch-compare.json)
  if [ -e "${compared[0]}" ]; then
    "$PY" "$HERE/median.py" "${compared[@]}" --json "$OUT/torch-medians.json" --goal tcp=1.1 --goal shm=1.05 \
      | tee "$OUT/torch-medians.txt"
  else
    echo "no round compared against native: no medians"; STATUS=1
  fi
  exit $STATUS
fi
SERVER_LOG="$OUT/torch-server.log"
SERVER_PID=
TCP_URL=
SHM_URL=
CACHE_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/vgpu-torch-cache.XXXXXX")
STATUS=0

log() { echo "[run-device torch $(date +%H:%M:%S)] $*"; }

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2> /dev/null; then
    kill -TERM -- "-$SERVER_PID" 2> /dev/null
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2> /dev/null || break; sleep 0.1; done
    kill -KILL -- "-$SERVER_PID" 2> /dev/null
  fi
  SERVER_PID=
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  stop_server
  rm -rf "$CACHE_ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# `vgpu server` on an OS-chosen free TCP port (127.0.0.1:0) and a fresh shm name, in its own session so that it
# and its workers can be stopped as one process group; ready when it prints "vgpu server: ready on <endpoints>".
start_server() {
  local shm="vgpu-torch-$$-$RANDOM" line
  echo "=== $(date +%T) starting: $VGPU server --backend $BACKEND --tcp 127.0.0.1:0 --no-tls --shm $shm" >> "$SERVER_LOG"
  setsid "$VGPU" server --backend "$BACKEND" --tcp 127.0.0.1:0 --no-tls --shm "$shm" < /dev/null >> "$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 600); do
    line=$(grep -a 'ready on ' "$SERVER_LOG" | tail -1)
    [ -n "$line" ] && [ "$(grep -ac 'ready on ' "$SERVER_LOG")" -ge "$SERVER_STARTS" ] && break
    if ! kill -0 "$SERVER_PID" 2> /dev/null; then
      log "vgpu server exited before it was ready; its last lines:"; tail -20 "$SERVER_LOG"
      SERVER_PID=; return 1
    fi
    sleep 0.1
  done
  line=$(grep -a 'ready on ' "$SERVER_LOG" | tail -1)
  # "ready on tcp://127.0.0.1:PORT, shm://NAME (/tmp/vgpu-NAME.sock)": drop the socket path in parentheses.
  TCP_URL=$(echo "${line#*ready on }" | sed 's/ *([^)]*)//g' | tr ',' '\n' | tr -d ' ' | grep -m1 '^tcp://')
  SHM_URL=$(echo "${line#*ready on }" | sed 's/ *([^)]*)//g' | tr ',' '\n' | tr -d ' ' | grep -m1 '^shm://')
  if [ -z "$TCP_URL" ] || [ -z "$SHM_URL" ]; then
    log "vgpu server not ready after 60 s (or printed no tcp/shm endpoint); its last lines:"; tail -20 "$SERVER_LOG"
    stop_server; return 1
  fi
  log "server ready: $TCP_URL $SHM_URL (pid $SERVER_PID)"
}
SERVER_STARTS=0

ensure_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2> /dev/null; then return 0; fi
  if [ -n "$SERVER_PID" ]; then
    log "vgpu server (pid $SERVER_PID) died; last lines:"; tail -10 "$SERVER_LOG"; SERVER_PID=
  fi
  SERVER_STARTS=$((SERVER_STARTS + 1))
  start_server
}

# run_mode MODE PREFIX...: workloads.py under PREFIX (empty for native), results in torch-MODE.json (or the
# directory torch-MODE/ with SPLIT=1).
run_mode() {
  local mode=$1 rc=0 name names t0
  shift
  local logf="$OUT/torch-$mode.log"
  if [ "${FRESH_INDUCTOR_CACHE:-0}" = 1 ]; then
    export TORCHINDUCTOR_CACHE_DIR="$CACHE_ROOT/$mode/inductor" TRITON_CACHE_DIR="$CACHE_ROOT/$mode/triton"
  else
    export TORCHINDUCTOR_CACHE_DIR="$CACHE_ROOT/shared/inductor" TRITON_CACHE_DIR="$CACHE_ROOT/shared/triton"
  fi
  : > "$logf"
  t0=$(date +%s)
  if [ "$SPLIT" = 1 ]; then
    if [ "$WORKLOADS" = all ]; then
      mapfile -t names < <("$PY" "$HERE/workloads.py" --list | grep -v '^all$')
    else
      IFS=, read -r -a names <<< "$WORKLOADS"
    fi
    rm -rf "$OUT/torch-$mode"; mkdir -p "$OUT/torch-$mode"
    for name in "${names[@]}"; do
      timeout --kill-after=20 "$TIMEOUT_S" "$@" "$PY" "$HERE/workloads.py" "$name" --device cuda --label "$mode" \
        --json "$OUT/torch-$mode/$name.json" "${EXTRA[@]}" >> "$logf" 2>&1
      local r=$?
      [ $r -ne 0 ] && { rc=$r; log "$mode $name: exit $r$([ $r -ge 124 ] && echo ' (timed out)')"; }
      if [ ! -s "$OUT/torch-$mode/$name.json" ]; then  # died or was killed before writing: record that
        printf '{"meta": {"label": "%s"}, "workloads": {"%s": {"status": "error", "error": "exit %s, no result%s"}}}\n' \
          "$mode" "$name" "$r" "$([ $r -ge 124 ] && echo " (timed out after $TIMEOUT_S s?)")" > "$OUT/torch-$mode/$name.json"
      fi
    done
  else
    timeout --kill-after=20 "$TIMEOUT_S" "$@" "$PY" "$HERE/workloads.py" "$WORKLOADS" --device cuda --label "$mode" \
      --json "$OUT/torch-$mode.json" "${EXTRA[@]}" > "$logf" 2>&1
    rc=$?
  fi
  local what="exit $rc"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && what="TIMED OUT after ${TIMEOUT_S} s (exit $rc)"
  log "$mode: $what in $(( $(date +%s) - t0 )) s; $(grep -a '^SUMMARY' "$logf" | tail -1)"
  grep -a -E '^(ERROR|SKIP|  SELF-CHECK)' "$logf" | head -20
  [ $rc -ne 0 ] && { tail -5 "$logf"; STATUS=1; }
  return 0
}

log "OUT=$OUT modes: $MODES; workloads: $WORKLOADS ${TORCH_ARGS:-}; timeout ${TIMEOUT_S}s per run; split=$SPLIT"
"$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "available",
  torch.cuda.is_available(), "python", sys.version.split()[0])' 2>&1 | tee "$OUT/torch-env.txt"
"$PY" -c 'import torchvision; print("torchvision", torchvision.__version__)' >> "$OUT/torch-env.txt" 2>&1 ||
  echo "torchvision: not importable (vision workloads use a small CNN or SKIP)" | tee -a "$OUT/torch-env.txt"
"$PY" -c 'import triton; print("triton", triton.__version__)' >> "$OUT/torch-env.txt" 2>&1 ||
  echo "triton: not importable (compile on cuda will SKIP)" | tee -a "$OUT/torch-env.txt"

# A short native pass first, not recorded: the first process on an idle GPU pays for clock ramp-up, the driver's
# and cuDNN's first-use costs and cold file caches, which would otherwise count against whichever mode runs first.
if [ "${WARMUP:-1}" = 1 ]; then
  log "warm-up (native, --quick, not recorded)"
  timeout "$TIMEOUT_S" "$PY" "$HERE/workloads.py" all --quick > "$OUT/torch-warmup.log" 2>&1 || true
fi

results=()
for mode in $MODES; do
  case $mode in
    native)
      run_mode native
      results=("$OUT/torch-native$([ "$SPLIT" = 1 ] || echo .json)" "${results[@]}")
      ;;
    tcp | shm)
      if [ ! -x "$VGPU" ] || [ ! -e "$SHIM_DIR/libcuda.so.1" ]; then
        log "$mode: no $VGPU or no $SHIM_DIR/libcuda.so.1: not run"; STATUS=1; continue
      fi
      export VGPU_SHIM_DIR="$SHIM_DIR"
      if ! ensure_server; then log "$mode: no vgpu server: not run"; STATUS=1; continue; fi
      url=$TCP_URL; [ "$mode" = shm ] && url=$SHM_URL
      run_mode "vgpu-$mode" "$VGPU" run --server "$url" --
      results+=("$OUT/torch-vgpu-$mode$([ "$SPLIT" = 1 ] || echo .json)")
      kill -0 "$SERVER_PID" 2> /dev/null || { log "vgpu server died during $mode (see $SERVER_LOG)"; STATUS=1; }
      ;;
    tcp@*)
      shape=${mode#tcp@}
      if [ ! -x "$VGPU" ] || [ ! -e "$SHIM_DIR/libcuda.so.1" ]; then
        log "$mode: no $VGPU or no $SHIM_DIR/libcuda.so.1: not run"; STATUS=1; continue
      fi
      export VGPU_SHIM_DIR="$SHIM_DIR"
      if ! ensure_server; then log "$mode: no vgpu server: not run"; STATUS=1; continue; fi
      relay_log="$OUT/torch-relay-$shape.log"
      "$VGPU" link-relay --to "$TCP_URL" --shape "$shape" --report-s 5 > "$relay_log" 2>&1 &
      relay_pid=$!
      relay_url=
      for _ in $(seq 100); do
        relay_url=$(grep -ao 'ready on tcp://[0-9.:]*' "$relay_log" | head -1 | sed 's/^ready on //')
        [ -n "$relay_url" ] && break
        kill -0 "$relay_pid" 2> /dev/null || break
        sleep 0.1
      done
      if [ -z "$relay_url" ]; then
        log "$mode: the link relay did not start:"; tail -5 "$relay_log"; kill "$relay_pid" 2> /dev/null; STATUS=1; continue
      fi
      log "$mode: link relay $relay_url -> $TCP_URL (pid $relay_pid)"
      # Files are named vgpu-tcp-SHAPE (no '@' in file names).
      VGPU_LINK=$shape run_mode "vgpu-tcp-$shape" "$VGPU" run --server "$relay_url" --
      kill "$relay_pid" 2> /dev/null; wait "$relay_pid" 2> /dev/null
      tail -1 "$relay_log"
      results+=("$OUT/torch-vgpu-tcp-$shape$([ "$SPLIT" = 1 ] || echo .json)")
      kill -0 "$SERVER_PID" 2> /dev/null || { log "vgpu server died during $mode (see $SERVER_LOG)"; STATUS=1; }
      ;;
    *) log "unknown mode $mode (native, tcp, shm, tcp@SHAPE)"; STATUS=1 ;;
  esac
done
stop_server

if [ ! -e "$OUT/torch-native.json" ] && [ ! -d "$OUT/torch-native" ]; then
  log "no native results: nothing to compare against"; exit 1
fi
if [ ${#results[@]} -lt 2 ]; then
  log "only the native run: nothing to compare"; exit $STATUS
fi
"$PY" "$HERE/compare.py" "${results[@]}" --json "$OUT/torch-compare.json" --all-timings 2>&1 | tee "$OUT/torch-compare.txt"
[ "${PIPESTATUS[0]}" -ne 0 ] && STATUS=1
log "done: $([ $STATUS = 0 ] && echo 'every mode ran and matched native' || echo 'FAILURES above')"
exit $STATUS
