//! Planned switchover (DESIGN §3): the master hands its role to a chosen replica without failing
//! a commit.
//!
//! The order, and why:
//! 1. **Drain.** [`SwitchoverGate`] is raised: the proxy forwards no new client packet (a packet
//!    that arrives is held by the proxy for up to its lease pause, exactly like a short lease
//!    lapse) and new RW connections wait for a route instead of landing here. Requests already
//!    forwarded — a COMMIT waiting for its semi-sync ACK in particular — go on through capture →
//!    log → ACK as usual. Roles watches `information_schema.PROCESSLIST` until no client
//!    statement is running. If one still runs after `drain`, nothing was changed yet: the gate
//!    is lowered, held packets go on, and the switchover fails with the statements named.
//! 2. **read_only=ON.** `SET GLOBAL read_only` itself waits for every commit in progress (it
//!    takes the global read lock's commit phase), so once it returns nothing waits for an ACK.
//!    If it does not return within `read_only`, something still waits: DESIGN says fence, and
//!    we do (SIGKILL; the waiting commit's outcome is then decided by the log, never by a local
//!    commit).
//! 3. **transfer_leader.** The log gives the lease up before it sends anything (raft-rs's
//!    CAMPAIGN_TRANSFER bypasses the voters' leader check, so a lease must not outlive this
//!    call) and never takes it again in this term. From here there is no undo: if leadership
//!    has not moved within `transfer`, the node fences and a normal election follows — safe,
//!    because mariadbd is read-only and nothing is in flight.
//! 4. The old master leaves through the normal demotion path: roles fences (SIGKILL) and
//!    restarts mariadbd as a replica. The new master promotes (DESIGN §3 steps 1–8).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorumsql_log::NodeId;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::admin::NodeStatus;

/// Raised while a switchover drains the master: the proxy forwards no new client packet and
/// routes no new RW connection here. Shared by roles (which raises and lowers it) and the
/// proxy's oracle (which reads it before every client packet).
#[derive(Debug, Clone, Default)]
pub struct SwitchoverGate(Arc<AtomicBool>);

impl SwitchoverGate {
    pub fn draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn set(&self, draining: bool) {
        self.0.store(draining, Ordering::Release);
    }
}

/// One switchover asked for through the admin port; roles answers on `reply`.
#[derive(Debug)]
pub struct SwitchoverRequest {
    pub to: NodeId,
    pub reply: oneshot::Sender<Result<SwitchoverReport, SwitchoverError>>,
}

/// The sending side, held by the admin server.
pub type SwitchoverSender = mpsc::Sender<SwitchoverRequest>;

/// What a successful switchover did, in the order it did it. Served as JSON by
/// `POST /switchover`; field names are an interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SwitchoverReport {
    pub from: u64,
    pub to: u64,
    /// The old master's epoch (its raft term).
    pub epoch: u64,
    /// From raising the gate until no client statement ran.
    pub drain_ms: u64,
    /// `SET GLOBAL read_only = ON` (waits for commits still in progress).
    pub read_only_ms: u64,
    /// From `transfer_leader` until this node was no longer the raft leader.
    pub transfer_ms: u64,
}

