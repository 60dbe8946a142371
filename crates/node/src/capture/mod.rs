//! capture: the master's only semi-sync replica (DESIGN §1, §2).
//!
//! Capture connects to the local mariadbd as a replica with a reserved server_id, asks for a
//! semi-sync GTID dump from the log's last GTID state, cuts the stream into whole transactions
//! (streaming parts of at most the chunk size for large ones), and proposes them to a [`TxnSink`]
//! many per append while the previous append is in flight (group commit). It sends the semi-sync
//! ACK for a transaction's end only after the sink said the append completing it was *accepted*;
//! under AFTER_SYNC the committing client, and every other session, sees nothing until then.
//! A rejected or unresolved append ends capture without an ACK; roles then SIGKILLs mariadbd.
//!
//! A dropped connection is not an error: capture reconnects from the GTID state the sink
//! accepted and skips (after verifying) what the master re-sends.
//!
//! Pieces: [`conn`] (the replication connection), [`cutter`] (events → transaction parts),
//! [`dedupe`] (exactly-once across reconnects), [`pipeline`] (group commit and the ACK rule),
//! [`run`] (the reader loop and reconnects), [`sink`] (the boundary to the log).

pub mod conn;
pub mod cutter;
pub mod dedupe;
pub mod pipeline;
mod run;
pub mod sink;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use quorumsql_wire::{Gtid, GtidState};
use tokio::sync::watch;

pub use conn::{ConnError, Credentials, Endpoint};
pub use cutter::CutError;
pub use dedupe::DedupeError;
pub use pipeline::{AckedPos, CaptureMetrics};
pub use sink::{AppendFuture, AppendOutcome, CapturedTxn, Epoch, SinkError, TxnDigest, TxnSink};

/// Default entry cap (DESIGN §2): the most event bytes one append carries.
pub const DEFAULT_ENTRY_CAP: usize = 4 << 20;

/// How capture connects and how much it may buffer.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub endpoint: Endpoint,
    pub credentials: Credentials,
    /// The replica server_id capture registers with. Reserved: never a node's id, because a
    /// master kills any other dump thread with the same server_id.
    pub server_id: u32,
    /// Most bytes per append, counted like the log counts an entry against its cap (event bytes
    /// plus a fixed overhead per part); transactions larger than [`CaptureConfig::chunk_size`]
    /// are streamed in parts. Use the log's entry cap.
    pub entry_cap: usize,
    /// Largest part of one transaction, in event bytes: at most `entry_cap` minus room for the
    /// entry's metadata (the binlog file name and ~160 bytes).
    pub chunk_size: usize,
    /// Most event bytes queued or in flight towards the sink; when reached, capture stops reading
    /// and the master's dump thread waits (its commits wait for ACKs anyway).
    pub max_buffered_bytes: usize,
    /// `@master_heartbeat_period`: the master sends a heartbeat after this much idle time.
    pub heartbeat: Duration,
    /// A dump connection silent for this long is considered dead and reconnected.
    pub read_timeout: Duration,
    /// Bound on every set-up step (connect, login, each query) and on writing an ACK.
    pub io_timeout: Duration,
    /// Capture fails if it cannot re-establish the dump for this long.
    pub reconnect_timeout: Duration,
    /// Largest packet accepted from the master (an event can be up to `max_allowed_packet`).
    pub max_packet: usize,
    /// Ask the master for ANNOTATE_ROWS events (the SQL text of row events). Off by default:
    /// they are not part of the transaction digest, cost log space and may carry sensitive text.
    pub annotate_rows: bool,
    /// Start without proposing until [`CaptureHandle::allow_proposals`] (promotion attaches
    /// capture before `MasterReady` is applied and proposes only after).
    pub hold_proposals: bool,
}

