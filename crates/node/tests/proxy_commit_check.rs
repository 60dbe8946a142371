//! The RW relay's commit check against a real mariadbd (10.11) with `last_gtid` session
//! tracking: which OKs are held for a check (the end of a write transaction: with its GTID, or
//! without one as for a TEMPORARY table), that reads and statements inside a transaction are
//! not, that multi-statements and `COM_STMT_EXECUTE` are checked at their last OK, that a client
//! that did not ask for session tracking gets OKs without session state, and that a commit the
//! oracle says is not logged gets 1053 / 08007 and a closed session instead of the OK.

mod proxy_common;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use proxy_common::*;
use quorumsql_node::proxy::{
    CommitEvidence, CommitVerdict, ErrorKind, MasterEpoch, ProxyHandle, ProxyLimits, RoRoute,
    RouteOracle, RwRoute, VerifyFuture,
};
use quorumsql_wire::Gtid;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

const SESSION_TRACK: u32 = 1 << 23;
const MULTI_STATEMENTS: u32 = 1 << 16;
const MULTI_RESULTS: u32 = 1 << 17;
const SERVER_ID: u32 = 7;

/// Master of epoch 1 with a lease; records every commit it is asked to verify and answers with
/// `verdict`.
struct RecordingOracle {
    changes: watch::Sender<u64>,
    asked: Mutex<Vec<CommitEvidence>>,
    verdict: Mutex<CommitVerdict>,
}

impl RecordingOracle {
    fn new() -> Arc<Self> {
        Arc::new(RecordingOracle {
            changes: watch::channel(0).0,
            asked: Mutex::new(Vec::new()),
            verdict: Mutex::new(CommitVerdict::Logged),
        })
    }

    fn take(&self) -> Vec<CommitEvidence> {
        std::mem::take(&mut *self.asked.lock())
    }
}

impl RouteOracle for RecordingOracle {
    fn rw_route(&self) -> RwRoute {
        RwRoute::Local {
            master_epoch: MasterEpoch(1),
        }
    }
    fn may_forward(&self, epoch: MasterEpoch) -> bool {
        epoch == MasterEpoch(1)
    }
    fn ro_route(&self) -> RoRoute {
        RoRoute::Local
    }
    fn subscribe_master_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
    fn commit_checks(&self) -> bool {
        true
    }
    fn verify_commit(&self, evidence: CommitEvidence) -> VerifyFuture<'_> {
        self.asked.lock().push(evidence);
        let v = self.verdict.lock().clone();
        Box::pin(async move { v })
    }
}

fn server() -> Server {
    Server::start_with(
        100,
        &[
            "--log-bin=mysql-bin",
            "--server-id=7",
            "--binlog-format=ROW",
            "--session-track-system-variables=autocommit,character_set_client,\
             character_set_connection,character_set_results,time_zone,last_gtid",
        ],
    )
}

async fn proxy(s: &Server, oracle: Arc<RecordingOracle>) -> ProxyHandle {
    let limits = ProxyLimits {
        allow_multi_statements: true,
        ..test_limits()
    };
    ProxyHandle::start(
        config(s.addr(), limits),
        oracle,
        Arc::new(PlainDialer::default()),
    )
    .await
    .unwrap()
}

fn binlog_seq(s: &Server) -> u64 {
    let pos = s.root("SELECT @@gtid_binlog_pos");
    pos.rsplit('-').next().unwrap().parse().unwrap()
}

fn gtid(seq: u64) -> CommitEvidence {
    CommitEvidence::Gtid(Gtid::new(0, SERVER_ID, seq))
}

