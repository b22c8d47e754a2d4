# Sourced by the bench scripts: a throwaway PostgreSQL cluster for logical
# decoding benchmarks (wal_level=logical, no fsync, large shared buffers),
# in a temp dir, on a free port, run as the postgres user when we are root.
#
#   pg_cluster_init PREFIX   sets BIN, RUNAS, WORK (a new /tmp/PREFIX.XXXXXX)
#                            and PGPORT
#   pg_cluster_start         initdb + start; sets PSQL (an array)
#   pg_cluster_stop          stops it (immediate), quietly
#   free_port                prints a free TCP port on 127.0.0.1

free_port() {
    python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

pg_cluster_init() {
    BIN=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    RUNAS=()
    [ "$(id -u)" = 0 ] && RUNAS=(runuser -u postgres --)
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 755 "$WORK"
    [ "$(id -u)" = 0 ] && chown postgres "$WORK"
    PGPORT=$(free_port)
}

pg_cluster_start() {
    "${RUNAS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync >/dev/null
    "${RUNAS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w -o \
        "-c port=$PGPORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK -c wal_level=logical -c fsync=off -c synchronous_commit=off -c max_wal_size=4GB -c shared_buffers=512MB" \
        start >/dev/null
    PSQL=("$BIN/psql" -X -q -At -h "$WORK" -p "$PGPORT" -U postgres -d postgres)
}

pg_cluster_stop() {
    "${RUNAS[@]}" "$BIN/pg_ctl" -D "$WORK/data" stop -m immediate >/dev/null 2>&1 || true
}
