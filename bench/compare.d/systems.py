"""The four systems bench/compare measures: how each is set up on loopback, where its load goes,
how to wait until its replicas caught up between cases, its failover, and its teardown."""

import os
import re
import shutil
import time

import procs
import sysbench
from failover import Writer, summary
from mdb import Node, SetupError, common_settings, free_ports, gtid_seq
from procs import log

GALERA_LIB = "/usr/lib/galera/libgalera_smm.so"
READ_WORKLOADS = ("oltp_point_select", "oltp_read_only")
FO_TABLE = "CREATE TABLE IF NOT EXISTS fo.t (id BIGINT PRIMARY KEY, ts DOUBLE NOT NULL) ENGINE=InnoDB"


def _ep(row, node):
    return sysbench.Endpoint(row, node.port, "root", "")


class Standalone:
    name = "standalone"

    def __init__(self, root, template, opts):
        self.root, self.template, self.opts = root, template, opts
        self.node = None

    def setup(self):
        (port,) = free_ports(1)
        self.node = Node(self.root, "standalone", port, 1, common_settings(self.opts.buffer_pool))
        self.node.init_from(self.template)
        self.node.start()
        self.node.sql("CREATE DATABASE IF NOT EXISTS sbtest")
        return "1 mariadbd on 127.0.0.1:%d" % port

    def write_endpoint(self):
        return _ep("standalone", self.node)

    def endpoints(self, workload):
        return [_ep("standalone", self.node)]

    def catch_up(self):
        return []

    def checks(self):
        return []

    def teardown(self):
        if self.node:
            self.node.stop()


