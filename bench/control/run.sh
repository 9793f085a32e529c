#!/usr/bin/env bash
# Runs the control plane's load scenarios (issue 17's goals table) on this machine and writes one JSON file per
# scenario to bench/results/<date>-control/. Needs a release build (cargo build --release -p vgpu-control
# --bins) and PostgreSQL's server binaries (scripts/setup-postgres.sh). Everything runs on loopback, bounded
# in time; a throwaway PostgreSQL cluster lives under $WORK and is stopped at the end.
#   bench/control/run.sh [scenario ...]   scenarios: tickets fleet seeded failover revocation (default: all)
# SECONDS_PER_RUN (default 20) bounds each measured phase; FLEET_SERVERS (default 10000) sizes the fleet.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
bin=${CARGO_TARGET_DIR:-$root/target}/release
secs=${SECONDS_PER_RUN:-20}
servers=${FLEET_SERVERS:-10000}
out=$root/bench/results/$(date -u +%Y-%m-%d)-control
mkdir -p "$out"
WORK=${WORK:-$(mktemp -d /tmp/vgpu-control-bench.XXXXXX)}
scenarios=${*:-tickets fleet seeded failover revocation}
export VGPU_ADMIN_KEY=vgpu_adminbench_0123456789abcdefghijklmnop
export VGPU_NODE_TOKEN=vgpun_bench_0123456789abcdefghij

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "no PostgreSQL binaries: run scripts/setup-postgres.sh" >&2; exit 1; }
asuser=()
if [ "$(id -u)" = 0 ]; then asuser=(runuser -u postgres --); fi
pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
chmod 755 "$WORK"
mkdir -p "$WORK/pg"
chown -R postgres "$WORK/pg" 2>/dev/null || true
"${asuser[@]}" "$pgbin/initdb" -D "$WORK/pg/data" -U postgres --auth=trust --no-instructions >/dev/null
"${asuser[@]}" "$pgbin/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w -o "-p $pgport -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
cleanup() {
  [ -n "${cp:-}" ] && kill "$cp" 2>/dev/null || true
  "${asuser[@]}" "$pgbin/pg_ctl" -D "$WORK/pg/data" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
newdb() { "${asuser[@]}" "$pgbin/psql" -q -h 127.0.0.1 -p "$pgport" -U postgres -c "CREATE DATABASE $1" postgres; echo "postgres://postgres@127.0.0.1:$pgport/$1"; }

# Starts one control plane (plain HTTP on loopback: the figures are the control plane's, not TLS's).
start_cp() { # store data-dir
  rm -f "$2/control.url"
  "$bin/vgpu-control" --listen 127.0.0.1:0 --insecure-http --store "$1" --data-dir "$2" >"$2.log" 2>&1 &
  cp=$!
  for _ in $(seq 300); do [ -s "$2/control.url" ] && break; sleep 0.1; done
  url=$(head -1 "$2/control.url")
}
stop_cp() { kill "$cp"; wait "$cp" 2>/dev/null || true; cp=; }
info() { echo "{\"machine\": \"$(nproc) cores, $(uname -m)\", \"load_generator\": \"same machine\", \"store\": \"$1\"}"; }

for s in $scenarios; do
  # Other work on the machine changes every figure: keep the load average beside each scenario's results.
  echo "{\"scenario\": \"$s\", \"loadavg_before\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >> "$out/load.jsonl"
  case $s in
    tickets)
      for store in sled postgres; do
        st=sled; [ $store = postgres ] && st=$(newdb tk_$RANDOM)
        start_cp "$st" "$WORK/tk-$store"
        "$bin/vgpu-control-bench" tickets --url "$url" --clients 64 --seconds "$secs" | tee "$out/tickets-$store.json"
        stop_cp
      done ;;
    fleet)
      for store in sled postgres; do
        st=sled; [ $store = postgres ] && st=$(newdb fl_$RANDOM)
        start_cp "$st" "$WORK/fl-$store"
        "$bin/vgpu-control-bench" fleet --url "$url" --servers "$servers" --tickets-per-s 500 --seconds "$secs" | tee "$out/fleet-$store.json"
        stop_cp
      done ;;
    seeded)
      # The same ticket and heartbeat load on an empty store and on one holding 1,000,000 ended sessions.
      for store in sled postgres; do
        st=sled; [ $store = postgres ] && st=$(newdb sd_$RANDOM)
        "$bin/vgpu-control-bench" seed --store "$st" --data-dir "$WORK/sd-$store" --sessions "${SEED_SESSIONS:-1000000}" | tee "$out/seed-$store.json"
        start_cp "$st" "$WORK/sd-$store"
        "$bin/vgpu-control-bench" fleet --url "$url" --servers 1000 --tickets-per-s 500 --seconds "$secs" | tee "$out/seeded-fleet-$store.json"
        stop_cp
        st2=sled; [ $store = postgres ] && st2=$(newdb em_$RANDOM)
        start_cp "$st2" "$WORK/em-$store"
        "$bin/vgpu-control-bench" fleet --url "$url" --servers 1000 --tickets-per-s 500 --seconds "$secs" | tee "$out/empty-fleet-$store.json"
        stop_cp
      done ;;
    failover)
      "$bin/vgpu-control-bench" failover --control-bin "$bin/vgpu-control" --store "$(newdb fo_$RANDOM)" --work "$WORK/fo" \
        --seconds "$secs" --kill-after 5 | tee "$out/failover-postgres.json" ;;
    revocation)
      "$bin/vgpu-control-bench" revocation --control-bin "$bin/vgpu-control" --store "$(newdb rv_$RANDOM)" --work "$WORK/rv" \
        --beat 5 | tee "$out/revocation-postgres.json" ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done
echo "{\"loadavg_after\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >> "$out/load.jsonl"
info "sled and postgres $("$pgbin/postgres" --version | awk '{print $3}')" > "$out/machine.json"
echo "results in $out"
