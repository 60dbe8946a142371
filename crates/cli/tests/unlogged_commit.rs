//! Invariant 7 with real processes: every commit reported to a client is in the global binlog,
//! also after the master's binary log turned itself off (design-review 2).
//!
//! Writers insert in autocommit through the master's RW port (and one through a forwarding
//! proxy). A stray directory named like the next binlog file makes `FLUSH BINARY LOGS` fail to
//! open it; MariaDB 10.11 then "turns logging off" and acknowledges later commits with no binlog
//! event and no semi-sync wait. The master's proxy must withhold those OKs (the client gets
//! 1053 / 08007, "outcome unknown") and raise the commit alarm; after the failover every id a
//! client saw acknowledged must be on the surviving nodes.

mod support;
#[path = "support/switchover_util.rs"]
mod switchover_util;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use quorumsql_node::proxy::ErrorKind;
use support::{eventually, sql_socket, sql_tcp, Cluster};
use switchover_util::{ids_on, Writers};

const START: Duration = Duration::from_secs(180);
const SETTLE: Duration = Duration::from_secs(90);
const TABLE: &str = "ul.t";

/// The next binlog file name after the one `SHOW MASTER STATUS` names (`mysql-bin.000003` →
/// `mysql-bin.000004`).
fn next_binlog(current: &str) -> String {
    let (base, num) = current.rsplit_once('.').expect("binlog name has a number");
    let n: u64 = num.parse().expect("binlog number");
    format!("{base}.{:0width$}", n + 1, width = num.len())
}

#[test]
fn commits_after_binary_logging_turned_itself_off_are_never_acknowledged() {
    let mut c = Cluster::start(3);
    let old = c.wait_healthy(START);
    let other = (1..=3).find(|&n| n != old).expect("a replica");
    sql_tcp(
        c.rw_port(old),
        "CREATE DATABASE ul; CREATE TABLE ul.t (id BIGINT PRIMARY KEY, writer INT NOT NULL) ENGINE=InnoDB",
    )
    .expect("create the table");

    let ports = [
        c.rw_port(old),
        c.rw_port(old),
        c.rw_port(old),
        c.rw_port(other),
    ];
    let writers = Writers::start(&ports, TABLE);
    eventually("every writer to commit 20 rows", SETTLE, || {
        let n = writers.acked_counts();
        if n.iter().all(|&k| k >= 20) {
            Ok(())
        } else {
            Err(format!("acked per writer: {n:?}"))
        }
    });

    // Break the next rotation, then rotate.
    let socket = c.mariadb_socket(old);
    let status = sql_socket(&socket, "SHOW MASTER STATUS").expect("SHOW MASTER STATUS");
    let current = status.split_whitespace().next().expect("a binlog file");
    let stray = c
        .node(old)
        .config
        .node
        .data_dir
        .join("mariadb")
        .join(next_binlog(current));
    std::fs::create_dir(&stray).expect("plant the stray directory");
    let acked_before_flush = writers.acked_counts();
    let flushed = sql_socket(&socket, "FLUSH BINARY LOGS");
    let flush_at = Instant::now();
    eprintln!(
        "planted {}; FLUSH BINARY LOGS: {flushed:?}; acked before: {acked_before_flush:?}",
        stray.display()
    );
    // Roles reads the error log's "Turning logging off" within a poll interval and fences the
    // master (SIGKILL), so mariadbd may already be gone; if it still answers, logging is off.
    match sql_socket(&socket, "SHOW MASTER STATUS") {
        Ok(off) => assert!(
            off.is_empty(),
            "binary logging should be off after the failed rotation; SHOW MASTER STATUS: {off:?}"
        ),
        Err(e) => eprintln!("the old master's mariadbd no longer answers (fenced): {e}"),
    }

    // The writers keep going: their commits on the old master are now unlogged.
    std::thread::sleep(Duration::from_secs(2));
    let proxy = c
        .node_status(old)
        .and_then(|s| s.proxy)
        .map(|p| p.rw)
        .unwrap_or_default();
    eprintln!(
        "old master {old} RW proxy after the flush: unlogged_commit={} commit_unverified={} \
         binlog_open_checks={} gtid_checks={} gtid_waits={}",
        proxy.errors_of(ErrorKind::UnloggedCommit),
        proxy.errors_of(ErrorKind::CommitUnverified),
        proxy.binlog_open_checks,
        proxy.commit_gtid_checks,
        proxy.commit_gtid_waits
    );

    // Failover: by roles' own checks if it notices, else by killing the old master's node.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut new = None;
    while Instant::now() < deadline {
        if let Some(m) = c.status().master.filter(|&m| m != old) {
            new = Some(m);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if new.is_none() {
        eprintln!("no failover within 15 s of the flush; killing node {old}");
        c.kill_node(old);
    }
    let s = c.wait_until("a new master", START, |s| {
        s.master.is_some_and(|m| m != old)
    });
    let new = s.master.expect("a new master");
    eprintln!(
        "new master {new} {:.1} s after the flush",
        flush_at.elapsed().as_secs_f64()
    );
    // Let the writers reach the new master before stopping them.
    std::thread::sleep(Duration::from_secs(2));
    let logs = writers.stop();
    c.kill_node(old);

    let acked: Vec<u64> = logs.iter().flat_map(|l| l.acked.iter().copied()).collect();
    let unknown: Vec<&(u64, String)> = logs
        .iter()
        .flat_map(|l| l.outcome_unknown.iter().chain(&l.io_errors))
        .collect();
    let withheld = unknown
        .iter()
        .filter(|(_, e)| e.contains("replicated log"))
        .count();
    eprintln!(
        "acked {} inserts; {} outcome-unknown answers ({} for a withheld OK); first: {:?}",
        acked.len(),
        unknown.len(),
        withheld,
        unknown.first()
    );

    // Invariant 7: every acknowledged id is on every surviving node. The new master first: it
    // was promoted only after applying the whole log, so what it lacks now it never gets.
    let missing_on = |n: u64| -> Result<Vec<u64>, String> {
        let have: HashSet<u64> = ids_on(&c, n, TABLE)?.into_iter().collect();
        Ok(acked
            .iter()
            .copied()
            .filter(|id| !have.contains(id))
            .collect())
    };
    let lost = missing_on(new).expect("read the new master's table");
    assert!(
        lost.is_empty(),
        "the new master {new} lacks {} of {} acknowledged inserts (first {:?}): OKs for commits \
         that never reached the global binlog; logs in {}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)],
        c.dir.path().display()
    );
    for n in (1..=3).filter(|&n| n != old && n != new) {
        eventually(
            &format!("replica {n} to hold every acknowledged id"),
            SETTLE,
            || match missing_on(n)? {
                m if m.is_empty() => Ok(()),
                m => Err(format!(
                    "{} acknowledged ids missing (first {:?})",
                    m.len(),
                    m.first()
                )),
            },
        );
    }
    // The unlogged commits were answered with errors, not OKs.
    assert!(
        withheld > 0,
        "no client was told that its commit's OK was withheld; outcome-unknown answers: {:?}",
        &unknown[..unknown.len().min(10)]
    );
}