impl CaptureConfig {
    /// Defaults: 4 MiB entries, 1 s heartbeat, 5 s read timeout, 10 s I/O timeout.
    pub fn new(endpoint: Endpoint, credentials: Credentials, server_id: u32) -> Self {
        CaptureConfig {
            endpoint,
            credentials,
            server_id,
            entry_cap: DEFAULT_ENTRY_CAP,
            chunk_size: DEFAULT_ENTRY_CAP - (64 << 10),
            max_buffered_bytes: 4 * DEFAULT_ENTRY_CAP,
            heartbeat: Duration::from_secs(1),
            read_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            reconnect_timeout: Duration::from_secs(30),
            max_packet: (1 << 30) + (64 << 10),
            annotate_rows: false,
            hold_proposals: false,
        }
    }

    /// Sets the entry cap and derives the chunk size and buffer budget from it.
    pub fn with_entry_cap(mut self, entry_cap: usize) -> Self {
        self.entry_cap = entry_cap.max(4096);
        self.chunk_size = (self.entry_cap - self.entry_cap / 64).min(self.entry_cap - 1024);
        self.max_buffered_bytes = 4 * self.entry_cap;
        self
    }

    fn validate(&self) -> Result<(), CaptureError> {
        let bad = |what: String| Err(CaptureError::Config(what));
        if self.server_id == 0 {
            return bad("server_id 0 cannot register as a replica".into());
        }
        // Room for the append and part overhead and a binlog file name up to 512 bytes.
        if self.chunk_size == 0 || self.chunk_size + 1024 > self.entry_cap {
            return bad(format!(
                "chunk_size {} must be between 1 and entry_cap {} - 1024",
                self.chunk_size, self.entry_cap
            ));
        }
        if self.max_buffered_bytes < self.entry_cap {
            return bad(format!(
                "max_buffered_bytes {} is below entry_cap {}: appends could never fill up",
                self.max_buffered_bytes, self.entry_cap
            ));
        }
        if self.read_timeout <= self.heartbeat {
            return bad(format!(
                "read_timeout {:?} must exceed the heartbeat period {:?}",
                self.read_timeout, self.heartbeat
            ));
        }
        Ok(())
    }
}

