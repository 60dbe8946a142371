//! `LogCore`: the sans-IO global binlog node. It wraps raft-rs's `RawNode` over a [`LogStore`],
//! applies committed entries to the [`StateMachine`], runs the lease and the vote hold-off. No
//! threads, sockets or clock reads: the caller passes the current [`BootInstant`] into every call.
//!
//! Driving it (the runtime's loop):
//! 1. `tick(now)` every tick interval (or more often: it ticks raft at most once per call and
//!    only when a whole interval passed since the last tick, never faster than the clock);
//! 2. `step(from, msg, now)` for every raft message received from an authenticated peer;
//! 3. `propose(..)`, `start_lease_round(now)`, `transfer_leader(..)` as needed;
//! 4. after any of the above, in two phases: `begin_poll(now)` returns the messages that may leave
//!    *before* this node persists anything (a leader's appends and heartbeats: raft thesis
//!    §10.2.1, so the leader's fsync runs in parallel with its followers'); send them at once, then
//!    `finish_poll(now)` persists, applies and returns everything else (send those messages too,
//!    in order; loss is tolerated, reordering within a peer pair is tolerated). `poll(now)` does
//!    both for callers that gain nothing from the overlap.

use std::collections::VecDeque;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, MessageType,
    Snapshot,
};
use raft::{RawNode, ReadOnlyOption, ReadState, Ready, StateRole};
use serde::{Deserialize, Serialize};

use crate::entry::{encoded_size_bound, Command, EntryPayload, ProposalOrigin, TaggedCommand};

mod pieces;
use crate::lease::{Lease, LeaseParams, RoundContext};
use crate::state_machine::{Membership, Outcome, RejectReason, StateMachine, TxnRecord};
use crate::store::{LogStore, RaftStorage, StoreError};
use crate::types::{node, BinlogPos, BootInstant, Epoch, Gtid, GtidState, NodeId, ProposalId};
pub use pieces::{ChunkPos, ReadCursor, TxnPiece};

const META_INITIAL_VOTERS: &str = "initial_voters";
const META_INCARNATION: &str = "incarnation";
const META_NEEDS_REBUILD: &str = "needs_rebuild";

/// Settings of one log node. Tick and election settings must be equal on all nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub id: NodeId,
    /// The voters the cluster was bootstrapped with. Used only when the store is empty, and then
    /// persisted; pass the same set on every node, also on nodes added later.
    pub initial_voters: Vec<NodeId>,
    pub tick_interval: Duration,
    /// raft `election_tick`: the minimum randomized election timeout, in ticks.
    pub election_ticks: usize,
    /// Upper bound (exclusive) of the randomized election timeout, in ticks.
    pub election_ticks_max: usize,
    pub heartbeat_ticks: usize,
    /// Relative clock drift bound between any two nodes (fraction, e.g. 0.01). See docs/LEASE.md.
    pub max_drift: f64,
    /// Lease safety margin; a scheduling gap longer than this voids the lease.
    pub lease_margin: Duration,
    /// Largest encoded entry; larger transactions must be chunked by the proposer.
    pub entry_cap: usize,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    /// raft election priority (0 when unhealthy or diverged, DESIGN §3).
    pub priority: i64,
    /// When set, election timeouts are drawn from a PRNG seeded with this value instead of
    /// raft-rs's thread-local RNG, so a simulation replays exactly.
    pub deterministic_seed: Option<u64>,
    /// Drops the vote hold-off (invariant 9). Breaks the lease; exists only so the simulator can
    /// prove its checker catches that. Never set it in a node.
    #[doc(hidden)]
    pub unsafe_disable_vote_hold_off: bool,
}

impl LogConfig {
    /// Reasonable production defaults: 100 ms ticks, elections after 1-2 s, 1% drift, 100 ms
    /// margin, 4 MiB entries.
    pub fn new(id: NodeId, initial_voters: Vec<NodeId>) -> LogConfig {
        LogConfig {
            id,
            initial_voters,
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            election_ticks_max: 20,
            heartbeat_ticks: 2,
            max_drift: 0.01,
            lease_margin: Duration::from_millis(100),
            entry_cap: 4 << 20,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            priority: 1,
            deterministic_seed: None,
            unsafe_disable_vote_hold_off: false,
        }
    }

    pub fn election_timeout_min(&self) -> Duration {
        self.tick_interval
            .saturating_mul(u32::try_from(self.election_ticks).unwrap_or(u32::MAX))
    }

    pub fn election_timeout_max(&self) -> Duration {
        self.tick_interval
            .saturating_mul(u32::try_from(self.election_ticks_max).unwrap_or(u32::MAX))
    }

    pub fn lease_params(&self) -> LeaseParams {
        LeaseParams {
            tick_interval: self.tick_interval,
            election_ticks: self.election_ticks,
            max_drift: self.max_drift,
            margin: self.lease_margin,
        }
    }

