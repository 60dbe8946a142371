//! The deterministic state machine of the global binlog: applies committed entries in order and
//! decides which commands are accepted (DESIGN §2 step 4, §3 step 8).
//!
//! Accept rules:
//! - `Append{epoch, prev_gtid, txns}`: `epoch` == current master epoch, `epoch` == raft term of the
//!   entry carrying it, `prev_gtid` == last complete GTID, every new transaction in domain 0 with a
//!   seq strictly above the previous one, chunks in order. All or nothing per Append.
//! - `MasterReady{node, epoch, gtid}`: `epoch` == entry term, `epoch` > current epoch, `gtid` ==
//!   last GTID. Accepting it aborts an open chunked transaction.
//!
//! Large transactions arrive as chunks in consecutive Appends. A transaction becomes visible (GTID
//! state, readers) only when its last chunk is accepted. The state machine keeps where the chunks
//! are (raft index and position), never the bytes.

use std::collections::BTreeMap;

use raft::eraftpb::ConfState;
use serde::{Deserialize, Serialize};

use crate::entry::{Command, EntryPayload, ProposalOrigin, TxnChunk};
use crate::types::{BinlogPos, Epoch, Gtid, GtidState, NodeId};

/// Why a command was not accepted. Deterministic: every node computes the same reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RejectReason {
    #[error("no master has been promoted yet")]
    NoMaster,
    #[error("append epoch {epoch} is not the current master epoch {current}")]
    StaleEpoch { epoch: Epoch, current: Epoch },
    #[error("command epoch {epoch} differs from the raft term {term} of the entry carrying it")]
    EpochNotEntryTerm { epoch: Epoch, term: u64 },
    #[error("append continues after {prev:?} but the log's last GTID is {last:?}")]
    PrevGtidMismatch {
        prev: Option<Gtid>,
        last: Option<Gtid>,
    },
    #[error("append carries no transaction")]
    Empty,
    #[error("GTID {gtid} is not in replication domain 0")]
    ForeignDomain { gtid: Gtid },
    #[error("GTID {gtid} does not follow {after:?} (seq must increase strictly)")]
    GtidNotIncreasing { gtid: Gtid, after: Option<Gtid> },
    #[error("chunk {chunk} of {gtid} is out of order (expected {expected})")]
    ChunkOutOfOrder {
        gtid: Gtid,
        chunk: u32,
        expected: String,
    },
    #[error("master epoch {epoch} is not newer than the current epoch {current}")]
    EpochNotNewer { epoch: Epoch, current: Epoch },
    #[error("membership change refused by raft: {0}")]
    InvalidConfChange(String),
    #[error("master ready at {gtid:?} but the log's last GTID is {last:?}")]
    GtidMismatch {
        gtid: Option<Gtid>,
        last: Option<Gtid>,
    },
}

/// What became of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Accepted,
    Rejected(RejectReason),
    /// The proposal never reached the committed log (refused by raft or overwritten by a new
    /// leader). Nothing of it is visible anywhere.
    Dropped,
}

/// Where one chunk of an accepted transaction lives in the raft log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLoc {
    pub index: u64,
    /// Position of the Append within the entry's commands.
    pub command: u32,
    /// Position of the chunk within the Append's txns.
    pub txn: u32,
}

/// What the log knows about an accepted, complete transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub gtid: Gtid,
    pub origin: BinlogPos,
    pub digest: [u8; 32],
    pub chunks: Vec<ChunkLoc>,
}

impl TxnRecord {
    /// Raft index of the entry that completed the transaction.
    pub fn last_index(&self) -> u64 {
        self.chunks.last().map(|c| c.index).unwrap_or(0)
    }
    pub fn first_index(&self) -> u64 {
        self.chunks.first().map(|c| c.index).unwrap_or(0)
    }
}

