//! End-to-end tests of a real cluster: three `quorumsql node` processes on loopback, each with its
//! own mariadbd, clients through the RW port with the `mariadb` command-line client.

mod support;

use std::time::{Duration, Instant};

use support::{sql_socket, sql_tcp, Cluster};

const START: Duration = Duration::from_secs(180);
const FAILOVER: Duration = Duration::from_secs(60);

/// Polls `f` until it returns `Ok`, or panics with the last error after `timeout`.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last error: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn checksum(c: &Cluster, id: u64, table: &str) -> Result<String, String> {
    sql_socket(&c.mariadb_socket(id), &format!("CHECKSUM TABLE {table}"))
}

/// Waits until every running node's mariadbd holds the same data in `table` as the master's.
fn wait_converged(c: &Cluster, master: u64, table: &str, ids: &[u64]) {
    let want = eventually("the master's checksum", FAILOVER, || checksum(c, master, table));
    for &id in ids {
        eventually(&format!("node{id} to converge on {table}"), FAILOVER, || {
            let got = checksum(c, id, table)?;
            if got == want {
                Ok(())
            } else {
                Err(format!("node{id}: {got} != master node{master}: {want}"))
            }
        });
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
    sql_tcp(c.rw_port(other), "INSERT INTO app.t VALUES (5000, 'via replica port')")
        .expect("insert through a replica node's RW port");
    wait_converged(&c, master, "app.t", &[1, 2, 3]);
    let s = c.status();
    assert!(s.nodes.iter().all(|n| n.healthy), "{s:?}");
}
