//! The serve listener: accepts replica connections on loopback, keeps the registry that `KILL n`
//! and a new dump of the same replica server_id use, counts what happened, and publishes
//! [`ServeEvent`]s (a refusal is what roles acts on).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quorumsql_wire::auth::native_password_hash;
use quorumsql_wire::{Gtid, GtidState};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::error::ServeError;
use super::session;
use super::source::TxnSource;
use super::start::RefusalReason;

/// How serve is set up. [`ServeConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Loopback address to listen on (port 0 picks a free port; see [`ServeHandle::local_addr`]).
    pub listen: SocketAddr,
    /// serve's own server_id: reported to the replica and carried by the metadata events. Must
    /// differ from the replica's and from every node's server_id.
    pub server_id: u32,
    /// The account the replica uses (`CHANGE MASTER TO master_user=…, master_password=…`),
    /// checked with mysql_native_password.
    pub user: String,
    pub password: String,
    /// Heartbeat period when the replica does not ask for one (`@master_heartbeat_period`).
    pub heartbeat: Duration,
    /// Upper bound of the bytes read from the source at once. A dump holds about this much plus
    /// the largest single event (a transaction larger than this is read and sent in pieces),
    /// whatever the size of the transaction.
    pub batch_bytes: usize,
    /// Virtual binlog files are rotated before reaching this size (capped below 4 GiB).
    pub rotate_at: u64,
    /// Largest command packet accepted from a replica.
    pub max_command_bytes: usize,
    /// Connections beyond this many are answered with error 1040 and closed.
    pub max_connections: u64,
    /// A client must authenticate within this time.
    pub auth_timeout: Duration,
}

impl ServeConfig {
    pub fn new(listen: SocketAddr, server_id: u32, user: &str, password: &str) -> Self {
        ServeConfig {
            listen,
            server_id,
            user: user.to_string(),
            password: password.to_string(),
            heartbeat: Duration::from_secs(30),
            batch_bytes: 8 << 20,
            rotate_at: 1 << 30,
            max_command_bytes: 1 << 20,
            max_connections: 32,
            auth_timeout: Duration::from_secs(10),
        }
    }
}

/// What serve reports to its owner (roles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeEvent {
    /// A replica started a dump from `state`.
    DumpStarted {
        conn: u32,
        replica_server_id: u32,
        state: GtidState,
        semisync: bool,
    },
    /// A replica was answered with error 1236: it stopped replicating. `gtid` is the position
    /// concerned (`None` for an empty connect state or a protocol refusal).
    Refused {
        conn: u32,
        replica_server_id: u32,
        gtid: Option<Gtid>,
        reason: RefusalReason,
    },
    /// The replica's position is beyond the end of the log (this node's log lags): the dump
    /// waits, sending heartbeats, until the log reaches `gtid`, then checks it exactly.
    WaitingForLog {
        conn: u32,
        replica_server_id: u32,
        gtid: Gtid,
    },
    /// A dump ended (replica gone, KILL, shutdown, source failure).
    DumpEnded {
        conn: u32,
        replica_server_id: u32,
        last_sent: Option<Gtid>,
        why: String,
    },
}

