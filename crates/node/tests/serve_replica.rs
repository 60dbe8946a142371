//! serve against a real MariaDB 10.11 replica: a primary A writes transactions, serve re-serves
//! them from A's binlog files (read with `serve::binlog_file`) and a replica C replicates from
//! serve in GTID mode with semi-sync. Every mariadbd runs in a temp dir on 127.0.0.1 and is killed
//! by a Drop guard.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quorumsql_log::runtime::{handshake_params, LogHandle, LogRuntime, RuntimeConfig};
use quorumsql_log::{
    Command as LogCommand, Epoch, LogConfig, NodeId, Outcome as LogOutcome, RaftEngineStore,
    TxnChunk,
};
use quorumsql_node::log_adapters::LogTxnSource;
use quorumsql_node::serve::binlog_file::{read_binlog_index, FileTxn};
use quorumsql_node::serve::{
    MemTxnSource, RefusalReason, Serve, ServeConfig, ServeEvent, ServeHandle,
};
use quorumsql_peer::{ClusterSecret, PeerConfig, PeerNet};
use quorumsql_wire::Gtid;

const SERVE_SERVER_ID: u32 = 900;
const REPL_USER: &str = "repl";
const REPL_PASSWORD: &str = "s3cret-pw";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One mariadbd in a temp dir; killed (SIGKILL) when dropped.
struct Mariadb {
    name: &'static str,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    server_id: u32,
}

impl Mariadb {
    fn install(name: &'static str, server_id: u32) -> Mariadb {
        let dir = tempfile::Builder::new()
            .prefix("qs-serve-")
            .tempdir_in("/tmp")
            .unwrap();
        let m = Mariadb {
            name,
            dir,
            port: free_port(),
            child: None,
            server_id,
        };
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", m.datadir().display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: mariadb-install-db failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        m
    }

