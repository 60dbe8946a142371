"""Plain mariadbd instances in a scratch dir, for the systems QuorumSQL is compared with.

Every instance gets its own option file (--defaults-file, so no system config is read), a copy
of one `mariadb-install-db` template datadir (passwordless root over TCP: the template is made
with --auth-root-authentication-method=normal), 127.0.0.1 only, and the same durable settings.
mariadbd runs as root (like QuorumSQL's nodes); Galera's rsync SST cannot work that way, see
systems.py for how the Galera joiners avoid SST.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

import procs
from procs import log

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "mariadb-install-db"


class SetupError(Exception):
    """A system could not be set up or driven; the message says what was seen."""


def free_ports(n):
    """n distinct TCP ports that are free on 127.0.0.1 right now (all bound at once, then closed)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def make_template(path):
    """One empty datadir every node copies (install-db takes ~1 s; a copy is instant)."""
    logf = path + ".log"
    with open(logf, "wb") as out:
        r = subprocess.run([INSTALL_DB, "--no-defaults", "--user=root", "--datadir=" + path,
                            "--auth-root-authentication-method=normal", "--skip-test-db"],
                           stdout=out, stderr=subprocess.STDOUT, timeout=300)
    if r.returncode != 0:
        raise SetupError("mariadb-install-db failed (exit %d): %s" % (r.returncode, tail(logf, 10)))


def tail(path, n):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(no file %s)" % path
    return "\n    ".join(lines[-n:])


def common_settings(buffer_pool):
    """Settings every compared mariadbd shares (and QuorumSQL's own node config has too)."""
    return [
        ("bind_address", "127.0.0.1"), ("skip_name_resolve", None), ("user", "root"),
        ("log_bin", "mysql-bin"), ("relay_log", "relay-bin"), ("log_slave_updates", "ON"),
        ("gtid_strict_mode", "ON"), ("binlog_format", "ROW"), ("binlog_row_image", "FULL"),
        ("binlog_checksum", "CRC32"), ("sync_binlog", "1"), ("innodb_flush_log_at_trx_commit", "1"),
        ("innodb_buffer_pool_size", buffer_pool), ("max_connections", "500"),
        ("skip_slave_start", None), ("max_allowed_packet", "64M"),
    ]


class Node:
    def __init__(self, root, name, port, server_id, settings):
        self.name = name
        self.dir = os.path.join(root, name)
        self.datadir = os.path.join(self.dir, "data")
        self.port = port
        self.server_id = server_id
        self.cnf = os.path.join(self.dir, "my.cnf")
        self.errlog = os.path.join(self.dir, "error.log")
        self.proc = None
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        lines = ["[mariadbd]",
                 "datadir = " + self.datadir,
                 "socket = " + os.path.join(self.dir, "mariadb.sock"),
                 "pid_file = " + os.path.join(self.dir, "mariadb.pid"),
                 "tmpdir = " + os.path.join(self.dir, "tmp"),
                 "log_error = " + self.errlog,
                 "port = %d" % port,
                 "server_id = %d" % server_id]
        for k, v in settings:
            lines.append(k if v is None else "%s = %s" % (k, v))
        with open(self.cnf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def init_from(self, template):
        shutil.copytree(template, self.datadir, symlinks=True)

    def start(self, extra_args=(), timeout=90):
        if self.proc is not None and self.proc.poll() is None:
            raise SetupError("%s: already running (pid %d)" % (self.name, self.proc.pid))
        self.proc = procs.spawn([MARIADBD, "--defaults-file=" + self.cnf] + list(extra_args),
                                os.path.join(self.dir, "stdout.log"))
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SetupError("%s: mariadbd exited with %s during start; error log:\n    %s"
                                 % (self.name, self.proc.returncode, tail(self.errlog, 25)))
            if self.try_sql("SELECT 1", timeout=5) is not None:
                return
            time.sleep(0.2)
        raise SetupError("%s: mariadbd did not answer on 127.0.0.1:%d within %d s; error log:\n    %s"
                         % (self.name, self.port, timeout, tail(self.errlog, 25)))

    def stop(self, timeout=120):
        """Clean shutdown (SIGTERM), SIGKILL after timeout."""
        if self.proc is not None:
            procs.kill(self.proc, signal.SIGTERM, timeout)
            self.proc = None

    def kill9(self):
        if self.proc is not None:
            procs.kill(self.proc, signal.SIGKILL)
            self.proc = None

    def _argv(self, stmt, batch_headers=False):
        argv = ["mariadb", "--no-defaults", "-h127.0.0.1", "-P%d" % self.port, "-uroot",
                "--connect-timeout=5", "-B", "-e", stmt]
        if not batch_headers:
            argv.insert(-2, "-N")
        return argv

    def try_sql(self, stmt, timeout=30):
        try:
            r = subprocess.run(self._argv(stmt), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return r.stdout if r.returncode == 0 else None

    def sql(self, stmt, timeout=60):
        try:
            r = subprocess.run(self._argv(stmt), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SetupError("%s: no answer within %d s to: %s" % (self.name, timeout, stmt))
        if r.returncode != 0:
            raise SetupError("%s (127.0.0.1:%d): %s: %s" % (self.name, self.port, stmt, client_error(r.stderr)))
        return r.stdout

    def value(self, stmt):
        return self.sql(stmt).strip()

    def row(self, stmt):
        """First row of a result as {column: value} (e.g. SHOW SLAVE STATUS)."""
        r = subprocess.run(self._argv(stmt, batch_headers=True), capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise SetupError("%s: %s: %s" % (self.name, stmt, client_error(r.stderr)))
        lines = r.stdout.split("\n")
        if len(lines) < 2 or not lines[1]:
            return {}
        return dict(zip(lines[0].split("\t"), lines[1].split("\t")))

    def status(self, name):
        out = self.sql("SHOW GLOBAL STATUS LIKE '%s'" % name).split("\t")
        return out[1].strip() if len(out) > 1 else ""


def client_error(stderr):
    """The ERROR line of the mariadb client's stderr (it echoes the statement around it)."""
    lines = [l.strip() for l in stderr.splitlines() if l.strip().startswith("ERROR")]
    return lines[-1] if lines else " ".join(stderr.split())


def gtid_seq(pos, domain="0"):
    """Sequence number of domain's GTID in a position like "0-1-13,1-1-4" (-1 if none)."""
    best = -1
    for part in (pos or "").replace("\n", ",").split(","):
        bits = part.strip().split("-")
        if len(bits) == 3 and bits[0] == domain and bits[2].isdigit():
            best = max(best, int(bits[2]))
    return best
