//! End-to-end tests of a real cluster: three `quorumsql node` processes on loopback, each with its
//! own mariadbd, clients through the RW port with the `mariadb` command-line client.

mod support;

use std::time::Duration;

use support::{eventually, sql_socket, sql_tcp, Cluster};

const START: Duration = Duration::from_secs(180);
const FAILOVER: Duration = Duration::from_secs(60);

fn checksum(c: &Cluster, id: u64, table: &str) -> Result<String, String> {
    sql_socket(&c.mariadb_socket(id), &format!("CHECKSUM TABLE {table}"))
}

/// Waits until every running node's mariadbd holds the same data in `table` as the master's.
fn wait_converged(c: &Cluster, master: u64, table: &str, ids: &[u64]) {
    let want = eventually("the master's checksum", FAILOVER, || {
        checksum(c, master, table)
    });
    for &id in ids {
        eventually(
            &format!("node{id} to converge on {table}"),
            FAILOVER,
            || {
                let got = checksum(c, id, table)?;
                if got == want {
                    Ok(())
                } else {
                    Err(format!("node{id}: {got} != master node{master}: {want}"))
                }
            },
        );
    }
}

#[test]
fn three_nodes_replicate_through_the_master() {
    let c = Cluster::start(3);
    let master = c.wait_healthy(START);
    let rw = c.rw_port(master);
    sql_tcp(
        rw,
        "CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(64)) ENGINE=InnoDB",
    )
    .expect("DDL through the RW port");
    // 2,000 autocommit transactions in a handful of client sessions.
    for batch in 0..10 {
        let stmts: String = (0..200)
            .map(|i| {
                let id = batch * 200 + i;
                format!("INSERT INTO app.t VALUES ({id}, 'row {id}');")
            })
            .collect();
        sql_tcp(rw, &stmts).expect("inserts through the RW port");
    }
    assert_eq!(
        sql_tcp(rw, "SELECT COUNT(*) FROM app.t").expect("count"),
        "2000"
    );
    wait_converged(&c, master, "app.t", &[1, 2, 3]);
    // Writes through a non-master node's RW port reach the master too.
    let other = if master == 1 { 2 } else { 1 };
    sql_tcp(
        c.rw_port(other),
        "INSERT INTO app.t VALUES (5000, 'via replica port')",
    )
    .expect("insert through a replica node's RW port");
    wait_converged(&c, master, "app.t", &[1, 2, 3]);
    let s = c.status();
    assert!(s.nodes.iter().all(|n| n.healthy), "{s:?}");
    // The proxy's counters are in /status: the replica node's RW port forwarded a connection,
    // which the master's proxy took in from its peer.
    let proxy = |id: u64| {
        s.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.proxy.clone())
            .unwrap_or_else(|| panic!("node{id} reports no proxy metrics: {s:?}"))
    };
    assert!(proxy(master).rw.total >= 11, "{:?}", proxy(master));
    assert!(proxy(other).rw.total >= 1, "{:?}", proxy(other));
    assert!(proxy(master).peer_rw.total >= 1, "{:?}", proxy(master));
    // The commit path's counters are in the master's /status: every insert went through
    // capture and was ACKed after the log accepted it; replicas capture nothing.
    let cap = eventually(
        "the master's capture counters",
        Duration::from_secs(10),
        || {
            let n = c.node_status(master).ok_or("master status unavailable")?;
            let cap = n
                .capture
                .clone()
                .ok_or_else(|| format!("master reports no capture: {n:?}"))?;
            if cap.txns_accepted < 2001 {
                return Err(format!(
                    "capture accepted only {} txns: {cap:?}",
                    cap.txns_accepted
                ));
            }
            Ok(cap)
        },
    );
    assert!(
        cap.acks_sent >= 1 && cap.acks_sent <= cap.appends_accepted,
        "{cap:?}"
    );
    assert!(cap.appends_accepted <= cap.txns_accepted, "{cap:?}");
    assert!(
        cap.ack_latency_avg_us > 0 && cap.ack_latency_avg_us <= cap.ack_latency_max_us,
        "{cap:?}"
    );
    let replica_capture = c.node_status(other).and_then(|n| n.capture);
    assert!(
        replica_capture.is_none(),
        "a replica reports capture: {replica_capture:?}"
    );
    // `quorumsql status`, asked through one replica's admin port, reports the whole cluster in
    // the JSON shape scripts rely on, and exits 0 for a healthy cluster.
    let admin = c.node(other).config.me().admin.to_string();
    let out = std::process::Command::new(support::bin())
        .args(["status", "--admin", &admin, "--json"])
        .output()
        .expect("run quorumsql status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(json["master"], serde_json::json!(master), "{json}");
    let nodes = json["nodes"].as_array().expect("nodes array");
    assert_eq!(nodes.len(), 3, "{json}");
    for n in nodes {
        for key in ["id", "role", "last_gtid", "applied_gtid", "healthy"] {
            assert!(n.get(key).is_some(), "node entry lacks {key}: {n}");
        }
    }
}