    fn datadir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("m.sock")
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("err.log")).unwrap_or_default()
    }

    fn start(&mut self, extra: &[&str]) {
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.datadir().display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--server-id={}", self.server_id))
            .arg(format!(
                "--log-error={}",
                self.dir.path().join("err.log").display()
            ))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("m.pid").display()
            ))
            .args([
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--log-bin=mysql-bin",
                "--gtid-strict-mode=ON",
                "--binlog-format=ROW",
                "--binlog-checksum=CRC32",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=64M",
                "--max-allowed-packet=64M",
                "--skip-slave-start",
                "--sync-binlog=1",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if self.sql("SELECT 1").is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "{}: mariadbd exited with {st}:\n{}",
                        self.name,
                        self.error_log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}: mariadbd did not answer within 90 s:\n{}",
                self.name,
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn sql(&self, q: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "-N", "-B", "--max-allowed-packet=64M", "-e", q])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn must(&self, q: &str) -> String {
        self.sql(q)
            .unwrap_or_else(|e| panic!("{}: `{q}` failed: {e}", self.name))
    }

    fn var(&self, v: &str) -> String {
        self.must(&format!("SELECT {v}"))
    }

    fn binlog_index(&self) -> PathBuf {
        self.datadir().join("mysql-bin.index")
    }

    /// `SHOW SLAVE STATUS` as (column, value) pairs.
    fn slave_status(&self) -> Vec<(String, String)> {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "-E", "-e", "SHOW SLAVE STATUS"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    fn slave_field(&self, f: &str) -> String {
        self.slave_status()
            .into_iter()
            .find(|(k, _)| k == f)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    fn replicate_from(&self, port: u16) {
        self.must(&format!(
            "CHANGE MASTER TO master_host='127.0.0.1', master_port={port}, master_user='{REPL_USER}', \
             master_password='{REPL_PASSWORD}', master_use_gtid=slave_pos, master_connect_retry=1, \
             master_heartbeat_period=1; START SLAVE"
        ));
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(()) => return,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The source holds every whole transaction of `m`'s binlog files (pushes only new ones).
fn sync_source_from(m: &Mariadb, source: &MemTxnSource) {
    let files = read_binlog_index(&m.binlog_index(), 256 << 20).unwrap();
    let last = source.last_gtid();
    let mut past_last = last.is_none();
    for f in files {
        for t in f.txns {
            if past_last {
                source.push(t.txn);
            } else if Some(t.txn.gtid) == last {
                past_last = true;
            }
        }
    }
}

fn user_tables(m: &Mariadb) -> Vec<String> {
    m.must(
        "SELECT CONCAT(table_schema,'.',table_name) FROM information_schema.tables \
         WHERE table_schema NOT IN ('mysql','information_schema','performance_schema','sys') \
         ORDER BY 1",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn assert_same_tables(a: &Mariadb, c: &Mariadb) {
    let tables = user_tables(a);
    assert!(!tables.is_empty());
    assert_eq!(tables, user_tables(c), "table lists differ");
    for t in tables {
        let q = format!("CHECKSUM TABLE {t}");
        assert_eq!(a.must(&q), c.must(&q), "{t} differs between A and C");
    }
}

fn wait_caught_up(a: &Mariadb, c: &Mariadb) {
    let target = a.var("@@gtid_binlog_pos");
    wait_until(
        &format!("C's gtid_slave_pos to reach {target}"),
        Duration::from_secs(120),
        || {
            let pos = c.var("@@gtid_slave_pos");
            let err = c.slave_field("Last_IO_Error") + &c.slave_field("Last_SQL_Error");
            if pos == target {
                Ok(())
            } else {
                Err(format!("gtid_slave_pos={pos} errors={err:?}"))
            }
        },
    );
}

fn start_serve(rt: &tokio::runtime::Runtime, source: Arc<MemTxnSource>) -> ServeHandle {
    let mut cfg = ServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        SERVE_SERVER_ID,
        REPL_USER,
        REPL_PASSWORD,
    );
    cfg.heartbeat = Duration::from_secs(1);
    // Small files so that the test crosses a virtual binlog rotation.
    cfg.rotate_at = 2 << 20;
    cfg.batch_bytes = 1 << 20;
    rt.block_on(Serve::start(cfg, source)).unwrap()
}

fn workload(a: &Mariadb) {
    a.must("CREATE DATABASE shop");
    a.must("CREATE TABLE shop.item (id INT PRIMARY KEY, name VARCHAR(100), qty INT) ENGINE=InnoDB");
    a.must(
        "BEGIN; INSERT INTO shop.item VALUES (1,'one',10),(2,'two',20); \
         INSERT INTO shop.item VALUES (3,'three',30); UPDATE shop.item SET qty=qty+1 WHERE id<3; COMMIT",
    );
    a.must("CREATE TABLE shop.blob_t (id INT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB");
    for i in 1..=3 {
        // ~2.5 MiB per row: row events far above the 2 MiB virtual file size.
        a.must(&format!(
            "INSERT INTO shop.blob_t VALUES ({i}, REPEAT(SHA2('{i}',256), 40000))"
        ));
    }
    a.must("ALTER TABLE shop.item ADD COLUMN note VARCHAR(20) DEFAULT 'n'");
    a.must("BEGIN; DELETE FROM shop.item WHERE id=2; UPDATE shop.blob_t SET b=REPEAT('z',1000) WHERE id=2; COMMIT");
    for i in 10..40 {
        a.must(&format!(
            "INSERT INTO shop.item VALUES ({i},'x{i}',{i},'m')"
        ));
    }
}

#[test]
fn replica_replicates_from_serve_refuses_divergence_and_tails_live() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut a = Mariadb::install("A", 1);
    let mut c = Mariadb::install("C", 3);
    a.start(&[]);
    c.start(&[
        "--rpl-semi-sync-slave-enabled=ON",
        "--log-slave-updates=ON",
        "--slave-parallel-threads=4",
    ]);
    workload(&a);

    let source = Arc::new(MemTxnSource::new());
    sync_source_from(&a, &source);
    assert_eq!(
        source.last_gtid().map(|g| g.to_string()),
        Some(a.var("@@gtid_binlog_pos")),
        "the binlog reader found every transaction of A"
    );
    assert_eq!(source.len(), 39);
    let serve = start_serve(&rt, source.clone());
    let mut events = serve.subscribe();
    let port = serve.local_addr().port();

    // 0. Wrong credentials: access denied (1045), the replica keeps retrying.
    c.must(&format!(
        "CHANGE MASTER TO master_host='127.0.0.1', master_port={port}, master_user='{REPL_USER}', \
         master_password='not-it', master_use_gtid=slave_pos, master_connect_retry=1; START SLAVE"
    ));
    wait_until("C to be denied access", Duration::from_secs(30), || {
        let errno = c.slave_field("Last_IO_Errno");
        if errno == "1045" {
            Ok(())
        } else {
            Err(format!("Last_IO_Errno={errno}"))
        }
    });
    c.must("STOP SLAVE");
    assert!(serve.metrics().auth_failures >= 1);

    // 1. A connect state naming another transaction at an existing seq: error 1236, IO thread stops.
    let held = Gtid::new(0, 1, 3);
    c.must("SET GLOBAL gtid_slave_pos='0-77-3'");
    c.replicate_from(port);
    wait_until(
        "C's IO thread to stop with 1236",
        Duration::from_secs(60),
        || {
            let errno = c.slave_field("Last_IO_Errno");
            let running = c.slave_field("Slave_IO_Running");
            if errno == "1236" && running == "No" {
                Ok(())
            } else {
                Err(format!("Slave_IO_Running={running} Last_IO_Errno={errno}"))
            }
        },
    );
    let msg = c.slave_field("Last_IO_Error");
    assert!(
        msg.contains("0-77-3") && msg.contains("0-1-3") && msg.contains("diverged"),
        "{msg}"
    );
    let refused = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(ServeEvent::Refused { gtid, reason, .. }) = events.recv().await {
                    return (gtid, reason);
                }
            }
        })
        .await
        .unwrap()
    });
    assert_eq!(
        refused,
        (
            Some(Gtid::new(0, 77, 3)),
            RefusalReason::Diverged { held: Some(held) }
        )
    );
    assert_eq!(serve.metrics().refusals, 1);

    // 2. From an empty position C replicates everything, including a virtual file rotation.
    c.must("STOP SLAVE; SET GLOBAL gtid_slave_pos=''; START SLAVE");
    wait_caught_up(&a, &c);
    assert_same_tables(&a, &c);
    let st = c.slave_status();
    let field = |f: &str| {
        st.iter()
            .find(|(k, _)| k == f)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(field("Slave_IO_Running"), "Yes", "{st:?}");
    assert_eq!(field("Slave_SQL_Running"), "Yes", "{st:?}");
    assert_eq!(field("Last_IO_Errno"), "0");
    assert_eq!(field("Last_SQL_Errno"), "0");
    assert_eq!(field("Master_Server_Id"), SERVE_SERVER_ID.to_string());
    assert!(
        field("Master_Log_File").starts_with("quorumsql-bin.")
            && field("Master_Log_File") != "quorumsql-bin.000001",
        "expected a rotated virtual file, got {}",
        field("Master_Log_File")
    );
    assert_eq!(
        c.var("@@gtid_binlog_pos"),
        a.var("@@gtid_binlog_pos"),
        "log_slave_updates keeps GTIDs"
    );
    // Semi-sync was negotiated and acknowledged.
    assert_eq!(
        c.must("SHOW STATUS LIKE 'Rpl_semi_sync_slave_status'"),
        "Rpl_semi_sync_slave_status\tON"
    );
    // One ACK per transaction: every transaction's last event requested one.
    wait_until("ACKs from C", Duration::from_secs(10), || {
        let m = serve.metrics();
        if m.acks_received == m.txns_sent && m.txns_sent == source.len() as u64 {
            Ok(())
        } else {
            Err(format!("{m:?}"))
        }
    });

    // 3. Live: new transactions reach C while it stays connected; heartbeats keep it alive.
    a.must("INSERT INTO shop.item VALUES (100,'live',1,'l')");
    a.must("BEGIN; UPDATE shop.item SET qty=qty*2; DELETE FROM shop.item WHERE id=11; COMMIT");
    a.must("CREATE TABLE shop.later (k INT PRIMARY KEY) ENGINE=InnoDB");
    // A 20 MiB row: its event spans two 16 MiB packets on the dump connection.
    a.must("INSERT INTO shop.blob_t VALUES (99, REPEAT(SHA2('big',256), 320000))");
    sync_source_from(&a, &source);
    wait_caught_up(&a, &c);
    assert_same_tables(&a, &c);
    wait_until("heartbeats", Duration::from_secs(10), || {
        let hb = c.must("SHOW STATUS LIKE 'Slave_received_heartbeats'");
        let n: u64 = hb
            .split('\t')
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if n >= 2 {
            Ok(())
        } else {
            Err(hb)
        }
    });
    let m = serve.metrics();
    assert_eq!(m.dumps_open, 1, "{m:?}");
    assert!(m.heartbeats_sent >= 2, "{m:?}");
    assert_eq!(c.slave_field("Last_IO_Errno"), "0");

    // 4. STOP SLAVE (KILL of the dump connection) and START SLAVE again: resumes exactly.
    c.must("STOP SLAVE");
    wait_until("the dump to end", Duration::from_secs(10), || {
        let m = serve.metrics();
        if m.dumps_open == 0 {
            Ok(())
        } else {
            Err(format!("{m:?}"))
        }
    });
    a.must("INSERT INTO shop.later VALUES (1),(2),(3)");
    sync_source_from(&a, &source);
    c.must("START SLAVE");
    wait_caught_up(&a, &c);
    assert_same_tables(&a, &c);

    rt.block_on(serve.shutdown());
    drop(c);
    drop(a);
}

