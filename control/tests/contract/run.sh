#!/usr/bin/env bash
# Property-based contract test of the control plane's REST API: schemathesis (from PyPI, pinned) generates
# requests from api-spec/openapi.yaml against a running `vgpu-control` (memory store, plain HTTP on loopback)
# and checks every answer: no 5xx, documented status codes, content types and headers, response bodies that
# match their schemas. Stateful: the spec's links chain creations to reads, updates and deletions. Bounded:
# SCHEMATHESIS_MAX_EXAMPLES (default 20) examples per operation and a fixed seed, about a minute on 2 cores.
# Ends with schemathesis' own summary ("N passed, N failed").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
venv=$target/schemathesis-venv
if ! [ -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  # hypothesis pinned too: newer releases changed internals schemathesis 3.39 uses.
  "$venv/bin/pip" install -q "schemathesis==3.39.16" "hypothesis==6.112.0"
fi
bin=${VGPU_CONTROL_BIN:-}
if [ -z "$bin" ]; then
  (cd "$root" && cargo build -q -p vgpu-control --bin vgpu-control)
  bin=$target/debug/vgpu-control
fi
admin=vgpu_admincontract_0123456789abcdefghijklmnop
node=vgpun_contract_0123456789abcdefghij
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
VGPU_ADMIN_KEY=$admin VGPU_NODE_TOKEN=$node "$bin" --listen "127.0.0.1:$port" --store memory --insecure-http \
  --data-dir "$data" >"$data/control.log" 2>&1 &
cp=$!
cleanup() { kill "$cp" 2>/dev/null || true; wait "$cp" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
url=http://127.0.0.1:$port
for _ in $(seq 100); do curl -fs "$url/v1/health" >/dev/null 2>&1 && break; sleep 0.1; done
# Something to find: a server with GPUs, a plan, a tenant with a key and a slice.
post() { curl -fs -X POST -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' -d "$2" "$url$1"; }
curl -fs -X POST -H 'Content-Type: application/json' "$url/v1/servers" -d "{\"name\":\"contract\",\"address\":\"c:1\",\"node_token\":\"$node\",\"gpus\":[{\"uuid\":\"GPU-c0\",\"index\":0,\"name\":\"H100\",\"memory_total_mib\":81920}]}" >/dev/null
post /v1/plans '{"name":"p","rates":[{"gpu_model":"*","per_gpu_hour":1,"per_gib_hour":0}]}' >/dev/null
tid=$(post /v1/tenants '{"name":"contract-tenant"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
post "/v1/tenants/$tid/keys" '{}' >/dev/null
post /v1/assignments "{\"tenant_id\":\"$tid\",\"gpu_uuid\":\"GPU-c0\",\"memory_limit_mib\":1024}" >/dev/null
rc=0
"$venv/bin/schemathesis" run "$root/api-spec/openapi.yaml" --base-url "$url" -H "Authorization: Bearer $admin" \
  --checks all --hypothesis-max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-20}" --hypothesis-seed 17 \
  --hypothesis-deadline 10000 --stateful links --no-color --exclude-path-regex '^/(metrics|ui/.*)?$' || rc=$?
if [ $rc -ne 0 ]; then echo "--- control plane log ---"; tail -20 "$data/control.log"; fi
cleanup
trap - EXIT
exit $rc