/// Why a switchover was refused or failed. Every variant says whether anything changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchoverError {
    #[error("bad request: {0}; nothing was changed")]
    BadRequest(String),
    #[error("node{0} is not a member of this cluster; nothing was changed")]
    NoSuchNode(u64),
    #[error("node{me} is not the master{}; nothing was changed", master.map(|m| format!(" (the master is node{m})")).unwrap_or_else(|| " and no master is known right now".into()))]
    NotMaster { me: u64, master: Option<u64> },
    #[error("node{0} is the master already; nothing was changed")]
    AlreadyMaster(u64),
    #[error("node{node} cannot take over: {why}; nothing was changed")]
    TargetNotReady { node: u64, why: String },
    #[error("no replica can take over: {0}; nothing was changed")]
    NoHealthyReplica(String),
    #[error("a switchover is already in progress on this node; nothing was changed")]
    Busy,
    #[error("client statements still running after {waited:?}: {running}; writes resumed on node{me}, nothing was changed (retry when they finish)")]
    DrainTimeout {
        me: u64,
        waited: Duration,
        running: String,
    },
    #[error("the master lost its role during the switchover ({0}); a normal failover follows")]
    MasterLost(String),
    #[error("{0}; this node fenced its mariadbd (SIGKILL) and a normal failover follows: commits in flight get an unknown outcome, none is lost")]
    Fenced(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl SwitchoverError {
    /// HTTP status for the admin answer: 4xx when the request itself cannot be done as asked
    /// (and nothing changed), 5xx when the switchover started and failed.
    pub fn http_status(&self) -> u16 {
        match self {
            SwitchoverError::BadRequest(_) => 400,
            SwitchoverError::NoSuchNode(_) => 404,
            SwitchoverError::NotMaster { .. }
            | SwitchoverError::AlreadyMaster(_)
            | SwitchoverError::TargetNotReady { .. }
            | SwitchoverError::NoHealthyReplica(_)
            | SwitchoverError::Busy => 409,
            SwitchoverError::DrainTimeout { .. } => 503,
            SwitchoverError::MasterLost(_)
            | SwitchoverError::Fenced(_)
            | SwitchoverError::Internal(_) => 500,
        }
    }
}

/// How far behind the log a replica's mariadbd may be and still be chosen: promotion waits until
/// it applied everything, and writes are paused for that long.
pub const MAX_TARGET_LAG_TXNS: u64 = 1000;

fn seq_of(gtid: Option<&str>) -> Option<u64> {
    // "0-1-42" (a GTID) or "0-1-42,1-2-3" (a GTID position; domain 0 is the only one we write).
    gtid?
        .split(',')
        .map(str::trim)
        .find(|g| g.starts_with("0-"))
        .and_then(|g| g.rsplit('-').next())
        .and_then(|s| s.parse().ok())
}

/// Picks the node to hand over to, from the statuses of every member (`me` is the master):
/// `requested` if it is a healthy, reachable replica within [`MAX_TARGET_LAG_TXNS`] of the log,
/// else the most caught-up such replica.
pub fn choose_target(
    nodes: &[NodeStatus],
    me: u64,
    requested: Option<u64>,
) -> Result<u64, SwitchoverError> {
    let log_seq = nodes
        .iter()
        .find(|n| n.id == me)
        .and_then(|n| seq_of(n.last_gtid.as_deref()))
        .unwrap_or(0);
    // Why a node cannot take over, or its lag in transactions.
    let judge = |n: &NodeStatus| -> Result<u64, String> {
        if n.role == "unreachable" {
            return Err(format!(
                "its admin port does not answer ({})",
                n.problems.join("; ")
            ));
        }
        if n.role != "replica" {
            return Err(format!("it is {}, not a replica", n.role));
        }
        if !n.healthy {
            return Err(format!("it is not healthy: {}", n.problems.join("; ")));
        }
        let applied = seq_of(n.applied_gtid.as_deref()).unwrap_or(0);
        let lag = log_seq.saturating_sub(applied);
        if lag > MAX_TARGET_LAG_TXNS {
            return Err(format!(
                "its mariadbd is {lag} transactions behind the log (at most {MAX_TARGET_LAG_TXNS})"
            ));
        }
        Ok(lag)
    };
    if let Some(to) = requested {
        if to == me {
            return Err(SwitchoverError::AlreadyMaster(me));
        }
        let n = nodes
            .iter()
            .find(|n| n.id == to)
            .ok_or(SwitchoverError::NoSuchNode(to))?;
        return judge(n)
            .map(|_| to)
            .map_err(|why| SwitchoverError::TargetNotReady { node: to, why });
    }
    let mut why_not = Vec::new();
    let mut best: Option<(u64, u64)> = None;
    for n in nodes.iter().filter(|n| n.id != me) {
        match judge(n) {
            Ok(lag) if best.is_none_or(|(_, l)| lag < l) => best = Some((n.id, lag)),
            Ok(_) => {}
            Err(why) => why_not.push(format!("node{}: {why}", n.id)),
        }
    }
    best.map(|(id, _)| id)
        .ok_or_else(|| SwitchoverError::NoHealthyReplica(why_not.join("; ")))
}

/// Parses the `to` parameter: `2` or `node2`.
pub fn parse_node(s: &str) -> Result<u64, SwitchoverError> {
    let digits = s.strip_prefix("node").unwrap_or(s);
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(SwitchoverError::BadRequest(format!(
            "`to` must be a node id like 2 or node2, not {s:?}"
        ))),
    }
}

