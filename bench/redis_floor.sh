#!/usr/bin/env bash
# What Redis itself needs, in CPU, for the writes of the large-transaction
# workload of bench/redis_vs_recvlogical.sh (b), sent as plain pipelined
# commands without walcast's Lua script: for each of N rows one XADD of an
# event JSON of about 400 bytes, and for the hot half an HSET of the row's
# eight fields, its row-index entry and its index-set membership. This is
# the floor for any design that writes the same data; walcast's script
# costs Redis more (each argument becomes a Lua string, hashed byte by
# byte in Redis 7's Lua, then a Redis object again).
#
# With --multi the commands come as walcast's writer sends them: MULTI, then
# per 500 events their XADDs (NOMKSTREAM) and new rows' HSETs, one row-index
# HSET and one SADD per index set, then EXEC (without the script call).
#
# Usage: bash bench/redis_floor.sh [--multi] [ROWS]   (default 1000000)
# Prints redis-server's CPU seconds and the wall time of redis-cli --pipe.
set -euo pipefail
MULTI=0
if [ "${1:-}" = --multi ]; then
    MULTI=1
    shift
fi
ROWS=${1:-1000000}
WORK=$(mktemp -d /tmp/walcast-redis-floor.XXXXXX)
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cleanup() {
    redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

python3 - "$ROWS" "$WORK/cmds.resp" "$MULTI" <<'PY'
import json, sys
rows, path, multi = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)
BATCH = 500
with open(path, "wb") as f:
    if multi:
        # The stream exists before the first XADD … NOMKSTREAM, as the
        # snapshot leaves it.
        f.write(resp("XADD", "walcast:{bench}:events", "0-1", "event", "{}"))
    rowindex, members = [], {}
    for g in range(1, rows + 1):
        if multi and g % BATCH == 1:
            f.write(resp("MULTI"))
        id_ = 2000000000000 + g
        status = ["queued", "running", "succeeded", "failed"][g % 4]
        event = json.dumps({"id": "1000-%d" % g, "tenant": "bench", "lsn": "0/1A2B3C4D", "xid": 1234,
            "commit_ts": "2026-11-28T10:00:00.123456Z", "schema": "public", "table": "tasks", "op": "INSERT",
            "key": {"id": id_}, "new": {"id": id_, "status": status, "progress": g / rows,
            "payload": {"step": "build", "n": g}, "updated_at": "2026-11-28T10:00:00.123456Z",
            "owner": "6f1c2a3e-0000-4000-8000-00000000a002", "tags": ["bulk"]}, "old": None},
            separators=(",", ":"))
        if multi:
            f.write(resp("XADD", "walcast:{bench}:events", "NOMKSTREAM", "1000-%d" % g, "event", event))
        else:
            f.write(resp("XADD", "walcast:{bench}:events", "1000-%d" % g, "event", event))
        if status in ("queued", "running"):
            key = "walcast:{bench}:row:public.tasks:%d" % id_
            f.write(resp("HSET", key, "_event_id", "1000-%d" % g, "id", str(id_), "status", json.dumps(status),
                "progress", repr(g / rows), "payload", '{"step":"build","n":%d}' % g,
                "updated_at", '"2026-11-28T10:00:00.123456Z"', "owner", '"6f1c2a3e-0000-4000-8000-00000000a002"',
                "tags", '["bulk"]'))
            idx = "walcast:{bench}:idx:public.tasks:status:" + json.dumps(status)
            if multi:
                rowindex += [key, idx]
                members.setdefault(idx, []).append(key)
            else:
                f.write(resp("HSET", "walcast:{bench}:rowindex:public.tasks", key, idx))
                f.write(resp("SADD", idx, key))
        if multi and (g % BATCH == 0 or g == rows):
            if rowindex:
                f.write(resp("HSET", "walcast:{bench}:rowindex:public.tasks", *rowindex))
            for idx, keys in members.items():
                f.write(resp("SADD", idx, *keys))
            if members:
                f.write(resp("SADD", "walcast:{bench}:idxsets:public.tasks", *members))
            f.write(resp("EXEC"))
            rowindex, members = [], {}
PY

redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --logfile "$WORK/redis.log" >/dev/null
until redis-cli -p "$PORT" ping >/dev/null 2>&1; do sleep 0.1; done
cpu() { redis-cli -p "$PORT" info cpu | awk -F: '/^used_cpu_(sys|user):/ {t += $2} END {print t}'; }
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
c0=$(cpu)
t0=$(date +%s.%N)
redis-cli -p "$PORT" --pipe <"$WORK/cmds.resp" | tail -1
t1=$(date +%s.%N)
c1=$(cpu)
form="plain pipelined commands"
[ "$MULTI" = 1 ] && form="MULTI/EXEC per 500 events"
printf '%d rows as %s: redis-server cpu %.2f s, wall %.2f s\n' \
    "$ROWS" "$form" "$(echo "$c1 - $c0" | bc -l)" "$(echo "$t1 - $t0" | bc -l)"
