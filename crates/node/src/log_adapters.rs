//! The two places where MariaDB meets the global binlog: capture's [`TxnSink`] (the master's
//! transactions go in) and serve's [`TxnSource`] (the replicas' transactions come out).

use bytes::Bytes;
use quorumsql_log::runtime::{LogHandle, SeqLookup};
use quorumsql_log::{Command, LogError, Outcome, ProposeError, ReadCursor, TxnChunk};
use quorumsql_wire::Gtid;
use tokio::sync::watch;

use crate::capture::{AppendFuture, AppendOutcome, CapturedTxn, Epoch, SinkError, TxnSink};
use crate::serve::{SourceError, Standing, TxnPiece, TxnReader, TxnSource};

/// Capture's appends become `Append` proposals; only an *accepted* outcome lets capture ACK.
pub struct LogSink {
    log: LogHandle,
}

impl LogSink {
    pub fn new(log: LogHandle) -> LogSink {
        LogSink { log }
    }
}

impl TxnSink for LogSink {
    fn append(
        &self,
        epoch: Epoch,
        prev_gtid: Option<Gtid>,
        txns: Vec<CapturedTxn>,
    ) -> AppendFuture<'_> {
        let chunks: Vec<TxnChunk> = txns
            .into_iter()
            .map(|t| TxnChunk {
                gtid: t.gtid,
                origin: t.origin,
                // The content digest (positions excluded) is known once the last part is seen;
                // it is what a rejoining node's re-logged copy is compared with.
                digest: t.digest.map(|d| d.0).unwrap_or([0; 32]),
                chunk: t.chunk_index,
                last: t.last,
                events: t.events,
            })
            .collect();
        Box::pin(async move {
            let cmd = Command::Append {
                epoch,
                prev_gtid,
                txns: chunks,
            };
            match self.log.propose(cmd).await {
                Ok(p) => match p.outcome {
                    Outcome::Accepted => Ok(AppendOutcome::Accepted),
                    Outcome::Rejected(r) => Ok(AppendOutcome::Rejected {
                        reason: r.to_string(),
                    }),
                    Outcome::Dropped => Err(SinkError::Unknown(
                        "the append never reached the committed log (leader changed)".into(),
                    )),
                },
                Err(ProposeError::NotLeader { leader }) => Err(SinkError::Fenced(format!(
                    "no longer the raft leader (leader: {leader:?})"
                ))),
                Err(e) => Err(SinkError::Unknown(e.to_string())),
            }
        })
    }
}

/// serve reads committed, accepted transactions from the log (in pieces, see [`LogTxnReader`]).
pub struct LogTxnSource {
    log: LogHandle,
    rt: tokio::runtime::Handle,
    changes: watch::Receiver<u64>,
}

impl LogTxnSource {
    /// Must be called inside the runtime `rt` (it spawns the task that turns applied positions
    /// into serve's change counter).
    pub fn new(log: LogHandle, rt: tokio::runtime::Handle) -> LogTxnSource {
        let (tx, changes) = watch::channel(0u64);
        let mut applied = log.subscribe_applied();
        rt.spawn(async move {
            loop {
                let idx = applied.borrow_and_update().index;
                if tx.send(idx).is_err() {
                    return;
                }
                if applied.changed().await.is_err() {
                    return;
                }
            }
        });
        LogTxnSource { log, rt, changes }
    }

    fn lookup(&self, domain: u32, seq: u64) -> Result<SeqLookup, SourceError> {
        self.rt
            .block_on(self.log.lookup_seq(domain, seq))
            .map_err(|e| SourceError::Unavailable(e.to_string()))
    }
}

impl TxnSource for LogTxnSource {
    fn locate(&self, gtid: Gtid) -> Result<Standing, SourceError> {
        Ok(match self.lookup(gtid.domain, gtid.seq)? {
            SeqLookup::Txn { gtid: held, .. } if held == gtid => Standing::Exact,
            SeqLookup::Txn { gtid: held, .. } => Standing::Mismatch { held: Some(held) },
            SeqLookup::Compacted => Standing::Compacted,
            SeqLookup::UnknownDomain => Standing::UnknownDomain,
            SeqLookup::Ahead => Standing::Ahead,
            SeqLookup::Missing => Standing::Mismatch { held: None },
        })
    }

    fn holds_full_history(&self) -> Result<bool, SourceError> {
        Ok(!matches!(self.lookup(0, 1)?, SeqLookup::Compacted))
    }

    fn reader(&self, after: Option<Gtid>) -> Box<dyn TxnReader> {
        Box::new(LogTxnReader {
            log: self.log.clone(),
            rt: self.rt.clone(),
            cursor: ReadCursor::After(after),
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

/// serve's reader of the log: piece-wise reads (`LogHandle::read_pieces`), so a transaction larger
/// than serve's read size is never held whole, here or on the log's runtime thread.
pub struct LogTxnReader {
    log: LogHandle,
    rt: tokio::runtime::Handle,
    /// Where the next read starts; moves past every piece handed out.
    cursor: ReadCursor,
}

impl TxnReader for LogTxnReader {
    fn read(&mut self, max_bytes: usize) -> Result<Vec<TxnPiece>, SourceError> {
        let pieces = self
            .rt
            .block_on(self.log.read_pieces(self.cursor, max_bytes))
            .map_err(|e| match (e, self.cursor) {
                (LogError::Compacted { .. }, ReadCursor::After(Some(a))) => {
                    SourceError::Compacted { after: a }
                }
                (LogError::Compacted { .. }, ReadCursor::Within { gtid, .. }) => {
                    SourceError::Compacted { after: gtid }
                }
                (LogError::UnknownGtid(g), _) => SourceError::UnknownCursor(g),
                (e, _) => SourceError::Unavailable(e.to_string()),
            })?;
        if let Some(p) = pieces.last() {
            self.cursor = p.next_cursor();
        }
        Ok(pieces
            .into_iter()
            .map(|p| TxnPiece {
                gtid: p.gtid,
                offset: p.offset,
                // Zero-copy: the log's buffer becomes the piece.
                events: Bytes::from(p.events),
                last: p.last,
                origin_fd: None,
            })
            .collect())
    }
}
