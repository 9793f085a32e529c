#!/usr/bin/env bash
# Headless-browser test of the control plane's web UI: installs Debian's chromium and npm's playwright-core if
# missing (never a browser download), starts a control plane on a free port, and drives the UI.
# Prints "N passed, N failed"; exits non-zero on any failure. Screenshots go to control/tests/ui/artefacts/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d "$here/node_modules/playwright-core" ]; then
  # playwright-core has no install script that fetches browsers; the test points it at /usr/bin/chromium.
  (cd "$here" && npm install --no-audit --no-fund --loglevel=error)
fi

(cd "$root" && cargo build -q -p vgpu-control --bin vgpu-control)
bin="$CARGO_TARGET_DIR/debug/vgpu-control"

data="$(mktemp -d)"
profile="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 18470)"
admin_key="vgpu_uitest_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
node_token="vgpun_uitest_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
VGPU_ADMIN_KEY="$admin_key" VGPU_NODE_TOKEN="$node_token" \
  "$bin" --listen "127.0.0.1:$port" --data-dir "$data" --store sled --insecure-http >"$data/control.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data" "$profile"; }
trap cleanup EXIT

mkdir -p "$here/artefacts"
rc=0
node "$here/ui.test.mjs" "http://127.0.0.1:$port" "$admin_key" "$node_token" "$profile" "$here/artefacts" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "--- control plane log ---"
  cat "$data/control.log" || true
fi
exit "$rc"
