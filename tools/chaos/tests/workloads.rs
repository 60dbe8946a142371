//! The workloads against one real standalone mariadbd (no QuorumSQL): healthy runs produce sane,
//! complete histories; a SIGKILLed server produces only Fail/Unknown until it is back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quorumsql_chaos::workload::{
    final_reads, run, setup, Recorder, Target, WorkloadConfig, WorkloadKind,
};
use quorumsql_chaos_check::{check, Call, Initial, MicroOp, Op, Outcome, Port};
use quorumsql_node::sql::SqlConn;
use tokio_util::sync::CancellationToken;

const USER: &str = "chaos_client";
const PASSWORD: &str = "chaos-pw";

/// How late a timer may fire on a loaded 2-core test machine.
const SLACK: Duration = Duration::from_secs(3);

/// A throwaway mariadbd in a temp dir on a free 127.0.0.1 port; SIGKILLed (and reaped) on drop,
/// even if the test panicked. Can be killed and restarted on the same data dir and port.
struct TestMariadb {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for TestMariadb {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestMariadb {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn target(&self) -> Target {
        Target {
            node: 1,
            rw: self.addr(),
            ro: self.addr(),
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.path("err.log")).unwrap_or_default()
    }

    /// Installs a data dir, starts the server and creates the workload user (TCP, password).
    async fn start() -> TestMariadb {
        let dir = tempfile::Builder::new()
            .prefix("qs-chaos-workload")
            .tempdir()
            .expect("temp dir");
        // mariadbd deletes `#sql*` files in its tmpdir at start: never share /tmp with others.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("tmp dir");
        let out = Command::new("mariadb-install-db")
            .env("TMPDIR", &tmp)
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg("--auth-root-authentication-method=socket")
            .arg("--skip-test-db")
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind port 0")
            .local_addr()
            .expect("local addr")
            .port();
        let mut db = TestMariadb {
            child: None,
            dir,
            port,
        };
        db.spawn();
        db.wait_ready().await;
        let mut root = SqlConn::connect_unix(db.path("s.sock"), "root", "")
            .await
            .expect("root over the socket");
        root.exec(&format!(
            "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'"
        ))
        .await
        .expect("create user");
        root.exec(&format!("GRANT ALL ON chaos.* TO '{USER}'@'%'"))
            .await
            .expect("grant");
        root.quit().await;
        db
    }

    fn spawn(&mut self) {
        let d = |name: &str| self.path(name).display().to_string();
        let child = Command::new("mariadbd")
            .env("TMPDIR", d("tmp"))
            .arg("--no-defaults")
            .arg(format!("--tmpdir={}", d("tmp")))
            .arg("--user=root")
            .arg(format!("--datadir={}", d("data")))
            .arg(format!("--socket={}", d("s.sock")))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--log-error={}", d("err.log")))
            .arg(format!("--pid-file={}", d("m.pid")))
            .arg("--skip-name-resolve")
            .arg("--innodb-buffer-pool-size=32M")
            .arg("--innodb-flush-log-at-trx-commit=1")
            // Without a binlog InnoDB makes a commit visible before its redo is on disk: a
            // reader can see a write that a kill -9 then loses, which the checker rightly calls
            // an anomaly. With the binlog synced, a commit is visible only after its binlog
            // fsync, and crash recovery commits it from there (as on QuorumSQL's mariadbds).
            .arg("--log-bin=mysql-bin")
            .arg("--server-id=1")
            .arg("--sync-binlog=1")
            .arg("--max-connections=200")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mariadbd");
        self.child = Some(child);
    }