    fn validate(&self) -> Result<(), LogError> {
        let bad = |m: String| Err(LogError::Config(m));
        if self.id.0 == 0 {
            return bad("node id 0 is reserved by raft".into());
        }
        if self.tick_interval.is_zero() {
            return bad("tick_interval must be positive".into());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return bad(format!(
                "election_ticks ({}) must exceed heartbeat_ticks ({}) > 0",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        if self.election_ticks_max <= self.election_ticks {
            return bad(format!(
                "election_ticks_max ({}) must exceed election_ticks ({})",
                self.election_ticks_max, self.election_ticks
            ));
        }
        if !(0.0..1.0).contains(&self.max_drift) {
            return bad(format!("max_drift {} must be in [0, 1)", self.max_drift));
        }
        if self.entry_cap < 1024 {
            return bad(format!("entry_cap {} is below 1 KiB", self.entry_cap));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log configuration invalid: {0}")]
    Config(String),
    /// The log store failed; the node must stop (no retry, DESIGN §3 "Log retention").
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft refused to run: {0}")]
    Raft(String),
    #[error("state machine snapshot unusable: {0}")]
    Snapshot(String),
    #[error("transactions after {after} were compacted away (log keeps seq > {through}); the reader needs a rebuild")]
    Compacted { after: String, through: u64 },
    #[error("GTID {0} is not a transaction of the log (diverged history?)")]
    UnknownGtid(Gtid),
    #[error("log entry {index} holding part of {gtid} does not decode: {detail}")]
    CorruptEntry {
        index: u64,
        gtid: Gtid,
        detail: String,
    },
    /// A piece-wise read cursor that does not point inside its transaction (a caller bug or a
    /// cursor kept across a log it does not belong to).
    #[error("read cursor {offset} bytes into {gtid} is not inside that transaction: {detail}")]
    BadCursor {
        gtid: Gtid,
        offset: u64,
        detail: String,
    },
    /// An earlier fatal error stopped this core.
    #[error("log core stopped after a fatal error: {0}")]
    Stopped(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader accepts proposals; it never forwards them (a forwarded proposal could land
    /// in another leader's term). `leader` is the last known leader, if any.
    #[error("not the raft leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership transfer in progress")]
    Transferring,
    #[error("command of about {size} bytes exceeds the entry cap of {cap} bytes; chunk it")]
    TooLarge { size: usize, cap: usize },
    #[error("log core stopped after a fatal error: {0}")]
    Stopped(String),
}

/// Raft role of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Role {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// One applied command, for readers (capture, serve, roles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedCommand {
    pub index: u64,
    pub term: u64,
    pub position: u32,
    pub origin: Option<ProposalOrigin>,
    pub command: Command,
    pub outcome: Outcome,
    /// Transactions this command completed (visible from now on).
    pub completed: Vec<Gtid>,
}

/// Notable changes seen while polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    BecameLeader {
        term: u64,
    },
    LostLeadership {
        term: u64,
        /// The node's term after it stepped down: equal to `term` when it stepped down by
        /// itself (raft's quorum check heard from no majority within an election timeout, or
        /// it handed leadership over), greater when a peer with a higher term deposed it.
        now_term: u64,
    },
    /// The election timeout ran out without word from a leader: this node starts a pre-vote
    /// (`pre_vote`) or, once that succeeded, an election. Seen on a healthy cluster only when a
    /// node was starved, paused or cut off.
    Campaigning {
        term: u64,
        pre_vote: bool,
        /// The leader this node last knew, if any.
        last_leader: Option<NodeId>,
    },
    /// The core was not entered for longer than the lease margin (process paused, loop thread
    /// starved of CPU): any lease was voided, and an election may follow.
    SchedulingGap {
        gap: Duration,
    },
    MembershipChanged {
        index: u64,
        membership: Membership,
    },
    /// A raft snapshot replaced this node's log: its transactions have a gap, rebuild needed.
    SnapshotInstalled {
        index: u64,
        term: u64,
    },
}

/// Everything one `poll` produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Raft messages to send, in order.
    pub messages: Vec<Message>,
    pub applied: Vec<AppliedCommand>,
    /// Outcomes of this node's proposals (this process only).
    pub outcomes: Vec<(ProposalId, Outcome)>,
    pub events: Vec<LogEvent>,
    /// Completed read_index requests that are not lease rounds.
    pub read_states: Vec<ReadState>,
}

/// What `step` did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Stepped,
    /// A vote or pre-vote request dropped during the hold-off (invariant 9).
    VoteHeldOff,
    /// Not stepped: misaddressed, local-only type, unknown peer, or refused by raft.
    Ignored(String),
}

/// Replication progress of one peer, as seen by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProgress {
    pub node: NodeId,
    pub matched: u64,
    pub next: u64,
    pub voter: bool,
}

/// A snapshot of the node's state for status pages and the roles logic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogStatus {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub last_gtid: Option<Gtid>,
    pub gtid_state: GtidState,
    pub master: Option<(NodeId, Epoch)>,
    pub membership: Membership,
    /// Time left on the lease, if this node holds one now.
    pub lease_remaining: Option<Duration>,
    pub transferring: bool,
    pub vote_hold_off_remaining: Option<Duration>,
    /// Leader only: progress of every other member.
    pub peers: Vec<PeerProgress>,
    /// This node installed a raft snapshot: its mariadbd must be rebuilt, never fed across the gap.
    pub self_needs_rebuild: bool,
    /// Members known to be behind the compaction point (leader progress or member reports).
    pub needs_rebuild: Vec<NodeId>,
    /// The newest transaction compacted away (no longer readable from this node's log).
    pub compacted_through: Option<Gtid>,
}

/// A whole, accepted, committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedTxn {
    pub gtid: Gtid,
    pub origin: BinlogPos,
    pub digest: [u8; 32],
    /// Raft index of the entry that completed it.
    pub index: u64,
    /// The transaction's binlog events, all chunks concatenated.
    pub events: Vec<u8>,
}

/// What a `compact` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    /// Entries up to here are gone.
    pub through: u64,
    /// The snapshot saved before compacting.
    pub snapshot_index: u64,
}

/// Message types a peer may never make us step: local-only triggers, and proposals and
/// leadership-transfer requests, which raft-rs would otherwise forward or act on behind the
/// lease's back (a proposal must never travel to another leader; a transfer must void the lease).
fn never_from_network(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum
            | MessageType::MsgPropose
            | MessageType::MsgTransferLeader
    )
}

/// A vote or pre-vote granted: such a message must pass the vote hold-off filter at the end of
/// a poll (`LogCore::withhold_votes_in_hold_off`) and is never released early.
fn grants_vote(m: &Message) -> bool {
    !m.reject
        && matches!(
            m.get_msg_type(),
            MessageType::MsgRequestVoteResponse | MessageType::MsgRequestPreVoteResponse
        )
}

