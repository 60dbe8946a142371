//! The admin HTTP server: `/status` (JSON, stable field names that scripts depend on),
//! `/metrics` (Prometheus text), `/cluster`, and the control call `POST /switchover[?to=N]`
//! (planned switchover, DESIGN §3; answered by the master only).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One node's view of itself, served as `/status`. Field names are part of the interface:
/// `quorumsql status --json` and operators' scripts read them. Add fields; never rename.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    /// What this node's mariadbd is: `starting`, `replica`, `promoting`, `master`, `fenced`,
    /// `diverged`, `rebuilding`, `log-only`.
    pub role: String,
    /// The node the newest applied `MasterReady` names, if any.
    pub master: Option<u64>,
    pub epoch: u64,
    pub raft_term: u64,
    pub raft_leader: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Last GTID accepted into the global binlog, as this node knows it.
    pub last_gtid: Option<String>,
    /// The newest transaction this node's log no longer holds (compacted away), if any.
    #[serde(default)]
    pub log_compacted_through: Option<String>,
    /// `@@gtid_binlog_pos` of this node's mariadbd, when it answers.
    pub applied_gtid: Option<String>,
    /// Milliseconds of lease left (master only).
    pub lease_remaining_ms: Option<u64>,
    pub healthy: bool,
    /// Human-readable reasons this node is not healthy, each with what to do.
    pub problems: Vec<String>,
    /// The `quorumsql node` process and its mariadbd child.
    pub pid: u32,
    pub mariadb_pid: Option<u32>,
    pub peers: Vec<PeerStatus>,
    /// Client-port counters: connections open and total per port, bytes, errors by kind,
    /// routing changes.
    #[serde(default)]
    pub proxy: Option<crate::proxy::MetricsSnapshot>,
    /// Milliseconds left of this node's vote hold-off (DESIGN §6 invariant 9): while it runs,
    /// vote and pre-vote requests are dropped.
    #[serde(default)]
    pub vote_hold_off_remaining_ms: Option<u64>,
    /// Vote and pre-vote requests dropped because of the hold-off since this process started.
    #[serde(default)]
    pub votes_refused_in_hold_off: u64,
    /// A planned switchover is draining this master right now (no client packet is forwarded).
    #[serde(default)]
    pub switchover_in_progress: bool,
    /// The commit path on a master: transactions captured from its binlog, appends to the log,
    /// semi-sync ACKs sent back, and how long commits waited for them.
    #[serde(default)]
    pub capture: Option<CaptureStatus>,
}

/// Capture counters as `/status` shows them (master only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptureStatus {
    pub txns_captured: u64,
    pub bytes_captured: u64,
    /// Appends proposed to the log, and how many it accepted; txns_accepted / appends_accepted
    /// is the group-commit batch size.
    pub appends: u64,
    pub appends_accepted: u64,
    pub txns_accepted: u64,
    pub acks_sent: u64,
    /// From a transaction's last event reaching capture to its ACK being written: the time a
    /// commit waits for the global binlog.
    pub ack_latency_avg_us: u64,
    pub ack_latency_max_us: u64,
    /// Reconnects of the semi-sync dump connection to the local mariadbd.
    pub reconnects: u64,
}

impl From<&crate::capture::CaptureMetrics> for CaptureStatus {
    fn from(m: &crate::capture::CaptureMetrics) -> Self {
        let us = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        CaptureStatus {
            txns_captured: m.txns_captured,
            bytes_captured: m.bytes_captured,
            appends: m.appends,
            appends_accepted: m.appends_accepted,
            txns_accepted: m.txns_accepted,
            acks_sent: m.acks_sent,
            ack_latency_avg_us: us(m.ack_latency_sum)
                .checked_div(m.ack_latency_count)
                .unwrap_or(0),
            ack_latency_max_us: us(m.ack_latency_max),
            reconnects: m.reconnects,
        }
    }
}

/// What this node knows about one peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub id: u64,
    pub reachable: bool,
    /// Raft match index (only known on the leader).
    pub match_index: Option<u64>,
}

/// Produces the current status on demand.
pub type StatusFn = Arc<dyn Fn() -> NodeStatus + Send + Sync>;

/// What the admin server needs: this node's status, and every member's admin address for
/// `/cluster` (the whole cluster as this node can see it; `quorumsql status --admin` uses it).
#[derive(Clone)]
pub struct AdminState {
    pub status: StatusFn,
    pub members: Arc<Vec<(u64, SocketAddr)>>,
    /// Where switchover requests go (roles); `None` on nodes that cannot switch over.
    pub switchover: Option<crate::roles::switchover::SwitchoverSender>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on admin address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the admin port now (so a busy port fails the start) and returns the server future.
pub async fn bind(
    addr: SocketAddr,
    state: AdminState,
    shutdown: CancellationToken,
) -> Result<impl std::future::Future<Output = Result<(), AdminError>>, AdminError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let app = Router::new()
        .route("/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .route("/cluster", get(get_cluster))
        .route("/switchover", post(post_switchover))
        .with_state(state);
    Ok(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(|source| AdminError::Serve { addr, source })
    })
}

