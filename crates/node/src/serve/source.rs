//! What serve streams from: an ordered source of whole, committed, accepted transactions (the
//! global binlog in production; [`MemTxnSource`] in tests), read in pieces so that a transaction
//! larger than serve's read size is never held whole (issue #2).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use quorumsql_wire::Gtid;
use tokio::sync::watch;

/// One whole transaction as the origin master wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    pub gtid: Gtid,
    /// The whole event group: GTID event … XID / COMMIT (or GTID + one DDL), each event with its
    /// original 19-byte header and CRC32, concatenated.
    pub events: Bytes,
    /// Body of the origin server's FORMAT_DESCRIPTION event (without header and CRC; with the
    /// checksum-algorithm byte). `None`: serve's built-in 10.11 description is used. When it
    /// changes between two transactions (e.g. a failover to a server of another version) serve
    /// starts a new virtual binlog file with the new description.
    pub origin_fd: Option<Bytes>,
}

impl Txn {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// A run of one transaction's event bytes. Pieces of a transaction come in order and without
/// gaps; event boundaries need not fall on piece boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnPiece {
    pub gtid: Gtid,
    /// Where `events` starts within the transaction's events.
    pub offset: u64,
    pub events: Bytes,
    /// This piece ends the transaction.
    pub last: bool,
    /// The transaction's origin FORMAT_DESCRIPTION body (see [`Txn::origin_fd`]); the same on
    /// every piece of a transaction.
    pub origin_fd: Option<Bytes>,
}

impl TxnPiece {
    /// The piece holds the whole transaction.
    pub fn is_whole(&self) -> bool {
        self.offset == 0 && self.last
    }
}

/// Where a replica's GTID stands in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The source holds a transaction with exactly this domain, server_id and seq.
    Exact,
    /// The source holds another transaction (`held`) at this domain and seq, or none at all in a
    /// range it holds (`held: None`): the replica diverged.
    Mismatch { held: Option<Gtid> },
    /// The source has never had a transaction of this domain.
    UnknownDomain,
    /// The GTID is older than the oldest transaction the source retains.
    Compacted,
    /// The source has not got this far yet (e.g. a lagging follower): wait, never refuse.
    Ahead,
}

/// Errors a source reports. `Compacted` while reading means the replica fell behind retention.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("transactions after {after} are no longer retained (compacted)")]
    Compacted { after: Gtid },
    #[error("GTID {0} is not in the source (read cursor lost)")]
    UnknownCursor(Gtid),
    #[error("transaction source unavailable: {0}")]
    Unavailable(String),
}

/// An ordered source of whole transactions that are committed and accepted. Implementations must
/// never return any piece of a transaction that could still be rolled back or rejected, that is,
/// of one whose every byte is not committed and accepted (a chunked transaction whose last chunk
/// is not applied yet is invisible).
///
/// Methods are synchronous and may do disk I/O; serve calls them from a blocking thread.
///
/// For the global binlog: readers return accepted transactions at or below the commit index only
/// (design-review 16); `locate` answers `Ahead` only for a seq beyond the last accepted one of
/// that domain; after compaction, the newest compacted transaction should still answer `Exact`
/// (keep its GTID) and `reader(Some(it))` should start at the first retained one, so a replica
/// that is exactly at the compaction point is not refused.
pub trait TxnSource: Send + Sync + 'static {
    /// Where `gtid` stands (see [`Standing`]).
    fn locate(&self, gtid: Gtid) -> Result<Standing, SourceError>;

    /// True while the source still holds every transaction it ever accepted, so that a replica
    /// with an empty GTID state can be served from the beginning.
    fn holds_full_history(&self) -> Result<bool, SourceError>;

    /// A reader of the transactions strictly after `after` (from the first retained one if
    /// `None`). Cheap: errors about `after` come from the reader's first read.
    fn reader(&self, after: Option<Gtid>) -> Box<dyn TxnReader>;

    /// A watch whose value changes whenever a reader may return more or `locate` may answer
    /// differently. serve subscribes before reading, so no change is missed.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// Reads one stream of transactions in pieces; it keeps its own position.
///
/// Synchronous and may do disk I/O; serve calls it from a blocking thread.
pub trait TxnReader: Send + 'static {
    /// The next pieces in source order, at most `max_bytes` (at least 1) of events in total, and
    /// at least one piece when anything is readable; the reader moves past them. A transaction
    /// of at most `max_bytes` comes whole; a larger one in pieces. An empty vector means
    /// "nothing more yet" and never happens in the middle of a transaction (the rest of a
    /// transaction that was started is always readable). `Compacted` means the reader's
    /// position is no longer retained.
    fn read(&mut self, max_bytes: usize) -> Result<Vec<TxnPiece>, SourceError>;
}

