//! The mariadbd supervisor against real mariadbd processes in temp dirs.
//!
//! Queries go through the `mariadb` CLI (unix socket, root via unix_socket auth). Every process
//! a test starts dies with a Drop guard: the supervisor SIGKILLs its child on drop, and the
//! extra processes (a stale server, a background client, the pdeathsig helper) have guards.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quorumsql_node::mariadb::{
    Consequence, ErrorLogFinding, InitOutcome, Mariadb, MariadbConfig, MariadbError, StaleEvidence,
    INIT_MARKER,
};
use quorumsql_peer::NodeId;
use quorumsql_wire::Gtid;

const READY: Duration = Duration::from_secs(30);

/// Kills and reaps a child process on drop.
struct ProcGuard(Child);

impl Drop for ProcGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILLs a pid on drop if it is still a mariadbd (for processes that are not our children).
struct PidGuard(Option<i32>);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            if comm(pid).as_deref() == Some("mariadbd") {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A supervisor in its own temp dir. Field order matters: the supervisor (and its mariadbd)
/// goes before the directory.
struct Node {
    m: Mariadb,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dir: &Path, id: u64) -> MariadbConfig {
    let mut cfg = MariadbConfig::new(NodeId(id), dir.join("n"), free_port());
    cfg.innodb_buffer_pool_size = "32M".into();
    cfg
}

fn node(id: u64) -> Node {
    let dir = tempfile::Builder::new().prefix("qsm").tempdir().unwrap();
    let m = Mariadb::new(config(dir.path(), id)).unwrap();
    Node { m, _dir: dir }
}

fn deadline(d: Duration) -> Instant {
    Instant::now() + d
}

/// Runs SQL with the `mariadb` CLI; tab-separated rows, no headers.
fn sql(socket: &Path, query: &str) -> String {
    let out = cli(socket, query).output().unwrap();
    assert!(
        out.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

fn cli(socket: &Path, query: &str) -> Command {
    let mut c = Command::new("mariadb");
    c.arg("--no-defaults")
        .arg(format!("--socket={}", socket.display()))
        .args(["-uroot", "-N", "-B", "-e", query])
        .stdin(Stdio::null());
    c
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<String>) {
    let end = deadline(limit);
    loop {
        match cond() {
            None => return,
            Some(state) if Instant::now() >= end => {
                panic!("{what}: not after {limit:?}; saw {state}")
            }
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn size_bytes(s: &str) -> String {
    let (digits, unit) = s.split_at(s.len() - 1);
    let mult: u64 = match unit {
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return s.to_string(),
    };
    (digits.parse::<u64>().unwrap() * mult).to_string()
}

#[test]
fn init_start_settings_sigkill_and_crash_recovery() {
    let mut n = node(7);
    assert!(matches!(
        n.m.initialize_if_needed().unwrap(),
        InitOutcome::Installed {
            removed_partial: None,
            ..
        }
    ));
    assert_eq!(
        n.m.initialize_if_needed().unwrap(),
        InitOutcome::AlreadyInitialized
    );
    let cfg = n.m.config().clone();
    let socket = cfg.socket();

    // Start from a thread that exits at once: mariadbd must survive it, because the fork
    // happens on the supervisor's own launcher thread (a PDEATHSIG set on a short-lived thread
    // would fire when that thread exits).
    let pid = std::thread::scope(|s| s.spawn(|| n.m.start().unwrap()).join().unwrap()).pid;
    n.m.wait_ready(deadline(READY)).unwrap();
    assert_eq!(sql(&socket, "SELECT 1"), "1");
    assert_eq!(
        n.m.status().unwrap().pid,
        Some(pid),
        "mariadbd died after the thread exited"
    );

    // The settings DESIGN §5 and §3 name are in effect.
    let row = sql(
        &socket,
        "SELECT @@server_id, @@read_only, @@gtid_strict_mode, @@sync_binlog, \
         @@rpl_semi_sync_master_wait_point, @@bind_address, @@rpl_semi_sync_master_enabled, \
         @@event_scheduler, @@log_bin_basename",
    );
    assert_eq!(
        row,
        format!(
            "7\t1\t1\t1\tAFTER_SYNC\t127.0.0.1\t0\tOFF\t{}",
            cfg.binlog_basename().display()
        )
    );
    assert_eq!(
        sql(&socket, "SHOW STATUS LIKE 'Rpl_status'"),
        "Rpl_status\tIDLE_SLAVE"
    );
    // Every rendered setting that is a system variable reads back as rendered.
    for s in cfg.settings() {
        let var = match s.name {
            // Startup-only options, not system variables.
            "skip_slave_start" | "user" | "init_rpl_role" => continue,
            "log_bin" => "log_bin_basename",
            "relay_log" => "relay_log_basename",
            other => other,
        };
        let got = sql(&socket, &format!("SELECT @@{var}"));
        let want = match s.value.as_deref() {
            None | Some("ON") => "1".to_string(),
            Some("OFF") if var != "event_scheduler" => "0".to_string(),
            Some(v) if var == "innodb_buffer_pool_size" => size_bytes(v),
            Some(v) => v.to_string(),
        };
        assert_eq!(
            got.trim_end_matches('/'),
            want.trim_end_matches('/'),
            "@@{var}"
        );
    }

    // Fencing: SIGKILL, reap, restart: crash recovery runs and the error log says so.
    let status = n.m.sigkill().unwrap().expect("a child was running");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(n.m.sigkill().unwrap(), None, "nothing left to kill");
    n.m.start().unwrap();
    n.m.wait_ready(deadline(READY)).unwrap();
    let st = n.m.status().unwrap();
    assert_eq!(st.start_count, 2);
    assert_eq!(st.last_exit.and_then(|s| s.signal()), Some(libc::SIGKILL));
    let findings = n.m.error_log_since_start().scan().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| matches!(f, ErrorLogFinding::CrashRecovery { .. })),
        "{findings:?}\n{}",
        n.m.log_tail()
    );
    assert!(
        findings
            .iter()
            .all(|f| f.consequence() == Consequence::Note),
        "{findings:?}"
    );
    // A second start while one runs is refused.
    assert!(matches!(
        n.m.start(),
        Err(MariadbError::AlreadyRunning { .. })
    ));
}

#[test]
fn semi_sync_waiter_is_truncated_by_sigkill_and_slave_role_restart() {
    let mut n = node(11);
    n.m.initialize_if_needed().unwrap();
    let socket = n.m.config().socket();
    n.m.start().unwrap();
    n.m.wait_ready(deadline(READY)).unwrap();
    sql(
        &socket,
        "SET GLOBAL read_only=OFF; CREATE DATABASE app; \
         CREATE TABLE app.t (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO app.t VALUES (1); \
         SET GLOBAL rpl_semi_sync_master_enabled=ON",
    );
    let before: Gtid = sql(&socket, "SELECT @@gtid_binlog_pos").parse().unwrap();
    // No semi-sync replica is connected: with wait_no_slave=ON and the infinite timeout the
    // commit waits for an ACK that never comes, prepared in InnoDB and in the binlog.
    let mut waiter = ProcGuard(
        cli(&socket, "INSERT INTO app.t VALUES (2)")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(
        "INSERT waits for the semi-sync ACK",
        Duration::from_secs(15),
        || {
            let states = sql(
            &socket,
            "SELECT state FROM information_schema.processlist WHERE info LIKE 'INSERT INTO app.t%'",
        );
            (states != "Waiting for semi-sync ACK from slave").then_some(states)
        },
    );
    n.m.sigkill().unwrap();
    // The client lost its connection: outcome unknown, never OK.
    assert!(!waiter.0.wait().unwrap().success());

    n.m.start().unwrap();
    n.m.wait_ready(deadline(READY)).unwrap();
    assert_eq!(sql(&socket, "SELECT id FROM app.t ORDER BY id"), "1");
    assert_eq!(sql(&socket, "SELECT @@gtid_binlog_pos"), before.to_string());
    let findings = n.m.error_log_since_start().scan().unwrap();
    let truncated: Vec<_> = findings
        .iter()
        .filter_map(|f| match f {
            ErrorLogFinding::BinlogTruncated { gtid, .. } => Some(*gtid),
            _ => None,
        })
        .collect();
    let want = Gtid::new(before.domain, before.server, before.seq + 1);
    assert_eq!(truncated, vec![Some(want)], "{findings:?}");
}

#[test]
fn stale_mariadbd_holding_the_datadir_is_sigkilled_by_the_next_start() {
    let mut n = node(21);
    n.m.initialize_if_needed().unwrap();
    let cfg = n.m.config().clone();
    // A mariadbd that is not the supervisor's child: an orphan of a previous daemon.
    std::fs::write(cfg.defaults_file(), cfg.render()).unwrap();
    std::fs::create_dir_all(cfg.tmpdir()).unwrap();
    let mut stale = ProcGuard(
        Command::new(&cfg.mariadbd)
            .arg(format!("--defaults-file={}", cfg.defaults_file().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stale_pid = stale.0.id() as i32;
    wait_until("stale mariadbd answers", READY, || {
        let out = cli(&cfg.socket(), "SELECT 1").output().unwrap();
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });

    let started = n.m.start().unwrap();
    n.m.wait_ready(deadline(READY)).unwrap();
    assert_eq!(started.killed_stale.len(), 1, "{:?}", started.killed_stale);
    let k = &started.killed_stale[0];
    assert_eq!(k.pid, stale_pid);
    assert_eq!(
        k.evidence,
        vec![
            StaleEvidence::CommandLine,
            StaleEvidence::DatadirLock,
            StaleEvidence::PidFile
        ]
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(stale.0.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_ne!(started.pid as i32, stale_pid);
    assert_eq!(sql(&cfg.socket(), "SELECT @@server_id"), "21");
}

#[test]
fn interrupted_install_is_redone_and_foreign_datadir_refused() {
    let dir = tempfile::Builder::new().prefix("qsm").tempdir().unwrap();
    let cfg = config(dir.path(), 31);
    // What an install killed half-way leaves: a staging dir with a partial mysql/ schema.
    let staging = cfg.base_dir.join("mariadb.installing");
    std::fs::create_dir_all(staging.join("mysql")).unwrap();
    std::fs::write(staging.join("ibdata1"), b"partial").unwrap();
    let mut m = Mariadb::new(cfg.clone()).unwrap();
    match m.initialize_if_needed().unwrap() {
        InitOutcome::Installed {
            removed_partial, ..
        } => assert_eq!(removed_partial, Some(staging.clone())),
        other => panic!("{other:?}"),
    }
    assert!(!staging.exists());
    assert!(cfg.datadir().join(INIT_MARKER).is_file());
    assert!(cfg.datadir().join("mysql/global_priv.frm").is_file());

    // A datadir with files but no marker (e.g. an in-place install that died) is never used
    // and never deleted.
    let cfg2 = config(dir.path().join("other").as_path(), 32);
    std::fs::create_dir_all(cfg2.datadir().join("mysql")).unwrap();
    let mut m2 = Mariadb::new(cfg2.clone()).unwrap();
    let err = m2.initialize_if_needed().unwrap_err();
    assert!(
        matches!(err, MariadbError::UnrecognisedDatadir { .. }),
        "{err}"
    );
    assert!(cfg2.datadir().join("mysql").is_dir());
    // ... and start refuses it too.
    let err = m2.start().unwrap_err();
    assert!(
        matches!(err, MariadbError::UnrecognisedDatadir { .. }),
        "{err}"
    );
    assert_eq!(m2.status().unwrap().start_count, 0);
}

#[test]
fn failed_start_reports_exit_and_error_log_and_binlog_finding() {
    let mut n = node(41);
    n.m.initialize_if_needed().unwrap();
    let cfg = n.m.config().clone();
    // The binlog index cannot be opened: mariadbd aborts at start.
    std::fs::create_dir(cfg.datadir().join("mysql-bin.index")).unwrap();
    n.m.start().unwrap();
    let err = n.m.wait_ready(deadline(READY)).unwrap_err();
    match &err {
        MariadbError::StartFailed { log_tail, .. } => {
            assert!(log_tail.contains("mysql-bin.index"), "{log_tail}")
        }
        other => panic!("{other}"),
    }
    let findings = n.m.error_log_since_start().scan().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f.consequence() == Consequence::Fatal),
        "{findings:?}"
    );
    assert_eq!(n.m.status().unwrap().pid, None);
}

#[test]
fn mariadbd_dies_with_the_daemon_that_started_it() {
    let dir = tempfile::Builder::new().prefix("qsm").tempdir().unwrap();
    let pid_file = dir.path().join("mariadbd-pid");
    let helper = ProcGuard(
        Command::new(env!("CARGO_BIN_EXE_quorumsql-test-pdeathsig-daemon"))
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut helper = helper;
    wait_until("helper started mariadbd", Duration::from_secs(45), || {
        if let Ok(Some(st)) = helper.0.try_wait() {
            panic!("helper exited early: {st}");
        }
        (!pid_file.exists()).then(|| "no pid file yet".to_string())
    });
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = PidGuard(Some(pid));
    assert!(alive(pid) && comm(pid).as_deref() == Some("mariadbd"));
    // The daemon dies without any chance to clean up.
    helper.0.kill().unwrap();
    helper.0.wait().unwrap();
    wait_until("orphaned mariadbd is gone", Duration::from_secs(10), || {
        alive(pid).then(|| format!("pid {pid} ({:?}) still alive", comm(pid)))
    });
}

/// Roles moves the supervisor into `spawn_blocking` closures and shares its status.
#[test]
fn supervisor_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Mariadb>();
    assert_send_sync::<MariadbError>();
}