/// The demoted-master case (mariadb-replication §3.4): a primary whose commit waits for a
/// semi-sync ACK is SIGKILLed, restarts with `--init-rpl-role=SLAVE` (which truncates that
/// transaction from its binlog), and gets it back from serve with its own server_id: it must apply
/// it, not silently skip it.
#[test]
fn demoted_master_gets_its_own_truncated_transaction_back() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut a = Mariadb::install("A2", 1);
    a.start(&[
        "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
        "--rpl-semi-sync-master-timeout=18446744073709551615",
        "--rpl-semi-sync-master-wait-no-slave=ON",
        "--innodb-flush-log-at-trx-commit=1",
    ]);
    a.must("CREATE DATABASE d");
    a.must("CREATE TABLE d.t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB");
    a.must("INSERT INTO d.t VALUES (1,'acked')");
    let before = a.var("@@gtid_binlog_pos");
    a.must("SET GLOBAL rpl_semi_sync_master_enabled=ON");
    // This commit waits for an ACK forever (no semi-sync replica): AFTER_SYNC keeps it
    // prepared in InnoDB and written to the binlog.
    let mut waiting = Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--socket={}", a.socket().display()))
        .args(["-uroot", "-e", "INSERT INTO d.t VALUES (2,'own')"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the commit to wait for its ACK",
        Duration::from_secs(30),
        || {
            let n = a.must(
                "SELECT COUNT(*) FROM information_schema.processlist \
             WHERE state LIKE '%semi-sync ACK%'",
            );
            if n == "1" {
                Ok(())
            } else {
                Err(format!("{n} sessions waiting"))
            }
        },
    );
    a.kill9();
    let _ = waiting.kill();
    let _ = waiting.wait();

    let source = Arc::new(MemTxnSource::new());
    sync_source_from(&a, &source);
    let own = source.last_gtid().unwrap();
    assert_eq!(own.server, 1);
    assert_ne!(
        own.to_string(),
        before,
        "the waiting transaction is in A2's binlog"
    );

    a.start(&[
        "--init-rpl-role=SLAVE",
        "--rpl-semi-sync-slave-enabled=ON",
        "--log-slave-updates=ON",
        "--read-only=ON",
    ]);
    assert!(
        a.error_log().contains("truncated binlog file"),
        "recovery did not truncate:\n{}",
        a.error_log()
    );
    assert_eq!(a.var("@@gtid_binlog_pos"), before);
    assert_eq!(a.must("SELECT COUNT(*) FROM d.t WHERE id=2"), "0");

    let serve = start_serve(&rt, source.clone());
    a.must("SET GLOBAL gtid_slave_pos=@@gtid_binlog_pos");
    a.replicate_from(serve.local_addr().port());
    let want = own.to_string();
    wait_until(
        &format!("A2's binlog to hold {want} again"),
        Duration::from_secs(60),
        || {
            let pos = a.var("@@gtid_binlog_pos");
            let err = a.slave_field("Last_IO_Error") + &a.slave_field("Last_SQL_Error");
            if pos == want {
                Ok(())
            } else {
                Err(format!("gtid_binlog_pos={pos} errors={err:?}"))
            }
        },
    );
    assert_eq!(a.must("SELECT v FROM d.t WHERE id=2"), "own");
    assert_eq!(a.slave_field("Last_IO_Errno"), "0");
    assert_eq!(a.slave_field("Last_SQL_Errno"), "0");
    rt.block_on(serve.shutdown());
}

