//! Exactly-once hand-off across reconnects.
//!
//! After a dropped connection capture resumes the dump from the last GTID state the sink
//! *accepted*, so the master re-sends every transaction that was queued or in flight. Those are
//! skipped by GTID, and only after checking that the re-sent copy is the same transaction (its
//! digest, or for the already forwarded parts of a chunked transaction, each part's bytes); a
//! mismatch means the master's binlog changed under capture and is fatal. A transaction never
//! seen before must be newer than everything forwarded in its domain.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::Hasher;

use quorumsql_wire::{Gtid, GtidState};

use super::sink::{CapturedTxn, TxnDigest};

/// The re-sent stream does not match what capture already handed to the sink.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DedupeError {
    #[error("transaction {gtid} was re-sent after a reconnect with digest {resent} but digest {forwarded} was captured before: the master's binlog changed")]
    DigestMismatch {
        gtid: Gtid,
        forwarded: TxnDigest,
        resent: TxnDigest,
    },
    #[error(
        "part {chunk} of transaction {gtid} differs from the copy captured before the reconnect"
    )]
    ChunkMismatch { gtid: Gtid, chunk: u32 },
    #[error("transaction {got} arrived after {last} in domain {domain}: GTIDs must increase")]
    OutOfOrder { domain: u32, last: Gtid, got: Gtid },
    #[error("transaction {open} was partly captured before a reconnect, but the master continued with {got}; the open transaction can never complete")]
    OpenAbandoned { open: Gtid, got: Gtid },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Forward,
    /// Already forwarded and verified identical.
    Skip,
}

/// A transaction whose first parts went to the sink but not its last one yet.
struct OpenForwarded {
    gtid: Gtid,
    /// Hash of each forwarded part's bytes (SipHash: detects a changed re-read, which is all
    /// this needs; the transaction digest is checked at the end as well).
    part_hashes: Vec<u64>,
}

pub(crate) struct Dedupe {
    /// Complete transactions forwarded and not yet known to be accepted, oldest first.
    recent: VecDeque<(Gtid, TxnDigest)>,
    open: Option<OpenForwarded>,
    /// Newest complete transaction forwarded, per domain.
    last: GtidState,
    /// Newest complete transaction the current connection delivered (or resumed after): it
    /// will not send anything at or below this again.
    passed: GtidState,
    /// Digest of the transaction being skipped, checked at its last part.
    skipping: Option<(Gtid, TxnDigest)>,
}

fn part_hash(part: &CapturedTxn) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(&part.events);
    h.finish()
}

impl Dedupe {
    /// `floor`: the GTID state capture starts from (everything at or below it is in the log).
    pub fn new(floor: GtidState) -> Self {
        Dedupe {
            recent: VecDeque::new(),
            open: None,
            last: floor.clone(),
            passed: floor,
            skipping: None,
        }
    }

