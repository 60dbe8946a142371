//! [`LogHandle`]: the async face of the log runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quorumsql_peer::PeerNet;
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::{CommittedTxn, LogError, LogStatus, ProposeError, ReadCursor, Role, TxnPiece};
use crate::entry::Command;
use crate::state_machine::{MemberState, Outcome};
use crate::types::{BootInstant, Gtid, NodeId};

/// What became of a proposal once its entry was applied (or it was dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposed {
    pub outcome: Outcome,
    /// Raft index of the entry that carried it; `None` when it never reached the log.
    pub index: Option<u64>,
    /// Transactions it completed (an accepted `Append`).
    pub completed: Vec<Gtid>,
}

/// What the log holds at one (domain, seq): how serve answers a replica's start position and how
/// the rejoin check compares a node's local binlog with the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqLookup {
    /// The accepted transaction at this seq, with the content digest the log recorded.
    Txn { gtid: Gtid, digest: [u8; 32] },
    /// Older than the oldest retained transaction.
    Compacted,
    /// Beyond the log's last accepted transaction (this node may simply be behind).
    Ahead,
    /// Within the retained range, but no transaction has this seq.
    Missing,
    /// The log carries domain 0 only.
    UnknownDomain,
}

/// How far this node has applied the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppliedPosition {
    pub index: u64,
    pub last_gtid: Option<Gtid>,
}

/// Requests from handles to the runtime thread.
pub(crate) enum Request {
    Propose {
        cmd: Command,
        reply: oneshot::Sender<Result<Proposed, ProposeError>>,
    },
    ReadTxns {
        after: Option<Gtid>,
        max_bytes: usize,
        reply: oneshot::Sender<Result<Vec<CommittedTxn>, LogError>>,
    },
    ReadPieces {
        from: ReadCursor,
        max_bytes: usize,
        reply: oneshot::Sender<Result<Vec<TxnPiece>, LogError>>,
    },
    LookupSeq {
        domain: u32,
        seq: u64,
        reply: oneshot::Sender<SeqLookup>,
    },
    Transfer {
        to: NodeId,
        reply: oneshot::Sender<Result<(), ProposeError>>,
    },
    SetPriority(i64),
    ReportMember(MemberState),
    ClearNeedsRebuild {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    Shutdown,
}

/// State the runtime thread publishes for handles without a round trip.
pub(crate) struct Published {
    /// `LogCore::lease_valid_until` as of the last loop iteration (nanos, 0 = none).
    pub lease_until: AtomicU64,
    /// CLOCK_BOOTTIME of the last loop iteration: a stalled loop voids the lease for readers.
    pub loop_at: AtomicU64,
    pub lease_margin: Duration,
    pub fatal: Mutex<Option<String>>,
    /// Vote and pre-vote requests this node dropped because of the vote hold-off (DESIGN §6
    /// invariant 9), since the process started: makes the hold-off observable from outside.
    pub votes_held_off: AtomicU64,
}

/// Handle to a running log. Cheap to clone; every method is safe to call from any task.
#[derive(Clone)]
pub struct LogHandle {
    pub(crate) requests: mpsc::UnboundedSender<Request>,
    pub(crate) status: watch::Receiver<LogStatus>,
    pub(crate) applied: watch::Receiver<AppliedPosition>,
    pub(crate) stopped: watch::Receiver<bool>,
    pub(crate) published: Arc<Published>,
    pub(crate) peers: PeerNet,
}

/// A queued proposal; await [`ProposalTicket::wait`] for its outcome.
#[must_use = "a proposal's outcome must be checked"]
pub struct ProposalTicket(oneshot::Receiver<Result<Proposed, ProposeError>>);

impl ProposalTicket {
    /// Resolves when the proposal's entry is applied or the proposal is dropped. Waits as long as
    /// that takes (a leader cut off from its quorum never resolves until it learns the new log):
    /// callers bound it with a timeout and then treat the outcome as unknown.
    pub async fn wait(self) -> Result<Proposed, ProposeError> {
        match self.0.await {
            Ok(r) => r,
            Err(_) => Err(ProposeError::Stopped(
                "log runtime stopped before the proposal resolved".into(),
            )),
        }
    }
}

impl LogHandle {
    fn stopped_error(&self) -> ProposeError {
        ProposeError::Stopped(self.fatal().unwrap_or_else(|| "log runtime stopped".into()))
    }

