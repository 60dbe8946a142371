//! The runtime thread: owns the [`LogCore`] and drives it (see the module docs of `runtime`).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use quorumsql_peer::{FrameKind, Inbound, PeerNet};
use raft::eraftpb::{Message, MessageType};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::handle::{AppliedPosition, LogHandle, Proposed, Published, Request, SeqLookup};
use super::ticker::TickSchedule;
use super::{wire, RuntimeConfig};
use crate::core::{
    LogCore, LogError, LogEvent, LogStatus, Output, ProposeError, Role, StepOutcome,
};
use crate::store::LogStore;
use crate::types::{BootInstant, Gtid, NodeId, ProposalId};

/// Raft messages stepped per loop turn at most, so ticks and lease rounds are never starved.
const MAX_RAFT_PER_TURN: usize = 4096;
/// Status is republished at least this often (its time-derived fields change continuously).
const STATUS_REFRESH: Duration = Duration::from_millis(100);

/// Starts log runtimes.
pub struct LogRuntime;

impl LogRuntime {
    /// Opens the core over `store` on a new OS thread named `quorumsql-log` and starts driving it
    /// with `peers` and the frames arriving on `inbound`. Must be called inside a tokio runtime
    /// (a small task decodes inbound raft messages off the runtime thread). Resolves once the core
    /// is open; the first loop turn then replays the committed log.
    pub async fn start<S: LogStore + Send + 'static>(
        cfg: RuntimeConfig,
        store: S,
        peers: PeerNet,
        inbound: mpsc::Receiver<Inbound>,
    ) -> Result<LogHandle, LogError> {
        let (raft_tx, raft_rx) = crossbeam_channel::bounded(cfg.inbound_queue.max(1));
        let (req_tx, req_rx) = crossbeam_channel::unbounded();
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let (init_tx, init_rx) = oneshot::channel();
        let published = Arc::new(Published {
            lease_until: AtomicU64::new(0),
            loop_at: AtomicU64::new(0),
            lease_margin: cfg.log.lease_margin,
            fatal: Mutex::new(None),
            inbound_dropped: AtomicU64::new(0),
        });
        let thread_peers = peers.clone();
        let thread_published = published.clone();
        let spawned = std::thread::Builder::new()
            .name("quorumsql-log".into())
            .spawn(move || {
                let now = BootInstant::now();
                let core = match LogCore::new(cfg.log.clone(), store, now) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = init_tx.send(Err(e));
                        let _ = stopped_tx.send(true);
                        return;
                    }
                };
                let (status_tx, status_rx) = watch::channel(core.status(now));
                let (applied_tx, applied_rx) = watch::channel(AppliedPosition {
                    index: core.applied_index(),
                    last_gtid: core.state_machine().last_gtid(),
                });
                if init_tx.send(Ok((status_rx, applied_rx))).is_err() {
                    let _ = stopped_tx.send(true);
                    return;
                }
                let mut driver = Driver {
                    ticks: TickSchedule::new(now, cfg.log.tick_interval),
                    next_lease_round: now,
                    status_published_at: now,
                    status_key: None,
                    core,
                    cfg,
                    peers: thread_peers,
                    raft_rx,
                    req_rx,
                    status_tx,
                    applied_tx,
                    published: thread_published,
                    pending: HashMap::new(),
                    next_id: 1,
                    shutting_down: false,
                };
                driver.run();
                let _ = stopped_tx.send(true);
            });
        if let Err(e) = spawned {
            return Err(LogError::Config(format!(
                "cannot start the log runtime thread: {e}"
            )));
        }
        let (status, applied) = match init_rx.await {
            Ok(Ok(rx)) => rx,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(LogError::Stopped(
                    "log runtime thread exited during start".into(),
                ))
            }
        };
        tokio::spawn(bridge(inbound, raft_tx, published.clone()));
        Ok(LogHandle {
            requests: req_tx,
            status,
            applied,
            stopped: stopped_rx,
            published,
            peers,
        })
    }
}