/// splitmix64: tiny deterministic PRNG for the simulator's election timeouts.
#[derive(Debug, Clone)]
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The sans-IO global binlog node.
pub struct LogCore<S: LogStore> {
    cfg: LogConfig,
    raw: RawNode<RaftStorage<S>>,
    sm: StateMachine,
    lease: Lease,
    incarnation: u64,
    batch: Vec<(ProposalId, TaggedCommand)>,
    /// Proposals in the log but not yet applied: (raft index, ids in that entry).
    pending: VecDeque<(u64, Vec<ProposalId>)>,
    hold_off_until: BootInstant,
    last_tick: BootInstant,
    leader_term: Option<u64>,
    /// Term in which `transfer_leader` was called: no lease for the rest of that term.
    transfer_term: Option<u64>,
    needs_rebuild: bool,
    out: Output,
    /// A Ready whose early messages `begin_poll` handed out and that is not persisted yet, with
    /// the instant of that poll. Nothing may touch raft before it is finished (`settle`).
    unpersisted: Option<(Ready, BootInstant)>,
    stopped: Option<String>,
    rng: Option<SplitMix>,
    /// (term, role, randomized timeout) last seen, to notice raft re-drawing its timeout.
    timeout_seen: (u64, StateRole, usize),
    /// raft's role after the previous call, to report campaigns.
    last_role: StateRole,
    /// The leader this node last knew (for the campaign report).
    known_leader: Option<NodeId>,
    /// Entries kept below the members' retention point (see [`Self::set_compaction_slack`]).
    compaction_slack: u64,
}