/// A snapshot of serve's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeMetrics {
    pub connections_accepted: u64,
    pub connections_open: u64,
    pub auth_failures: u64,
    pub dumps_started: u64,
    pub dumps_open: u64,
    pub refusals: u64,
    pub txns_sent: u64,
    pub events_sent: u64,
    pub bytes_sent: u64,
    pub heartbeats_sent: u64,
    pub acks_received: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicU64,
    pub auth_failures: AtomicU64,
    pub dumps_started: AtomicU64,
    pub dumps_open: AtomicU64,
    pub refusals: AtomicU64,
    pub txns_sent: AtomicU64,
    pub events_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub acks_received: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ServeMetrics {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServeMetrics {
            connections_accepted: g(&self.connections_accepted),
            connections_open: g(&self.connections_open),
            auth_failures: g(&self.auth_failures),
            dumps_started: g(&self.dumps_started),
            dumps_open: g(&self.dumps_open),
            refusals: g(&self.refusals),
            txns_sent: g(&self.txns_sent),
            events_sent: g(&self.events_sent),
            bytes_sent: g(&self.bytes_sent),
            heartbeats_sent: g(&self.heartbeats_sent),
            acks_received: g(&self.acks_received),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// One open connection in the registry.
struct ConnEntry {
    cancel: CancellationToken,
    /// Set once the connection sent COM_BINLOG_DUMP.
    dumping_for: Option<u32>,
}

/// State shared by the listener and all connections.
pub(crate) struct Shared {
    pub cfg: ServeConfig,
    pub password_hash: Option<[u8; 20]>,
    pub source: Arc<dyn TxnSource>,
    pub counters: Counters,
    pub events: broadcast::Sender<ServeEvent>,
    conns: Mutex<HashMap<u32, ConnEntry>>,
    next_conn: AtomicU32,
}

impl Shared {
    pub(crate) fn emit(&self, ev: ServeEvent) {
        // No subscriber is fine: events are advisory to whoever listens.
        let _ = self.events.send(ev);
    }

    /// `KILL n`: cancels connection `n`. False if there is no such connection.
    pub(crate) fn kill(&self, conn: u32) -> bool {
        match self.conns.lock().get(&conn) {
            Some(e) => {
                e.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Marks `conn` as the dump of `replica_server_id` and ends any older dump of that replica
    /// (a real master kills such "zombie" dump threads the same way).
    pub(crate) fn register_dump(&self, conn: u32, replica_server_id: u32) {
        let mut g = self.conns.lock();
        for (id, e) in g.iter() {
            if *id != conn && e.dumping_for == Some(replica_server_id) {
                tracing::info!(
                    conn = id,
                    replica_server_id,
                    "serve: ending the older dump of a reconnected replica"
                );
                e.cancel.cancel();
            }
        }
        if let Some(e) = g.get_mut(&conn) {
            e.dumping_for = Some(replica_server_id);
        }
    }
}

/// The fake master. See the module docs.
pub struct Serve;

impl Serve {
    /// Binds `cfg.listen` and starts accepting replicas. Must be called inside a tokio runtime.
    pub async fn start(
        cfg: ServeConfig,
        source: Arc<dyn TxnSource>,
    ) -> Result<ServeHandle, ServeError> {
        if cfg.user.is_empty() {
            return Err(ServeError::Config(
                "the replication user name is empty".into(),
            ));
        }
        if cfg.server_id == 0 {
            return Err(ServeError::Config(
                "server_id 0 is not a valid replication master id".into(),
            ));
        }
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let password_hash =
            (!cfg.password.is_empty()).then(|| native_password_hash(cfg.password.as_bytes()));
        let (events, _) = broadcast::channel(256);
        let shared = Arc::new(Shared {
            cfg,
            password_hash,
            source,
            counters: Counters::default(),
            events,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU32::new(1),
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), cancel.clone()));
        tracing::info!(%local_addr, server_id = shared.cfg.server_id, "serve: listening");
        Ok(ServeHandle {
            shared,
            cancel,
            task: Some(task),
            local_addr,
        })
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if shared.counters.connections_open.load(Ordering::Relaxed) >= shared.cfg.max_connections {
                        tracing::warn!(%peer, max = shared.cfg.max_connections, "serve: too many connections");
                        tasks.spawn(session::refuse_too_many(stream));
                        continue;
                    }
                    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                    let conn_cancel = cancel.child_token();
                    shared.conns.lock().insert(
                        conn,
                        ConnEntry { cancel: conn_cancel.clone(), dumping_for: None },
                    );
                    Counters::add(&shared.counters.connections_accepted, 1);
                    Counters::add(&shared.counters.connections_open, 1);
                    let sh = shared.clone();
                    tasks.spawn(async move {
                        if let Err(e) = session::run(stream, peer, conn, sh.clone(), conn_cancel).await {
                            tracing::info!(conn, %peer, error = %e, "serve: connection ended");
                        }
                        sh.conns.lock().remove(&conn);
                        Counters::sub(&sh.counters.connections_open, 1);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "serve: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    // Connections were cancelled with the parent token; wait for them to say goodbye.
    while tasks.join_next().await.is_some() {}
}

/// Owner's handle: address, metrics, events, shutdown. Dropping it stops serve too.
pub struct ServeHandle {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl ServeHandle {
    /// The address serve listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn metrics(&self) -> ServeMetrics {
        self.shared.counters.snapshot()
    }

    /// Events from now on (refusals, dump start/end). A slow subscriber loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<ServeEvent> {
        self.shared.events.subscribe()
    }

    /// Ends every dump connection (each replica gets a retryable error) and stops listening;
    /// returns once all connection tasks have finished.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