/// A chunked transaction whose last chunk has not arrived yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OpenTxn {
    gtid: Gtid,
    next_chunk: u32,
    chunks: Vec<ChunkLoc>,
    /// Some chunks lie in entries this node no longer holds (compacted or before an installed
    /// snapshot): the transaction will count as complete but cannot be read here.
    #[serde(default)]
    lost: bool,
    /// An Append of the current epoch was rejected while this transaction was open: the
    /// master's capture lost track (it may re-send the transaction with other chunk
    /// boundaries), so no later chunk may complete it; it is aborted by the next promotion.
    #[serde(default)]
    poisoned: bool,
}

/// Raft membership as recorded by the state machine (mirror of raft's ConfState).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub voters_outgoing: Vec<NodeId>,
    pub learners_next: Vec<NodeId>,
    pub auto_leave: bool,
}

impl Membership {
    pub fn from_conf_state(cs: &ConfState) -> Membership {
        let ids = |v: &[u64]| v.iter().map(|i| NodeId(*i)).collect::<Vec<_>>();
        Membership {
            voters: ids(&cs.voters),
            learners: ids(&cs.learners),
            voters_outgoing: ids(&cs.voters_outgoing),
            learners_next: ids(&cs.learners_next),
            auto_leave: cs.auto_leave,
        }
    }
    pub fn to_conf_state(&self) -> ConfState {
        let ids = |v: &[NodeId]| v.iter().map(|i| i.0).collect::<Vec<_>>();
        ConfState {
            voters: ids(&self.voters),
            learners: ids(&self.learners),
            voters_outgoing: ids(&self.voters_outgoing),
            learners_next: ids(&self.learners_next),
            auto_leave: self.auto_leave,
            ..Default::default()
        }
    }
    /// Every node that is a voter in either half of a joint configuration.
    pub fn all_voters(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .voters
            .iter()
            .chain(&self.voters_outgoing)
            .copied()
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// A member's last report about its mariadbd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub applied_gtid: Option<Gtid>,
    pub healthy: bool,
    pub diverged: bool,
}

/// Result of applying one command of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResult {
    pub position: u32,
    pub origin: Option<ProposalOrigin>,
    pub command: Command,
    pub outcome: Outcome,
    /// Transactions this command completed (empty unless an accepted Append).
    pub completed: Vec<Gtid>,
}

/// The state machine. Serialisable as a whole: it is the data of a raft snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    applied_index: u64,
    applied_term: u64,
    gtid_state: GtidState,
    last_gtid: Option<Gtid>,
    epoch: Epoch,
    master: Option<NodeId>,
    membership: Membership,
    /// Accepted transactions still in the retained log, by seq (domain 0 only).
    txns: BTreeMap<u64, TxnRecord>,
    /// The newest transaction whose entries were compacted away (its record is gone).
    compacted_through: Option<Gtid>,
    open: Option<OpenTxn>,
    members: BTreeMap<NodeId, MemberState>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotDataError {
    #[error("state machine snapshot data does not decode: {0}")]
    Decode(String),
    #[error("cannot encode state machine snapshot: {0}")]
    Encode(String),
}