async fn ok(c: &mut Raw, sql: &str) -> Pkt {
    let (p, _) = c.query(sql).await.unwrap();
    assert_eq!(
        p.payload[0],
        0,
        "{sql}: {}",
        String::from_utf8_lossy(&p.payload)
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ends_of_write_transactions_are_checked_and_nothing_else() {
    let s = server();
    let oracle = RecordingOracle::new();
    let p = proxy(&s, oracle.clone()).await;
    let rw = p.rw_addr().port();
    // A client that did not negotiate session tracking: the proxy did, and cuts it out again.
    let mut c = Raw::connect_caps(rw, "raw", MULTI_STATEMENTS | MULTI_RESULTS).await;

    let o = ok(&mut c, "INSERT INTO t.c (v) VALUES ('a')").await;
    assert_eq!(oracle.take(), vec![gtid(binlog_seq(&s))]);
    // affected 1, insert id 1, status AUTOCOMMIT without SESSION_STATE_CHANGED, no warnings,
    // nothing after: what mariadbd sends a client without CLIENT_SESSION_TRACK.
    assert_eq!(o.payload, [0, 1, 1, 2, 0, 0, 0], "OK as the client got it");

    c.query("SELECT * FROM t.c").await.unwrap();
    ok(&mut c, "BEGIN").await;
    ok(&mut c, "INSERT INTO t.c (v) VALUES ('b')").await;
    ok(&mut c, "UPDATE t.c SET v = 'c' WHERE v = 'b'").await;
    assert_eq!(
        oracle.take(),
        vec![],
        "nothing is checked inside a transaction"
    );
    ok(&mut c, "COMMIT").await;
    assert_eq!(oracle.take(), vec![gtid(binlog_seq(&s))]);
    ok(&mut c, "UPDATE t.c SET v = v").await;
    assert_eq!(oracle.take(), vec![], "a no-op write is not checked");

    // A TEMPORARY table: rows change, no GTID; the binlog-open check is asked.
    ok(&mut c, "CREATE TEMPORARY TABLE t.tmp (x INT) ENGINE=InnoDB").await;
    ok(&mut c, "INSERT INTO t.tmp VALUES (1), (2)").await;
    assert_eq!(oracle.take(), vec![CommitEvidence::NoGtid]);

    // Multi-statements: one check at the last OK, with the newest GTID.
    let first = ok(
        &mut c,
        "INSERT INTO t.c (v) VALUES ('m1'); INSERT INTO t.c (v) VALUES ('m2')",
    )
    .await;
    assert_ne!(
        u16::from_le_bytes([first.payload[3], first.payload[4]]) & 8,
        0
    );
    let last = read_pkt(&mut c.s).await.unwrap();
    assert_eq!(last.payload[0], 0);
    assert_eq!(oracle.take(), vec![gtid(binlog_seq(&s))]);

    // COM_STMT_EXECUTE answers with the same OK.
    let prep = c
        .command(b"\x16INSERT INTO t.c (v) VALUES ('ps')")
        .await
        .unwrap();
    assert_eq!(prep.payload[0], 0, "{:?}", prep.payload);
    let id = &prep.payload[1..5];
    let mut exec = vec![0x17];
    exec.extend_from_slice(id);
    exec.extend_from_slice(&[0, 1, 0, 0, 0]);
    let o = c.command(&exec).await.unwrap();
    assert_eq!(o.payload[0], 0, "{:?}", o.payload);
    assert_eq!(oracle.take(), vec![gtid(binlog_seq(&s))]);

    // A client that asked for session tracking gets mariadbd's OK unchanged.
    let mut t = Raw::connect_caps(rw, "raw", SESSION_TRACK).await;
    let o = ok(&mut t, "INSERT INTO t.c (v) VALUES ('t')").await;
    let seq = binlog_seq(&s);
    let value = Gtid::new(0, SERVER_ID, seq).to_string();
    let mut tail = b"\tlast_gtid".to_vec();
    tail.push(value.len() as u8);
    tail.extend_from_slice(value.as_bytes());
    assert!(
        o.payload.ends_with(&tail),
        "{:?}",
        String::from_utf8_lossy(&o.payload)
    );
    assert_eq!(oracle.take(), vec![gtid(seq)]);

    let m = p.metrics().rw;
    assert_eq!(
        (m.commit_gtid_checks, m.binlog_open_checks),
        (5, 1),
        "{m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlogged_commit_gets_outcome_unknown_instead_of_its_ok() {
    let s = server();
    let oracle = RecordingOracle::new();
    let p = proxy(&s, oracle.clone()).await;
    let rw = p.rw_addr().port();
    let mut c = Raw::connect(rw, "raw").await;
    ok(&mut c, "INSERT INTO t.c (v) VALUES ('logged')").await;

    *oracle.verdict.lock() = CommitVerdict::NotLogged("test: not in the log".into());
    let (e, _) = c
        .query("INSERT INTO t.c (v) VALUES ('unlogged')")
        .await
        .unwrap();
    assert!(
        e.is_err(),
        "OK relayed for an unlogged commit: {:?}",
        e.payload
    );
    assert_eq!((e.err_code(), e.err_state().as_str()), (1053, "08007"));
    assert_eq!(e.seq, 1, "the ERR takes the place of the withheld OK");
    assert!(
        e.err_message().contains("replicated log"),
        "{}",
        e.err_message()
    );
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), c.s.read_to_end(&mut rest)).await;
    assert!(matches!(r, Ok(Ok(0))), "session not closed: {r:?} {rest:?}");
    assert_eq!(p.metrics().rw.errors_of(ErrorKind::UnloggedCommit), 1);

    // "Could not verify" also withholds the OK, as a different error kind.
    *oracle.verdict.lock() = CommitVerdict::Unknown("test: log unreachable".into());
    let mut c = Raw::connect(rw, "raw").await;
    let (e, _) = c
        .query("INSERT INTO t.c (v) VALUES ('unverified')")
        .await
        .unwrap();
    assert_eq!((e.err_code(), e.err_state().as_str()), (1053, "08007"));
    assert_eq!(p.metrics().rw.errors_of(ErrorKind::CommitUnverified), 1);
}