/// A single-node global binlog on raft-engine in `dir`, with a small entry cap so that a large
/// transaction travels as many chunks; returns its handle once this node is master.
async fn start_log(dir: &std::path::Path, entry_cap: usize) -> LogHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut log = LogConfig::new(NodeId(1), vec![NodeId(1)]);
    log.tick_interval = Duration::from_millis(20);
    log.lease_margin = Duration::from_millis(40);
    log.entry_cap = entry_cap;
    let mut pc = PeerConfig::new(
        NodeId(1),
        addr,
        [(NodeId(1), addr)].into_iter().collect(),
        ClusterSecret::random(),
    );
    pc.handshake_params = handshake_params(&log);
    let (net, inbound) = PeerNet::start_on(pc, listener).unwrap();
    let store = RaftEngineStore::open(dir).unwrap();
    let handle = LogRuntime::start(RuntimeConfig::new(log), store, net, inbound)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = handle.status();
        let ready = LogCommand::MasterReady {
            node: st.id,
            epoch: Epoch(st.term),
            gtid: st.last_gtid,
        };
        match handle.propose(ready).await {
            Ok(p) if p.outcome == LogOutcome::Accepted => return handle,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the single-node log did not become master: {other:?}, {:?}",
                    handle.status().role
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Appends `txns` to the log, each cut into chunks of `chunk` bytes wherever the cut falls
/// (inside events), one Append per chunk as capture sends a large transaction.
async fn append_chunked(log: &LogHandle, txns: &[FileTxn], chunk: usize) -> usize {
    let epoch = log.status().master.map(|(_, e)| e).unwrap();
    let mut chunked = 0;
    for t in txns {
        let events = &t.txn.events;
        let parts: Vec<Bytes> = (0..events.len())
            .step_by(chunk)
            .map(|i| events.slice(i..(i + chunk).min(events.len())))
            .collect();
        if parts.len() > 1 {
            chunked += 1;
        }
        let digest = quorumsql_log::digest_of(events);
        for (i, p) in parts.iter().enumerate() {
            let cmd = LogCommand::Append {
                epoch,
                prev_gtid: log.status().last_gtid,
                txns: vec![TxnChunk {
                    gtid: t.txn.gtid,
                    origin: t.end.clone(),
                    digest,
                    chunk: i as u32,
                    last: i + 1 == parts.len(),
                    events: p.clone(),
                }],
            };
            let r = log.propose(cmd).await.unwrap();
            assert_eq!(
                r.outcome,
                LogOutcome::Accepted,
                "chunk {i} of {}",
                t.txn.gtid
            );
        }
    }
    chunked
}

/// Forwards replica ↔ serve. A connection accepted while `cut_next` is non-zero is cut once that
/// many bytes came from serve (`cut_next` goes back to 0); `cuts` counts the cuts.
async fn cutting_proxy(
    listener: tokio::net::TcpListener,
    serve: std::net::SocketAddr,
    cut_next: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok((client, _)) = listener.accept().await {
        let Ok(upstream) = tokio::net::TcpStream::connect(serve).await else {
            continue;
        };
        let limit = match cut_next.swap(0, Ordering::SeqCst) {
            0 => None,
            n => Some(n as usize),
        };
        let cuts = cuts.clone();
        tokio::spawn(async move {
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            let up = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut uw).await;
            });
            let mut sent = 0usize;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match ur.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if let Some(l) = limit {
                    if sent + n >= l {
                        let _ = cw.write_all(&buf[..l - sent]).await;
                        cuts.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                sent += n;
            }
            // Dropping every half closes both connections.
            up.abort();
        });
    }
}

