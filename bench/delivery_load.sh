#!/usr/bin/env bash
# The delivery benchmark of issue #5 (examples/delivery_load.rs does the
# work; it starts and removes its own Postgres, redis-server and walcast):
#   latency   1,000 SSE subscribers, 1,000 single-row commits/s for 20 s
#             (every subscriber matches every change), then the same with
#             filters so that each change matches one subscriber;
#   idle      10,000 idle SSE connections: walcast's RSS per connection;
#   fanout    1,000 subscribers all matching, 100-row transactions as fast
#             as the slowest subscriber takes them: events delivered/s.
# Usage: bench/delivery_load.sh [latency|idle|fanout|ws|all] (default all).
# Results: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}" cargo build --release --bin walcast --example delivery_load

# The client and walcast each hold one socket per connection (plus their
# other files); both inherit this limit.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10100 ]; then
    echo "ulimit -n is $(ulimit -n); the idle scenario needs 10,100 (raise the hard limit)" >&2
    exit 1
fi

tool=target/release/examples/delivery_load
bin=target/release/walcast
run() {
    echo
    echo "== $(date -u +%H:%M:%S) UTC, $(cut -d' ' -f1-3 /proc/loadavg) load: $*"
    "$tool" --bin "$bin" "$@" 2>&1 | grep -v 'IncompleteMessage'
}
what="${1:-all}"
case "$what" in latency | all)
    run --scenario rate --subscribers 1000 --rate 1000 --duration 20
    run --scenario rate --subscribers 1000 --rate 1000 --duration 20 --groups 1000
esac
case "$what" in idle | all)
    run --scenario idle --subscribers 10000
esac
case "$what" in fanout | all)
    run --scenario fanout --subscribers 1000 --duration 20 --batch 100 --window 500
esac
case "$what" in ws | all)
    run --scenario rate --subscribers 1000 --rate 1000 --duration 20 --groups 1000 --transport ws
    run --scenario idle --subscribers 10000 --transport ws
esac
