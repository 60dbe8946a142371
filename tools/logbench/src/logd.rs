//! `logbench logd`: a log-only node. RaftEngineStore + PeerNet + LogRuntime, plus a client port.
//!
//! When this node becomes raft leader in term T it waits until everything before its term is
//! applied and commits `MasterReady{self, T, last_gtid}`, exactly like a promoted QuorumSQL master.
//! Client proposals then become `Append{epoch: T, prev_gtid, [one transaction]}` with GTIDs
//! `0-<id>-<seq>` numbered in submission order, so the state machine's accept rules (epoch, term,
//! prev_gtid chain) are exercised by every proposal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use quorumsql_log::runtime::{handshake_params, LogHandle, LogRuntime, RuntimeConfig};
use quorumsql_log::{
    BinlogPos, Command, Epoch, Gtid, LogConfig, LogError, LogStatus, Outcome, ProposeError,
    RaftEngineStore, Role, StoreError, TxnChunk,
};
use quorumsql_peer::{ClusterSecret, NodeId, PeerConfig, PeerError, PeerNet, SecretError};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tracing::{info, warn};

use crate::client::codec;
use crate::protocol::{DumpedTxn, NodeStatus, Request, Response};
use crate::stats::Latencies;

/// How long a client proposal may wait for its outcome before it is reported as unknown.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct LogdArgs {
    pub id: NodeId,
    /// Every member including this node.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub listen: SocketAddr,
    pub client_listen: SocketAddr,
    pub dir: PathBuf,
    pub secret: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogdError {
    #[error("--secret: {0}")]
    Secret(#[from] SecretError),
    #[error("--peers must name this node ({0}) too")]
    SelfNotInPeers(NodeId),
    #[error("peer transport: {0}")]
    Peer(#[from] PeerError),
    #[error("log store in {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("client port {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// Where the next proposal continues the log, while this node is master.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    epoch: Epoch,
    /// GTID of the last transaction submitted (accepted or in flight).
    last: Option<Gtid>,
    /// False after a proposal was dropped or rejected: the chain behind it is broken and must be
    /// re-read from the state machine once nothing is in flight.
    in_sync: bool,
}

struct Node {
    id: NodeId,
    log: LogHandle,
    cursor: Mutex<Option<Cursor>>,
}

impl Node {
    fn cursor(&self) -> std::sync::MutexGuard<'_, Option<Cursor>> {
        match self.cursor.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn is_master(&self) -> bool {
        self.cursor().is_some_and(|c| c.in_sync)
    }
}

pub async fn run(args: LogdArgs) -> Result<(), LogdError> {
    let secret = ClusterSecret::from_hex(&args.secret)?;
    if !args.peers.contains_key(&args.id) {
        return Err(LogdError::SelfNotInPeers(args.id));
    }
    let log_cfg = LogConfig::new(args.id, args.peers.keys().copied().collect());
    let mut peer_cfg = PeerConfig::new(args.id, args.listen, args.peers.clone(), secret);
    peer_cfg.cluster_name = "logbench".into();
    peer_cfg.handshake_params = handshake_params(&log_cfg);
    let (net, inbound) = PeerNet::start(peer_cfg).await?;

    let dir = args.dir.clone();
    let store = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Fatal {
            dir: dir.display().to_string(),
            detail: e.to_string(),
        })?;
        RaftEngineStore::open(&dir)
    })
    .await
    .map_err(|e| LogdError::Other(format!("store open task: {e}")))?
    .map_err(|source| LogdError::Store {
        dir: args.dir.display().to_string(),
        source,
    })?;
    let log = LogRuntime::start(RuntimeConfig::new(log_cfg), store, net, inbound).await?;
    let node = Arc::new(Node {
        id: args.id,
        log: log.clone(),
        cursor: Mutex::new(None),
    });

    let listener = TcpListener::bind(args.client_listen)
        .await
        .map_err(|source| LogdError::Listen {
            addr: args.client_listen,
            source,
        })?;
    info!(id = %args.id, peer = %args.listen, client = %args.client_listen, dir = %args.dir.display(), "logd ready");

    tokio::spawn(master_loop(node.clone()));
    tokio::spawn(accept_clients(node.clone(), listener));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| LogdError::Other(format!("cannot watch SIGTERM: {e}")))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted; shutting down"),
        _ = term.recv() => info!("SIGTERM; shutting down"),
        _ = log.stopped() => {}
    }
    if let Some(why) = log.fatal() {
        return Err(LogdError::Other(format!("log runtime failed: {why}")));
    }
    log.shutdown().await;
    Ok(())
}