class SemiSync:
    """Primary node1, replicas node2/node3 with MariaDB's built-in semi-sync (AFTER_SYNC, no
    timeout, waits even with no replica), GTID replication and 4 optimistic parallel appliers."""

    name = "semisync"
    SEMI = [("rpl_semi_sync_master_wait_point", "AFTER_SYNC"),
            ("rpl_semi_sync_master_timeout", "18446744073709551615"),
            ("rpl_semi_sync_master_wait_no_slave", "ON"),
            ("rpl_semi_sync_slave_enabled", "ON"),
            ("slave_parallel_threads", "4"), ("slave_parallel_mode", "optimistic")]

    def __init__(self, root, template, opts):
        self.root, self.template, self.opts = root, template, opts
        self.nodes = []
        self.primary = None

    def setup(self):
        ports = free_ports(3)
        for i, port in enumerate(ports, 1):
            primary = i == 1
            settings = common_settings(self.opts.buffer_pool) + self.SEMI + [
                ("rpl_semi_sync_master_enabled", "ON" if primary else "OFF"),
                ("read_only", "OFF" if primary else "ON")]
            n = Node(self.root, "semisync%d" % i, port, i, settings)
            n.init_from(self.template)
            self.nodes.append(n)
        for n in self.nodes:
            n.start()
        self.primary = self.nodes[0]
        for r in self.nodes[1:]:
            self.point_at(r, self.primary)
        deadline = time.time() + 60
        while self.primary.status("Rpl_semi_sync_master_clients") != "2":
            if time.time() > deadline:
                raise SetupError("semisync: primary has %s semi-sync replicas after 60 s, want 2; "
                                 "replica status: %s" % (self.primary.status("Rpl_semi_sync_master_clients"),
                                                         [r.row("SHOW SLAVE STATUS").get("Last_IO_Error") for r in self.nodes[1:]]))
            time.sleep(0.1)
        self.primary.sql("CREATE DATABASE IF NOT EXISTS sbtest")
        self.catch_up()
        return "primary 127.0.0.1:%d, replicas %s" % (self.primary.port, ", ".join(
            "127.0.0.1:%d" % n.port for n in self.nodes[1:]))

    @staticmethod
    def point_at(replica, primary):
        replica.sql("STOP SLAVE; CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, "
                    "MASTER_USER='root', MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos, "
                    "MASTER_CONNECT_RETRY=1; START SLAVE" % primary.port)

    def replicas(self):
        return [n for n in self.nodes if n is not self.primary and n.proc is not None]

    def write_endpoint(self):
        return _ep("semisync", self.primary)

    def endpoints(self, workload):
        return [_ep("semisync", self.primary)]

    def catch_up(self, timeout=300):
        """Wait until every replica applied the primary's binlog (semi-sync's ACK means "in the
        relay log", so apply lag would leak into the next case's CPU)."""
        pos = self.primary.value("SELECT @@gtid_binlog_pos")
        if not pos:
            return []
        notes = []
        for r in self.replicas():
            got = r.value("SELECT MASTER_GTID_WAIT('%s', %d)" % (pos, timeout))
            if got != "0":
                st = r.row("SHOW SLAVE STATUS")
                raise SetupError("semisync: %s did not apply up to %s within %d s (IO %s, SQL %s, %s %s)"
                                 % (r.name, pos, timeout, st.get("Slave_IO_Running"),
                                    st.get("Slave_SQL_Running"), st.get("Last_IO_Error"),
                                    st.get("Last_SQL_Error")))
        return notes

    def checks(self):
        notes = []
        no_tx = self.primary.status("Rpl_semi_sync_master_no_tx")
        yes_tx = self.primary.status("Rpl_semi_sync_master_yes_tx")
        wait = self.primary.status("Rpl_semi_sync_master_tx_avg_wait_time")
        notes.append("semisync: %s commits ACKed by a replica, %s without an ACK (must be 0), "
                     "average ACK wait %s us" % (yes_tx, no_tx, wait))
        if no_tx not in ("0", ""):
            notes.append("PROBLEM semisync: %s commits fell back to async" % no_tx)
        return notes

    def failover(self, steady):
        """kill -9 the primary; then what an operator's tool does, timed: stop the replicas' IO
        threads, pick the one with the highest received GTID, let both apply their relay logs,
        promote the best (read_only OFF, semi-sync master ON), re-point the other at it and move
        the writer there. No detection delay is included: the script knows when it killed."""
        p = self.primary
        p.sql("CREATE DATABASE IF NOT EXISTS fo; " + FO_TABLE)
        self.catch_up()
        w = Writer(p.port, "root", "")
        w.start()
        t_steady = time.monotonic()
        if not w.wait_ok(t_steady, 20, 60) or not w.wait_ok(t_steady + steady, 1, 60 + steady):
            w.finish()
            raise SetupError("semisync failover: fewer than 20 writes succeeded in 60 s before the kill: %s"
                             % list(w.errors_after(t_steady))[:3])
        t_kill = time.monotonic()
        p.kill9()
        log("semisync: kill -9 of the primary %s" % p.name)
        reps = self.replicas()
        io = {}
        for r in reps:
            r.sql("STOP SLAVE IO_THREAD")
            io[r.name] = r.row("SHOW SLAVE STATUS").get("Gtid_IO_Pos", "")
        for r in reps:  # the ACKed transactions are in the relay logs: apply them before choosing
            r.value("SELECT MASTER_GTID_WAIT('%s', 120)" % io[r.name])
        key = {r.name: (gtid_seq(io[r.name]), gtid_seq(r.value("SELECT @@gtid_current_pos")))
               for r in reps}
        best = max(reps, key=lambda r: key[r.name])
        best.sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only=OFF; "
                 "SET GLOBAL rpl_semi_sync_master_enabled=ON")
        w.port = best.port
        self.primary = best
        for r in reps:
            if r is not best:
                self.point_at(r, best)
        t_promoted = time.monotonic()
        first = None
        while time.monotonic() - t_kill < 60:
            first = w.first_ok_after(t_kill)
            if first:
                break
            time.sleep(0.02)
        w.wait_ok(time.monotonic(), 5, 20)
        w.finish()
        self.catch_up(60)
        present = {int(x) for x in best.sql("SELECT id FROM fo.t").split()}
        others = {r.name: len(w.acked() - {int(x) for x in r.sql("SELECT id FROM fo.t").split()})
                  for r in reps if r is not best}
        return summary("semisync (scripted manual promotion)", t_kill, w, present, best.name, dict(
            promotion_s=t_promoted - t_kill,
            chosen="%s (received %s; %s)" % (best.name, io[best.name], ", ".join(
                "%s received %s" % (r.name, io[r.name]) for r in reps if r is not best)),
            lost_on_other=others))

    def teardown(self):
        for n in self.nodes:
            n.stop()


