#!/usr/bin/env bash
# Runs the walcast demo on this machine: installs what it needs when missing
# (PostgreSQL server, Redis, curl), then `cargo run --release -- demo`.
# Arguments go to the demo (for example --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/packages.sh
need_postgres
need redis-server redis-server
# The demo prints curl commands to try.
need curl curl
install_needed
exec cargo run --release -- demo "$@"
