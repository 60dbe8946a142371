//! The client ports: RW and RO (DESIGN §2 step 1, §3 forwarding rule, §4).
//!
//! - **RW port** on every node. On the master the proxy connects to the local mariadbd, writes a
//!   PROXY v2 header carrying the client's address, and relays; before forwarding *each* client
//!   packet it asks [`RouteOracle::may_forward`] (leader of the master's term, `MasterReady`
//!   applied, not transferring, lease held) and answers with an ERR and closes when the answer is
//!   no. On other nodes it forwards the connection over an authenticated peer stream to the
//!   master's proxy ([`PeerDialer`]), sending a PROXY v2 header first; that forwarding proxy
//!   checks nothing itself, never retries, and a proxy never re-forwards a connection that came
//!   from another proxy ([`ProxyHandle::serve_peer_stream`]).
//! - **RO port**: relays to the local replica; refuses new connections while the replica is
//!   diverged, rebuilding or behind ([`RoRoute::Refuse`]); on the master it forwards to a replica.
//!
//! What the relay changes or refuses (only client packets are inspected, and only their heads;
//! see `statement` for the list): TLS is not supported yet (CLIENT_SSL is cleared from the
//! greeting and SSL requests get 1043); compression is switched off; multi-statements are
//! switched off unless `ProxyLimits::allow_multi_statements`; `LOCAL INFILE` data is followed
//! so that file contents are never read as commands.
//!
//! Error codes the proxy sends (SQLSTATE class 08 = connection exception, so pools reconnect):
//! - 1053 / 08S01: no master right now (election, promotion), or this node cannot route; nothing
//!   was executed; retry. Sent within `ProxyLimits::no_master_wait` of the connect. Also sent
//!   when an open RW session is closed (master change, lease lost or a packet held by the
//!   forwarding rule — e.g. a planned switchover's drain — for longer than the lease pause,
//!   shutdown) while it has **no command in flight**: it was idle (the last reply was fully
//!   relayed to the client) or the packet the proxy held is a new command, which never reached
//!   mariadbd. Nothing was executed; the client may reconnect and retry.
//! - 1053 / 08007 ("transaction resolution unknown"): the same closes while a command **is in
//!   flight**: forwarded to mariadbd with its reply not fully relayed. It may or may not have
//!   committed (a COMMIT waiting for its semi-sync ACK in particular). The relay claims "not in
//!   flight" only when it followed the reply to its last packet (OK / ERR, result sets with or
//!   without `CLIENT_DEPRECATE_EOF`, more results of a `CALL`, prepare definitions); whatever it
//!   cannot follow — pipelined commands, cursors, `LOAD DATA LOCAL INFILE` until its final OK,
//!   `COM_STMT_SEND_LONG_DATA` (no reply) until the next reply, rare commands — counts as in
//!   flight (`reply` has the rule). A forwarding proxy follows its sessions the same way; on a
//!   master change it closes idle ones at once and gives the others up to the lease pause plus
//!   1 s for the master's proxy, which knows whether the command reached mariadbd, to answer.
//!   [`ProxyHandle::rw_in_flight`] counts the local RW sessions with a command in flight.
//! - 1053 / 08007 also replaces an OK the master's proxy withheld: it ended a write transaction
//!   that the global binlog does not hold (or that could not be verified in time), e.g. after
//!   mariadbd turned binary logging off (`commit_check`); the session is closed and the commit
//!   alarm raised.
//! - 1927 / 08007: closed by `KILL` through the proxy (outcome of its statement unknown).
//! - 1040 / 08004 too many connections; 1043 / 08S01 bad or stalled handshake or a TLS request;
//!   1159 / 08S01 idle timeout; 1235 / 42000 statement refused (the connection stays open).
//!
//! A connection refused before any mariadbd greeted it (no master, too many connections, RO
//! unavailable, mariadbd unreachable or refusing with its own pre-greeting ERR) gets the proxy's
//! own greeting, and the ERR answers the client's handshake response (sequence id 2): an ERR in
//! place of the greeting would be reported by libmariadb as its own 2002 ("before completion of
//! TLS handshake"), hiding the code (see `refusal`).
//!
//! `CONNECTION_ID()` and the greeting's thread id are mariadbd's own thread id on the master (the
//! greeting is relayed), so `KILL n` with an id a client read from `CONNECTION_ID()` or
//! `SHOW PROCESSLIST` names the proxy session whose backend connection has that id. After a
//! failover ids belong to the new master's mariadbd; old ids are unknown there.

mod commit_check;
mod metrics;
pub mod mysql;
pub mod proxy_v2;
mod refusal;
mod registry;
mod relay;
mod reply;
mod server;
pub mod statement;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use quorumsql_peer::NodeId;
use quorumsql_wire::Gtid;
use tokio::net::TcpStream;
use tokio::sync::watch;

pub use commit_check::{CommitEvidence, CommitVerdict};
pub use metrics::{ErrorKind, MetricsSnapshot, PortMetricsSnapshot, ProxyMetrics};
pub use server::{ProxyError, ProxyHandle};

/// Which client port a session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortKind {
    Rw,
    Ro,
}

impl PortKind {
    pub(crate) fn tlv_byte(self) -> u8 {
        match self {
            PortKind::Rw => b'W',
            PortKind::Ro => b'R',
        }
    }

    pub(crate) fn from_tlv_byte(b: u8) -> Option<Self> {
        match b {
            b'W' => Some(PortKind::Rw),
            b'R' => Some(PortKind::Ro),
            _ => None,
        }
    }
}

/// The master epoch: the raft term T of the node's `MasterReady{node, T}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MasterEpoch(pub u64);