class Galera:
    """3 nodes, load on node1. The joiners start from a copy of node1's datadir taken after a
    clean shutdown, so they have node1's state UUID and seqno and need at most an IST of the few
    writesets node1 made since (no full copy): rsync SST fails when mariadbd runs as root
    (baselines.md), and a full mariabackup SST takes ~13 s a node. The SST method is
    mariabackup, which works as root and also carries that IST."""

    name = "galera"

    def __init__(self, root, template, opts):
        self.root, self.template, self.opts = root, template, opts
        self.nodes = []
        self.joined = []
        self.notes = []

    def setup(self):
        ports = free_ports(12)
        mysql, gcomm, ist, sst = ports[0:3], ports[3:6], ports[6:9], ports[9:12]
        address = "gcomm://" + ",".join("127.0.0.1:%d" % g for g in gcomm)
        for i in range(3):
            settings = common_settings(self.opts.buffer_pool) + [
                ("wsrep_on", "ON"), ("wsrep_provider", GALERA_LIB),
                ("wsrep_cluster_name", "compare"), ("wsrep_cluster_address", address),
                ("wsrep_node_name", "galera%d" % (i + 1)),
                ("wsrep_node_address", "127.0.0.1:%d" % gcomm[i]),
                ("wsrep_node_incoming_address", "127.0.0.1:%d" % mysql[i]),
                ("wsrep_provider_options", '"gmcast.listen_addr=tcp://127.0.0.1:%d;ist.recv_addr=127.0.0.1:%d"'
                 % (gcomm[i], ist[i])),
                ("wsrep_sst_receive_address", "127.0.0.1:%d" % sst[i]),
                ("wsrep_sst_method", "mariabackup"), ("wsrep_sst_auth", "root:"),
                ("wsrep_slave_threads", "4"), ("innodb_autoinc_lock_mode", "2"),
                ("wsrep_gtid_mode", "ON"), ("wsrep_gtid_domain_id", "1"),
                ("gtid_domain_id", str(10 + i + 1))]
            self.nodes.append(Node(self.root, "galera%d" % (i + 1), mysql[i], i + 1, settings))
        n1 = self.nodes[0]
        n1.init_from(self.template)
        n1.start(["--wsrep-new-cluster"])
        self.wait_synced(n1)
        n1.sql("CREATE DATABASE IF NOT EXISTS sbtest")
        n1.stop()
        state = open(os.path.join(n1.datadir, "grastate.dat")).read()
        if "seqno:   -1" in state:
            raise SetupError("galera: node1's grastate.dat has no seqno after a clean shutdown:\n" + state)
        for n in self.nodes[1:]:
            shutil.copytree(n1.datadir, n.datadir, symlinks=True)
            with open(os.path.join(n.datadir, "grastate.dat")) as f:
                g = f.read()
            with open(os.path.join(n.datadir, "grastate.dat"), "w") as f:
                f.write(g.replace("safe_to_bootstrap: 1", "safe_to_bootstrap: 0"))
        n1.start(["--wsrep-new-cluster"])
        self.wait_synced(n1)
        for n in self.nodes[1:]:
            t0 = time.time()
            n.start(timeout=180)
            self.wait_synced(n)
            with open(n.errlog, errors="replace") as f:
                text = f.read()
            got_ist = re.search(r"Prepared IST receiver for (\d+)-(\d+)", text)
            if got_ist and "Running IST" in text:
                how = "IST of writesets %s-%s (no full copy)" % got_ist.groups()
            elif "Requesting state transfer: success" in text:
                how = "full SST (mariabackup)"
            else:
                how = "no state transfer"
            self.joined.append("%s %.1f s, %s" % (n.name, time.time() - t0, how))
            log("galera: %s joined in %.1f s, %s" % (n.name, time.time() - t0, how))
        size = n1.status("wsrep_cluster_size")
        if size != "3":
            raise SetupError("galera: wsrep_cluster_size is %s, want 3" % size)
        self.provider = n1.status("wsrep_provider_version")
        return "nodes %s (gcomm %s), galera %s, joiners %s" % (
            ", ".join("127.0.0.1:%d" % n.port for n in self.nodes), ",".join(map(str, gcomm)),
            self.provider, "; ".join(self.joined))

    @staticmethod
    def wait_synced(n, timeout=180):
        deadline = time.time() + timeout
        st = ""
        while time.time() < deadline:
            st = n.status("wsrep_local_state_comment")
            if st == "Synced" and n.status("wsrep_ready") == "ON":
                return
            time.sleep(0.2)
        raise SetupError("galera: %s not Synced after %d s (state %r); error log tail:\n    %s"
                         % (n.name, timeout, st, open(n.errlog, errors="replace").read()[-3000:]))

    def write_endpoint(self):
        return _ep("galera", self.nodes[0])

    def endpoints(self, workload):
        return [_ep("galera", self.nodes[0])]

    def catch_up(self, timeout=300):
        target = int(self.nodes[0].status("wsrep_last_committed") or 0)
        deadline = time.time() + timeout
        for n in self.nodes[1:]:
            while int(n.status("wsrep_last_committed") or 0) < target:
                if time.time() > deadline:
                    raise SetupError("galera: %s did not reach wsrep_last_committed %d in %d s"
                                     % (n.name, target, timeout))
                time.sleep(0.05)
        return []

    # Error-log lines that say why a node left the primary component.
    WHY_LEFT = re.compile(r"WSREP.*(view|partition|suspect|non-Primary|non-primary|evict|timed out|"
                          r"inactive|declar|Aborted|shifting|connection to peer|closed)", re.I)

    def failure_context(self, since):
        """The wsrep membership lines every node logged since `since` (unix s): a failed case
        (error 1047, node left the primary component) then says what happened to the cluster."""
        lines = []
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since - 1))
        for n in self.nodes:
            try:
                with open(n.errlog, errors="replace") as f:
                    got = [l.rstrip() for l in f if l[:19] >= stamp and self.WHY_LEFT.search(l)]
            except OSError as e:
                got = ["cannot read %s: %s" % (n.errlog, e)]
            lines += ["%s: %s" % (n.name, l[:300]) for l in got[-8:]]
            lines.append("%s: wsrep_cluster_status=%s wsrep_local_state_comment=%s wsrep_cluster_size=%s"
                         % (n.name, n.status("wsrep_cluster_status"), n.status("wsrep_local_state_comment"),
                            n.status("wsrep_cluster_size")))
        return lines

    def recover(self):
        """After a failed case: node1 (the one under load) must be Synced in a 3-node primary
        component again before the next case. It usually rejoins by itself; if not within 30 s
        it is restarted, which rejoins it by IST. A cluster that cannot recover fails the
        remaining cases with the reason (the caller records the exception)."""
        n1 = self.nodes[0]
        try:
            self.wait_synced(n1, timeout=30)
            if n1.status("wsrep_cluster_size") == "3":
                return
        except SetupError:
            pass
        log("galera: node1 not Synced in a 3-node cluster 30 s after a failed case; restarting it")
        self.notes.append("PROBLEM galera: node1 left the primary component during a case and was "
                          "restarted (IST) before the next one")
        n1.stop()
        n1.start(timeout=180)
        self.wait_synced(n1)
        size = n1.status("wsrep_cluster_size")
        if size != "3":
            raise SetupError("galera: node1 rejoined but wsrep_cluster_size is %s, want 3" % size)

    def checks(self):
        n1 = self.nodes[0]
        return self.notes + ["galera: node1 flow control paused %s of the time since start, %s certification "
                "failures" % (n1.status("wsrep_flow_control_paused"), n1.status("wsrep_local_cert_failures"))]

    def teardown(self):
        for n in reversed(self.nodes):
            n.stop()


