"""A local QuorumSQL cluster for the benchmarks in bench/ (python3 stdlib only).

Starts `quorumsql node` processes one by one from the configs `quorumsql up --configs-only`
writes, so a benchmark can kill -9 one node and start it again. Every process started here is
stopped at exit (atexit + SIGINT/SIGTERM/SIGHUP), by its pid; the mariadbd a node supervises
dies with it (PR_SET_PDEATHSIG), and any mariadbd pid seen in /status that outlives its node
is SIGKILLed too.
"""

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.path.join(REPO, "target", "release", "quorumsql")
USER = "quorum"
PASSWORD = "quorum"
# Port offsets inside a node's block of 10 (README: node i uses P+10(i-1)+k).
RW, RO, PEER, ADMIN, MARIADB, SERVE = 0, 1, 2, 3, 4, 5


def log(msg):
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


def ports_free(base, nodes):
    """True if every port of every node's block binds on 127.0.0.1 now."""
    for p in range(base, base + 10 * nodes):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            return False
        finally:
            s.close()
    return True


def pick_base_port(wanted=None, nodes=3):
    if wanted is not None:
        if not ports_free(wanted, nodes):
            sys.exit("base port %d: some port in %d..%d is in use" % (wanted, wanted, wanted + 10 * nodes - 1))
        return wanted
    for base in range(24600, 30000, 50):
        if ports_free(base, nodes):
            return base
    sys.exit("no free block of %d ports found on 127.0.0.1" % (10 * nodes))


def load_avg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