/// Timing of the switchover steps.
#[derive(Debug, Clone)]
pub struct SwitchoverTiming {
    /// Waiting for running client statements; kept below the proxy's lease pause so an undo
    /// lets held packets go on instead of failing them.
    pub drain: Duration,
    /// `SET GLOBAL read_only = ON`; longer means a commit still waits for its ACK: fence.
    pub read_only: Duration,
    /// From `transfer_leader` until leadership moved.
    pub transfer: Duration,
    pub poll: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, role: &str, healthy: bool, applied: Option<&str>) -> NodeStatus {
        NodeStatus {
            id,
            role: role.into(),
            healthy,
            applied_gtid: applied.map(str::to_string),
            last_gtid: Some("0-1-5000".into()),
            ..NodeStatus::default()
        }
    }

    fn cluster() -> Vec<NodeStatus> {
        vec![
            node(1, "master", true, Some("0-1-5000")),
            node(2, "replica", true, Some("0-1-4990")),
            node(3, "replica", true, Some("0-1-4999")),
        ]
    }

    #[test]
    fn picks_the_most_caught_up_healthy_replica() {
        assert_eq!(choose_target(&cluster(), 1, None), Ok(3));
        let mut c = cluster();
        c[2].healthy = false;
        c[2].problems = vec!["replication stopped".into()];
        assert_eq!(choose_target(&c, 1, None), Ok(2));
    }

    #[test]
    fn honours_a_requested_target_only_when_it_can_take_over() {
        assert_eq!(choose_target(&cluster(), 1, Some(2)), Ok(2));
        assert_eq!(
            choose_target(&cluster(), 1, Some(1)),
            Err(SwitchoverError::AlreadyMaster(1))
        );
        assert_eq!(
            choose_target(&cluster(), 1, Some(9)),
            Err(SwitchoverError::NoSuchNode(9))
        );
        let mut c = cluster();
        c[1].applied_gtid = Some("0-1-10".into());
        assert!(matches!(
            choose_target(&c, 1, Some(2)),
            Err(SwitchoverError::TargetNotReady { node: 2, .. })
        ));
        c[1].role = "unreachable".into();
        assert!(matches!(
            choose_target(&c, 1, Some(2)),
            Err(SwitchoverError::TargetNotReady { node: 2, .. })
        ));
    }

    #[test]
    fn refuses_when_no_replica_is_healthy() {
        let mut c = cluster();
        c[1].healthy = false;
        c[2].role = "fenced".into();
        let e = choose_target(&c, 1, None).unwrap_err();
        assert!(matches!(e, SwitchoverError::NoHealthyReplica(_)), "{e}");
        assert!(e.to_string().contains("node2") && e.to_string().contains("node3"));
    }

    #[test]
    fn parses_node_names() {
        assert_eq!(parse_node("2"), Ok(2));
        assert_eq!(parse_node("node3"), Ok(3));
        for bad in ["", "0", "nodeX", "-1", "2;DROP"] {
            assert!(
                matches!(parse_node(bad), Err(SwitchoverError::BadRequest(_))),
                "{bad}"
            );
        }
    }
}