async fn get_status(State(state): State<AdminState>) -> Json<NodeStatus> {
    Json((state.status)())
}

async fn get_cluster(State(state): State<AdminState>) -> Json<crate::admin_client::ClusterStatus> {
    let me = (state.status)();
    // Ask the others over HTTP; answer for this node directly (no request to ourselves).
    let others: Vec<(u64, SocketAddr)> = state
        .members
        .iter()
        .filter(|(id, _)| *id != me.id)
        .copied()
        .collect();
    let mut cluster =
        crate::admin_client::ClusterStatus::gather(&others, std::time::Duration::from_secs(1))
            .await;
    let mut nodes = std::mem::take(&mut cluster.nodes);
    nodes.push(me);
    nodes.sort_by_key(|n| n.id);
    Json(crate::admin_client::ClusterStatus::from_nodes(nodes))
}

/// The JSON body of a failed control call. `master`/`master_admin` name where to ask instead
/// when this node is not the master.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlError {
    pub error: String,
    #[serde(default)]
    pub master: Option<u64>,
    #[serde(default)]
    pub master_admin: Option<SocketAddr>,
}

/// How long the admin call waits for roles to finish a switchover: drain, read_only and the
/// transfer are each bounded well below this.
const SWITCHOVER_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn post_switchover(State(state): State<AdminState>, RawQuery(query): RawQuery) -> Response {
    use crate::roles::switchover::{choose_target, parse_node, SwitchoverError, SwitchoverRequest};
    let me = (state.status)();
    let fail = |e: SwitchoverError| {
        let master = match &e {
            SwitchoverError::NotMaster { master, .. } => *master,
            _ => None,
        };
        let master_admin = master.and_then(|m| {
            state
                .members
                .iter()
                .find(|(id, _)| *id == m)
                .map(|(_, a)| *a)
        });
        let code = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        (
            code,
            Json(ControlError {
                error: e.to_string(),
                master,
                master_admin,
            }),
        )
            .into_response()
    };
    // Only `to` is understood; anything else is a mistake worth saying so.
    let mut to = None;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("to", v)) if to.is_none() => match parse_node(v) {
                Ok(n) => to = Some(n),
                Err(e) => return fail(e),
            },
            _ => {
                return fail(SwitchoverError::BadRequest(format!(
                    "unknown or repeated parameter {:?} (only `to=N` is understood)",
                    pair.chars().take(64).collect::<String>()
                )))
            }
        }
    }
    if let Some(n) = to {
        if !state.members.iter().any(|(id, _)| *id == n) {
            return fail(SwitchoverError::NoSuchNode(n));
        }
    }
    if me.role != "master" {
        return fail(SwitchoverError::NotMaster {
            me: me.id,
            master: me.master.filter(|m| *m != me.id),
        });
    }
    let Some(requests) = state.switchover.clone() else {
        return fail(SwitchoverError::Internal(
            "this node does not accept switchovers".into(),
        ));
    };
    let others: Vec<(u64, SocketAddr)> = state
        .members
        .iter()
        .filter(|(id, _)| *id != me.id)
        .copied()
        .collect();
    let mut nodes =
        crate::admin_client::ClusterStatus::gather(&others, std::time::Duration::from_secs(1))
            .await
            .nodes;
    nodes.push(me.clone());
    let target = match choose_target(&nodes, me.id, to) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let req = SwitchoverRequest {
        to: quorumsql_log::NodeId(target),
        reply,
    };
    if requests.try_send(req).is_err() {
        return fail(SwitchoverError::Busy);
    }
    match tokio::time::timeout(SWITCHOVER_ANSWER_TIMEOUT, answer).await {
        Ok(Ok(Ok(report))) => (StatusCode::OK, Json(report)).into_response(),
        Ok(Ok(Err(e))) => fail(e),
        Ok(Err(_)) => fail(SwitchoverError::Internal(
            "roles stopped before answering (the node is shutting down?)".into(),
        )),
        Err(_) => fail(SwitchoverError::Internal(format!(
            "no answer from roles within {SWITCHOVER_ANSWER_TIMEOUT:?}; check `quorumsql status`"
        ))),
    }
}

async fn get_metrics(State(state): State<AdminState>) -> Response {
    let s = (state.status)();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        out.push_str(&format!(
            "# HELP quorumsql_{name} {help}\n# TYPE quorumsql_{name} gauge\nquorumsql_{name}{{node=\"{}\"}} {value}\n",
            s.id
        ));
    };
    gauge("raft_term", "Current raft term.", s.raft_term as f64);
    gauge("commit_index", "Raft commit index.", s.commit_index as f64);
    gauge(
        "applied_index",
        "Raft applied index.",
        s.applied_index as f64,
    );
    gauge("epoch", "Current master epoch.", s.epoch as f64);
    gauge(
        "is_master",
        "1 if this node is the master.",
        if s.role == "master" { 1.0 } else { 0.0 },
    );
    gauge(
        "healthy",
        "1 if this node is healthy.",
        if s.healthy { 1.0 } else { 0.0 },
    );
    gauge(
        "lease_remaining_seconds",
        "Lease left on the master.",
        s.lease_remaining_ms.unwrap_or(0) as f64 / 1000.0,
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}
