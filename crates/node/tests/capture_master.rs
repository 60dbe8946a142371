//! capture against a real mariadbd primary (AFTER_SYNC semi-sync, infinite timeout, no replica
//! but capture). Each test starts its own mariadbd in a temp dir on a free 127.0.0.1 port and
//! unix socket, and kills it (SIGKILL) when done, even on failure. The sink is `FakeLogSink`, an
//! in-memory stand-in for the global binlog that checks the `prev_gtid` chain like the state
//! machine does and can hold (delay) or reject appends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use quorumsql_node::capture::{
    AppendFuture, AppendOutcome, Capture, CaptureConfig, CaptureError, CaptureHandle, CapturedTxn,
    Credentials, Endpoint, Epoch, TxnSink,
};
use quorumsql_wire::{Gtid, GtidState};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// The replica server_id reserved for capture in these tests (no node uses it).
const CAPTURE_SERVER_ID: u32 = 4_000_001;

// ------------------------------------------------------------------------------------ mariadbd

/// A mariadbd child process in a temp dir; SIGKILLed on drop.
struct Mariadb {
    child: Option<std::process::Child>,
    socket: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A datadir initialised once per test binary and copied for every server (install-db is slow).
fn template_datadir() -> &'static Path {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let out = std::process::Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg("--user=root")
                .arg("--auth-root-authentication-method=socket")
                .arg("--skip-test-db")
                .arg(format!("--datadir={}", dir.path().join("data").display()))
                .output()
                .expect("run mariadb-install-db");
            assert!(
                out.status.success(),
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            dir
        })
        .path()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Mariadb {
    async fn start() -> Mariadb {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(template_datadir().join("data"))
            .arg(&data)
            .status()
            .expect("cp");
        assert!(st.success(), "copying the template datadir failed");
        let socket = dir.path().join("mysqld.sock");
        let port = free_port();
        let child = std::process::Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mysqld.pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                dir.path().join("error.log").display()
            ))
            .arg(format!("--tmpdir={}", dir.path().display()))
            .arg("--skip-name-resolve")
            .arg("--log-bin=mysql-bin")
            .arg("--server-id=1")
            .arg("--gtid-strict-mode=ON")
            .arg("--binlog-format=ROW")
            .arg("--sync-binlog=1")
            .arg("--innodb-flush-log-at-trx-commit=1")
            .arg("--innodb-buffer-pool-size=64M")
            .arg("--rpl-semi-sync-master-enabled=ON")
            .arg("--rpl-semi-sync-master-wait-point=AFTER_SYNC")
            .arg("--rpl-semi-sync-master-timeout=18446744073709551615")
            .arg("--rpl-semi-sync-master-wait-no-slave=ON")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mariadbd");
        let m = Mariadb {
            child: Some(child),
            socket,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(out) = m.try_sql("SELECT 1").await {
                if out.trim() == "1" {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not come up within 60 s; error log:\n{}",
                m.error_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        m
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default()
    }

    fn client(&self) -> Command {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults")
            .arg("-uroot")
            .arg(format!("--socket={}", self.socket.display()))
            .arg("-N")
            .arg("-B")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn try_sql(&self, sql: &str) -> Result<String, String> {
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            self.client().arg("-e").arg(sql).output(),
        )
        .await
        .map_err(|_| format!("{sql:?} took more than 20 s"))?
        .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A query that must not wait for capture (reads, KILL, status).
    async fn sql(&self, sql: &str) -> String {
        match self.try_sql(sql).await {
            Ok(s) => s.trim().to_string(),
            Err(e) => panic!("{sql:?} failed: {e}"),
        }
    }

    /// Starts a client that runs `sql` (which may wait for the semi-sync ACK).
    fn spawn_sql(&self, sql: &str) -> Child {
        self.client()
            .arg("-e")
            .arg(sql)
            .spawn()
            .expect("spawn mariadb")
    }

    async fn gtid_binlog_pos(&self) -> GtidState {
        self.sql("SELECT @@gtid_binlog_pos")
            .await
            .parse()
            .expect("gtid_binlog_pos parses")
    }

    async fn status(&self, var: &str) -> u64 {
        let out = self.sql(&format!("SHOW GLOBAL STATUS LIKE '{var}'")).await;
        out.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("status {var}: {out:?}"))
    }
}

// ------------------------------------------------------------------------------------ the sink

/// In-memory stand-in for the global binlog: a conditional append on `prev_gtid`, plus knobs to
/// hold appends (not resolving them) or reject the next one.
struct FakeLogSink {
    state: Mutex<SinkState>,
    hold: watch::Sender<bool>,
    reject_next: AtomicBool,
    appends_started: AtomicU64,
}

#[derive(Default)]
struct SinkState {
    last: Option<Gtid>,
    /// A chunked transaction in progress: its GTID and the next chunk index expected.
    open: Option<(Gtid, u32)>,
    /// Every accepted part, in order.
    parts: Vec<CapturedTxn>,
    accepted_appends: u64,
    rejected: u64,
}

impl FakeLogSink {
    fn new() -> Arc<FakeLogSink> {
        Arc::new(FakeLogSink {
            state: Mutex::new(SinkState::default()),
            hold: watch::channel(false).0,
            reject_next: AtomicBool::new(false),
            appends_started: AtomicU64::new(0),
        })
    }

    fn set_hold(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    /// GTIDs of the complete transactions accepted, in order.
    fn gtids(&self) -> Vec<Gtid> {
        let st = self.state.lock().expect("lock");
        st.parts.iter().filter(|p| p.last).map(|p| p.gtid).collect()
    }

    fn last(&self) -> Option<Gtid> {
        self.state.lock().expect("lock").last
    }
}

impl TxnSink for FakeLogSink {
    fn append(
        &self,
        _epoch: Epoch,
        prev: Option<Gtid>,
        txns: Vec<CapturedTxn>,
    ) -> AppendFuture<'_> {
        Box::pin(async move {
            self.appends_started.fetch_add(1, Ordering::SeqCst);
            let mut rx = self.hold.subscribe();
            let _ = rx.wait_for(|h| !*h).await;
            let mut st = self.state.lock().expect("lock");
            if self.reject_next.swap(false, Ordering::SeqCst) {
                st.rejected += 1;
                return Ok(AppendOutcome::Rejected {
                    reason: "FakeLogSink told to reject".into(),
                });
            }
            if prev != st.last {
                st.rejected += 1;
                return Ok(AppendOutcome::Rejected {
                    reason: format!("prev_gtid {prev:?} but the log ends at {:?}", st.last),
                });
            }
            // Chunks of one transaction arrive consecutively, complete only with the last one.
            let mut open = st.open;
            let mut last = st.last;
            for t in &txns {
                let expect = match open {
                    Some((g, next)) if g == t.gtid => next,
                    Some((g, _)) => {
                        return Ok(AppendOutcome::Rejected {
                            reason: format!("{} while chunked {g} is open", t.gtid),
                        })
                    }
                    None => 0,
                };
                if t.chunk_index != expect || t.last != t.digest.is_some() {
                    return Ok(AppendOutcome::Rejected {
                        reason: format!("{} chunk {} (expected {expect})", t.gtid, t.chunk_index),
                    });
                }
                if t.last {
                    last = Some(t.gtid);
                    open = None;
                } else {
                    open = Some((t.gtid, expect + 1));
                }
            }
            st.open = open;
            st.last = last;
            st.parts.extend(txns);
            st.accepted_appends += 1;
            Ok(AppendOutcome::Accepted)
        })
    }
}

// ------------------------------------------------------------------------------------ helpers

fn capture_config(m: &Mariadb) -> CaptureConfig {
    CaptureConfig::new(
        Endpoint::Unix(m.socket.clone()),
        Credentials {
            user: "root".into(),
            password: String::new(),
        },
        CAPTURE_SERVER_ID,
    )
}

async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_attached(m: &Mariadb, cfg: CaptureConfig, sink: Arc<FakeLogSink>) -> CaptureHandle {
    let h = Capture::start(cfg, sink, GtidState::new(), None, Epoch(7));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h.attached() {
        if let Some(out) = h.outcome() {
            panic!("capture ended before attaching: {out:?}");
        }
        assert!(
            Instant::now() < deadline,
            "capture did not attach within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The master counts capture as its semi-sync client.
    let mut clients = 0;
    for _ in 0..200 {
        clients = m.status("Rpl_semi_sync_master_clients").await;
        if clients == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(clients, 1, "Rpl_semi_sync_master_clients");
    h
}

/// The sink holds exactly the transactions 0-1-1 ..= the server's gtid_binlog_pos, in order,
/// each once.
async fn assert_log_matches_binlog(m: &Mariadb, sink: &FakeLogSink, h: &CaptureHandle) {
    let pos = m.gtid_binlog_pos().await;
    let want = pos.get(0).expect("domain 0 has transactions");
    wait_for(
        "the sink to accept up to gtid_binlog_pos",
        Duration::from_secs(30),
        || sink.last() == Some(want),
    )
    .await;
    let got = sink.gtids();
    let expect: Vec<Gtid> = (1..=want.seq).map(|s| Gtid::new(0, 1, s)).collect();
    assert_eq!(got.len(), expect.len(), "number of captured transactions");
    assert_eq!(
        got, expect,
        "captured GTIDs are 0-1-1.. in order, each once"
    );
    wait_for(
        "the ACK of the last transaction",
        Duration::from_secs(10),
        || h.last_acked().map(|a| a.gtid) == Some(want),
    )
    .await;
}

/// Type bytes of the events in `bytes` (whole events back to back).
fn event_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut off = 0;
    while off + 19 <= bytes.len() {
        types.push(bytes[off + 4]);
        let size = u32::from_le_bytes(bytes[off + 9..off + 13].try_into().expect("4 bytes"));
        off += size as usize;
    }
    assert_eq!(off, bytes.len(), "events fill the part exactly");
    types
}

async fn wait_child(c: &mut Child, timeout: Duration, what: &str) {
    match tokio::time::timeout(timeout, c.wait()).await {
        Ok(Ok(st)) => assert!(st.success(), "{what}: client exited with {st}"),
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: client still running after {timeout:?}"),
    }
}

async fn waiting_for_ack(m: &Mariadb) -> u64 {
    m.sql(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE STATE LIKE 'Waiting for semi-sync ACK%'",
    )
    .await
    .parse()
    .expect("count")
}

async fn create_schema(m: &Mariadb) {
    let mut c = m.spawn_sql(
        "CREATE DATABASE t; CREATE TABLE t.w (id INT PRIMARY KEY, writer INT, n INT) ENGINE=InnoDB",
    );
    wait_child(&mut c, Duration::from_secs(20), "create schema").await;
}

// ------------------------------------------------------------------------------------ tests

/// 16 concurrent writers commit 2,000 transactions; every one is captured exactly once, in GTID
/// order, ACKed, and many share an append (group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_are_captured_exactly_once_in_order() {
    let m = Mariadb::start().await;
    let sink = FakeLogSink::new();
    let h = start_attached(&m, capture_config(&m), sink.clone()).await;
    create_schema(&m).await;

    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..16 {
        let mut sql = String::new();
        for n in 0..125 {
            let id = w * 1000 + n;
            sql.push_str(&format!("INSERT INTO t.w VALUES ({id}, {w}, {n});\n"));
        }
        let mut c = m.client();
        c.stdin(Stdio::piped());
        let mut child = c.spawn().expect("spawn writer");
        let mut stdin = child.stdin.take().expect("stdin");
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(sql.as_bytes()).await;
        });
        writers.push(child);
    }
    for (i, c) in writers.iter_mut().enumerate() {
        wait_child(c, Duration::from_secs(60), &format!("writer {i}")).await;
    }
    let elapsed = started.elapsed();
    assert_eq!(m.sql("SELECT COUNT(*) FROM t.w").await, "2000");
    assert_log_matches_binlog(&m, &sink, &h).await;
    let metrics = h.metrics();
    let appends = sink.state.lock().expect("lock").accepted_appends;
    eprintln!(
        "2000 commits in {elapsed:?}; capture metrics: {metrics:?}; accepted appends {appends}"
    );
    assert!(
        appends < metrics.txns_accepted,
        "group commit: {appends} appends for {} transactions",
        metrics.txns_accepted
    );
    assert_eq!(
        m.status("Rpl_semi_sync_master_no_tx").await,
        0,
        "no commit went without an ACK"
    );
    assert!(h.outcome().is_none(), "capture still running");
    assert!(h.shutdown().await.is_ok());
}