/// In-memory [`TxnSource`] for tests: transactions are pushed in order; `compact_through` drops
/// the oldest ones.
pub struct MemTxnSource {
    inner: Arc<Mutex<MemInner>>,
    notify: watch::Sender<u64>,
}

#[derive(Default)]
struct MemInner {
    /// Source order = insertion order.
    txns: Vec<Txn>,
    /// Index of the first retained transaction in `txns` (older ones are compacted away).
    first: usize,
    /// Per domain: seq → position in `txns`.
    by_domain: BTreeMap<u32, BTreeMap<u64, usize>>,
    /// Per domain: the newest compacted transaction. It stays a valid start position (what
    /// follows it is retained), so its whole GTID is kept.
    compacted_through: BTreeMap<u32, Gtid>,
    /// Bumped on every change; published through `notify`.
    version: u64,
}

impl Default for MemTxnSource {
    fn default() -> Self {
        Self::new()
    }
}

impl MemTxnSource {
    pub fn new() -> Self {
        MemTxnSource {
            inner: Arc::new(Mutex::new(MemInner::default())),
            notify: watch::channel(0).0,
        }
    }

    pub fn from_txns(txns: impl IntoIterator<Item = Txn>) -> Self {
        let s = Self::new();
        for t in txns {
            s.push(t);
        }
        s
    }

    /// Appends a transaction (it becomes readable at once) and wakes waiting streams.
    pub fn push(&self, txn: Txn) {
        let mut g = self.inner.lock();
        let pos = g.txns.len();
        g.by_domain
            .entry(txn.gtid.domain)
            .or_default()
            .insert(txn.gtid.seq, pos);
        g.txns.push(txn);
        g.version += 1;
        let v = g.version;
        drop(g);
        self.notify.send_replace(v);
    }

    /// Forgets every transaction up to and including `gtid` (as log compaction would).
    pub fn compact_through(&self, gtid: Gtid) {
        let mut g = self.inner.lock();
        let Some(&pos) = g.by_domain.get(&gtid.domain).and_then(|d| d.get(&gtid.seq)) else {
            return;
        };
        let old_first = g.first;
        for i in old_first..=pos {
            let t = g.txns[i].gtid;
            if let Some(d) = g.by_domain.get_mut(&t.domain) {
                d.remove(&t.seq);
            }
            let c = g.compacted_through.entry(t.domain).or_insert(t);
            if t.seq >= c.seq {
                *c = t;
            }
        }
        g.first = g.first.max(pos + 1);
        g.version += 1;
        let v = g.version;
        drop(g);
        self.notify.send_replace(v);
    }

    fn inner_arc(&self) -> Arc<Mutex<MemInner>> {
        self.inner.clone()
    }

    /// The last transaction held, if any.
    pub fn last_gtid(&self) -> Option<Gtid> {
        let g = self.inner.lock();
        g.txns.get(g.first..).and_then(|s| s.last()).map(|t| t.gtid)
    }

