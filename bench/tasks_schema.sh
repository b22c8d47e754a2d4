# Sourced by the bench scripts: the tasks table they all use, walcast's
# configuration for it, the one large transaction, and for the scripts that
# write into Redis their setup and cleanup. Needs PSQL, WORK, PGPORT
# (bench/pg_cluster.sh); tasks_config also RPORT (the redis-server).
#
#   redis_bench_init PREFIX  pg_cluster_init PREFIX, a free port for Redis in
#                            RPORT, and a cleanup on exit: the walcast in
#                            WALCAST_PID (if any), the cluster, the
#                            redis-server on RPORT, the work directory
#   tasks_schema             the table and the publication walcast_bench
#   tasks_config [LINE]      writes $WORK/walcast.toml: tenant "bench", hot
#                            tasks (queued, running) mirrored, indexed by
#                            status; LINE is added to the tenant (slot = "…")
#   tasks_big_txn ROWS       one transaction inserting ROWS tasks, a quarter
#                            in each status

redis_bench_init() {
    pg_cluster_init "$1"
    RPORT=$(free_port)
    WALCAST_PID=
    trap redis_bench_cleanup EXIT
}

redis_bench_cleanup() {
    [ -n "$WALCAST_PID" ] && kill "$WALCAST_PID" 2>/dev/null || true
    pg_cluster_stop
    redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$WORK"
}

tasks_schema() {
    "${PSQL[@]}" <<'SQL'
create table tasks (id bigint primary key, status text not null, progress float8, payload jsonb,
                    updated_at timestamptz, owner uuid, tags text[]);
create publication walcast_bench for table tasks;
SQL
}

tasks_config() {
    cat > "$WORK/walcast.toml" <<TOML
[redis]
url = "redis://127.0.0.1:$RPORT/"
[[mirror]]
table = "public.tasks"
hot_when = ["status=in.(queued,running)"]
index = ["status"]
[[tenants]]
id = "bench"
url = "postgres://postgres@127.0.0.1:$PGPORT/postgres"
publication = "walcast_bench"
tables = ["public.tasks"]
${1:-}
TOML
}

tasks_big_txn() {
    "${PSQL[@]}" -c "insert into tasks select 2000000000000 + g, (array['queued','running','succeeded','failed'])[1 + g % 4], g / $1.0,
  jsonb_build_object('step', 'build', 'n', g), now(), gen_random_uuid(), '{bulk}' from generate_series(1, $1) g"
}
