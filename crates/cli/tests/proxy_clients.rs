//! Real clients through the RW port of a node that is NOT the master (client → that node's proxy
//! → authenticated peer stream → the master's proxy → the master's mariadbd): sysbench
//! `oltp_read_write` (prepared statements, explicit transactions, two threads; no error but the
//! server's own write-conflict restarts), the `mariadb`
//! CLI running a script with transactions, and grants by host seeing the real client address.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{eventually, sql_socket, sql_tcp, Cluster, PASSWORD, USER};

const START: Duration = Duration::from_secs(180);

/// Runs sysbench `oltp_read_write` (`prepare` or `run`) against `port`; returns its output.
fn sysbench(port: u16, cmd: &str) -> String {
    let out = Command::new("sysbench")
        .arg("oltp_read_write")
        .args([
            "--db-driver=mysql",
            "--mysql-host=127.0.0.1",
            "--mysql-db=sbtest",
            "--tables=2",
            "--table-size=1000",
            "--threads=2",
            "--time=10",
            "--report-interval=0",
            // innodb_snapshot_isolation=ON (DESIGN §5) answers write conflicts between the two
            // threads with 1020 "Record has changed since last read" (about one transaction in
            // five, the same rate as straight to mariadbd); with deadlocks (1213) they are the
            // server's "restart the transaction", which sysbench retries and counts as ignored.
            // Every other error (a lost connection, a proxy refusal, 1053, ...) is FATAL.
            "--mysql-ignore-errors=1020,1213",
        ])
        .arg(format!("--mysql-port={port}"))
        .arg(format!("--mysql-user={USER}"))
        .arg(format!("--mysql-password={PASSWORD}"))
        .arg(cmd)
        .output()
        .expect("run sysbench (apt-get install sysbench)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("FATAL"),
        "sysbench {cmd} failed ({}):\n{text}",
        out.status
    );
    text
}