/// Promotes this node to master whenever it leads a term (the log-only equivalent of DESIGN §3
/// promotion steps 1 and 8), and re-synchronises the proposal cursor after a broken chain.
async fn master_loop(node: Arc<Node>) {
    let mut status_rx = node.log.subscribe_status();
    let mut applied_rx = node.log.subscribe_applied();
    // (term, last_index seen when this node first led it): entries up to there predate us.
    let mut led: Option<(u64, u64)> = None;
    // When MasterReady was last proposed in the current term; re-proposed after a second without
    // effect (a refused one, e.g. because the last GTID moved, is harmless: the rules reject it).
    let mut ready_sent: Option<(u64, tokio::time::Instant)> = None;
    loop {
        // Marks the applied position seen (before reading the status, which includes it), so
        // `changed` waits for the next one.
        applied_rx.borrow_and_update();
        let st: LogStatus = status_rx.borrow_and_update().clone();
        let leading = st.role == Role::Leader && !st.transferring;
        if !leading {
            led = None;
            *node.cursor() = None;
        } else {
            if led.is_none_or(|(t, _)| t != st.term) {
                led = Some((st.term, st.last_index));
                *node.cursor() = None;
            }
            let epoch = Epoch(st.term);
            let first_of_term = led.map_or(u64::MAX, |(_, i)| i);
            if st.master == Some((node.id, epoch)) {
                let mut cur = node.cursor();
                // Only once nothing is in flight does the state machine's last GTID equal the
                // tail of the chain.
                let quiet = st.applied_index == st.last_index;
                match cur.as_mut() {
                    None if quiet => {
                        *cur = Some(Cursor {
                            epoch,
                            last: st.last_gtid,
                            in_sync: true,
                        });
                        info!(id = %node.id, %epoch, last = ?st.last_gtid, "master: accepting proposals");
                    }
                    Some(c) if !c.in_sync && quiet => {
                        c.last = st.last_gtid;
                        c.in_sync = true;
                        info!(id = %node.id, last = ?st.last_gtid, "proposal chain re-synchronised");
                    }
                    _ => {}
                }
            } else if st.applied_index >= first_of_term
                && ready_sent
                    .is_none_or(|(t, at)| t != st.term || at.elapsed() > Duration::from_secs(1))
            {
                ready_sent = Some((st.term, tokio::time::Instant::now()));
                let cmd = Command::MasterReady {
                    node: node.id,
                    epoch,
                    gtid: st.last_gtid,
                };
                let log = node.log.clone();
                let id = node.id;
                tokio::spawn(async move {
                    match tokio::time::timeout(PROPOSE_TIMEOUT, log.propose(cmd)).await {
                        Ok(Ok(p)) if p.outcome == Outcome::Accepted => {
                            info!(%id, %epoch, "MasterReady accepted")
                        }
                        other => warn!(%id, %epoch, result = ?other, "MasterReady not accepted"),
                    }
                });
            }
        }
        // Wake on leadership changes, on applied entries while waiting to become master (the
        // status watch does not wake for them), and regularly to retry.
        let waiting = !node.is_master();
        let woken = async {
            tokio::select! {
                _ = status_rx.changed() => {}
                _ = applied_rx.changed(), if waiting => {}
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(50), woken).await;
        if node.log.fatal().is_some() {
            return;
        }
    }
}

async fn accept_clients(node: Arc<Node>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve_client(node.clone(), s));
            }
            Err(e) => {
                warn!(error = %e, "client accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_client(node: Arc<Node>, s: TcpStream) {
    // A load request runs its proposers as tasks that outlive a single `handle` borrow.
    let node_for_load = node.clone();
    let mut framed = Framed::new(s, codec());
    while let Some(Ok(frame)) = framed.next().await {
        let resp = match postcard::from_bytes::<Request>(&frame) {
            Ok(Request::Load {
                concurrency,
                payload_bytes,
                millis,
            }) => {
                load(
                    node_for_load.clone(),
                    concurrency,
                    payload_bytes,
                    Duration::from_millis(millis),
                )
                .await
            }
            Ok(req) => handle(&node, req).await,
            Err(e) => Response::Error(format!("undecodable request: {e}")),
        };
        let Ok(bytes) = postcard::to_stdvec(&resp) else {
            return;
        };
        if framed.send(Bytes::from(bytes)).await.is_err() {
            return;
        }
    }
}

async fn handle(node: &Node, req: Request) -> Response {
    match req {
        Request::Status => Response::Status(status(node)),
        Request::Propose { payload } => propose(node, payload).await,
        Request::Load { .. } => {
            Response::Error("load requests are served by the client loop".into())
        }
        Request::Dump { after, max_bytes } => {
            let max = usize::try_from(max_bytes)
                .unwrap_or(usize::MAX)
                .min(crate::protocol::MAX_CLIENT_FRAME / 2);
            match node.log.read_txns_after(after, max).await {
                Ok(txns) => {
                    let last = node.log.status().last_gtid;
                    let more = txns.last().is_some_and(|t| Some(t.gtid) != last);
                    Response::Dump {
                        txns: txns
                            .into_iter()
                            .map(|t| DumpedTxn {
                                gtid: t.gtid,
                                index: t.index,
                                payload: t.events,
                            })
                            .collect(),
                        more,
                    }
                }
                Err(e) => Response::Error(e.to_string()),
            }
        }
    }
}

/// Largest in-process load accepted: more proposers than this measure the scheduler, not the log.
const MAX_LOAD_PROPOSERS: u32 = 4096;
/// Longest in-process load step.
const MAX_LOAD: Duration = Duration::from_secs(600);

/// `concurrency` in-process proposers, one proposal each in flight, for `duration`.
async fn load(
    node: Arc<Node>,
    concurrency: u32,
    payload_bytes: u32,
    duration: Duration,
) -> Response {
    if concurrency == 0 || concurrency > MAX_LOAD_PROPOSERS {
        return Response::Error(format!(
            "load: {concurrency} proposers; allowed 1..={MAX_LOAD_PROPOSERS}"
        ));
    }
    if duration.is_zero() || duration > MAX_LOAD {
        return Response::Error(format!("load: {duration:?}; allowed up to {MAX_LOAD:?}"));
    }
    let max_payload = crate::protocol::MAX_CLIENT_FRAME as u32;
    if payload_bytes > max_payload {
        return Response::Error(format!(
            "load: {payload_bytes} B payloads; at most {max_payload} B"
        ));
    }
    let payload = vec![0xabu8; payload_bytes as usize];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let node = node.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut failed = 0u64;
            while start.elapsed() < duration {
                let t = Instant::now();
                match propose(&node, payload.clone()).await {
                    Response::Committed { .. } => lat.record(t.elapsed()),
                    _ => {
                        failed += 1;
                        // A non-master (or one re-synchronising) refuses at once: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (lat, failed)
        }));
    }
    let mut all = Latencies::default();
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok((l, f)) => {
                all.extend(l);
                failed += f;
            }
            Err(e) => return Response::Error(format!("load: a proposer task failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    Response::Loaded {
        committed: all.len() as u64,
        failed,
        elapsed_us: us(elapsed),
        p50_us: us(all.percentile(50.0)),
        p99_us: us(all.percentile(99.0)),
    }
}

fn status(node: &Node) -> NodeStatus {
    let st = node.log.status();
    let is_master =
        st.role == Role::Leader && st.master == Some((node.id, Epoch(st.term))) && node.is_master();
    NodeStatus {
        id: node.id.0,
        role: format!("{:?}", st.role),
        term: st.term,
        leader: st.leader.map(|l| l.0),
        is_master,
        commit_index: st.commit_index,
        applied_index: st.applied_index,
        last_gtid: st.last_gtid,
        master_epoch: st.master.map_or(0, |(_, e)| e.0),
    }
}

fn failed(reason: impl ToString, known_not_applied: bool, node: &Node) -> Response {
    Response::Failed {
        reason: reason.to_string(),
        known_not_applied,
        leader_hint: node.log.status().leader.map(|l| l.0),
    }
}

async fn propose(node: &Node, payload: Vec<u8>) -> Response {
    // Numbering and submitting under one lock keeps GTID order equal to log order.
    let (ticket, gtid) = {
        let mut cur = node.cursor();
        let Some(c) = cur.as_mut().filter(|c| c.in_sync) else {
            return failed(
                "this node is not the master (or is re-synchronising)",
                true,
                node,
            );
        };
        let server = u32::try_from(node.id.0).unwrap_or(u32::MAX);
        let gtid = Gtid::new(0, server, c.last.map_or(1, |g| g.seq + 1));
        let origin = BinlogPos {
            file: "logbench".into(),
            offset: gtid.seq,
        };
        let cmd = Command::Append {
            epoch: c.epoch,
            prev_gtid: c.last,
            txns: vec![TxnChunk::whole(gtid, origin, Bytes::from(payload))],
        };
        match node.log.submit(cmd) {
            Ok(t) => {
                c.last = Some(gtid);
                (t, gtid)
            }
            Err(e) => return failed(e, true, node),
        }
    };
    let broken_chain = || {
        if let Some(c) = node.cursor().as_mut() {
            c.in_sync = false;
        }
    };
    match tokio::time::timeout(PROPOSE_TIMEOUT, ticket.wait()).await {
        Ok(Ok(p)) => match (p.outcome, p.index) {
            (Outcome::Accepted, Some(index)) if p.completed.contains(&gtid) => {
                Response::Committed { gtid, index }
            }
            (Outcome::Accepted, index) => {
                broken_chain();
                failed(
                    format!("accepted at {index:?} without completing {gtid}"),
                    false,
                    node,
                )
            }
            (Outcome::Rejected(r), _) => {
                broken_chain();
                failed(format!("rejected: {r}"), true, node)
            }
            (Outcome::Dropped, _) => {
                broken_chain();
                failed("dropped: never reached the committed log", true, node)
            }
        },
        Ok(Err(e)) => {
            broken_chain();
            let known = matches!(
                e,
                ProposeError::NotLeader { .. }
                    | ProposeError::Transferring
                    | ProposeError::TooLarge { .. }
            );
            failed(e, known, node)
        }
        Err(_) => failed(
            format!("no outcome within {PROPOSE_TIMEOUT:?}; unknown"),
            false,
            node,
        ),
    }
}
