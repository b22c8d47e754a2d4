#!/usr/bin/env bash
# How close walcast (decoding into Redis: mirror + stream) comes to the speed
# at which Postgres itself sends the changes (pg_recvlogical with pgoutput,
# until it has written the last change to a file), on the same WAL:
#   (a) 200,000 single-row transactions, (b) one 1,000,000-row transaction.
# Prints, per workload: both elapsed times, their ratio (target <= 1.25),
# changes/s, and walcast's CPU seconds and peak RSS; Postgres's and
# redis-server's CPU, and the VM's steal time, during each reader's run; and how
# many Redis transactions (batches) walcast sent.
#
# Usage: bash bench/redis_vs_recvlogical.sh [SINGLE_TXNS] [BIG_TXN_ROWS]
# Needs the PostgreSQL server binaries, pg_recvlogical, pgbench, redis-server,
# python3 (bench/wait_until.py polls for the end of each reader's run).
set -euo pipefail
cd "$(dirname "$0")/.."
SINGLE=${1:-200000}
BIG=${2:-1000000}

. bench/pg_cluster.sh
. bench/tasks_schema.sh
redis_bench_init walcast-bench

cargo build --release --quiet
WALCAST=$PWD/target/release/walcast

pg_cluster_start
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --logfile "$WORK/redis.log" >/dev/null
tasks_schema
tasks_config

# walcast creates its slot (with the snapshot of the empty table) and stops;
# pg_recvlogical gets its own slot at the same point.
"$WALCAST" --config "$WORK/walcast.toml" run >"$WORK/walcast.log" 2>&1 &
WALCAST_PID=$!
until grep -q "streaming" "$WORK/walcast.log"; do sleep 0.2; done
kill -INT "$WALCAST_PID"; wait "$WALCAST_PID" || true; WALCAST_PID=
"${PSQL[@]}" -c "select pg_create_logical_replication_slot('bench_recv', 'pgoutput')" >/dev/null

