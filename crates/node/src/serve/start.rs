//! Where a dump starts: the replica's `@slave_connect_state` must name transactions the source
//! holds exactly (domain, server_id and seq), or be empty while the source still holds its whole
//! history. Anything else is refused with error 1236 so the replica stops instead of silently
//! skipping or re-applying transactions (design-review item 16).

use quorumsql_wire::{Gtid, GtidState};

use super::source::{SourceError, Standing, TxnSource};

/// What to do with a replica's connect state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartDecision {
    /// Stream the transactions after `after` (from the first retained one if `None`).
    Stream { after: Option<Gtid> },
    /// The source has not got `gtid` yet (lagging follower): wait for it, then decide again.
    Wait { gtid: Gtid },
    /// Answer error 1236: the replica cannot continue from this source.
    Refuse(Refusal),
}

/// Why serve refuses a replica; the text goes into the 1236 error the replica shows in
/// `Last_IO_Error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusalReason {
    #[error("the log holds {} at that sequence number: the replica's history diverged from the log", held.map_or_else(|| "no transaction".to_string(), |g| g.to_string()))]
    Diverged { held: Option<Gtid> },
    #[error("the log has no transaction of this replication domain")]
    UnknownDomain,
    #[error("the log no longer retains transactions that old (compacted): rebuild the replica")]
    Compacted,
    #[error("the replica has no GTID position but the log no longer holds its whole history (compacted): rebuild the replica")]
    EmptyStateButCompacted,
    #[error("the connect state names {0} replication domains; quorumsql serves exactly one (gtid_domain_id=0)")]
    MultipleDomains(usize),
    #[error(
        "the replica did not connect in GTID mode (use CHANGE MASTER TO master_use_gtid=slave_pos)"
    )]
    NotGtidMode,
    #[error("the connect state {0:?} is not a valid GTID list")]
    BadConnectState(String),
    #[error(
        "the replica asked for binlog checksum {0:?}; quorumsql serve sends CRC32 events only"
    )]
    ChecksumUnsupported(String),
    #[error("the log skipped from {prev} to {next}: refusing to stream a gap")]
    Gap { prev: Gtid, next: Gtid },
    #[error("transaction {0} in the log is malformed: {1}")]
    Malformed(Gtid, String),
}

/// What a refusal means for the node whose mariadbd was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The replica's history is not part of the log: mark the node diverged.
    Diverged,
    /// The log no longer holds what the replica needs: rebuild it from a snapshot.
    NeedsRebuild,
    /// The replica is set up wrongly (not GTID mode, checksums, several domains).
    Misconfigured,
    /// The log itself is inconsistent (a gap, a malformed transaction): an alert, not the
    /// replica's fault.
    LogFault,
}

impl RefusalReason {
    pub fn kind(&self) -> RefusalKind {
        match self {
            RefusalReason::Diverged { .. } | RefusalReason::UnknownDomain => RefusalKind::Diverged,
            RefusalReason::Compacted | RefusalReason::EmptyStateButCompacted => {
                RefusalKind::NeedsRebuild
            }
            RefusalReason::MultipleDomains(_)
            | RefusalReason::NotGtidMode
            | RefusalReason::BadConnectState(_)
            | RefusalReason::ChecksumUnsupported(_) => RefusalKind::Misconfigured,
            RefusalReason::Gap { .. } | RefusalReason::Malformed(..) => RefusalKind::LogFault,
        }
    }
}

/// A refused connect state: the GTID concerned (if one) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub gtid: Option<Gtid>,
    pub reason: RefusalReason,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.gtid {
            Some(g) => write!(f, "quorumsql serve refuses GTID {g}: {}", self.reason),
            None => write!(f, "quorumsql serve refuses the replica: {}", self.reason),
        }
    }
}

impl Refusal {
    pub fn new(gtid: Option<Gtid>, reason: RefusalReason) -> Self {
        Refusal { gtid, reason }
    }
}

