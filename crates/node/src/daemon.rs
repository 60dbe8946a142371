//! `quorumsql node`: wires the pieces of one node together and runs them until SIGTERM/SIGINT.
//!
//! Start order matters: a stale mariadbd holding our datadir is killed before anything else; the
//! log opens before roles can ask it anything; serve listens before the local mariadbd is told to
//! replicate from it; the admin port comes up early so an operator can see a node that is stuck.

use std::collections::BTreeMap;
use std::sync::Arc;

use quorumsql_log::runtime::{handshake_params, LogHandle, LogRuntime, RuntimeConfig};
use quorumsql_log::{LogConfig, NodeId, RaftEngineStore};
use quorumsql_peer::{ClusterSecret, PeerConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{NodeStatus, PeerStatus};
use crate::config::{serve_server_id, NodeConfig};
use crate::log_adapters::{LogSink, LogTxnSource};
use crate::mariadb::{Mariadb, MariadbConfig};
use crate::roles::{RoleSnapshot, Roles};
use crate::serve::{Serve, ServeConfig};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Admin(#[from] crate::admin::AdminError),
    #[error("peer transport: {0}")]
    Peer(#[from] crate::peer_thread::PeerThreadError),
    #[error("cluster secret: {0}")]
    Secret(String),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("global binlog: {0}")]
    Log(#[from] quorumsql_log::LogError),
    #[error("log storage in {path}: {source}")]
    Store {
        path: std::path::PathBuf,
        #[source]
        source: quorumsql_log::StoreError,
    },
    #[error("mariadbd: {0}")]
    Mariadb(#[from] crate::mariadb::MariadbError),
    #[error("serve: {0}")]
    Serve(#[from] crate::serve::ServeError),
    #[error("proxy: {0}")]
    Proxy(String),
}

/// The log settings every node must share (checked at the peer handshake).
pub fn log_config(cfg: &NodeConfig) -> LogConfig {
    let voters: Vec<NodeId> = cfg.cluster.members.iter().map(|m| NodeId(m.id)).collect();
    let mut log = LogConfig::new(NodeId(cfg.node.id), voters);
    log.tick_interval = cfg.raft.tick();
    log.election_ticks = cfg.raft.election_ticks_min;
    log.election_ticks_max = cfg.raft.election_ticks_max;
    log.heartbeat_ticks = cfg.raft.heartbeat_ticks;
    log.max_drift = cfg.raft.max_clock_drift;
    log.lease_margin = std::time::Duration::from_millis(cfg.raft.lease_margin_ms);
    log.entry_cap = cfg.raft.entry_cap_bytes;
    log
}

/// Runs the node until a termination signal.
pub async fn run(cfg: NodeConfig) -> Result<(), DaemonError> {
    let cfg = Arc::new(cfg);
    let me = cfg.me().clone();
    info!(node = cfg.node.id, data_dir = %cfg.node.data_dir.display(), "starting");
    for dir in [cfg.node.data_dir.clone(), cfg.log_dir()] {
        std::fs::create_dir_all(&dir).map_err(|source| DaemonError::Dir {
            path: dir.clone(),
            source,
        })?;
    }
    // Before anything else: no mariadbd from an earlier life may hold our datadir.
    let mut db = Mariadb::new(MariadbConfig::from_node_config(&cfg))?;
    let killed = tokio::task::block_in_place(|| db.kill_stale())?;
    if !killed.is_empty() {
        warn!(
            ?killed,
            "SIGKILLed a mariadbd left over from an earlier run"
        );
    }

    let shutdown = CancellationToken::new();
    let (role_tx, role_rx) = watch::channel(RoleSnapshot::default());
    // Planned switchover: the admin port asks roles (one request at a time), roles raises the
    // gate the proxy reads before every client packet.
    let gate = crate::roles::switchover::SwitchoverGate::default();
    let (switchover_tx, switchover_rx) = tokio::sync::mpsc::channel(1);

    // The global binlog.
    let log_cfg = log_config(&cfg);
    let secret = ClusterSecret::from_hex(&cfg.cluster.secret)
        .map_err(|e| DaemonError::Secret(e.to_string()))?;
    let peers: BTreeMap<NodeId, std::net::SocketAddr> = cfg
        .cluster
        .members
        .iter()
        .map(|m| (NodeId(m.id), m.peer))
        .collect();
    let mut peer_cfg = PeerConfig::new(NodeId(cfg.node.id), me.peer, peers, secret);
    peer_cfg.cluster_name = cfg.cluster.name.clone();
    peer_cfg.handshake_params = handshake_params(&log_cfg);
    peer_cfg.max_frame_bytes = cfg.raft.entry_cap_bytes + (1 << 20);
    let realtime = (cfg.raft.realtime_priority > 0).then_some(cfg.raft.realtime_priority);
    let (net, inbound) = crate::peer_thread::start(peer_cfg, realtime).await?;
    let log_dir = cfg.log_dir();
    let store =
        tokio::task::block_in_place(|| RaftEngineStore::open(&log_dir)).map_err(|source| {
            DaemonError::Store {
                path: log_dir.clone(),
                source,
            }
        })?;
    let mut runtime_cfg = RuntimeConfig::new(log_cfg);
    runtime_cfg.realtime_priority = realtime;
    let log = LogRuntime::start(runtime_cfg, store, net.clone(), inbound).await?;

    // The admin port, early: a node stuck later is still visible.
    let proxy_slot: Arc<std::sync::OnceLock<Arc<crate::proxy::ProxyHandle>>> = Arc::default();
    let status_fn: crate::admin::StatusFn = {
        let log = log.clone();
        let role_rx = role_rx.clone();
        let id = cfg.node.id;
        let proxy_slot = proxy_slot.clone();
        let gate = gate.clone();
        Arc::new(move || {
            let mut s = node_status(id, &log, &role_rx.borrow());
            s.proxy = proxy_slot.get().map(|p| p.metrics());
            s.switchover_in_progress = gate.draining();
            s
        })
    };
    let admin_state = crate::admin::AdminState {
        status: status_fn,
        members: Arc::new(
            cfg.cluster
                .members
                .iter()
                .map(|m| (m.id, m.admin))
                .collect(),
        ),
        switchover: Some(switchover_tx),
    };
    let admin = crate::admin::bind(me.admin, admin_state, shutdown.clone()).await?;
    let admin_task = tokio::spawn(admin);

    // serve: the local mariadbd's replication master, fed from the log.
    let (serve_user, serve_password) = crate::serve_credentials(&cfg);
    let serve = Serve::start(
        ServeConfig::new(
            me.serve,
            serve_server_id(cfg.node.id),
            &serve_user,
            &serve_password,
        ),
        Arc::new(LogTxnSource::new(
            log.clone(),
            tokio::runtime::Handle::current(),
        )),
    )
    .await?;

    // The client ports. The commit alarm is raised by the proxy when mariadbd acknowledged a
    // commit the global binlog does not hold (design-review 2); roles fences on it.
    let commit_alarm = crate::commit_alarm::CommitAlarm::default();
    let proxy = crate::proxy_glue::start(
        &cfg,
        log.clone(),
        role_rx.clone(),
        net.clone(),
        gate.clone(),
        commit_alarm.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(DaemonError::Proxy)?;
    let _ = proxy_slot.set(proxy.clone());

    // Roles drives mariadbd.
    let sink = Arc::new(LogSink::new(log.clone()));
    // The proxy raises the alarm when mariadbd OKs a commit the log does not hold; roles then
    // fences this master and marks it diverged (and resets the alarm at its next promotion).
    let roles = Roles::new(cfg.clone(), log.clone(), db, sink, role_tx)
        .with_switchover(switchover_rx, gate)
        .with_commit_alarm(commit_alarm);
    let roles_task = tokio::spawn(roles.run(shutdown.clone()));

    wait_for_signal().await;
    info!("stopping: SIGKILL mariadbd, close ports, stop the log");
    shutdown.cancel();
    let _ = roles_task.await;
    proxy.shutdown();
    serve.shutdown().await;
    log.shutdown().await;
    let _ = admin_task.await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process can only be killed, which is also safe.
            std::future::pending::<()>().await;
        }
    }
}

fn node_status(id: u64, log: &LogHandle, role: &RoleSnapshot) -> NodeStatus {
    let st = log.status();
    let reach = log.peers().status();
    let mut problems = role.problems.clone();
    if let Some(f) = log.fatal() {
        problems.push(format!("global binlog stopped: {f}"));
    }
    if st.self_needs_rebuild {
        problems.push("this node installed a log snapshot: its mariadbd must be rebuilt".into());
    }
    let peers = reach
        .iter()
        .map(|(peer, p)| PeerStatus {
            id: peer.0,
            reachable: p.connected,
            match_index: st.peers.iter().find(|x| x.node == *peer).map(|x| x.matched),
        })
        .collect();
    NodeStatus {
        id,
        role: role.role.as_str().to_string(),
        master: st.master.map(|(n, _)| n.0),
        epoch: st.master.map(|(_, e)| e.0).unwrap_or(0),
        raft_term: st.term,
        raft_leader: st.leader.map(|n| n.0),
        commit_index: st.commit_index,
        applied_index: st.applied_index,
        last_gtid: st.last_gtid.map(|g| g.to_string()),
        log_compacted_through: st.compacted_through.map(|g| g.to_string()),
        applied_gtid: role.applied_gtid.as_ref().map(|g| g.to_string()),
        lease_remaining_ms: st.lease_remaining.map(|d| d.as_millis() as u64),
        healthy: problems.is_empty() && role.healthy(),
        problems,
        pid: std::process::id(),
        mariadb_pid: role.mariadb_pid,
        peers,
        proxy: None,
        vote_hold_off_remaining_ms: st.vote_hold_off_remaining.map(|d| d.as_millis() as u64),
        votes_refused_in_hold_off: log.votes_held_off(),
        switchover_in_progress: false,
        capture: role.capture.as_ref().map(Into::into),
    }
}