STREAMED=0 # events in walcast's stream before the workload
# CPU seconds of every process of this cluster now (the walsenders are the
# postmaster's children); one that starts later counts from 0.
pg_cpu() {
    local pm total=0 pid
    pm=$(head -1 "$WORK/data/postmaster.pid")
    for pid in $pm $(pgrep -P "$pm"); do
        [ -r "/proc/$pid/stat" ] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total / $(getconf CLK_TCK)" | bc -l
}
# CPU time the hypervisor gave to other guests while this one wanted it
# (steal, all CPUs, /proc/stat), in seconds: on a shared VM it shows when a
# run was slowed from outside.
steal() { awk '/^cpu / {print $9}' /proc/stat; }
steal_s() { echo "($(steal) - $1) / $(getconf CLK_TCK)" | bc -l; }
measure() { # $1: workload name, $2: number of changes
    local name=$1 changes=$2 marker
    # Both readers stop at a logical message committed after the workload.
    # (pg_recvlogical -E <lsn> is not a usable stop: seen here, it can exit
    # on a keepalive about 10 s in, before any of a large transaction has
    # arrived.)
    marker="walcast-bench-end-$RANDOM$RANDOM"
    "${PSQL[@]}" -c "select pg_logical_emit_message(true, 'walcast-bench', '$marker')" >/dev/null
    local end
    end=$("${PSQL[@]}" -c "select pg_current_wal_lsn()")
    # The floor: Postgres decoding and sending, written to a file as it
    # arrives, until the marker is in it.
    local t0 t1 recv_s walcast_s recv_pid pg0 pg_recv pg_walcast
    rm -f "$WORK/recv.out"
    pg0=$(pg_cpu)
    local steal0 recv_steal walcast_steal
    steal0=$(steal)
    t0=$(date +%s.%N)
    "$BIN/pg_recvlogical" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -S bench_recv --start \
        -o proto_version=1 -o publication_names=walcast_bench -o messages=true -F 0 -f "$WORK/recv.out" 2>>"$WORK/recv.log" &
    recv_pid=$!
    python3 bench/wait_until.py file "$WORK/recv.out" "$marker" "$recv_pid"
    t1=$(date +%s.%N)
    pg_recv=$(echo "$(pg_cpu) - $pg0" | bc -l)
    recv_steal=$(steal_s "$steal0")
    kill -INT "$recv_pid"; wait "$recv_pid" 2>/dev/null || true
    recv_s=$(echo "$t1 - $t0" | bc -l)
    # Stopped by a signal, pg_recvlogical may not have confirmed all it
    # read: move its slot past the marker, or the next workload's floor
    # would include this one again. Only forward: its confirmations can be
    # past the marker already (WAL written after it, e.g. by autovacuum),
    # and advancing backwards fails forever. Retried while the walsender
    # still holds the slot.
    until "${PSQL[@]}" -c "select pg_replication_slot_advance(slot_name, '$end') from pg_replication_slots
                            where slot_name = 'bench_recv' and confirmed_flush_lsn < '$end'" >/dev/null 2>&1; do
        sleep 0.1
    done
    rm -f "$WORK/recv.out"
    # walcast: from its start until the stream holds every change and the
    # marker (the mirror is written by the same script calls).
    local target=$((STREAMED + changes + 1))
    STREAMED=$target
    local redis_cpu0 redis_cpu1
    redis_cpu0=$(redis-cli -p "$RPORT" info cpu | awk -F: '/^used_cpu_(sys|user):/ {t += $2} END {print t}')
    redis-cli -p "$RPORT" config resetstat >/dev/null
    pg0=$(pg_cpu)
    steal0=$(steal)
    t0=$(date +%s.%N)
    "$WALCAST" --config "$WORK/walcast.toml" run >>"$WORK/walcast.log" 2>&1 &
    WALCAST_PID=$!
    # entries-added: every entry ever added (the stream is trimmed).
    python3 bench/wait_until.py stream "$RPORT" "walcast:{bench}:events" "$target" "$WALCAST_PID"
    t1=$(date +%s.%N)
    pg_walcast=$(echo "$(pg_cpu) - $pg0" | bc -l)
    walcast_steal=$(steal_s "$steal0")
    walcast_s=$(echo "$t1 - $t0" | bc -l)
    redis_cpu1=$(redis-cli -p "$RPORT" info cpu | awk -F: '/^used_cpu_(sys|user):/ {t += $2} END {print t}')
    # walcast's Redis transactions (one per batch): few and large when
    # group commit works.
    local batches
    batches=$(redis-cli -p "$RPORT" info commandstats | awk -F'[=,:]' '/^cmdstat_exec:/ {print $3}')
    local stat hwm cpu
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$WALCAST_PID/status")
    stat=($(cut -d' ' -f14,15 "/proc/$WALCAST_PID/stat"))
    cpu=$(echo "(${stat[0]} + ${stat[1]}) / $(getconf CLK_TCK)" | bc -l)
    kill -INT "$WALCAST_PID"; wait "$WALCAST_PID" || true; WALCAST_PID=
    printf '%s: %d changes\n' "$name" "$changes"
    printf '  pg_recvlogical to a file:    %.2f s (%.0f changes/s), postgres cpu %.2f s, steal %.2f s\n' \
        "$recv_s" "$(echo "$changes / $recv_s" | bc -l)" "$pg_recv" "$recv_steal"
    printf '  walcast into redis:          %.2f s (%.0f changes/s), cpu %.2f s, peak rss %d MiB\n' \
        "$walcast_s" "$(echo "$changes / $walcast_s" | bc -l)" "$cpu" "$((hwm / 1024))"
    printf '  redis-server cpu meanwhile:   %.2f s, postgres cpu %.2f s, steal %.2f s, %s redis transactions\n' \
        "$(echo "$redis_cpu1 - $redis_cpu0" | bc -l)" "$pg_walcast" "$walcast_steal" "${batches:-0}"
    printf '  ratio walcast / pg_recvlogical: %.2f (target <= 1.25)\n' "$(echo "$walcast_s / $recv_s" | bc -l)"
}

cat > "$WORK/single.sql" <<'SQL'
\set id random(1, 1000000000000)
insert into tasks values (:id, (array['queued','running','succeeded','failed'])[1 + :id % 4], 0.5,
  '{"step": "build", "attempt": 1}', now(), gen_random_uuid(), '{ci,build}') on conflict (id) do nothing;
SQL
"$BIN/pgbench" -n -h "$WORK" -p "$PGPORT" -U postgres -c 4 -j 2 -t $((SINGLE / 4)) -f "$WORK/single.sql" postgres >/dev/null
measure "(a) single-row transactions" "$(( $("${PSQL[@]}" -c "select count(*) from tasks") ))"

tasks_big_txn "$BIG"
measure "(b) one transaction" "$BIG"
