//! Reading transactions back in pieces, so a reader's memory is bounded by its `max_bytes`, not by
//! the size of the largest transaction (issue #2: a 1 GiB transaction travels as ~256 chunks of
//! the 4 MiB entry cap, and serve must never hold all of it).
//!
//! Visibility is exactly that of [`LogCore::txns_after`]: only accepted transactions whose last
//! chunk is applied (so committed) have a [`TxnRecord`]; an open chunked transaction has none, so
//! no piece of it is ever returned.

use bytes::Bytes;

use super::{LogCore, LogError};
use crate::entry::{Command, EntryPayload};
use crate::state_machine::{ChunkLoc, TxnRecord};
use crate::store::LogStore;
use crate::types::Gtid;

/// Where a piece-wise read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadCursor {
    /// At the start of the first transaction after this one (`None`: the oldest retained one).
    After(Option<Gtid>),
    /// `offset` bytes into the events of transaction `gtid`.
    Within {
        gtid: Gtid,
        offset: u64,
        /// Where `offset` lies among the transaction's chunks. A cursor from
        /// [`TxnPiece::next_cursor`] has it, so the next read starts reading at that chunk; with
        /// `None` the read first reads the chunks before `offset` to find it (correct, but it
        /// costs a read of everything before `offset`).
        at: Option<ChunkPos>,
    },
}

impl ReadCursor {
    /// A cursor `offset` bytes into `gtid` whose chunk position is not known.
    pub fn within(gtid: Gtid, offset: u64) -> ReadCursor {
        ReadCursor::Within {
            gtid,
            offset,
            at: None,
        }
    }
}

/// A position inside one transaction's chunks: chunk number (0-based, in the transaction) and the
/// byte within that chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPos {
    pub chunk: u32,
    pub byte: u64,
}

/// A run of one transaction's event bytes: one or more of its chunks, or part of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnPiece {
    pub gtid: Gtid,
    /// Raft index of the entry that completed the transaction (as [`super::CommittedTxn::index`]).
    pub index: u64,
    /// Where `events` starts within the transaction's events (all chunks concatenated).
    pub offset: u64,
    /// Raw event bytes; event boundaries need not fall on piece boundaries.
    pub events: Vec<u8>,
    /// This piece ends the transaction.
    pub last: bool,
    /// Where the next piece of this transaction starts (meaningless when `last`).
    next_at: ChunkPos,
}

impl TxnPiece {
    /// The cursor that continues right after this piece.
    pub fn next_cursor(&self) -> ReadCursor {
        if self.last {
            ReadCursor::After(Some(self.gtid))
        } else {
            ReadCursor::Within {
                gtid: self.gtid,
                offset: self.offset + self.events.len() as u64,
                at: Some(self.next_at),
            }
        }
    }
}

/// The one decoded entry a read keeps: consecutive chunks often share an entry (group commit puts
/// many small transactions in one), and a read never holds more than one entry's payload.
#[derive(Default)]
struct EntryCache {
    held: Option<(u64, EntryPayload)>,
}

impl<S: LogStore> LogCore<S> {
    /// Accepted, committed transactions in pieces, starting at `from`, with at most `max_bytes`
    /// (at least 1) of events in total.
    ///
    /// A transaction of at most `max_bytes` bytes comes whole (one piece with `offset == 0` and
    /// `last`), and small transactions come many per call as with [`LogCore::txns_after`]; a
    /// transaction that does not fit what is left of `max_bytes` ends the call, unless the call
    /// has returned nothing yet: then its first `max_bytes` bytes come as a piece and the rest
    /// follows from [`TxnPiece::next_cursor`]. A transaction of several chunks is started only at
    /// the start of a call (its size is not known without reading it all).
    ///
    /// Memory per call: the returned bytes (`max_bytes`) plus one decoded entry (the entry cap).
    /// An empty result means nothing more is readable yet.
    pub fn read_pieces(
        &self,
        from: ReadCursor,
        max_bytes: usize,
    ) -> Result<Vec<TxnPiece>, LogError> {
        let max = max_bytes.max(1) as u64;
        let mut out: Vec<TxnPiece> = Vec::new();
        let mut used = 0u64;
        let mut cache = EntryCache::default();
        let after_seq = match from {
            ReadCursor::After(after) => self.resolve_after(after)?,
            ReadCursor::Within { gtid, offset, at } => {
                let rec = self.sm.txn(gtid).ok_or_else(|| self.lost_cursor(gtid))?;
                let at = match at {
                    Some(at) => at,
                    None => self.locate_offset(rec, offset, &mut cache)?,
                };
                let piece = self.read_run(rec, offset, at, max, &mut cache)?;
                used += piece.events.len() as u64;
                let done = piece.last;
                out.push(piece);
                if !done {
                    return Ok(out);
                }
                Some(gtid.seq)
            }
        };
        for rec in self.sm.txns_after_seq(after_seq) {
            let left = max - used;
            if left == 0 {
                break;
            }
            if !out.is_empty() {
                if rec.chunks.len() > 1 {
                    break;
                }
                let Some(first) = rec.chunks.first() else {
                    break;
                };
                if self.chunk(rec, first, &mut cache)?.len() as u64 > left {
                    break;
                }
            }
            let piece = self.read_run(rec, 0, ChunkPos { chunk: 0, byte: 0 }, left, &mut cache)?;
            used += piece.events.len() as u64;
            let done = piece.last;
            out.push(piece);
            if !done {
                break;
            }
        }
        Ok(out)
    }

