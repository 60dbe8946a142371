//! The runtime thread: owns the [`LogCore`] and drives it (see the module docs of `runtime`).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use parking_lot::Mutex;
use quorumsql_peer::{Frame, FrameKind, Inbound, Lane, PeerNet};
use raft::eraftpb::{Message, MessageType};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::handle::{AppliedPosition, LogHandle, Proposed, Published, Request, SeqLookup};
use super::park::Parker;
use super::report::{self, ControlMsg, Report, Reports};
use super::ticker::TickSchedule;
use super::{wire, RuntimeConfig};
use crate::core::{
    LogCore, LogError, LogEvent, LogStatus, Output, ProposeError, Role, StepOutcome,
};
use crate::entry::Command;
use crate::state_machine::MemberState;
use crate::store::LogStore;
use crate::types::{BootInstant, Gtid, NodeId, ProposalId};

/// Raft messages stepped per loop turn at most, so ticks and lease rounds are never starved.
const MAX_RAFT_PER_TURN: usize = 4096;
/// Status is republished at least this often (its time-derived fields change continuously).
const STATUS_REFRESH: Duration = Duration::from_millis(100);
/// How often a leader looks for member reports to propose when none arrived (retries reports
/// whose proposal was dropped).
const REPORT_RECHECK: Duration = Duration::from_secs(1);

/// Starts log runtimes.
pub struct LogRuntime;

