"""The writer both failover measurements use: back-to-back single-row INSERTs with an id counter.

One `mariadb` client process (a fresh connection) per INSERT, autocommit, so the client side
survives whatever happens to the server; every attempt's start, end and outcome are recorded.
A write counts as acknowledged only if the client exited 0 (the server said OK).
"""

import subprocess
import threading
import time

from mdb import client_error

WRITE_TIMEOUT_S = 10  # a write attempt taking longer is abandoned: outcome unknown


class Writer(threading.Thread):
    def __init__(self, port, user, password, table="fo.t"):
        super().__init__(daemon=True)
        self.port = port  # the operator's "VIP": switched to the new primary after a promotion
        self.user = user
        self.password = password
        self.table = table
        self.next_id = 1
        self.records = []  # (id, port, t_start, t_end, ok, error), monotonic seconds
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            port, wid = self.port, self.next_id
            self.next_id += 1
            stmt = "INSERT INTO %s (id, ts) VALUES (%d, %.6f)" % (self.table, wid, time.time())
            t0 = time.monotonic()
            try:
                r = subprocess.run(
                    ["mariadb", "--no-defaults", "-h127.0.0.1", "-P%d" % port, "-u" + self.user,
                     "-p" + self.password if self.password else "--skip-password",
                     "--connect-timeout=3", "-e", stmt],
                    capture_output=True, text=True, timeout=WRITE_TIMEOUT_S)
                ok, err = r.returncode == 0, client_error(r.stderr)
            except subprocess.TimeoutExpired:
                ok, err = False, "client timeout after %d s (outcome unknown)" % WRITE_TIMEOUT_S
            t1 = time.monotonic()
            with self.lock:
                self.records.append((wid, port, t0, t1, ok, err))
            if not ok:
                time.sleep(0.01)  # a refused connection returns at once: do not spin

    def snapshot(self):
        with self.lock:
            return list(self.records)

    def acked(self):
        return {r[0] for r in self.snapshot() if r[4]}

    def wait_ok(self, since, n, timeout):
        """Wait until n writes that started at or after `since` succeeded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for r in self.snapshot() if r[2] >= since and r[4]) >= n:
                return True
            time.sleep(0.02)
        return False

    def first_ok_after(self, t):
        oks = [r for r in self.snapshot() if r[2] >= t and r[4]]
        return min(oks, key=lambda r: r[3]) if oks else None

    def errors_after(self, t):
        errs = {}
        for r in self.snapshot():
            if r[2] >= t - 1 and not r[4]:
                key = r[5][:120]
                errs[key] = errs.get(key, 0) + 1
        return errs

    def finish(self):
        self.stop_ev.set()
        self.join(timeout=WRITE_TIMEOUT_S + 5)


def summary(name, kill_t, writer, present_ids, new_primary, extra):
    """The dict the report prints for one failover measurement."""
    recs = writer.snapshot()
    acked = {r[0] for r in recs if r[4]}
    failed = {r[0] for r in recs if not r[4]}
    first = writer.first_ok_after(kill_t)
    lost = sorted(acked - present_ids)
    d = dict(system=name, new_primary=new_primary,
             failover_s=(first[3] - kill_t) if first else None,
             attempted=len(recs), acked=len(acked),
             acked_before_kill=sum(1 for r in recs if r[4] and r[3] < kill_t),
             failed=len(failed), failed_but_committed=len(failed & present_ids), lost=len(lost),
             lost_ids=lost[:20], errors=writer.errors_after(kill_t))
    d.update(extra)
    return d