class Cluster:
    def __init__(self, base_port=None, nodes=3, keep=False, workdir=None):
        if not os.access(BINARY, os.X_OK):
            sys.exit("%s is missing: build it with `cargo build --release -p quorumsql-cli`" % BINARY)
        self.nodes = nodes
        self.base = pick_base_port(base_port, nodes)
        self.keep = keep
        self.dir = workdir or tempfile.mkdtemp(prefix="qs-bench-")
        self.procs = {}  # node id -> Popen of `quorumsql node`
        self.mariadb_pids = set()
        self._stopped = False
        atexit.register(self.stop)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        subprocess.run(
            [BINARY, "up", "--configs-only", "--nodes", str(nodes), "--dir", self.dir,
             "--base-port", str(self.base), "--user", USER, "--password", PASSWORD],
            check=True, stdout=subprocess.DEVNULL)
        log("cluster dir %s, base port %d" % (self.dir, self.base))

    def _on_signal(self, signum, _frame):
        log("signal %d: stopping the cluster" % signum)
        self.stop()
        os._exit(128 + signum)

    # ports / paths
    def port(self, node, kind):
        return self.base + 10 * (node - 1) + kind

    def config(self, node):
        return os.path.join(self.dir, "node%d.toml" % node)

    def logfile(self, node):
        return os.path.join(self.dir, "node%d.log" % node)

    def socket_path(self, node):
        return os.path.join(self.dir, "node%d" % node, "mariadb.sock")

    # processes
    def start_node(self, node):
        out = open(self.logfile(node), "ab")
        self.procs[node] = subprocess.Popen(
            [BINARY, "node", "--config", self.config(node)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        return self.procs[node].pid

    def start(self):
        for n in range(1, self.nodes + 1):
            self.start_node(n)

    def kill9(self, node):
        p = self.procs[node]
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        for st in self.all_status():
            if st and st.get("mariadb_pid"):
                self.mariadb_pids.add(st["mariadb_pid"])
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    p.terminate()
                except OSError:
                    pass
        deadline = time.time() + 20
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for pid in self.mariadb_pids:
            if pid_alive(pid) and "mariadbd" in proc_cmdline(pid) and self.dir in proc_cmdline(pid):
                log("mariadbd pid %d outlived its node: SIGKILL" % pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            log("kept %s (node logs: node<i>.log)" % self.dir)

    # status
    def node_status(self, node, timeout=1.0):
        url = "http://127.0.0.1:%d/status" % self.port(node, ADMIN)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                st = json.loads(r.read().decode())
        except (OSError, ValueError):
            return None
        if st.get("mariadb_pid"):
            self.mariadb_pids.add(st["mariadb_pid"])
        return st

    def all_status(self):
        return [self.node_status(n) for n in range(1, self.nodes + 1)]

    def master(self):
        """The node every reachable node names as master and that calls itself master, or None."""
        sts = self.all_status()
        for n, st in enumerate(sts, 1):
            if st and st.get("role") == "master" and st.get("master") == n and st.get("healthy"):
                return n
        return None

    def wait_healthy(self, timeout, what="all nodes healthy"):
        """Wait until there is a master, every node is healthy and follows it, and then until
        every node has applied the master's last GTID as of that moment (under steady writes
        the tip moves on, so waiting for equality could wait forever). Returns seconds waited;
        on timeout exits showing the state seen."""
        t0 = time.time()
        sts = []
        target = None
        while time.time() - t0 < timeout:
            sts = self.all_status()
            m = self.master()
            # A master without a lease yet refuses RW statements (ERR 1053 "lease lost").
            if m and sts[m - 1] and sts[m - 1].get("lease_remaining_ms") and all(
                    st and st.get("healthy") and st.get("role") in ("master", "replica")
                    and st.get("master") == m for st in sts):
                if target is None:
                    target = gtid_seq(sts[m - 1].get("last_gtid"))
                if all(gtid_seq(st.get("applied_gtid")) >= target for st in sts):
                    return time.time() - t0
            time.sleep(0.1)
        self.fail("timed out after %.0f s waiting for %s (catch-up target seq %s); last status: %s"
                  % (timeout, what, target, brief(sts)))

    def fail(self, msg):
        log("FAILED: " + msg)
        for n in range(1, self.nodes + 1):
            log("--- last lines of %s" % self.logfile(n))
            for line in tail(self.logfile(n), 15):
                print("    " + line, file=sys.stderr)
        self.keep = True
        sys.exit(1)

    # SQL through the mariadb CLI
    def sql_socket(self, node, stmt, timeout=30):
        r = subprocess.run(["mariadb", "-S", self.socket_path(node), "-uroot", "-N", "-B", "-e", stmt],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("node%d socket: %s: %s" % (node, stmt, r.stderr.strip()))
        return r.stdout

    def sql_tcp(self, port, stmt, timeout=30):
        r = subprocess.run(["mariadb", "-h127.0.0.1", "-P%d" % port, "-u" + USER, "-p" + PASSWORD,
                            "--connect-timeout=5", "-N", "-B", "-e", stmt],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("port %d: %s: %s" % (port, stmt, r.stderr.strip()))
        return r.stdout


def brief(sts):
    out = []
    for n, st in enumerate(sts, 1):
        if not st:
            out.append("node%d: no answer" % n)
        else:
            out.append("node%d: role=%s master=%s healthy=%s last=%s applied=%s problems=%s" % (
                n, st.get("role"), st.get("master"), st.get("healthy"), st.get("last_gtid"),
                st.get("applied_gtid"), st.get("problems")))
    return "; ".join(out)


def gtid_seq(gtid):
    """Sequence number of a single-domain GTID position like "0-1-13" (-1 if none)."""
    if not gtid:
        return -1
    try:
        return max(int(part.rsplit("-", 1)[1]) for part in gtid.split(","))
    except (IndexError, ValueError):
        return -1


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tail(path, n):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ["(no log)"]
    return [ANSI.sub("", line) for line in lines[-n:]]


def log_lines_between(path, t_from, t_to, pattern=None):
    """Log lines whose RFC 3339 UTC timestamp is within [t_from, t_to] (unix seconds)."""
    out = []
    lo = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_from))
    hi = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_to + 1))
    for line in tail(path, 100000):
        ts = line[:19]
        if lo <= ts <= hi and (pattern is None or re.search(pattern, line)):
            out.append(line)
    return out


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""
