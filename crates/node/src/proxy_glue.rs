//! Connects the proxy to the rest of the node: the forwarding rule (DESIGN §3) from the log and
//! roles, peer streams from the peer transport.
//!
//! `may_forward` runs before every client packet, so it reads two atomics: the epoch this node is
//! master of (kept by a watcher task from roles and log status) and the lease, which the log
//! runtime publishes every loop turn on CLOCK_BOOTTIME. The lease is the part that must be exact;
//! the epoch only has to be as fresh as the last status change.
//!
//! The commit check (invariant 7, design-review 2; see `proxy::commit_check`) is answered here
//! too: a GTID against the log's index, "is the binlog still open" with `SHOW MASTER STATUS` on
//! the local mariadbd's socket. A commit proven missing raises the [`CommitAlarm`], on which
//! roles fences this master, and stops forwarding at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorumsql_log::runtime::{AppliedPosition, LogHandle, SeqLookup};
use quorumsql_log::Role as RaftRole;
use quorumsql_peer::{NodeId, PeerNet, StreamPurpose};
use quorumsql_wire::Gtid;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::commit_alarm::CommitAlarm;
use crate::config::NodeConfig;
use crate::proxy::{
    CommitEvidence, CommitVerdict, DialFuture, MasterEpoch, PeerDialer, ProxyConfig, ProxyHandle,
    ProxyLimits, RoRoute, RouteOracle, RwRoute, VerifyFuture,
};
use crate::roles::switchover::SwitchoverGate;
use crate::roles::{Role, RoleSnapshot};
use crate::sql::{ConnectOptions, SqlConn};

/// How long a commit's GTID may take to show up as accepted in this node's log. Capture ACKs a
/// commit only after the local state machine accepted it, and mariadbd answers only after the
/// ACK, so the log normally holds it already; the wait covers publication order only.
const GTID_WAIT: Duration = Duration::from_millis(100);
/// Bound on asking the local mariadbd whether its binlog is open (connect, then query).
const BINLOG_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The route oracle over the log and roles.
struct NodeOracle {
    me: NodeId,
    log: LogHandle,
    roles: watch::Receiver<RoleSnapshot>,
    /// The epoch this node may forward RW packets under; 0 = none.
    forwarding_epoch: AtomicU64,
    generation: watch::Sender<u64>,
    /// Raised by roles while a planned switchover drains this master. Deliberately not part of
    /// `forwarding_epoch`: draining must not bump the routing generation (that would close every
    /// RW session as "outcome unknown"), and an undone drain must let held packets go on.
    gate: SwitchoverGate,
    /// Raised when a commit was acknowledged by mariadbd but is not in the log.
    alarm: CommitAlarm,
    /// The raft term when this oracle raised the alarm (0: it did not).
    alarm_epoch: AtomicU64,
    applied: watch::Receiver<AppliedPosition>,
    /// The local mariadbd's socket, and a root connection on it kept for the binlog check.
    socket: PathBuf,
    admin: tokio::sync::Mutex<Option<SqlConn>>,
}

impl NodeOracle {
    /// Whether the log holds `g`, waiting up to [`GTID_WAIT`] for it to be applied.
    async fn gtid_in_log(&self, g: Gtid) -> CommitVerdict {
        let deadline = tokio::time::Instant::now() + GTID_WAIT;
        let mut applied = self.applied.clone();
        loop {
            match self.log.lookup_seq(g.domain, g.seq).await {
                Ok(SeqLookup::Txn { gtid, .. }) if gtid == g => return CommitVerdict::Logged,
                Ok(SeqLookup::Txn { gtid, .. }) => {
                    return CommitVerdict::NotLogged(format!(
                        "mariadbd acknowledged commit {g} but the global binlog holds {gtid} at \
                         that sequence number"
                    ))
                }
                Ok(SeqLookup::Missing | SeqLookup::UnknownDomain) => {
                    return CommitVerdict::NotLogged(format!(
                        "mariadbd acknowledged commit {g} but the global binlog has no \
                         transaction with that GTID"
                    ))
                }
                Ok(SeqLookup::Compacted) => {
                    return CommitVerdict::Unknown(format!(
                        "commit {g} is older than the oldest retained log entry"
                    ))
                }
                Ok(SeqLookup::Ahead) => {}
                Err(e) => return CommitVerdict::Unknown(format!("global binlog: {e}")),
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return CommitVerdict::Unknown("the global binlog stopped".into()),
                Err(_) => {
                    let last = self.log.status().last_gtid;
                    return CommitVerdict::NotLogged(format!(
                        "mariadbd acknowledged commit {g} but the global binlog has not \
                         accepted it {GTID_WAIT:?} later (last accepted: {}): the commit \
                         bypassed the semi-sync wait",
                        last.map_or("none".into(), |l| l.to_string())
                    ));
                }
            }
        }
    }

