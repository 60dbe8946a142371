//! Roles: decides what the local mariadbd is — replica, promoting, master, fenced, diverged — and
//! drives it there, in exactly the order DESIGN §3 gives. Everything here is sequenced on one
//! task so that no two transitions can interleave.
//!
//! The life of a node, as code below follows it:
//!
//! ```text
//!   start mariadbd (--init-rpl-role=SLAVE, read_only) ─► rejoin check ─► replica (from serve)
//!        ▲                                                  │ diverged         │ raft leader of T
//!        │                                                  ▼                  ▼
//!     fence (SIGKILL) ◄── master of epoch T ◄── promotion steps 1–8 ◄─────────┘
//! ```
//!
//! A promotion that fails after it touched mariadbd (step 3 on) fences: SIGKILL and a fresh start
//! is always safe, an attempt to undo half a promotion is not obviously so.

pub mod rejoin;
pub mod switchover;

use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumsql_log::runtime::LogHandle;
use quorumsql_log::{Command, Epoch, Gtid, GtidState, NodeId, Outcome, Role as RaftRole};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::capture::{Capture, CaptureConfig, CaptureHandle, Credentials, Endpoint, TxnSink};
use crate::config::{capture_server_id, NodeConfig};
use crate::mariadb::{Consequence, Mariadb};
use crate::sql::SqlConn;
use switchover::{
    SwitchoverError, SwitchoverGate, SwitchoverReport, SwitchoverRequest, SwitchoverTiming,
};

/// What this node's mariadbd is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Starting,
    Replica,
    Promoting,
    Master,
    Fenced,
    Diverged,
    /// A diverged node fetching a backup from a healthy replica (`crate::rebuild`).
    Rebuilding,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Replica => "replica",
            Role::Promoting => "promoting",
            Role::Master => "master",
            Role::Fenced => "fenced",
            Role::Diverged => "diverged",
            Role::Rebuilding => "rebuilding",
        }
    }
}

/// What roles publishes for the proxy and the admin port.
#[derive(Debug, Clone, Default)]
pub struct RoleSnapshot {
    pub role: Role,
    /// The epoch this node is master of (only in `Master`).
    pub master_epoch: Option<Epoch>,
    /// `@@gtid_binlog_pos` of the local mariadbd, as last read.
    pub applied_gtid: Option<GtidState>,
    pub mariadb_pid: Option<u32>,
    /// Why the node is not healthy, each with what to do.
    pub problems: Vec<String>,
    /// Counters of this master's capture (refreshed every poll interval while master).
    pub capture: Option<crate::capture::CaptureMetrics>,
}

impl RoleSnapshot {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty() && matches!(self.role, Role::Replica | Role::Master)
    }
}

/// Timing of the roles loop.
#[derive(Debug, Clone)]
pub struct RolesTiming {
    pub poll: Duration,
    pub mariadb_ready: Duration,
    pub promotion_timeout: Duration,
    /// A master whose canary commit does not come back within this is unhealthy.
    pub stall_timeout: Duration,
    pub canary_every: Duration,
    /// Longer than this without a lease, a master fences (a shorter lapse only pauses the proxy).
    pub lease_lapse_fence: Duration,
    pub switchover: SwitchoverTiming,
}

impl RolesTiming {
    pub fn from_config(cfg: &NodeConfig) -> RolesTiming {
        let tick = cfg.raft.tick();
        RolesTiming {
            poll: Duration::from_millis(50),
            mariadb_ready: Duration::from_secs(120),
            promotion_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(10),
            canary_every: Duration::from_secs(1),
            lease_lapse_fence: tick * cfg.raft.election_ticks_max as u32,
            switchover: SwitchoverTiming {
                // Half the proxy's lease pause (the same election_timeout_max): an undone
                // drain releases held packets well before the proxy would fail them.
                drain: tick * cfg.raft.election_ticks_max as u32 / 2,
                read_only: Duration::from_secs(1),
                // raft-rs abandons a transfer after an election timeout; twice the longest one
                // leaves room for the transferee to catch up its log first.
                transfer: tick * cfg.raft.election_ticks_max as u32 * 2,
                poll: Duration::from_millis(10),
            },
        }
    }
}

/// Why the master or a promotion gave up; recorded in the log and in status.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FenceReason {
    LostLeadership,
    LeaseLapsed(Duration),
    CaptureStopped(String),
    CanaryStalled(String),
    PromotionFailed(String),
    /// mariadbd could not be started or configured as a replica; try again from scratch.
    StartFailed(String),
    MariadbExited,
    /// A planned switchover handed leadership to this node.
    SwitchedOver(NodeId),
    /// A planned switchover could not finish safely (DESIGN §3: fence when a commit still waits).
    SwitchoverStuck(String),
    /// mariadbd stopped writing its binlog (design-review 2): commits since then are in InnoDB
    /// but in no log entry, so the node is diverged, not merely fenced.
    BinlogLost(String),
}

impl FenceReason {
    /// The fences after which this node's data can hold commits the log never accepted.
    fn diverges(&self) -> Option<String> {
        match self {
            FenceReason::BinlogLost(why) => Some(format!(
                "mariadbd stopped writing its binlog while master ({why}); commits since then may be in its data and in no log entry"
            )),
            _ => None,
        }
    }

    /// A canary failure, told apart by what it found.
    fn canary(e: String) -> FenceReason {
        if e.contains(BINLOG_OFF) {
            FenceReason::BinlogLost(e)
        } else {
            FenceReason::CanaryStalled(e)
        }
    }
}

/// How the canary words a commit that wrote no binlog event.
const BINLOG_OFF: &str = "binary logging is off";

impl std::fmt::Display for FenceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceReason::LostLeadership => write!(f, "raft leadership or term changed"),
            FenceReason::LeaseLapsed(d) => write!(f, "lease lapsed for {d:?}"),
            FenceReason::CaptureStopped(e) => write!(f, "capture stopped: {e}"),
            FenceReason::CanaryStalled(e) => write!(f, "canary commit failed: {e}"),
            FenceReason::PromotionFailed(e) => write!(f, "promotion failed: {e}"),
            FenceReason::StartFailed(e) => write!(f, "start as a replica failed: {e}"),
            FenceReason::MariadbExited => write!(f, "mariadbd exited"),
            FenceReason::SwitchedOver(to) => {
                write!(f, "planned switchover: {to} is the new master")
            }
            FenceReason::SwitchoverStuck(e) => write!(f, "planned switchover: {e}"),
            FenceReason::BinlogLost(e) => write!(f, "the binlog stopped: {e}"),
        }
    }
}

/// What the replica phase ended with.
enum ReplicaExit {
    Promote(u64),
    Restart(String),
    Diverged(String),
}

/// A replica's view of its own replication.
enum Health {
    Ok,
    Problems(Vec<String>),
    /// Stopped in a way that may mean the local history left the log.
    SuspectDivergence(String),
    /// The applier stopped because the local data does not match what the log's transactions
    /// expect (a duplicate key, a missing row or table): diverged, whatever the binlog says.
    DataDiverged(String),
}

/// Applier errors that mean the replica's data differs from the history the log describes:
/// duplicate key, row not found, table/database/column missing or already there, column type
/// mismatch. Replaying the same transactions can only fail the same way.
const DATA_DIVERGENCE_ERRNOS: &[&str] = &[
    "1062", "1032", "1146", "1050", "1051", "1054", "1091", "1049", "1007", "1008", "1677",
];

/// The roles task and everything it drives.
pub struct Roles {
    cfg: Arc<NodeConfig>,
    me: NodeId,
    log: LogHandle,
    db: Mariadb,
    sink: Arc<dyn TxnSink>,
    timing: RolesTiming,
    state: watch::Sender<RoleSnapshot>,
    /// Admin connection over the unix socket (root, `sql_log_bin=0`), reopened on error.
    admin: Option<SqlConn>,
    capture: Option<CaptureHandle>,
    /// Last local GTID the rejoin check verified by content (persisted beside the datadir).
    verified: Option<Gtid>,
    /// Raft election priority last set: 1 when healthy, 0 when not (DESIGN §3).
    priority: i64,
    /// A master that could not serve keeps its priority at 0 until then.
    low_priority_until: Option<Instant>,
    /// Switchover requests from the admin port (master only; others answer from the admin).
    switchover_rx: Option<mpsc::Receiver<SwitchoverRequest>>,
    /// Raised while a switchover drains this master (read by the proxy per client packet).
    gate: SwitchoverGate,
    /// Raised by the proxy when mariadbd answered a commit the log does not hold.
    commit_alarm: crate::commit_alarm::CommitAlarm,
}