    /// Sends `sig` (SIGSTOP / SIGCONT) to the running server.
    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("server running").id();
        let pid = i32::try_from(pid).expect("pid fits");
        // SAFETY: plain kill(2) on our own child, which has not been reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits until every thread of the server is stopped (SIGSTOP is delivered asynchronously).
    async fn wait_stopped(&self) {
        let pid = self.child.as_ref().expect("server running").id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut states = Vec::new();
        while Instant::now() < deadline {
            states.clear();
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
            for t in tasks.flatten() {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // The state follows the parenthesised command name.
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.trim().chars().next());
                states.push(state);
            }
            if states.iter().all(|s| *s == Some('T')) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("mariadbd threads not all stopped within 10 s: {states:?}");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the workload user can log in over TCP (or root over the socket before the
    /// user exists).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while Instant::now() < deadline {
            match SqlConn::connect_unix(self.path("s.sock"), "root", "").await {
                Ok(c) => {
                    c.quit().await;
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "mariadbd not ready within 60 s; last error {last:?}; error log:\n{}",
            self.error_log()
        );
    }
}

/// Starts every workload's clients; they run until `stop` is cancelled.
#[allow(clippy::type_complexity)]
fn start_clients(
    kinds: &[WorkloadKind],
    cfg: &WorkloadConfig,
    targets: &[Target],
) -> (
    Recorder,
    CancellationToken,
    Vec<tokio::task::JoinHandle<Result<(), quorumsql_chaos::workload::WorkloadError>>>,
) {
    let recorder = Recorder::new(Instant::now());
    let stop = CancellationToken::new();
    let runs = kinds
        .iter()
        .map(|&k| {
            tokio::spawn(run(
                k,
                cfg.clone(),
                targets.to_vec(),
                stop.clone(),
                recorder.clone(),
            ))
        })
        .collect();
    (recorder, stop, runs)
}

/// Whether the history has an Ok op of call type `ty` that started after `after_ns`.
fn has_ok_after(h: &[Op], ty: &str, after_ns: u64) -> bool {
    h.iter()
        .any(|o| call_type(&o.call) == ty && o.outcome == Outcome::Ok && o.start_ns > after_ns)
}

fn config(clients: usize, op_timeout: Duration) -> WorkloadConfig {
    let mut cfg = WorkloadConfig::new(USER, PASSWORD);
    cfg.clients = clients;
    cfg.op_timeout = op_timeout;
    cfg.seed = 42;
    cfg
}

/// Waits until `cond` holds on the history so far; panics with `what` and a summary otherwise.
async fn wait_for(recorder: &Recorder, within: Duration, what: &str, cond: impl Fn(&[Op]) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let h = recorder.snapshot();
        if cond(&h) {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what}: not seen within {within:?}; history summary: {}",
                summary(&h)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn call_type(c: &Call) -> &'static str {
    match c {
        Call::RegRead { .. } => "reg-read",
        Call::RegWrite { .. } => "reg-write",
        Call::RegCas { .. } => "reg-cas",
        Call::BankTransfer { .. } => "bank-transfer",
        Call::BankRead { .. } => "bank-read",
        Call::SetAdd { .. } => "set-add",
        Call::SetRead { .. } => "set-read",
        Call::ListTxn { .. } => "list-txn",
    }
}

fn summary(h: &[Op]) -> String {
    let mut counts: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for op in h {
        *counts
            .entry((call_type(&op.call), format!("{:?}", op.outcome)))
            .or_default() += 1;
    }
    let errors: BTreeSet<&str> = h
        .iter()
        .filter_map(|o| o.error.as_deref())
        .take(8)
        .collect();
    format!("{counts:?}; some errors: {errors:?}")
}

/// What every history must satisfy, whatever happened to the server.
fn assert_sane(h: &[Op]) {
    let ids: HashSet<u64> = h.iter().map(|o| o.id).collect();
    assert_eq!(ids.len(), h.len(), "op ids are not unique");
    let mut per_client: HashMap<u32, Vec<&Op>> = HashMap::new();
    for op in h {
        assert!(op.start_ns <= op.end_ns, "ends before it starts: {op:?}");
        per_client.entry(op.client).or_default().push(op);
        let ok = op.outcome == Outcome::Ok;
        match &op.call {
            Call::RegRead { value, .. } => assert_eq!(value.is_some(), ok, "{op:?}"),
            Call::BankRead { balances } => assert_eq!(balances.is_some(), ok, "{op:?}"),
            Call::SetRead { values } => assert_eq!(values.is_some(), ok, "{op:?}"),
            Call::ListTxn { ops } => {
                for m in ops {
                    if let MicroOp::Read { value, .. } = m {
                        assert_eq!(value.is_some(), ok, "{op:?}");
                    }
                }
            }
            Call::RegWrite { value, .. } => assert_ne!(*value, 0, "{op:?}"),
            _ => {}
        }
        if op.outcome == Outcome::Unknown {
            assert!(op.error.is_some(), "unknown without an error: {op:?}");
        }
    }
    for (client, mut ops) in per_client {
        ops.sort_by_key(|o| o.start_ns);
        for w in ops.windows(2) {
            assert!(
                w[0].end_ns <= w[1].start_ns,
                "client {client} ran two ops at once: {:?} and {:?}",
                w[0],
                w[1]
            );
            assert_ne!(
                w[0].outcome,
                Outcome::Unknown,
                "client {client} continued after an unknown outcome: {:?}",
                w[1]
            );
        }
    }
}

/// The last Ok read per register key must show 0 or a value some Ok/Unknown write or CAS wrote.
fn assert_register_final_reads(h: &[Op], keys: u32) {
    let mut written: HashMap<u32, HashSet<i64>> = HashMap::new();
    let mut last_read: HashMap<u32, i64> = HashMap::new();
    for op in h {
        match (&op.call, op.outcome) {
            (Call::RegWrite { key, value }, Outcome::Ok | Outcome::Unknown)
            | (Call::RegCas { key, to: value, .. }, Outcome::Ok | Outcome::Unknown) => {
                written.entry(*key).or_default().insert(*value);
            }
            (
                Call::RegRead {
                    key,
                    value: Some(v),
                },
                Outcome::Ok,
            ) if op.port == Port::Rw => {
                last_read.insert(*key, *v);
            }
            _ => {}
        }
    }
    for key in 0..keys {
        let v = last_read
            .get(&key)
            .unwrap_or_else(|| panic!("no final read of register key {key}"));
        assert!(
            *v == 0 || written.get(&key).is_some_and(|w| w.contains(v)),
            "register key {key} reads {v}, which nobody wrote"
        );
    }
}

/// The final (last) set read holds every Ok add and nothing that was never tried.
fn assert_set_final_read(h: &[Op]) {
    let final_read: BTreeSet<u64> = h
        .iter()
        .rev()
        .find_map(|op| match &op.call {
            Call::SetRead { values: Some(v) } => Some(v.iter().copied().collect()),
            _ => None,
        })
        .expect("a final set read");
    let mut attempted = HashSet::new();
    for op in h {
        if let Call::SetAdd { value } = op.call {
            if op.outcome != Outcome::Fail {
                attempted.insert(value);
            }
            if op.outcome == Outcome::Ok {
                assert!(
                    final_read.contains(&value),
                    "acknowledged add {value} is lost"
                );
            }
        }
    }
    for v in &final_read {
        assert!(
            attempted.contains(v),
            "set holds {v}, which no Ok/Unknown add wrote"
        );
    }
}

/// The checkers find nothing wrong with a history of a single correct server.
fn assert_checker_finds_nothing(h: &[Op], initial: &Initial) {
    let report = check(h, initial);
    eprintln!("{}", report.summary());
    assert!(report.is_valid(), "checker: {}", report.summary());
}

fn count(h: &[Op], ty: &str, outcome: Outcome) -> usize {
    h.iter()
        .filter(|o| call_type(&o.call) == ty && o.outcome == outcome)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthy_server_gives_complete_consistent_histories() {
    let db = TestMariadb::start().await;
    let cfg = config(4, Duration::from_secs(10));
    let targets = vec![db.target()];
    let kinds = WorkloadKind::ALL.to_vec();
    let initial = setup(&kinds, &cfg, &targets).await.expect("setup");
    assert_eq!(initial.bank_total(), 500);
    assert_eq!(initial.register_keys, cfg.register_keys);
    // Setup is idempotent: a second run resets the tables.
    setup(&kinds, &cfg, &targets).await.expect("setup again");

    let (recorder, stop, runs) = start_clients(&kinds, &cfg, &targets);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.cancel();
    for r in runs {
        r.await.expect("join").expect("workload run");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    final_reads(&kinds, &cfg, &targets, &recorder, deadline)
        .await
        .expect("final reads");
    let h = recorder.into_history();
    eprintln!("healthy run: {} ops: {}", h.len(), summary(&h));

    assert_sane(&h);
    for ty in [
        "reg-read",
        "reg-write",
        "reg-cas",
        "bank-transfer",
        "bank-read",
        "set-add",
        "set-read",
        "list-txn",
    ] {
        assert!(
            count(&h, ty, Outcome::Ok) > 0,
            "no Ok {ty}: {}",
            summary(&h)
        );
    }
    assert!(
        count(&h, "reg-cas", Outcome::Fail) > 0,
        "no CAS mismatch: {}",
        summary(&h)
    );
    assert!(
        h.iter()
            .any(|o| o.port == Port::Ro && o.outcome == Outcome::Ok),
        "no Ok read on the RO port"
    );
    // Without faults nothing is ever in doubt.
    assert_eq!(
        h.iter().filter(|o| o.outcome == Outcome::Unknown).count(),
        0,
        "unknown outcomes on a healthy server: {}",
        summary(&h)
    );
    let mut list_appends_ok = 0;
    let mut list_reads_ok = 0;
    for op in &h {
        if let (Call::BankRead { balances: Some(b) }, Outcome::Ok) = (&op.call, op.outcome) {
            assert_eq!(b.len(), 5, "{b:?}");
            assert_eq!(
                b.iter().map(|(_, bal)| bal).sum::<i64>(),
                initial.bank_total(),
                "{b:?}"
            );
            assert!(b.iter().all(|(_, bal)| *bal >= 0), "overdrawn: {b:?}");
        }
        if let (Call::ListTxn { ops }, Outcome::Ok) = (&op.call, op.outcome) {
            for m in ops {
                match m {
                    MicroOp::Append { .. } => list_appends_ok += 1,
                    MicroOp::Read { .. } => list_reads_ok += 1,
                }
            }
        }
    }
    assert!(list_appends_ok > 0 && list_reads_ok > 0);
    assert_register_final_reads(&h, cfg.register_keys);
    assert_set_final_read(&h);

    // Every Ok list append is in the final list read, once, in commit order per client.
    let final_lists: HashMap<u32, Vec<u64>> = h
        .iter()
        .rev()
        .find_map(|op| match (&op.call, op.outcome) {
            (Call::ListTxn { ops }, Outcome::Ok)
                if ops.iter().all(|m| matches!(m, MicroOp::Read { .. })) && ops.len() >= 8 =>
            {
                Some(
                    ops.iter()
                        .filter_map(|m| match m {
                            MicroOp::Read {
                                key,
                                value: Some(v),
                            } => Some((*key, v.clone())),
                            _ => None,
                        })
                        .collect(),
                )
            }
            _ => None,
        })
        .expect("a final read of all lists");
    for op in &h {
        if let (Call::ListTxn { ops }, Outcome::Ok) = (&op.call, op.outcome) {
            for m in ops {
                if let MicroOp::Append { key, value } = m {
                    let list = final_lists.get(key).map(Vec::as_slice).unwrap_or(&[]);
                    assert_eq!(
                        list.iter().filter(|v| *v == value).count(),
                        1,
                        "append {value} to key {key}: final list {list:?}"
                    );
                }
            }
        }
    }
    assert_checker_finds_nothing(&h, &initial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_server_gives_no_ok_until_it_is_back() {
    let mut db = TestMariadb::start().await;
    let cfg = config(4, Duration::from_secs(3));
    let targets = vec![db.target()];
    let kinds = vec![WorkloadKind::Register, WorkloadKind::Set];
    let initial = setup(&kinds, &cfg, &targets).await.expect("setup");

    let (recorder, stop, runs) = start_clients(&kinds, &cfg, &targets);
    wait_for(
        &recorder,
        Duration::from_secs(20),
        "Ok writes before the kill",
        |h| has_ok_after(h, "reg-write", 0) && has_ok_after(h, "set-add", 0),
    )
    .await;

    db.kill();
    let down_ns = recorder.now_ns();
    let failed_after = |h: &[Op], ty: &str| {
        h.iter()
            .filter(|o| call_type(&o.call) == ty && o.start_ns > down_ns)
            .count()
    };
    wait_for(
        &recorder,
        Duration::from_secs(10),
        "failed ops during the outage",
        |h| {
            failed_after(h, "set-add") >= 3
                && failed_after(h, "reg-write") + failed_after(h, "reg-cas") >= 3
        },
    )
    .await;
    let restart_ns = recorder.now_ns();
    db.spawn();
    db.wait_ready().await;
    let ready_ns = recorder.now_ns();
    wait_for(
        &recorder,
        Duration::from_secs(30),
        "Ok ops after the restart",
        |h| {
            has_ok_after(h, "reg-read", ready_ns)
                && has_ok_after(h, "reg-write", ready_ns)
                && has_ok_after(h, "set-add", ready_ns)
        },
    )
    .await;
    stop.cancel();
    for r in runs {
        r.await.expect("join").expect("workload run");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    final_reads(&kinds, &cfg, &targets, &recorder, deadline)
        .await
        .expect("final reads");
    let h = recorder.into_history();
    eprintln!("kill/restart run: {} ops: {}", h.len(), summary(&h));

    assert_sane(&h);
    let during: Vec<&Op> = h
        .iter()
        .filter(|o| o.start_ns >= down_ns && o.start_ns < restart_ns)
        .collect();
    assert!(during.len() >= 6, "{}", summary(&h));
    for op in &during {
        assert_ne!(
            op.outcome,
            Outcome::Ok,
            "Ok while the server was down: {op:?}"
        );
        assert!(op.error.is_some(), "{op:?}");
    }
    // Reads that failed are Fail, never Unknown.
    assert!(h.iter().all(|o| !matches!(
        (&o.call, o.outcome),
        (
            Call::RegRead { .. } | Call::SetRead { .. },
            Outcome::Unknown
        )
    )));
    // Clients backed off instead of spinning on refused connects.
    let outage_s = (restart_ns - down_ns) as f64 / 1e9;
    assert!(
        (during.len() as f64) < outage_s * 8.0 * 25.0,
        "{} ops in a {outage_s:.2} s outage",
        during.len()
    );
    assert_register_final_reads(&h, cfg.register_keys);
    assert_set_final_read(&h);
    assert_checker_finds_nothing(&h, &initial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_server_gives_timeouts_and_unknown_writes() {
    let db = TestMariadb::start().await;
    let op_timeout = Duration::from_secs(2);
    let cfg = config(4, op_timeout);
    let targets = vec![db.target()];
    let kinds = vec![WorkloadKind::Register, WorkloadKind::Set];
    let initial = setup(&kinds, &cfg, &targets).await.expect("setup");

    let (recorder, stop, runs) = start_clients(&kinds, &cfg, &targets);
    wait_for(
        &recorder,
        Duration::from_secs(20),
        "Ok writes before the pause",
        |h| has_ok_after(h, "reg-write", 0) && has_ok_after(h, "set-add", 0),
    )
    .await;

    db.signal(libc::SIGSTOP);
    db.wait_stopped().await;
    let paused_ns = recorder.now_ns();
    let timed_out = |o: &Op| {
        o.start_ns > paused_ns && o.error.as_deref().is_some_and(|e| e.contains("timeout"))
    };
    // Ops in flight time out; the clients reconnect (the kernel still accepts) and time out
    // again in the handshake.
    wait_for(
        &recorder,
        Duration::from_secs(15),
        "timeouts during the pause",
        |h| h.iter().filter(|o| timed_out(o)).count() >= 8,
    )
    .await;
    // Frozen for longer than the client-side bound plus the scheduling slack asserted below, so
    // an op that ignored its timeout would show.
    let frozen_for = op_timeout + SLACK + Duration::from_secs(1);
    let since = Duration::from_nanos(recorder.now_ns() - paused_ns);
    tokio::time::sleep(frozen_for.saturating_sub(since)).await;
    let resumed_ns = recorder.now_ns();
    db.signal(libc::SIGCONT);
    wait_for(
        &recorder,
        Duration::from_secs(30),
        "Ok ops after the pause",
        |h| has_ok_after(h, "reg-write", resumed_ns) && has_ok_after(h, "set-add", resumed_ns),
    )
    .await;
    stop.cancel();
    for r in runs {
        r.await.expect("join").expect("workload run");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    final_reads(&kinds, &cfg, &targets, &recorder, deadline)
        .await
        .expect("final reads");
    let h = recorder.into_history();
    eprintln!("pause run: {} ops: {}", h.len(), summary(&h));

    assert_sane(&h);
    // Writes in flight when the server froze are in doubt, not failed.
    assert!(
        h.iter().any(|o| o.outcome == Outcome::Unknown
            && o.error.as_deref().is_some_and(|e| e.contains("timeout"))
            && matches!(
                o.call,
                Call::SetAdd { .. } | Call::RegWrite { .. } | Call::RegCas { .. }
            )),
        "no write timed out as unknown: {}",
        summary(&h)
    );
    for o in &h {
        // The client-side bound holds for every op, connect included.
        assert!(
            o.end_ns - o.start_ns <= (op_timeout + SLACK).as_nanos() as u64,
            "op ran past the client-side timeout: {o:?}"
        );
        if o.start_ns > paused_ns && o.end_ns < resumed_ns {
            assert_ne!(
                o.outcome,
                Outcome::Ok,
                "Ok while the server was frozen: {o:?}"
            );
        }
        if matches!(o.call, Call::RegRead { .. } | Call::SetRead { .. }) {
            assert_ne!(
                o.outcome,
                Outcome::Unknown,
                "a read is never unknown: {o:?}"
            );
        }
    }
    assert_register_final_reads(&h, cfg.register_keys);
    assert_set_final_read(&h);
    assert_checker_finds_nothing(&h, &initial);
}
