#!/usr/bin/env bash
# Runs walcast's tests on this machine: installs what they need when missing,
# then `cargo test` (arguments go to it). The integration tests start their
# own Postgres clusters and redis-servers from the installed binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/packages.sh
need_postgres
# redis-server brings redis-cli (redis-tools), which the TLS test reads with.
need redis-server redis-server
need redis-cli redis-tools
# Clients the tests drive walcast with.
need curl curl
# The inspector page's test drives Chromium headless.
need chromium chromium
# The TLS tests make their CA and certificates.
need openssl openssl
# tests/pg_deadlines.rs reads walcast's sockets' keepalive timers.
need ss iproute2
install_needed
exec cargo test "$@"
