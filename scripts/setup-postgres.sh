#!/usr/bin/env bash
# Makes PostgreSQL's server binaries (initdb, postgres) available for the control plane's store tests, which
# start their own throwaway cluster (control/tests/common/pg.rs). Idempotent: installs Debian's postgresql
# package only when no initdb is found on PATH or under /usr/lib/postgresql/*/bin. Starts no service.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  echo "PostgreSQL server binaries: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1 || command -v initdb)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The package's post-install creates the `postgres` user (the tests run the server as it when run as root) and
# a default cluster, which the tests do not use: stop it if it was started.
apt-get install -y -qq postgresql >/dev/null
command -v pg_ctlcluster >/dev/null 2>&1 && pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
  pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
done
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || { echo "postgresql installed but no initdb found" >&2; exit 1; }
echo "PostgreSQL server binaries: $(ls -d /usr/lib/postgresql/*/bin | tail -1)"