/// Decodes raft frames on a tokio task (protobuf parsing stays off the runtime thread) and hands
/// them over without ever blocking: if the runtime thread is behind, messages are dropped and
/// counted; raft retransmits.
async fn bridge(
    mut inbound: mpsc::Receiver<Inbound>,
    raft_tx: Sender<(NodeId, Message)>,
    published: Arc<Published>,
) {
    while let Some(Inbound { from, frame }) = inbound.recv().await {
        if frame.kind != FrameKind::Raft {
            debug!(peer = %from, kind = ?frame.kind, "ignoring non-raft frame");
            continue;
        }
        match wire::decode(&frame) {
            Ok(m) => match raft_tx.try_send((from, m)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    published.inbound_dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return,
            },
            Err(e) => warn!(peer = %from, error = %e, "dropping undecodable raft message"),
        }
    }
}

/// A proposer waiting for its outcome.
struct Waiter {
    reply: oneshot::Sender<Result<Proposed, ProposeError>>,
    index: Option<u64>,
    completed: Vec<Gtid>,
}

/// Fields whose change makes the status worth publishing at once.
type StatusKey = (
    Role,
    u64,
    Option<NodeId>,
    u64,
    u64,
    Option<Gtid>,
    Option<(NodeId, crate::types::Epoch)>,
);

struct Driver<S: LogStore> {
    core: LogCore<S>,
    cfg: RuntimeConfig,
    peers: PeerNet,
    raft_rx: Receiver<(NodeId, Message)>,
    req_rx: Receiver<Request>,
    status_tx: watch::Sender<LogStatus>,
    applied_tx: watch::Sender<AppliedPosition>,
    published: Arc<Published>,
    pending: HashMap<ProposalId, Waiter>,
    next_id: u64,
    ticks: TickSchedule,
    next_lease_round: BootInstant,
    status_published_at: BootInstant,
    status_key: Option<StatusKey>,
    shutting_down: bool,
}

impl<S: LogStore> Driver<S> {
    fn run(&mut self) {
        info!(node = %self.core.id(), incarnation = self.core.incarnation(), "log runtime started");
        let fatal = loop {
            if let Err(e) = self.wait_and_drain() {
                break Some(e);
            }
            if self.shutting_down {
                break None;
            }
            if let Err(e) = self.turn() {
                break Some(e);
            }
        };
        self.finish(fatal);
    }

    /// The next instant the loop must run even without events: the next raft tick, the next lease
    /// round (leader only), and at least every half lease margin so the lease's gap detector only
    /// fires on real stalls.
    fn next_deadline(&self, now: BootInstant) -> BootInstant {
        let mut d = self
            .ticks
            .next_after(now)
            .min(now.add(self.cfg.log.lease_margin / 2));
        if self.core.role() == Role::Leader {
            d = d.min(self.next_lease_round);
        }
        d
    }

