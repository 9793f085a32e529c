#!/usr/bin/env bash
# Compressed channels (VGPU_COMPRESS=lz4 and auto) against plain ones, per kind of data and link shape, on the emulated
# backend (no GPU): pageable 64 MiB copies to the device and back, 6 repetitions (auto learns during them), each byte checked.
# Run from the repository root after `cargo build --release -p vgpu -p vgpu-client-shim`.
set -u
V=target/release/vgpu
$V server --backend emulated --tcp 127.0.0.1:17170 --no-tls --no-shm > /tmp/comp-server.log 2>&1 &
server=$!
sleep 1.5
for shape in loopback 10g-500us 1g-5ms; do
  url=tcp://127.0.0.1:17170
  relay=
  if [ "$shape" != loopback ]; then
    $V link-relay --to 127.0.0.1:17170 --shape "$shape" --listen 127.0.0.1:17171 > /tmp/comp-relay.log 2>&1 &
    relay=$!
    sleep 0.5
    url=tcp://127.0.0.1:17171
  fi
  for kind in zeros ids floats periodic; do
    for mode in off lz4 auto; do
      line=$(VGPU_COMPRESS=$mode VGPU_STATS=/tmp/comp-stats.json $V run --server "$url" -- \
        $V __copy-data --kind "$kind" --mib 64 --reps 6 2>&1 | grep copy-data)
      wire=$(python3 -c "import json;d=json.loads(open('/tmp/comp-stats.json').read().splitlines()[-1]);r=d['packed_raw_sent']+d['packed_raw_received'];w=d['packed_wire_sent']+d['packed_wire_received'];print(f'{w/r:.3f}' if r else '-')")
      rm -f /tmp/comp-stats.json
      echo "$shape $mode $line; wire/raw $wire"
    done
  done
  [ -n "$relay" ] && kill "$relay" && wait "$relay" 2>/dev/null
done
kill $server; wait $server 2>/dev/null
