#!/usr/bin/env bash
# Stop 15: LZ4 on several threads (whole 1 MiB units side by side, up to 4 threads; 2 on this 2-core host) against
# stop 14's one thread, on the data LZ4 is slowest on (int64 token ids) and on zeros, over loopback TCP and 10 Gb/s.
# Run from the repository root after `cargo build --release -p vgpu -p vgpu-client-shim`; OLD=path to a vgpu built
# from 005048f (stop 14) for the one-thread figures in the same run.
set -u
V=${V:-target/release/vgpu}
for bin in ${OLD:-} $V; do
  $bin server --backend emulated --tcp 127.0.0.1:17180 --no-tls --no-shm > /tmp/par-server.log 2>&1 &
  server=$!; sleep 1.5
  for shape in loopback 10g-500us; do
    url=tcp://127.0.0.1:17180; relay=
    if [ "$shape" != loopback ]; then
      $bin link-relay --to 127.0.0.1:17180 --shape "$shape" --listen 127.0.0.1:17181 > /tmp/par-relay.log 2>&1 &
      relay=$!; sleep 0.5; url=tcp://127.0.0.1:17181
    fi
    for kind in ids zeros; do
      for mode in off lz4; do
        line=$(VGPU_COMPRESS=$mode $bin run --server "$url" -- $bin __copy-data --kind "$kind" --mib 64 --reps 6 2>&1 | grep copy-data)
        echo "$bin $shape $kind $mode: $line"
      done
    done
    [ -n "$relay" ] && kill "$relay" && wait "$relay" 2>/dev/null
  done
  kill $server; wait $server 2>/dev/null
done