    /// Whether the local mariadbd's binlog is open: `SHOW MASTER STATUS` has no row once
    /// MariaDB "turned logging off" after a failed rotation (verified on 10.11.19; `@@log_bin`
    /// still reads 1 then).
    async fn binlog_open(&self) -> CommitVerdict {
        let mut admin = self.admin.lock().await;
        let mut last_error = String::new();
        for _ in 0..2 {
            if admin.is_none() {
                let mut opts = ConnectOptions::new("root", "");
                opts.connect_timeout = BINLOG_CHECK_TIMEOUT;
                opts.query_timeout = BINLOG_CHECK_TIMEOUT;
                match SqlConn::connect_unix_with(&self.socket, &opts).await {
                    Ok(c) => *admin = Some(c),
                    Err(e) => {
                        last_error = e.to_string();
                        continue;
                    }
                }
            }
            let Some(conn) = admin.as_mut() else { continue };
            match conn.query("SHOW MASTER STATUS").await {
                Ok(rows) if rows.is_empty() => {
                    return CommitVerdict::NotLogged(
                        "mariadbd acknowledged a write transaction that has no GTID, and SHOW \
                         MASTER STATUS on its socket is empty: binary logging is off (a failed \
                         binlog rotation; see mariadbd's error log)"
                            .into(),
                    )
                }
                Ok(_) => return CommitVerdict::Logged,
                Err(e) => {
                    last_error = e.to_string();
                    *admin = None;
                }
            }
        }
        CommitVerdict::Unknown(format!(
            "cannot ask the local mariadbd whether its binlog is open: {last_error}"
        ))
    }

    /// The epoch this node is master of right now, if the slow-changing conditions hold: roles
    /// says master of T, the log says raft leader of term T with `MasterReady{self, T}` applied
    /// and no transfer under way.
    fn compute_epoch(&self) -> u64 {
        let role = self.roles.borrow();
        let Some(epoch) = role.master_epoch.filter(|_| role.role == Role::Master) else {
            return 0;
        };
        let st = self.log.status();
        let ok = st.role == RaftRole::Leader
            && st.term == epoch.0
            && !st.transferring
            && st.master == Some((self.me, epoch));
        if ok {
            epoch.0
        } else {
            0
        }
    }
}

impl RouteOracle for NodeOracle {
    fn rw_route(&self) -> RwRoute {
        if self.gate.draining() {
            // A new connection waits (bounded by the proxy's no-master wait) and then goes to
            // whichever node is master after the switchover, instead of being held here.
            return RwRoute::Unavailable {
                reason: "planned switchover in progress".into(),
                retry_after: Duration::from_millis(200),
            };
        }
        let epoch = self.forwarding_epoch.load(Ordering::Acquire);
        if epoch != 0 {
            return RwRoute::Local {
                master_epoch: MasterEpoch(epoch),
            };
        }
        let st = self.log.status();
        // Forward only to a master we can reach right now: a killed master is known dead to
        // the peer transport at once, long before the next MasterReady names its successor,
        // and the proxy then waits (bounded) for a new master instead of failing the client.
        let reachable = |node: NodeId| {
            self.log
                .peers()
                .peer_status(node)
                .is_some_and(|p| p.connected)
        };
        match st.master {
            Some((node, _)) if node != self.me && st.leader == Some(node) && reachable(node) => {
                RwRoute::Forward { to: node }
            }
            _ => RwRoute::Unavailable {
                reason: "no master right now (election or promotion in progress)".into(),
                retry_after: Duration::from_millis(500),
            },
        }
    }

    /// While a switchover drains, no client packet is forwarded: the proxy holds it for up to
    /// its lease pause (as for a short lease lapse). If the drain is undone in that time the
    /// packet goes on; if the switchover completes, the master change closes the session.
    fn may_forward(&self, epoch: MasterEpoch) -> bool {
        if crate::planted::active(crate::planted::Bug::SkipLease) {
            // Planted bug (test builds only): a connection opened under a master keeps
            // forwarding with no lease and no epoch check.
            return epoch.0 != 0;
        }
        epoch.0 != 0
            && !self.gate.draining()
            && self.forwarding_epoch.load(Ordering::Acquire) == epoch.0
            && self.log.holds_lease()
            // A master that acknowledged a commit outside the log serves nothing more.
            && self.alarm.raised().is_none()
    }