impl LogRuntime {
    /// Opens the core over `store` on a new OS thread named `quorumsql-log` and starts driving it
    /// with `peers` and the frames arriving on `inbound` (raft messages and member reports; the
    /// thread reads that channel itself). Resolves once the core is open; the first loop turn
    /// then replays the committed log.
    pub async fn start<S: LogStore + Send + 'static>(
        cfg: RuntimeConfig,
        store: S,
        peers: PeerNet,
        inbound: mpsc::Receiver<Inbound>,
    ) -> Result<LogHandle, LogError> {
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let (init_tx, init_rx) = oneshot::channel();
        let published = Arc::new(Published {
            lease_until: AtomicU64::new(0),
            loop_at: AtomicU64::new(0),
            lease_margin: cfg.log.lease_margin,
            fatal: Mutex::new(None),
            votes_held_off: AtomicU64::new(0),
        });
        let thread_peers = peers.clone();
        let thread_published = published.clone();
        let spawned = std::thread::Builder::new()
            .name("quorumsql-log".into())
            .spawn(move || {
                if let Some(p) = cfg.realtime_priority {
                    match super::realtime::make_current_thread_realtime(p) {
                        Ok(()) => info!(priority = p, "log thread runs under SCHED_RR"),
                        Err(e) => warn!(priority = p, error = %e,
                            "cannot run the log thread under SCHED_RR; it keeps normal priority, and a saturated CPU can then cost the master its lease"),
                    }
                }
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
                    next_compaction: now.add(cfg.compact_interval),
                    next_report_check: now,
                    status_published_at: now,
                    status_key: None,
                    core,
                    cfg,
                    peers: thread_peers,
                    inbound: Some(inbound),
                    req_rx,
                    parker: Parker::for_current_thread(),
                    status_tx,
                    applied_tx,
                    published: thread_published,
                    pending: HashMap::new(),
                    reports: Reports::default(),
                    report_seq: 0,
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

/// Whether a raft message carries log data (entries or a snapshot).
fn carries_data(m: &Message) -> bool {
    !m.entries.is_empty() || m.get_msg_type() == MessageType::MsgSnapshot
}

/// A proposer waiting for its outcome.
struct Waiter {
    reply: oneshot::Sender<Result<Proposed, ProposeError>>,
    index: Option<u64>,
    completed: Vec<Gtid>,
}

/// Fields whose change makes the status worth publishing at once (role, term, leader, commit
/// index, applied index, last GTID, master).
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
    /// Frames from the peer transport; `None` once the transport is gone.
    inbound: Option<mpsc::Receiver<Inbound>>,
    req_rx: mpsc::UnboundedReceiver<Request>,
    parker: Parker,
    status_tx: watch::Sender<LogStatus>,
    applied_tx: watch::Sender<AppliedPosition>,
    published: Arc<Published>,
    pending: HashMap<ProposalId, Waiter>,
    reports: Reports,
    /// Counter of this process's own member reports.
    report_seq: u64,
    next_id: u64,
    ticks: TickSchedule,
    next_lease_round: BootInstant,
    next_compaction: BootInstant,
    next_report_check: BootInstant,
    status_published_at: BootInstant,
    status_key: Option<StatusKey>,
    shutting_down: bool,
}

/// Peers a send failed to during one turn, reported to raft once the poll is finished.
#[derive(Default)]
struct SendFailures {
    unreachable: BTreeSet<NodeId>,
    snapshots: Vec<(NodeId, bool)>,
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
    /// to `MAX_RAFT_PER_TURN` peer frames (group commit: all proposals queued now go into one
    /// entry at the next poll).
    fn wait_and_drain(&mut self) -> Result<(), LogError> {
        let deadline = self.next_deadline(BootInstant::now());
        loop {
            let (req, frame) = {
                let mut cx = self.parker.context();
                let req = self.req_rx.poll_recv(&mut cx);
                let frame = match self.inbound.as_mut() {
                    Some(rx) => rx.poll_recv(&mut cx),
                    None => Poll::Pending,
                };
                (req, frame)
            };
            let mut got = false;
            match req {
                Poll::Ready(Some(r)) => {
                    self.request(r);
                    got = true;
                }
                // Every handle is gone: nobody can use the log any more.
                Poll::Ready(None) => {
                    self.shutting_down = true;
                    return Ok(());
                }
                Poll::Pending => {}
            }
            match frame {
                Poll::Ready(Some(f)) => {
                    self.frame(f)?;
                    got = true;
                }
                // The transport ended; keep serving local requests.
                Poll::Ready(None) => self.inbound = None,
                Poll::Pending => {}
            }
            if got {
                break;
            }
            let now = BootInstant::now();
            if now >= deadline {
                return Ok(());
            }
            self.parker.park(deadline.saturating_since(now));
        }
        let mut frames = 1;
        loop {
            let mut progressed = false;
            while let Ok(r) = self.req_rx.try_recv() {
                self.request(r);
                progressed = true;
            }
            if frames < MAX_RAFT_PER_TURN {
                if let Some(f) = self.inbound.as_mut().and_then(|rx| rx.try_recv().ok()) {
                    self.frame(f)?;
                    frames += 1;
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// One frame from an authenticated peer: a raft message to step or a member report.
    fn frame(&mut self, Inbound { from, frame }: Inbound) -> Result<(), LogError> {
        match frame.kind {
            FrameKind::Raft => match wire::decode(&frame) {
                Ok(m) => self.step(from, m),
                Err(e) => {
                    warn!(peer = %from, error = %e, "dropping undecodable raft message");
                    Ok(())
                }
            },
            FrameKind::Control => {
                let r = report::decode(&frame.body).and_then(|m| match m {
                    ControlMsg::MemberReport(r) => self.reports.heard(from, r),
                });
                if let Err(e) = r {
                    warn!(peer = %from, error = %e, "dropping control frame");
                }
                Ok(())
            }
            other => {
                debug!(peer = %from, kind = ?other, "ignoring frame of unknown kind");
                Ok(())
            }
        }
    }

    fn step(&mut self, from: NodeId, msg: Message) -> Result<(), LogError> {
        let t = msg.get_msg_type();
        match self.core.step(from, msg, BootInstant::now())? {
            StepOutcome::Stepped => {}
            StepOutcome::VoteHeldOff => {
                self.published
                    .votes_held_off
                    .fetch_add(1, Ordering::Relaxed);
                debug!(peer = %from, ?t, "vote request ignored during the vote hold-off")
            }
            StepOutcome::Ignored(why) => debug!(peer = %from, ?t, %why, "raft message ignored"),
        }
        Ok(())
    }

    fn request(&mut self, r: Request) {
        match r {
            Request::Propose { cmd, reply } => {
                let id = self.next_proposal_id();
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
            Request::ReadPieces {
                from,
                max_bytes,
                reply,
            } => {
                let _ = reply.send(self.core.read_pieces(from, max_bytes));
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
            Request::ReportMember(state) => self.report_self(state),
            Request::ClearNeedsRebuild { reply } => {
                let r = self.core.clear_needs_rebuild();
                // The caller decides on the status next: publish before answering.
                self.status_tx
                    .send_replace(self.core.status(BootInstant::now()));
                let _ = reply.send(r);
            }
            Request::Shutdown => self.shutting_down = true,
        }
    }

    fn next_proposal_id(&mut self) -> ProposalId {
        let id = ProposalId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Keeps this node's own report and sends it to every peer (see `report`).
    fn report_self(&mut self, state: MemberState) {
        self.report_seq += 1;
        let me = self.core.id();
        let r = Report {
            node: me,
            incarnation: self.core.incarnation(),
            seq: self.report_seq,
            state,
        };
        let body = match report::encode(&ControlMsg::MemberReport(r.clone())) {
            Ok(b) => b,
            Err(e) => {
                error!(node = %me, error = %e, "member report not sent");
                return;
            }
        };
        for to in self.peers.peer_ids() {
            // Not latency-critical: the bulk lane keeps the urgent one free for the lease.
            if let Err(e) = self
                .peers
                .send_on(to, Lane::Bulk, Frame::control(body.clone()))
            {
                debug!(peer = %to, error = %e, "member report not sent; the next one will be");
            }
        }
        if let Err(e) = self.reports.heard(me, r) {
            error!(node = %me, error = %e, "own member report refused");
        }
    }

    /// Leader only: proposes the member reports the state machine does not reflect yet.
    fn propose_reports(&mut self, now: BootInstant) {
        if self.core.role() != Role::Leader {
            return;
        }
        if !self.reports.dirty && now < self.next_report_check {
            return;
        }
        self.reports.dirty = false;
        self.next_report_check = now.add(REPORT_RECHECK);
        for (node, st) in self.reports.to_propose(self.core.state_machine()) {
            let id = self.next_proposal_id();
            let cmd = Command::MemberReport {
                node,
                applied_gtid: st.applied_gtid,
                healthy: st.healthy,
                diverged: st.diverged,
            };
            match self.core.propose(id, cmd) {
                Ok(()) => self.reports.proposed(id, node),
                // Not leader any more or transferring: a later leader proposes it.
                Err(e) => {
                    debug!(member = %node, error = %e, "member report not proposed");
                    return;
                }
            }
        }
    }

    /// Every `compact_interval`: compacts this node's log below what every member still needs
    /// (`crate::retention`), within `retain_max_entries`, once at least `compact_min_entries`
    /// would go. The snapshot and the compaction are synced writes on this thread, so they are
    /// batched rather than done for every few entries.
    /// Returns whether it compacted.
    fn maybe_compact(&mut self, now: BootInstant) -> Result<bool, LogError> {
        if now < self.next_compaction {
            return Ok(false);
        }
        self.next_compaction = now.add(self.cfg.compact_interval);
        let keep_after = crate::retention::keep_after(self.core.state_machine());
        let max = self.cfg.retain_max_entries;
        self.core
            .set_compaction_slack(self.cfg.compaction_slack_entries.min(max / 4));
        let Some(through) = self.core.compaction_target(keep_after, max) else {
            return Ok(false);
        };
        let truncated = self.core.store().truncated().0;
        if through.saturating_sub(truncated) < self.cfg.compact_min_entries.max(1) {
            return Ok(false);
        }
        match self.core.compact(keep_after, max) {
            Ok(Some(rep)) => {
                let st = self.core.status(now);
                info!(
                    node = %self.core.id(),
                    through = rep.through,
                    keep_after = ?keep_after,
                    compacted_gtid = ?st.compacted_through,
                    needs_rebuild = ?st.needs_rebuild,
                    "log compacted"
                );
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e @ (LogError::Store(_) | LogError::Stopped(_))) => Err(e),
            Err(e) => {
                warn!(node = %self.core.id(), error = %e, "log compaction skipped");
                Ok(false)
            }
        }
    }

    /// Tick, lease round, member reports, poll in two phases (the leader's messages leave before
    /// its fsync, so leader and followers persist in parallel), publish, answer, compact.
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
        self.propose_reports(now);
        let mut failures = SendFailures::default();
        let early = self.core.begin_poll(now)?;
        // Entries (and snapshots) leave before the leader's own fsync so it overlaps the
        // followers'. A leader's other messages (commit updates, heartbeats) gain nothing from
        // leaving early: they wait until the proposers are answered, which is what commit latency
        // is made of. A follower's messages (append responses) are on the commit path: they leave
        // right after its fsync.
        let mut deferred = Vec::new();
        if early.iter().any(carries_data) {
            send(&self.peers, early, &mut failures);
        } else {
            deferred = early;
        }
        // A leader answers the proposers whose entries this Ready commits before it fsyncs the
        // next batch (a follower skips this: its append response must not wait for applying).
        if self.core.role() == Role::Leader {
            let applied = self.core.apply_before_persist(BootInstant::now())?;
            if !applied.outcomes.is_empty()
                || !applied.applied.is_empty()
                || !applied.events.is_empty()
            {
                self.publish(BootInstant::now());
                self.answer(applied);
            }
        }
        // A follower's append responses are released by the core right after its fsync, before
        // it applies and advances, and leave at once (they are what the leader waits for). While
        // deferred leader messages wait, released ones queue behind them to keep raft's order.
        let peers = &self.peers;
        let mut out = self
            .core
            .finish_poll_with(BootInstant::now(), &mut |released| {
                if deferred.is_empty() {
                    send(peers, released, &mut failures);
                } else {
                    deferred.extend(released);
                }
            })?;
        if deferred.is_empty() {
            send(
                &self.peers,
                std::mem::take(&mut out.messages),
                &mut failures,
            );
        } else {
            deferred.append(&mut out.messages);
        }
        // Publish before answering: a proposer that wakes on its outcome must see a status and
        // applied position at least as new as its entry (promotion reads the GTID state then).
        self.publish(BootInstant::now());
        self.answer(out);
        send(&self.peers, deferred, &mut failures);
        for (to, delivered) in failures.snapshots {
            self.core.report_snapshot(to, delivered);
        }
        for to in failures.unreachable {
            self.core.report_unreachable(to);
        }
        if self.maybe_compact(now)? {
            // The retained range and the members behind it changed: publish now.
            self.status_key = None;
            self.publish(BootInstant::now());
        }
        Ok(())
    }

    fn answer(&mut self, out: Output) {
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
            if self.reports.resolved(id) {
                continue;
            }
            if let Some(w) = self.pending.remove(&id) {
                let _ = w.reply.send(Ok(Proposed {
                    outcome,
                    index: w.index,
                    completed: w.completed,
                }));
            }
        }
        for e in out.events {
            if matches!(e, LogEvent::LostLeadership { .. }) {
                self.reports.forget_in_flight();
            }
            if matches!(e, LogEvent::BecameLeader { .. }) {
                self.reports.dirty = true;
            }
            // The ones an operator has to act on or explain are warnings that say why; the rest
            // are logged by their Debug form, so new kinds and fields need no change here.
            match &e {
                LogEvent::SnapshotInstalled { .. } => {
                    warn!(node = %me, event = ?e, "installed a raft snapshot: this node's transactions have a gap");
                }
                LogEvent::LostLeadership { term, now_term } if now_term == term => {
                    warn!(node = %me, term, "lost leadership: stepped down (no majority heard within an election timeout, or handed over)");
                }
                LogEvent::LostLeadership { term, now_term } => {
                    warn!(node = %me, term, now_term, "lost leadership: a peer started a newer term");
                }
                LogEvent::Campaigning {
                    term,
                    pre_vote,
                    last_leader: None,
                } => {
                    info!(node = %me, term, pre_vote, "no leader known yet: campaigning");
                }
                LogEvent::Campaigning {
                    term,
                    pre_vote,
                    last_leader,
                } => {
                    // How long the leader has been silent on the wire, against how long this thread
                    // may have been unable to notice: tells a dead leader from a starved node.
                    let silent_ms = last_leader
                        .and_then(|l| self.peers.peer_status(l))
                        .and_then(|st| st.last_seen)
                        .map(|t| t.elapsed().as_millis());
                    warn!(node = %me, term, pre_vote, last_leader = ?last_leader, leader_silent_ms = ?silent_ms,
                        "election timeout: campaigning");
                }
                LogEvent::SchedulingGap { gap } => {
                    warn!(node = %me, gap_ms = gap.as_millis(), lease_margin_ms = self.cfg.log.lease_margin.as_millis(),
                        "the log thread did not run for longer than the lease margin (paused or starved of CPU): lease voided");
                }
                _ => info!(node = %me, event = ?e, "log event"),
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
            // Readers always see the newest value; waiters are woken for leadership and master
            // changes (and every STATUS_REFRESH), not for every commit: a wake-up per commit
            // would cost the commit path CPU. Applied entries are announced by `applied_tx`.
            let leading = |k: &StatusKey| (k.0, k.1, k.2, k.6);
            let notify = stale || self.status_key.is_none_or(|k| leading(&k) != leading(&key));
            self.status_key = Some(key);
            let st = self.core.status(now);
            if notify {
                self.status_published_at = now;
                self.status_tx.send_replace(st);
            } else {
                self.status_tx.send_if_modified(|cur| {
                    *cur = st;
                    false
                });
            }
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
        self.req_rx.close();
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
                Request::ReadPieces { reply, .. } => {
                    let _ = reply.send(Err(LogError::Stopped(reason.clone())));
                }
                Request::ClearNeedsRebuild { reply } => {
                    let _ = reply.send(Err(LogError::Stopped(reason.clone())));
                }
                Request::SetPriority(_)
                | Request::ReportMember(_)
                | Request::Shutdown
                | Request::LookupSeq { .. } => {}
            }
        }
        self.status_tx
            .send_replace(self.core.status(BootInstant::now()));
    }
}

/// Sends raft messages on their lanes; failures are collected for raft (see `SendFailures`).
fn send(peers: &PeerNet, messages: Vec<Message>, failures: &mut SendFailures) {
    for m in messages {
        let to = NodeId(m.to);
        let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
        let sent = match wire::encode(&m) {
            Ok(f) => peers
                .send_on(to, wire::lane_of(&m), f)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match sent {
            // Snapshots ride the ordered bulk lane: appends sent after it arrive after it.
            Ok(()) if is_snapshot => failures.snapshots.push((to, true)),
            Ok(()) => {}
            Err(why) => {
                if is_snapshot {
                    failures.snapshots.push((to, false));
                }
                debug!(peer = %to, %why, "raft message not sent");
                failures.unreachable.insert(to);
            }
        }
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
