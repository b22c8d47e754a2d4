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
# Usage: bash bench/redis_floor.sh [ROWS]   (default 1000000)
# Prints redis-server's CPU seconds and the wall time of redis-cli --pipe.
set -euo pipefail
ROWS=${1:-1000000}
WORK=$(mktemp -d /tmp/walcast-redis-floor.XXXXXX)
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cleanup() {
    redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

python3 - "$ROWS" "$WORK/cmds.resp" <<'PY'
import json, sys
rows, path = int(sys.argv[1]), sys.argv[2]
def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)
with open(path, "wb") as f:
    for g in range(1, rows + 1):
        id_ = 2000000000000 + g
        status = ["queued", "running", "succeeded", "failed"][g % 4]
        event = json.dumps({"id": "1000-%d" % g, "tenant": "bench", "lsn": "0/1A2B3C4D", "xid": 1234,
            "commit_ts": "2026-11-28T10:00:00.123456Z", "schema": "public", "table": "tasks", "op": "INSERT",
            "key": {"id": id_}, "new": {"id": id_, "status": status, "progress": g / rows,
            "payload": {"step": "build", "n": g}, "updated_at": "2026-11-28T10:00:00.123456Z",
            "owner": "6f1c2a3e-0000-4000-8000-00000000a002", "tags": ["bulk"]}, "old": None},
            separators=(",", ":"))
        f.write(resp("XADD", "walcast:{bench}:events", "1000-%d" % g, "event", event))
        if status in ("queued", "running"):
            key = "walcast:{bench}:row:public.tasks:%d" % id_
            f.write(resp("HSET", key, "_event_id", "1000-%d" % g, "id", str(id_), "status", json.dumps(status),
                "progress", repr(g / rows), "payload", '{"step":"build","n":%d}' % g,
                "updated_at", '"2026-11-28T10:00:00.123456Z"', "owner", '"6f1c2a3e-0000-4000-8000-00000000a002"',
                "tags", '["bulk"]'))
            idx = "walcast:{bench}:idx:public.tasks:status:" + json.dumps(status)
            f.write(resp("HSET", "walcast:{bench}:rowindex:public.tasks", key, idx))
            f.write(resp("SADD", idx, key))
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
printf '%d rows as plain pipelined commands: redis-server cpu %.2f s, wall %.2f s\n' \
    "$ROWS" "$(echo "$c1 - $c0" | bc -l)" "$(echo "$t1 - $t0" | bc -l)"
