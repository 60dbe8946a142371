//! The running transport: listener, per-peer outbound lanes, inbound readers and raw streams.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::LengthDelimitedCodec;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::frame::Frame;
use crate::handshake::{
    self, cluster_hash, Authenticated, ConnPurpose, HandshakeError, Identity, Verdict,
};
use crate::{Lane, NodeId, PeerConfig, StreamPurpose};

/// Handshakes running at once on the listener; more connections are closed at once, so a flood of
/// idle sockets cannot exhaust memory or starve real peers for long.
const MAX_PENDING_HANDSHAKES: usize = 64;
/// Frames written before a flush: batches small frames into few syscalls without delaying big ones.
const FLUSH_BYTES: usize = 256 * 1024;

/// A frame received from an authenticated peer.
#[derive(Debug)]
pub struct Inbound {
    pub from: NodeId,
    pub frame: Frame,
}

/// An authenticated raw connection opened by a peer with [`PeerNet::open_stream`].
#[derive(Debug)]
pub struct InboundStream {
    pub from: NodeId,
    pub purpose: StreamPurpose,
    pub remote: SocketAddr,
    pub stream: TcpStream,
}

/// What the transport knows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Both outbound lanes to the peer are connected and authenticated.
    pub connected: bool,
    /// Last time a frame or an authenticated connection arrived from the peer.
    pub last_seen: Option<Instant>,
    /// Frames to this peer dropped: queue full, lane down, or queued on a connection that died.
    pub dropped: u64,
    /// Outbound connections re-established after a loss (both lanes counted).
    pub reconnects: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("invalid peer config: {0}")]
    Config(String),
    #[error("cannot listen for peers on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("{0} is not in this node's peer list")]
    UnknownPeer(NodeId),
    #[error("cannot connect to {peer} at {addr}: {source}")]
    Connect {
        peer: NodeId,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("handshake with {peer} at {addr} failed: {source}")]
    Handshake {
        peer: NodeId,
        addr: SocketAddr,
        source: HandshakeError,
    },
    #[error("peer transport is shut down")]
    ShutDown,
}

/// Why a frame was not queued. Every variant means the frame was dropped; raft treats it as loss.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("{0} is not in this node's peer list")]
    UnknownPeer(NodeId),
    #[error("no connection to {0}")]
    Disconnected(NodeId),
    #[error("send queue to {0} is full")]
    QueueFull(NodeId),
    #[error("frame of {len} bytes to {peer} exceeds max_frame_bytes {max}")]
    TooLarge {
        peer: NodeId,
        len: usize,
        max: usize,
    },
    #[error("peer transport is shut down")]
    ShutDown,
}

/// Per-peer counters shared by `PeerNet` and the tasks serving that peer.
struct PeerCounters {
    dropped: AtomicU64,
    reconnects: AtomicU64,
    /// Nanoseconds since `Shared::base`, plus one; 0 = never.
    last_seen: AtomicU64,
    urgent_up: AtomicBool,
    bulk_up: AtomicBool,
}

impl PeerCounters {
    fn new() -> Self {
        Self {
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_seen: AtomicU64::new(0),
            urgent_up: AtomicBool::new(false),
            bulk_up: AtomicBool::new(false),
        }
    }

