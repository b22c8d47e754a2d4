#!/usr/bin/env bash
# Peak memory and time of `walcast tail` on one 200,000-row and one
# 2,000,000-row transaction (examples/large_txn.rs does the work; it starts
# and removes its own throwaway Postgres). Results: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin walcast --example large_txn
for rows in 200000 2000000; do
    echo "== $rows rows in one transaction"
    target/release/examples/large_txn target/release/walcast "$rows"
done