    /// Forgets transactions that are accepted *and* that the current connection has already
    /// passed, keeping memory bounded by what is in flight. (An accepted transaction the current
    /// connection has not reached yet may still be re-sent on it: the connection resumed from an
    /// older accepted state.)
    pub fn prune(&mut self, accepted: &GtidState) {
        while let Some((g, _)) = self.recent.front() {
            let below = |s: &GtidState| s.get(g.domain).is_some_and(|a| a.seq >= g.seq);
            if below(accepted) && below(&self.passed) {
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }

    /// A new connection starts from `resume`: a transaction being skipped is re-read from its
    /// start.
    pub fn on_reconnect(&mut self, resume: &GtidState) {
        self.skipping = None;
        self.passed = resume.clone();
    }

    /// Decides whether `part` goes to the sink, and records it if so.
    pub fn check(&mut self, part: &CapturedTxn) -> Result<Verdict, DedupeError> {
        let verdict = self.decide(part)?;
        if part.last {
            self.passed.set(part.gtid);
        }
        Ok(verdict)
    }

    fn decide(&mut self, part: &CapturedTxn) -> Result<Verdict, DedupeError> {
        let g = part.gtid;
        // A complete transaction already forwarded, being re-sent.
        if let Some((sg, digest)) = self.skipping {
            if sg == g {
                if part.last {
                    self.skipping = None;
                    if let Some(resent) = part.digest {
                        if resent != digest {
                            return Err(DedupeError::DigestMismatch {
                                gtid: g,
                                forwarded: digest,
                                resent,
                            });
                        }
                    }
                }
                return Ok(Verdict::Skip);
            }
        }
        if part.chunk_index == 0 {
            if let Some(open) = &self.open {
                if open.gtid != g {
                    return Err(DedupeError::OpenAbandoned {
                        open: open.gtid,
                        got: g,
                    });
                }
            }
            let resent = self
                .last
                .get(g.domain)
                .is_some_and(|last| g.seq <= last.seq);
            if resent {
                let Some(&(_, digest)) = self.recent.iter().find(|(rg, _)| *rg == g) else {
                    let last = self.last.get(g.domain).unwrap_or(g);
                    return Err(DedupeError::OutOfOrder {
                        domain: g.domain,
                        last,
                        got: g,
                    });
                };
                if part.last {
                    if let Some(resent) = part.digest {
                        if resent != digest {
                            return Err(DedupeError::DigestMismatch {
                                gtid: g,
                                forwarded: digest,
                                resent,
                            });
                        }
                    }
                } else {
                    self.skipping = Some((g, digest));
                }
                return Ok(Verdict::Skip);
            }
        }
        // Re-read of the already forwarded prefix of an open chunked transaction.
        if let Some(open) = &mut self.open {
            if open.gtid == g {
                if let Some(&h) = open.part_hashes.get(part.chunk_index as usize) {
                    if h != part_hash(part) {
                        return Err(DedupeError::ChunkMismatch {
                            gtid: g,
                            chunk: part.chunk_index,
                        });
                    }
                    return Ok(Verdict::Skip);
                }
            }
        }
        // New: forward and record.
        if part.last {
            self.open = None;
            if let Some(d) = part.digest {
                self.recent.push_back((g, d));
            }
            self.last.set(g);
        } else {
            let open = self.open.get_or_insert_with(|| OpenForwarded {
                gtid: g,
                part_hashes: Vec::new(),
            });
            open.part_hashes.push(part_hash(part));
        }
        Ok(Verdict::Forward)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quorumsql_wire::BinlogPos;

    fn part(seq: u64, chunk: u32, last: bool, bytes: &'static [u8], d: u8) -> CapturedTxn {
        CapturedTxn {
            gtid: Gtid::new(0, 1, seq),
            origin: BinlogPos {
                file: "f.000001".into(),
                offset: seq * 100,
            },
            digest: last.then_some(TxnDigest([d; 32])),
            chunk_index: chunk,
            last,
            events: Bytes::from_static(bytes),
        }
    }

    #[test]
    fn skips_resent_transactions_and_checks_digests() {
        let mut d = Dedupe::new("0-1-5".parse().expect("state"));
        assert_eq!(d.check(&part(6, 0, true, b"a", 6)), Ok(Verdict::Forward));
        assert_eq!(d.check(&part(7, 0, true, b"b", 7)), Ok(Verdict::Forward));
        // Reconnect from the accepted state 0-1-5: both come again.
        let resume: GtidState = "0-1-5".parse().expect("state");
        d.on_reconnect(&resume);
        // 0-1-6 gets accepted meanwhile; it is still re-sent on this connection.
        d.prune(&"0-1-6".parse().expect("state"));
        assert_eq!(d.check(&part(6, 0, true, b"a", 6)), Ok(Verdict::Skip));
        assert!(matches!(
            d.check(&part(7, 0, true, b"b", 99)),
            Err(DedupeError::DigestMismatch { .. })
        ));
        // Older than anything forwarded and not remembered: out of order.
        d.on_reconnect(&"0-1-7".parse().expect("state"));
        d.prune(&"0-1-7".parse().expect("state"));
        assert!(matches!(
            d.check(&part(7, 0, true, b"b", 7)),
            Err(DedupeError::OutOfOrder { .. })
        ));
        assert_eq!(d.check(&part(8, 0, true, b"c", 8)), Ok(Verdict::Forward));
    }

    #[test]
    fn resumes_a_partly_forwarded_chunked_transaction() {
        let mut d = Dedupe::new(GtidState::new());
        assert_eq!(d.check(&part(1, 0, false, b"p0", 0)), Ok(Verdict::Forward));
        assert_eq!(d.check(&part(1, 1, false, b"p1", 0)), Ok(Verdict::Forward));
        d.on_reconnect(&GtidState::new());
        assert_eq!(d.check(&part(1, 0, false, b"p0", 0)), Ok(Verdict::Skip));
        assert_eq!(d.check(&part(1, 1, false, b"p1", 0)), Ok(Verdict::Skip));
        assert_eq!(d.check(&part(1, 2, true, b"p2", 1)), Ok(Verdict::Forward));
        // A changed prefix is caught.
        let mut d = Dedupe::new(GtidState::new());
        d.check(&part(1, 0, false, b"p0", 0)).expect("forward");
        d.on_reconnect(&GtidState::new());
        assert!(matches!(
            d.check(&part(1, 0, false, b"XX", 0)),
            Err(DedupeError::ChunkMismatch { .. })
        ));
        // A different transaction where the open one should continue.
        let mut d = Dedupe::new(GtidState::new());
        d.check(&part(1, 0, false, b"p0", 0)).expect("forward");
        assert!(matches!(
            d.check(&part(2, 0, true, b"q", 2)),
            Err(DedupeError::OpenAbandoned { .. })
        ));
    }

    #[test]
    fn skips_a_resent_chunked_transaction_that_was_complete() {
        let mut d = Dedupe::new(GtidState::new());
        d.check(&part(1, 0, false, b"p0", 0)).expect("forward");
        d.check(&part(1, 1, true, b"p1", 1)).expect("forward");
        d.on_reconnect(&GtidState::new());
        assert_eq!(d.check(&part(1, 0, false, b"p0", 0)), Ok(Verdict::Skip));
        assert_eq!(d.check(&part(1, 1, true, b"p1", 1)), Ok(Verdict::Skip));
        assert_eq!(d.check(&part(2, 0, true, b"q", 2)), Ok(Verdict::Forward));
    }
}