/// The replica's own account of its reconnects in the middle of a transaction: "GTID event skip
/// N" with N > 0 (events of the partial group it already queued), and how many of those it rolled
/// back because the virtual file name changed instead of skipping.
fn mid_group_reconnects(c: &Mariadb) -> (usize, usize) {
    let log = c.error_log();
    let skips = log
        .lines()
        .filter_map(|l| l.split("GTID event skip ").nth(1))
        .filter(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
        .count();
    let rollbacks = log
        .matches("assuming that master has crashed and rolling back the transaction")
        .count();
    (skips, rollbacks)
}

/// A big transaction for `big.t`: ~9.6 MiB of 64 KiB row events and one 3 MiB row event.
fn big_txn(first_id: u32) -> String {
    let mut big = String::from("BEGIN;");
    for i in first_id..first_id + 150 {
        big.push_str(&format!(
            "INSERT INTO big.t VALUES ({i}, REPEAT(SHA2('{i}',256), 1000));"
        ));
    }
    big.push_str(&format!(
        "INSERT INTO big.t VALUES ({}, REPEAT(SHA2('huge',256), 48000)); COMMIT",
        first_id + 1000
    ));
    big
}

/// Issue #2: a transaction much larger than the entry cap travels as many chunks through a real
/// log, serve streams it to a real replica in pieces far smaller than its events (a 3 MiB row
/// event spans dozens of pieces), the replica's connection is cut in the middle of it and the
/// replica reconnects at its previous GTID: its data ends equal to the primary's.
#[test]
fn a_chunked_transaction_streams_from_the_log_in_pieces_across_a_reconnect() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut a = Mariadb::install("A3", 1);
    let mut c = Mariadb::install("C3", 3);
    a.start(&[]);
    c.start(&[
        "--rpl-semi-sync-slave-enabled=ON",
        "--log-slave-updates=ON",
        "--slave-parallel-threads=4",
    ]);
    a.must("CREATE DATABASE big");
    a.must("CREATE TABLE big.t (id INT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB");
    a.must("INSERT INTO big.t VALUES (0, 'small')");
    a.must(&big_txn(1));
    a.must("UPDATE big.t SET b='after' WHERE id=0");

    let files = read_binlog_index(&a.binlog_index(), 256 << 20).unwrap();
    let txns: Vec<FileTxn> = files.into_iter().flat_map(|f| f.txns).collect();
    let largest = txns.iter().map(|t| t.txn.events.len()).max().unwrap();
    assert!(largest > 12 << 20, "the big transaction is {largest} bytes");

    let log_dir = tempfile::tempdir().unwrap();
    // Cut the first dump after 4 MiB: well inside the 12.6 MiB transaction.
    let cut_next = Arc::new(AtomicU64::new(4 << 20));
    let cuts = Arc::new(AtomicU64::new(0));
    let (log, serve, proxy_port) = rt.block_on(async {
        let log = start_log(log_dir.path(), 256 << 10).await;
        // Chunks of 200 000 bytes: boundaries fall inside events.
        let chunked = append_chunked(&log, &txns, 200_000).await;
        assert_eq!(chunked, 1);
        let source = Arc::new(LogTxnSource::new(
            log.clone(),
            tokio::runtime::Handle::current(),
        ));
        let mut cfg = ServeConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            SERVE_SERVER_ID,
            REPL_USER,
            REPL_PASSWORD,
        );
        cfg.heartbeat = Duration::from_secs(1);
        // Pieces of 100 000 bytes: a 64 KiB row event often straddles two, the 3 MiB one ~30.
        cfg.batch_bytes = 100_000;
        let serve = Serve::start(cfg, source).await.unwrap();
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_port = proxy.local_addr().unwrap().port();
        tokio::spawn(cutting_proxy(
            proxy,
            serve.local_addr(),
            cut_next.clone(),
            cuts.clone(),
        ));
        (log, serve, proxy_port)
    });
    assert_eq!(
        log.status().last_gtid.map(|g| g.to_string()),
        Some(a.var("@@gtid_binlog_pos"))
    );

    // 1. From the start: the big transaction lands in the second virtual file; after the cut
    // the replica reconnects at 0-1-3, where it is the first one of file 000001, so the replica
    // sees another file name and rolls its partial copy back.
    c.replicate_from(proxy_port);
    wait_caught_up(&a, &c);
    assert_same_tables(&a, &c);
    assert_eq!(cuts.load(Ordering::SeqCst), 1, "the first dump was cut");
    assert_eq!(mid_group_reconnects(&c), (1, 1), "{}", c.error_log());
    assert!(serve.metrics().dumps_started >= 2, "{:?}", serve.metrics());

    // 2. From 0-1-5 with a second big transaction: the same file name after the cut, so the
    // replica skips the events it already queued and relies on serve re-sending the very same
    // events in the same order.
    c.must("STOP SLAVE");
    a.must(&big_txn(2001));
    let files = read_binlog_index(&a.binlog_index(), 256 << 20).unwrap();
    let last = log.status().last_gtid;
    let new: Vec<FileTxn> = files
        .into_iter()
        .flat_map(|f| f.txns)
        .skip_while(|t| Some(t.txn.gtid) != last)
        .skip(1)
        .collect();
    assert_eq!(new.len(), 1);
    rt.block_on(append_chunked(&log, &new, 200_000));
    cut_next.store(5 << 20, Ordering::SeqCst);
    c.must("START SLAVE");
    wait_caught_up(&a, &c);
    assert_same_tables(&a, &c);
    assert_eq!(cuts.load(Ordering::SeqCst), 2, "the second dump was cut");
    assert_eq!(mid_group_reconnects(&c), (2, 1), "{}", c.error_log());
    assert_eq!(c.slave_field("Last_SQL_Errno"), "0");
    assert_eq!(
        c.var("@@gtid_binlog_pos"),
        a.var("@@gtid_binlog_pos"),
        "log_slave_updates keeps GTIDs"
    );

    rt.block_on(async {
        serve.shutdown().await;
        log.shutdown().await;
    });
}
