#!/usr/bin/env bash
# Compares walcast binaries (and pg_recvlogical, named `recv`) on the same
# WAL: one transaction of ROWS inserts into the tasks table of
# redis_vs_recvlogical.sh, read ROUNDS times by each reader in turn
# (A B A B ...), so that a VM whose speed drifts during the run slows both
# alike. Each run starts from the same point: the slot is copied from a
# template made before the workload, and Redis is restarted from an RDB file
# saved before it. Prints per run: elapsed time until the stream holds every
# change, walcast's and redis-server's CPU, and the VM's steal time.
#
# Usage: bash bench/ab_one_txn.sh ROWS ROUNDS READER...
#   e.g. bash bench/ab_one_txn.sh 1000000 3 /tmp/walcast-before target/release/walcast recv
# PERF=1 records the last walcast run with perf (call graphs) to $WORK/perf.data
# and keeps it at /tmp/walcast-ab.perf.data.
# Needs what redis_vs_recvlogical.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=$1
ROUNDS=$2
shift 2
READERS=("$@")
FIRST=
for r in "${READERS[@]}"; do
    [ "$r" = recv ] && continue
    [ -x "$r" ] || { echo "not an executable walcast binary: $r" >&2; exit 2; }
    FIRST=${FIRST:-$r}
done
[ -n "$FIRST" ] || { echo "name at least one walcast binary (the first makes the slot)" >&2; exit 2; }

. bench/pg_cluster.sh
. bench/tasks_schema.sh
redis_bench_init walcast-ab
pg_cluster_start
mkdir -p "$WORK/redis"
start_redis() {
    redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$WORK/redis" --dbfilename dump.rdb --save "" \
        --appendonly no --daemonize yes --logfile "$WORK/redis.log" >/dev/null
    until redis-cli -p "$RPORT" ping >/dev/null 2>&1; do sleep 0.05; done
}
start_redis
tasks_schema
tasks_config 'slot = "ab_slot"'
# The slot (with the snapshot of the empty table) and Redis as walcast left
# them, saved as the starting point of every run.
"$FIRST" --config "$WORK/walcast.toml" run >"$WORK/walcast.log" 2>&1 &
WALCAST_PID=$!
until grep -q "streaming tenant=" "$WORK/walcast.log"; do sleep 0.2; done
kill -INT "$WALCAST_PID"; wait "$WALCAST_PID" || true; WALCAST_PID=
redis-cli -p "$RPORT" save >/dev/null
redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
cp "$WORK/redis/dump.rdb" "$WORK/base.rdb"
"${PSQL[@]}" -c "select pg_copy_logical_replication_slot('ab_slot', 'ab_template')" >/dev/null
tasks_big_txn "$ROWS"
"${PSQL[@]}" -c "select pg_logical_emit_message(true, 'walcast-bench', 'walcast-ab-end')" >/dev/null
"${PSQL[@]}" -c "checkpoint" >/dev/null

steal() { awk '/^cpu / {print $9}' /proc/stat; }
HZ=$(getconf CLK_TCK)
for _ in $(seq 1 "$ROUNDS"); do
    for reader in "${READERS[@]}"; do
        "${PSQL[@]}" -c "select pg_drop_replication_slot('ab_slot')" >/dev/null
        "${PSQL[@]}" -c "select pg_copy_logical_replication_slot('ab_template', 'ab_slot')" >/dev/null
        steal0=$(steal)
        t0=$(date +%s.%N)
        if [ "$reader" = recv ]; then
            rm -f "$WORK/recv.out"
            "$BIN/pg_recvlogical" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -S ab_slot --start \
                -o proto_version=1 -o publication_names=walcast_bench -o messages=true -F 0 \
                -f "$WORK/recv.out" 2>>"$WORK/recv.log" &
            recv_pid=$!
            python3 bench/wait_until.py file "$WORK/recv.out" walcast-ab-end "$recv_pid"
            t1=$(date +%s.%N)
            kill -INT "$recv_pid"; wait "$recv_pid" 2>/dev/null || true
            printf '%-40s %6.2f s  steal %.2f s\n' recv "$(echo "$t1 - $t0" | bc -l)" \
                "$(echo "($(steal) - $steal0) / $HZ" | bc -l)"
            continue
        fi
        cp "$WORK/base.rdb" "$WORK/redis/dump.rdb"
        start_redis
        redis0=$(redis-cli -p "$RPORT" info cpu | awk -F: '/^used_cpu_(sys|user):/ {t += $2} END {print t}')
        steal0=$(steal)
        t0=$(date +%s.%N)
        "$reader" --config "$WORK/walcast.toml" run >>"$WORK/walcast.log" 2>&1 &
        WALCAST_PID=$!
        PERF_PID=
        if [ -n "${PERF:-}" ]; then
            perf record -F 250 --call-graph dwarf,16384 -o "$WORK/perf.data" -p "$WALCAST_PID" 2>/dev/null &
            PERF_PID=$!
        fi
        python3 bench/wait_until.py stream "$RPORT" "walcast:{bench}:events" "$((ROWS + 1))" "$WALCAST_PID"
        t1=$(date +%s.%N)
        redis1=$(redis-cli -p "$RPORT" info cpu | awk -F: '/^used_cpu_(sys|user):/ {t += $2} END {print t}')
        stat=($(cut -d' ' -f14,15 "/proc/$WALCAST_PID/stat"))
        if [ -n "$PERF_PID" ]; then
            kill -INT "$PERF_PID"; wait "$PERF_PID" || true
            cp "$WORK/perf.data" /tmp/walcast-ab.perf.data
        fi
        kill -INT "$WALCAST_PID"; wait "$WALCAST_PID" || true; WALCAST_PID=
        redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
        printf '%-40s %6.2f s  walcast cpu %.2f s  redis cpu %.2f s  steal %.2f s\n' "$reader" \
            "$(echo "$t1 - $t0" | bc -l)" "$(echo "(${stat[0]} + ${stat[1]}) / $HZ" | bc -l)" \
            "$(echo "$redis1 - $redis0" | bc -l)" "$(echo "($(steal) - $steal0) / $HZ" | bc -l)"
    done
done