impl StateMachine {
    pub fn new(membership: Membership) -> StateMachine {
        StateMachine {
            membership,
            ..Default::default()
        }
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }
    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }
    pub fn gtid_state(&self) -> &GtidState {
        &self.gtid_state
    }
    pub fn last_gtid(&self) -> Option<Gtid> {
        self.last_gtid
    }
    /// The current master epoch (0 = no master promoted yet).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    /// The node named by the newest accepted `MasterReady` and its epoch.
    pub fn master(&self) -> Option<(NodeId, Epoch)> {
        self.master.map(|n| (n, self.epoch))
    }
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    pub fn members(&self) -> &BTreeMap<NodeId, MemberState> {
        &self.members
    }
    /// The record of an accepted transaction still in the retained log.
    pub fn txn(&self, gtid: Gtid) -> Option<&TxnRecord> {
        self.txns.get(&gtid.seq).filter(|r| r.gtid == gtid)
    }
    /// Accepted transactions strictly after seq `after` (all if `None`), in log order.
    pub fn txns_after_seq(&self, after: Option<u64>) -> impl Iterator<Item = &TxnRecord> {
        let lo = match after {
            Some(s) => std::ops::Bound::Excluded(s),
            None => std::ops::Bound::Unbounded,
        };
        self.txns
            .range((lo, std::ops::Bound::Unbounded))
            .map(|(_, r)| r)
    }
    pub fn compacted_through_seq(&self) -> Option<u64> {
        self.compacted_through.map(|g| g.seq)
    }
    /// The newest transaction no longer readable from the retained log.
    pub fn compacted_through(&self) -> Option<Gtid> {
        self.compacted_through
    }

    fn mark_compacted(&mut self, g: Gtid) {
        if self.compacted_through.is_none_or(|c| g.seq > c.seq) {
            self.compacted_through = Some(g);
        }
    }
    /// Raft index of the first chunk of the open chunked transaction, if any.
    pub fn open_txn_first_index(&self) -> Option<u64> {
        self.open
            .as_ref()
            .and_then(|o| o.chunks.first())
            .map(|c| c.index)
    }

    /// True while a chunked transaction is open (some chunks accepted, not the last).
    pub fn has_open_txn(&self) -> bool {
        self.open.is_some()
    }

    /// Records a membership change applied by raft at `index`.
    pub fn apply_conf_change(&mut self, index: u64, term: u64, cs: &ConfState) {
        self.membership = Membership::from_conf_state(cs);
        self.advance(index, term);
    }

    /// Applies an entry with no commands (raft's empty entry or an undecodable payload).
    pub fn apply_empty(&mut self, index: u64, term: u64) {
        self.advance(index, term);
    }

    fn advance(&mut self, index: u64, term: u64) {
        self.applied_index = index;
        self.applied_term = term;
    }

    /// Applies a normal entry's commands in order.
    pub fn apply_entry(
        &mut self,
        index: u64,
        term: u64,
        payload: &EntryPayload,
    ) -> Vec<CommandResult> {
        let mut results = Vec::with_capacity(payload.commands.len());
        for (pos, tagged) in payload.commands.iter().enumerate() {
            let pos = u32::try_from(pos).unwrap_or(u32::MAX);
            let (outcome, completed) = match &tagged.command {
                Command::Append {
                    epoch,
                    prev_gtid,
                    txns,
                } => match self.check_append(term, *epoch, *prev_gtid, txns) {
                    Ok(()) => (Outcome::Accepted, self.accept_append(index, pos, txns)),
                    Err(r) => {
                        if *epoch == self.epoch {
                            if let Some(o) = self.open.as_mut() {
                                o.poisoned = true;
                            }
                        }
                        (Outcome::Rejected(r), Vec::new())
                    }
                },
                Command::MasterReady { node, epoch, gtid } => {
                    match self.check_master_ready(term, *epoch, *gtid) {
                        Ok(()) => {
                            self.epoch = *epoch;
                            self.master = Some(*node);
                            // The new master restarts capture at the last complete GTID, so the
                            // open chunks can never be completed: they are never served.
                            self.open = None;
                            (Outcome::Accepted, Vec::new())
                        }
                        Err(r) => (Outcome::Rejected(r), Vec::new()),
                    }
                }
                Command::MemberReport {
                    node,
                    applied_gtid,
                    healthy,
                    diverged,
                } => {
                    self.members.insert(
                        *node,
                        MemberState {
                            applied_gtid: *applied_gtid,
                            healthy: *healthy,
                            diverged: *diverged,
                        },
                    );
                    (Outcome::Accepted, Vec::new())
                }
                Command::Noop => (Outcome::Accepted, Vec::new()),
            };
            results.push(CommandResult {
                position: pos,
                origin: tagged.origin,
                command: tagged.command.clone(),
                outcome,
                completed,
            });
        }
        self.advance(index, term);
        results
    }

    fn check_master_ready(
        &self,
        term: u64,
        epoch: Epoch,
        gtid: Option<Gtid>,
    ) -> Result<(), RejectReason> {
        if epoch.0 != term {
            return Err(RejectReason::EpochNotEntryTerm { epoch, term });
        }
        if epoch <= self.epoch {
            return Err(RejectReason::EpochNotNewer {
                epoch,
                current: self.epoch,
            });
        }
        if gtid != self.last_gtid {
            return Err(RejectReason::GtidMismatch {
                gtid,
                last: self.last_gtid,
            });
        }
        Ok(())
    }

    fn check_append(
        &self,
        term: u64,
        epoch: Epoch,
        prev: Option<Gtid>,
        txns: &[TxnChunk],
    ) -> Result<(), RejectReason> {
        if self.master.is_none() {
            return Err(RejectReason::NoMaster);
        }
        if epoch != self.epoch {
            return Err(RejectReason::StaleEpoch {
                epoch,
                current: self.epoch,
            });
        }
        if epoch.0 != term {
            return Err(RejectReason::EpochNotEntryTerm { epoch, term });
        }
        if prev != self.last_gtid {
            return Err(RejectReason::PrevGtidMismatch {
                prev,
                last: self.last_gtid,
            });
        }
        if txns.is_empty() {
            return Err(RejectReason::Empty);
        }
        // Walk the chunks with a copy of the open-transaction cursor; nothing changes unless all
        // of them pass.
        if let Some(o) = self.open.as_ref().filter(|o| o.poisoned) {
            return Err(RejectReason::ChunkOutOfOrder {
                gtid: txns[0].gtid,
                chunk: txns[0].chunk,
                expected: format!(
                    "nothing: {} was abandoned by a rejected append, a new promotion must follow",
                    o.gtid
                ),
            });
        }
        let mut open: Option<(Gtid, u32)> = self.open.as_ref().map(|o| (o.gtid, o.next_chunk));
        let mut last = self.last_gtid;
        for t in txns {
            match open {
                Some((g, next)) => {
                    if t.gtid != g || t.chunk != next {
                        return Err(RejectReason::ChunkOutOfOrder {
                            gtid: t.gtid,
                            chunk: t.chunk,
                            expected: format!("chunk {next} of {g}"),
                        });
                    }
                }
                None => {
                    if t.chunk != 0 {
                        return Err(RejectReason::ChunkOutOfOrder {
                            gtid: t.gtid,
                            chunk: t.chunk,
                            expected: "the first chunk of a new transaction".into(),
                        });
                    }
                    if t.gtid.domain != 0 {
                        return Err(RejectReason::ForeignDomain { gtid: t.gtid });
                    }
                    if let Some(l) = last {
                        if t.gtid.seq <= l.seq {
                            return Err(RejectReason::GtidNotIncreasing {
                                gtid: t.gtid,
                                after: last,
                            });
                        }
                    }
                }
            }
            if t.last {
                open = None;
                last = Some(t.gtid);
            } else {
                open = Some((t.gtid, t.chunk.saturating_add(1)));
            }
        }
        Ok(())
    }

    fn accept_append(&mut self, index: u64, pos: u32, txns: &[TxnChunk]) -> Vec<Gtid> {
        let mut completed = Vec::new();
        for (i, t) in txns.iter().enumerate() {
            let loc = ChunkLoc {
                index,
                command: pos,
                txn: u32::try_from(i).unwrap_or(u32::MAX),
            };
            let mut open = self.open.take().unwrap_or_else(|| OpenTxn {
                gtid: t.gtid,
                next_chunk: 0,
                chunks: Vec::new(),
                lost: false,
                poisoned: false,
            });
            open.chunks.push(loc);
            open.next_chunk = t.chunk.saturating_add(1);
            if t.last {
                // The origin coordinates of the last chunk are where the transaction ends.
                let rec = TxnRecord {
                    gtid: open.gtid,
                    origin: t.origin.clone(),
                    digest: t.digest,
                    chunks: open.chunks,
                };
                self.gtid_state.set(rec.gtid);
                self.last_gtid = Some(rec.gtid);
                completed.push(rec.gtid);
                if open.lost {
                    self.mark_compacted(rec.gtid);
                } else {
                    self.txns.insert(rec.gtid.seq, rec);
                }
            } else {
                self.open = Some(open);
            }
        }
        completed
    }

    /// Forgets the records of transactions whose entries lie at or below `through_index` (the log
    /// is being compacted there). Their GTIDs stay in the GTID state.
    pub fn forget_through(&mut self, through_index: u64) {
        let doomed: Vec<u64> = self
            .txns
            .iter()
            .take_while(|(_, r)| r.first_index() <= through_index)
            .map(|(s, _)| *s)
            .collect();
        for s in doomed {
            if let Some(r) = self.txns.remove(&s) {
                self.mark_compacted(r.gtid);
            }
        }
        if let Some(o) = self.open.as_mut() {
            if o.chunks.first().is_some_and(|c| c.index <= through_index) {
                o.lost = true;
                o.chunks.clear();
            }
        }
    }

    pub fn to_snapshot_data(&self) -> Result<Vec<u8>, SnapshotDataError> {
        postcard::to_stdvec(self).map_err(|e| SnapshotDataError::Encode(e.to_string()))
    }

    pub fn from_snapshot_data(data: &[u8]) -> Result<StateMachine, SnapshotDataError> {
        postcard::from_bytes(data).map_err(|e| SnapshotDataError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::TaggedCommand;
    use bytes::Bytes;

    fn g(seq: u64) -> Gtid {
        Gtid::new(0, 1, seq)
    }
    fn pos(o: u64) -> BinlogPos {
        BinlogPos {
            file: "b.000001".into(),
            offset: o,
        }
    }
    fn whole(seq: u64) -> TxnChunk {
        TxnChunk::whole(g(seq), pos(seq), Bytes::from(vec![seq as u8; 4]))
    }
    fn part(seq: u64, chunk: u32, last: bool) -> TxnChunk {
        TxnChunk {
            gtid: g(seq),
            origin: pos(seq),
            digest: [seq as u8; 32],
            chunk,
            last,
            events: Bytes::from(vec![chunk as u8; 3]),
        }
    }
    fn entry(cmds: Vec<Command>) -> EntryPayload {
        EntryPayload {
            commands: cmds
                .into_iter()
                .map(|command| TaggedCommand {
                    origin: None,
                    command,
                })
                .collect(),
        }
    }
    fn append(epoch: u64, prev: Option<u64>, txns: Vec<TxnChunk>) -> Command {
        Command::Append {
            epoch: Epoch(epoch),
            prev_gtid: prev.map(g),
            txns,
        }
    }
    fn ready(node: u64, epoch: u64, gtid: Option<u64>) -> Command {
        Command::MasterReady {
            node: NodeId(node),
            epoch: Epoch(epoch),
            gtid: gtid.map(g),
        }
    }
    /// Applies one command at (index, term) and returns its outcome.
    fn apply(sm: &mut StateMachine, index: u64, term: u64, c: Command) -> Outcome {
        sm.apply_entry(index, term, &entry(vec![c]))
            .remove(0)
            .outcome
    }
    fn rejected(o: Outcome) -> RejectReason {
        match o {
            Outcome::Rejected(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    /// A state machine with master node 1 of epoch 2 and transactions 1..=2.
    fn mastered() -> StateMachine {
        let mut sm = StateMachine::default();
        assert_eq!(apply(&mut sm, 1, 2, ready(1, 2, None)), Outcome::Accepted);
        assert_eq!(
            apply(&mut sm, 2, 2, append(2, None, vec![whole(1), whole(2)])),
            Outcome::Accepted
        );
        sm
    }

    #[test]
    fn accepts_a_chain_and_indexes_it() {
        let sm = mastered();
        assert_eq!(sm.last_gtid(), Some(g(2)));
        assert_eq!(sm.gtid_state().get(0), Some(g(2)));
        assert_eq!(sm.master(), Some((NodeId(1), Epoch(2))));
        let r = sm.txn(g(2)).unwrap();
        assert_eq!(
            r.chunks,
            vec![ChunkLoc {
                index: 2,
                command: 0,
                txn: 1
            }]
        );
        assert!(
            sm.txn(Gtid::new(0, 9, 2)).is_none(),
            "same seq, other server is not our txn"
        );
    }

    #[test]
    fn every_reject_reason() {
        let mut fresh = StateMachine::default();
        assert_eq!(
            rejected(apply(&mut fresh, 1, 1, append(1, None, vec![whole(1)]))),
            RejectReason::NoMaster
        );

        let mut sm = mastered();
        let before = sm.clone();
        let cases: Vec<(u64, Command, RejectReason)> = vec![
            (
                2,
                append(1, Some(2), vec![whole(3)]),
                RejectReason::StaleEpoch {
                    epoch: Epoch(1),
                    current: Epoch(2),
                },
            ),
            (
                3,
                append(2, Some(2), vec![whole(3)]),
                RejectReason::EpochNotEntryTerm {
                    epoch: Epoch(2),
                    term: 3,
                },
            ),
            (
                2,
                append(2, Some(1), vec![whole(3)]),
                RejectReason::PrevGtidMismatch {
                    prev: Some(g(1)),
                    last: Some(g(2)),
                },
            ),
            (2, append(2, Some(2), vec![]), RejectReason::Empty),
            (
                2,
                append(2, Some(2), vec![whole(2)]),
                RejectReason::GtidNotIncreasing {
                    gtid: g(2),
                    after: Some(g(2)),
                },
            ),
            (
                2,
                append(2, Some(2), vec![whole(4), whole(3)]),
                RejectReason::GtidNotIncreasing {
                    gtid: g(3),
                    after: Some(g(4)),
                },
            ),
            (
                2,
                append(
                    2,
                    Some(2),
                    vec![TxnChunk::whole(Gtid::new(1, 1, 3), pos(3), Bytes::new())],
                ),
                RejectReason::ForeignDomain {
                    gtid: Gtid::new(1, 1, 3),
                },
            ),
            (
                2,
                append(2, Some(2), vec![part(3, 1, true)]),
                RejectReason::ChunkOutOfOrder {
                    gtid: g(3),
                    chunk: 1,
                    expected: "the first chunk of a new transaction".into(),
                },
            ),
            (
                2,
                ready(2, 2, Some(2)),
                RejectReason::EpochNotNewer {
                    epoch: Epoch(2),
                    current: Epoch(2),
                },
            ),
            (
                3,
                ready(2, 4, Some(2)),
                RejectReason::EpochNotEntryTerm {
                    epoch: Epoch(4),
                    term: 3,
                },
            ),
            (
                3,
                ready(2, 3, Some(1)),
                RejectReason::GtidMismatch {
                    gtid: Some(g(1)),
                    last: Some(g(2)),
                },
            ),
        ];
        for (i, (term, cmd, want)) in cases.into_iter().enumerate() {
            let got = rejected(apply(&mut sm, 3 + i as u64, term, cmd.clone()));
            assert_eq!(got, want, "case {i}: {cmd:?}");
        }
        // Rejections change nothing but the applied index.
        assert_eq!(sm.last_gtid(), before.last_gtid());
        assert_eq!(sm.master(), before.master());
        assert_eq!(sm.txns, before.txns);
    }

    #[test]
    fn a_deposed_master_cannot_extend_the_log() {
        let mut sm = mastered();
        assert_eq!(
            apply(&mut sm, 3, 5, ready(2, 5, Some(2))),
            Outcome::Accepted
        );
        // The old master's Append, even if carried in an entry of the new term (forwarded).
        let r = rejected(apply(&mut sm, 4, 5, append(2, Some(2), vec![whole(3)])));
        assert_eq!(
            r,
            RejectReason::StaleEpoch {
                epoch: Epoch(2),
                current: Epoch(5)
            }
        );
        // A late MasterReady of the old epoch does not move the master back.
        let r = rejected(apply(&mut sm, 5, 5, ready(1, 2, Some(2))));
        assert_eq!(
            r,
            RejectReason::EpochNotEntryTerm {
                epoch: Epoch(2),
                term: 5
            }
        );
        assert_eq!(sm.master(), Some((NodeId(2), Epoch(5))));
    }

    #[test]
    fn chunked_transactions_become_visible_with_their_last_chunk() {
        let mut sm = mastered();
        assert_eq!(
            apply(&mut sm, 3, 2, append(2, Some(2), vec![part(3, 0, false)])),
            Outcome::Accepted
        );
        assert_eq!(
            sm.last_gtid(),
            Some(g(2)),
            "half a transaction is invisible"
        );
        assert!(sm.txn(g(3)).is_none());
        // A deposed master's rejected append does not disturb the open transaction.
        assert!(matches!(
            rejected(apply(&mut sm, 5, 2, append(1, Some(2), vec![whole(4)]))),
            RejectReason::StaleEpoch { .. }
        ));
        let res = sm.apply_entry(
            6,
            2,
            &entry(vec![append(
                2,
                Some(2),
                vec![part(3, 1, false), part(3, 2, true), whole(4)],
            )]),
        );
        assert_eq!(res[0].outcome, Outcome::Accepted);
        assert_eq!(res[0].completed, vec![g(3), g(4)]);
        let rec = sm.txn(g(3)).unwrap();
        assert_eq!(
            rec.chunks
                .iter()
                .map(|c| (c.index, c.txn))
                .collect::<Vec<_>>(),
            vec![(3, 0), (6, 0), (6, 1)]
        );
        assert_eq!(sm.last_gtid(), Some(g(4)));
    }

    #[test]
    fn a_rejected_append_of_the_master_abandons_its_open_transaction() {
        let mut sm = mastered();
        assert_eq!(
            apply(&mut sm, 3, 2, append(2, Some(2), vec![part(3, 0, false)])),
            Outcome::Accepted
        );
        // Skipping a chunk, or interleaving another transaction, is refused, and the capture that
        // sent it has lost track: the open transaction can no longer complete, even with the
        // chunk that would have fitted.
        let r = rejected(apply(
            &mut sm,
            4,
            2,
            append(2, Some(2), vec![part(3, 2, true)]),
        ));
        assert!(
            matches!(r, RejectReason::ChunkOutOfOrder { chunk: 2, .. }),
            "{r:?}"
        );
        let r = rejected(apply(&mut sm, 5, 2, append(2, Some(2), vec![whole(4)])));
        assert!(matches!(r, RejectReason::ChunkOutOfOrder { .. }), "{r:?}");
        assert!(matches!(
            rejected(apply(
                &mut sm,
                6,
                2,
                append(2, Some(2), vec![part(3, 1, true)])
            )),
            RejectReason::ChunkOutOfOrder { .. }
        ));
        assert_eq!(sm.last_gtid(), Some(g(2)));
        // The next promotion clears it.
        assert_eq!(
            apply(&mut sm, 7, 7, ready(1, 7, Some(2))),
            Outcome::Accepted
        );
        assert_eq!(
            apply(&mut sm, 8, 7, append(7, Some(2), vec![whole(3)])),
            Outcome::Accepted
        );
    }

    #[test]
    fn an_epoch_change_aborts_an_open_chunked_transaction() {
        let mut sm = mastered();
        assert_eq!(
            apply(&mut sm, 3, 2, append(2, Some(2), vec![part(3, 0, false)])),
            Outcome::Accepted
        );
        assert!(sm.has_open_txn());
        assert_eq!(
            apply(&mut sm, 4, 6, ready(3, 6, Some(2))),
            Outcome::Accepted
        );
        assert!(!sm.has_open_txn());
        // The rest of the old transaction can never complete it.
        assert!(matches!(
            rejected(apply(
                &mut sm,
                5,
                6,
                append(6, Some(2), vec![part(3, 1, true)])
            )),
            RejectReason::ChunkOutOfOrder { .. }
        ));
        assert_eq!(
            apply(&mut sm, 6, 6, append(6, Some(2), vec![whole(3)])),
            Outcome::Accepted
        );
        assert_eq!(sm.txn(g(3)).unwrap().chunks.len(), 1);
    }

    #[test]
    fn snapshot_data_round_trips_and_forgetting_keeps_gtids() {
        let mut sm = mastered();
        apply(&mut sm, 3, 2, append(2, Some(2), vec![whole(3)]));
        sm.forget_through(2);
        assert!(sm.txn(g(2)).is_none());
        assert!(sm.txn(g(3)).is_some());
        assert_eq!(sm.compacted_through_seq(), Some(2));
        assert_eq!(sm.last_gtid(), Some(g(3)));
        let back = StateMachine::from_snapshot_data(&sm.to_snapshot_data().unwrap()).unwrap();
        assert_eq!(back, sm);
        assert!(StateMachine::from_snapshot_data(&[0xff, 0xff]).is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::entry::TaggedCommand;
    use bytes::Bytes;
    use proptest::prelude::*;

    /// A command drawn from a small space so that accepts and every kind of reject happen.
    fn command() -> impl Strategy<Value = Command> {
        let gtid = (0u32..2, 1u32..3, 0u64..8).prop_map(|(d, s, q)| Gtid::new(d, s, q));
        let chunk = (gtid.clone(), 0u32..3, any::<bool>()).prop_map(|(g, c, last)| TxnChunk {
            gtid: g,
            origin: BinlogPos {
                file: "b".into(),
                offset: g.seq,
            },
            digest: [g.seq as u8; 32],
            chunk: c,
            last,
            events: Bytes::from(vec![c as u8]),
        });
        prop_oneof![
            (
                0u64..5,
                proptest::option::of(gtid.clone()),
                proptest::collection::vec(chunk, 0..3)
            )
                .prop_map(|(e, prev, txns)| Command::Append {
                    epoch: Epoch(e),
                    prev_gtid: prev,
                    txns
                }),
            (1u64..4, 0u64..5, proptest::option::of(gtid)).prop_map(|(n, e, g)| {
                Command::MasterReady {
                    node: NodeId(n),
                    epoch: Epoch(e),
                    gtid: g,
                }
            }),
            Just(Command::Noop),
        ]
    }

    proptest! {
        #[test]
        fn accept_rules_hold_for_any_history(cmds in proptest::collection::vec((0u64..5, command()), 1..60)) {
            let mut sm = StateMachine::default();
            let mut twin = StateMachine::default();
            let mut model_epoch = Epoch(0);
            let mut last_seq: Option<u64> = None;
            for (i, (term, cmd)) in cmds.iter().enumerate() {
                let index = i as u64 + 1;
                // Terms never decrease along a raft log.
                let term = (*term).max(sm.applied_term());
                let payload = EntryPayload { commands: vec![TaggedCommand { origin: None, command: cmd.clone() }] };
                let before = (sm.last_gtid(), sm.master(), sm.txns.clone());
                let res = sm.apply_entry(index, term, &payload);
                twin.apply_entry(index, term, &payload);
                let r = &res[0];
                match (&r.command, &r.outcome) {
                    (Command::Append { epoch, prev_gtid, .. }, Outcome::Accepted) => {
                        prop_assert_eq!(epoch.0, term);
                        prop_assert_eq!(*epoch, model_epoch);
                        prop_assert_eq!(*prev_gtid, before.0);
                        for g in &r.completed {
                            prop_assert_eq!(g.domain, 0);
                            prop_assert!(last_seq.is_none_or(|l| g.seq > l), "seq must increase");
                            last_seq = Some(g.seq);
                        }
                    }
                    (Command::MasterReady { epoch, gtid, .. }, Outcome::Accepted) => {
                        prop_assert_eq!(epoch.0, term);
                        prop_assert!(*epoch > model_epoch);
                        prop_assert_eq!(*gtid, before.0);
                        model_epoch = *epoch;
                    }
                    (_, Outcome::Rejected(_)) => {
                        prop_assert_eq!((sm.last_gtid(), sm.master(), &sm.txns), (before.0, before.1, &before.2));
                    }
                    _ => {}
                }
                prop_assert_eq!(sm.gtid_state().get(0), sm.last_gtid());
            }
            prop_assert_eq!(&sm, &twin, "the state machine is deterministic");
            let back = StateMachine::from_snapshot_data(&sm.to_snapshot_data().unwrap()).unwrap();
            prop_assert_eq!(back, sm);
        }
    }
}
