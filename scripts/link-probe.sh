#!/usr/bin/env bash
# Says which kernel link emulation this machine allows (issue 21), without changing anything it does not undo:
# network namespaces, a veth pair between two of them, `tc netem` (delay and rate), `tbf` (rate only) and TUN
# devices. Prints one line per feature ("yes" / "no: why") and a verdict: which emulator `vgpu bench --links` and the
# tests/torch tcp@SHAPE modes can rely on here. Where netem is missing the relay (`vgpu link-relay`) is what remains.
# Needs root for the namespace checks; exits 0 whatever it finds.
set -u
NS_A=vgpu-probe-a-$$
NS_B=vgpu-probe-b-$$
VA=vgpu-pa$$
VB=vgpu-pb$$
cleanup() {
  ip netns del "$NS_A" 2> /dev/null
  ip netns del "$NS_B" 2> /dev/null
  ip link del "$VA" 2> /dev/null
}
trap cleanup EXIT

say() { printf '%-10s %s\n' "$1" "$2"; }
first_line() { head -1 | tr -d '\n'; }

have_netns=no have_veth=no have_netem=no have_tbf=no have_tun=no
if ! command -v ip > /dev/null || ! command -v tc > /dev/null; then
  say netns "no: the ip and tc commands are missing (iproute2)"
else
  if err=$(ip netns add "$NS_A" 2>&1 && ip netns add "$NS_B" 2>&1); then
    have_netns=yes
    say netns yes
    if err=$(ip link add "$VA" type veth peer name "$VB" 2>&1 && ip link set "$VA" netns "$NS_A" 2>&1 &&
      ip link set "$VB" netns "$NS_B" 2>&1 && ip -n "$NS_A" link set "$VA" up 2>&1 &&
      ip -n "$NS_B" link set "$VB" up 2>&1); then
      have_veth=yes
      say veth yes
      if err=$(ip netns exec "$NS_A" tc qdisc add dev "$VA" root netem delay 250us rate 10gbit limit 100000 2>&1); then
        have_netem=yes; say netem yes
      else
        say netem "no: $(echo "$err" | first_line)"
      fi
      ip netns exec "$NS_A" tc qdisc del dev "$VA" root 2> /dev/null
      if err=$(ip netns exec "$NS_A" tc qdisc add dev "$VA" root tbf rate 10gbit burst 1mb latency 10ms 2>&1); then
        have_tbf=yes; say tbf "yes (rate only: tbf adds no delay)"
      else
        say tbf "no: $(echo "$err" | first_line)"
      fi
    else
      say veth "no: $(echo "$err" | first_line)"
    fi
  else
    say netns "no: $(echo "$err" | first_line)"
  fi
fi
if [ -c /dev/net/tun ] && err=$(ip tuntap add dev "vgpu-pt$$" mode tun 2>&1); then
  ip tuntap del dev "vgpu-pt$$" mode tun 2> /dev/null
  have_tun=yes; say tun yes
else
  say tun "no: ${err:-/dev/net/tun is missing}"
fi
for f in tcp_rmem tcp_wmem tcp_congestion_control; do
  say "$f" "$(cat /proc/sys/net/ipv4/$f 2> /dev/null || echo '?')"
done
if [ $have_netem = yes ]; then
  echo "verdict: netem on a veth pair can emulate every shape with the kernel's own TCP (windows included);" \
    "the relay stays the cross-check"
else
  echo "verdict: no netem: the kernel cannot add delay here; shapes go through the relay (vgpu link-relay), which" \
    "models round trips and rate but not TCP window limits (netns $have_netns, veth $have_veth, tbf $have_tbf," \
    "tun $have_tun)"
fi
exit 0