/// Decides where a dump of `state` starts in `source`.
pub fn decide_start(
    source: &dyn TxnSource,
    state: &GtidState,
) -> Result<StartDecision, SourceError> {
    let gtids: Vec<Gtid> = state.iter().collect();
    match gtids.as_slice() {
        [] => {
            if source.holds_full_history()? {
                Ok(StartDecision::Stream { after: None })
            } else {
                Ok(StartDecision::Refuse(Refusal::new(
                    None,
                    RefusalReason::EmptyStateButCompacted,
                )))
            }
        }
        [g] => {
            let g = *g;
            let refuse = |reason| Ok(StartDecision::Refuse(Refusal::new(Some(g), reason)));
            match source.locate(g)? {
                Standing::Exact => Ok(StartDecision::Stream { after: Some(g) }),
                Standing::Ahead => Ok(StartDecision::Wait { gtid: g }),
                Standing::Mismatch { held } => refuse(RefusalReason::Diverged { held }),
                Standing::UnknownDomain => refuse(RefusalReason::UnknownDomain),
                Standing::Compacted => refuse(RefusalReason::Compacted),
            }
        }
        many => Ok(StartDecision::Refuse(Refusal::new(
            many.first().copied(),
            RefusalReason::MultipleDomains(many.len()),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::source::{MemTxnSource, Txn};
    use bytes::Bytes;

    fn txn(server: u32, seq: u64) -> Txn {
        Txn {
            gtid: Gtid::new(0, server, seq),
            events: Bytes::from_static(b"x"),
            origin_fd: None,
        }
    }

    fn src() -> MemTxnSource {
        MemTxnSource::from_txns((1..=5).map(|s| txn(1, s)))
    }

    fn decide(s: &MemTxnSource, state: &str) -> StartDecision {
        decide_start(s, &state.parse().unwrap()).unwrap()
    }

    #[test]
    fn exact_match_streams_after_it() {
        assert_eq!(
            decide(&src(), "0-1-3"),
            StartDecision::Stream {
                after: Some(Gtid::new(0, 1, 3))
            }
        );
        assert_eq!(decide(&src(), ""), StartDecision::Stream { after: None });
    }

    #[test]
    fn another_transaction_at_that_seq_is_refused() {
        assert_eq!(
            decide(&src(), "0-2-3"),
            StartDecision::Refuse(Refusal::new(
                Some(Gtid::new(0, 2, 3)),
                RefusalReason::Diverged {
                    held: Some(Gtid::new(0, 1, 3))
                }
            ))
        );
    }

    #[test]
    fn unknown_domain_and_compaction_are_refused() {
        let s = src();
        assert!(matches!(
            decide(&s, "7-1-3"),
            StartDecision::Refuse(Refusal {
                reason: RefusalReason::UnknownDomain,
                ..
            })
        ));
        s.compact_through(Gtid::new(0, 1, 2));
        assert!(matches!(
            decide(&s, "0-1-1"),
            StartDecision::Refuse(Refusal {
                reason: RefusalReason::Compacted,
                ..
            })
        ));
        assert!(matches!(
            decide(&s, ""),
            StartDecision::Refuse(Refusal {
                reason: RefusalReason::EmptyStateButCompacted,
                ..
            })
        ));
        // The newest compacted transaction is still a valid start: the rest follows it.
        assert_eq!(
            decide(&s, "0-1-2"),
            StartDecision::Stream {
                after: Some(Gtid::new(0, 1, 2))
            }
        );
        assert!(matches!(
            decide(&s, "0-3-2"),
            StartDecision::Refuse(Refusal {
                reason: RefusalReason::Diverged { .. },
                ..
            })
        ));
        assert_eq!(
            decide(&s, "0-1-3"),
            StartDecision::Stream {
                after: Some(Gtid::new(0, 1, 3))
            }
        );
    }

    #[test]
    fn a_replica_ahead_of_the_source_waits() {
        assert_eq!(
            decide(&src(), "0-1-9"),
            StartDecision::Wait {
                gtid: Gtid::new(0, 1, 9)
            }
        );
    }

    #[test]
    fn several_domains_are_refused() {
        assert!(matches!(
            decide(&src(), "0-1-3,1-1-3"),
            StartDecision::Refuse(Refusal {
                reason: RefusalReason::MultipleDomains(2),
                ..
            })
        ));
    }
}