/// The first number after `label` in sysbench's report (e.g. `transactions:   1234  (...)`).
fn counter(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` in the sysbench report:\n{report}"))
}

/// Listens on 127.0.0.1 and connects each accepted client to `target` from source address
/// `source` (the `mariadb` CLI cannot bind a source address): the client reaches the proxy as
/// if it ran on another host.
fn source_forwarder(rt: &tokio::runtime::Runtime, source: IpAddr, target: SocketAddr) -> u16 {
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind forwarder");
    let port = l.local_addr().expect("forwarder address").port();
    rt.spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
                    return;
                };
                if sock.bind(SocketAddr::new(source, 0)).is_err() {
                    return;
                }
                let Ok(mut up) = sock.connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
            });
        }
    });
    port
}

/// Runs the `mariadb` CLI as `user` against `port` with `script` on stdin (batch mode, as
/// `mariadb < file.sql`); `Err` carries its stderr (`ERROR <code> ...`).
fn mariadb_as(port: u16, user: &str, password: &str, script: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("mariadb")
        .args([
            "-N",
            "-B",
            "-h127.0.0.1",
            "--protocol=tcp",
            "--connect-timeout=5",
        ])
        .arg(format!("-P{port}"))
        .arg(format!("-u{user}"))
        .arg(format!("-p{password}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run mariadb: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("mariadb has no stdin")?;
    stdin
        .write_all(script.as_bytes())
        .map_err(|e| format!("writing the script: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("mariadb: {e}"))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    match out.status.success() {
        true => Ok(text(&out.stdout)),
        false => Err(text(&out.stderr)),
    }
}

#[test]
fn sysbench_and_the_cli_work_through_a_non_master_nodes_rw_port() {
    let c = Cluster::start(3);
    let master = c.wait_healthy(START);
    let other = if master == 1 { 2 } else { 1 };
    let rw = c.rw_port(other);

    // sysbench oltp_read_write, prepare then run, through the forwarding node.
    sql_tcp(rw, "CREATE DATABASE sbtest").expect("CREATE DATABASE through a non-master node");
    sysbench(rw, "prepare");
    let t = Instant::now();
    let report = sysbench(rw, "run");
    eprintln!(
        "sysbench run through node{other} (master node{master}) took {:?}:\n{report}",
        t.elapsed()
    );
    let txns = counter(&report, "transactions:");
    assert!(txns > 0, "no transaction completed:\n{report}");
    let restarted = counter(&report, "ignored errors:");
    assert!(
        restarted < txns,
        "more conflict restarts ({restarted}) than transactions ({txns}):\n{report}"
    );
    assert_eq!(counter(&report, "reconnects:"), 0, "{report}");
    // Everything went through the forwarding node to the master's proxy.
    let s = c.status();
    let proxy = |id: u64| {
        s.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.proxy.clone())
            .unwrap_or_else(|| panic!("node{id} reports no proxy metrics: {s:?}"))
    };
    assert!(proxy(other).rw.total >= 4, "{:?}", proxy(other));
    assert!(proxy(master).peer_rw.total >= 4, "{:?}", proxy(master));

    // The mariadb CLI: a script with a committed and a rolled-back transaction.
    let script = "
        CREATE DATABASE app;
        CREATE TABLE app.acct (id INT PRIMARY KEY, bal INT NOT NULL) ENGINE=InnoDB;
        INSERT INTO app.acct VALUES (1, 100), (2, 100);
        START TRANSACTION;
        UPDATE app.acct SET bal = bal - 30 WHERE id = 1;
        UPDATE app.acct SET bal = bal + 30 WHERE id = 2;
        COMMIT;
        START TRANSACTION;
        UPDATE app.acct SET bal = 0 WHERE id = 1;
        SELECT bal FROM app.acct WHERE id = 1;
        ROLLBACK;
        SELECT id, bal FROM app.acct ORDER BY id;
        SELECT SUM(bal) FROM app.acct;
    ";
    let out = mariadb_as(rw, USER, PASSWORD, script).expect("script through a non-master node");
    assert_eq!(out, "0\n1\t70\n2\t130\n200", "script output");
    // The committed transaction reached every node's mariadbd; the rolled-back one nowhere.
    for id in 1..=3 {
        let socket = c.mariadb_socket(id);
        eventually(&format!("node{id} to have the transfer"), START, || {
            let got = sql_socket(
                &socket,
                "SELECT GROUP_CONCAT(bal ORDER BY id) FROM app.acct",
            )?;
            if got == "70,130" {
                Ok(())
            } else {
                Err(format!("node{id} has {got:?}"))
            }
        });
    }

    // Grants by host see the real client address through both proxies: an account that
    // exists only for 127.0.0.5 logs in from 127.0.0.5 and is refused from 127.0.0.1. (Client
    // accounts cannot create users; root on the master's socket does, through the log.)
    sql_socket(
        &c.mariadb_socket(master),
        "CREATE USER h@'127.0.0.5' IDENTIFIED BY 'hpw'; GRANT SELECT ON app.* TO h@'127.0.0.5'",
    )
    .expect("create the host-restricted account");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let rw_addr = SocketAddr::from(([127, 0, 0, 1], rw));
    let from5 = source_forwarder(&rt, "127.0.0.5".parse().expect("ip"), rw_addr);
    let out = eventually(
        "h@127.0.0.5 to log in through the forwarding node",
        START,
        || mariadb_as(from5, "h", "hpw", "SELECT USER(), CURRENT_USER()"),
    );
    assert_eq!(out, "h@127.0.0.5\th@127.0.0.5");
    let err = mariadb_as(rw, "h", "hpw", "SELECT 1").expect_err("h from 127.0.0.1");
    assert!(err.contains("ERROR 1045"), "{err}");
    let out = mariadb_as(from5, USER, PASSWORD, "SELECT USER()").expect("quorum from 127.0.0.5");
    assert_eq!(out, format!("{USER}@127.0.0.5"));
}