    /// Queues `cmd` for the next entry and returns at once. Proposals submitted one after another
    /// enter the log in that order (a proposer that numbers its commands relies on this). Fails
    /// immediately with `NotLeader` unless this node is the raft leader.
    pub fn submit(&self, cmd: Command) -> Result<ProposalTicket, ProposeError> {
        if self.fatal().is_some() {
            return Err(self.stopped_error());
        }
        {
            let st = self.status.borrow();
            if st.role != Role::Leader {
                return Err(ProposeError::NotLeader { leader: st.leader });
            }
        }
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Propose { cmd, reply })
            .map_err(|_| self.stopped_error())?;
        Ok(ProposalTicket(rx))
    }

    /// Proposes `cmd` and waits until it is applied: `Accepted`, `Rejected` by the state machine's
    /// rules, or `Dropped` (never reached the committed log). When it resolves, [`LogHandle::status`]
    /// and the applied position already include the proposal's entry.
    pub async fn propose(&self, cmd: Command) -> Result<Proposed, ProposeError> {
        self.submit(cmd)?.wait().await
    }

    /// The node's status as of the runtime's last publication (at most ~100 ms old for the
    /// time-derived fields; use [`LogHandle::lease_valid_until`] for the lease).
    pub fn status(&self) -> LogStatus {
        self.status.borrow().clone()
    }

    /// Status updates. The value is always as of the runtime's last loop turn (indexes and GTIDs
    /// included); waiters are woken when role, term, leader or master change, and at least every
    /// ~100 ms. To wait for applied entries use [`LogHandle::subscribe_applied`].
    pub fn subscribe_status(&self) -> watch::Receiver<LogStatus> {
        self.status.clone()
    }

    /// End of this node's master lease, if it holds one: the core's lease end, cut to
    /// `lease_margin` after the runtime loop last ran, so a stalled loop cannot leave a stale lease
    /// looking valid. The lease holds while `BootInstant::now() < until`.
    pub fn lease_valid_until(&self) -> Option<BootInstant> {
        let until = self.published.lease_until.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        let alive = BootInstant(self.published.loop_at.load(Ordering::Acquire))
            .add(self.published.lease_margin);
        Some(BootInstant(until).min(alive))
    }

    /// Vote and pre-vote requests dropped during the vote hold-off since this process started.
    pub fn votes_held_off(&self) -> u64 {
        self.published.votes_held_off.load(Ordering::Relaxed)
    }

    /// True while this node holds the lease now.
    pub fn holds_lease(&self) -> bool {
        self.lease_valid_until()
            .is_some_and(|u| BootInstant::now() < u)
    }

    /// The applied index and the last accepted GTID; changes as entries are applied.
    pub fn subscribe_applied(&self) -> watch::Receiver<AppliedPosition> {
        self.applied.clone()
    }

    /// Whole accepted transactions after `after` (from the oldest retained one if `None`), up to
    /// about `max_bytes` of events (at least one transaction if any). Read on the runtime thread.
    /// A transaction is returned whole whatever its size: readers that must bound their memory
    /// (serve) use [`LogHandle::read_pieces`].
    pub async fn read_txns_after(
        &self,
        after: Option<Gtid>,
        max_bytes: usize,
    ) -> Result<Vec<CommittedTxn>, LogError> {
        self.ask(|reply| Request::ReadTxns {
            after,
            max_bytes,
            reply,
        })
        .await?
    }

    /// Accepted, committed transactions in pieces from `from`, at most `max_bytes` of events per
    /// call (see [`crate::LogCore::read_pieces`]): a transaction larger than `max_bytes` comes in
    /// several calls, each continuing at the previous piece's [`TxnPiece::next_cursor`]. Read on
    /// the runtime thread, which copies at most `max_bytes` per call.
    pub async fn read_pieces(
        &self,
        from: ReadCursor,
        max_bytes: usize,
    ) -> Result<Vec<TxnPiece>, LogError> {
        self.ask(|reply| Request::ReadPieces {
            from,
            max_bytes,
            reply,
        })
        .await?
    }