impl Roles {
    pub fn new(
        cfg: Arc<NodeConfig>,
        log: LogHandle,
        db: Mariadb,
        sink: Arc<dyn TxnSink>,
        state: watch::Sender<RoleSnapshot>,
    ) -> Roles {
        let me = NodeId(cfg.node.id);
        let timing = RolesTiming::from_config(&cfg);
        let verified = std::fs::read_to_string(verified_path(&cfg))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Roles {
            cfg,
            me,
            log,
            db,
            sink,
            timing,
            state,
            admin: None,
            capture: None,
            verified,
            priority: 1,
            low_priority_until: None,
            switchover_rx: None,
            gate: SwitchoverGate::default(),
            commit_alarm: crate::commit_alarm::CommitAlarm::default(),
        }
    }

    /// Fences the master as soon as the proxy raises `alarm` (see `crate::commit_alarm`).
    pub fn with_commit_alarm(mut self, alarm: crate::commit_alarm::CommitAlarm) -> Roles {
        self.commit_alarm = alarm;
        self
    }

    /// Lets the master accept planned switchovers from `requests`; `gate` is the one the proxy's
    /// oracle reads.
    pub fn with_switchover(
        mut self,
        requests: mpsc::Receiver<SwitchoverRequest>,
        gate: SwitchoverGate,
    ) -> Roles {
        self.switchover_rx = Some(requests);
        self.gate = gate;
        self
    }

    fn publish(&self, f: impl FnOnce(&mut RoleSnapshot)) {
        self.state.send_modify(f);
    }

    fn set_role(&self, role: Role, problems: Vec<String>) {
        info!(role = role.as_str(), ?problems, "role");
        self.publish(|s| {
            s.role = role;
            s.problems = problems;
            if role != Role::Master {
                s.master_epoch = None;
                s.capture = None;
            }
        });
    }