impl<S: LogStore> LogCore<S> {
    /// Opens the node over `store`, restoring the state machine from the stored snapshot and
    /// replaying committed entries after it on the first `poll`.
    pub fn new(cfg: LogConfig, mut store: S, now: BootInstant) -> Result<Self, LogError> {
        cfg.validate()?;
        let fresh = store.last_index() == 0
            && store.snapshot().is_none()
            && store.hard_state() == HardState::default();
        let initial_voters: Vec<NodeId> = match store.get_meta(META_INITIAL_VOTERS) {
            Some(v) => postcard::from_bytes(&v).map_err(|e| {
                LogError::Snapshot(format!("stored initial voters do not decode: {e}"))
            })?,
            None if fresh && !cfg.initial_voters.is_empty() => {
                let v = postcard::to_stdvec(&cfg.initial_voters)
                    .map_err(|e| LogError::Config(format!("cannot encode initial voters: {e}")))?;
                store.put_meta(META_INITIAL_VOTERS, &v, true)?;
                cfg.initial_voters.clone()
            }
            None => Vec::new(),
        };
        let initial_conf = ConfState {
            voters: initial_voters.iter().map(|n| n.0).collect(),
            ..Default::default()
        };

        let incarnation = store
            .get_meta(META_INCARNATION)
            .and_then(|v| {
                v.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
            })
            .unwrap_or(0)
            + 1;
        store.put_meta(META_INCARNATION, &incarnation.to_le_bytes(), true)?;
        let needs_rebuild = store.get_meta(META_NEEDS_REBUILD).is_some_and(|v| v == [1]);

        let sm = match store.snapshot() {
            Some(snap) => {
                let mut sm = StateMachine::from_snapshot_data(&snap.data)
                    .map_err(|e| LogError::Snapshot(e.to_string()))?;
                // A snapshot received from the leader may index transactions in entries this
                // node never held.
                sm.forget_through(store.truncated().0);
                // The snapshot covers committed state; a commit index lost with an unsynced write
                // must not fall below it (raft requires applied <= committed).
                let mut hs = store.hard_state();
                if hs.commit < snap.get_metadata().index {
                    hs.commit = snap.get_metadata().index;
                    hs.term = hs.term.max(snap.get_metadata().term);
                    store.append(&[], Some(&hs), true)?;
                }
                sm
            }
            None => StateMachine::new(Membership::from_conf_state(&initial_conf)),
        };

        let raft_cfg = raft::Config {
            id: cfg.id.0,
            election_tick: cfg.election_ticks,
            min_election_tick: cfg.election_ticks,
            max_election_tick: cfg.election_ticks_max,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: sm.applied_index(),
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            priority: cfg.priority,
            ..Default::default()
        };
        raft_cfg
            .validate()
            .map_err(|e| LogError::Config(e.to_string()))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_cfg, RaftStorage::new(store, initial_conf), &logger)
            .map_err(|e| LogError::Raft(e.to_string()))?;
        let timeout_seen = (
            raw.raft.term,
            raw.raft.state,
            raw.raft.randomized_election_timeout(),
        );
        let mut core = LogCore {
            lease: Lease::new(cfg.lease_params()),
            hold_off_until: now.add(cfg.election_timeout_max()),
            rng: cfg
                .deterministic_seed
                .map(|s| SplitMix(s ^ cfg.id.0.wrapping_mul(0x9E37_79B9))),
            cfg,
            raw,
            sm,
            incarnation,
            batch: Vec::new(),
            pending: VecDeque::new(),
            last_tick: now,
            leader_term: None,
            transfer_term: None,
            needs_rebuild,
            out: Output::default(),
            unpersisted: None,
            stopped: None,
            timeout_seen,
            last_role: StateRole::Follower,
            known_leader: None,
            compaction_slack: 0,
        };
        core.lease.observe(now);
        core.redraw_timeout(true);
        Ok(core)
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }
    /// Distinguishes this process's proposals from earlier runs of the same node.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
    pub fn state_machine(&self) -> &StateMachine {
        &self.sm
    }
    pub fn store(&self) -> &S {
        self.raw.store().store()
    }
    /// Gives the store back (the simulator crashes and reopens it).
    pub fn into_store(mut self) -> S
    where
        S: Default,
    {
        std::mem::take(self.raw.mut_store().store_mut())
    }
    pub fn role(&self) -> Role {
        self.raw.raft.state.into()
    }
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }
    pub fn leader(&self) -> Option<NodeId> {
        match self.raw.raft.leader_id {
            raft::INVALID_ID => None,
            id => Some(node(id)),
        }
    }
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }
    pub fn applied_index(&self) -> u64 {
        self.sm.applied_index()
    }
    /// Votes and pre-votes are dropped until this instant.
    pub fn vote_hold_off_until(&self) -> BootInstant {
        self.hold_off_until
    }
    pub fn in_vote_hold_off(&self, now: BootInstant) -> bool {
        now < self.hold_off_until && !self.cfg.unsafe_disable_vote_hold_off
    }
    /// Read access to raft (for tests and the simulator's invariant checks).
    pub fn raft(&self) -> &raft::Raft<RaftStorage<S>> {
        &self.raw.raft
    }

    fn check_running(&self) -> Result<(), LogError> {
        match &self.stopped {
            Some(why) => Err(LogError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: LogError) -> LogError {
        if self.stopped.is_none() {
            self.stopped = Some(e.to_string());
        }
        e
    }

    /// Advances raft's logical clock: one raft tick when at least one whole tick interval
    /// elapsed since the last tick. After a pause the missed ticks are dropped, never replayed
    /// (DESIGN §3 "Time"): fewer ticks only delay elections and check-quorum, the lease is
    /// measured on the clock, and the tick phase stays on the interval grid.
    pub fn tick(&mut self, now: BootInstant) -> Result<(), LogError> {
        self.check_running()?;
        self.settle()?;
        self.advance_clock(now);
        Ok(())
    }

    /// Every entry point runs the ticks that are due before doing anything else: a heartbeat
    /// stepped before overdue ticks would otherwise be followed by a burst of ticks, and the
    /// follower's vote refusal would end early (docs/LEASE.md).
    fn advance_clock(&mut self, now: BootInstant) {
        if let Some(gap) = self.lease.observe(now) {
            self.out.events.push(LogEvent::SchedulingGap { gap });
        }
        let interval = crate::types::duration_nanos(self.cfg.tick_interval).max(1);
        let due = now.0.saturating_sub(self.last_tick.0) / interval;
        if due > 0 {
            self.raw.tick();
            self.after_raft_call(now);
            self.last_tick = BootInstant(self.last_tick.0 + due * interval);
        }
    }

    /// Steps a raft message received from authenticated peer `from`.
    pub fn step(
        &mut self,
        from: NodeId,
        msg: Message,
        now: BootInstant,
    ) -> Result<StepOutcome, LogError> {
        self.check_running()?;
        self.settle()?;
        self.advance_clock(now);
        if msg.from != from.0 || msg.to != self.cfg.id.0 {
            return Ok(StepOutcome::Ignored(format!(
                "message from {} to {} arrived on the link of {from}",
                msg.from, msg.to
            )));
        }
        let t = msg.get_msg_type();
        if never_from_network(t) {
            return Ok(StepOutcome::Ignored(format!(
                "{t:?} is never accepted from a peer"
            )));
        }
        if matches!(
            t,
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) && self.in_vote_hold_off(now)
        {
            return Ok(StepOutcome::VoteHeldOff);
        }
        let r = self.raw.step(msg);
        self.after_raft_call(now);
        match r {
            Ok(()) => Ok(StepOutcome::Stepped),
            Err(raft::Error::Store(e)) => {
                Err(self.fail(LogError::Raft(format!("storage error while stepping: {e}"))))
            }
            Err(e) => Ok(StepOutcome::Ignored(e.to_string())),
        }
    }

    /// Queues a command for the next `poll`, which batches queued commands into entries (group
    /// commit). Refused unless this node is the leader: proposals are never forwarded.
    pub fn propose(&mut self, id: ProposalId, cmd: Command) -> Result<(), ProposeError> {
        if let Some(why) = &self.stopped {
            return Err(ProposeError::Stopped(why.clone()));
        }
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        if self.raw.raft.lead_transferee.is_some() || self.transfer_term == Some(self.raw.raft.term)
        {
            return Err(ProposeError::Transferring);
        }
        let tagged = TaggedCommand {
            origin: Some(ProposalOrigin {
                node: self.cfg.id,
                incarnation: self.incarnation,
                id,
            }),
            command: cmd,
        };
        let size = encoded_size_bound(&tagged);
        if size > self.cfg.entry_cap {
            return Err(ProposeError::TooLarge {
                size,
                cap: self.cfg.entry_cap,
            });
        }
        self.batch.push((id, tagged));
        Ok(())
    }

    /// Proposes a membership change (joint consensus with auto-leave for several changes).
    /// Its outcome arrives like any other proposal's.
    pub fn propose_conf_change(
        &mut self,
        id: ProposalId,
        cc: ConfChangeV2,
    ) -> Result<(), ProposeError> {
        if let Some(why) = &self.stopped {
            return Err(ProposeError::Stopped(why.clone()));
        }
        if self.settle().is_err() {
            return Err(ProposeError::Stopped(
                self.stopped.clone().unwrap_or_default(),
            ));
        }
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        let origin = ProposalOrigin {
            node: self.cfg.id,
            incarnation: self.incarnation,
            id,
        };
        let ctx = postcard::to_stdvec(&origin).unwrap_or_default();
        match self.raw.propose_conf_change(ctx, cc) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                self.pending.push_back((index, vec![id]));
            }
            Err(_) => self.out.outcomes.push((id, Outcome::Dropped)),
        }
        Ok(())
    }

    /// Hands leadership to `to`. The lease is given up first and is not taken again in this term:
    /// the transferee campaigns with CAMPAIGN_TRANSFER, which voters grant even inside their
    /// election timeout (design review 7), and a delayed MsgTimeoutNow can do so late.
    pub fn transfer_leader(&mut self, to: NodeId, now: BootInstant) {
        if self.settle().is_err() || self.raw.raft.state != StateRole::Leader {
            return;
        }
        self.lease.void(now);
        self.transfer_term = Some(self.raw.raft.term);
        self.raw.transfer_leader(to.0);
        self.after_raft_call(now);
    }

    /// Starts a lease round (a raft read_index carrying `now`). Returns false when this node
    /// cannot hold a lease now: not leader, transferring, or no entry of its term committed yet.
    pub fn start_lease_round(&mut self, now: BootInstant) -> bool {
        if self.settle().is_err()
            || !self.lease_allowed()
            || !self.raw.raft.commit_to_current_term()
        {
            return false;
        }
        self.advance_clock(now);
        if !self.lease_allowed() || !self.raw.raft.commit_to_current_term() {
            return false;
        }
        let ctx = self.lease.start_round(self.raw.raft.term, now);
        self.raw.read_index(ctx);
        self.after_raft_call(now);
        true
    }

    fn lease_allowed(&self) -> bool {
        let r = &self.raw.raft;
        r.state == StateRole::Leader
            && r.lead_transferee.is_none()
            && self.transfer_term != Some(r.term)
    }

    /// End of the lease this node holds as leader of the current term, if any. The caller
    /// compares it with CLOCK_BOOTTIME; the lease holds while `now < until`.
    pub fn lease_valid_until(&self) -> Option<BootInstant> {
        if !self.lease_allowed() {
            return None;
        }
        self.lease.valid_until(self.raw.raft.term)
    }

    /// True while this node holds the lease at `now`.
    pub fn holds_lease(&self, now: BootInstant) -> bool {
        self.lease_valid_until().is_some_and(|u| now < u)
    }

    /// Sets raft's election priority (0 = never preferred; DESIGN §3).
    pub fn set_priority(&mut self, priority: i64) {
        if self.settle().is_err() {
            return;
        }
        self.cfg.priority = priority;
        self.raw.set_priority(priority);
    }

    /// Starts an election now (bootstrap of a single-node cluster, tests).
    pub fn campaign(&mut self, now: BootInstant) -> Result<(), LogError> {
        self.check_running()?;
        self.settle()?;
        self.raw
            .campaign()
            .map_err(|e| LogError::Raft(e.to_string()))?;
        self.after_raft_call(now);
        Ok(())
    }

    pub fn report_unreachable(&mut self, to: NodeId) {
        if self.settle().is_err() {
            return;
        }
        self.raw.report_unreachable(to.0);
    }

    pub fn report_snapshot(&mut self, to: NodeId, delivered: bool) {
        if self.settle().is_err() {
            return;
        }
        let st = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to.0, st);
    }

    /// Clears the snapshot-gap flag once this node's mariadbd was rebuilt.
    pub fn clear_needs_rebuild(&mut self) -> Result<(), LogError> {
        self.check_running()?;
        self.settle()?;
        let r = self
            .raw
            .mut_store()
            .store_mut()
            .put_meta(META_NEEDS_REBUILD, &[0], true);
        if let Err(e) = r {
            return Err(self.fail(e.into()));
        }
        self.needs_rebuild = false;
        Ok(())
    }

    /// Notices raft's state changes after any call into it: leadership events, lease loss,
    /// deterministic election timeouts.
    fn after_raft_call(&mut self, _now: BootInstant) {
        self.redraw_timeout(false);
        let r = &self.raw.raft;
        if r.leader_id != raft::INVALID_ID {
            self.known_leader = Some(node(r.leader_id));
        }
        if r.state != self.last_role {
            if matches!(r.state, StateRole::PreCandidate | StateRole::Candidate) {
                self.out.events.push(LogEvent::Campaigning {
                    term: r.term,
                    pre_vote: r.state == StateRole::PreCandidate,
                    last_leader: self.known_leader,
                });
            }
            self.last_role = r.state;
        }
        let leading = (r.state == StateRole::Leader).then_some(r.term);
        if leading != self.leader_term {
            if let Some(t) = self.leader_term {
                self.out.events.push(LogEvent::LostLeadership {
                    term: t,
                    now_term: r.term,
                });
            }
            if let Some(t) = leading {
                self.out.events.push(LogEvent::BecameLeader { term: t });
            }
            self.leader_term = leading;
            // Queued commands of a lost leadership never reach the log.
            if leading.is_none() {
                for (id, _) in self.batch.drain(..) {
                    self.out.outcomes.push((id, Outcome::Dropped));
                }
            }
        }
    }

    fn redraw_timeout(&mut self, force: bool) {
        let Some(rng) = self.rng.as_mut() else { return };
        let (term, state) = (self.raw.raft.term, self.raw.raft.state);
        let seen = (term, state, self.raw.raft.randomized_election_timeout());
        if force || seen != self.timeout_seen {
            let lo = self.cfg.election_ticks as u64;
            let span = (self.cfg.election_ticks_max - self.cfg.election_ticks) as u64;
            let t = (lo + rng.next() % span) as usize;
            self.raw.raft.set_randomized_election_timeout(t);
            self.timeout_seen = (term, state, t);
        }
    }

    /// Both phases of a poll at once (`begin_poll` then `finish_poll`): the early messages come
    /// first in `Output::messages`. For callers that cannot send between the phases.
    pub fn poll(&mut self, now: BootInstant) -> Result<Output, LogError> {
        let mut early = self.begin_poll(now)?;
        let mut out = self.finish_poll(now)?;
        early.append(&mut out.messages);
        out.messages = early;
        Ok(out)
    }

    /// Phase 1 of a poll: turns queued proposals into entries and takes raft's next Ready, and
    /// returns the messages raft lets a leader send before its own entries are persisted (its
    /// appends, heartbeats and lease rounds; raft thesis §10.2.1: the leader counts itself towards
    /// a commit only once `finish_poll` persisted, so a quorum never includes an unsynced copy).
    /// Send them at once, then call [`LogCore::finish_poll`]; any other call in between finishes
    /// the poll's persistence first. A follower's messages always wait for `finish_poll`.
    pub fn begin_poll(&mut self, now: BootInstant) -> Result<Vec<Message>, LogError> {
        self.check_running()?;
        self.settle()?;
        self.advance_clock(now);
        self.flush_batch(now);
        if !self.raw.has_ready() {
            return Ok(Vec::new());
        }
        let mut rd = self.raw.ready();
        let mut early = rd.take_messages();
        self.unpersisted = Some((rd, now));
        self.withhold_votes_in_hold_off(&mut early, now);
        Ok(early)
    }

    /// Optional step between the phases of a poll, for a leader: applies the committed entries of
    /// the Ready `begin_poll` took *before* that Ready's new entries are persisted, and returns
    /// their results (outcomes, applied commands, events; never messages), so the caller can
    /// answer those proposers while the fsync of the next batch is still to come. This is raft-rs's
    /// documented order (apply, then persist). Safe: committed entries are already durable on a
    /// quorum and never truncated; applying them does not depend on the entries persisted after
    /// them, and an answer covers only its own, committed, entry. A follower should not call it:
    /// its append response must not wait for applying (see `process_ready`).
    pub fn apply_before_persist(&mut self, now: BootInstant) -> Result<Output, LogError> {
        self.check_running()?;
        let committed = match self.unpersisted.as_mut() {
            Some((rd, _)) => rd.take_committed_entries(),
            None => Vec::new(),
        };
        if !committed.is_empty() {
            if let Err(e) = self.apply_entries(committed, now) {
                return Err(self.fail(e));
            }
        }
        Ok(Output {
            outcomes: std::mem::take(&mut self.out.outcomes),
            applied: std::mem::take(&mut self.out.applied),
            events: std::mem::take(&mut self.out.events),
            ..Output::default()
        })
    }

    /// Phase 2 of a poll: persists (fsync) and applies what `begin_poll` took and whatever raft
    /// has ready after it, and returns the messages that may only leave after persisting, applied
    /// commands, proposal outcomes and events.
    pub fn finish_poll(&mut self, now: BootInstant) -> Result<Output, LogError> {
        let mut released = Vec::new();
        let mut out = self.finish_poll_with(now, &mut |m| released.extend(m))?;
        released.append(&mut out.messages);
        out.messages = released;
        Ok(out)
    }

    /// [`LogCore::finish_poll`] that hands messages to `release` as soon as they may leave,
    /// before the poll is over: a follower's append responses go right after its fsync, before
    /// it applies committed entries and advances raft (raft-rs only requires persisted messages
    /// to follow the persistence of their Ready). Messages passed to `release` come before every
    /// message in the returned `Output`, in raft's order.
    pub fn finish_poll_with(
        &mut self,
        now: BootInstant,
        release: &mut dyn FnMut(Vec<Message>),
    ) -> Result<Output, LogError> {
        self.check_running()?;
        if let Some((rd, at)) = self.unpersisted.take() {
            if let Err(e) = self.process_ready(rd, at, Some(&mut *release)) {
                return Err(self.fail(e));
            }
        }
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            self.out.messages.extend(rd.take_messages());
            if let Err(e) = self.process_ready(rd, now, Some(&mut *release)) {
                return Err(self.fail(e));
            }
        }
        self.after_raft_call(now);
        let mut messages = std::mem::take(&mut self.out.messages);
        self.withhold_votes_in_hold_off(&mut messages, now);
        self.out.messages = messages;
        Ok(std::mem::take(&mut self.out))
    }

    /// Finishes the Ready a `begin_poll` left unpersisted; its results wait in `self.out` for the
    /// next `finish_poll`. A failure stops the core (raft's state is no longer consistent).
    fn settle(&mut self) -> Result<(), LogError> {
        self.check_running()?;
        if let Some((rd, at)) = self.unpersisted.take() {
            if let Err(e) = self.process_ready(rd, at, None) {
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    /// A vote stepped before a hold-off began in this very poll (a conf change made us a voter, a
    /// snapshot was installed) must not leave during the hold-off either. Raft may have recorded
    /// the vote; withholding the answer only costs the candidate time.
    fn withhold_votes_in_hold_off(&self, messages: &mut Vec<Message>, now: BootInstant) {
        if self.in_vote_hold_off(now) {
            messages.retain(|m| !grants_vote(m));
        }
    }

    fn flush_batch(&mut self, now: BootInstant) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let mut group: Vec<(ProposalId, TaggedCommand)> = Vec::new();
        let mut size = 0usize;
        let mut groups = Vec::new();
        for (id, cmd) in batch {
            let s = encoded_size_bound(&cmd);
            if !group.is_empty() && size + s > self.cfg.entry_cap {
                groups.push(std::mem::take(&mut group));
                size = 0;
            }
            size += s;
            group.push((id, cmd));
        }
        groups.push(group);
        for g in groups {
            let ids: Vec<ProposalId> = g.iter().map(|(id, _)| *id).collect();
            let payload = EntryPayload {
                commands: g.into_iter().map(|(_, c)| c).collect(),
            };
            let proposed = self.can_propose()
                && match payload.encode() {
                    Ok(data) => self.raw.propose(Vec::new(), data).is_ok(),
                    Err(e) => {
                        tracing::error!(error = %e, "dropping proposals that do not encode");
                        false
                    }
                };
            if proposed {
                let index = self.raw.raft.raft_log.last_index();
                self.pending.push_back((index, ids));
            } else {
                self.out
                    .outcomes
                    .extend(ids.into_iter().map(|id| (id, Outcome::Dropped)));
            }
        }
        self.after_raft_call(now);
    }

    fn can_propose(&self) -> bool {
        let r = &self.raw.raft;
        r.state == StateRole::Leader && r.lead_transferee.is_none()
    }

    /// The rest of one Ready whose leader messages were taken: install a snapshot, persist
    /// entries and hard state, release the persisted messages, apply committed entries, advance,
    /// handle the light ready, advance apply.
    ///
    /// raft-rs documents "apply, then persist, then send persisted messages"; this order is
    /// "persist, send, apply", which raft-rs 0.7 equally allows and which takes the apply off a
    /// follower's commit path (its append response leaves right after its fsync). Why it is safe:
    /// - persisted messages still leave only after this Ready's entries, hard state and snapshot
    ///   are durable (`append` / `install_snapshot` return after the fsync), which is all that
    ///   raft's safety needs from them;
    /// - the committed entries were taken from raft before persisting and are at or below the
    ///   commit index, which new entries never truncate, so persisting first cannot change them;
    ///   they are still applied before `advance`, so raft sees the same sequence of calls;
    /// - the state machine's accept rules depend only on the log order, never on when an entry
    ///   is applied relative to a message, and the lease is decided on the leader from echoed
    ///   contexts, not from anything a follower applies;
    /// - the one thing applying may change about messages is the vote hold-off (a conf change
    ///   that makes this node a voter starts one, and a vote granted in the same poll must not
    ///   leave during it): a batch with a granted vote is never released early, it waits for
    ///   the hold-off filter at the end of the poll as before.
    fn process_ready(
        &mut self,
        mut rd: Ready,
        now: BootInstant,
        release: Option<&mut dyn FnMut(Vec<Message>)>,
    ) -> Result<(), LogError> {
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.install_snapshot(&snap, rd.hs().cloned(), now)?;
        }

        let committed = rd.take_committed_entries();

        let sync = rd.must_sync();
        if !rd.entries().is_empty() || rd.hs().is_some() {
            let hs = rd.hs().cloned();
            self.raw
                .mut_store()
                .store_mut()
                .append(rd.entries(), hs.as_ref(), sync)?;
        }

        let persisted = rd.take_persisted_messages();
        // Released early only when nothing taken before is still waiting in `self.out` (so the
        // caller keeps raft's order) and no vote is granted in it (see above).
        match release {
            Some(release)
                if !persisted.is_empty()
                    && self.out.messages.is_empty()
                    && !persisted.iter().any(grants_vote) =>
            {
                release(persisted)
            }
            _ => self.out.messages.extend(persisted),
        }

        for rs in rd.take_read_states() {
            self.on_read_state(rs);
        }

        self.apply_entries(committed, now)?;

        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            let store = self.raw.mut_store().store_mut();
            let mut hs = store.hard_state();
            hs.commit = commit;
            // The commit index need not be durable: raft recomputes it from a quorum.
            store.append(&[], Some(&hs), false)?;
        }
        self.out.messages.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply_entries(committed, now)?;
        self.raw.advance_apply();
        self.after_raft_call(now);
        Ok(())
    }

    fn on_read_state(&mut self, rs: ReadState) {
        match RoundContext::decode(&rs.request_ctx) {
            Some(ctx) => {
                if self.lease_allowed() {
                    self.lease.on_quorum_ack(&ctx, self.raw.raft.term);
                }
            }
            None => self.out.read_states.push(rs),
        }
    }

    fn install_snapshot(
        &mut self,
        snap: &Snapshot,
        hs: Option<HardState>,
        now: BootInstant,
    ) -> Result<(), LogError> {
        let meta = snap.get_metadata();
        let mut sm = StateMachine::from_snapshot_data(&snap.data)
            .map_err(|e| LogError::Snapshot(e.to_string()))?;
        // The leader's snapshot may index transactions in entries this node will never hold.
        sm.forget_through(meta.index);
        let store = self.raw.mut_store().store_mut();
        let mut hs = hs.unwrap_or_else(|| store.hard_state());
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        store.install_snapshot(snap, &hs, true)?;
        store.put_meta(META_NEEDS_REBUILD, &[1], true)?;
        self.needs_rebuild = true;
        self.sm = sm;
        self.hold_off_until = self
            .hold_off_until
            .max(now.add(self.cfg.election_timeout_max()));
        // Proposals at or below the snapshot were decided without us seeing how.
        while self.pending.front().is_some_and(|(i, _)| *i <= meta.index) {
            if let Some((_, ids)) = self.pending.pop_front() {
                self.out
                    .outcomes
                    .extend(ids.into_iter().map(|id| (id, Outcome::Dropped)));
            }
        }
        self.out.events.push(LogEvent::SnapshotInstalled {
            index: meta.index,
            term: meta.term,
        });
        Ok(())
    }

    fn is_voter(&self) -> bool {
        let m = self.sm.membership();
        m.voters.contains(&self.cfg.id) || m.voters_outgoing.contains(&self.cfg.id)
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, now: BootInstant) -> Result<(), LogError> {
        for e in entries {
            if e.index <= self.sm.applied_index() {
                continue;
            }
            let mut ours: Vec<(ProposalId, Outcome)> = Vec::new();
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if e.data.is_empty() {
                        self.sm.apply_empty(e.index, e.term);
                    } else {
                        match EntryPayload::decode(&e.data) {
                            Ok(p) => {
                                for r in self.sm.apply_entry(e.index, e.term, &p) {
                                    if let Some(o) = r.origin {
                                        if o.node == self.cfg.id
                                            && o.incarnation == self.incarnation
                                        {
                                            ours.push((o.id, r.outcome.clone()));
                                        }
                                    }
                                    self.out.applied.push(AppliedCommand {
                                        index: e.index,
                                        term: e.term,
                                        position: r.position,
                                        origin: r.origin,
                                        command: r.command,
                                        outcome: r.outcome,
                                        completed: r.completed,
                                    });
                                }
                            }
                            Err(err) => {
                                // Every node decodes the same bytes the same way, so skipping
                                // keeps the state machines identical; it means a newer format.
                                tracing::error!(index = e.index, error = %err, "skipping undecodable committed entry");
                                self.sm.apply_empty(e.index, e.term);
                            }
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let was_voter = self.is_voter();
                    let applied: Result<ConfState, String> =
                        if e.get_entry_type() == EntryType::EntryConfChange {
                            ConfChange::parse_from_bytes(&e.data)
                                .map_err(|x| x.to_string())
                                .and_then(|cc| {
                                    self.raw.apply_conf_change(&cc).map_err(|x| x.to_string())
                                })
                        } else {
                            ConfChangeV2::parse_from_bytes(&e.data)
                                .map_err(|x| x.to_string())
                                .and_then(|cc| {
                                    self.raw.apply_conf_change(&cc).map_err(|x| x.to_string())
                                })
                        };
                    let outcome = match applied {
                        Ok(cs) => {
                            self.sm.apply_conf_change(e.index, e.term, &cs);
                            self.out.events.push(LogEvent::MembershipChanged {
                                index: e.index,
                                membership: self.sm.membership().clone(),
                            });
                            Outcome::Accepted
                        }
                        Err(why) => {
                            self.sm.apply_empty(e.index, e.term);
                            Outcome::Rejected(RejectReason::InvalidConfChange(why))
                        }
                    };
                    if !was_voter && self.is_voter() {
                        self.hold_off_until = self
                            .hold_off_until
                            .max(now.add(self.cfg.election_timeout_max()));
                    }
                    if let Ok(o) = postcard::from_bytes::<ProposalOrigin>(&e.context) {
                        if o.node == self.cfg.id && o.incarnation == self.incarnation {
                            ours.push((o.id, outcome));
                        }
                    }
                }
            }
            while self.pending.front().is_some_and(|(i, _)| *i <= e.index) {
                if let Some((_, ids)) = self.pending.pop_front() {
                    for id in ids {
                        let outcome = ours
                            .iter()
                            .find(|(o, _)| *o == id)
                            .map(|(_, out)| out.clone())
                            .unwrap_or(Outcome::Dropped);
                        self.out.outcomes.push((id, outcome));
                    }
                }
            }
        }
        Ok(())
    }

    /// Status for the admin page and the roles logic.
    pub fn status(&self, now: BootInstant) -> LogStatus {
        let r = &self.raw.raft;
        let store = self.raw.store().store();
        let truncated = store.truncated().0;
        let mut peers = Vec::new();
        let mut needs_rebuild = Vec::new();
        if r.state == StateRole::Leader {
            let conf = r.prs().conf();
            for (id, pr) in r.prs().iter() {
                if *id == self.cfg.id.0 {
                    continue;
                }
                peers.push(PeerProgress {
                    node: node(*id),
                    matched: pr.matched,
                    next: pr.next_idx,
                    voter: conf.voters().contains(*id),
                });
                if pr.matched < truncated {
                    needs_rebuild.push(node(*id));
                }
            }
            peers.sort_by_key(|p| p.node);
        }
        if let Some(through) = self.sm.compacted_through_seq() {
            // Members that reported a position older than the retained log (a removed member's
            // old report does not count).
            let m = self.sm.membership();
            for (n, st) in self.sm.members() {
                let member = m.voters.contains(n)
                    || m.voters_outgoing.contains(n)
                    || m.learners.contains(n)
                    || m.learners_next.contains(n);
                if member
                    && crate::retention::is_behind(Some(st), through)
                    && !needs_rebuild.contains(n)
                {
                    needs_rebuild.push(*n);
                }
            }
        }
        needs_rebuild.sort();
        LogStatus {
            id: self.cfg.id,
            role: r.state.into(),
            term: r.term,
            leader: self.leader(),
            commit_index: r.raft_log.committed,
            applied_index: self.sm.applied_index(),
            first_index: store.first_index(),
            last_index: r.raft_log.last_index(),
            last_gtid: self.sm.last_gtid(),
            gtid_state: self.sm.gtid_state().clone(),
            master: self.sm.master(),
            membership: self.sm.membership().clone(),
            lease_remaining: self
                .lease_valid_until()
                .filter(|u| now < *u)
                .map(|u| u.saturating_since(now)),
            transferring: r.lead_transferee.is_some() || self.transfer_term == Some(r.term),
            vote_hold_off_remaining: self
                .in_vote_hold_off(now)
                .then(|| self.hold_off_until.saturating_since(now)),
            peers,
            self_needs_rebuild: self.needs_rebuild,
            needs_rebuild,
            compacted_through: self.sm.compacted_through(),
        }
    }

    /// Whole, accepted, committed transactions after `after` (from the oldest retained one if
    /// `None`), up to about `max_bytes` of events (always at least one transaction if any).
    pub fn txns_after(
        &self,
        after: Option<Gtid>,
        max_bytes: usize,
    ) -> Result<Vec<CommittedTxn>, LogError> {
        let after_seq = self.resolve_after(after)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for rec in self.sm.txns_after_seq(after_seq) {
            if !out.is_empty() && bytes >= max_bytes {
                break;
            }
            let txn = self.read_txn(rec)?;
            bytes += txn.events.len();
            out.push(txn);
        }
        Ok(out)
    }

    /// One accepted, committed transaction of the retained log, if `gtid` is one.
    pub fn txn(&self, gtid: Gtid) -> Result<Option<CommittedTxn>, LogError> {
        match self.sm.txn(gtid) {
            Some(rec) => self.read_txn(rec).map(Some),
            None => Ok(None),
        }
    }

    fn read_txn(&self, rec: &TxnRecord) -> Result<CommittedTxn, LogError> {
        Ok(CommittedTxn {
            gtid: rec.gtid,
            origin: rec.origin.clone(),
            digest: rec.digest,
            index: rec.last_index(),
            events: self.read_all_chunks(rec)?,
        })
    }

    /// The raft index [`LogCore::compact`] would compact through with these arguments, if that
    /// would discard anything.
    /// Keeps `entries` more entries than the members' retention point needs. A deposed
    /// leader's log ends in entries of its old term that were never committed; the new
    /// leader's probe for the matching point can step back past the member's applied point,
    /// and if that lands in compacted log the member gets a raft snapshot and, with it, a gap
    /// its mariadbd can only close by a rebuild (seen in a 30-minute chaos run). The slack
    /// keeps that probe inside the log. The size cap still overrides it.
    pub fn set_compaction_slack(&mut self, entries: u64) {
        self.compaction_slack = entries;
    }

    pub fn compaction_target(
        &self,
        keep_after: Option<Gtid>,
        max_retained_entries: u64,
    ) -> Option<u64> {
        let applied = self.sm.applied_index();
        let truncated = self.raw.store().store().truncated().0;
        let by_members = match keep_after {
            // Everything up to the entry before the first transaction after keep_after can go,
            // but for the slack.
            Some(g) => match self.sm.txns_after_seq(Some(g.seq)).next() {
                Some(next) => next.first_index().saturating_sub(1),
                None => applied,
            }
            .saturating_sub(self.compaction_slack),
            None => truncated,
        };
        let by_cap = applied.saturating_sub(max_retained_entries);
        let mut through = by_members.max(by_cap).min(applied);
        if let Some(first_open) = self.open_txn_first_index() {
            through = through.min(first_open.saturating_sub(1));
        }
        (through > truncated).then_some(through)
    }

    /// Compacts the log. Keeps every entry a member still needs (`keep_after`: the smallest GTID
    /// applied by the mariadbd of every healthy member, see [`crate::retention`]; `None` keeps
    /// everything) unless more than `max_retained_entries` entries are applied, in which case the
    /// oldest go anyway and the members behind are reported in `status().needs_rebuild`. Saves a
    /// snapshot of the state machine first (synced). Returns `None` when there is nothing to
    /// compact.
    pub fn compact(
        &mut self,
        keep_after: Option<Gtid>,
        max_retained_entries: u64,
    ) -> Result<Option<CompactReport>, LogError> {
        self.check_running()?;
        self.settle()?;
        let applied = self.sm.applied_index();
        let Some(through) = self.compaction_target(keep_after, max_retained_entries) else {
            return Ok(None);
        };
        let term = self
            .raw
            .store()
            .store()
            .term(applied)
            .or_else(|_| Ok::<u64, LogError>(self.sm.applied_term()))?;
        self.sm.forget_through(through);
        let data = self
            .sm
            .to_snapshot_data()
            .map_err(|e| LogError::Snapshot(e.to_string()))?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(self.sm.membership().to_conf_state());
        let store = self.raw.mut_store().store_mut();
        let r = store
            .save_snapshot(&snap, true)
            .and_then(|_| store.compact(through, true));
        if let Err(e) = r {
            return Err(self.fail(e.into()));
        }
        Ok(Some(CompactReport {
            through,
            snapshot_index: applied,
        }))
    }

    fn open_txn_first_index(&self) -> Option<u64> {
        self.sm.open_txn_first_index()
    }
}