/// Writes single-row autocommit inserts through one node's RW port until told to stop, and
/// records which ids were acknowledged (an error is an unknown outcome, never a success).
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(Vec<u64>, usize)>,
}

impl Writer {
    fn start(port: u16, table: &'static str, first_id: u64) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut errors = 0;
            let mut id = first_id;
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                match sql_tcp(port, &format!("INSERT INTO {table} VALUES ({id}, 'w')")) {
                    Ok(_) => acked.push(id),
                    Err(_) => {
                        errors += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                id += 1;
            }
            (acked, errors)
        });
        Writer { stop, handle }
    }

    fn finish(self) -> (Vec<u64>, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().expect("writer thread")
    }
}

/// Every acknowledged id is present on every node's mariadbd.
fn assert_all_present(c: &Cluster, table: &str, acked: &[u64], ids: &[u64]) {
    for &node in ids {
        let got = eventually(
            &format!("node{node} to hold every acknowledged row"),
            FAILOVER,
            || {
                let list = sql_socket(&c.mariadb_socket(node), &format!("SELECT id FROM {table}"))?;
                let have: std::collections::HashSet<u64> =
                    list.lines().filter_map(|l| l.trim().parse().ok()).collect();
                let missing: Vec<u64> = acked
                    .iter()
                    .copied()
                    .filter(|i| !have.contains(i))
                    .collect();
                if missing.is_empty() {
                    Ok(have.len())
                } else {
                    Err(format!(
                        "node{node} lacks {} acknowledged rows, e.g. {:?}",
                        missing.len(),
                        &missing[..missing.len().min(5)]
                    ))
                }
            },
        );
        assert!(got >= acked.len());
    }
}

enum Fault {
    KillQuorumsql,
    KillMariadbd,
    PauseQuorumsql,
}

