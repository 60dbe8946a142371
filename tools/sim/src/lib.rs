//! Deterministic simulator of the global binlog: the real [`LogCore`] and state machine over
//! [`MemStore`] and a simulated network, driven by a seeded schedule of faults, with invariants
//! checked after every step (DESIGN §6 invariants 1, 2, 3, 9 at the log level).
//!
//! One seed = one schedule; the same seed always replays the same run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use quorumsql_log::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Message, MessageType,
};
use quorumsql_log::{
    digest_of, BinlogPos, BootInstant, Command, Epoch, Gtid, LogConfig, LogCore, LogEvent,
    LogStore, MemStore, NodeId, Outcome, Output, ProposalId, ProposeError, Role, TxnChunk,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A deliberately wrong configuration, to prove the checker catches what it claims to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// Nodes compute the lease as if clocks never drifted, while the simulated clocks drift by up
    /// to ±60%.
    LeaseNoDrift,
    /// Nodes grant votes right after a restart (no hold-off, design review 6).
    NoVoteHoldOff,
}

impl std::str::FromStr for PlantedBug {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lease-no-drift" => Ok(PlantedBug::LeaseNoDrift),
            "no-vote-hold-off" => Ok(PlantedBug::NoVoteHoldOff),
            other => Err(format!(
                "unknown planted bug {other:?} (known: lease-no-drift, no-vote-hold-off)"
            )),
        }
    }
}

/// Parameters of one simulated run.
#[derive(Debug, Clone)]
pub struct SimParams {
    pub seed: u64,
    pub nodes: usize,
    pub steps: u64,
    pub plant_bug: Option<PlantedBug>,
}

/// Result of one seed.
#[derive(Debug, Clone)]
pub struct SeedReport {
    pub seed: u64,
    pub steps: u64,
    /// The first invariant violation, if any (the run stops at it).
    pub violation: Option<String>,
    /// The last events before the end of the run.
    pub trace: Vec<String>,
    pub stats: Stats,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub committed_entries: u64,
    pub accepted_txns: u64,
    pub rejected_appends: u64,
    pub leaders: u64,
    pub lease_grants: u64,
    pub crashes: u64,
    /// Crashes of a node right after it sent entries it had not persisted yet (a leader's
    /// early messages, `LogCore::begin_poll`).
    pub crashes_before_persist: u64,
    pub snapshots_installed: u64,
    pub votes_held_off: u64,
    /// Membership changes applied (counted once per node).
    pub membership_changes: u64,
    /// Smallest time (µs) between the last step at which one node held the lease and the first
    /// step at which another one did (an overlap is a violation instead).
    pub closest_lease_handover_us: Option<i64>,
}

const TICK: Duration = Duration::from_millis(10);
const ELECTION_TICKS: usize = 10;
const ELECTION_TICKS_MAX: usize = 20;
const HEARTBEAT_TICKS: usize = 2;
const MAX_DRIFT: f64 = 0.02;
const MARGIN: Duration = Duration::from_millis(5);
const TRACE_LEN: usize = 30;
const SETTLE_STEPS: u64 = 1500;
/// Chance that a node which just sent entries before persisting them crashes right then.
const CRASH_BEFORE_PERSIST: f64 = 0.003;

fn ms(x: u64) -> u64 {
    x * 1_000_000
}

struct SimNode {
    id: NodeId,
    core: Option<LogCore<MemStore>>,
    /// Store of a crashed node, until it restarts.
    down_store: Option<MemStore>,
    down_until: u64,
    paused_until: u64,
    rate: f64,
    offset: u64,
    next_proposal: u64,
    /// Capture: the epoch it runs in and the last GTID it proposed (pipelined).
    capture_epoch: Option<Epoch>,
    capture_prev: Option<Gtid>,
    /// Chunked transaction being proposed: gtid, next chunk, chunk payloads.
    capture_chunks: Option<(Gtid, u32, Vec<Bytes>, [u8; 32])>,
    capture_ids: BTreeSet<u64>,
    ready_ids: BTreeSet<u64>,
    next_lease_round: u64,
    last_applied: u64,
    checked_commit: u64,
    /// Epoch of the newest MasterReady this node applied (reference for the accept check).
    ref_epoch: Epoch,
}