    /// The seq after which reading starts for a cursor after `after`, with the errors
    /// [`LogCore::txns_after`] gives.
    pub(super) fn resolve_after(&self, after: Option<Gtid>) -> Result<Option<u64>, LogError> {
        match after {
            Some(g) => {
                if self.sm.txn(g).is_some() || self.sm.compacted_through() == Some(g) {
                    Ok(Some(g.seq))
                } else {
                    Err(self.lost_cursor(g))
                }
            }
            None => match self.sm.compacted_through_seq() {
                Some(c) => Err(LogError::Compacted {
                    after: "the start of the log".into(),
                    through: c,
                }),
                None => Ok(None),
            },
        }
    }

    /// Why `g` cannot be read: compacted if older than the retained log (whether it was ours can
    /// no longer be told) or the newest compacted transaction itself, unknown otherwise.
    fn lost_cursor(&self, g: Gtid) -> LogError {
        match self.sm.compacted_through_seq() {
            Some(c) if (g.seq < c && g.domain == 0) || self.sm.compacted_through() == Some(g) => {
                LogError::Compacted {
                    after: g.to_string(),
                    through: c,
                }
            }
            _ => LogError::UnknownGtid(g),
        }
    }

    /// Finds `offset` among `rec`'s chunks by reading the chunks before it.
    fn locate_offset(
        &self,
        rec: &TxnRecord,
        offset: u64,
        cache: &mut EntryCache,
    ) -> Result<ChunkPos, LogError> {
        let mut skipped = 0u64;
        for (i, loc) in rec.chunks.iter().enumerate() {
            let len = self.chunk(rec, loc, cache)?.len() as u64;
            if offset < skipped + len {
                return Ok(ChunkPos {
                    chunk: u32::try_from(i).unwrap_or(u32::MAX),
                    byte: offset - skipped,
                });
            }
            skipped += len;
        }
        Err(LogError::BadCursor {
            gtid: rec.gtid,
            offset,
            detail: format!("the transaction has only {skipped} bytes"),
        })
    }

    /// One piece of `rec` from `offset` (at chunk position `at`), at most `max` bytes.
    fn read_run(
        &self,
        rec: &TxnRecord,
        offset: u64,
        at: ChunkPos,
        max: u64,
        cache: &mut EntryCache,
    ) -> Result<TxnPiece, LogError> {
        let bad = |detail: String| LogError::BadCursor {
            gtid: rec.gtid,
            offset,
            detail,
        };
        let first = at.chunk as usize;
        if first >= rec.chunks.len() {
            return Err(bad(format!(
                "chunk {} of a transaction with {} chunks",
                at.chunk,
                rec.chunks.len()
            )));
        }
        let mut events = Vec::new();
        let mut byte = at.byte;
        let mut next_at = at;
        let mut last = false;
        for (i, loc) in rec.chunks.iter().enumerate().skip(first) {
            let data = self.chunk(rec, loc, cache)?;
            let len = data.len() as u64;
            // Only the first chunk read may start inside; it must start inside (an empty chunk
            // is never written, and a cursor at a chunk's end names the next chunk instead).
            if byte >= len && !(len == 0 && byte == 0) {
                return Err(bad(format!(
                    "byte {byte} of chunk {i}, which has {len} bytes"
                )));
            }
            let room = max - events.len() as u64;
            let take = (len - byte).min(room);
            events.extend_from_slice(&data[byte as usize..(byte + take) as usize]);
            if byte + take < len {
                next_at = ChunkPos {
                    chunk: u32::try_from(i).unwrap_or(u32::MAX),
                    byte: byte + take,
                };
                break;
            }
            next_at = ChunkPos {
                chunk: u32::try_from(i + 1).unwrap_or(u32::MAX),
                byte: 0,
            };
            byte = 0;
            if i + 1 == rec.chunks.len() {
                last = true;
                break;
            }
            if events.len() as u64 >= max {
                break;
            }
        }
        Ok(TxnPiece {
            gtid: rec.gtid,
            index: rec.last_index(),
            offset,
            events,
            last,
            next_at,
        })
    }

    /// The event bytes of one chunk of `rec` (a cheap clone of the decoded entry's buffer).
    fn chunk(
        &self,
        rec: &TxnRecord,
        loc: &ChunkLoc,
        cache: &mut EntryCache,
    ) -> Result<Bytes, LogError> {
        let corrupt = |detail: String| LogError::CorruptEntry {
            index: loc.index,
            gtid: rec.gtid,
            detail,
        };
        if cache.held.as_ref().is_none_or(|(i, _)| *i != loc.index) {
            // Drop the previous entry first: at most one decoded entry at a time.
            cache.held = None;
            let store = self.raw.store().store();
            let ents = store.entries(loc.index, loc.index + 1, None)?;
            let e = ents
                .first()
                .ok_or_else(|| corrupt("entry missing".into()))?;
            let p = EntryPayload::decode(&e.data).map_err(|x| corrupt(x.to_string()))?;
            cache.held = Some((loc.index, p));
        }
        let p = cache
            .held
            .as_ref()
            .map(|(_, p)| p)
            .ok_or_else(|| corrupt("no payload".into()))?;
        p.commands
            .get(loc.command as usize)
            .and_then(|c| match &c.command {
                Command::Append { txns, .. } => txns.get(loc.txn as usize),
                _ => None,
            })
            .filter(|t| t.gtid == rec.gtid)
            .map(|t| t.events.clone())
            .ok_or_else(|| corrupt("recorded chunk position holds something else".into()))
    }

    /// All of `rec`'s events, concatenated (the whole-transaction read).
    pub(super) fn read_all_chunks(&self, rec: &TxnRecord) -> Result<Vec<u8>, LogError> {
        let mut cache = EntryCache::default();
        let mut events = Vec::new();
        for loc in &rec.chunks {
            events.extend_from_slice(&self.chunk(rec, loc, &mut cache)?);
        }
        Ok(events)
    }
}
