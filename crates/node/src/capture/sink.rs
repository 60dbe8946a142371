//! The boundary between capture and the global binlog: what capture proposes and what it is told.
//!
//! Capture calls [`TxnSink::append`] with one batch at a time (group commit) and sends semi-sync
//! ACKs only for transactions completed by an append the sink reports as
//! [`AppendOutcome::Accepted`]. Anything else ends capture: a rejected append means this node's
//! epoch is over or the log moved under it, and an append whose outcome is unknown may or may not
//! be in the log, so its transactions must never be ACKed (DESIGN §2, design review 5).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use quorumsql_wire::{BinlogPos, Gtid};

/// The master epoch capture proposes under: the raft term in which this node was promoted.
pub use quorumsql_log::Epoch;

/// The content digest of a whole transaction (`quorumsql_wire::txn`), as recorded in the log.
pub use quorumsql_wire::txn::TxnDigest;

/// One transaction, or one piece of a transaction larger than the chunk size, exactly as the
/// master wrote it. A transaction that fits travels as a single part with `chunk_index == 0` and
/// `last == true`; a larger one as consecutive parts with increasing `chunk_index`, in
/// consecutive appends, and counts as captured only with its `last` part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedTxn {
    pub gtid: Gtid,
    /// Where this part ends in the master's binlog: file from the last ROTATE, offset = the
    /// `log_pos` of its last event. On the last part this is the transaction's end, the position
    /// capture ACKs. Only meaningful on this master.
    pub origin: BinlogPos,
    /// Digest of the whole transaction; known, and set, only on the `last` part (capture
    /// streams the earlier parts before it has seen the end).
    pub digest: Option<TxnDigest>,
    /// 0-based index of this part within its transaction.
    pub chunk_index: u32,
    /// True on the part that completes the transaction.
    pub last: bool,
    /// Raw binlog events (each with its 19-byte header and CRC32) of this part. A part boundary
    /// may fall inside an event when one event is larger than the chunk size.
    pub events: Bytes,
}

impl CapturedTxn {
    /// True for a transaction that travels whole in this one part.
    pub fn is_whole(&self) -> bool {
        self.chunk_index == 0 && self.last
    }
}

/// What the log decided about one append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Committed by raft and accepted by the state machine: the completed transactions are durable
    /// on a majority and capture may ACK them.
    Accepted,
    /// Committed by raft but refused by the state machine (stale epoch, `prev_gtid` mismatch, ...).
    /// Never ACKed; capture stops with [`super::CaptureError::Rejected`].
    Rejected { reason: String },
}

/// The sink could not tell whether the append is in the log (proposal dropped, node shutting
/// down, leadership lost before the outcome was known). Capture treats it like a rejection: it
/// stops without ACKing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The proposal's fate is unknown (dropped, timed out, leader changed).
    #[error("append outcome unknown: {0}")]
    Unknown(String),
    /// This node is fenced or no longer the master of the epoch; nothing more will be accepted.
    #[error("sink fenced: {0}")]
    Fenced(String),
}

/// Boxed future returned by [`TxnSink::append`] (the trait is used as `Arc<dyn TxnSink>`).
pub type AppendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<AppendOutcome, SinkError>> + Send + 'a>>;

/// Where captured transactions go: implemented by the node over the global binlog, and by
/// `FakeLogSink` in tests.
///
/// Capture has at most one append in flight and proposes the next only after the previous one
/// resolved, so `prev_gtid` is always the last complete GTID of the log as capture knows it.
///
/// The returned future may be dropped before it resolves (capture stopped or failed elsewhere);
/// the proposal may still commit in the log, capture just never ACKs it. Parts of one chunked
/// transaction arrive in consecutive appends with `chunk_index` 0, 1, ...; only the `last` part
/// carries the digest and completes the transaction.
pub trait TxnSink: Send + Sync + 'static {
    /// Proposes `Append { epoch, prev_gtid, txns }` and resolves once the state machine decided.
    /// `prev_gtid` is the last *complete* transaction before `txns` (`None` for an empty log).
    fn append(
        &self,
        epoch: Epoch,
        prev_gtid: Option<Gtid>,
        txns: Vec<CapturedTxn>,
    ) -> AppendFuture<'_>;
}