    /// What the log holds at (`domain`, `seq`); answered on the runtime thread from the state
    /// machine's index.
    pub async fn lookup_seq(&self, domain: u32, seq: u64) -> Result<SeqLookup, LogError> {
        self.ask(|reply| Request::LookupSeq { domain, seq, reply })
            .await
    }

    /// Clears [`LogStatus::self_needs_rebuild`] (durably) once this node's mariadbd was rebuilt
    /// from a healthy replica: the snapshot gap in its transactions is gone with the old datadir.
    pub async fn clear_needs_rebuild(&self) -> Result<(), LogError> {
        self.ask(|reply| Request::ClearNeedsRebuild { reply })
            .await?
    }

    /// One request to the runtime thread and its answer; a stopped runtime is
    /// [`LogError::Stopped`] with the reason it stopped.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, LogError> {
        let (reply, rx) = oneshot::channel();
        let stopped =
            || LogError::Stopped(self.fatal().unwrap_or_else(|| "log runtime stopped".into()));
        self.requests.send(request(reply)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Waits until a transaction after `after` is applied, or `deadline` passes. Returns the last
    /// accepted GTID when there is something new, `None` at the deadline or if the runtime stopped.
    pub async fn wait_for_txns_after(
        &self,
        after: Option<Gtid>,
        deadline: tokio::time::Instant,
    ) -> Option<Gtid> {
        let mut rx = self.applied.clone();
        let newer = |p: &AppliedPosition| match (p.last_gtid, after) {
            (Some(last), Some(a)) => last.seq > a.seq,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let wait = async { rx.wait_for(newer).await.ok().and_then(|p| p.last_gtid) };
        tokio::time::timeout_at(deadline, wait).await.ok().flatten()
    }

    /// Hands leadership to `to` (the lease is given up first, for the rest of this term).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Transfer { to, reply })
            .map_err(|_| self.stopped_error())?;
        rx.await.map_err(|_| self.stopped_error())?
    }

    /// Sets this node's raft election priority (0 when unhealthy or diverged, DESIGN §3).
    pub fn set_priority(&self, priority: i64) {
        let _ = self.requests.send(Request::SetPriority(priority));
    }

    /// Reports this node's mariadbd to the cluster (DESIGN §3): the last GTID it applied (durably:
    /// `@@gtid_binlog_pos`), whether it is healthy and whether it diverged. Call it every few
    /// seconds; it never blocks. The report goes to every peer, and the raft leader records each
    /// member's newest report in the log (`Command::MemberReport`), where log retention reads it:
    /// the log is compacted only below the smallest GTID applied by every healthy member and what
    /// a majority applied (see [`crate::retention`]). Members behind the compaction point appear
    /// in [`LogStatus::needs_rebuild`]. Ignored once the runtime stopped.
    pub fn report_member(&self, applied_gtid: Option<Gtid>, healthy: bool, diverged: bool) {
        let _ = self.requests.send(Request::ReportMember(MemberState {
            applied_gtid,
            healthy,
            diverged,
        }));
    }

    /// Why the runtime stopped on its own (a store failure), if it did. The node must exit.
    pub fn fatal(&self) -> Option<String> {
        self.published.fatal.lock().clone()
    }

    /// Resolves when the runtime thread has stopped (after `shutdown` or a fatal error).
    pub async fn stopped(&self) {
        let mut rx = self.stopped.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The peer transport the runtime sends on (for status pages and raw streams).
    pub fn peers(&self) -> &PeerNet {
        &self.peers
    }

    /// Stops the runtime thread (waiting proposers get `Stopped`) and then the peer transport.
    pub async fn shutdown(&self) {
        let _ = self.requests.send(Request::Shutdown);
        self.stopped().await;
        self.peers.shutdown().await;
    }
}
