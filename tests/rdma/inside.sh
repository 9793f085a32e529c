#!/bin/bash
# Runs inside the Soft-RoCE VM started by tests/rdma/run-vm.sh (chrooted into this machine's root, read-only, with
# tmpfs on /tmp and /run): two "hosts" 10.77.0.1 (client) and 10.77.0.2 (server) joined by veth with an rxe link
# on each end; then the RDMA tests, clients dialling 10.77.0.2 from 10.77.0.1 so that every byte crosses the veth
# wire between the two rxe devices. Prints "RDMA-VM: N passed, N failed" for the host script.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp TMPDIR=/tmp
cmdline=$(cat /proc/cmdline)
env_arg=$(sed -n 's/.*vgpu\.env=\([^ ]*\).*/\1/p' /proc/cmdline)
# The host's /tmp is at /run/hosttmp in here (the VM's /tmp is a scratch tmpfs).
in_vm() { case "$1" in /tmp/*) echo "/run/hosttmp/${1#/tmp/}" ;; *) echo "$1" ;; esac; }
CONF=$(in_vm "$(echo "$env_arg" | tr ',' '\n' | sed -n 's/^CONF=//p')")
RDMA=$(in_vm "$(echo "$env_arg" | tr ',' '\n' | sed -n 's/^RDMA=//p')")
E2E=$(echo "$env_arg" | tr ',' '\n' | sed -n 's/^E2E=//p')
[ -z "$E2E" ] || E2E=$(in_vm "$E2E")
script=$(in_vm "$(echo "$cmdline" | sed -n 's/.*vgpu\.script=\([^ ]*\).*/\1/p')")
cd "$(dirname "$script")/../.." || exit 1
VGPU=$PWD/target/debug/vgpu
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "PASS $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }

t0=$(date +%s)
# Two "hosts": 10.77.0.1 on va (rxe "rxea", the client's) and 10.77.0.2 on vb (rxe "rxeb", the server's), joined
# by a veth pair. Debian 12's kernel (6.1) runs rxe in the initial network namespace only (its UDP socket and route
# lookups use init_net), so the two ends cannot live in separate namespaces; instead policy routing makes traffic
# between the two local addresses leave through one veth end and come in through the other, as between two hosts.
ip link set lo up
ip link add va type veth peer name vb
ip addr add 10.77.0.1/32 dev va && ip addr add 10.77.0.2/32 dev vb
ip link set va up && ip link set vb up
for k in all.rp_filter default.rp_filter va.rp_filter vb.rp_filter; do sysctl -qw net.ipv4.conf.$k=0; done
for k in all.accept_local va.accept_local vb.accept_local; do sysctl -qw net.ipv4.conf.$k=1; done
# veth hands each packet to the other end's backlog, which drops past net.core.netdev_max_backlog (1000): a ring's
# worth of writes is ~4000 packets, and every drop makes rxe resend (slow under emulation, and resends are where
# Soft-RoCE has bugs). Real NICs have deep queues; give the emulated wire one too.
sysctl -qw net.core.netdev_max_backlog=65536
ip neigh replace 10.77.0.2 lladdr "$(cat /sys/class/net/vb/address)" dev va nud permanent
ip neigh replace 10.77.0.1 lladdr "$(cat /sys/class/net/va/address)" dev vb nud permanent
ip route add 10.77.0.2 dev va src 10.77.0.1 table 10
ip route add 10.77.0.1 dev vb src 10.77.0.2 table 11
ip rule add pref 100 iif va lookup local
ip rule add pref 100 iif vb lookup local
ip rule add pref 200 to 10.77.0.2 lookup 10
ip rule add pref 200 to 10.77.0.1 lookup 11
ip rule add pref 1000 lookup local
ip rule del pref 0 lookup local
rdma link add rxea type rxe netdev va
rdma link add rxeb type rxe netdev vb
rdma link show
if ibv_devices | grep -q rxeb; then ok "rxe links up"; else bad "rxe links up"; fi
echo "network set up in $(( $(date +%s) - t0 )) s"

# The transport tests: server halves listen on 10.77.0.2, clients dial it from 10.77.0.1.
run_tests() { # name binary args...
  local name=$1 bin=$2; shift 2
  local t=$(date +%s) out
  out=$(env VGPU_TEST_RDMA_ADDR=10.77.0.2 VGPU_TEST_ONLY=rdma \
        VGPU_TEST_TIME_SCALE=8 "$bin" "$@" 2>&1)
  local rc=$?
  echo "$out" | grep -A1 -E '^test |test result|panicked|noticed in|atomics probe|FAILED' | grep -v ' \.\.\. ok$'
  local p f
  p=$(echo "$out" | grep -Eo '([0-9]+) passed' | awk '{s+=$1} END {print s+0}')
  f=$(echo "$out" | grep -Eo '([0-9]+) failed' | awk '{s+=$1} END {print s+0}')
  pass=$((pass + p)); fail=$((fail + f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then bad "$name exited $rc"; fi
  echo "$name: $p passed, $f failed in $(( $(date +%s) - t )) s"
}
run_tests "conformance over rdma" "$CONF" --test-threads=1 conformance_
run_tests "rdma transport tests" "$RDMA" --test-threads=1 --nocapture

# End to end: `vgpu sample` through the shim over rdma://, server (emulated backend) on 10.77.0.2.
t=$(date +%s)
# A test network inside the VM: plain TCP beyond loopback is asked for explicitly, TLS is not needed.
"$VGPU" server --backend emulated --tcp 10.77.0.2:7070 --allow-plain-tcp --no-tls --no-shm --rdma 10.77.0.2:7071 \
  >/tmp/server.log 2>&1 &
server=$!
for _ in $(seq 1 300); do grep -q "ready on" /tmp/server.log && break; sleep 0.2; done
cat /tmp/server.log
if grep -q "ready on.*rdma://10.77.0.2:7071" /tmp/server.log; then ok "server advertises rdma://"; else bad "server advertises rdma://"; fi
# GPUDirect is detected and reported, never claimed: no nvidia-peermem in the VM.
if grep -q "GPUDirect RDMA: not used on the emulated backend" /tmp/server.log; then ok "server reports GPUDirect"; else bad "server reports GPUDirect"; fi
for i in 1 2; do
  out=$(env VGPU_LOG=warn "$VGPU" run --server rdma://10.77.0.2:7071 -- "$VGPU" sample 2>&1)
  rc=$?
  echo "$out"
  if [ $rc -eq 0 ] && echo "$out" | grep -q "verified byte for byte"; then ok "vgpu sample over rdma ($i)"; else bad "vgpu sample over rdma ($i)"; fi
done
# And the same server over TCP from the other namespace, for comparison of the two paths.
out=$("$VGPU" run --server tcp://10.77.0.2:7070 -- "$VGPU" sample 2>&1)
if [ $? -eq 0 ]; then ok "vgpu sample over tcp (same server)"; else bad "vgpu sample over tcp (same server)"; echo "$out"; fi
# The end-to-end driver-API suite (tests/e2e, built on the host by run-vm.sh) against the same server over
# rdma://, compared with the same references as the TCP and shared-memory runs in scripts/test.sh.
t_e2e=$(date +%s)
if [ -n "$E2E" ] && [ -d "$E2E" ]; then
  # Programs run one after another under emulation (a 64 MiB copy pattern takes a while): 300 s each at most.
  E2E_TIMEOUT_S=300 python3 tests/e2e/run.py run --bins "$E2E" --mode vgpu --vgpu "$VGPU" \
    --server rdma://10.77.0.2:7071 --backend emulated --expected tests/e2e/expected 2>&1 | tee /tmp/e2e.log
  rc=${PIPESTATUS[0]}
  p=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\1/p' /tmp/e2e.log | tail -1)
  f=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\2/p' /tmp/e2e.log | tail -1)
  pass=$((pass + ${p:-0})); fail=$((fail + ${f:-0}))
  if [ -z "$p" ] || { [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ]; }; then bad "e2e suite over rdma exited $rc"; fi
  echo "driver api programs over rdma: ${p:-0} passed, ${f:-0} failed in $(( $(date +%s) - t_e2e )) s"
else
  bad "e2e programs built on the host (run-vm.sh could not build them)"
fi
# Bulk bytes read in place (issue 19): `__copy-data` copies 16 MiB pageable and pinned each way, checked byte for
# byte; the client's counters must show the pinned upload offered in place (no ring copy on the client) and the
# downloads read with RDMA READ (into the pinned buffer in place, into pageable memory through the bounce buffer).
# Then 16 MiB asynchronously from pinned memory in 1 MiB pieces and a last piece whose buffer is freed before the
# wait: those and the synchronous pinned upload are offered without waiting (at least 32 MiB).
out=$(env VGPU_LOG=warn "$VGPU" run --server rdma://10.77.0.2:7071 -- "$VGPU" __copy-data --kind periodic --mib 16 2>&1)
echo "$out"
counter() { echo "$out" | sed -n "s/^$1 \([0-9]*\)$/\1/p" | tail -1; }
mib16=$((16 << 20))
if echo "$out" | grep -q "16 MiB pinned: .*(verified)" && [ "$(counter rdma_offered_in_place)" -ge $mib16 ] \
  && [ "$(counter rdma_pulled_in_place)" -ge $mib16 ] && [ "$(counter rdma_pulled_bounced)" -ge $mib16 ] \
  && echo "$out" | grep -q "16 MiB pinned async in 1024 KiB pieces: .*(verified" \
  && [ "$(counter rdma_offered_unwaited)" -ge $((2 * mib16)) ]; then
  ok "copies over rdma read in place (offered $(counter rdma_offered_in_place), of which unwaited $(counter rdma_offered_unwaited), read in place $(counter rdma_pulled_in_place))"
else
  bad "copies over rdma read in place"
fi
# GPUDirect RDMA's path (issue 19), with the emulated backend's stand-in for dma-buf (its device memory exported as
# shared-memory files the rxe device registers): a second server with VGPU_GPUDIRECT=on; the same 16 MiB copies
# must be verified, and the worker's counters (logged when the session ends) must show the synchronous copies read
# into device memory and offered from it, not staged.
VGPU_GPUDIRECT=on VGPU_LOG=info "$VGPU" server --backend emulated --tcp 10.77.0.2:7072 --allow-plain-tcp --no-tls \
  --no-shm --rdma 10.77.0.2:7073 >/tmp/server-gd.log 2>&1 &
server_gd=$!
for _ in $(seq 1 300); do grep -q "ready on" /tmp/server-gd.log && break; sleep 0.2; done
out=$(env VGPU_LOG=warn "$VGPU" run --server rdma://10.77.0.2:7073 -- "$VGPU" __copy-data --kind periodic --mib 16 2>&1)
echo "$out"
for _ in $(seq 1 50); do grep -q "RDMA bytes of this session" /tmp/server-gd.log && break; sleep 0.2; done
grep -E "GPUDirect|RDMA bytes of this session" /tmp/server-gd.log
gd() { sed -n "s/.*RDMA bytes of this session: .*$1 \([0-9]*\).*/\1/p" /tmp/server-gd.log | tail -1; }
read_dev=$(gd "read into device memory"); offered_dev=$(gd "offered from device memory")
if grep -q "GPUDirect RDMA: on" /tmp/server-gd.log && echo "$out" | grep -q "16 MiB pinned: .*(verified)" \
  && [ "${read_dev:-0}" -ge $mib16 ] && [ "${offered_dev:-0}" -ge $mib16 ]; then
  ok "GPUDirect path: copies read into and offered from device memory (read $read_dev, offered $offered_dev)"
else
  bad "GPUDirect path: copies read into and offered from device memory (read ${read_dev:-none}, offered ${offered_dev:-none})"
  grep -E "WARN|ERROR" /tmp/server-gd.log | head -20
fi
kill "$server_gd" 2>/dev/null
# A client whose server dies mid-session gets an error from its next call, not a hang.
(timeout 60 "$VGPU" run --server rdma://10.77.0.2:7071 -- "$VGPU" __memcheck --hold-ms 5000 64 \
  >/tmp/victim.log 2>&1) &
victim=$!
# Kill only once the session is up (it has allocated): a loaded TCG machine can take seconds to get there.
for _ in $(seq 1 300); do grep -q "^alloc 64 " /tmp/victim.log && break; sleep 0.2; done
kill -9 "$server"
for w in $(ps -eo pid,args | awk '/vgpu __worker/ && !/awk/ {print $1}'); do kill -9 "$w"; done
wait "$victim"
rc=$?
cat /tmp/victim.log
if [ $rc -ne 124 ] && grep -q "^after_hold .*CUDA_ERROR" /tmp/victim.log; then
  ok "client notices a killed server"
else
  bad "client notices a killed server (exit $rc)"
fi
echo "end to end in $(( $(date +%s) - t )) s"

echo "RDMA-VM: $pass passed, $fail failed"