/// AFTER_SYNC: while the sink holds the append, the commit does not return and its row is
/// invisible to other sessions; once accepted (and ACKed) it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_waits_invisibly_until_the_append_is_accepted() {
    let m = Mariadb::start().await;
    let sink = FakeLogSink::new();
    let h = start_attached(&m, capture_config(&m), sink.clone()).await;
    create_schema(&m).await;
    assert_log_matches_binlog(&m, &sink, &h).await;

    // Rotate first: the ACK must name the new binlog file.
    m.sql("FLUSH BINARY LOGS").await;
    sink.set_hold(true);
    let before = sink.appends_started.load(Ordering::SeqCst);
    let mut c = m.spawn_sql("INSERT INTO t.w VALUES (100000, 0, 0)");
    wait_for(
        "capture to propose the insert",
        Duration::from_secs(20),
        || sink.appends_started.load(Ordering::SeqCst) > before,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting_for_ack(&m).await != 1 {
        assert!(
            Instant::now() < deadline,
            "the insert is not waiting for the ACK"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        c.try_wait().expect("try_wait").is_none(),
        "commit returned before acceptance"
    );
    assert_eq!(
        m.sql("SELECT COUNT(*) FROM t.w WHERE id = 100000").await,
        "0",
        "a held commit is invisible to other sessions"
    );
    let acked = h.last_acked().map(|a| a.gtid);
    assert_ne!(
        acked,
        m.gtid_binlog_pos().await.get(0),
        "nothing ACKed while held"
    );

    sink.set_hold(false);
    wait_child(
        &mut c,
        Duration::from_secs(20),
        "held insert after acceptance",
    )
    .await;
    assert_eq!(
        m.sql("SELECT COUNT(*) FROM t.w WHERE id = 100000").await,
        "1"
    );
    assert_log_matches_binlog(&m, &sink, &h).await;
    let acked = h.last_acked().expect("acked");
    let master = m.sql("SHOW MASTER STATUS").await;
    let mut cols = master.split_whitespace();
    assert_eq!(
        Some(acked.pos.file.as_str()),
        cols.next(),
        "ACK names the current file"
    );
    assert_eq!(
        Some(acked.pos.offset.to_string().as_str()),
        cols.next(),
        "ACK = binlog end"
    );
    assert!(h.shutdown().await.is_ok());
}

/// A rejected append is never ACKed: capture ends with `Rejected`, the commit keeps waiting and
/// stays invisible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_append_is_never_acked() {
    let m = Mariadb::start().await;
    let sink = FakeLogSink::new();
    let h = start_attached(&m, capture_config(&m), sink.clone()).await;
    create_schema(&m).await;
    assert_log_matches_binlog(&m, &sink, &h).await;
    let acked_before = h.last_acked();
    let yes_before = m.status("Rpl_semi_sync_master_yes_tx").await;

    sink.reject_next.store(true, Ordering::SeqCst);
    let mut c = m.spawn_sql("INSERT INTO t.w VALUES (200000, 0, 0)");
    let outcome = tokio::time::timeout(Duration::from_secs(20), h.wait())
        .await
        .expect("capture ends after the rejection");
    match outcome.as_ref().map_err(|e| &**e) {
        Err(CaptureError::Rejected { last, reason, .. }) => {
            assert!(reason.contains("FakeLogSink"), "{reason}");
            assert_eq!(
                last.map(|g| g.seq),
                m.gtid_binlog_pos().await.get(0).map(|g| g.seq)
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!h.attached());
    // The commit is still waiting for an ACK that never comes, and nobody can see its row.
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting_for_ack(&m).await != 1 {
        assert!(
            Instant::now() < deadline,
            "the rejected insert is not waiting for the ACK"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        c.try_wait().expect("try_wait").is_none(),
        "rejected commit returned to its client"
    );
    assert_eq!(
        m.sql("SELECT COUNT(*) FROM t.w WHERE id = 200000").await,
        "0"
    );
    assert_eq!(h.last_acked(), acked_before, "no ACK after the rejection");
    assert_eq!(m.status("Rpl_semi_sync_master_yes_tx").await, yes_before);
    let _ = c.start_kill();
}

/// Killing the dump connection while transactions are queued and in flight loses and repeats
/// nothing: capture reconnects from the accepted GTID state and skips (after verifying) what the
/// master re-sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_kill_loses_and_repeats_nothing() {
    let m = Mariadb::start().await;
    let sink = FakeLogSink::new();
    let h = start_attached(&m, capture_config(&m), sink.clone()).await;
    create_schema(&m).await;
    assert_log_matches_binlog(&m, &sink, &h).await;

    // Hold the log so that several commits are captured but not accepted, then kill the dump.
    sink.set_hold(true);
    let mut clients: Vec<Child> = (0..6)
        .map(|i| m.spawn_sql(&format!("INSERT INTO t.w VALUES ({}, 1, {i})", 300000 + i)))
        .collect();
    // AFTER_SYNC: the group waiting for its ACK holds back the groups behind it, so at least
    // one commit is captured and held; the others may or may not be in the binlog yet.
    wait_for(
        "a held commit to be captured",
        Duration::from_secs(20),
        || h.metrics().txns_captured > 2,
    )
    .await;
    let held = h.metrics().txns_captured - 2;
    let id = h.dump_connection_id().expect("dump connection id");
    m.sql(&format!("KILL {id}")).await;
    wait_for("capture to reconnect", Duration::from_secs(20), || {
        h.metrics().reconnects >= 1 && h.attached()
    })
    .await;
    wait_for(
        "the re-sent transactions to be skipped",
        Duration::from_secs(20),
        || h.metrics().txns_skipped_resent >= held,
    )
    .await;
    assert_eq!(sink.gtids().len(), 2, "nothing accepted while held");

    // A second kill with the log released mid-stream, while more commits arrive.
    sink.set_hold(false);
    let more: Vec<Child> = (0..20)
        .map(|i| m.spawn_sql(&format!("INSERT INTO t.w VALUES ({}, 2, {i})", 400000 + i)))
        .collect();
    clients.extend(more);
    if let Some(id) = h.dump_connection_id() {
        let _ = m.try_sql(&format!("KILL {id}")).await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        wait_child(c, Duration::from_secs(30), &format!("client {i}")).await;
    }
    assert_eq!(m.sql("SELECT COUNT(*) FROM t.w").await, "26");
    assert_log_matches_binlog(&m, &sink, &h).await;
    assert!(
        h.outcome().is_none(),
        "capture survived the kills: {:?}",
        h.outcome()
    );
    eprintln!("metrics after reconnects: {:?}", h.metrics());
    assert!(h.shutdown().await.is_ok());
}

/// Transactions larger than the chunk size travel as consecutive parts (one row event larger
/// than a chunk included) while memory stays within the buffer budget; a dump connection killed
/// in the middle of such a transaction resumes it without repeating or losing a part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transactions_stream_in_chunks_across_a_reconnect() {
    let m = Mariadb::start().await;
    let sink = FakeLogSink::new();
    let cfg = capture_config(&m).with_entry_cap(64 << 10);
    let (chunk, budget) = (cfg.chunk_size, cfg.max_buffered_bytes);
    let h = start_attached(&m, cfg, sink.clone()).await;
    let mut c = m.spawn_sql(
        "CREATE DATABASE t; CREATE TABLE t.big (id INT PRIMARY KEY, v LONGBLOB) ENGINE=InnoDB",
    );
    wait_child(&mut c, Duration::from_secs(20), "create schema").await;
    assert_log_matches_binlog(&m, &sink, &h).await;

    // ~2 MB in ~8 KiB rows events, then one 1.5 MB row event.
    sink.set_hold(true);
    let mut c = m.spawn_sql(
        "BEGIN; INSERT INTO t.big SELECT seq, REPEAT('x', 1000) FROM t.seq_1_to_2000; \
         INSERT INTO t.big VALUES (0, REPEAT('y', 1500000)); COMMIT",
    );
    // The reader stops at the buffer budget while the log holds the first append.
    let deadline = Instant::now() + Duration::from_secs(20);
    while (h.metrics().bytes_captured as usize) < budget - chunk {
        if Instant::now() > deadline || c.try_wait().expect("try_wait").is_some() {
            let out = c.wait_with_output().await.expect("output");
            panic!(
                "the reader did not fill the buffer budget: {:?}; client: {}",
                h.metrics(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let captured = h.metrics().bytes_captured as usize;
    assert!(
        captured <= budget,
        "captured {captured} bytes beyond the {budget}-byte budget"
    );
    let id = h.dump_connection_id().expect("dump connection id");
    m.sql(&format!("KILL {id}")).await;
    sink.set_hold(false);
    wait_child(&mut c, Duration::from_secs(30), "large transaction").await;
    assert_log_matches_binlog(&m, &sink, &h).await;
    let metrics = h.metrics();
    eprintln!("large transaction metrics: {metrics:?}");
    assert!(metrics.reconnects >= 1, "the kill forced a reconnect");
    assert!(
        metrics.parts_skipped_resent >= 3,
        "the parts proposed before the kill were re-read, verified and skipped"
    );

    let want = m.gtid_binlog_pos().await.get(0).expect("gtid");
    let parts: Vec<CapturedTxn> = sink
        .state
        .lock()
        .expect("lock")
        .parts
        .iter()
        .filter(|p| p.gtid == want)
        .cloned()
        .collect();
    assert!(parts.len() > 3_000_000 / chunk, "{} parts", parts.len());
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.chunk_index as usize, i);
        assert!(p.events.len() <= chunk);
    }
    // The parts join into whole, checksummed events whose digest the last part carries.
    let all: Vec<u8> = parts
        .iter()
        .flat_map(|p| p.events.iter().copied())
        .collect();
    let mut digester =
        quorumsql_wire::txn::TxnDigester::new(quorumsql_wire::event::Checksum::Crc32);
    let mut off = 0;
    while off < all.len() {
        let size = u32::from_le_bytes(all[off + 9..off + 13].try_into().expect("4 bytes")) as usize;
        let ev = &all[off..off + size];
        quorumsql_wire::event::verify_checksum(ev).expect("event CRC");
        digester.update(ev).expect("digest");
        off += size;
    }
    assert_eq!(off, all.len());
    assert_eq!(parts.last().and_then(|p| p.digest), Some(digester.finish()));
    assert_eq!(
        m.sql("SELECT COUNT(*), SUM(LENGTH(v)) FROM t.big").await,
        "2001\t3500000"
    );
    assert!(h.shutdown().await.is_ok());
}

/// With `hold_proposals`, capture attaches but proposes nothing until allowed (promotion:
/// capture attaches before `MasterReady` is applied): the commit waits, then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_proposals_wait_for_allow() {
    let m = Mariadb::start().await;
    let sink = FakeLogSink::new();
    let mut cfg = capture_config(&m);
    cfg.hold_proposals = true;
    cfg.annotate_rows = true;
    let h = start_attached(&m, cfg, sink.clone()).await;
    let mut c = m.spawn_sql(
        "CREATE DATABASE held; CREATE TABLE held.x (id INT PRIMARY KEY) ENGINE=InnoDB; \
         INSERT INTO held.x VALUES (1)",
    );
    wait_for("the commit to be captured", Duration::from_secs(20), || {
        h.metrics().txns_captured == 1
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting_for_ack(&m).await != 1 {
        assert!(
            Instant::now() < deadline,
            "the commit is not waiting for the ACK"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sink.appends_started.load(Ordering::SeqCst),
        0,
        "nothing proposed while held"
    );
    assert!(c.try_wait().expect("try_wait").is_none());
    h.allow_proposals();
    wait_child(&mut c, Duration::from_secs(20), "commit after allow").await;
    assert_log_matches_binlog(&m, &sink, &h).await;
    // Asked for, the INSERT's ANNOTATE_ROWS event is captured with it.
    let insert = sink
        .state
        .lock()
        .expect("lock")
        .parts
        .last()
        .cloned()
        .expect("the insert");
    assert!(
        event_types(&insert.events).contains(&0xa0),
        "ANNOTATE_ROWS in {:x?}",
        event_types(&insert.events)
    );
    assert!(h.shutdown().await.is_ok());
}

/// Capture over TCP with a mysql_native_password account (REPLICATION SLAVE only), started from
/// a non-empty GTID state after an earlier capture stopped: it continues the log exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_over_tcp_from_the_accepted_state() {
    let m = Mariadb::start().await;
    let sink = FakeLogSink::new();
    let h = start_attached(&m, capture_config(&m), sink.clone()).await;
    let mut c = m.spawn_sql(
        "CREATE USER qsql_capture@'127.0.0.1' IDENTIFIED BY 'capture-pw'; \
         GRANT REPLICATION SLAVE ON *.* TO qsql_capture@'127.0.0.1'; \
         CREATE DATABASE t2",
    );
    wait_child(&mut c, Duration::from_secs(20), "create user").await;
    assert_log_matches_binlog(&m, &sink, &h).await;
    let state = h.accepted_state();
    assert!(h.shutdown().await.is_ok());
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.status("Rpl_semi_sync_master_clients").await != 0 {
        assert!(
            Instant::now() < deadline,
            "the master still counts the stopped capture"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut cfg = CaptureConfig::new(
        Endpoint::Tcp(format!("127.0.0.1:{}", m.port).parse().expect("addr")),
        Credentials {
            user: "qsql_capture".into(),
            password: "capture-pw".into(),
        },
        CAPTURE_SERVER_ID,
    );
    cfg.heartbeat = Duration::from_millis(200);
    let h = Capture::start(cfg, sink.clone(), state, sink.last(), Epoch(8));
    let mut c = m.spawn_sql("CREATE TABLE t2.x (id INT PRIMARY KEY) ENGINE=InnoDB");
    wait_child(
        &mut c,
        Duration::from_secs(20),
        "commit through the TCP capture",
    )
    .await;
    assert!(h.attached());
    assert_log_matches_binlog(&m, &sink, &h).await;
    assert!(h.shutdown().await.is_ok());
}

/// Starting from a GTID state the master's binlog does not contain (a node whose binlog state
/// was not seeded, design review 17) ends capture at once with the master's error 1236 instead
/// of hanging or retrying; so does a master with semi-sync off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_start_gtid_or_semi_sync_off_end_capture_at_once() {
    let m = Mariadb::start().await;
    let sink = FakeLogSink::new();
    let h = start_attached(&m, capture_config(&m), sink.clone()).await;
    create_schema(&m).await;
    assert_log_matches_binlog(&m, &sink, &h).await;
    assert!(h.shutdown().await.is_ok());

    let from: GtidState = "0-9-1".parse().expect("state");
    let h = Capture::start(
        capture_config(&m),
        sink.clone(),
        from,
        Some(Gtid::new(0, 9, 1)),
        Epoch(9),
    );
    let outcome = tokio::time::timeout(Duration::from_secs(20), h.wait())
        .await
        .expect("capture ends");
    match outcome.as_ref().map_err(|e| &**e) {
        Err(CaptureError::MasterFatal { code: 1236, .. }) => {}
        other => panic!("expected MasterFatal 1236, got {other:?}"),
    }
    assert_eq!(h.metrics().appends, 0);

    // A master without semi-sync on would not wait for capture: refused at once, no retries.
    m.sql("SET GLOBAL rpl_semi_sync_master_enabled = OFF").await;
    let h = Capture::start(
        capture_config(&m),
        sink.clone(),
        h.accepted_state(),
        sink.last(),
        Epoch(9),
    );
    let outcome = tokio::time::timeout(Duration::from_secs(10), h.wait())
        .await
        .expect("capture ends");
    match outcome.as_ref().map_err(|e| &**e) {
        Err(e @ CaptureError::Setup { .. }) => {
            assert!(
                e.to_string().contains("rpl_semi_sync_master_enabled"),
                "{e}"
            )
        }
        other => panic!("expected Setup, got {other:?}"),
    }
}
