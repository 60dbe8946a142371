//! Listeners, routing of new connections, peer streams and the master-change watcher.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use quorumsql_peer::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Duration, Instant};

use super::metrics::{ErrorKind, MetricsSnapshot, PortMetrics, ProxyMetrics};
use super::mysql::{self, SqlError};
use super::proxy_v2::{self, ProxiedAddrs};
use super::refusal;
use super::registry::{CloseReason, Registry, SessionControl};
use super::relay::{relay, BufferPool, Mode, RelayCtx};
use super::{MasterEpoch, PeerDialer, PortKind, ProxyConfig, RoRoute, RouteOracle, RwRoute};

/// How often a connection waiting for a master re-reads the route even without a generation
/// change.
const ROUTE_POLL: Duration = Duration::from_millis(50);
/// Relay buffers kept for reuse (64 KiB each by default).
const POOLED_BUFFERS: usize = 256;
/// Refusals of over-limit connections in progress at once (each waits up to the handshake
/// timeout for the client's handshake response); beyond this, the excess gets a bare ERR in
/// place of the greeting, without a task.
const CONCURRENT_LIMIT_REFUSALS: usize = 256;

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy cannot listen on the {port:?} port {addr}: {source}")]
    Bind {
        port: PortKind,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

struct Inner {
    config: ProxyConfig,
    oracle: Arc<dyn RouteOracle>,
    dialer: Arc<dyn PeerDialer>,
    registry: Registry,
    metrics: ProxyMetrics,
    pool: BufferPool,
    limit_rw: Arc<Semaphore>,
    limit_ro: Arc<Semaphore>,
    limit_peer: Arc<Semaphore>,
    /// Refusals of over-limit connections in progress.
    limit_refusals: Arc<Semaphore>,
    /// The proxy's own greeting, sent before refusing a connection no backend greeted.
    refusal_greeting: Vec<u8>,
    changes: watch::Receiver<u64>,
    /// RW sessions relayed to the local mariadbd with a command in flight.
    rw_in_flight: AtomicUsize,
}

/// The running proxy. Dropping it stops the listeners and closes every session.
pub struct ProxyHandle {
    inner: Arc<Inner>,
    rw_addr: SocketAddr,
    ro_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

/// Where a new connection goes.
enum Target {
    Local(Option<MasterEpoch>),
    Forward(NodeId),
}

/// Counts an open connection for as long as it lives.
struct OpenGuard<'a>(&'a PortMetrics);

impl<'a> OpenGuard<'a> {
    fn new(m: &'a PortMetrics) -> Self {
        m.open.fetch_add(1, Relaxed);
        OpenGuard(m)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

impl ProxyHandle {
    /// Binds the RW and RO ports and starts serving.
    pub async fn start(
        config: ProxyConfig,
        oracle: Arc<dyn RouteOracle>,
        dialer: Arc<dyn PeerDialer>,
    ) -> Result<ProxyHandle, ProxyError> {
        let bind = |port: PortKind, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind { port, addr, source })
        };
        let rw = bind(PortKind::Rw, config.rw_listen).await?;
        let ro = bind(PortKind::Ro, config.ro_listen).await?;
        let local = |l: &TcpListener, port: PortKind, addr: SocketAddr| {
            l.local_addr()
                .map_err(|source| ProxyError::Bind { port, addr, source })
        };
        let rw_addr = local(&rw, PortKind::Rw, config.rw_listen)?;
        let ro_addr = local(&ro, PortKind::Ro, config.ro_listen)?;
        let limits = &config.limits;
        let inner = Arc::new(Inner {
            pool: BufferPool::new(limits.buffer_size, POOLED_BUFFERS),
            limit_rw: Arc::new(Semaphore::new(limits.max_connections_rw)),
            limit_ro: Arc::new(Semaphore::new(limits.max_connections_ro)),
            limit_peer: Arc::new(Semaphore::new(limits.max_connections_peer)),
            limit_refusals: Arc::new(Semaphore::new(CONCURRENT_LIMIT_REFUSALS)),
            refusal_greeting: refusal::greeting_packet(),
            changes: oracle.subscribe_master_changes(),
            config,
            oracle,
            dialer,
            registry: Registry::default(),
            metrics: ProxyMetrics::default(),
            rw_in_flight: AtomicUsize::new(0),
        });
        let tasks = vec![
            tokio::spawn(accept_loop(inner.clone(), rw, PortKind::Rw)),
            tokio::spawn(accept_loop(inner.clone(), ro, PortKind::Ro)),
            tokio::spawn(watch_master_changes(inner.clone())),
        ];
        Ok(ProxyHandle {
            inner,
            rw_addr,
            ro_addr,
            tasks,
        })
    }

    pub fn rw_addr(&self) -> SocketAddr {
        self.rw_addr
    }

    pub fn ro_addr(&self) -> SocketAddr {
        self.ro_addr
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// Sessions open now (client ports and peer streams).
    pub fn open_sessions(&self) -> usize {
        self.inner.registry.len()
    }

    /// RW sessions relayed to this node's mariadbd (client ones and those served for other
    /// nodes' proxies) that have a command forwarded to mariadbd whose reply has not been fully
    /// relayed back, or whose state the relay could not follow (see the module doc). Zero
    /// means no client command waits in mariadbd, a COMMIT waiting for its semi-sync ACK in
    /// particular. One relaxed load.
    pub fn rw_in_flight(&self) -> usize {
        self.inner.rw_in_flight.load(Relaxed)
    }

    /// Serves a connection another node's proxy forwarded (`InboundStream` with purpose
    /// `Proxy`, already authenticated as a cluster member: only these may carry a PROXY
    /// header). It is relayed to the local mariadbd if this node is the master (RW) or a
    /// serving replica (RO), and refused otherwise: never forwarded again.
    pub fn serve_peer_stream(&self, from: NodeId, stream: TcpStream) {
        tokio::spawn(peer_session(self.inner.clone(), from, stream));
    }

    /// Closes every RO-port session relayed to the local mariadbd (promotion step 6); their
    /// clients get an error telling them to reconnect. Returns how many were closed.
    pub fn close_local_ro_sessions(&self) -> usize {
        self.inner
            .registry
            .close_where(CloseReason::ClosedByNode, |s| {
                s.port == PortKind::Ro && s.local
            })
    }

    /// Stops accepting and closes every session with an error.
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        self.inner
            .registry
            .close_where(CloseReason::Shutdown, |_| true);
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    /// Refuses a connection no backend greeted: our own greeting, the client's handshake
    /// response, then the ERR (see `refusal`).
    async fn refuse(&self, sock: TcpStream, err: SqlError, message: &str) {
        refusal::refuse(
            sock,
            &self.refusal_greeting,
            self.config.limits.handshake_timeout,
            err,
            message,
        )
        .await;
    }

    fn port_metrics(&self, port: PortKind, from_peer: bool) -> &PortMetrics {
        match (port, from_peer) {
            (PortKind::Rw, false) => &self.metrics.rw,
            (PortKind::Ro, false) => &self.metrics.ro,
            (PortKind::Rw, true) => &self.metrics.peer_rw,
            (PortKind::Ro, true) => &self.metrics.peer_ro,
        }
    }

    /// Waits (bounded by `no_master_wait` from `started`) for an RW route. `allow_forward` is
    /// false for connections that came from another proxy.
    async fn resolve_rw(
        &self,
        started: Instant,
        allow_forward: bool,
    ) -> Result<(Target, u64), (ErrorKind, String)> {
        let deadline = started + self.config.limits.no_master_wait;
        let mut changes = self.oracle.subscribe_master_changes();
        loop {
            let generation = *changes.borrow_and_update();
            let (reason, retry_after) = match self.oracle.rw_route() {
                RwRoute::Local { master_epoch } => {
                    return Ok((Target::Local(Some(master_epoch)), generation))
                }
                RwRoute::Forward { to } if allow_forward => {
                    return Ok((Target::Forward(to), generation))
                }
                RwRoute::Forward { to } => {
                    return Err((
                        ErrorKind::NotMaster,
                        format!(
                            "QuorumSQL: a forwarded connection reached a node that is not the \
                             master (it routes to {to}); connections are never forwarded twice: \
                             nothing was executed, reconnect"
                        ),
                    ))
                }
                RwRoute::Unavailable {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err((
                    ErrorKind::NoMaster,
                    format!(
                        "QuorumSQL: no master is available ({reason}); nothing was executed, \
                         retry in about {} ms",
                        retry_after.as_millis()
                    ),
                ));
            }
            let wake = deadline.min(now + ROUTE_POLL);
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Relays to the local mariadbd: connect, write the PROXY header before mariadbd reads
    /// anything (it looks for the header in the client's first packet, after its greeting),
    /// then relay the greeting and everything after it.
    #[allow(clippy::too_many_arguments)]
    async fn run_local(
        &self,
        client: TcpStream,
        addrs: ProxiedAddrs,
        port: PortKind,
        epoch: Option<MasterEpoch>,
        generation: Option<u64>,
        metrics: &PortMetrics,
        started: Instant,
    ) {
        let connect = timeout(
            self.config.limits.connect_timeout,
            TcpStream::connect(self.config.mariadb_addr),
        )
        .await;
        let mut backend = match connect {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return self.refuse_backend(client, metrics, &e.to_string()).await,
            Err(_) => return self.refuse_backend(client, metrics, "timed out").await,
        };
        let _ = backend.set_nodelay(true);
        if let Err(e) = backend.write_all(&proxy_v2::encode(addrs, None)).await {
            return self.refuse_backend(client, metrics, &e.to_string()).await;
        }
        match refusal::backend_refusal(&backend, self.config.limits.connect_timeout).await {
            Ok(None) => {}
            Ok(Some((err, message))) => {
                metrics.error(ErrorKind::BackendRefused);
                tracing::warn!(
                    code = err.code,
                    %message,
                    "the local mariadbd refused a connection before greeting it"
                );
                return self.refuse(client, err, &message).await;
            }
            Err(why) => return self.refuse_backend(client, metrics, &why).await,
        }
        let reg = self
            .registry
            .register(SessionControl::new(port, true, generation));
        self.run_registered(
            client,
            backend,
            &reg.ctl,
            Mode::Local { port, epoch },
            metrics,
            started,
        )
        .await;
    }

    async fn refuse_backend(&self, client: TcpStream, metrics: &PortMetrics, why: &str) {
        metrics.error(ErrorKind::BackendConnect);
        tracing::warn!(addr = %self.config.mariadb_addr, error = why, "proxy cannot reach the local mariadbd");
        self.refuse(
            client,
            mysql::ER_NO_MASTER,
            &format!(
                "QuorumSQL: this node cannot reach its mariadbd ({why}); nothing was executed, retry"
            ),
        )
        .await;
    }

    /// Forwards to another node's proxy: a PROXY header with the client's address and the
    /// port kind, then bytes both ways. No check, no retry.
    #[allow(clippy::too_many_arguments)]
    async fn run_forward(
        &self,
        client: TcpStream,
        addrs: ProxiedAddrs,
        port: PortKind,
        to: NodeId,
        generation: Option<u64>,
        metrics: &PortMetrics,
        started: Instant,
    ) {
        let dial = timeout(self.config.limits.connect_timeout, self.dialer.open(to)).await;
        let mut peer = match dial {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.refuse_dial(client, metrics, to, &e.to_string()).await,
            Err(_) => return self.refuse_dial(client, metrics, to, "timed out").await,
        };
        let _ = peer.set_nodelay(true);
        if let Err(e) = peer.write_all(&proxy_v2::encode(addrs, Some(port))).await {
            return self.refuse_dial(client, metrics, to, &e.to_string()).await;
        }
        let reg = self
            .registry
            .register(SessionControl::new(port, false, generation));
        self.run_registered(client, peer, &reg.ctl, Mode::Pipe, metrics, started)
            .await;
    }

    async fn refuse_dial(&self, client: TcpStream, metrics: &PortMetrics, to: NodeId, why: &str) {
        metrics.error(ErrorKind::PeerDial);
        self.refuse(
            client,
            mysql::ER_NO_MASTER,
            &format!("QuorumSQL: cannot reach {to} ({why}); nothing was executed, retry"),
        )
        .await;
    }

    async fn run_registered(
        &self,
        client: TcpStream,
        backend: TcpStream,
        ctl: &SessionControl,
        mode: Mode,
        metrics: &PortMetrics,
        started: Instant,
    ) {
        // A master change between routing and registering would otherwise go unnoticed.
        if let Some(g) = ctl.generation {
            if *self.changes.borrow() != g {
                ctl.close(CloseReason::MasterChanged);
            }
        }
        let ctx = RelayCtx {
            mode,
            oracle: &*self.oracle,
            ctl,
            registry: &self.registry,
            pool: &self.pool,
            metrics,
            limits: &self.config.limits,
            started,
            rw_in_flight: match mode {
                Mode::Local {
                    port: PortKind::Rw, ..
                } => Some(&self.rw_in_flight),
                _ => None,
            },
        };
        let reason = relay(&ctx, client, backend).await;
        tracing::debug!(?reason, ?mode, "proxy session ended");
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, port: PortKind) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(?port, error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = inner.port_metrics(port, false);
        metrics.total.fetch_add(1, Relaxed);
        let limit = match port {
            PortKind::Rw => &inner.limit_rw,
            PortKind::Ro => &inner.limit_ro,
        };
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(client_session(inner.clone(), sock, peer, port, permit));
            }
            Err(_) => {
                metrics.error(ErrorKind::TooManyConnections);
                const MSG: &str = "Too many connections (QuorumSQL proxy limit for this port)";
                match inner.limit_refusals.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let inner = inner.clone();
                        tokio::spawn(async move {
                            inner.refuse(sock, mysql::ER_CON_COUNT, MSG).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        // A flood: no task per refusal. A fresh socket's send buffer takes
                        // this at once (libmariadb shows it as 2002 quoting our 1040).
                        let pkt = mysql::err_packet(0, mysql::ER_CON_COUNT, MSG);
                        let _ = sock.try_write(&pkt);
                    }
                }
            }
        }
    }
}

async fn client_session(
    inner: Arc<Inner>,
    sock: TcpStream,
    peer: SocketAddr,
    port: PortKind,
    _permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let metrics = inner.port_metrics(port, false);
    let _open = OpenGuard::new(metrics);
    let _ = sock.set_nodelay(true);
    let destination = sock.local_addr().unwrap_or(match port {
        PortKind::Rw => inner.config.rw_listen,
        PortKind::Ro => inner.config.ro_listen,
    });
    let addrs = ProxiedAddrs {
        source: peer,
        destination,
    };
    match port {
        PortKind::Rw => match inner.resolve_rw(started, true).await {
            Ok((Target::Local(epoch), g)) => {
                inner
                    .run_local(sock, addrs, port, epoch, Some(g), metrics, started)
                    .await
            }
            Ok((Target::Forward(to), g)) => {
                inner
                    .run_forward(sock, addrs, port, to, Some(g), metrics, started)
                    .await
            }
            Err((kind, msg)) => {
                metrics.error(kind);
                inner.refuse(sock, mysql::ER_NO_MASTER, &msg).await;
            }
        },
        PortKind::Ro => match inner.oracle.ro_route() {
            RoRoute::Local => {
                inner
                    .run_local(sock, addrs, port, None, None, metrics, started)
                    .await
            }
            RoRoute::Forward { to } => {
                inner
                    .run_forward(sock, addrs, port, to, None, metrics, started)
                    .await
            }
            RoRoute::Refuse { reason } => {
                metrics.error(ErrorKind::RoUnavailable);
                inner
                    .refuse(
                        sock,
                        mysql::ER_RO_UNAVAILABLE,
                        &format!(
                            "QuorumSQL: this node's replica cannot serve reads ({reason}); use \
                         another node's read-only port"
                        ),
                    )
                    .await;
            }
        },
    }
}

/// Reads the forwarding proxy's PROXY v2 header (with the port kind TLV).
async fn read_peer_header(stream: &mut TcpStream) -> Result<(ProxiedAddrs, PortKind), String> {
    let mut buf = [0u8; proxy_v2::MAX_HEADER];
    stream
        .read_exact(&mut buf[..proxy_v2::FIXED_LEN])
        .await
        .map_err(|e| e.to_string())?;
    let mut fixed = [0u8; proxy_v2::FIXED_LEN];
    fixed.copy_from_slice(&buf[..proxy_v2::FIXED_LEN]);
    let total = proxy_v2::total_len(&fixed).map_err(|e| e.to_string())?;
    stream
        .read_exact(&mut buf[proxy_v2::FIXED_LEN..total])
        .await
        .map_err(|e| e.to_string())?;
    proxy_v2::decode(&buf[..total]).map_err(|e| e.to_string())
}

async fn peer_session(inner: Arc<Inner>, from: NodeId, mut stream: TcpStream) {
    let started = Instant::now();
    let Ok(_permit) = inner.limit_peer.clone().try_acquire_owned() else {
        inner.metrics.peer_rw.error(ErrorKind::TooManyConnections);
        inner
            .refuse(
                stream,
                mysql::ER_CON_COUNT,
                "Too many connections (QuorumSQL proxy limit for forwarded connections)",
            )
            .await;
        return;
    };
    let header = timeout(
        inner.config.limits.handshake_timeout,
        read_peer_header(&mut stream),
    )
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    let (addrs, port) = match header {
        Ok(h) => h,
        Err(why) => {
            inner.metrics.peer_rw.error(ErrorKind::BadPeerHeader);
            tracing::warn!(%from, error = %why, "bad forwarding header on a proxy peer stream");
            inner
                .refuse(
                    stream,
                    mysql::ER_HANDSHAKE,
                    &format!("QuorumSQL: bad forwarding header from {from}: {why}"),
                )
                .await;
            return;
        }
    };
    let metrics = inner.port_metrics(port, true);
    metrics.total.fetch_add(1, Relaxed);
    let _open = OpenGuard::new(metrics);
    let _ = stream.set_nodelay(true);
    match port {
        PortKind::Rw => match inner.resolve_rw(started, false).await {
            Ok((Target::Local(epoch), g)) => {
                inner
                    .run_local(stream, addrs, port, epoch, Some(g), metrics, started)
                    .await
            }
            Ok((Target::Forward(_), _)) => {
                // resolve_rw never returns Forward when forwarding is not allowed.
                metrics.error(ErrorKind::NotMaster);
            }
            Err((kind, msg)) => {
                metrics.error(kind);
                inner.refuse(stream, mysql::ER_NO_MASTER, &msg).await;
            }
        },
        PortKind::Ro => match inner.oracle.ro_route() {
            RoRoute::Local => {
                inner
                    .run_local(stream, addrs, port, None, None, metrics, started)
                    .await
            }
            RoRoute::Forward { .. } | RoRoute::Refuse { .. } => {
                metrics.error(ErrorKind::RoUnavailable);
                inner
                    .refuse(
                        stream,
                        mysql::ER_RO_UNAVAILABLE,
                        "QuorumSQL: the replica this read-only connection was forwarded to cannot \
                     serve reads now; reconnect",
                    )
                    .await;
            }
        },
    }
}

/// Closes every RW session opened under an older master generation.
async fn watch_master_changes(inner: Arc<Inner>) {
    let mut rx = inner.oracle.subscribe_master_changes();
    rx.borrow_and_update();
    while rx.changed().await.is_ok() {
        let g = *rx.borrow_and_update();
        inner.metrics.routing_changes.fetch_add(1, Relaxed);
        // Forwarding sessions let the master's proxy answer a command in flight first.
        let n = inner
            .registry
            .close_or_linger_where(CloseReason::MasterChanged, |s| {
                s.port == PortKind::Rw && s.generation.is_some_and(|sg| sg < g)
            });
        tracing::info!(
            generation = g,
            closed = n,
            "master changed: RW sessions closed"
        );
    }
}