impl SimNode {
    fn local(&self, global: u64) -> BootInstant {
        BootInstant(self.offset + (global as f64 * self.rate) as u64)
    }
    fn alive(&self) -> bool {
        self.core.is_some()
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: u64,
    seq: u64,
    from: u64,
    to: u64,
}

struct Sim {
    rng: StdRng,
    now: u64,
    nodes: Vec<SimNode>,
    cfgs: Vec<LogConfig>,
    queue: BinaryHeap<Reverse<InFlight>>,
    payloads: HashMap<u64, Message>,
    msg_seq: u64,
    blocked: BTreeSet<(u64, u64)>,
    heal_at: u64,
    drop_rate: f64,
    dup_rate: f64,
    trace: VecDeque<String>,
    stats: Stats,
    leaders: BTreeMap<u64, u64>,
    /// Committed entries seen by any node: index -> (term, data digest).
    committed: BTreeMap<u64, (u64, [u8; 32])>,
    /// Outcome of each applied command: (index, position) -> outcome.
    outcomes: BTreeMap<(u64, u32), Outcome>,
    /// Every transaction content ever proposed: (gtid, digest) -> full events.
    proposed_txns: HashMap<(Gtid, [u8; 32]), Bytes>,
    /// Masters seen: epoch -> node (deposed ones keep proposing).
    masters: BTreeMap<u64, u64>,
    /// Raft index of every accepted MasterReady -> its epoch.
    ready_at: BTreeMap<u64, Epoch>,
    next_seq_salt: u64,
    settling: bool,
    lease_holder: Option<(u64, u64)>,
    lease_end_global: Vec<u64>,
    busy: bool,
    /// (when, node, downtime, leader it must not hear after restarting)
    pending_crash: Option<(u64, u64, u64, u64)>,
    /// No more proposals: the last part of the settle phase lets every node catch up.
    quiet: bool,
    violation: Option<String>,
}

/// Runs one seed.
pub fn run_seed(p: &SimParams) -> SeedReport {
    let mut sim = Sim::new(p.clone());
    let mut steps = 0;
    let total = p.steps + SETTLE_STEPS;
    while steps < total && sim.violation.is_none() {
        if steps == p.steps {
            sim.begin_settle();
        }
        if steps == p.steps + SETTLE_STEPS / 2 {
            sim.quiet = true;
        }
        sim.step();
        steps += 1;
    }
    if sim.violation.is_none() {
        sim.final_checks();
    }
    SeedReport {
        seed: p.seed,
        steps,
        violation: sim.violation,
        trace: sim.trace.into_iter().collect(),
        stats: sim.stats,
    }
}

fn entry_digest(data: &[u8]) -> [u8; 32] {
    digest_of(data)
}

impl Sim {
    fn new(p: SimParams) -> Sim {
        let mut rng = StdRng::seed_from_u64(p.seed);
        let ids: Vec<NodeId> = (1..=p.nodes as u64).map(NodeId).collect();
        let (cfg_drift, cfg_margin, real_drift) = match p.plant_bug {
            // The margin must exceed the longest step on the fastest clock (4 ms x 1.45).
            Some(PlantedBug::LeaseNoDrift) => (0.0, Duration::from_millis(8), 0.6),
            None | Some(PlantedBug::NoVoteHoldOff) => (MAX_DRIFT, MARGIN, MAX_DRIFT / 2.0),
        };
        let mut nodes = Vec::new();
        let mut cfgs = Vec::new();
        for id in &ids {
            let mut cfg = LogConfig::new(*id, ids.clone());
            cfg.tick_interval = TICK;
            cfg.election_ticks = ELECTION_TICKS;
            cfg.election_ticks_max = ELECTION_TICKS_MAX;
            cfg.heartbeat_ticks = HEARTBEAT_TICKS;
            cfg.max_drift = cfg_drift;
            cfg.lease_margin = cfg_margin;
            cfg.entry_cap = 4096;
            cfg.max_size_per_msg = 16 * 1024;
            cfg.deterministic_seed = Some(rng.gen());
            cfg.unsafe_disable_vote_hold_off = p.plant_bug == Some(PlantedBug::NoVoteHoldOff);
            let rate = 1.0 + rng.gen_range(-real_drift..=real_drift);
            let offset = rng.gen_range(0..ms(10_000));
            let mut n = SimNode {
                id: *id,
                core: None,
                down_store: Some(MemStore::new()),
                down_until: 0,
                paused_until: 0,
                rate,
                offset,
                next_proposal: 1,
                capture_epoch: None,
                capture_prev: None,
                capture_chunks: None,
                capture_ids: BTreeSet::new(),
                ready_ids: BTreeSet::new(),
                next_lease_round: 0,
                last_applied: 0,
                checked_commit: 0,
                ref_epoch: Epoch(0),
            };
            let now = n.local(0);
            match LogCore::new(cfg.clone(), n.down_store.take().unwrap_or_default(), now) {
                Ok(c) => n.core = Some(c),
                Err(e) => panic!("simulator config rejected: {e}"),
            }
            nodes.push(n);
            cfgs.push(cfg);
        }
        let mut trace = VecDeque::new();
        for n in &nodes {
            trace.push_back(format!("{} clock rate {:.3}", n.id, n.rate));
        }
        Sim {
            rng,
            now: 0,
            nodes,
            cfgs,
            queue: BinaryHeap::new(),
            payloads: HashMap::new(),
            msg_seq: 0,
            blocked: BTreeSet::new(),
            heal_at: 0,
            drop_rate: 0.02,
            dup_rate: 0.02,
            trace,
            stats: Stats::default(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            proposed_txns: HashMap::new(),
            masters: BTreeMap::new(),
            ready_at: BTreeMap::new(),
            next_seq_salt: 0,
            settling: false,
            lease_holder: None,
            lease_end_global: vec![0; p.nodes],
            quiet: false,
            busy: true,
            pending_crash: None,
            violation: None,
        }
    }

    fn log(&mut self, s: String) {
        if self.trace.len() >= trace_len() {
            self.trace.pop_front();
        }
        self.trace.push_back(format!(
            "t={}.{:03}ms {s}",
            self.now / 1_000_000,
            (self.now / 1000) % 1000
        ));
    }

    fn violate(&mut self, s: String) {
        if self.violation.is_none() {
            self.log(format!("VIOLATION: {s}"));
            self.violation = Some(s);
        }
    }

    fn idx(&self, id: u64) -> usize {
        (id - 1) as usize
    }

    fn begin_settle(&mut self) {
        self.settling = true;
        self.blocked.clear();
        self.drop_rate = 0.0;
        self.dup_rate = 0.0;
        for i in 0..self.nodes.len() {
            self.nodes[i].paused_until = self.nodes[i].paused_until.min(self.now);
            if !self.nodes[i].alive() {
                self.nodes[i].down_until = self.now;
            }
        }
        self.log("settle: faults stop".into());
    }

    fn step(&mut self) {
        self.now += self.rng.gen_range(ms(1)..=ms(4));
        if !self.settling {
            self.inject_faults();
        }
        if self.heal_at != 0 && self.now >= self.heal_at {
            self.blocked.clear();
            self.heal_at = 0;
            self.log("network healed".into());
        }
        self.restart_due();
        self.deliver_due();
        for i in 0..self.nodes.len() {
            self.drive(i);
            if self.violation.is_some() {
                return;
            }
        }
        self.check_step();
    }

    // ---------------------------------------------------------------- faults

    fn inject_faults(&mut self) {
        let n = self.nodes.len() as u64;
        let r: f64 = self.rng.gen();
        let partitioned = !self.blocked.is_empty();
        if r < 0.004 {
            if !partitioned {
                self.partition_one(n);
            }
        } else if r < 0.006 {
            let a = self.rng.gen_range(1..=n);
            let b = self.rng.gen_range(1..=n);
            if a != b && !partitioned {
                self.blocked.insert((a, b));
                self.heal_at = self.now + self.rng.gen_range(ms(50)..ms(800));
                self.log(format!("drop link node{a}->node{b}"));
            }
        } else if r < 0.008 {
            let v = self.rng.gen_range(1..=n);
            let down = self.rng.gen_range(ms(1)..ms(600));
            self.crash(v, down);
        } else if r < 0.009 {
            let v = self.rng.gen_range(1..=n);
            let i = self.idx(v);
            if self.nodes[i].alive() {
                self.nodes[i].paused_until = self.now + self.rng.gen_range(ms(20)..ms(700));
                self.log(format!("pause node{v}"));
            }
        } else if r < 0.010 {
            if let Some(l) = self.current_leader() {
                let to = self.rng.gen_range(1..=n);
                let i = self.idx(l);
                if to != l && self.running(i) {
                    let now = self.nodes[i].local(self.now);
                    if let Some(c) = self.nodes[i].core.as_mut() {
                        c.transfer_leader(NodeId(to), now);
                    }
                    self.log(format!("transfer leader node{l} -> node{to}"));
                }
            }
        } else if r < 0.011 {
            self.drop_rate = [0.0, 0.02, 0.1, 0.3][self.rng.gen_range(0..4)];
            self.dup_rate = [0.0, 0.02, 0.1][self.rng.gen_range(0..3)];
            self.log(format!("net drop={} dup={}", self.drop_rate, self.dup_rate));
        } else if r < 0.0115 {
            // Compact with a small cap so lagging or restarted nodes need snapshots.
            let v = self.rng.gen_range(1..=n);
            let i = self.idx(v);
            if self.running(i) {
                let keep = self.rng.gen_range(5..60);
                if let Some(c) = self.nodes[i].core.as_mut() {
                    match c.compact(None, keep) {
                        Ok(Some(rep)) => {
                            let s = format!("node{v} compacted through {}", rep.through);
                            self.log(s);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let s = format!("node{v} compaction failed: {e}");
                            self.violate(s);
                        }
                    }
                }
            }
        } else if r < 0.0135 {
            self.membership_change();
        } else if r < 0.0155 && !partitioned && self.pending_crash.is_none() {
            self.restart_voter_attack();
        }
        if self.rng.gen_bool(0.005) {
            self.busy = !self.busy;
            let b = self.busy;
            self.log(format!("workload busy={b}"));
        }
        if let Some((at, v, down, leader)) = self.pending_crash {
            if self.now >= at {
                self.pending_crash = None;
                // A restarted node reconnects to the leader only after a while (TCP reconnect).
                self.blocked.insert((leader, v));
                self.crash(v, down);
            }
        }
    }

    fn partition_one(&mut self, n: u64) {
        // Partition: isolate one node (often the leader) or split minority/majority.
        let victim = match self.current_leader() {
            Some(l) if self.rng.gen_bool(0.6) => l,
            _ => self.rng.gen_range(1..=n),
        };
        let one_way = self.rng.gen_bool(0.3);
        for o in 1..=n {
            if o != victim {
                self.blocked.insert((victim, o));
                if !one_way {
                    self.blocked.insert((o, victim));
                }
            }
        }
        self.heal_at = self.now + self.rng.gen_range(ms(50)..ms(1500));
        self.log(format!("partition node{victim} one_way={one_way}"));
    }

    /// Design review 6: a node cut off from the leader campaigns; a follower that acked the
    /// leader's lease restarts and, without the hold-off, would vote for it at once.
    fn restart_voter_attack(&mut self) {
        let Some(l) = self.current_leader() else {
            return;
        };
        let n = self.nodes.len() as u64;
        let others: Vec<u64> = (1..=n).filter(|x| *x != l).collect();
        if others.len() < 2 {
            return;
        }
        let cut = others[self.rng.gen_range(0..others.len())];
        let restart = loop {
            let c = others[self.rng.gen_range(0..others.len())];
            if c != cut {
                break c;
            }
        };
        self.blocked.insert((l, cut));
        self.blocked.insert((cut, l));
        self.heal_at = self.now + self.rng.gen_range(ms(150)..ms(600));
        let at = self.now + self.rng.gen_range(ms(90)..ms(250));
        self.pending_crash = Some((at, restart, self.rng.gen_range(ms(1)..ms(10)), l));
        self.log(format!(
            "attack: node{l} <-/-> node{cut}, node{restart} restarts later"
        ));
    }

    /// Demote a voter to learner or promote a learner back (keeps ids, never adds new ones).
    fn membership_change(&mut self) {
        let Some(l) = self.current_leader() else {
            return;
        };
        let i = self.idx(l);
        let Some(core) = self.nodes[i].core.as_ref() else {
            return;
        };
        let m = core.state_machine().membership().clone();
        if !m.voters_outgoing.is_empty() {
            return;
        }
        let mut single = ConfChangeSingle::default();
        if let Some(learner) = m.learners.first() {
            single.set_change_type(ConfChangeType::AddNode);
            single.node_id = learner.0;
        } else {
            // Keep at least 3 voters; never demote the leader itself.
            if m.voters.len() <= 3 {
                return;
            }
            let Some(v) = m.voters.iter().find(|v| v.0 != l) else {
                return;
            };
            single.set_change_type(ConfChangeType::AddLearnerNode);
            single.node_id = v.0;
        }
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single.clone());
        let id = self.nodes[i].next_proposal;
        self.nodes[i].next_proposal += 1;
        if let Some(c) = self.nodes[i].core.as_mut() {
            let _ = c.propose_conf_change(ProposalId(id), cc);
        }
        self.log(format!(
            "node{l} proposes {:?} node{}",
            single.get_change_type(),
            single.node_id
        ));
    }