/// Why capture ended (other than being stopped).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture configuration: {0}")]
    Config(String),
    /// The sink refused an append: this node is no longer the master of `epoch` (fence it).
    #[error("append of {first:?}..={last:?} (epoch {epoch}, prev {prev_gtid:?}) was rejected: {reason}; nothing of it was ACKed")]
    Rejected {
        epoch: Epoch,
        prev_gtid: Option<Gtid>,
        first: Option<Gtid>,
        last: Option<Gtid>,
        reason: String,
    },
    /// The sink could not resolve an append; its transactions were not ACKed.
    #[error(
        "append of {first:?}..={last:?} (epoch {epoch}) failed: {source}; nothing of it was ACKed"
    )]
    Sink {
        epoch: Epoch,
        first: Option<Gtid>,
        last: Option<Gtid>,
        source: SinkError,
    },
    /// Could not (re-)establish the dump within `reconnect_timeout`.
    #[error("cannot establish the replication dump from mariadbd at {endpoint} for {waited:?}: {source}")]
    Connect {
        endpoint: String,
        waited: Duration,
        source: Box<ConnError>,
    },
    /// Set-up refused for a reason a retry cannot fix (semi-sync off, checksum off, same id).
    #[error("replication set-up on mariadbd at {endpoint} failed: {source}")]
    Setup {
        endpoint: String,
        source: Box<ConnError>,
    },
    /// The master ended the dump with a fatal error (1236: GTID not in its binlog, purged, ...).
    #[error("mariadbd ended the dump with error {code}: {message} (capture resumed from {from})")]
    MasterFatal {
        code: u16,
        message: String,
        from: GtidState,
    },
    #[error("malformed dump stream: {0}")]
    Protocol(String),
    #[error(transparent)]
    Cut(#[from] CutError),
    /// What the master re-sent after a reconnect differs from what capture already proposed.
    #[error(transparent)]
    Diverged(#[from] DedupeError),
    #[error("capture task failed: {0}")]
    Internal(String),
}

/// How capture ended: `Ok(())` when stopped on request.
pub type CaptureOutcome = Result<(), Arc<CaptureError>>;

/// Starts capture (see the module docs).
pub struct Capture;

impl Capture {
    /// Starts capturing from `from` (the log's GTID state; the dump resumes right after it) with
    /// `last_gtid` (the log's last complete GTID, the first append's `prev_gtid`), proposing under
    /// `epoch`. Must be called inside a tokio runtime. Configuration errors end the returned
    /// handle immediately with [`CaptureError::Config`].
    pub fn start(
        cfg: CaptureConfig,
        sink: Arc<dyn TxnSink>,
        from: GtidState,
        last_gtid: Option<Gtid>,
        epoch: Epoch,
    ) -> CaptureHandle {
        let shared = Arc::new(pipeline::Shared::new(from.clone()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (allow_tx, allow_rx) = watch::channel(!cfg.hold_proposals);
        let (done_tx, done_rx) = watch::channel::<Option<CaptureOutcome>>(None);
        let handle = CaptureHandle {
            shared: shared.clone(),
            stop: stop_tx,
            allow: allow_tx,
            done: done_rx,
        };
        tokio::spawn(async move {
            let result = match cfg.validate() {
                Ok(()) => {
                    run::run(
                        cfg,
                        sink,
                        from,
                        last_gtid,
                        epoch,
                        shared.clone(),
                        stop_rx,
                        allow_rx,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            shared.attached.store(false, Ordering::SeqCst);
            if let Err(e) = &result {
                tracing::error!(error = %e, "capture ended");
            }
            let _ = done_tx.send(Some(result.map_err(Arc::new)));
        });
        handle
    }
}

/// Controls and observes a running capture. Dropping the handle stops capture.
pub struct CaptureHandle {
    shared: Arc<pipeline::Shared>,
    stop: watch::Sender<bool>,
    allow: watch::Sender<bool>,
    done: watch::Receiver<Option<CaptureOutcome>>,
}

impl CaptureHandle {
    /// True while a semi-sync dump is running: the master framed its first event semi-sync, so it
    /// counts capture among `Rpl_semi_sync_master_clients`.
    pub fn attached(&self) -> bool {
        self.shared.attached.load(Ordering::SeqCst)
    }

    /// The newest transaction end ACKed to the master.
    pub fn last_acked(&self) -> Option<AckedPos> {
        self.shared.last_acked.lock().clone()
    }

    /// GTID state of everything the sink accepted (including `from`).
    pub fn accepted_state(&self) -> GtidState {
        self.shared.accepted.lock().clone()
    }

    /// The server's connection id of the current dump connection (what the processlist shows).
    pub fn dump_connection_id(&self) -> Option<u32> {
        *self.shared.dump_connection_id.lock()
    }

    pub fn metrics(&self) -> CaptureMetrics {
        self.shared.metrics.snapshot()
    }

    /// Lets capture propose (after `MasterReady{self, T}` is applied).
    pub fn allow_proposals(&self) {
        let _ = self.allow.send(true);
    }

    /// Asks capture to stop. An append in flight is abandoned and never ACKed.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// How capture ended, if it has.
    pub fn outcome(&self) -> Option<CaptureOutcome> {
        self.done.borrow().clone()
    }

    /// Waits until capture ends.
    pub async fn wait(&self) -> CaptureOutcome {
        let mut rx = self.done.clone();
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or(Ok(())),
            Err(_) => Err(Arc::new(CaptureError::Internal(
                "capture task vanished without an outcome".into(),
            ))),
        };
        outcome
    }

    /// Stops capture and waits for it to end.
    pub async fn shutdown(self) -> CaptureOutcome {
        self.stop();
        self.wait().await
    }
}

impl Drop for CaptureHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
