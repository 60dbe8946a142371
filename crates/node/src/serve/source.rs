//! What serve streams from: an ordered source of whole, committed, accepted transactions (the
//! global binlog in production; [`MemTxnSource`] in tests).

use std::collections::BTreeMap;

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
/// never return a transaction that could still be rolled back or rejected, and never a partial one.
///
/// Methods are synchronous and may do disk I/O; serve calls them from a blocking thread.
///
/// For the global binlog: `read_after` returns accepted transactions at or below the commit index
/// only (design-review 16); `locate` answers `Ahead` only for a seq beyond the last accepted one
/// of that domain; after compaction, the newest compacted transaction should still answer
/// `Exact` (keep its GTID) and `read_after(Some(it))` should start at the first retained one, so a
/// replica that is exactly at the compaction point is not refused.
pub trait TxnSource: Send + Sync + 'static {
    /// Where `gtid` stands (see [`Standing`]).
    fn locate(&self, gtid: Gtid) -> Result<Standing, SourceError>;

    /// True while the source still holds every transaction it ever accepted, so that a replica
    /// with an empty GTID state can be served from the beginning.
    fn holds_full_history(&self) -> Result<bool, SourceError>;

    /// Transactions strictly after `after` (from the first retained one if `None`), in source
    /// order. Returns at least one transaction when any is readable, and stops once the total of
    /// `Txn::len()` reaches `max_bytes`. An empty vector means "nothing more yet".
    fn read_after(&self, after: Option<Gtid>, max_bytes: usize) -> Result<Vec<Txn>, SourceError>;

    /// A watch whose value changes whenever `read_after` may return more or `locate` may answer
    /// differently. serve subscribes before reading, so no change is missed.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// In-memory [`TxnSource`] for tests: transactions are pushed in order; `compact_through` drops
/// the oldest ones.
pub struct MemTxnSource {
    inner: Mutex<MemInner>,
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
            inner: Mutex::new(MemInner::default()),
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

    fn read_after(&self, after: Option<Gtid>, max_bytes: usize) -> Result<Vec<Txn>, SourceError> {
        let g = self.inner.lock();
        let start = match after {
            None => g.first,
            Some(a) => match g.by_domain.get(&a.domain).and_then(|d| d.get(&a.seq)) {
                Some(&pos) if g.txns[pos].gtid == a => pos + 1,
                _ if g.compacted_through.get(&a.domain) == Some(&a) => g.first,
                _ if g
                    .compacted_through
                    .get(&a.domain)
                    .is_some_and(|c| a.seq <= c.seq) =>
                {
                    return Err(SourceError::Compacted { after: a })
                }
                _ => return Err(SourceError::UnknownCursor(a)),
            },
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for t in g.txns.iter().skip(start) {
            if !out.is_empty() && bytes >= max_bytes {
                break;
            }
            bytes += t.len();
            out.push(t.clone());
        }
        Ok(out)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }
}