    fn crash(&mut self, v: u64, down: u64) {
        let i = self.idx(v);
        if let Some(core) = self.nodes[i].core.take() {
            let store = core.into_store();
            let lost = store.unsynced_writes();
            self.nodes[i].down_store = Some(store.crash());
            self.nodes[i].down_until = self.now + down;
            self.nodes[i].paused_until = 0;
            self.stats.crashes += 1;
            self.log(format!(
                "crash node{v} (lost {lost} unsynced writes), down {}ms",
                down / 1_000_000
            ));
        }
    }

    fn restart_due(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() && self.now >= self.nodes[i].down_until {
                let Some(store) = self.nodes[i].down_store.take() else {
                    continue;
                };
                let now = self.nodes[i].local(self.now);
                match LogCore::new(self.cfgs[i].clone(), store, now) {
                    Ok(c) => {
                        let n = &mut self.nodes[i];
                        n.last_applied = c.applied_index();
                        n.checked_commit = n.checked_commit.min(c.commit_index());
                        n.ref_epoch = c.state_machine().epoch();
                        n.capture_epoch = None;
                        n.capture_chunks = None;
                        n.capture_ids.clear();
                        n.ready_ids.clear();
                        n.core = Some(c);
                        let id = n.id;
                        self.log(format!("restart {id}"));
                    }
                    Err(e) => {
                        let id = self.nodes[i].id;
                        self.violate(format!("{id} cannot restart from its synced store: {e}"));
                    }
                }
            }
        }
    }