/// Where a new RW connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RwRoute {
    /// This node is the master of `master_epoch`: relay to the local mariadbd.
    Local { master_epoch: MasterEpoch },
    /// Another node is the master: forward the connection to its proxy.
    Forward { to: NodeId },
    /// No master right now (election, promotion in progress, this node cut off).
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
}

/// Where a new RO connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoRoute {
    /// The local mariadbd is a healthy replica: relay to it.
    Local,
    /// This node is the master: forward to a replica.
    Forward { to: NodeId },
    /// The local replica is diverged, rebuilding or too far behind (the reason says which).
    Refuse { reason: String },
}

/// The proxy's view of the cluster, implemented by the node over the log (the lead wires it).
/// Every method is called on the hot path or per connection: it must be cheap and never block.
pub trait RouteOracle: Send + Sync + 'static {
    /// Routing for a new RW connection.
    fn rw_route(&self) -> RwRoute;
    /// The forwarding rule (DESIGN §3), asked before forwarding each client packet of a local RW
    /// session opened under `epoch`: raft leader in term `epoch`, `MasterReady{self, epoch}`
    /// applied, not transferring leadership, lease valid now.
    fn may_forward(&self, epoch: MasterEpoch) -> bool;
    /// Routing for a new RO connection.
    fn ro_route(&self) -> RoRoute;
    /// A generation counter bumped whenever the RW routing changes (new `MasterReady` applied,
    /// this node demoted or fenced). Every RW session opened under an older generation is closed
    /// ("outcome unknown" if it had a command in flight, "nothing executed" otherwise).
    fn subscribe_master_changes(&self) -> watch::Receiver<u64>;

    /// Whether the RW relay must verify that a commit is in the global binlog before relaying
    /// the OK that ends it (invariant 7; see `commit_check`). Off by default, for fakes that
    /// have no log.
    fn commit_checks(&self) -> bool {
        false
    }
    /// Cheap and never blocking: `gtid` is known accepted right now (the newest accepted GTID).
    /// `false` only means "ask [`RouteOracle::verify_commit`]".
    fn gtid_logged_now(&self, _gtid: &Gtid) -> bool {
        false
    }
    /// Finds out, within a short bound, whether the commit the evidence describes is safe to
    /// acknowledge. On [`CommitVerdict::NotLogged`] the oracle raises the node's commit alarm
    /// (roles fences the master). Called rarely: for a GTID only when
    /// [`RouteOracle::gtid_logged_now`] said no, and for [`CommitEvidence::NoGtid`].
    fn verify_commit(&self, _evidence: CommitEvidence) -> VerifyFuture<'_> {
        Box::pin(async {
            CommitVerdict::Unknown(
                "this proxy has no global binlog to verify commits against".into(),
            )
        })
    }
}

/// A boxed future returned by [`RouteOracle::verify_commit`].
pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = CommitVerdict> + Send + 'a>>;

/// A boxed future returned by [`PeerDialer::open`].
pub type DialFuture<'a> = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + 'a>>;

/// Opens an authenticated stream to another node's proxy (`PeerNet::open_stream(to,
/// StreamPurpose::Proxy)` in the node; plain TCP in tests). The receiving node hands the stream
/// to [`ProxyHandle::serve_peer_stream`].
pub trait PeerDialer: Send + Sync + 'static {
    fn open(&self, to: NodeId) -> DialFuture<'_>;
}

/// Addresses and limits of the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Client RW port (port 0 picks a free one; see [`ProxyHandle::rw_addr`]).
    pub rw_listen: SocketAddr,
    /// Client RO port.
    pub ro_listen: SocketAddr,
    /// The local mariadbd's TCP address (127.0.0.1; `proxy_protocol_networks` must cover the
    /// proxy's source address).
    pub mariadb_addr: SocketAddr,
    pub limits: ProxyLimits,
}

/// Per-port limits and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Open client connections per port (RW, RO); the excess gets ERR 1040.
    pub max_connections_rw: usize,
    pub max_connections_ro: usize,
    /// Sessions arriving from other nodes' proxies (they also hold a mariadbd connection).
    pub max_connections_peer: usize,
    /// From accept until the handshake is done (the server's OK).
    pub handshake_timeout: Duration,
    /// No byte in either direction for this long closes the session with ERR 1159.
    pub idle_timeout: Duration,
    /// How long a new RW connection waits for a master before ERR 1053.
    pub no_master_wait: Duration,
    /// When the forwarding rule fails for a client packet, wait up to this long for it to hold
    /// again before answering with an error and closing (DESIGN §3: a short lease lapse only
    /// pauses forwarding). Zero answers at once.
    pub lease_pause: Duration,
    /// Connecting to mariadbd or to the master's proxy.
    pub connect_timeout: Duration,
    /// Relay buffer size; buffers are pooled and held only while data flows.
    pub buffer_size: usize,
    /// Let clients use multi-statements (only the first statement of a packet is inspected, so
    /// this opens a hole in the KILL/XA/SHUTDOWN refusals; off by default).
    pub allow_multi_statements: bool,
    /// Statements that name an account with this prefix (QuorumSQL's own accounts) are
    /// refused (DESIGN §4); empty turns the check off. Matched case-insensitively anywhere in
    /// the inspected head of the statement.
    pub reserved_account_prefix: String,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_connections_rw: 4096,
            max_connections_ro: 4096,
            max_connections_peer: 8192,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(8 * 3600),
            no_master_wait: Duration::from_secs(5),
            lease_pause: Duration::ZERO,
            connect_timeout: Duration::from_secs(5),
            buffer_size: 64 * 1024,
            allow_multi_statements: false,
            reserved_account_prefix: "quorumsql_".into(),
        }
    }
}