    /// Blocks until the first event or the next deadline, then takes every queued request and up
    /// to `MAX_RAFT_PER_TURN` raft messages (group commit: all proposals queued now go into one
    /// entry at the next poll).
    fn wait_and_drain(&mut self) -> Result<(), LogError> {
        let now = BootInstant::now();
        let wait = self.next_deadline(now).saturating_since(now);
        crossbeam_channel::select! {
            recv(self.raft_rx) -> m => match m {
                Ok((from, msg)) => self.step(from, msg)?,
                // The bridge ended (transport gone); keep serving local requests.
                Err(_) => self.raft_rx = crossbeam_channel::never(),
            },
            recv(self.req_rx) -> r => match r {
                Ok(r) => self.request(r),
                // Every handle is gone: nobody can use the log any more.
                Err(_) => self.shutting_down = true,
            },
            default(wait) => {}
        }
        let mut stepped = 0;
        loop {
            let mut progressed = false;
            while let Ok(r) = self.req_rx.try_recv() {
                self.request(r);
                progressed = true;
            }
            if stepped < MAX_RAFT_PER_TURN {
                if let Ok((from, msg)) = self.raft_rx.try_recv() {
                    self.step(from, msg)?;
                    stepped += 1;
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    fn step(&mut self, from: NodeId, msg: Message) -> Result<(), LogError> {
        let t = msg.get_msg_type();
        match self.core.step(from, msg, BootInstant::now())? {
            StepOutcome::Stepped => {}
            StepOutcome::VoteHeldOff => {
                debug!(peer = %from, ?t, "vote request ignored during the vote hold-off")
            }
            StepOutcome::Ignored(why) => debug!(peer = %from, ?t, %why, "raft message ignored"),
        }
        Ok(())
    }

    fn request(&mut self, r: Request) {
        match r {
            Request::Propose { cmd, reply } => {
                let id = ProposalId(self.next_id);
                self.next_id += 1;
                match self.core.propose(id, cmd) {
                    Ok(()) => {
                        self.pending.insert(
                            id,
                            Waiter {
                                reply,
                                index: None,
                                completed: Vec::new(),
                            },
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::ReadTxns {
                after,
                max_bytes,
                reply,
            } => {
                let _ = reply.send(self.core.txns_after(after, max_bytes));
            }
            Request::LookupSeq { domain, seq, reply } => {
                let _ = reply.send(lookup_seq(self.core.state_machine(), domain, seq));
            }
            Request::Transfer { to, reply } => {
                let r = if self.core.role() == Role::Leader {
                    info!(node = %self.core.id(), target = %to, term = self.core.term(), "transferring leadership");
                    self.core.transfer_leader(to, BootInstant::now());
                    // Readers must see the lease gone before the caller learns the transfer began.
                    let until = self.core.lease_valid_until().map_or(0, |u| u.0);
                    self.published.lease_until.store(until, Ordering::Release);
                    Ok(())
                } else {
                    Err(ProposeError::NotLeader {
                        leader: self.core.leader(),
                    })
                };
                let _ = reply.send(r);
            }
            Request::SetPriority(p) => self.core.set_priority(p),
            Request::Shutdown => self.shutting_down = true,
        }
    }

    /// Tick, lease round, poll (persist + apply), send, answer, publish.
    fn turn(&mut self) -> Result<(), LogError> {
        let now = BootInstant::now();
        self.core.tick(now)?;
        if self.core.role() == Role::Leader && now >= self.next_lease_round {
            // Refused until the new leader's first entry commits: retry at the next tick rather
            // than a whole round later, so a new master gets its lease as early as possible.
            let next = if self.core.start_lease_round(now) {
                self.cfg.lease_round_interval
            } else {
                self.cfg.log.tick_interval
            };
            self.next_lease_round = now.add(next);
        }
        let out = self.core.poll(now)?;
        self.dispatch(out);
        self.publish(BootInstant::now());
        Ok(())
    }

    fn dispatch(&mut self, out: Output) {
        let mut unreachable = BTreeSet::new();
        for m in out.messages {
            let to = NodeId(m.to);
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let sent = match wire::encode(&m) {
                Ok(f) => self
                    .peers
                    .send_on(to, wire::lane_of(&m), f)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match sent {
                // Snapshots ride the ordered bulk lane: appends sent after it arrive after it.
                Ok(()) if is_snapshot => self.core.report_snapshot(to, true),
                Ok(()) => {}
                Err(why) => {
                    if is_snapshot {
                        self.core.report_snapshot(to, false);
                    }
                    debug!(peer = %to, %why, "raft message not sent");
                    unreachable.insert(to);
                }
            }
        }
        for to in unreachable {
            self.core.report_unreachable(to);
        }

        let (me, incarnation) = (self.core.id(), self.core.incarnation());
        for a in &out.applied {
            let Some(o) = a.origin else { continue };
            if o.node != me || o.incarnation != incarnation {
                continue;
            }
            if let Some(w) = self.pending.get_mut(&o.id) {
                w.index = Some(a.index);
                w.completed = a.completed.clone();
            }
        }
        for (id, outcome) in out.outcomes {
            if let Some(w) = self.pending.remove(&id) {
                let _ = w.reply.send(Ok(Proposed {
                    outcome,
                    index: w.index,
                    completed: w.completed,
                }));
            }
        }
        for e in out.events {
            // Logged by their Debug form so new event kinds and fields need no change here.
            if matches!(e, LogEvent::SnapshotInstalled { .. }) {
                warn!(node = %me, event = ?e, "installed a raft snapshot: this node's transactions have a gap");
            } else {
                info!(node = %me, event = ?e, "log event");
            }
        }
    }

    fn publish(&mut self, now: BootInstant) {
        let p = &self.published;
        p.loop_at.store(now.0, Ordering::Release);
        p.lease_until.store(
            self.core.lease_valid_until().map_or(0, |u| u.0),
            Ordering::Release,
        );

        let sm = self.core.state_machine();
        let applied = AppliedPosition {
            index: sm.applied_index(),
            last_gtid: sm.last_gtid(),
        };
        self.applied_tx.send_if_modified(|cur| {
            let changed = *cur != applied;
            *cur = applied;
            changed
        });

        let key: StatusKey = (
            self.core.role(),
            self.core.term(),
            self.core.leader(),
            self.core.commit_index(),
            sm.applied_index(),
            sm.last_gtid(),
            sm.master(),
        );
        let stale = now.saturating_since(self.status_published_at) >= STATUS_REFRESH;
        if stale || self.status_key != Some(key) {
            self.status_key = Some(key);
            self.status_published_at = now;
            self.status_tx.send_replace(self.core.status(now));
        }
    }

    fn finish(&mut self, fatal: Option<LogError>) {
        let reason = match &fatal {
            Some(e) => {
                error!(node = %self.core.id(), error = %e, "log runtime stopped on a fatal error; this node must exit");
                *self.published.fatal.lock() = Some(e.to_string());
                e.to_string()
            }
            None => {
                info!(node = %self.core.id(), "log runtime stopped");
                "log runtime shut down".to_string()
            }
        };
        self.published.lease_until.store(0, Ordering::Release);
        for (_, w) in self.pending.drain() {
            let _ = w.reply.send(Err(ProposeError::Stopped(reason.clone())));
        }
        while let Ok(r) = self.req_rx.try_recv() {
            match r {
                Request::Propose { reply, .. } => {
                    let _ = reply.send(Err(ProposeError::Stopped(reason.clone())));
                }
                Request::Transfer { reply, .. } => {
                    let _ = reply.send(Err(ProposeError::Stopped(reason.clone())));
                }
                Request::ReadTxns { reply, .. } => {
                    let _ = reply.send(Err(LogError::Stopped(reason.clone())));
                }
                Request::SetPriority(_) | Request::Shutdown | Request::LookupSeq { .. } => {}
            }
        }
        self.status_tx
            .send_replace(self.core.status(BootInstant::now()));
    }
}

/// See [`SeqLookup`].
fn lookup_seq(sm: &crate::state_machine::StateMachine, domain: u32, seq: u64) -> SeqLookup {
    if domain != 0 {
        return SeqLookup::UnknownDomain;
    }
    if sm.compacted_through_seq().is_some_and(|c| seq <= c) {
        return SeqLookup::Compacted;
    }
    if let Some(rec) = sm
        .txns_after_seq(seq.checked_sub(1))
        .next()
        .filter(|r| r.gtid.seq == seq)
    {
        return SeqLookup::Txn {
            gtid: rec.gtid,
            digest: rec.digest,
        };
    }
    match sm.last_gtid() {
        Some(last) if seq <= last.seq => SeqLookup::Missing,
        _ => SeqLookup::Ahead,
    }
}
