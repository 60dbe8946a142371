"""sysbench 1.0.20 runs against one endpoint, and what is read from their output."""

import re

import procs


class Endpoint:
    """Where one row of the result table sends its load."""

    def __init__(self, row, port, user, password):
        self.row = row
        self.port = port
        self.user = user
        self.password = password

    def __repr__(self):
        return "%s@127.0.0.1:%d" % (self.row, self.port)


def argv(opts, ep, workload, threads, cmd, seconds=0):
    a = ["sysbench", workload, "--db-driver=mysql", "--mysql-host=127.0.0.1",
         "--mysql-port=%d" % ep.port, "--mysql-user=" + ep.user, "--mysql-password=" + ep.password,
         "--mysql-db=sbtest", "--tables=%d" % opts.tables, "--table-size=%d" % opts.table_size,
         "--threads=%d" % threads, "--db-ps-mode=" + opts.ps_mode]
    if cmd == "run":
        a += ["--time=%d" % seconds, "--percentile=95"]
    return a + [cmd]


def run(opts, ep, workload, threads, cmd, seconds=0, raw_path=None):
    """Returns (output, error message or None, argv)."""
    a = argv(opts, ep, workload, threads, cmd, seconds)
    limit = seconds + 180 if cmd == "run" else 600
    rc, out, err = procs.run(a, timeout=limit)
    text = (out or "") + (err or "")
    if raw_path:
        with open(raw_path, "w") as f:
            f.write("# " + " ".join(a) + "\n" + text)
    if rc is None:
        return None, "sysbench did not finish within %d s" % limit, a
    if rc != 0 or "FATAL" in text:
        fatal = [l.strip() for l in text.splitlines() if "FATAL" in l or "error" in l.lower()]
        last = " | ".join(l.strip() for l in text.strip().splitlines()[-3:])
        return None, "; ".join(dict.fromkeys(fatal))[:600] or ("exit %s: %s" % (rc, last)), a
    return text, None, a


def parse(text):
    t = re.search(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec\.\)", text)
    q = re.search(r"queries:\s+(\d+)\s+\(([\d.]+) per sec\.\)", text)
    p95 = re.search(r"95th percentile:\s+([\d.]+)", text)
    ign = re.search(r"ignored errors:\s+(\d+)", text)
    if not t or not q:
        return None
    return dict(tps=float(t.group(2)), qps=float(q.group(2)),
                p95=float(p95.group(1)) if p95 else float("nan"),
                ignored=int(ign.group(1)) if ign else 0)