    fn ro_route(&self) -> RoRoute {
        let role = self.roles.borrow().clone();
        match role.role {
            Role::Replica if role.problems.is_empty() => RoRoute::Local,
            Role::Master | Role::Promoting => {
                // Reads on the master node go to a replica (DESIGN §4): any reachable peer.
                let peers = self.log.peers().status();
                match peers.iter().find(|(id, p)| **id != self.me && p.connected) {
                    Some((id, _)) => RoRoute::Forward { to: *id },
                    None => RoRoute::Refuse {
                        reason: "this node is the master and no replica is reachable".into(),
                    },
                }
            }
            Role::Diverged => RoRoute::Refuse {
                reason: "this node's data diverged from the cluster and must be rebuilt".into(),
            },
            other => RoRoute::Refuse {
                reason: format!(
                    "this node's database is not serving reads now ({}){}",
                    other.as_str(),
                    role.problems
                        .first()
                        .map(|p| format!(": {p}"))
                        .unwrap_or_default()
                ),
            },
        }
    }

    fn subscribe_master_changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn commit_checks(&self) -> bool {
        true
    }

    /// The newest accepted GTID is this node's mariadbd's and at or past `gtid`, which is also
    /// this mariadbd's: the log holds this mariadbd's binlog history (promotion verified it by
    /// content), so it holds `gtid`.
    fn gtid_logged_now(&self, gtid: &Gtid) -> bool {
        let own = u64::from(gtid.server) == self.me.0;
        own && self.applied.borrow().last_gtid.is_some_and(|l| {
            l.domain == gtid.domain && l.server == gtid.server && l.seq >= gtid.seq
        })
    }

    fn verify_commit(&self, evidence: CommitEvidence) -> VerifyFuture<'_> {
        Box::pin(async move {
            let verdict = match evidence {
                CommitEvidence::Gtid(g) => self.gtid_in_log(g).await,
                CommitEvidence::NoGtid => self.binlog_open().await,
            };
            if let CommitVerdict::NotLogged(why) = &verdict {
                tracing::error!(%why, "commit alarm: this master acknowledged a commit outside the global binlog");
                // The raft term now: at least the epoch the session forwarded under.
                self.alarm_epoch
                    .store(self.log.status().term.max(1), Ordering::Release);
                self.alarm.raise(why.clone());
            }
            verdict
        })
    }
}

struct NetDialer(PeerNet);

impl PeerDialer for NetDialer {
    fn open(&self, to: NodeId) -> DialFuture<'_> {
        Box::pin(async move {
            self.0
                .open_stream(to, StreamPurpose::Proxy)
                .await
                .map_err(std::io::Error::other)
        })
    }
}

