#!/usr/bin/env python3
"""Waits, polling every 20 ms, until a benchmark reader has caught up; one
long-lived process with one Redis connection, so that the polling takes
next to no CPU from the processes being measured (a redis-cli and an awk
per poll took about a tenth of the machine's 2 vCPUs).

  wait_until.py file PATH MARKER PID   until PATH's last 300 bytes hold
                                       MARKER; fails if process PID ends
  wait_until.py stream PORT KEY COUNT PID
                                       until the Redis stream KEY on
                                       127.0.0.1:PORT has had COUNT
                                       entries added (XINFO entries-added);
                                       fails if process PID ends
"""
import os
import socket
import sys
import time

POLL = 0.02


def alive_or_exit(pid, when):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the reader (pid %d) ended %s" % (pid, when))


def wait_file(path, marker, pid):
    marker = marker.encode()
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 300))
                if marker in f.read():
                    return
        except FileNotFoundError:
            pass
        alive_or_exit(pid, "before the marker")
        time.sleep(POLL)


def read_reply(f):
    """One RESP2 reply from the buffered socket file `f`."""
    line = f.readline()
    if not line:
        sys.exit("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"-":
        return RuntimeError(rest.decode())
    if kind in (b"+", b":"):
        return int(rest) if kind == b":" else rest
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [read_reply(f) for _ in range(n)]
    sys.exit("unexpected reply from redis: %r" % line)


def entries_added(sock, f, key):
    """XINFO STREAM's entries-added, or None when the stream does not exist."""
    command = [b"XINFO", b"STREAM", key.encode()]
    sock.sendall(b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in command))
    reply = read_reply(f)
    if not isinstance(reply, list):
        return None
    fields = dict(zip(reply[::2], reply[1::2]))
    return fields.get(b"entries-added")


def wait_stream(port, key, count, pid):
    sock = socket.create_connection(("127.0.0.1", port))
    f = sock.makefile("rb")
    while True:
        added = entries_added(sock, f, key)
        if added is not None and added >= count:
            return
        alive_or_exit(pid, "with %s entries added to the stream of %d" % (added, count))
        time.sleep(POLL)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "file":
        wait_file(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "stream":
        wait_stream(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit(__doc__)
