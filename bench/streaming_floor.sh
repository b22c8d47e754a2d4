#!/usr/bin/env bash
# How fast Postgres sends one 1,000,000-row transaction to pg_recvlogical
# with pgoutput proto_version 1 (the whole transaction decoded, spilled to
# disk, then sent at its commit: what walcast asks for) and with
# proto_version 2, streaming on (sent while it is decoded): same WAL, two
# slots each, alternating. Each run ends when a message committed after the
# transaction has arrived. (docs/benchmarks.md, "Fifth session")
#
# Usage: bash bench/streaming_floor.sh [ROWS]
# Needs the PostgreSQL server binaries, pg_recvlogical, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}

. bench/pg_cluster.sh
. bench/tasks_schema.sh
pg_cluster_init walcast-streaming
cleanup() {
    pg_cluster_stop
    rm -rf "$WORK"
}
trap cleanup EXIT
pg_cluster_start
tasks_schema
SLOTS=(v1a v2a v1b v2b)
for slot in "${SLOTS[@]}"; do
    "${PSQL[@]}" -c "select pg_create_logical_replication_slot('$slot', 'pgoutput')" >/dev/null
done
tasks_big_txn "$ROWS"
marker="walcast-streaming-end-$RANDOM$RANDOM"
"${PSQL[@]}" -c "select pg_logical_emit_message(true, 'walcast-bench', '$marker')" >/dev/null
for slot in "${SLOTS[@]}"; do
    case $slot in
        v1*) opts=(-o proto_version=1) ;;
        v2*) opts=(-o proto_version=2 -o streaming=on) ;;
    esac
    rm -f "$WORK/out"
    t0=$(date +%s.%N)
    "$BIN/pg_recvlogical" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -S "$slot" --start "${opts[@]}" \
        -o publication_names=walcast_bench -o messages=true -F 0 -f "$WORK/out" 2>>"$WORK/recv.log" &
    pid=$!
    python3 bench/wait_until.py file "$WORK/out" "$marker" "$pid"
    t1=$(date +%s.%N)
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    printf '%s (%s): %.2f s\n' "$slot" "${opts[*]}" "$(echo "$t1 - $t0" | bc -l)"
done
