#!/usr/bin/env bash
# Every attack of the hardening review at once, for a few minutes, against
# walcast run with the default [server] limits, while a normal subscriber's
# commit -> client latency is measured (examples/abuse.rs does the work; it
# starts and removes its own Postgres, redis-server and walcast).
# Usage: bench/abuse.sh [QUIET_SECS] [ABUSE_SECS] (default 30 and 120).
# Results: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}" cargo build --release --bin walcast --example abuse
# The attacking connections and walcast's file limit: walcast derives its
# connection cap from its own limit (it raises the soft limit to the hard).
ulimit -n "$(ulimit -Hn)"
echo "== $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), open-file limit $(ulimit -n)"
target/release/examples/abuse --bin target/release/walcast \
    --quiet-secs "${1:-30}" --abuse-secs "${2:-120}"