class QuorumSQL:
    """3 `quorumsql node`s via bench/lib/qscluster.py. Rows: "quorumsql" = the RW port of the
    master node (all workloads); for the read workloads also the master's mariadbd direct, the RO
    port of a replica node and that replica's mariadbd direct (reads only: writing to a node's
    mariadbd behind QuorumSQL's back would diverge it)."""

    name = "quorumsql"

    def __init__(self, root, template, opts):
        self.root, self.opts = root, opts
        self.cl = None
        self.m = self.other = None
        self.notes = []

    def setup(self):
        import qscluster as qc
        self.qc = qc
        wd = os.path.join(self.root, "quorumsql")
        self.cl = qc.Cluster(keep=self.opts.keep, workdir=wd)
        procs.install_signals()  # qscluster installed its own handlers; ours also stop the cluster
        procs.add_hook(self.cl.stop)
        for n in range(1, 4):
            path = self.cl.config(n)
            with open(path) as f:
                text = f.read()
            new = re.sub(r'(?m)^innodb_buffer_pool_size = ".*"$',
                         'innodb_buffer_pool_size = "%s"' % self.opts.buffer_pool, text)
            if new == text and self.opts.buffer_pool not in text:
                raise SetupError("quorumsql: no innodb_buffer_pool_size line in %s to set" % path)
            with open(path, "w") as f:
                f.write(new)
        self.cl.start()
        waited = self.wait(180, "the first master and 3 healthy nodes")
        self._pick()
        self.cl.sql_tcp(self.cl.port(self.m, qc.RW), "CREATE DATABASE IF NOT EXISTS sbtest")
        return "master node%d, RO via node%d, base port %d, healthy after %.1f s" % (
            self.m, self.other, self.cl.base, waited)

    def wait(self, timeout, what):
        try:
            return self.cl.wait_healthy(timeout, what)
        except SystemExit:
            raise SetupError("quorumsql: timed out waiting for %s: %s"
                             % (what, self.qc.brief(self.cl.all_status())))

    def _pick(self):
        self.m = self.cl.master()
        self.other = next(n for n in (1, 2, 3) if n != self.m)

    def _ep(self, row, node, kind):
        return sysbench.Endpoint(row, self.cl.port(node, kind), self.qc.USER, self.qc.PASSWORD)

    def write_endpoint(self):
        return self._ep("quorumsql", self.m, self.qc.RW)

    def endpoints(self, workload):
        qc = self.qc
        if self.cl.master() != self.m:
            self.wait(180, "a healthy cluster")
            old = self.m
            self._pick()
            self.notes.append("PROBLEM quorumsql: the master moved from node%d to node%d before %s; "
                              "later cases use the new master's ports" % (old, self.m, workload))
        if workload not in READ_WORKLOADS:
            return [self._ep("quorumsql", self.m, qc.RW)]
        # Each proxied row next to its direct row (drift hits both alike); the master's mariadbd
        # direct goes last: on two shared cores that load has cost the master its leadership.
        return [self._ep("quorumsql RO", self.other, qc.RO),
                self._ep("quorumsql replica direct", self.other, qc.MARIADB),
                self._ep("quorumsql", self.m, qc.RW),
                self._ep("quorumsql master direct", self.m, qc.MARIADB)]

    def recover(self):
        """After a failed case: wait until the cluster is healthy again (and notice a new master)."""
        self.wait(180, "a healthy cluster after a failed case")
        if self.cl.master() != self.m:
            old = self.m
            self._pick()
            self.notes.append("PROBLEM quorumsql: the master moved from node%d to node%d; later cases "
                              "use the new master's ports" % (old, self.m))

    def failure_context(self, since):
        """WARN/ERROR/role lines the nodes logged since `since` (unix s), to explain a failed case."""
        lines = []
        for n in (1, 2, 3):
            lines += ["node%d: %s" % (n, l[:300]) for l in self.qc.log_lines_between(
                self.cl.logfile(n), since, time.time(), r"WARN|ERROR|lease|master|Leader|fenc|role")
                if "processlist at fence" not in l][-8:]
        return lines

    def terms(self):
        return tuple((st or {}).get("raft_term") for st in self.cl.all_status())

    def catch_up(self, timeout=300):
        self.wait(timeout, "replicas to apply everything")
        return []

    def checks(self):
        return list(self.notes)

    def failover(self, steady):
        """kill -9 of the master's `quorumsql node` process (its mariadbd dies with it); the
        writer goes through the RW port of another node, which forwards to whoever is master."""
        qc, cl = self.qc, self.cl
        self.wait(180, "a healthy cluster before the failover")
        self._pick()
        m = self.m
        via = next(n for n in (1, 2, 3) if n != m)
        cl.sql_tcp(cl.port(m, qc.RW), "CREATE DATABASE IF NOT EXISTS fo")
        cl.sql_tcp(cl.port(m, qc.RW), FO_TABLE)
        w = Writer(cl.port(via, qc.RW), qc.USER, qc.PASSWORD)
        w.start()
        t_steady = time.monotonic()
        if not w.wait_ok(t_steady, 20, 60) or not w.wait_ok(t_steady + steady, 1, 60 + steady):
            w.finish()
            raise SetupError("quorumsql failover: fewer than 20 writes succeeded in 60 s before the kill: %s"
                             % list(w.errors_after(t_steady))[:3])
        t_kill = time.monotonic()
        cl.kill9(m)
        log("quorumsql: kill -9 of the master node%d; writes via node%d" % (m, via))
        first = None
        while time.monotonic() - t_kill < 60:
            first = w.first_ok_after(t_kill)
            if first:
                break
            time.sleep(0.02)
        w.wait_ok(time.monotonic(), 5, 20)
        w.finish()
        deadline = time.time() + 60
        newm = None
        while time.time() < deadline:
            newm = cl.master()
            if newm:
                break
            time.sleep(0.1)
        if not newm:
            raise SetupError("quorumsql failover: no master 60 s after the kill: %s" % qc.brief(cl.all_status()))
        present = {int(x) for x in cl.sql_socket(newm, "SELECT id FROM fo.t").split()}
        self.m = None  # the cluster is down a node now: no more cases
        return summary("quorumsql (automatic)", t_kill, w, present, "node%d" % newm,
                       dict(killed="node%d" % m, via="node%d" % via))

    def teardown(self):
        if self.cl:
            self.cl.stop()


ALL = {"standalone": Standalone, "semisync": SemiSync, "galera": Galera, "quorumsql": QuorumSQL}