fn failover_under_writes(fault: Fault) {
    let mut c = Cluster::start(3);
    let old = c.wait_healthy(START);
    // Write through another node's RW port, so the client's node survives the fault.
    let entry = if old == 1 { 2 } else { 1 };
    sql_tcp(
        c.rw_port(entry),
        "CREATE DATABASE app; CREATE TABLE app.f (id BIGINT PRIMARY KEY, v VARCHAR(8)) ENGINE=InnoDB",
    )
    .expect("DDL");
    let w = Writer::start(c.rw_port(entry), "app.f", 1);
    eventually("some acknowledged writes", FAILOVER, || {
        let n = sql_socket(&c.mariadb_socket(old), "SELECT COUNT(*) FROM app.f")?;
        if n.parse::<u64>().unwrap_or(0) >= 50 {
            Ok(())
        } else {
            Err(format!("{n} rows"))
        }
    });
    match fault {
        Fault::KillQuorumsql => c.kill_node(old),
        Fault::KillMariadbd => {
            let pid = c
                .node_status(old)
                .and_then(|s| s.mariadb_pid)
                .expect("mariadbd pid");
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        Fault::PauseQuorumsql => c.signal_node(old, libc::SIGSTOP),
    }
    // A new master takes writes.
    let s = c.wait_until("a new master", FAILOVER, |s| {
        s.master.is_some_and(|m| m != old) && s.nodes.iter().filter(|n| n.healthy).count() >= 2
    });
    let new = s.master.expect("new master");
    eventually("a write through the new master", FAILOVER, || {
        sql_tcp(
            c.rw_port(entry),
            "INSERT INTO app.f VALUES (1000000, 'after')",
        )
        .map(|_| ())
    });
    let (mut acked, errors) = w.finish();
    acked.push(1_000_000);
    eprintln!(
        "failover: old master node{old}, new node{new}; {} acknowledged, {errors} errors",
        acked.len()
    );
    // Heal: the old master rejoins as a replica and converges.
    match fault {
        Fault::KillQuorumsql => c.start_node(old),
        Fault::KillMariadbd => {}
        Fault::PauseQuorumsql => c.signal_node(old, libc::SIGCONT),
    }
    c.wait_until("all three nodes healthy again, one master", START, |s| {
        s.nodes.iter().all(|n| n.healthy)
            && s.nodes.iter().filter(|n| n.role == "master").count() == 1
    });
    assert_all_present(&c, "app.f", &acked, &[1, 2, 3]);
    let m = c.status().master.expect("master");
    wait_converged(&c, m, "app.f", &[1, 2, 3]);
}

#[test]
fn failover_after_kill_9_of_the_masters_quorumsql() {
    failover_under_writes(Fault::KillQuorumsql);
}

#[test]
fn failover_after_kill_9_of_the_masters_mariadbd() {
    failover_under_writes(Fault::KillMariadbd);
}

#[test]
fn failover_after_pausing_the_master_longer_than_its_lease() {
    failover_under_writes(Fault::PauseQuorumsql);
}

#[test]
fn whole_cluster_kill_9_and_restart_keeps_every_acknowledged_commit() {
    let mut c = Cluster::start(3);
    let m = c.wait_healthy(START);
    let rw = c.rw_port(m);
    sql_tcp(rw, "CREATE DATABASE app; CREATE TABLE app.r (id BIGINT PRIMARY KEY, v VARCHAR(8)) ENGINE=InnoDB")
        .expect("DDL");
    let stmts: String = (1..=300)
        .map(|i| format!("INSERT INTO app.r VALUES ({i}, 'x');"))
        .collect();
    sql_tcp(rw, &stmts).expect("inserts");
    for id in 1..=3 {
        c.kill_node(id);
    }
    for id in 1..=3 {
        c.start_node(id);
    }
    let m = c.wait_healthy(START);
    let acked: Vec<u64> = (1..=300).collect();
    assert_all_present(&c, "app.r", &acked, &[1, 2, 3]);
    sql_tcp(c.rw_port(m), "INSERT INTO app.r VALUES (301, 'after')").expect("write after restart");
}

#[test]
fn a_node_written_behind_the_logs_back_is_diverged_never_master_and_rebuilt() {
    let c = Cluster::start(3);
    let m = c.wait_healthy(START);
    let rw = c.rw_port(m);
    sql_tcp(
        rw,
        "CREATE DATABASE app; CREATE TABLE app.d (id BIGINT PRIMARY KEY) ENGINE=InnoDB",
    )
    .expect("DDL");
    let victim = if m == 3 { 2 } else { 3 };
    wait_converged(&c, m, "app.d", &[victim]);
    // Root on the replica's own socket bypasses read_only and writes a local GTID.
    sql_socket(
        &c.mariadb_socket(victim),
        "SET sql_log_bin=1; INSERT INTO app.d VALUES (666)",
    )
    .expect("local write behind QuorumSQL's back");
    sql_tcp(rw, "INSERT INTO app.d VALUES (1)").expect("write through the master");
    let s = c.wait_until("the victim reported diverged", FAILOVER, |s| {
        s.nodes
            .iter()
            .any(|n| n.id == victim && n.role == "diverged")
    });
    let v = s.nodes.iter().find(|n| n.id == victim).expect("victim");
    assert!(
        !v.healthy
            && v.problems
                .iter()
                .any(|p| p.contains("not in the global binlog") || p.contains("differs")),
        "{v:?}"
    );
    // The cluster keeps serving while the victim rebuilds itself from a healthy replica
    // (mariadb-backup over the peer port); it is never master while diverged or rebuilding.
    sql_tcp(rw, "INSERT INTO app.d VALUES (2)").expect("writes continue");
    let mut roles_seen = std::collections::BTreeSet::new();
    c.wait_until("the victim rebuilt and healthy again", START, |s| {
        let v = s.nodes.iter().find(|n| n.id == victim);
        if let Some(v) = v {
            roles_seen.insert(v.role.clone());
            if v.role == "diverged" || v.role == "rebuilding" {
                assert_ne!(s.master, Some(victim), "a {} node is master: {s:?}", v.role);
            }
        }
        v.is_some_and(|v| v.healthy && v.role == "replica")
    });
    // Its data is the cluster's again: the write behind the log's back is gone, everything
    // acknowledged (before and after the rebuild) is there.
    let m = c.status().master.expect("a master after the rebuild");
    sql_tcp(c.rw_port(m), "INSERT INTO app.d VALUES (3)").expect("write after the rebuild");
    wait_converged(&c, m, "app.d", &[1, 2, 3]);
    let rows = sql_socket(
        &c.mariadb_socket(victim),
        "SELECT GROUP_CONCAT(id ORDER BY id) FROM app.d",
    )
    .expect("read the rebuilt replica");
    assert_eq!(rows.trim(), "1,2,3", "roles seen: {roles_seen:?}");
    // The old datadir is kept for the operator, not deleted.
    let kept: Vec<_> = std::fs::read_dir(&c.node(victim).config.node.data_dir)
        .expect("node dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("mariadb.diverged-")
        })
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "expected the old datadir kept beside the new one"
    );
}

