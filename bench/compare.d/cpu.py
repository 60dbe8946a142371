"""Where the CPU went during one measured sysbench run.

On a 2-core machine every system in bench/compare is CPU-bound from 8-32 threads on, so its
throughput is 2 cores divided by the CPU one transaction costs. `Meter` reads that cost:
the machine's busy share (/proc/stat; iowait counts as idle), the cores used by every
`mariadbd` and every `quorumsql` process alive across the run (/proc/<pid>/stat), and the
cores used by sysbench itself (this process's reaped children, getrusage).
"""

import math
import os
import resource
import time

CLASSES = ("mariadbd", "quorumsql")
HZ = os.sysconf("SC_CLK_TCK")


def _machine():
    """(all jiffies, idle + iowait jiffies) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]


def _procs():
    """pid -> (command name, user + system jiffies) of the processes in CLASSES."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                st = f.read()
        except OSError:  # exited meanwhile
            continue
        name = st[st.index("(") + 1:st.rindex(")")]
        if name not in CLASSES:
            continue
        fields = st[st.rindex(")") + 2:].split()
        out[int(p)] = (name, int(fields[11]) + int(fields[12]))
    return out


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Meter:
    """Started just before the measured sysbench run, stopped just after it returned."""

    def __init__(self):
        self.t = time.monotonic()
        self.machine = _machine()
        self.procs = _procs()
        self.children = _children_cpu()

    def stop(self):
        el = time.monotonic() - self.t
        total, idle = _machine()
        procs = _procs()
        cores = {k: 0.0 for k in CLASSES}
        for pid, (name, t) in procs.items():
            before = self.procs.get(pid)
            # A process that started or exited during the run is left out (a restart shows up
            # as less CPU, never as more).
            if before and before[0] == name and el > 0:
                cores[name] += (t - before[1]) / HZ / el
        d_total = total - self.machine[0]
        busy = 1 - (idle - self.machine[1]) / d_total if d_total > 0 else math.nan
        return dict(busy=busy, mariadbd=cores["mariadbd"], quorumsql=cores["quorumsql"],
                    sysbench=(_children_cpu() - self.children) / el if el > 0 else math.nan,
                    seconds=el)
