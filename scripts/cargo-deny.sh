#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (deny.toml): RustSec advisories, licences, banned/duplicate crates, sources.
# Installs cargo-deny from crates.io the first time (`cargo install cargo-deny --locked`; kept in ~/.cargo/bin).
# The advisory database is a git repository on GitHub: when it cannot be fetched, this says so loudly and checks
# licences, bans and sources only (a copy fetched earlier is used instead, with its age, when there is one).
# Ends with "N passed, N failed" (one per check run) like the other suites; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
CARGO_DENY_VERSION="${CARGO_DENY_VERSION:-0.20.2}"

if ! cargo deny --version >/dev/null 2>&1; then
  echo "cargo-deny: not installed; installing $CARGO_DENY_VERSION from crates.io (a few minutes, once)"
  if ! cargo install cargo-deny --locked --version "$CARGO_DENY_VERSION" >/tmp/cargo-deny-install.log 2>&1; then
    tail -20 /tmp/cargo-deny-install.log
    echo "cargo-deny: installation failed (log above)"
    echo "0 passed, 1 failed"
    exit 1
  fi
fi
echo "cargo-deny: $(cargo deny --version)"

pass=0
fail=0
check() { # check NAME [--offline] WHICH: one cargo-deny check, counted
  local name=$1 global=()
  shift
  if [ "${1:-}" = --offline ]; then global=(--offline); shift; fi
  if cargo deny "${global[@]}" --log-level warn check "$@"; then
    echo "cargo-deny: $name ok"
    pass=$((pass + 1))
  else
    echo "cargo-deny: $name FAILED"
    fail=$((fail + 1))
  fi
}

# The advisory database: fetched fresh when possible, else a previous copy, else not checked (said so).
db_dir="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if fetch_log=$(timeout 120 cargo deny fetch db 2>&1); then
  check advisories advisories
else
  reason=$(printf '%s\n' "$fetch_log" | grep -iE 'error|fail|resolve|connect' | head -3 | tr '\n' ' ')
  if [ -n "$(find "$db_dir" -mindepth 2 -maxdepth 2 -name .git 2>/dev/null)" ]; then
    age=$(find "$db_dir" -maxdepth 2 -name .git -printf '%TY-%Tm-%Td\n' 2>/dev/null | sort | tail -1)
    echo "cargo-deny: WARNING: the advisory database could not be updated (${reason:-no reason given});" \
      "checking against the copy from ${age:-an unknown date}"
    check "advisories (database from ${age:-unknown date})" --offline advisories
  else
    echo "cargo-deny: WARNING: advisories NOT checked: the RustSec advisory database" \
      "(https://github.com/rustsec/advisory-db) could not be fetched: ${reason:-no reason given}"
    echo "cargo-deny: checking licences, bans and sources only"
  fi
fi
check licences licenses
check bans bans
check sources sources

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
