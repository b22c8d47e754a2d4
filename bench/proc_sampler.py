#!/usr/bin/env python3
"""Prints, every 0.5 s for SECONDS seconds, how busy the machine was: idle
and steal time (percent of one CPU, so up to 100 % per core) and the five
busiest process names (all processes of a name summed; every postgres
process counts as "postgres"). Run it beside a benchmark to see its phases:

  python3 bench/proc_sampler.py 75 > samples.txt &
  bash bench/redis_vs_recvlogical.sh 1000 1000000

Reads /proc only; costs about 2 % of one core.
"""
import glob
import os
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")
INTERVAL = 0.5


def processes():
    """pid -> (name, user + system ticks)"""
    out = {}
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(path) as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(path.split("/")[2])] = (name, int(fields[11]) + int(fields[12]))
    return out


def machine():
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def main(seconds):
    before, machine_before = processes(), machine()
    start = time.time()
    while time.time() < start + seconds:
        time.sleep(INTERVAL)
        now, machine_now = processes(), machine()
        busy = {}
        for pid, (name, ticks) in now.items():
            used = ticks - before[pid][1] if pid in before else ticks
            if used > 0:
                key = "postgres" if name.startswith("postgres") else name
                busy[key] = busy.get(key, 0) + used
        pct = lambda ticks: ticks * 100 / HZ / INTERVAL
        idle = machine_now[3] - machine_before[3]
        steal = machine_now[7] - machine_before[7]
        top = sorted(busy.items(), key=lambda kv: -kv[1])[:5]
        print("%5.1f idle %3d%% steal %3d%% | %s" % (
            time.time() - start, pct(idle), pct(steal),
            " ".join("%s %d%%" % (name, pct(ticks)) for name, ticks in top)), flush=True)
        before, machine_before = now, machine_now


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 60)