    fn running(&self, i: usize) -> bool {
        self.nodes[i].alive() && self.now >= self.nodes[i].paused_until
    }

    fn current_leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for n in &self.nodes {
            if let Some(c) = &n.core {
                if c.role() == Role::Leader && best.is_none_or(|(t, _)| c.term() > t) {
                    best = Some((c.term(), n.id.0));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    // ---------------------------------------------------------------- network

    /// The transport tells the leader whether a snapshot got through (raft-rs keeps the peer
    /// paused in Snapshot state until then).
    fn report_snapshot(&mut self, from: u64, to: u64, delivered: bool) {
        let i = self.idx(from);
        if let Some(c) = self.nodes[i].core.as_mut() {
            c.report_snapshot(NodeId(to), delivered);
        }
    }

    fn send(&mut self, m: Message) {
        let (from, to) = (m.from, m.to);
        if self.blocked.contains(&(from, to)) || self.rng.gen_bool(self.drop_rate) {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.report_snapshot(from, to, false);
            }
            return;
        }
        let copies = if self.rng.gen_bool(self.dup_rate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.rng.gen_bool(0.05) {
                self.rng.gen_range(ms(10)..ms(150))
            } else {
                self.rng.gen_range(ms(1) / 2..ms(6))
            };
            self.msg_seq += 1;
            self.payloads.insert(self.msg_seq, m.clone());
            self.queue.push(Reverse(InFlight {
                at: self.now + delay,
                seq: self.msg_seq,
                from,
                to,
            }));
        }
    }

    fn deliver_due(&mut self) {
        while let Some(Reverse(top)) = self.queue.peek() {
            if top.at > self.now {
                break;
            }
            let Some(Reverse(f)) = self.queue.pop() else {
                break;
            };
            let Some(m) = self.payloads.remove(&f.seq) else {
                continue;
            };
            let i = self.idx(f.to);
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            if !self.running(i) || self.blocked.contains(&(f.from, f.to)) {
                if is_snapshot {
                    self.report_snapshot(f.from, f.to, false);
                }
                continue;
            }
            if is_snapshot {
                self.report_snapshot(f.from, f.to, true);
            }
            let now = self.nodes[i].local(self.now);
            let t = m.get_msg_type();
            let Some(core) = self.nodes[i].core.as_mut() else {
                continue;
            };
            match core.step(NodeId(f.from), m, now) {
                Ok(quorumsql_log::StepOutcome::VoteHeldOff) => {
                    self.stats.votes_held_off += 1;
                    self.log(format!("node{} held off {t:?} from node{}", f.to, f.from));
                }
                Ok(_) => {}
                Err(e) => {
                    let s = format!("node{} step failed: {e}", f.to);
                    self.violate(s);
                }
            }
        }
    }

    // ---------------------------------------------------------------- nodes

    fn drive(&mut self, i: usize) {
        if !self.running(i) {
            return;
        }
        let now = self.nodes[i].local(self.now);
        {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return;
            };
            if let Err(e) = core.tick(now) {
                let s = format!("node{} tick failed: {e}", i + 1);
                self.violate(s);
                return;
            }
        }
        self.actors(i, now);
        // Phase 1: the messages raft lets a leader send before it persists (the runtime sends
        // them before its fsync). They leave now; the node may crash before persisting.
        let early = match self.nodes[i].core.as_mut().map(|c| c.begin_poll(now)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                let s = format!("node{} poll failed: {e}", i + 1);
                self.violate(s);
                return;
            }
            None => return,
        };
        let id = self.nodes[i].id.0;
        let carries_entries = early
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgAppend && !m.entries.is_empty());
        self.check_outgoing(i, &early, now);
        for m in early {
            self.send(m);
        }
        if carries_entries && !self.settling && self.rng.gen_bool(CRASH_BEFORE_PERSIST) {
            self.log(format!(
                "node{id} crashes after sending entries it never persisted"
            ));
            let down = self.rng.gen_range(ms(1)..ms(100));
            self.stats.crashes_before_persist += 1;
            self.crash(id, down);
            return;
        }
        // Like the runtime, a leader applies and answers what this Ready commits before it
        // persists the Ready's new entries (it may still crash before that fsync below).
        if self.nodes[i].core.as_ref().map(|c| c.role()) == Some(Role::Leader) {
            let pre = match self.nodes[i]
                .core
                .as_mut()
                .map(|c| c.apply_before_persist(now))
            {
                Some(Ok(o)) => o,
                Some(Err(e)) => {
                    let s = format!("node{} apply before persist failed: {e}", i + 1);
                    self.violate(s);
                    return;
                }
                None => return,
            };
            self.absorb(i, pre);
            if carries_entries && !self.settling && self.rng.gen_bool(CRASH_BEFORE_PERSIST) {
                self.log(format!(
                    "node{id} crashes after answering, before persisting its next entries"
                ));
                let down = self.rng.gen_range(ms(1)..ms(100));
                self.stats.crashes_before_persist += 1;
                self.crash(id, down);
                return;
            }
        }
        // Phase 2: persist, apply, and the messages that must wait for the fsync.
        let mut out = match self.nodes[i].core.as_mut().map(|c| c.finish_poll(now)) {
            Some(Ok(o)) => o,
            Some(Err(e)) => {
                let s = format!("node{} poll failed: {e}", i + 1);
                self.violate(s);
                return;
            }
            None => return,
        };
        self.check_outgoing(i, &out.messages, now);
        for m in std::mem::take(&mut out.messages) {
            self.send(m);
        }
        self.absorb(i, out);
    }

    /// Events, applied commands and proposal outcomes of one poll (or of the leader's
    /// apply-before-persist step), checked and recorded.
    fn absorb(&mut self, i: usize, out: Output) {
        let id = self.nodes[i].id.0;
        let mut snapshot_resets: VecDeque<(u64, Epoch)> = VecDeque::new();
        for ev in &out.events {
            match ev {
                LogEvent::BecameLeader { term } => {
                    self.stats.leaders += 1;
                    self.log(format!("node{id} became leader of term {term}"));
                    // Restart a follower right after the leader change (design review 6).
                    if !self.settling && self.rng.gen_bool(0.25) {
                        let n = self.nodes.len() as u64;
                        let v = self.rng.gen_range(1..=n);
                        if v != id {
                            let down = self.rng.gen_range(ms(1)..ms(30));
                            self.crash(v, down);
                        }
                    }
                }
                LogEvent::LostLeadership { term, now_term } => self.log(format!(
                    "node{id} lost leadership of term {term} (now in term {now_term})"
                )),
                LogEvent::Campaigning { term, pre_vote, .. } => {
                    let kind = if *pre_vote { "pre-vote" } else { "election" };
                    self.log(format!("node{id} starts a {kind} from term {term}"))
                }
                LogEvent::SchedulingGap { gap } => {
                    self.log(format!("node{id} was not run for {gap:?}"))
                }
                LogEvent::SnapshotInstalled { index, .. } => {
                    self.stats.snapshots_installed += 1;
                    self.log(format!("node{id} installed snapshot at {index}"));
                    // The snapshot's master epoch: the newest MasterReady accepted at or below
                    // its index (the leader that made it applied them all).
                    let e = self
                        .ready_at
                        .range(..=*index)
                        .next_back()
                        .map_or(Epoch(0), |(_, e)| *e);
                    snapshot_resets.push_back((*index, e));
                }
                LogEvent::MembershipChanged { index, membership } => {
                    self.stats.membership_changes += 1;
                    self.log(format!(
                        "node{id} applied membership at {index}: voters {:?} learners {:?}",
                        membership.voters, membership.learners
                    ));
                }
            }
        }
        // The reference epoch restarts from an installed snapshot's state, in log order.
        for a in &out.applied {
            while snapshot_resets
                .front()
                .is_some_and(|(idx, _)| *idx < a.index)
            {
                if let Some((_, e)) = snapshot_resets.pop_front() {
                    self.nodes[i].ref_epoch = e;
                }
            }
            self.check_applied(i, a);
        }
        if let Some((_, e)) = snapshot_resets.pop_back() {
            self.nodes[i].ref_epoch = e;
        }
        for (pid, outcome) in out.outcomes {
            self.on_outcome(i, pid.0, outcome);
        }
    }

    /// Invariant 9 at the source: no vote granted during the sender's hold-off.
    fn check_outgoing(&mut self, i: usize, messages: &[Message], now: BootInstant) {
        let id = self.nodes[i].id.0;
        let in_hold_off = self.nodes[i]
            .core
            .as_ref()
            .is_some_and(|c| c.in_vote_hold_off(now));
        if !in_hold_off {
            return;
        }
        for m in messages {
            let t = m.get_msg_type();
            if !m.reject
                && matches!(
                    t,
                    MessageType::MsgRequestVoteResponse | MessageType::MsgRequestPreVoteResponse
                )
            {
                self.violate(format!(
                    "node{id} granted {t:?} to node{} during its vote hold-off",
                    m.to
                ));
            }
        }
    }

    fn check_applied(&mut self, i: usize, a: &quorumsql_log::AppliedCommand) {
        let id = i + 1;
        if let (
            Ok(dbg),
            Command::Append {
                epoch,
                prev_gtid,
                txns,
            },
        ) = (std::env::var("SIM_DEBUG_GTID"), &a.command)
        {
            for t in txns {
                if t.gtid.to_string() == dbg {
                    let s = format!("node{id} applied {} chunk {} last {} len {} digest {:02x}{:02x} epoch {epoch} prev {prev_gtid:?} at ({}, {}) term {}: {:?}", t.gtid, t.chunk, t.last, t.events.len(), t.digest[0], t.digest[1], a.index, a.position, a.term, a.outcome);
                    self.log(s);
                }
            }
        }
        match self.outcomes.get(&(a.index, a.position)) {
            Some(o) if *o != a.outcome => {
                let s = format!(
                    "node{id} applied ({}, {}) with outcome {:?}, another node had {o:?}",
                    a.index, a.position, a.outcome
                );
                self.violate(s);
            }
            Some(_) => {}
            None => {
                self.outcomes
                    .insert((a.index, a.position), a.outcome.clone());
            }
        }
        match (&a.command, &a.outcome) {
            (Command::Append { epoch, txns, .. }, Outcome::Accepted) => {
                if epoch.0 != a.term {
                    self.violate(format!(
                        "node{id} accepted an Append of epoch {epoch} in an entry of term {}",
                        a.term
                    ));
                }
                if *epoch != self.nodes[i].ref_epoch {
                    let r = self.nodes[i].ref_epoch;
                    self.violate(format!("node{id} accepted an Append of epoch {epoch} while the master epoch is {r}"));
                }
                self.stats.accepted_txns += txns.iter().filter(|t| t.last).count() as u64;
            }
            (Command::Append { .. }, Outcome::Rejected(_)) => self.stats.rejected_appends += 1,
            (Command::MasterReady { node, epoch, .. }, Outcome::Accepted) => {
                if epoch.0 != a.term || *epoch <= self.nodes[i].ref_epoch {
                    let r = self.nodes[i].ref_epoch;
                    self.violate(format!("node{id} accepted MasterReady{{{node}, {epoch}}} in term {} after epoch {r}", a.term));
                }
                self.nodes[i].ref_epoch = *epoch;
                self.masters.insert(epoch.0, node.0);
                self.ready_at.insert(a.index, *epoch);
            }
            _ => {}
        }
    }

    fn on_outcome(&mut self, i: usize, pid: u64, outcome: Outcome) {
        let n = &mut self.nodes[i];
        if n.capture_ids.remove(&pid) {
            if outcome != Outcome::Accepted {
                // Capture restarts from the log's last GTID (a real capture would fence).
                n.capture_epoch = None;
                n.capture_chunks = None;
            }
        } else if n.ready_ids.remove(&pid) {
            // Nothing: promotion retries while it is leader and not master.
        }
    }

    /// Proposers of node i: promotion, capture, and stale proposers routed through the leader.
    fn actors(&mut self, i: usize, now: BootInstant) {
        let id = self.nodes[i].id;
        let (role, term, applied_term, master, last_gtid) = {
            let Some(c) = self.nodes[i].core.as_ref() else {
                return;
            };
            (
                c.role(),
                c.term(),
                c.state_machine().applied_term(),
                c.state_machine().master(),
                c.state_machine().last_gtid(),
            )
        };
        if role != Role::Leader {
            self.nodes[i].capture_epoch = None;
            self.nodes[i].capture_chunks = None;
            return;
        }
        // Lease rounds every heartbeat interval.
        if now.0 >= self.nodes[i].next_lease_round {
            self.nodes[i].next_lease_round = now.0 + ms(20);
            if let Some(c) = self.nodes[i].core.as_mut() {
                c.start_lease_round(now);
            }
        }
        if self.quiet {
            return;
        }
        // Promotion: once the first entry of this term is applied, MasterReady{self, term}.
        if master != Some((id, Epoch(term))) {
            if applied_term == term && self.nodes[i].ready_ids.is_empty() {
                let pid = self.next_pid(i);
                let cmd = Command::MasterReady {
                    node: id,
                    epoch: Epoch(term),
                    gtid: last_gtid,
                };
                if self.propose(i, pid, cmd) {
                    self.nodes[i].ready_ids.insert(pid);
                }
            }
            return;
        }
        // Capture.
        if self.nodes[i].capture_epoch != Some(Epoch(term)) {
            self.nodes[i].capture_epoch = Some(Epoch(term));
            self.nodes[i].capture_prev = last_gtid;
            self.nodes[i].capture_chunks = None;
        }
        if self.busy && self.rng.gen_bool(0.3) {
            self.capture_propose(i, Epoch(term));
        }
        // A deposed master's capture keeps proposing with its old epoch.
        if self.rng.gen_bool(0.03) {
            let stale: Vec<(u64, u64)> = self
                .masters
                .iter()
                .filter(|(e, _)| **e < term)
                .map(|(e, n)| (*e, *n))
                .collect();
            if !stale.is_empty() {
                let (e, n) = stale[self.rng.gen_range(0..stale.len())];
                let pid = self.next_pid(i);
                let g = Gtid::new(0, n as u32, last_gtid.map_or(1, |g| g.seq + 1));
                let events = Bytes::from(format!("stale txn {g} epoch {e}").into_bytes());
                let cmd = if self.rng.gen_bool(0.7) {
                    Command::Append {
                        epoch: Epoch(e),
                        prev_gtid: last_gtid,
                        txns: vec![TxnChunk::whole(
                            g,
                            BinlogPos {
                                file: "bin.000001".into(),
                                offset: g.seq,
                            },
                            events,
                        )],
                    }
                } else {
                    Command::MasterReady {
                        node: NodeId(n),
                        epoch: Epoch(e),
                        gtid: last_gtid,
                    }
                };
                self.propose(i, pid, cmd);
            }
        }
    }

    fn next_pid(&mut self, i: usize) -> u64 {
        let p = self.nodes[i].next_proposal;
        self.nodes[i].next_proposal += 1;
        p
    }

    fn propose(&mut self, i: usize, pid: u64, cmd: Command) -> bool {
        let Some(c) = self.nodes[i].core.as_mut() else {
            return false;
        };
        match c.propose(ProposalId(pid), cmd) {
            Ok(()) => true,
            Err(ProposeError::NotLeader { .. }) | Err(ProposeError::Transferring) => false,
            Err(e) => {
                let s = format!("node{} proposal refused unexpectedly: {e}", i + 1);
                self.violate(s);
                false
            }
        }
    }

    fn capture_propose(&mut self, i: usize, epoch: Epoch) {
        let id = self.nodes[i].id.0 as u32;
        let prev = self.nodes[i].capture_prev;
        let mut txns = Vec::new();
        let mut new_prev = prev;
        if let Some((g, next, chunks, digest)) = self.nodes[i].capture_chunks.clone() {
            let last = next as usize + 1 == chunks.len();
            txns.push(TxnChunk {
                gtid: g,
                origin: BinlogPos {
                    file: "bin.000001".into(),
                    offset: g.seq,
                },
                digest,
                chunk: next,
                last,
                events: chunks[next as usize].clone(),
            });
            if last {
                self.nodes[i].capture_chunks = None;
                new_prev = Some(g);
            } else {
                self.nodes[i].capture_chunks = Some((g, next + 1, chunks, digest));
            }
        } else {
            let count = self.rng.gen_range(1..=3);
            let mut seq = prev.map_or(0, |g| g.seq);
            for _ in 0..count {
                seq += 1;
                let g = Gtid::new(0, id, seq);
                self.next_seq_salt += 1;
                let len = self.rng.gen_range(10..200);
                let body: Vec<u8> = format!("#{} txn {g} ", self.next_seq_salt)
                    .into_bytes()
                    .into_iter()
                    .cycle()
                    .take(len)
                    .collect();
                let events = Bytes::from(body);
                let digest = digest_of(&events);
                self.proposed_txns.insert((g, digest), events.clone());
                if self.rng.gen_bool(0.1) {
                    // A "large" transaction: split into 2-4 chunks over consecutive Appends.
                    let parts = self.rng.gen_range(2..=4usize);
                    let size = events.len().div_ceil(parts);
                    let chunks: Vec<Bytes> =
                        events.chunks(size).map(Bytes::copy_from_slice).collect();
                    txns.push(TxnChunk {
                        gtid: g,
                        origin: BinlogPos {
                            file: "bin.000001".into(),
                            offset: seq,
                        },
                        digest,
                        chunk: 0,
                        last: chunks.len() == 1,
                        events: chunks[0].clone(),
                    });
                    if chunks.len() > 1 {
                        self.nodes[i].capture_chunks = Some((g, 1, chunks, digest));
                    } else {
                        new_prev = Some(g);
                    }
                    break;
                }
                txns.push(TxnChunk::whole(
                    g,
                    BinlogPos {
                        file: "bin.000001".into(),
                        offset: seq,
                    },
                    events,
                ));
                new_prev = Some(g);
            }
        }
        let pid = self.next_pid(i);
        let cmd = Command::Append {
            epoch,
            prev_gtid: prev,
            txns,
        };
        if self.propose(i, pid, cmd) {
            self.nodes[i].capture_ids.insert(pid);
            self.nodes[i].capture_prev = new_prev;
        } else {
            self.nodes[i].capture_epoch = None;
            self.nodes[i].capture_chunks = None;
        }
    }

    // ---------------------------------------------------------------- invariants

    fn check_step(&mut self) {
        let mut lease_holders = Vec::new();
        for i in 0..self.nodes.len() {
            let Some(c) = self.nodes[i].core.as_ref() else {
                continue;
            };
            let id = i as u64 + 1;
            let local = self.nodes[i].local(self.now);
            // One leader per term.
            if c.role() == Role::Leader {
                match self.leaders.get(&c.term()) {
                    Some(&l) if l != id => {
                        let s = format!("two leaders in term {}: node{l} and node{id}", c.term());
                        self.violate(s);
                        return;
                    }
                    Some(_) => {}
                    None => {
                        self.leaders.insert(c.term(), id);
                    }
                }
            }
            // Lease: compare with this node's clock at the global instant.
            if let Some(until) = c.lease_valid_until() {
                if local < until {
                    lease_holders.push((id, c.term(), until.0 - local.0));
                }
            }
            // Applied index never goes back within one process run.
            let applied = c.applied_index();
            if applied < self.nodes[i].last_applied {
                let s = format!(
                    "node{id} applied index went back from {} to {applied}",
                    self.nodes[i].last_applied
                );
                self.violate(s);
                return;
            }
            self.nodes[i].last_applied = applied;
        }
        if lease_holders.len() > 1 {
            let s = format!(
                "{} nodes hold the lease at once: {lease_holders:?} (node, term, ns left)",
                lease_holders.len()
            );
            self.violate(s);
            return;
        }
        for &(id, _, _) in &lease_holders {
            let i = self.idx(id);
            self.lease_end_global[i] = self.now;
        }
        let holder = lease_holders.first().map(|(id, term, _)| (*id, *term));
        if holder != self.lease_holder {
            if let Some((id, term)) = holder {
                let prev_end = (0..self.nodes.len())
                    .filter(|j| *j as u64 + 1 != id)
                    .map(|j| self.lease_end_global[j])
                    .max()
                    .unwrap_or(0);
                if prev_end > 0 {
                    let gap = (self.now as i64 - prev_end as i64) / 1000;
                    let c = &mut self.stats.closest_lease_handover_us;
                    *c = Some(c.map_or(gap, |x| x.min(gap)));
                }
                self.stats.lease_grants += 1;
                self.log(format!("node{id} holds the lease in term {term}"));
            }
            self.lease_holder = holder;
        }
        self.check_committed();
    }

    /// Committed entries never change and agree across nodes (log matching on the committed
    /// prefix).
    fn check_committed(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(c) = self.nodes[i].core.as_ref() else {
                continue;
            };
            let commit = c.commit_index();
            let first = c.store().first_index();
            let from = self.nodes[i].checked_commit.max(first.saturating_sub(1)) + 1;
            let last = c.store().last_index().min(commit);
            if from > last {
                continue;
            }
            let ents = match c.store().entries(from, last + 1, None) {
                Ok(e) => e,
                Err(e) => {
                    let s = format!(
                        "node{} cannot read its committed entries [{from}, {last}]: {e}",
                        i + 1
                    );
                    self.violate(s);
                    return;
                }
            };
            let mut bad = None;
            for e in &ents {
                let d = entry_digest(&e.data);
                match self.committed.get(&e.index) {
                    Some(&(t, dd)) if t != e.term || dd != d => {
                        bad = Some(format!(
                            "committed entry {} changed: node{} has term {} but term {t} was committed",
                            e.index,
                            i + 1,
                            e.term
                        ));
                        break;
                    }
                    Some(_) => {}
                    None => {
                        self.committed.insert(e.index, (e.term, d));
                        self.stats.committed_entries += 1;
                    }
                }
            }
            if let Some(s) = bad {
                self.violate(s);
                return;
            }
            self.nodes[i].checked_commit = last;
        }
    }

    fn final_checks(&mut self) {
        // After settling, a leader exists and every live node has every committed entry.
        let max_committed = self.committed.keys().next_back().copied().unwrap_or(0);
        if self.current_leader().is_none() {
            self.violate("no leader after the network settled".into());
            return;
        }
        for i in 0..self.nodes.len() {
            let Some(c) = self.nodes[i].core.as_ref() else {
                continue;
            };
            if c.commit_index() < max_committed {
                let s = format!(
                    "node{} has commit index {} after settling, below the committed {max_committed}",
                    i + 1,
                    c.commit_index()
                );
                self.violate(s);
                return;
            }
        }
        self.check_committed();
        // Every visible transaction is whole, its content is what was proposed, and all nodes
        // agree on the transaction at each seq.
        let mut by_seq: BTreeMap<u64, (Gtid, [u8; 32])> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            let Some(c) = self.nodes[i].core.as_ref() else {
                continue;
            };
            let recs: Vec<Gtid> = c
                .state_machine()
                .txns_after_seq(None)
                .map(|r| r.gtid)
                .collect();
            let mut prev_seq = None;
            for g in recs {
                if prev_seq.is_some_and(|p| g.seq <= p) {
                    let s = format!("node{}: GTIDs not increasing at {g}", i + 1);
                    self.violate(s);
                    return;
                }
                prev_seq = Some(g.seq);
                let txn = match c.txn(g) {
                    Ok(Some(t)) => t,
                    Ok(None) => continue,
                    Err(e) => {
                        let s = format!("node{} cannot read {g}: {e}", i + 1);
                        self.violate(s);
                        return;
                    }
                };
                if digest_of(&txn.events) != txn.digest {
                    let rec = c.state_machine().txn(g).map(|r| r.chunks.clone());
                    let s = format!(
                        "node{} serves {g} with events that do not match its digest (partial?): {} bytes from chunks {rec:?}",
                        i + 1,
                        txn.events.len()
                    );
                    self.violate(s);
                    return;
                }
                match self.proposed_txns.get(&(g, txn.digest)) {
                    Some(ev) if *ev == txn.events[..] => {}
                    _ => {
                        // Stale proposers' transactions are never accepted.
                        let s = format!(
                            "node{} has transaction {g} that no capture proposed in full",
                            i + 1
                        );
                        self.violate(s);
                        return;
                    }
                }
                match by_seq.get(&g.seq) {
                    Some(&(og, od)) if og != g || od != txn.digest => {
                        let s = format!(
                            "nodes disagree on seq {}: {og} vs {g} on node{}",
                            g.seq,
                            i + 1
                        );
                        self.violate(s);
                        return;
                    }
                    Some(_) => {}
                    None => {
                        by_seq.insert(g.seq, (g, txn.digest));
                    }
                }
            }
        }
    }
}