    pub fn len(&self) -> usize {
        let g = self.inner.lock();
        g.txns.len() - g.first
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TxnSource for MemTxnSource {
    fn locate(&self, gtid: Gtid) -> Result<Standing, SourceError> {
        let g = self.inner.lock();
        if let Some(&c) = g.compacted_through.get(&gtid.domain) {
            if gtid == c {
                return Ok(Standing::Exact);
            }
            if gtid.seq == c.seq {
                return Ok(Standing::Mismatch { held: Some(c) });
            }
            if gtid.seq < c.seq {
                return Ok(Standing::Compacted);
            }
        }
        let Some(dom) = g.by_domain.get(&gtid.domain) else {
            return Ok(Standing::UnknownDomain);
        };
        if dom.is_empty() && !g.compacted_through.contains_key(&gtid.domain) {
            return Ok(Standing::UnknownDomain);
        }
        match dom.get(&gtid.seq) {
            Some(&pos) if g.txns[pos].gtid == gtid => Ok(Standing::Exact),
            Some(&pos) => Ok(Standing::Mismatch {
                held: Some(g.txns[pos].gtid),
            }),
            None => match dom.keys().next_back() {
                Some(&last) if gtid.seq < last => {
                    // A hole inside what we hold: some other history.
                    Ok(Standing::Mismatch { held: None })
                }
                _ => Ok(Standing::Ahead),
            },
        }
    }

    fn holds_full_history(&self) -> Result<bool, SourceError> {
        Ok(self.inner.lock().first == 0)
    }

    fn reader(&self, after: Option<Gtid>) -> Box<dyn TxnReader> {
        Box::new(MemTxnReader {
            inner: self.inner_arc(),
            after,
            within: None,
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }
}

/// [`TxnReader`] of a [`MemTxnSource`]: cuts its whole in-memory transactions into pieces with the
/// rules of the global binlog's reader, so serve's piece handling is tested without a log.
pub struct MemTxnReader {
    inner: Arc<Mutex<MemInner>>,
    /// The last transaction read whole.
    after: Option<Gtid>,
    /// The transaction being read and how many of its bytes were read.
    within: Option<(Gtid, usize)>,
}

impl MemTxnReader {
    /// Position in `txns` of the transaction the next piece comes from, and the byte in it.
    fn position(&self, g: &MemInner) -> Result<(usize, usize), SourceError> {
        let find = |a: Gtid| match g.by_domain.get(&a.domain).and_then(|d| d.get(&a.seq)) {
            Some(&pos) if g.txns[pos].gtid == a => Ok(Some(pos)),
            _ if g.compacted_through.get(&a.domain) == Some(&a) => Ok(None),
            _ if g
                .compacted_through
                .get(&a.domain)
                .is_some_and(|c| a.seq <= c.seq) =>
            {
                Err(SourceError::Compacted { after: a })
            }
            _ => Err(SourceError::UnknownCursor(a)),
        };
        match (self.within, self.after) {
            (Some((w, byte)), _) => match find(w)? {
                Some(pos) => Ok((pos, byte)),
                None => Err(SourceError::Compacted { after: w }),
            },
            (None, None) => Ok((g.first, 0)),
            (None, Some(a)) => Ok((find(a)?.map_or(g.first, |p| p + 1), 0)),
        }
    }
}

impl TxnReader for MemTxnReader {
    fn read(&mut self, max_bytes: usize) -> Result<Vec<TxnPiece>, SourceError> {
        let g = self.inner.lock();
        let (start, mut byte) = self.position(&g)?;
        let max = max_bytes.max(1);
        let mut used = 0usize;
        let mut out = Vec::new();
        for t in g.txns.iter().skip(start) {
            let left = max - used;
            // As the log: a transaction that does not fit starts only a call of its own.
            if left == 0 || (!out.is_empty() && t.len() > left) {
                break;
            }
            let take = (t.len() - byte).min(left);
            let last = byte + take == t.len();
            out.push(TxnPiece {
                gtid: t.gtid,
                offset: byte as u64,
                events: t.events.slice(byte..byte + take),
                last,
                origin_fd: t.origin_fd.clone(),
            });
            used += take;
            if last {
                self.after = Some(t.gtid);
                self.within = None;
                byte = 0;
            } else {
                self.within = Some((t.gtid, byte + take));
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(seq: u64, len: usize) -> Txn {
        Txn {
            gtid: Gtid::new(0, 1, seq),
            events: Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
            origin_fd: None,
        }
    }

    #[test]
    fn the_in_memory_reader_cuts_only_transactions_larger_than_a_read() {
        let src = MemTxnSource::from_txns([txn(1, 3), txn(2, 25), txn(3, 4), txn(4, 4)]);
        let mut r = src.reader(None);
        let mut calls = Vec::new();
        loop {
            let got = r.read(10).unwrap();
            if got.is_empty() {
                break;
            }
            assert!(got.iter().map(|p| p.events.len()).sum::<usize>() <= 10);
            calls.push(
                got.iter()
                    .map(|p| (p.gtid.seq, p.offset, p.events.len(), p.last))
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(
            calls,
            vec![
                // Seq 2 does not fit after seq 1: it starts the next call.
                vec![(1, 0, 3, true)],
                vec![(2, 0, 10, false)],
                vec![(2, 10, 10, false)],
                vec![(2, 20, 5, true), (3, 0, 4, true)],
                vec![(4, 0, 4, true)],
            ]
        );
        // Pieces reassemble to the transaction.
        let mut r = src.reader(Some(Gtid::new(0, 1, 1)));
        let mut bytes = Vec::new();
        while let Some(p) = r.read(7).unwrap().into_iter().find(|p| p.gtid.seq == 2) {
            bytes.extend_from_slice(&p.events);
            if p.last {
                break;
            }
        }
        assert_eq!(bytes, txn(2, 25).events);
        // A reader inside a transaction that gets compacted learns it from its next read.
        let mut r = src.reader(Some(Gtid::new(0, 1, 1)));
        r.read(10).unwrap();
        src.compact_through(Gtid::new(0, 1, 2));
        assert_eq!(
            r.read(10),
            Err(SourceError::Compacted {
                after: Gtid::new(0, 1, 2)
            })
        );
    }
}