#[test]
fn a_paused_master_forwards_nothing_after_it_wakes() {
    use quorumsql_node::sql::SqlConn;
    let c = Cluster::start(3);
    let m = c.wait_healthy(START);
    let rw: std::net::SocketAddr = ([127, 0, 0, 1], c.rw_port(m)).into();
    sql_tcp(
        c.rw_port(m),
        "CREATE DATABASE app; CREATE TABLE app.l (id INT PRIMARY KEY) ENGINE=InnoDB",
    )
    .expect("DDL");
    let mut conn =
        c.rt.block_on(SqlConn::connect_tcp(rw, support::USER, support::PASSWORD))
            .expect("client connection through the master's RW port");
    c.rt.block_on(conn.exec("INSERT INTO app.l VALUES (1)"))
        .expect("insert before the pause");
    // Pause the master's quorumsql well past its lease and the election timeout.
    c.signal_node(m, libc::SIGSTOP);
    let s = c.wait_until("a new master while the old one sleeps", FAILOVER, |s| {
        s.master.is_some_and(|x| x != m)
    });
    let new = s.master.expect("new master");
    sql_tcp(c.rw_port(new), "INSERT INTO app.l VALUES (2)").expect("the new master takes writes");
    c.signal_node(m, libc::SIGCONT);
    // The held connection must not reach the old master's mariadbd any more.
    let r = c.rt.block_on(conn.exec("INSERT INTO app.l VALUES (3)"));
    assert!(
        r.is_err(),
        "a statement on the deposed master's connection succeeded: {r:?}"
    );
    c.wait_until("all nodes healthy again", START, |s| {
        s.nodes.iter().all(|n| n.healthy)
    });
    for id in 1..=3 {
        let rows = eventually(&format!("node{id} readable"), FAILOVER, || {
            sql_socket(
                &c.mariadb_socket(id),
                "SELECT GROUP_CONCAT(id ORDER BY id) FROM app.l",
            )
        });
        assert!(
            !rows.contains('3'),
            "node{id} has the row sent to the deposed master: {rows}"
        );
    }
}

#[test]
fn a_follower_restarted_after_the_log_compacted_rejoins() {
    let mut c = Cluster::start(3);
    let m = c.wait_healthy(START);
    let rw = c.rw_port(m);
    sql_tcp(
        rw,
        "CREATE DATABASE app; CREATE TABLE app.c (id INT PRIMARY KEY) ENGINE=InnoDB",
    )
    .expect("DDL");
    // Enough transactions for the log to compact (it keeps what every member applied, plus a
    // slack of 1,024 entries, and compacts at least 1,000 at a time).
    for batch in 0..15 {
        let stmts: String = (0..200)
            .map(|i| format!("INSERT INTO app.c VALUES ({});", batch * 200 + i))
            .collect();
        sql_tcp(rw, &stmts).expect("inserts");
    }
    let follower = if m == 1 { 2 } else { 1 };
    c.wait_until("every node's log compacted", START, |s| {
        s.nodes.iter().all(|n| n.log_compacted_through.is_some())
    });
    c.kill_node(follower);
    c.start_node(follower);
    c.wait_until("the restarted follower healthy again", START, |s| {
        s.nodes.iter().all(|n| n.healthy)
    });
    let acked: Vec<u64> = (0..3000).collect();
    assert_all_present(&c, "app.c", &acked, &[1, 2, 3]);
}
