#!/usr/bin/env python3
"""noise.py ROOT_PID INTERVAL_S OUT [PID...] - CPU used by "other" processes while it runs.

Used by peers.sh around compare.sh: every INTERVAL_S it reads /proc/*/stat and sums the CPU
time (utime + stime) that processes used which are neither descendants of ROOT_PID (the bench
script: compare.py, h2load, this sampler) nor the listed PIDs and their descendants (the rig's
servers, the sidecars, control). Kernel threads are reported apart, and so is the VM's steal
time (/proc/stat). On SIGTERM it writes one line to OUT:
"<seconds> <other CPU-s> <kernel-thread CPU-s> <steal CPU-s> <top consumers>".

Approximate: a process that lives shorter than INTERVAL_S is missed, the last slice of one
that exits between samples too; a concurrent build (rustc runs for seconds) shows up clearly.
"""
import collections
import os
import signal
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def scan() -> dict:
    """pid -> (ppid, starttime, cpu ticks, comm)."""
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        close = text.rindex(")")
        fields = text[close + 2:].split()
        try:
            procs[int(entry)] = (int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]),
                                 text[text.index("(") + 1:close])
        except (IndexError, ValueError):
            pass
    return procs


def steal_ticks() -> int:
    with open("/proc/stat") as f:
        return int(f.readline().split()[8])  # cpu user nice system idle iowait irq softirq steal


def family(procs: dict, roots: list) -> set:
    kids = collections.defaultdict(list)
    for pid, (ppid, *_rest) in procs.items():
        kids[ppid].append(pid)
    out, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(kids.get(pid, []))
    return out


def main() -> None:
    root, interval, out_path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    measured = [int(p) for p in sys.argv[4:]]
    with open("/proc/uptime") as f:
        start_ticks = float(f.read().split()[0]) * HZ  # processes started later count from 0
    t0, steal0 = time.monotonic(), steal_ticks()
    base: dict = {}  # (pid, starttime) -> ticks when first seen
    last: dict = {}  # (pid, starttime) -> (ticks, comm, kernel thread?)
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    first = True
    while True:
        procs = scan()
        ours = family(procs, [root, *measured])
        for pid, (ppid, st, ticks, comm) in procs.items():
            if pid in ours:
                continue
            key = (pid, st)
            if key not in base:
                base[key] = ticks if (first or st < start_ticks) else 0
            last[key] = (ticks, comm, ppid == 2 or pid == 2)
        first = False
        if stop:
            break
        time.sleep(interval)
    secs, steal = time.monotonic() - t0, steal_ticks() - steal0
    by_comm: collections.Counter = collections.Counter()
    kernel = 0
    for key, (ticks, comm, kthread) in last.items():
        used = ticks - base[key]
        if kthread:
            kernel += used
        elif used > 0:
            by_comm[comm] += used
    other = sum(by_comm.values())
    top = ", ".join(f"{c} {t / HZ:.1f}" for c, t in by_comm.most_common(4)) or "none"
    with open(out_path, "w") as f:
        f.write(f"{secs:.0f} {other / HZ:.1f} {kernel / HZ:.1f} {steal / HZ:.1f} {top}\n")


if __name__ == "__main__":
    main()