    fn up(&self, lane: Lane) -> &AtomicBool {
        match lane {
            Lane::Urgent => &self.urgent_up,
            Lane::Bulk => &self.bulk_up,
        }
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// State shared with every task; it never cancels anything when dropped.
struct Shared {
    cfg: PeerConfig,
    cluster_hash: [u8; 32],
    base: Instant,
    counters: BTreeMap<NodeId, Arc<PeerCounters>>,
    refused: AtomicU64,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Shared {
    fn identity(&self) -> Identity<'_> {
        Identity {
            node_id: self.cfg.node_id,
            cluster_hash: self.cluster_hash,
            secret: &self.cfg.secret,
            params: &self.cfg.handshake_params,
            peers: &self.cfg.peers,
        }
    }

    fn touch(&self, c: &PeerCounters) {
        let ns = self.base.elapsed().as_nanos().min(u64::MAX as u128 - 1) as u64;
        c.last_seen.store(ns + 1, Ordering::Relaxed);
    }

    fn codec(&self) -> tokio_util::codec::length_delimited::Builder {
        let mut b = LengthDelimitedCodec::builder();
        b.max_frame_length(self.cfg.max_frame_bytes);
        b
    }

    /// TCP connect + dialer handshake, each under its timeout.
    async fn connect(
        &self,
        to: NodeId,
        addr: SocketAddr,
        purpose: ConnPurpose,
    ) -> Result<TcpStream, PeerError> {
        let connect =
            tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(addr)).await;
        let mut sock = match connect {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(PeerError::Connect {
                    peer: to,
                    addr,
                    source,
                })
            }
            Err(_) => {
                let source = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.cfg.connect_timeout),
                );
                return Err(PeerError::Connect {
                    peer: to,
                    addr,
                    source,
                });
            }
        };
        // Raft messages are small and latency-bound; Nagle would add up to 40 ms per round.
        if let Err(source) = sock.set_nodelay(true) {
            return Err(PeerError::Connect {
                peer: to,
                addr,
                source,
            });
        }
        let me = self.identity();
        let hs = tokio::time::timeout(
            self.cfg.handshake_timeout,
            handshake::dial(&mut sock, &me, to, purpose),
        )
        .await;
        match hs {
            Ok(Ok(())) => Ok(sock),
            Ok(Err(source)) => Err(PeerError::Handshake {
                peer: to,
                addr,
                source,
            }),
            Err(_) => Err(PeerError::Handshake {
                peer: to,
                addr,
                source: HandshakeError::Timeout(self.cfg.handshake_timeout),
            }),
        }
    }
}

struct PeerLanes {
    addr: SocketAddr,
    urgent: mpsc::Sender<Frame>,
    bulk: mpsc::Sender<Frame>,
    counters: Arc<PeerCounters>,
}

struct Inner {
    shared: Arc<Shared>,
    lanes: BTreeMap<NodeId, PeerLanes>,
    local_addr: SocketAddr,
    streams: Mutex<Option<mpsc::Receiver<InboundStream>>>,
    streams_taken: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop the listener, lanes and readers.
        self.shared.cancel.cancel();
    }
}