    /// Runs until `shutdown`; on the way out SIGKILLs mariadbd (never a clean shutdown, which
    /// would commit transactions waiting for an ACK).
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let round = async {
                match self.start_replica().await {
                    Err(StartError::Diverged(why)) => {
                        self.diverged(why).await;
                        None
                    }
                    Err(StartError::Retry(why)) => Some(FenceReason::StartFailed(why)),
                    Ok(()) => match self.replica_phase().await {
                        ReplicaExit::Diverged(why) => {
                            self.diverged(why).await;
                            None
                        }
                        ReplicaExit::Restart(why) => {
                            warn!(%why, "restarting mariadbd");
                            Some(FenceReason::MariadbExited)
                        }
                        ReplicaExit::Promote(term) => match self.promote(term).await {
                            Ok(()) => Some(self.master_phase(Epoch(term)).await),
                            Err(why) => Some(why),
                        },
                    },
                }
            };
            let reason = tokio::select! {
                r = round => r,
                _ = shutdown.cancelled() => break,
            };
            if let Some(reason) = reason {
                self.fence(&reason).await;
                if let Some(why) = reason.diverges() {
                    // Remembered across restarts: the GTID-based rejoin check cannot see
                    // commits that never reached the binlog.
                    if let Err(e) = write_synced_file(&diverged_path(&self.cfg), &why) {
                        error!(%e, "cannot record the divergence; it is lost if this process restarts");
                    }
                    self.diverged(why).await;
                }
            }
            // A short pause so a crash loop cannot spin.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.stop_capture().await;
        self.sigkill_mariadb();
        self.publish(|s| s.mariadb_pid = None);
    }

    /// SIGKILL and reap; the only way QuorumSQL ever stops mariadbd.
    fn sigkill_mariadb(&mut self) {
        let db = &mut self.db;
        if let Err(e) = tokio::task::block_in_place(|| db.sigkill()) {
            error!(%e, "SIGKILL of mariadbd failed");
        }
    }

    fn mariadb_exited(&mut self) -> bool {
        let db = &mut self.db;
        matches!(tokio::task::block_in_place(|| db.try_exit()), Ok(Some(_)))
    }

    // ----- start and replica ---------------------------------------------------------------

    async fn start_replica(&mut self) -> Result<(), StartError> {
        self.set_role(Role::Starting, vec![]);
        if self.log.status().self_needs_rebuild {
            return Err(StartError::Diverged(
                "this node installed a log snapshot (it fell behind the log's compaction point): its mariadbd misses the transactions in the gap".into(),
            ));
        }
        if let Ok(why) = std::fs::read_to_string(diverged_path(&self.cfg)) {
            return Err(StartError::Diverged(format!(
                "{} (recorded in {})",
                why.trim(),
                diverged_path(&self.cfg).display()
            )));
        }
        self.admin = None;
        let deadline = Instant::now() + self.timing.mariadb_ready;
        let db = &mut self.db;
        let started = tokio::task::block_in_place(|| {
            let init = db.initialize_if_needed()?;
            let started = db.start()?;
            Ok::<_, crate::mariadb::MariadbError>((init, started))
        });
        let (init, started) = started.map_err(|e| StartError::Retry(e.to_string()))?;
        let fresh = matches!(init, crate::mariadb::InitOutcome::Installed { .. });
        if !started.killed_stale.is_empty() {
            warn!(killed = ?started.killed_stale, "SIGKILLed a stale mariadbd holding the datadir");
        }
        self.publish(|s| s.mariadb_pid = Some(started.pid));
        let db = &mut self.db;
        let ready = tokio::task::block_in_place(|| db.wait_ready(deadline));
        // Read the error log whether or not it came up: a refused recovery is a divergence.
        let findings = self.db.error_log_since_start().scan().unwrap_or_default();
        for f in &findings {
            match f.consequence() {
                Consequence::Diverged | Consequence::Fatal => {
                    return Err(StartError::Diverged(format!(
                        "mariadbd error log at start: {f:?}"
                    )))
                }
                Consequence::CompareContent => {
                    // TODO(roles): compare schema and touched tables with a healthy replica
                    // (DESIGN §3 rejoin (c)). Until then such a node is not trusted.
                    return Err(StartError::Diverged(format!(
                        "mariadbd ran a recovery that needs a content comparison: {f:?}"
                    )));
                }
                Consequence::Note => info!(?f, "mariadbd error log"),
            }
        }
        ready.map_err(|e| StartError::Retry(e.to_string()))?;
        self.admin().await.map_err(StartError::Retry)?;
        if fresh {
            self.bootstrap_accounts().await.map_err(StartError::Retry)?;
        }
        self.apply_rebuild_marker()
            .await
            .map_err(StartError::Retry)?;
        self.rejoin_check(true).await?;
        self.configure_replication()
            .await
            .map_err(StartError::Retry)?;
        self.set_role(Role::Replica, vec![]);
        Ok(())
    }

    async fn replica_phase(&mut self) -> ReplicaExit {
        let mut last_report = Instant::now() - Duration::from_secs(10);
        let mut problems: Vec<String> = Vec::new();
        loop {
            tokio::time::sleep(self.timing.poll).await;
            if self.mariadb_exited() {
                return ReplicaExit::Restart("mariadbd exited".into());
            }
            self.refuse_switchovers();
            let st = self.log.status();
            if st.self_needs_rebuild {
                return ReplicaExit::Diverged(
                    "this node installed a log snapshot (it fell behind the log's compaction point): its mariadbd misses the transactions in the gap".into(),
                );
            }
            if st.role == RaftRole::Leader && !st.transferring {
                let epoch = st.master.map(|(_, e)| e.0).unwrap_or(0);
                if epoch < st.term {
                    if problems.is_empty() {
                        return ReplicaExit::Promote(st.term);
                    }
                    // An unhealthy replica must not become master (DESIGN §6 invariant 10):
                    // hand leadership to a peer instead.
                    if let Some(to) = self.best_peer() {
                        warn!(?problems, target = %to, "leader but not promotable: transferring");
                        let _ = self.log.transfer_leader(to).await;
                    }
                }
            }
            if last_report.elapsed() >= Duration::from_millis(500) {
                last_report = Instant::now();
                problems = match self.replica_health().await {
                    Ok(Health::Ok) => vec![],
                    Ok(Health::Problems(p)) => p,
                    Ok(Health::DataDiverged(why)) => return ReplicaExit::Diverged(why),
                    Ok(Health::SuspectDivergence(why)) => {
                        // The applier stopped on a local GTID or serve refused our position:
                        // decide by content whether this node's history left the log.
                        match self.rejoin_check(false).await {
                            Err(StartError::Diverged(d)) => return ReplicaExit::Diverged(d),
                            // serve's refusal when the log was compacted past this replica.
                            _ if why.contains("rebuild the replica") => {
                                return ReplicaExit::Diverged(format!(
                                    "the log no longer holds what this replica needs next; its data must be rebuilt ({why})"
                                ))
                            }
                            _ => vec![why],
                        }
                    }
                    Err(e) => vec![e],
                };
                let p = problems.clone();
                self.publish(|s| s.problems = p);
                let held = self.low_priority_until.is_some_and(|t| Instant::now() < t);
                self.set_priority(if problems.is_empty() && !held { 1 } else { 0 });
                if problems.is_empty() {
                    self.advance_verified().await;
                }
                self.report_member(problems.is_empty(), false);
            }
        }
    }

    /// `SHOW SLAVE STATUS` and `@@gtid_binlog_pos`: applier errors are surfaced as problems.
    async fn replica_health(&mut self) -> Result<Health, String> {
        let pos = self.query_one("SELECT @@gtid_binlog_pos").await?;
        let applied: Option<GtidState> = pos.as_deref().and_then(|p| p.parse().ok());
        self.publish(|s| s.applied_gtid = applied);
        let rows = self.query("SHOW SLAVE STATUS").await?;
        let Some(row) = rows.first() else {
            return Ok(Health::Problems(vec![
                "replication is not configured".into()
            ]));
        };
        let get = |name: &str| row.get(name).unwrap_or_default().to_string();
        let sql_errno = get("Last_SQL_Errno");
        let io_errno = get("Last_IO_Errno");
        if DATA_DIVERGENCE_ERRNOS.contains(&sql_errno.as_str()) {
            return Ok(Health::DataDiverged(format!(
                "the replication applier stopped on SQL error {sql_errno} {}",
                get("Last_SQL_Error")
            )));
        }
        if sql_errno == "1950" || io_errno == "1236" {
            return Ok(Health::SuspectDivergence(format!(
                "replication stopped: SQL error {sql_errno} {}; IO error {io_errno} {}",
                get("Last_SQL_Error"),
                get("Last_IO_Error")
            )));
        }
        let mut problems = Vec::new();
        if get("Slave_SQL_Running") != "Yes" {
            problems.push(format!(
                "replication applier stopped: {sql_errno} {}",
                get("Last_SQL_Error")
            ));
        }
        if get("Slave_IO_Running") == "No" {
            problems.push(format!(
                "replication from serve stopped: {io_errno} {}",
                get("Last_IO_Error")
            ));
        }
        Ok(if problems.is_empty() {
            Health::Ok
        } else {
            Health::Problems(problems)
        })
    }

    // ----- promotion (DESIGN §3, steps 1–8, in this order) --------------------------------

    async fn promote(&mut self, term: u64) -> Result<(), FenceReason> {
        // An alarm from an earlier mariadbd's mastership says nothing about this one.
        self.commit_alarm.reset();
        // A gate left raised by an earlier switchover of this node must not stop the new term.
        self.gate.set(false);
        self.set_role(Role::Promoting, vec![]);
        info!(term, "promotion starts");
        let deadline = Instant::now() + self.timing.promotion_timeout;
        let still_leader = |log: &LogHandle| {
            let st = log.status();
            st.role == RaftRole::Leader && st.term == term
        };
        // 1. Wait until an entry of term T is applied: after it no earlier-epoch Append can be
        //    accepted, so the log's tail is final. A Noop of our own term is such an entry.
        match self.log.propose(Command::Noop).await {
            Ok(p) if p.outcome == Outcome::Accepted => {}
            Ok(other) => {
                return Err(FenceReason::PromotionFailed(format!(
                    "term-start marker: {:?}",
                    other.outcome
                )))
            }
            Err(e) => {
                return Err(FenceReason::PromotionFailed(format!(
                    "term-start marker: {e}"
                )))
            }
        }
        // Nothing has been touched yet: losing leadership here needs no fence, but fencing is
        // cheap and keeps one path.
        if !still_leader(&self.log) {
            return Err(FenceReason::LostLeadership);
        }
        // 2. Wait until the local mariadbd has applied the last accepted transaction, then
        //    verify its GTID state equals the log's.
        let target = self.log.status().gtid_state;
        loop {
            let pos = self
                .query_one("SELECT @@gtid_binlog_pos")
                .await
                .map_err(FenceReason::PromotionFailed)?;
            let local: GtidState = pos
                .as_deref()
                .unwrap_or("")
                .parse()
                .map_err(|e| FenceReason::PromotionFailed(format!("@@gtid_binlog_pos: {e}")))?;
            if local == target {
                break;
            }
            if Instant::now() >= deadline {
                return Err(FenceReason::PromotionFailed(format!(
                    "mariadbd did not catch up: has {local}, log has {target}"
                )));
            }
            if !still_leader(&self.log) {
                return Err(FenceReason::LostLeadership);
            }
            tokio::time::sleep(self.timing.poll).await;
        }
        info!(term, gtid = %target, "promotion: mariadbd has applied the whole log");
        // The rejoin check again, now that the history is complete.
        self.rejoin_check(false)
            .await
            .map_err(|e| FenceReason::PromotionFailed(format!("{e:?}")))?;
        info!(term, "promotion: rejoin check passed");
        // 3. Stop replication.
        self.exec("STOP SLAVE")
            .await
            .map_err(FenceReason::PromotionFailed)?;
        info!(term, "promotion: replication stopped");
        // 4. Semi-sync master on (the other §5 settings are in the option file).
        self.exec("SET GLOBAL rpl_semi_sync_master_enabled = ON")
            .await
            .map_err(FenceReason::PromotionFailed)?;
        // 5. Capture from the log's last GTID; see it attached.
        let mut cap_cfg = CaptureConfig::new(
            Endpoint::Unix(self.db.config().socket()),
            Credentials {
                user: "root".into(),
                password: String::new(),
            },
            capture_server_id(self.me.0),
        )
        .with_entry_cap(self.cfg.raft.entry_cap_bytes);
        // Capture attaches now but proposes only once MasterReady{self, T} is applied: an
        // Append before it would be rejected (and fence this node).
        cap_cfg.hold_proposals = true;
        let handle = Capture::start(
            cap_cfg,
            self.sink.clone(),
            target.clone(),
            target.get(0),
            Epoch(term),
        );
        self.capture = Some(handle);
        loop {
            let attached = self
                .query_one("SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")
                .await
                .map_err(FenceReason::PromotionFailed)?;
            if attached.as_deref() == Some("1") {
                break;
            }
            if let Some(why) = self.capture_ended() {
                return Err(FenceReason::CaptureStopped(why));
            }
            if Instant::now() >= deadline {
                return Err(FenceReason::PromotionFailed(
                    "capture did not attach as the semi-sync replica".into(),
                ));
            }
            tokio::time::sleep(self.timing.poll).await;
        }
        // 6. Close this node's RO sessions: publishing `Promoting` already told the proxy to
        //    stop serving reads from this mariadbd.
        // 7. Writes may now reach mariadbd (only through the proxy, once MasterReady is in).
        self.exec("SET GLOBAL read_only = OFF")
            .await
            .map_err(FenceReason::PromotionFailed)?;
        // 8. MasterReady{self, T, last GTID}: accepted only if T is the term of its entry.
        let gtid = target.get(0);
        match self
            .log
            .propose(Command::MasterReady {
                node: self.me,
                epoch: Epoch(term),
                gtid,
            })
            .await
        {
            Ok(p) if p.outcome == Outcome::Accepted => {}
            Ok(other) => {
                return Err(FenceReason::PromotionFailed(format!(
                    "MasterReady: {:?}",
                    other.outcome
                )))
            }
            Err(e) => return Err(FenceReason::PromotionFailed(format!("MasterReady: {e}"))),
        }
        if let Some(c) = &self.capture {
            c.allow_proposals();
        }
        self.set_role(Role::Master, vec![]);
        self.publish(|s| s.master_epoch = Some(Epoch(term)));
        info!(term, "master");
        Ok(())
    }

    // ----- master --------------------------------------------------------------------------

    /// Runs while this node is master; returns why it must stop. The checks run every poll
    /// interval whatever else is going on: the canary commit runs on its own task, because a
    /// commit can wait for its ACK for as long as the log is unreachable, and a master that
    /// lost its leadership must notice that at once, not after the canary's timeout.
    async fn master_phase(&mut self, epoch: Epoch) -> FenceReason {
        let mut lease_lost_since: Option<Instant> = None;
        let mut planted_since: Option<Instant> = None;
        // Wake at once when the log's status changes (a new term, lost leadership), not only
        // every poll interval: the sooner a deposed master fences, the shorter the time its
        // mariadbd could take a statement the proxy let through before the lease check.
        let mut status_rx = self.log.subscribe_status();
        let mut next_canary = Instant::now();
        let mut canary: Option<(Instant, tokio::task::JoinHandle<Result<u64, String>>)> = None;
        let mut no_tx: Option<u64> = None;
        let mut next_audit = Instant::now();
        let mut next_report = Instant::now();
        // The running mariadbd's error log, read as it grows: "Turning logging off" after a
        // failed binlog rotation must fence at once (design-review 2), not at the next canary.
        let mut error_log = self.db.error_log_since_start();
        let mut alarm_rx = self.commit_alarm.subscribe();
        let reason = loop {
            tokio::select! {
                _ = tokio::time::sleep(self.timing.poll) => {}
                _ = alarm_rx.changed() => {}
                r = status_rx.changed() => {
                    // A stopped log closes the channel: `changed` would then return at once on
                    // every turn; fall back to the poll interval instead of spinning.
                    if r.is_err() {
                        tokio::time::sleep(self.timing.poll).await;
                    }
                }
            }
            if self.mariadb_exited() {
                break FenceReason::MariadbExited;
            }
            let st = self.log.status();
            let master_ok = st.role == RaftRole::Leader
                && st.term == epoch.0
                && st.master == Some((self.me, epoch));
            if crate::planted::active(crate::planted::Bug::SkipLease) {
                if master_ok && st.lease_remaining.is_some() {
                    // The window starts afresh at each loss: a lapse early in the phase must
                    // not use it up for a later one.
                    planted_since = None;
                } else {
                    // Planted bug (test builds only): a deposed master goes on serving for a
                    // while before it notices, which is the window the lease exists to close.
                    let since = *planted_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < Duration::from_secs(3) {
                        continue;
                    }
                }
            }
            if !master_ok {
                break FenceReason::LostLeadership;
            }
            if st.lease_remaining.is_some() {
                lease_lost_since = None;
            } else {
                let since = *lease_lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() > self.timing.lease_lapse_fence {
                    break FenceReason::LeaseLapsed(since.elapsed());
                }
            }
            if let Some(why) = self.commit_alarm.raised() {
                break FenceReason::BinlogLost(format!("the proxy held back an OK: {why}"));
            }
            if let Some(f) = error_log.scan().ok().and_then(|found| {
                found
                    .into_iter()
                    .find(|f| matches!(f.consequence(), Consequence::Fatal | Consequence::Diverged))
            }) {
                break FenceReason::BinlogLost(format!("mariadbd error log: {f:?}"));
            }
            if let Some(why) = self.capture_ended() {
                break FenceReason::CaptureStopped(why);
            }
            match canary.take() {
                Some((started, task)) if task.is_finished() => match task.await {
                    Ok(Ok(n)) => {
                        no_tx = Some(n);
                        next_canary = started + self.timing.canary_every;
                    }
                    Ok(Err(e)) => break FenceReason::canary(e),
                    Err(e) => break FenceReason::CanaryStalled(format!("canary task: {e}")),
                },
                Some((started, task)) => {
                    if started.elapsed() > self.timing.stall_timeout {
                        task.abort();
                        break FenceReason::CanaryStalled(format!(
                            "canary commit did not complete within {:?}",
                            self.timing.stall_timeout
                        ));
                    }
                    canary = Some((started, task));
                }
                None if Instant::now() >= next_canary => {
                    let socket = self.db.config().socket();
                    let me = self.me.0;
                    canary = Some((
                        Instant::now(),
                        tokio::spawn(async move { canary_commit(socket, me, epoch, no_tx).await }),
                    ));
                }
                None => {}
            }
            if let Some(req) = self
                .switchover_rx
                .as_mut()
                .and_then(|rx| rx.try_recv().ok())
            {
                // The canary's commit waits for its ACK like a client's: let it finish, and
                // start no other until the switchover is decided.
                if let Some((started, mut task)) = canary.take() {
                    match tokio::time::timeout(self.timing.switchover.drain, &mut task).await {
                        Ok(Ok(Ok(n))) => {
                            no_tx = Some(n);
                            next_canary = started + self.timing.canary_every;
                        }
                        Ok(Ok(Err(e))) => {
                            let _ = req.reply.send(Err(SwitchoverError::MasterLost(format!(
                                "canary commit failed: {e}"
                            ))));
                            break FenceReason::canary(e);
                        }
                        Ok(Err(e)) => {
                            let _ = req
                                .reply
                                .send(Err(SwitchoverError::Internal(format!("canary task: {e}"))));
                            break FenceReason::CanaryStalled(format!("canary task: {e}"));
                        }
                        Err(_) => {
                            let _ = req.reply.send(Err(SwitchoverError::DrainTimeout {
                                me: self.me.0,
                                waited: self.timing.switchover.drain,
                                running: "the master's own canary commit".into(),
                            }));
                            canary = Some((started, task));
                            continue;
                        }
                    }
                }
                let (result, exit) = self.switchover(epoch, req.to).await;
                match &result {
                    Ok(r) => info!(?r, "switchover done"),
                    Err(e) => warn!(%e, "switchover failed"),
                }
                let _ = req.reply.send(result);
                if let Some(reason) = exit {
                    break reason;
                }
                continue;
            }
            // Bounded: a mariadbd slowed down by client load must not delay the checks above.
            match tokio::time::timeout(
                Duration::from_millis(300),
                self.query_one("SELECT @@gtid_binlog_pos"),
            )
            .await
            {
                Ok(Ok(pos)) => {
                    let applied: Option<GtidState> = pos.as_deref().and_then(|p| p.parse().ok());
                    self.publish(|s| s.applied_gtid = applied);
                }
                Ok(Err(e)) => warn!(%e, "cannot read @@gtid_binlog_pos"),
                Err(_) => self.admin = None,
            }
            if let Some(m) = self.capture.as_ref().map(CaptureHandle::metrics) {
                // Counters only: readers borrow the newest value, nobody is woken for it (the
                // proxy's routing task watches this channel for role changes).
                self.state.send_if_modified(|s| {
                    s.capture = Some(m);
                    false
                });
            }
            if Instant::now() >= next_report {
                next_report = Instant::now() + Duration::from_secs(2);
                self.advance_verified().await;
                self.report_member(true, false);
            }
            if Instant::now() >= next_audit {
                next_audit = Instant::now() + Duration::from_secs(60);
                match tokio::time::timeout(Duration::from_millis(500), self.audit_privileges())
                    .await
                    .unwrap_or_else(|_| Err("audit query timed out".into()))
                {
                    Ok(findings) => {
                        for f in &findings {
                            warn!(finding = %f, "privilege audit");
                        }
                        self.publish(|s| s.problems = findings);
                    }
                    Err(e) => warn!(%e, "privilege audit failed"),
                }
            }
        };
        if let Some((_, task)) = canary {
            task.abort();
        }
        reason
    }

    /// DESIGN §4: client accounts hold only database-level privileges. A global privilege from
    /// this list lets a client bypass `read_only`, the binlog or the semi-sync wait, or write
    /// where only replication may. Reported (the node shows unhealthy) rather than revoked:
    /// changing grants is the operator's decision.
    async fn audit_privileges(&mut self) -> Result<Vec<String>, String> {
        let rows = self
            .query(
                "SELECT GRANTEE, PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.USER_PRIVILEGES \
                 WHERE (PRIVILEGE_TYPE IN ('SUPER', 'READ ONLY ADMIN', 'BINLOG ADMIN', 'BINLOG REPLAY', \
                 'RELOAD', 'SHUTDOWN', 'CONNECTION ADMIN', 'REPLICATION SLAVE', \
                 'REPLICATION MASTER ADMIN', 'FILE', 'CREATE USER') OR IS_GRANTABLE = 'YES') \
                 AND GRANTEE NOT IN ('''root''@''localhost''', '''mariadb.sys''@''localhost''') \
                 AND GRANTEE NOT LIKE '''quorumsql%'",
            )
            .await?;
        let mut by_account: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for r in &rows {
            let who = r.get_idx(0).unwrap_or("?").to_string();
            let what = match (r.get_idx(1), r.get_idx(2)) {
                (Some(p), Some("YES")) => format!("{p} WITH GRANT OPTION"),
                (Some(p), _) => p.to_string(),
                _ => continue,
            };
            by_account.entry(who).or_default().push(what);
        }
        Ok(by_account
            .into_iter()
            .map(|(who, privs)| {
                format!(
                    "account {who} holds global {}: client accounts may hold database-level privileges only (DESIGN §4); revoke them",
                    privs.join(", ")
                )
            })
            .collect())
    }

    // ----- planned switchover (DESIGN §3; the steps are explained in switchover.rs) -------

    /// Answers queued switchover requests of a node that is not (or no longer) the master.
    fn refuse_switchovers(&mut self) {
        let Some(rx) = self.switchover_rx.as_mut() else {
            return;
        };
        while let Ok(req) = rx.try_recv() {
            let master = self.log.status().master.map(|(n, _)| n.0);
            let _ = req.reply.send(Err(SwitchoverError::NotMaster {
                me: self.me.0,
                master: master.filter(|m| *m != self.me.0),
            }));
        }
    }

    /// Runs one switchover as master of `epoch`. Returns the answer for the operator and, when
    /// this node must stop being master, why (the caller fences).
    async fn switchover(
        &mut self,
        epoch: Epoch,
        to: NodeId,
    ) -> (
        Result<SwitchoverReport, SwitchoverError>,
        Option<FenceReason>,
    ) {
        let t = self.timing.switchover.clone();
        let me = self.me;
        let still_master = |log: &LogHandle| {
            let st = log.status();
            st.role == RaftRole::Leader && st.term == epoch.0 && st.master == Some((me, epoch))
        };
        if !still_master(&self.log) {
            let master = self.log.status().master.map(|(n, _)| n.0);
            return (
                Err(SwitchoverError::NotMaster {
                    me: me.0,
                    master: master.filter(|m| *m != me.0),
                }),
                None,
            );
        }
        if to == me {
            return (Err(SwitchoverError::AlreadyMaster(me.0)), None);
        }
        let st = self.log.status();
        if !st.peers.iter().any(|p| p.node == to && p.voter) {
            return (Err(SwitchoverError::NoSuchNode(to.0)), None);
        }
        if !self
            .log
            .peers()
            .peer_status(to)
            .is_some_and(|p| p.connected)
        {
            return (
                Err(SwitchoverError::TargetNotReady {
                    node: to.0,
                    why: "the master has no peer connection to it".into(),
                }),
                None,
            );
        }
        info!(target = %to, "switchover: draining");

        // 1. Drain: no new client packet is forwarded; wait for running statements.
        let drain_started = Instant::now();
        self.gate.set(true);
        let drained = loop {
            tokio::time::sleep(t.poll).await;
            let running =
                match tokio::time::timeout(t.drain, self.running_client_statements()).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => break Err(SwitchoverError::Internal(e)),
                    Err(_) => {
                        self.admin = None;
                        break Err(SwitchoverError::Internal(format!(
                            "information_schema.PROCESSLIST did not answer within {:?}",
                            t.drain
                        )));
                    }
                };
            if running.is_empty() {
                break Ok(drain_started.elapsed());
            }
            if !still_master(&self.log) {
                break Err(SwitchoverError::MasterLost(
                    "raft leadership or term changed while draining".into(),
                ));
            }
            if drain_started.elapsed() >= t.drain {
                break Err(SwitchoverError::DrainTimeout {
                    me: me.0,
                    waited: drain_started.elapsed(),
                    running: running.join("; "),
                });
            }
        };
        let drain = match drained {
            Ok(d) => d,
            Err(e) => {
                // Nothing was changed in mariadbd: held packets go on. (A lost master fences
                // through the master loop's own checks.)
                self.gate.set(false);
                return (Err(e), None);
            }
        };

        // 1b. Statements waiting for a row lock are interrupted: their blocker is usually a
        //     transaction whose next statement the drain holds, so they would wait until
        //     innodb_lock_wait_timeout, and read_only=ON waits for every running statement
        //     (chaos runs: 16 of 29 switchovers fell back to a fence this way). A statement in a
        //     lock wait is never a commit: KILL QUERY rolls back that statement only and its
        //     client gets error 1317, a definite failure.
        match tokio::time::timeout(t.drain, self.interrupt_lock_waits()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(
                statements = n,
                "switchover: interrupted statements waiting for a row lock"
            ),
            Ok(Err(e)) => warn!(%e, "switchover: could not interrupt lock waits"),
            Err(_) => {
                self.admin = None;
                warn!("switchover: interrupting lock waits did not answer");
            }
        }

        // 2. read_only=ON; it waits for every commit still in progress, so when it returns
        //    nothing waits for an ACK. Not returning in time means something does: fence.
        let ro_started = Instant::now();
        match tokio::time::timeout(t.read_only, self.exec("SET GLOBAL read_only = ON")).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.gate.set(false);
                return (
                    Err(SwitchoverError::Internal(format!(
                        "cannot set read_only: {e}; writes resumed, nothing was changed"
                    ))),
                    None,
                );
            }
            Err(_) => {
                self.admin = None;
                let why = format!(
                    "SET GLOBAL read_only = ON did not complete within {:?}: a commit waiting for its ACK (or a statement still running) holds it",
                    t.read_only
                );
                return (
                    Err(SwitchoverError::Fenced(why.clone())),
                    Some(FenceReason::SwitchoverStuck(why)),
                );
            }
        }
        let read_only = ro_started.elapsed();
        match tokio::time::timeout(t.read_only, self.sessions_waiting_for_ack()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                let why =
                    format!("{n} session(s) still wait for a semi-sync ACK after read_only=ON");
                return (
                    Err(SwitchoverError::Fenced(why.clone())),
                    Some(FenceReason::SwitchoverStuck(why)),
                );
            }
            Ok(Err(e)) => {
                let why = format!("cannot check for commits waiting for an ACK: {e}");
                return (
                    Err(SwitchoverError::Fenced(why.clone())),
                    Some(FenceReason::SwitchoverStuck(why)),
                );
            }
            Err(_) => {
                let why = "the check for commits waiting for an ACK did not answer".to_string();
                return (
                    Err(SwitchoverError::Fenced(why.clone())),
                    Some(FenceReason::SwitchoverStuck(why)),
                );
            }
        }
        if !still_master(&self.log) {
            return (
                Err(SwitchoverError::MasterLost(
                    "raft leadership or term changed before the transfer".into(),
                )),
                Some(FenceReason::LostLeadership),
            );
        }

        // 3. transfer_leader: the log voids the lease before anything is sent. No undo after
        //    this point; the lease is not taken again in this term.
        info!(target = %to, ?drain, ?read_only, "switchover: transferring leadership");
        let transfer_started = Instant::now();
        if let Err(e) = self.log.transfer_leader(to).await {
            let why = format!("transfer_leader to {to}: {e}");
            return (
                Err(SwitchoverError::Fenced(why.clone())),
                Some(FenceReason::SwitchoverStuck(why)),
            );
        }
        loop {
            let st = self.log.status();
            if st.role != RaftRole::Leader || st.term != epoch.0 {
                break;
            }
            if transfer_started.elapsed() >= t.transfer {
                let why = format!(
                    "leadership did not move to {to} within {:?} (the transferee did not win its election)",
                    t.transfer
                );
                return (
                    Err(SwitchoverError::Fenced(why.clone())),
                    Some(FenceReason::SwitchoverStuck(why)),
                );
            }
            tokio::time::sleep(t.poll).await;
        }
        let report = SwitchoverReport {
            from: me.0,
            to: to.0,
            epoch: epoch.0,
            drain_ms: drain.as_millis() as u64,
            read_only_ms: read_only.as_millis() as u64,
            transfer_ms: transfer_started.elapsed().as_millis() as u64,
        };
        // 4. The normal demotion path: fence (SIGKILL) and restart as a replica.
        (Ok(report), Some(FenceReason::SwitchedOver(to)))
    }

    /// Client statements mariadbd is running now, one line each (for the operator when the
    /// drain times out). Sessions that are idle, still logging in (their handshake packets are
    /// held by the proxy too), replication dumps (capture) and server threads do not count;
    /// neither do statements waiting for an InnoDB row lock: the holder is usually a
    /// transaction whose next statement the drain itself holds, so they could never finish
    /// first (seen in chaos runs: `SELECT … FOR UPDATE` behind an open transfer). They have
    /// not committed; the fence after the transfer cuts them and their clients are told the
    /// outcome is unknown.
    async fn running_client_statements(&mut self) -> Result<Vec<String>, String> {
        let rows = self
            .query(
                "SELECT ID, USER, COMMAND, TIME, STATE, LEFT(INFO, 80) FROM information_schema.PROCESSLIST \
                 WHERE ID <> CONNECTION_ID() AND USER <> 'system user' \
                 AND COMMAND NOT IN ('Sleep', 'Daemon', 'Binlog Dump', 'Connect', 'Killed') \
                 AND ID NOT IN (SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX \
                                WHERE trx_state = 'LOCK WAIT')",
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let v = |i: usize| r.get_idx(i).unwrap_or("").to_string();
                format!(
                    "id {} user {} {} for {} s, state {:?}: {:?}",
                    v(0),
                    v(1),
                    v(2),
                    v(3),
                    v(4),
                    v(5)
                )
            })
            .collect())
    }

    /// `KILL QUERY` for every client statement waiting for an InnoDB row lock; how many.
    async fn interrupt_lock_waits(&mut self) -> Result<usize, String> {
        let rows = self
            .query(
                "SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX \
                 WHERE trx_state = 'LOCK WAIT' AND trx_mysql_thread_id <> CONNECTION_ID()",
            )
            .await?;
        let ids: Vec<u64> = rows
            .iter()
            .filter_map(|r| r.get_idx(0).and_then(|v| v.parse().ok()))
            .collect();
        for id in &ids {
            // The session may have finished meanwhile: "Unknown thread id" is fine.
            if let Err(e) = self.exec(&format!("KILL QUERY {id}")).await {
                if !e.contains("1094") && !e.contains("Unknown thread") {
                    return Err(e);
                }
            }
        }
        Ok(ids.len())
    }

    /// Sessions in mariadbd's semi-sync wait (read from the processlist: `SHOW STATUS` can
    /// block behind commits).
    async fn sessions_waiting_for_ack(&mut self) -> Result<usize, String> {
        let n = self
            .query_one(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE STATE LIKE '%semi-sync ACK%'",
            )
            .await?;
        n.as_deref()
            .unwrap_or("0")
            .parse()
            .map_err(|e| format!("processlist count {n:?}: {e}"))
    }

    // ----- fencing and divergence ---------------------------------------------------------

    /// Stops everything that could let a commit through, records what mariadbd was running,
    /// then SIGKILLs it (never a clean shutdown, a KILL or a timeout: each of those commits
    /// transactions waiting for their ACK).
    async fn fence(&mut self, reason: &FenceReason) {
        warn!(%reason, "fencing mariadbd");
        self.set_role(Role::Fenced, vec![format!("fenced: {reason}")]);
        self.set_priority(0);
        if matches!(reason, FenceReason::CanaryStalled(_)) {
            // A master that could not serve must not win the next election straight back.
            self.low_priority_until = Some(Instant::now() + Duration::from_secs(30));
        }
        self.stop_capture().await;
        if let Ok(Ok(rows)) = tokio::time::timeout(
            Duration::from_millis(500),
            self.query(
                "SELECT ID, USER, COMMAND, STATE, LEFT(INFO, 200) FROM information_schema.PROCESSLIST",
            ),
        )
        .await
        {
            for r in rows {
                info!(row = ?r.values(), "processlist at fence");
            }
        }
        self.admin = None;
        self.sigkill_mariadb();
        self.publish(|s| s.mariadb_pid = None);
        // Only now: with mariadbd dead nothing can be forwarded to it, and the next promotion
        // of this node must find the gate down.
        self.gate.set(false);
        self.refuse_switchovers();
        // A master that could not serve hands leadership on (to anyone a majority elects).
        if self.log.status().role == RaftRole::Leader {
            if let Some(to) = self.best_peer() {
                let _ = self.log.transfer_leader(to).await;
            }
        }
    }

    /// A diverged node never serves, replicates or gets promoted until it is rebuilt. It keeps
    /// its mariadbd stopped and hands leadership away whenever it gets it.
    async fn diverged(&mut self, why: String) {
        error!(%why, "node diverged");
        self.stop_capture().await;
        self.sigkill_mariadb();
        self.publish(|s| s.mariadb_pid = None);
        self.set_priority(0);
        let manual = format!(
            "diverged: {why}. This node's data is not part of the cluster's history: rebuild it from a healthy node (stop this node, move {} away, start it again)",
            self.cfg.mariadb_dir().display()
        );
        self.set_role(Role::Diverged, vec![manual.clone()]);
        // Give the cluster a moment to settle (a fenced master's successor is being elected)
        // before asking a replica for a backup.
        let mut next_rebuild = Instant::now() + REBUILD_FIRST_DELAY;
        let mut backoff = REBUILD_FIRST_DELAY;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.report_member(false, true);
            if self.log.status().role == RaftRole::Leader {
                if let Some(to) = self.best_peer() {
                    let _ = self.log.transfer_leader(to).await;
                }
            }
            if !self.cfg.mariadb.auto_rebuild || Instant::now() < next_rebuild {
                continue;
            }
            match self.rebuild(&why).await {
                Ok(()) => return,
                Err(e) => {
                    backoff = (backoff * 2).min(REBUILD_MAX_BACKOFF);
                    next_rebuild = Instant::now() + backoff;
                    warn!(error = %e, retry_in = ?backoff, "automatic rebuild failed");
                    self.set_role(
                        Role::Diverged,
                        vec![format!(
                            "{manual}. Automatic rebuild failed ({e}); next attempt in {}s",
                            backoff.as_secs()
                        )],
                    );
                }
            }
        }
    }

    /// Replaces this node's datadir with a backup of a healthy replica (`crate::rebuild`).
    /// mariadbd is already stopped. On success the next start applies the backup's GTID state.
    async fn rebuild(&mut self, why: &str) -> Result<(), String> {
        let st = self.log.status();
        let master = st.master.map(|(n, _)| n);
        // A master refuses to donate (its binlog can hold a commit the log never accepts):
        // ask the others first, the master last in case it has become a replica since.
        let mut donors: Vec<NodeId> = st
            .membership
            .voters
            .iter()
            .copied()
            .filter(|n| *n != self.me && Some(*n) != master)
            .collect();
        donors.extend(master.filter(|m| *m != self.me));
        if donors.is_empty() {
            return Err("no other member to rebuild from".into());
        }
        self.set_role(
            Role::Rebuilding,
            vec![format!(
                "rebuilding from a healthy replica with mariadb-backup (was diverged: {why})"
            )],
        );
        // While the backup travels the log must keep everything after it: report as a member
        // that is restarting (not diverged, nothing verified), which holds compaction.
        self.verified = None;
        self.report_member(false, false);
        let mut errors = Vec::new();
        for donor in donors {
            let stream = match self
                .log
                .peers()
                .open_stream(donor, quorumsql_peer::StreamPurpose::Rebuild)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    errors.push(format!("node{}: {e}", donor.0));
                    continue;
                }
            };
            info!(%donor, "rebuild: receiving a backup");
            // Keep handing leadership away and holding the log while the backup runs.
            let keeper = {
                let log = self.log.clone();
                let me = self.me;
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        log.report_member(None, false, false);
                        if log.status().role == RaftRole::Leader {
                            if let Some(to) = best_peer_of(&log, me) {
                                let _ = log.transfer_leader(to).await;
                            }
                        }
                    }
                })
            };
            let result = crate::rebuild::receive_and_install(&self.cfg, donor.0, stream).await;
            keeper.abort();
            match result {
                Ok(state) => {
                    info!(%donor, gtid_state = %state, "rebuild: done; starting from the backup");
                    let _ = std::fs::remove_file(verified_path(&self.cfg));
                    if self.log.status().self_needs_rebuild {
                        self.log.clear_needs_rebuild().await.map_err(|e| {
                            format!("rebuilt, but cannot clear the snapshot flag: {e}")
                        })?;
                    }
                    if let Err(e) = std::fs::remove_file(diverged_path(&self.cfg)) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            return Err(format!(
                                "rebuilt, but cannot remove {}: {e}",
                                diverged_path(&self.cfg).display()
                            ));
                        }
                    }
                    return Ok(());
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(errors.join("; "))
    }

    /// After a rebuild, the first start gives mariadbd the backup's GTID state: an empty binlog
    /// whose `gtid_binlog_state` (and `gtid_slave_pos`) is the donor's at the backup point, so
    /// serve streams from exactly there (DESIGN §3).
    async fn apply_rebuild_marker(&mut self) -> Result<(), String> {
        let marker = self.cfg.node.data_dir.join(crate::rebuild::REBUILD_MARKER);
        let text = match std::fs::read_to_string(&marker) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", marker.display())),
        };
        let from_backup_info: GtidState = text
            .trim()
            .parse()
            .map_err(|e| format!("{} holds no GTID state: {e}", marker.display()))?;
        // The GTID column of xtrabackup_binlog_info can name the *first* transaction of the
        // donor's last group commit while the data holds the whole group (seen in chaos runs
        // with parallel apply): replicating from there fails on duplicate keys. The donor's
        // mysql.gtid_slave_pos is InnoDB, written in the same transactions as the data, so the
        // restored server loads exactly what its data holds.
        let slave_pos: Option<GtidState> = self
            .query_one("SELECT @@gtid_slave_pos")
            .await?
            .filter(|v| !v.trim().is_empty())
            .and_then(|v| v.trim().parse().ok());
        let state = match slave_pos {
            Some(p)
                if p.get(0).map(|g| g.seq).unwrap_or(0)
                    >= from_backup_info.get(0).map(|g| g.seq).unwrap_or(0) =>
            {
                p
            }
            other => {
                warn!(
                    gtid_slave_pos = ?other.map(|p| p.to_string()),
                    backup_info = %from_backup_info,
                    "rebuilt datadir: gtid_slave_pos is behind the backup's binlog info; using the latter"
                );
                from_backup_info
            }
        };
        let state_sql = state.to_string();
        self.exec("RESET MASTER").await?;
        self.exec(&format!("SET GLOBAL gtid_binlog_state = '{state_sql}'"))
            .await?;
        self.exec(&format!("SET GLOBAL gtid_slave_pos = '{state_sql}'"))
            .await?;
        // The donor verified its data against the log; the backup point is as trusted.
        self.verified = state.get(0);
        if let Some(g) = self.verified {
            std::fs::write(verified_path(&self.cfg), g.to_string())
                .map_err(|e| format!("cannot record the verified GTID: {e}"))?;
        }
        std::fs::remove_file(&marker)
            .map_err(|e| format!("cannot remove {}: {e}", marker.display()))?;
        info!(gtid_state = %state_sql, "rebuilt datadir: GTID state set from the backup");
        Ok(())
    }

    /// Tells the cluster what this node's mariadbd holds *and has been verified to be part of
    /// the log*: the log is compacted only below what every healthy member reports (DESIGN §3
    /// "Log retention"), so a restart never finds unverified local transactions below the
    /// compaction point (which the rejoin check would have to call a divergence).
    fn report_member(&self, healthy: bool, diverged: bool) {
        self.log.report_member(self.verified, healthy, diverged);
    }

    /// Moves the verified point up to the GTID mariadbd has applied, when the log holds exactly
    /// that transaction (same domain, server and seq). Sound because a replica applies only what
    /// serve sent from the log, and a master only commits what the log accepted; a transaction
    /// written behind QuorumSQL's back shows up as a GTID the log does not hold at that seq.
    async fn advance_verified(&mut self) {
        let Some(applied) = self
            .state
            .borrow()
            .applied_gtid
            .as_ref()
            .and_then(|g| g.get(0))
        else {
            return;
        };
        if self.verified.is_some_and(|v| v.seq >= applied.seq) {
            return;
        }
        if let Ok(quorumsql_log::runtime::SeqLookup::Txn { gtid, .. }) =
            self.log.lookup_seq(applied.domain, applied.seq).await
        {
            if gtid == applied {
                self.verified = Some(applied);
                if let Err(e) = std::fs::write(verified_path(&self.cfg), applied.to_string()) {
                    warn!(%e, "cannot record the verified GTID");
                }
            }
        }
    }

    fn set_priority(&mut self, p: i64) {
        if p != self.priority {
            self.priority = p;
            self.log.set_priority(p);
        }
    }

    fn best_peer(&self) -> Option<NodeId> {
        best_peer_of(&self.log, self.me)
    }

    async fn stop_capture(&mut self) {
        if let Some(c) = self.capture.take() {
            let _ = c.shutdown().await;
        }
    }

    fn capture_ended(&self) -> Option<String> {
        let outcome = self.capture.as_ref()?.outcome()?;
        Some(match outcome {
            Ok(()) => "capture stopped".to_string(),
            Err(e) => e.to_string(),
        })
    }

    // ----- helpers -------------------------------------------------------------------------

    /// DESIGN §3 rejoin check (a) and (b). `at_start`: also require that the binlog file this
    /// start created holds no transaction (crash recovery wrote nothing).
    async fn rejoin_check(&mut self, at_start: bool) -> Result<(), StartError> {
        let index = self.db.config().binlog_basename().with_extension("index");
        let cap = self.cfg.mariadb.max_transaction_bytes as usize + (1 << 20);
        let files = tokio::task::block_in_place(|| {
            crate::serve::binlog_file::read_binlog_index(&index, cap)
        })
        .map_err(|e| StartError::Retry(format!("cannot read the local binlog: {e}")))?;
        if at_start {
            if let Some(newest) = files.last() {
                if let Some(t) = newest.txns.first() {
                    return Err(StartError::Diverged(
                        rejoin::Divergence::WrittenByRecovery { gtid: t.txn.gtid }.to_string(),
                    ));
                }
            }
        }
        let mut local = Vec::new();
        for f in &files {
            for t in &f.txns {
                let digest = t.digest().map_err(|e| {
                    StartError::Diverged(format!(
                        "local transaction {} is unreadable: {e}",
                        t.txn.gtid
                    ))
                })?;
                local.push(rejoin::LocalTxn {
                    gtid: t.txn.gtid,
                    digest: digest.0,
                });
            }
        }
        // After a restart the local log may not have learned yet that its newest entries are
        // committed (its stored commit index lags): a local transaction beyond what the log has
        // applied is "not in the log" only once the log has caught up past it. Wait for that,
        // bounded; the canary's commits move the log on even when clients are idle.
        let newest_local = local
            .iter()
            .filter(|t| {
                !self
                    .verified
                    .is_some_and(|v| v.domain == t.gtid.domain && t.gtid.seq <= v.seq)
            })
            .map(|t| t.gtid)
            .max_by_key(|g| g.seq);
        if let Some(newest) = newest_local {
            let caught_up = |log: &LogHandle| {
                log.status()
                    .gtid_state
                    .get(newest.domain)
                    .is_some_and(|g| g.seq >= newest.seq)
            };
            let deadline = Instant::now() + REJOIN_CATCH_UP;
            while !caught_up(&self.log) {
                if Instant::now() >= deadline {
                    let at = self.log.status().gtid_state.get(newest.domain);
                    return Err(StartError::Retry(format!(
                        "the global binlog has not caught up to local transaction {newest} yet (it is at {}); checking again",
                        at.map(|g| g.to_string()).unwrap_or_else(|| "nothing".into())
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut answers = std::collections::HashMap::new();
        for t in &local {
            if self
                .verified
                .is_some_and(|v| v.domain == t.gtid.domain && t.gtid.seq <= v.seq)
            {
                continue;
            }
            let a = self
                .log
                .lookup_seq(t.gtid.domain, t.gtid.seq)
                .await
                .map_err(|e| StartError::Retry(format!("log lookup: {e}")))?;
            answers.insert((t.gtid.domain, t.gtid.seq), a);
        }
        let verdict = rejoin::check(&local, self.verified, |domain, seq| {
            match answers.get(&(domain, seq)) {
                Some(quorumsql_log::runtime::SeqLookup::Txn { gtid, digest }) => {
                    rejoin::LogLookup::Txn {
                        gtid: *gtid,
                        digest: *digest,
                    }
                }
                Some(quorumsql_log::runtime::SeqLookup::Compacted) => rejoin::LogLookup::Compacted,
                _ => rejoin::LogLookup::Missing,
            }
        });
        match verdict {
            Ok(v) => {
                if v != self.verified {
                    self.verified = v;
                    if let Some(g) = v {
                        let _ = std::fs::write(verified_path(&self.cfg), g.to_string());
                    }
                }
                Ok(())
            }
            Err(d) => Err(StartError::Diverged(d.to_string())),
        }
    }

    async fn configure_replication(&mut self) -> Result<(), String> {
        let me = self.cfg.me().clone();
        let (user, password) = crate::serve_credentials(&self.cfg);
        self.exec("STOP SLAVE").await?;
        self.exec("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos")
            .await?;
        self.exec(&format!(
            "CHANGE MASTER TO MASTER_HOST='{}', MASTER_PORT={}, MASTER_USER='{user}', \
             MASTER_PASSWORD='{password}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, \
             MASTER_HEARTBEAT_PERIOD=1",
            me.serve.ip(),
            me.serve.port()
        ))
        .await?;
        self.exec("START SLAVE").await
    }

    async fn bootstrap_accounts(&mut self) -> Result<(), String> {
        let (Some(user), Some(password)) = (
            self.cfg.mariadb.bootstrap_user.clone(),
            self.cfg.mariadb.bootstrap_password.clone(),
        ) else {
            return Ok(());
        };
        // Identical on every node and outside the binlog: the account exists before the first
        // master does, and replicas do not see a GTID the log lacks.
        self.exec(&format!(
            "CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{password}'"
        ))
        .await?;
        self.exec(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, CREATE TEMPORARY TABLES, \
             LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, ALTER ROUTINE, TRIGGER, \
             REFERENCES ON `%`.* TO '{user}'@'%'"
        ))
        .await
    }

    async fn admin(&mut self) -> Result<&mut SqlConn, String> {
        if self.admin.as_ref().is_some_and(|c| c.is_broken()) {
            self.admin = None;
        }
        if self.admin.is_none() {
            let mut conn = SqlConn::connect_unix(self.db.config().socket(), "root", "")
                .await
                .map_err(|e| format!("cannot connect to mariadbd as admin: {e}"))?;
            // Admin statements stay out of the binlog (DESIGN §5).
            conn.exec("SET SESSION sql_log_bin = 0")
                .await
                .map_err(|e| format!("admin session: {e}"))?;
            self.admin = Some(conn);
        }
        self.admin
            .as_mut()
            .ok_or_else(|| "admin connection unavailable".to_string())
    }

    async fn exec(&mut self, sql: &str) -> Result<(), String> {
        let r = match self.admin().await {
            Ok(c) => c
                .exec(sql)
                .await
                .map(|_| ())
                .map_err(|e| format!("{sql}: {e}")),
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.admin = None;
        }
        r
    }

    async fn query(&mut self, sql: &str) -> Result<Vec<crate::sql::Row>, String> {
        let r = match self.admin().await {
            Ok(c) => c.query(sql).await.map_err(|e| format!("{sql}: {e}")),
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.admin = None;
        }
        r
    }

    /// The last column of the first row (`SHOW STATUS LIKE` answers name, value).
    async fn query_one(&mut self, sql: &str) -> Result<Option<String>, String> {
        let rows = self.query(sql).await?;
        Ok(rows.first().and_then(|r| {
            r.values()
                .last()
                .and_then(|v| v.as_deref().map(str::to_string))
        }))
    }
}

/// The most caught-up other voter, as the leader sees it (where leadership is handed).
fn best_peer_of(log: &LogHandle, me: NodeId) -> Option<NodeId> {
    log.status()
        .peers
        .iter()
        .filter(|p| p.node != me && p.voter)
        .max_by_key(|p| p.matched)
        .map(|p| p.node)
}

/// How long the rejoin check waits for the log to catch up to the local binlog before it
/// retries the start.
const REJOIN_CATCH_UP: Duration = Duration::from_secs(10);

/// A diverged node waits this long before its first rebuild attempt; failures back off up to
/// [`REBUILD_MAX_BACKOFF`].
const REBUILD_FIRST_DELAY: Duration = Duration::from_secs(3);
const REBUILD_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where a divergence found while running (not by the rejoin check) is recorded.
fn diverged_path(cfg: &NodeConfig) -> std::path::PathBuf {
    cfg.node.data_dir.join("diverged_reason")
}

fn write_synced_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn verified_path(cfg: &NodeConfig) -> std::path::PathBuf {
    cfg.node.data_dir.join("verified_gtid")
}

#[derive(Debug)]
enum StartError {
    /// Try again after a fence/restart.
    Retry(String),
    /// The node's history is not part of the log.
    Diverged(String),
}

/// Commits a canary row through the normal write path (binlog, capture, log, ACK) and checks
/// that it got a new GTID: MariaDB may have switched binary logging off while `@@log_bin` still
/// reads 1 (design-review 2). The schema is created only when missing, because DDL is not
/// rolled back by crash recovery: a canary DDL caught by a fence would diverge this node.
async fn canary_commit(
    socket: std::path::PathBuf,
    me: u64,
    epoch: Epoch,
    no_tx_before: Option<u64>,
) -> Result<u64, String> {
    let e = |e: crate::sql::SqlError| format!("canary: {e}");
    let mut conn = SqlConn::connect_unix(&socket, "root", "")
        .await
        .map_err(e)?;
    let exists = conn
        .query_value(
            "SELECT COUNT(*) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = 'quorumsql' AND TABLE_NAME = 'heartbeat'",
        )
        .await
        .map_err(e)?;
    if exists.as_deref() != Some("1") {
        conn.exec("CREATE DATABASE IF NOT EXISTS quorumsql")
            .await
            .map_err(e)?;
        conn.exec(
            "CREATE TABLE IF NOT EXISTS quorumsql.heartbeat (node INT UNSIGNED PRIMARY KEY, \
             epoch BIGINT UNSIGNED NOT NULL, at TIMESTAMP(6) NOT NULL) ENGINE=InnoDB",
        )
        .await
        .map_err(e)?;
    }
    conn.exec(&format!(
        "REPLACE INTO quorumsql.heartbeat VALUES ({me}, {}, NOW(6))",
        epoch.0
    ))
    .await
    .map_err(e)?;
    // The session's own last GTID: empty when the commit bypassed the binlog.
    let gtid = conn.query_value("SELECT @@last_gtid").await.map_err(e)?;
    if gtid.as_deref().is_none_or(str::is_empty) {
        return Err(format!("canary commit produced no GTID: {BINLOG_OFF}"));
    }
    // DESIGN §2 health of the write path. SHOW STATUS can wait behind commits, which is why
    // these checks live here, on the canary's own task, and not in the master loop.
    let rows = conn
        .query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'")
        .await
        .map_err(e)?;
    let status = |name: &str| {
        rows.iter()
            .find(|r| r.get_idx(0).is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .and_then(|r| r.get_idx(1))
            .map(str::to_string)
            .unwrap_or_default()
    };
    if status("Rpl_semi_sync_master_status") != "ON" {
        return Err("semi-sync is not active on the master: commits could skip the log".into());
    }
    let clients = status("Rpl_semi_sync_master_clients");
    if clients != "1" {
        return Err(format!(
            "the master has {clients} semi-sync clients; exactly one (capture) is safe"
        ));
    }
    let no_tx: u64 = status("Rpl_semi_sync_master_no_tx").parse().unwrap_or(0);
    if no_tx_before.is_some_and(|b| no_tx > b) {
        return Err(format!(
            "Rpl_semi_sync_master_no_tx grew to {no_tx}: a commit went through without an ACK"
        ));
    }
    let master = conn.query("SHOW MASTER STATUS").await.map_err(e)?;
    if master.is_empty() {
        return Err(format!("SHOW MASTER STATUS is empty: {BINLOG_OFF}"));
    }
    let _ = conn.quit().await;
    Ok(no_tx)
}