/// Runs seeds `first..first+count` and returns (reports of failures, total steps).
pub fn run_many(
    first: u64,
    count: u64,
    nodes: Option<usize>,
    steps: u64,
    bug: Option<PlantedBug>,
) -> (Vec<SeedReport>, u64, Stats) {
    let mut failures = Vec::new();
    let mut total = 0;
    let mut agg = Stats::default();
    for seed in first..first + count {
        let n = nodes.unwrap_or(if seed % 2 == 0 { 3 } else { 5 });
        let r = run_seed(&SimParams {
            seed,
            nodes: n,
            steps,
            plant_bug: bug,
        });
        total += r.steps;
        agg.committed_entries += r.stats.committed_entries;
        agg.accepted_txns += r.stats.accepted_txns;
        agg.rejected_appends += r.stats.rejected_appends;
        agg.leaders += r.stats.leaders;
        agg.lease_grants += r.stats.lease_grants;
        agg.crashes += r.stats.crashes;
        agg.crashes_before_persist += r.stats.crashes_before_persist;
        agg.snapshots_installed += r.stats.snapshots_installed;
        agg.votes_held_off += r.stats.votes_held_off;
        agg.membership_changes += r.stats.membership_changes;
        if let Some(g) = r.stats.closest_lease_handover_us {
            agg.closest_lease_handover_us =
                Some(agg.closest_lease_handover_us.map_or(g, |x| x.min(g)));
        }
        if r.violation.is_some() {
            failures.push(r);
        }
    }
    (failures, total, agg)
}

/// Human-readable failure report: seed, violation, trace.
pub fn format_failure(r: &SeedReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "seed {} FAILED after {} steps: {}",
        r.seed,
        r.steps,
        r.violation.as_deref().unwrap_or("?")
    );
    let _ = writeln!(s, "last events:");
    for t in &r.trace {
        let _ = writeln!(s, "  {t}");
    }
    s
}

/// Trace length: `SIM_TRACE` (for debugging a seed) or the last 30 events.
fn trace_len() -> usize {
    std::env::var("SIM_TRACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TRACE_LEN)
}