/// Handle to the running transport. Cheap to clone; all clones share the connections. The
/// transport stops when [`PeerNet::shutdown`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct PeerNet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PeerNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerNet")
            .field("node_id", &self.inner.shared.cfg.node_id)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl PeerNet {
    /// Binds `cfg.listen` and starts the transport. Returns the handle and the channel of frames
    /// received from authenticated peers.
    pub async fn start(cfg: PeerConfig) -> Result<(PeerNet, mpsc::Receiver<Inbound>), PeerError> {
        cfg.validate()?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| PeerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        Self::start_on(cfg, listener)
    }

    /// Starts the transport on an already bound listener (`cfg.listen` is then informational).
    /// Must be called inside a tokio runtime.
    pub fn start_on(
        cfg: PeerConfig,
        listener: TcpListener,
    ) -> Result<(PeerNet, mpsc::Receiver<Inbound>), PeerError> {
        cfg.validate()?;
        let local_addr = listener.local_addr().map_err(|source| PeerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let others: Vec<(NodeId, SocketAddr)> = cfg
            .peers
            .iter()
            .filter(|(id, _)| **id != cfg.node_id)
            .map(|(id, a)| (*id, *a))
            .collect();
        let counters: BTreeMap<NodeId, Arc<PeerCounters>> = others
            .iter()
            .map(|(id, _)| (*id, Arc::new(PeerCounters::new())))
            .collect();
        let (inbound_tx, inbound_rx) = mpsc::channel(cfg.inbound_depth);
        let (stream_tx, stream_rx) = mpsc::channel(cfg.stream_depth);
        let queue_depth = cfg.queue_depth;
        let shared = Arc::new(Shared {
            cluster_hash: cluster_hash(&cfg.cluster_name),
            cfg,
            base: Instant::now(),
            counters,
            refused: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let streams_taken = Arc::new(AtomicBool::new(false));

        let mut lanes = BTreeMap::new();
        for (id, addr) in others {
            let Some(counters) = shared.counters.get(&id).cloned() else {
                continue;
            };
            let (urgent, urgent_rx) = mpsc::channel(queue_depth);
            let (bulk, bulk_rx) = mpsc::channel(queue_depth);
            shared
                .tracker
                .spawn(run_lane(shared.clone(), id, addr, Lane::Urgent, urgent_rx));
            shared
                .tracker
                .spawn(run_lane(shared.clone(), id, addr, Lane::Bulk, bulk_rx));
            lanes.insert(
                id,
                PeerLanes {
                    addr,
                    urgent,
                    bulk,
                    counters,
                },
            );
        }
        shared.tracker.spawn(accept_loop(
            shared.clone(),
            listener,
            inbound_tx,
            stream_tx,
            streams_taken.clone(),
        ));
        info!(node = %shared.cfg.node_id, listen = %local_addr, peers = lanes.len(), "peer transport started");
        let inner = Inner {
            shared,
            lanes,
            local_addr,
            streams: Mutex::new(Some(stream_rx)),
            streams_taken,
        };
        Ok((
            PeerNet {
                inner: Arc::new(inner),
            },
            inbound_rx,
        ))
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.shared.cfg.node_id
    }

    /// The address the listener is bound to (useful when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The other members, in id order.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        self.inner.lanes.keys().copied().collect()
    }

    /// Queues a frame on the bulk lane (log entries and anything not latency-critical).
    /// Never blocks; on error the frame was dropped and counted.
    pub fn send(&self, to: NodeId, frame: Frame) -> Result<(), SendError> {
        self.send_on(to, Lane::Bulk, frame)
    }

    /// Queues a frame on the urgent lane: heartbeats, lease rounds, votes, small responses. It never
    /// waits behind bulk frames. Never blocks; on error the frame was dropped and counted.
    pub fn send_urgent(&self, to: NodeId, frame: Frame) -> Result<(), SendError> {
        self.send_on(to, Lane::Urgent, frame)
    }

    pub fn send_on(&self, to: NodeId, lane: Lane, frame: Frame) -> Result<(), SendError> {
        let p = self
            .inner
            .lanes
            .get(&to)
            .ok_or(SendError::UnknownPeer(to))?;
        let max = self.inner.shared.cfg.max_frame_bytes;
        if frame.wire_len() > max {
            p.counters.drop_one();
            return Err(SendError::TooLarge {
                peer: to,
                len: frame.wire_len(),
                max,
            });
        }
        // Queuing for a lane that is down would only deliver stale frames after the reconnect.
        if !p.counters.up(lane).load(Ordering::Acquire) {
            p.counters.drop_one();
            return Err(SendError::Disconnected(to));
        }
        let tx = match lane {
            Lane::Urgent => &p.urgent,
            Lane::Bulk => &p.bulk,
        };
        match tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                p.counters.drop_one();
                Err(SendError::QueueFull(to))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::ShutDown),
        }
    }

    /// Per-peer connection state and counters.
    pub fn status(&self) -> BTreeMap<NodeId, PeerStatus> {
        self.inner
            .lanes
            .iter()
            .map(|(id, p)| (*id, self.status_of(&p.counters)))
            .collect()
    }

    pub fn peer_status(&self, id: NodeId) -> Option<PeerStatus> {
        self.inner
            .lanes
            .get(&id)
            .map(|p| self.status_of(&p.counters))
    }

    fn status_of(&self, c: &PeerCounters) -> PeerStatus {
        let seen = c.last_seen.load(Ordering::Relaxed);
        PeerStatus {
            connected: c.urgent_up.load(Ordering::Acquire) && c.bulk_up.load(Ordering::Acquire),
            last_seen: (seen > 0).then(|| self.inner.shared.base + Duration::from_nanos(seen - 1)),
            dropped: c.dropped.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Incoming connections closed during or right after the handshake (bad secret, garbage, ...).
    pub fn refused_connections(&self) -> u64 {
        self.inner.shared.refused.load(Ordering::Relaxed)
    }

    /// Opens a new authenticated TCP connection to `to` for relaying raw bytes. The peer receives it
    /// through its stream receiver ([`PeerNet::take_stream_receiver`]).
    pub async fn open_stream(
        &self,
        to: NodeId,
        purpose: StreamPurpose,
    ) -> Result<TcpStream, PeerError> {
        let addr = self
            .inner
            .lanes
            .get(&to)
            .map(|p| p.addr)
            .ok_or(PeerError::UnknownPeer(to))?;
        let shared = &self.inner.shared;
        tokio::select! {
            _ = shared.cancel.cancelled() => Err(PeerError::ShutDown),
            r = shared.connect(to, addr, ConnPurpose::Stream(purpose)) => r,
        }
    }

    /// The channel of raw streams opened by peers. Returns `Some` once; until someone takes it,
    /// incoming streams are refused (so a node without a proxy never accumulates sockets).
    pub fn take_stream_receiver(&self) -> Option<mpsc::Receiver<InboundStream>> {
        let mut slot = match self.inner.streams.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let rx = slot.take();
        if rx.is_some() {
            self.inner.streams_taken.store(true, Ordering::Release);
        }
        rx
    }

    /// Stops the listener, the lanes and the readers, and waits until their sockets are closed.
    /// Streams already handed out are not affected.
    pub async fn shutdown(&self) {
        let shared = &self.inner.shared;
        shared.cancel.cancel();
        shared.tracker.close();
        shared.tracker.wait().await;
        info!(node = %shared.cfg.node_id, "peer transport stopped");
    }
}

/// Exponential reconnect delay with jitter, so peers that lost each other at the same moment do not
/// reconnect in lock-step.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// Keeps one outbound connection to `to` for `lane` alive and writes queued frames to it.
async fn run_lane(
    shared: Arc<Shared>,
    to: NodeId,
    addr: SocketAddr,
    lane: Lane,
    mut rx: mpsc::Receiver<Frame>,
) {
    let Some(counters) = shared.counters.get(&to).cloned() else {
        return;
    };
    let mut backoff = Backoff::new(shared.cfg.backoff_min, shared.cfg.backoff_max);
    let mut was_connected = false;
    let mut last_failure: Option<String> = None;
    loop {
        let attempt = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = shared.connect(to, addr, ConnPurpose::Lane(lane)) => r,
        };
        match attempt {
            Ok(sock) => {
                if was_connected {
                    counters.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                was_connected = true;
                last_failure = None;
                backoff.reset();
                info!(peer = %to, %addr, ?lane, "connected to peer");
                counters.up(lane).store(true, Ordering::Release);
                let end = pump(&shared, sock, &mut rx).await;
                counters.up(lane).store(false, Ordering::Release);
                // Frames queued for the dead connection are stale by the time we reconnect.
                while rx.try_recv().is_ok() {
                    counters.drop_one();
                }
                match end {
                    PumpEnd::Stopped => return,
                    PumpEnd::Lost(why) => {
                        warn!(peer = %to, %addr, ?lane, reason = %why, "lost connection to peer")
                    }
                }
            }
            Err(e) => {
                // Log a failure once per change of reason, not once per backoff step.
                let why = e.to_string();
                if last_failure.as_deref() != Some(why.as_str()) {
                    if was_connected {
                        warn!(peer = %to, %addr, ?lane, reason = %why, "cannot connect to peer; retrying with backoff");
                    } else {
                        // Peers start in any order: not reaching one before it ever answered is normal.
                        info!(peer = %to, %addr, ?lane, reason = %why, "peer not reachable yet; retrying with backoff");
                    }
                    last_failure = Some(why);
                } else {
                    debug!(peer = %to, %addr, ?lane, reason = %why, "still cannot connect to peer");
                }
            }
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.delay()) => {}
        }
    }
}

enum PumpEnd {
    Stopped,
    Lost(String),
}

/// Writes queued frames until the connection fails or the transport stops. The acceptor never
/// sends after the handshake, so any readable event (EOF, data, error) means the connection is gone:
/// this notices a restarted peer before a frame is lost to a dead socket.
async fn pump(shared: &Shared, sock: TcpStream, rx: &mut mpsc::Receiver<Frame>) -> PumpEnd {
    let (mut rd, wr) = sock.into_split();
    let mut sink = shared.codec().new_write(wr);
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return PumpEnd::Stopped,
            r = rd.read(&mut probe) => {
                return PumpEnd::Lost(match r {
                    Ok(0) => "closed by peer".to_owned(),
                    Ok(_) => "peer sent bytes on an outbound lane".to_owned(),
                    Err(e) => e.to_string(),
                });
            }
            f = rx.recv() => {
                let Some(f) = f else { return PumpEnd::Stopped };
                let mut batched = f.wire_len();
                if let Err(e) = sink.feed(f.encode()).await {
                    return PumpEnd::Lost(e.to_string());
                }
                while batched < FLUSH_BYTES {
                    let Ok(f) = rx.try_recv() else { break };
                    batched += f.wire_len();
                    if let Err(e) = sink.feed(f.encode()).await {
                        return PumpEnd::Lost(e.to_string());
                    }
                }
                if let Err(e) = SinkExt::<bytes::Bytes>::flush(&mut sink).await {
                    return PumpEnd::Lost(e.to_string());
                }
            }
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    inbound: mpsc::Sender<Inbound>,
    streams: mpsc::Sender<InboundStream>,
    streams_taken: Arc<AtomicBool>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, remote)) => {
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(%remote, reason = "too many handshakes in progress", "refused peer connection");
                    continue;
                };
                let task = handle_incoming(
                    shared.clone(),
                    sock,
                    remote,
                    inbound.clone(),
                    streams.clone(),
                    streams_taken.clone(),
                    permit,
                );
                shared.tracker.spawn(task);
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning; existing connections keep working.
                warn!(error = %e, "accepting peer connections failed; retrying in 100 ms");
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