/// Starts the RW and RO ports and the tasks that keep them routed. The proxy stops when
/// `shutdown` fires or the returned handle is dropped.
pub async fn start(
    cfg: &NodeConfig,
    log: LogHandle,
    roles: watch::Receiver<RoleSnapshot>,
    net: PeerNet,
    gate: SwitchoverGate,
    alarm: CommitAlarm,
    shutdown: CancellationToken,
) -> Result<Arc<ProxyHandle>, String> {
    let me = cfg.me();
    let (generation, _) = watch::channel(0u64);
    let oracle = Arc::new(NodeOracle {
        me: NodeId(cfg.node.id),
        log: log.clone(),
        roles: roles.clone(),
        forwarding_epoch: AtomicU64::new(0),
        generation,
        gate,
        alarm,
        alarm_epoch: AtomicU64::new(0),
        applied: log.subscribe_applied(),
        socket: crate::mariadb::MariadbConfig::from_node_config(cfg).socket(),
        admin: tokio::sync::Mutex::new(None),
    });
    let proxy_cfg = ProxyConfig {
        rw_listen: me.rw,
        ro_listen: me.ro,
        mariadb_addr: std::net::SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            me.mariadb_port,
        ),
        limits: ProxyLimits {
            // DESIGN §3: a lease lapse shorter than the election timeout only pauses forwarding
            // (a slow heartbeat round must not cut clients off); a longer one fences, and the
            // master change then closes the sessions.
            lease_pause: cfg.raft.tick() * cfg.raft.election_ticks_max as u32,
            ..ProxyLimits::default()
        },
    };
    let proxy = Arc::new(
        ProxyHandle::start(proxy_cfg, oracle.clone(), Arc::new(NetDialer(net.clone())))
            .await
            .map_err(|e| e.to_string())?,
    );

    // Keep the forwarding epoch and the routing generation current.
    {
        let oracle = oracle.clone();
        let proxy = proxy.clone();
        let mut roles = roles.clone();
        let mut status = log.subscribe_status();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut last_epoch = 0u64;
            let mut last_master = None;
            let mut last_role = Role::Starting;
            loop {
                let mut epoch = oracle.compute_epoch();
                if epoch == 0
                    && last_epoch != 0
                    && roles.borrow().role == Role::Master
                    && crate::planted::active(crate::planted::Bug::SkipLease)
                {
                    // Planted bug (test builds only): while roles still calls this node master,
                    // new RW sessions keep going to the local mariadbd under the old epoch.
                    epoch = last_epoch;
                }
                oracle.forwarding_epoch.store(epoch, Ordering::Release);
                // The alarm stops forwarding until this node is master of a later epoch: it
                // was demoted in between, and demotion fences (SIGKILLs) the mariadbd whose
                // binlog had turned itself off.
                let raised_in = oracle.alarm_epoch.load(Ordering::Acquire);
                if epoch != 0 && raised_in != 0 && epoch > raised_in {
                    tracing::info!(
                        epoch,
                        raised_in,
                        "commit alarm cleared: master again in a later epoch"
                    );
                    oracle.alarm_epoch.store(0, Ordering::Release);
                    oracle.alarm.reset();
                }
                let master = status.borrow().master;
                let role = roles.borrow().role;
                // Planted bug (test builds only): a deposed master keeps its own sessions open.
                // Other nodes still close theirs, so clients move on to the new master and
                // its writes make the old master's reads stale.
                let planted = crate::planted::active(crate::planted::Bug::SkipLease)
                    && last_master.is_some_and(|(node, _)| node == oracle.me);
                if (epoch != last_epoch || master != last_master) && !planted {
                    oracle.generation.send_modify(|g| *g += 1);
                }
                if role == Role::Promoting && last_role != Role::Promoting {
                    // Promotion step 6: this mariadbd stops serving RO sessions.
                    proxy.close_local_ro_sessions();
                }
                (last_epoch, last_master, last_role) = (epoch, master, role);
                tokio::select! {
                    r = roles.changed() => if r.is_err() { return },
                    r = status.changed() => if r.is_err() { return },
                    _ = shutdown.cancelled() => {
                        proxy.shutdown();
                        return;
                    }
                }
            }
        });
    }

    // Connections other nodes' proxies forward to us, and backups a rebuilding node asks for.
    match net.take_stream_receiver() {
        Some(mut streams) => {
            let proxy = proxy.clone();
            let cfg = Arc::new(cfg.clone());
            let socket = Arc::new(crate::mariadb::MariadbConfig::from_node_config(&cfg).socket());
            let roles = roles.clone();
            let donor_log = log.clone();
            tokio::spawn(async move {
                while let Some(s) = streams.recv().await {
                    match s.purpose {
                        StreamPurpose::Proxy => proxy.serve_peer_stream(s.from, s.stream),
                        StreamPurpose::Rebuild => {
                            let donate = may_donate(&roles.borrow(), &donor_log.status());
                            tracing::info!(to = %s.from, ?donate, "rebuild: backup requested");
                            let (cfg, socket) = (cfg.clone(), socket.clone());
                            tokio::spawn(async move {
                                crate::rebuild::serve_backup(&cfg, &socket, s.stream, donate).await
                            });
                        }
                        other => {
                            warn!(from = %s.from, ?other, "peer stream with an unexpected purpose dropped")
                        }
                    }
                }
            });
        }
        None => return Err("the peer stream receiver was already taken".into()),
    }
    Ok(proxy)
}

/// Only a healthy replica donates a backup: its data holds nothing the log has not accepted
/// (see `rebuild`).
fn may_donate(role: &RoleSnapshot, log: &quorumsql_log::LogStatus) -> Result<(), String> {
    if role.role != Role::Replica || !role.healthy() {
        return Err(format!(
            "only a healthy replica donates; this node is {}{}",
            role.role.as_str(),
            if role.healthy() { "" } else { " and unhealthy" }
        ));
    }
    // A replica far behind the log (typically one that just restarted) would hand out an old
    // copy the joiner may not be able to continue from: let a caught-up replica donate.
    let applied = role
        .applied_gtid
        .as_ref()
        .and_then(|g| g.get(0))
        .map_or(0, |g| g.seq);
    let newest = log.last_gtid.map_or(0, |g| g.seq);
    if newest.saturating_sub(applied) > DONOR_MAX_LAG_TXNS {
        return Err(format!(
            "this replica is {} transactions behind the log; ask a caught-up one",
            newest - applied
        ));
    }
    Ok(())
}

/// How far behind the log a replica may be and still donate a backup.
const DONOR_MAX_LAG_TXNS: u64 = 10_000;