async fn handle_incoming(
    shared: Arc<Shared>,
    mut sock: TcpStream,
    remote: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    streams: mpsc::Sender<InboundStream>,
    streams_taken: Arc<AtomicBool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let refuse = |reason: &dyn std::fmt::Display| {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        warn!(%remote, reason = %reason, "refused peer connection");
    };
    let _ = sock.set_nodelay(true);
    let me = shared.identity();
    let timeout = shared.cfg.handshake_timeout;
    let result = tokio::select! {
        _ = shared.cancel.cancelled() => return,
        r = tokio::time::timeout(timeout, handshake::accept(&mut sock, &me)) => r,
    };
    let Authenticated { from, purpose } = match result {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return refuse(&e),
        Err(_) => return refuse(&HandshakeError::Timeout(timeout)),
    };
    let Some(counters) = shared.counters.get(&from).cloned() else {
        return refuse(&HandshakeError::UnknownNode(from));
    };
    match purpose {
        ConnPurpose::Lane(lane) => {
            if let Err(e) = handshake::finish_accept(&mut sock, Verdict::Accepted).await {
                return refuse(&e);
            }
            drop(permit);
            shared.touch(&counters);
            debug!(%remote, peer = %from, ?lane, "accepted peer connection");
            read_frames(&shared, sock, remote, from, &counters, inbound).await;
        }
        ConnPurpose::Stream(purpose) => {
            let slot = if streams_taken.load(Ordering::Acquire) {
                streams.try_reserve().ok()
            } else {
                None
            };
            let Some(slot) = slot else {
                let reason = "no free slot for raw streams (no consumer, or backlog full)";
                let _ =
                    handshake::finish_accept(&mut sock, Verdict::Refused(reason.to_owned())).await;
                return refuse(&reason);
            };
            if let Err(e) = handshake::finish_accept(&mut sock, Verdict::Accepted).await {
                return refuse(&e);
            }
            shared.touch(&counters);
            debug!(%remote, peer = %from, ?purpose, "accepted raw stream");
            slot.send(InboundStream {
                from,
                purpose,
                remote,
                stream: sock,
            });
        }
    }
}

/// Reads frames from an authenticated inbound lane until it closes or misbehaves.
async fn read_frames(
    shared: &Shared,
    sock: TcpStream,
    remote: SocketAddr,
    from: NodeId,
    counters: &PeerCounters,
    inbound: mpsc::Sender<Inbound>,
) {
    let mut frames = shared.codec().new_read(sock);
    loop {
        let item = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            i = frames.next() => i,
        };
        let record = match item {
            None => {
                debug!(%remote, peer = %from, "peer closed its connection");
                return;
            }
            Some(Err(e)) => {
                let max = shared.cfg.max_frame_bytes;
                warn!(%remote, peer = %from, reason = %e, max_frame_bytes = max, "closing peer connection: unreadable frame");
                return;
            }
            Some(Ok(r)) => r,
        };
        let frame = match Frame::decode(record.freeze()) {
            Ok(f) => f,
            Err(e) => {
                warn!(%remote, peer = %from, reason = %e, "closing peer connection: bad frame");
                return;
            }
        };
        shared.touch(counters);
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = inbound.send(Inbound { from, frame }) => if r.is_err() { return },
        }
    }
}
