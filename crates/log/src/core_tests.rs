//! Tests of `LogCore` with in-process clusters over `MemStore` (no network, instant delivery).

use std::time::Duration;

use bytes::Bytes;
use raft::eraftpb::{Message, MessageType};

use crate::core::{
    LogConfig, LogCore, LogError, LogEvent, Output, ProposeError, ReadCursor, Role, StepOutcome,
    TxnPiece,
};
use crate::entry::{Command, TxnChunk};
use crate::state_machine::Outcome;
use crate::store::{LogStore, MemStore, RaftEngineStore};
use crate::types::{BinlogPos, BootInstant, Epoch, Gtid, NodeId, ProposalId};

const MS: u64 = 1_000_000;

fn cfg(id: u64, n: u64) -> LogConfig {
    let mut c = LogConfig::new(NodeId(id), (1..=n).map(NodeId).collect());
    c.tick_interval = Duration::from_millis(10);
    c.election_ticks = 10;
    c.election_ticks_max = 20;
    c.heartbeat_ticks = 2;
    c.lease_margin = Duration::from_millis(5);
    c.deterministic_seed = Some(id);
    c
}

struct Cluster {
    nodes: Vec<LogCore<MemStore>>,
    /// Nodes that neither send nor receive (cut off).
    cut: Vec<bool>,
    events: Vec<(usize, LogEvent)>,
    now: u64,
    outcomes: Vec<(u64, ProposalId, Outcome)>,
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        let nodes = (1..=n)
            .map(|id| LogCore::new(cfg(id, n), MemStore::new(), BootInstant(0)).unwrap())
            .collect();
        Cluster {
            nodes,
            cut: vec![false; n as usize],
            events: Vec::new(),
            now: 0,
            outcomes: Vec::new(),
        }
    }

    fn t(&self) -> BootInstant {
        BootInstant(self.now)
    }

    /// Advances time by `ms` in 2 ms steps, delivering every message at once.
    fn run(&mut self, ms: u64) {
        for _ in 0..ms / 2 {
            self.now += 2 * MS;
            self.pump();
        }
    }

    fn pump(&mut self) {
        let now = self.t();
        for _ in 0..50 {
            let mut msgs: Vec<Message> = Vec::new();
            for (i, n) in self.nodes.iter_mut().enumerate() {
                n.tick(now).unwrap();
                let out = n.poll(now).unwrap();
                self.events.extend(out.events.into_iter().map(|e| (i, e)));
                if !self.cut[i] {
                    msgs.extend(out.messages);
                }
                self.outcomes
                    .extend(out.outcomes.into_iter().map(|(p, o)| (i as u64 + 1, p, o)));
            }
            if msgs.is_empty() {
                return;
            }
            for m in msgs {
                let to = m.to as usize - 1;
                if self.cut[to] {
                    continue;
                }
                self.nodes[to].step(NodeId(m.from), m, now).unwrap();
            }
        }
    }

    fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.role() == Role::Leader)
    }

    /// Runs until a leader exists and has promoted itself (MasterReady applied).
    fn elect_and_promote(&mut self) -> usize {
        self.run(400);
        let l = self.leader().expect("a leader after 400 ms");
        let term = self.nodes[l].term();
        let cmd = Command::MasterReady {
            node: self.nodes[l].id(),
            epoch: Epoch(term),
            gtid: self.nodes[l].state_machine().last_gtid(),
        };
        self.nodes[l].propose(ProposalId(1_000), cmd).unwrap();
        self.run(20);
        assert_eq!(
            self.nodes[l].state_machine().master(),
            Some((self.nodes[l].id(), Epoch(term)))
        );
        l
    }
}

fn txn(seq: u64, body: &str) -> TxnChunk {
    TxnChunk::whole(
        Gtid::new(0, 1, seq),
        BinlogPos {
            file: "bin.000001".into(),
            offset: seq,
        },
        Bytes::from(body.as_bytes().to_vec()),
    )
}

#[test]
fn proposals_commit_and_are_never_taken_by_a_follower() {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    let f = (l + 1) % 3;
    let leader_id = c.nodes[l].id();
    let epoch = Epoch(c.nodes[l].term());
    let cmd = Command::Append {
        epoch,
        prev_gtid: None,
        txns: vec![txn(1, "a"), txn(2, "bb")],
    };
    assert_eq!(
        c.nodes[f].propose(ProposalId(1), cmd.clone()),
        Err(ProposeError::NotLeader {
            leader: Some(leader_id)
        })
    );
    c.nodes[l].propose(ProposalId(2), cmd).unwrap();
    c.run(20);
    assert!(
        c.outcomes
            .contains(&(leader_id.0, ProposalId(2), Outcome::Accepted)),
        "{:?}",
        c.outcomes
    );
    for n in &c.nodes {
        assert_eq!(n.state_machine().last_gtid(), Some(Gtid::new(0, 1, 2)));
    }
    // Readers get whole transactions after a GTID, and errors for unknown ones.
    let got = c.nodes[f]
        .txns_after(Some(Gtid::new(0, 1, 1)), 1 << 20)
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].events, b"bb");
    assert_eq!(
        c.nodes[f].txns_after(None, 1).unwrap().len(),
        1,
        "max_bytes still returns one"
    );
    assert!(matches!(
        c.nodes[f].txns_after(Some(Gtid::new(0, 9, 1)), 1 << 20),
        Err(LogError::UnknownGtid(_))
    ));
}

#[test]
fn peers_cannot_inject_proposals_or_transfers_and_votes_wait_for_the_hold_off() {
    let mut n = LogCore::new(cfg(1, 3), MemStore::new(), BootInstant(0)).unwrap();
    let msg = |t: MessageType| {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = 2;
        m.to = 1;
        m.term = 5;
        m
    };
    for t in [
        MessageType::MsgPropose,
        MessageType::MsgTransferLeader,
        MessageType::MsgHup,
    ] {
        assert!(matches!(
            n.step(NodeId(2), msg(t), BootInstant(MS)).unwrap(),
            StepOutcome::Ignored(_)
        ));
    }
    // A message claiming another sender than the authenticated peer is ignored.
    assert!(matches!(
        n.step(NodeId(3), msg(MessageType::MsgHeartbeat), BootInstant(MS))
            .unwrap(),
        StepOutcome::Ignored(_)
    ));
    // election_timeout_max = 20 ticks x 10 ms = 200 ms after start.
    for t in [MessageType::MsgRequestVote, MessageType::MsgRequestPreVote] {
        assert_eq!(
            n.step(NodeId(2), msg(t), BootInstant(199 * MS)).unwrap(),
            StepOutcome::VoteHeldOff
        );
    }
    assert_eq!(
        n.term(),
        0,
        "a held-off vote request must not even bump the term"
    );
    let mut v = msg(MessageType::MsgRequestVote);
    v.log_term = 1;
    v.index = 10;
    assert_eq!(
        n.step(NodeId(2), v, BootInstant(200 * MS)).unwrap(),
        StepOutcome::Stepped
    );
    let out = n.poll(BootInstant(200 * MS)).unwrap();
    assert!(out
        .messages
        .iter()
        .any(|m| m.get_msg_type() == MessageType::MsgRequestVoteResponse && !m.reject));
}

#[test]
fn the_lease_needs_a_quorum_round_and_is_given_up_before_a_transfer() {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    assert!(
        c.nodes[l].lease_valid_until().is_none(),
        "no lease without a round"
    );
    let sent = c.t();
    assert!(c.nodes[l].start_lease_round(sent));
    c.pump();
    let until = c.nodes[l]
        .lease_valid_until()
        .expect("lease after a quorum round");
    // (10 - 1) ticks x 10 ms x 0.99 - 5 ms = 84.1 ms after the send instant.
    assert_eq!(until, sent.add(Duration::from_micros(84_100)));
    assert!(c.nodes[l].holds_lease(c.t()));
    for (i, n) in c.nodes.iter().enumerate() {
        if i != l {
            assert!(
                n.lease_valid_until().is_none(),
                "a follower never holds the lease"
            );
        }
    }
    let to = c.nodes[(l + 1) % 3].id();
    let now = c.t();
    c.nodes[l].transfer_leader(to, now);
    assert!(c.nodes[l].lease_valid_until().is_none());
    assert!(
        !c.nodes[l].start_lease_round(now),
        "no new lease in the term of a transfer"
    );
    c.run(50);
    assert_eq!(c.leader(), Some((l + 1) % 3), "the transferee leads");
}

#[test]
fn a_stale_lease_round_does_not_count_after_a_pause() {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    let sent = c.t();
    assert!(c.nodes[l].start_lease_round(sent));
    // The leader's loop stalls for 50 ms (> 5 ms margin) before it sees the answers.
    let now = BootInstant(c.now + 50 * MS);
    let msgs = c.nodes[l].poll(sent).unwrap().messages;
    let mut replies = Vec::new();
    for m in msgs {
        let to = m.to as usize - 1;
        c.nodes[to].step(NodeId(m.from), m, sent).unwrap();
        replies.extend(c.nodes[to].poll(sent).unwrap().messages);
    }
    for m in replies {
        if m.to as usize - 1 == l {
            c.nodes[l].step(NodeId(m.from), m, now).unwrap();
        }
    }
    c.nodes[l].poll(now).unwrap();
    assert!(
        c.nodes[l].lease_valid_until().is_none(),
        "a round sent before the gap must not grant a lease"
    );
}

#[test]
fn a_restarted_node_replays_to_the_same_state_and_compaction_reports_gaps() {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    let epoch = Epoch(c.nodes[l].term());
    let mut prev = None;
    for s in 1..=30u64 {
        let cmd = Command::Append {
            epoch,
            prev_gtid: prev,
            txns: vec![txn(s, "x")],
        };
        c.nodes[l].propose(ProposalId(s), cmd).unwrap();
        prev = Some(Gtid::new(0, 1, s));
        c.run(4);
    }
    c.run(20);
    let f = (l + 1) % 3;
    let before = c.nodes[f].state_machine().clone();
    let applied = c.nodes[f].applied_index();
    // Compact the follower's log, then restart it from what it synced.
    let rep = c.nodes[f]
        .compact(Some(Gtid::new(0, 1, 10)), 1000)
        .unwrap()
        .expect("something to compact");
    assert!(rep.through < applied);
    assert!(matches!(
        c.nodes[f].txns_after(Some(Gtid::new(0, 1, 3)), 1 << 20),
        Err(LogError::Compacted { .. })
    ));
    assert_eq!(
        c.nodes[f]
            .txns_after(Some(Gtid::new(0, 1, 10)), 1 << 20)
            .unwrap()
            .len(),
        20
    );
    let cfg_f = c.nodes[f].config().clone();
    let store = std::mem::replace(
        &mut c.nodes[f],
        LogCore::new(cfg(9, 3), MemStore::new(), BootInstant(0)).unwrap(),
    )
    .into_store()
    .crash();
    let now = c.t();
    c.nodes[f] = LogCore::new(cfg_f, store, now).unwrap();
    c.run(100);
    let after = c.nodes[f].state_machine();
    assert!(after.applied_index() >= applied);
    assert_eq!(after.gtid_state(), before.gtid_state());
    assert_eq!(after.master(), before.master());
    assert_eq!(
        c.nodes[f]
            .txns_after(Some(Gtid::new(0, 1, 29)), 1 << 20)
            .unwrap()[0]
            .events,
        b"x"
    );
}

#[test]
fn a_single_node_on_raft_engine_restarts_with_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut c1 = cfg(1, 1);
    c1.deterministic_seed = None;
    let mut now = 0;
    let mut step = |n: &mut LogCore<RaftEngineStore>, ms: u64| {
        for _ in 0..ms {
            now += MS;
            n.tick(BootInstant(now)).unwrap();
            n.poll(BootInstant(now)).unwrap();
        }
        BootInstant(now)
    };
    let mut n = LogCore::new(
        c1.clone(),
        RaftEngineStore::open(dir.path()).unwrap(),
        BootInstant(0),
    )
    .unwrap();
    let t = step(&mut n, 300);
    assert_eq!(n.role(), Role::Leader);
    let term = n.term();
    n.propose(
        ProposalId(1),
        Command::MasterReady {
            node: NodeId(1),
            epoch: Epoch(term),
            gtid: None,
        },
    )
    .unwrap();
    step(&mut n, 5);
    n.propose(
        ProposalId(2),
        Command::Append {
            epoch: Epoch(term),
            prev_gtid: None,
            txns: vec![txn(1, "hello")],
        },
    )
    .unwrap();
    step(&mut n, 5);
    assert_eq!(n.state_machine().last_gtid(), Some(Gtid::new(0, 1, 1)));
    assert!(n.store().last_index() >= 3);
    drop(n);
    let n = LogCore::new(c1, RaftEngineStore::open(dir.path()).unwrap(), t).unwrap();
    let mut n = n;
    step(&mut n, 5);
    assert_eq!(n.state_machine().last_gtid(), Some(Gtid::new(0, 1, 1)));
    assert_eq!(n.state_machine().master(), Some((NodeId(1), Epoch(term))));
    assert_eq!(n.txns_after(None, 1 << 20).unwrap()[0].events, b"hello");
}

#[test]
fn a_follower_behind_the_compaction_point_installs_a_snapshot_and_is_flagged() {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    let lagging = (l + 1) % 3;
    c.cut[lagging] = true;
    let epoch = Epoch(c.nodes[l].term());
    let mut prev = None;
    for s in 1..=20u64 {
        let cmd = Command::Append {
            epoch,
            prev_gtid: prev,
            txns: vec![txn(s, "y")],
        };
        c.nodes[l].propose(ProposalId(s), cmd).unwrap();
        prev = Some(Gtid::new(0, 1, s));
        c.run(4);
    }
    c.nodes[l].compact(None, 5).unwrap().expect("compacts");
    let st = c.nodes[l].status(c.t());
    assert_eq!(st.needs_rebuild, vec![c.nodes[lagging].id()], "{st:?}");
    c.cut[lagging] = false;
    c.run(200);
    assert!(
        c.events
            .iter()
            .any(|(i, e)| *i == lagging && matches!(e, LogEvent::SnapshotInstalled { .. })),
        "{:?}",
        c.events
    );
    let st = c.nodes[lagging].status(c.t());
    assert!(st.self_needs_rebuild);
    assert_eq!(st.last_gtid, Some(Gtid::new(0, 1, 20)));
    assert!(
        st.vote_hold_off_remaining.is_some(),
        "hold-off restarts at a snapshot install"
    );
    // The gap flag survives a restart until cleared.
    let cfg_l = c.nodes[lagging].config().clone();
    let store = std::mem::replace(
        &mut c.nodes[lagging],
        LogCore::new(cfg(9, 3), MemStore::new(), BootInstant(0)).unwrap(),
    )
    .into_store()
    .crash();
    let now = c.t();
    c.nodes[lagging] = LogCore::new(cfg_l, store, now).unwrap();
    assert!(c.nodes[lagging].status(now).self_needs_rebuild);
    c.nodes[lagging].clear_needs_rebuild().unwrap();
    assert!(!c.nodes[lagging].status(now).self_needs_rebuild);
}

#[test]
fn missed_ticks_are_dropped_not_replayed() {
    let mut n = LogCore::new(cfg(1, 3), MemStore::new(), BootInstant(0)).unwrap();
    assert_eq!(n.raft().election_elapsed, 0);
    // A 5-interval gap (a paused process): one tick, not five.
    n.tick(BootInstant(50 * MS)).unwrap();
    assert_eq!(n.raft().election_elapsed, 1);
    // Less than a whole interval since the last tick: none.
    n.tick(BootInstant(55 * MS)).unwrap();
    assert_eq!(n.raft().election_elapsed, 1);
    // The tick phase stays on the interval grid.
    n.tick(BootInstant(60 * MS)).unwrap();
    assert_eq!(n.raft().election_elapsed, 2);
    // Stepping a message after a gap runs the one due tick first, too.
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.from = 2;
    m.to = 1;
    m.term = 0;
    n.step(NodeId(2), m, BootInstant(500 * MS)).unwrap();
    assert!(
        n.raft().election_elapsed <= 3,
        "{}",
        n.raft().election_elapsed
    );
}

/// Delivers `msgs` to the cluster's nodes (none is cut in these tests).
fn deliver(c: &mut Cluster, msgs: Vec<Message>) {
    let now = c.t();
    for m in msgs {
        let to = m.to as usize - 1;
        c.nodes[to].step(NodeId(m.from), m, now).unwrap();
    }
}

#[test]
fn the_leader_sends_entries_before_persisting_them_and_followers_only_after() {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    let f = (l + 1) % 3;
    let now = c.t();
    let epoch = Epoch(c.nodes[l].term());
    let cmd = Command::Append {
        epoch,
        prev_gtid: None,
        txns: vec![txn(1, "early")],
    };
    c.nodes[l].propose(ProposalId(1), cmd).unwrap();
    let early = c.nodes[l].begin_poll(now).unwrap();
    let appends: Vec<&Message> = early
        .iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgAppend && !m.entries.is_empty())
        .collect();
    assert_eq!(appends.len(), 2, "one append per follower: {early:?}");
    let index = appends[0].entries[0].index;
    assert!(
        c.nodes[l].store().last_index() < index,
        "sent before the leader persisted it"
    );
    let out = c.nodes[l].finish_poll(now).unwrap();
    assert!(c.nodes[l].store().last_index() >= index);
    assert!(out.outcomes.is_empty(), "not committed by the leader alone");

    // A follower answers only after its own fsync.
    let to_f: Vec<Message> = early
        .into_iter()
        .filter(|m| m.to == c.nodes[f].id().0)
        .collect();
    deliver(&mut c, to_f);
    assert!(c.nodes[f].begin_poll(now).unwrap().is_empty());
    assert!(c.nodes[f].store().last_index() < index);
    let out = c.nodes[f].finish_poll(now).unwrap();
    assert!(c.nodes[f].store().last_index() >= index);
    assert!(out
        .messages
        .iter()
        .any(|m| m.get_msg_type() == MessageType::MsgAppendResponse && !m.reject));
    deliver(&mut c, out.messages);
    c.run(10);
    assert!(
        c.outcomes
            .contains(&(c.nodes[l].id().0, ProposalId(1), Outcome::Accepted)),
        "{:?}",
        c.outcomes
    );
}

/// Polls `node` with `finish_poll_with`, returning what it released early and the rest.
fn poll_releasing(node: &mut LogCore<MemStore>, now: BootInstant) -> (Vec<Message>, Output) {
    let early = node.begin_poll(now).unwrap();
    let mut released = early;
    let out = node
        .finish_poll_with(now, &mut |m| released.extend(m))
        .unwrap();
    (released, out)
}

#[test]
fn a_follower_releases_its_append_response_in_the_poll_that_applies_the_previous_entry() {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    let f = (l + 1) % 3;
    let fid = c.nodes[f].id().0;
    let now = c.t();
    let epoch = Epoch(c.nodes[l].term());
    // Entry 1 reaches the follower and commits, but the leader's commit notice is dropped.
    let cmd = Command::Append {
        epoch,
        prev_gtid: None,
        txns: vec![txn(1, "one")],
    };
    c.nodes[l].propose(ProposalId(1), cmd).unwrap();
    let out = c.nodes[l].poll(now).unwrap();
    let to_f: Vec<Message> = out.messages.into_iter().filter(|m| m.to == fid).collect();
    deliver(&mut c, to_f);
    let (released, out) = poll_releasing(&mut c.nodes[f], now);
    assert!(out.messages.is_empty(), "{:?}", out.messages);
    deliver(&mut c, released);
    let out = c.nodes[l].poll(now).unwrap();
    assert!(out.outcomes.contains(&(ProposalId(1), Outcome::Accepted)));
    let applied_before = c.nodes[f].applied_index();

    // Entry 2's append carries the commit of entry 1: the follower releases its answer (after
    // persisting entry 2) and applies entry 1 in the same poll, after the release.
    let cmd = Command::Append {
        epoch,
        prev_gtid: Some(Gtid::new(0, 1, 1)),
        txns: vec![txn(2, "two")],
    };
    c.nodes[l].propose(ProposalId(2), cmd).unwrap();
    let out = c.nodes[l].poll(now).unwrap();
    let to_f: Vec<Message> = out.messages.into_iter().filter(|m| m.to == fid).collect();
    let index2 = to_f
        .iter()
        .find_map(|m| m.entries.last().map(|e| e.index))
        .expect("an append with entry 2");
    deliver(&mut c, to_f);
    let (released, out) = poll_releasing(&mut c.nodes[f], now);
    assert!(
        released
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgAppendResponse
                && !m.reject
                && m.index == index2),
        "released: {released:?}"
    );
    assert!(out.messages.is_empty(), "nothing left: {:?}", out.messages);
    assert!(c.nodes[f].store().last_index() >= index2);
    assert!(
        c.nodes[f].applied_index() > applied_before,
        "entry 1 applied in the same poll"
    );
    assert!(out
        .applied
        .iter()
        .any(|a| a.completed.contains(&Gtid::new(0, 1, 1))));
}

#[test]
fn a_leader_answers_committed_proposals_before_persisting_the_next_batch() {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    let now = c.t();
    let epoch = Epoch(c.nodes[l].term());
    let cmd = Command::Append {
        epoch,
        prev_gtid: None,
        txns: vec![txn(1, "one")],
    };
    c.nodes[l].propose(ProposalId(1), cmd).unwrap();
    let out = c.nodes[l].poll(now).unwrap();
    // The followers persist and answer; their answers reach the leader, not yet polled.
    deliver(&mut c, out.messages);
    for f in (0..3).filter(|&i| i != l) {
        let out = c.nodes[f].poll(now).unwrap();
        let to_l: Vec<Message> = out
            .messages
            .into_iter()
            .filter(|m| m.to == c.nodes[l].id().0)
            .collect();
        deliver(&mut c, to_l);
    }
    // The next proposal goes into the same Ready as the commit of the first.
    let cmd = Command::Append {
        epoch,
        prev_gtid: Some(Gtid::new(0, 1, 1)),
        txns: vec![txn(2, "two")],
    };
    c.nodes[l].propose(ProposalId(2), cmd).unwrap();
    let early = c.nodes[l].begin_poll(now).unwrap();
    let index2 = early
        .iter()
        .find_map(|m| m.entries.last().map(|e| e.index))
        .expect("entry 2 is sent before it is persisted");
    let pre = c.nodes[l].apply_before_persist(now).unwrap();
    assert_eq!(pre.outcomes, vec![(ProposalId(1), Outcome::Accepted)]);
    assert!(pre.messages.is_empty());
    assert!(
        c.nodes[l].store().last_index() < index2,
        "answered before the next batch is persisted"
    );
    let out = c.nodes[l].finish_poll(now).unwrap();
    assert!(c.nodes[l].store().last_index() >= index2);
    assert!(
        !out.outcomes.iter().any(|(p, _)| *p == ProposalId(1)),
        "answered once: {:?}",
        out.outcomes
    );
}

#[test]
fn a_granted_vote_is_never_released_early() {
    let mut c = Cluster::new(3);
    // Past every node's vote hold-off, before any election.
    c.now = 300 * MS;
    let now = c.t();
    c.nodes[0].campaign(now).unwrap();
    let (released, out) = poll_releasing(&mut c.nodes[0], now);
    assert!(
        released
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgRequestPreVote),
        "a candidate's requests leave once its state is persisted: {released:?} / {:?}",
        out.messages
    );
    let to_2: Vec<Message> = released.into_iter().filter(|m| m.to == 2).collect();
    deliver(&mut c, to_2);
    let (released, out) = poll_releasing(&mut c.nodes[1], now);
    assert!(released.is_empty(), "{released:?}");
    assert!(
        out.messages
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgRequestPreVoteResponse && !m.reject),
        "the grant waits for the hold-off filter at the end of the poll: {:?}",
        out.messages
    );
}

#[test]
fn a_call_between_the_poll_phases_persists_first() {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    let now = c.t();
    let epoch = Epoch(c.nodes[l].term());
    let cmd = Command::Append {
        epoch,
        prev_gtid: None,
        txns: vec![txn(1, "x")],
    };
    c.nodes[l].propose(ProposalId(1), cmd).unwrap();
    let early = c.nodes[l].begin_poll(now).unwrap();
    let index = early
        .iter()
        .find_map(|m| m.entries.first().map(|e| e.index))
        .unwrap();
    // A tick (or step, compact, ...) before finish_poll persists the pending entries first.
    c.nodes[l].tick(now).unwrap();
    assert!(c.nodes[l].store().last_index() >= index);
    deliver(&mut c, early);
    c.run(10);
    assert!(c
        .outcomes
        .contains(&(c.nodes[l].id().0, ProposalId(1), Outcome::Accepted)));
}

#[test]
fn a_leader_that_crashes_before_persisting_what_it_sent_loses_nothing_committed() {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    let now = c.t();
    let epoch = Epoch(c.nodes[l].term());
    let cmd = Command::Append {
        epoch,
        prev_gtid: None,
        txns: vec![txn(1, "unsynced at the leader")],
    };
    c.nodes[l].propose(ProposalId(1), cmd).unwrap();
    let early = c.nodes[l].begin_poll(now).unwrap();
    // Crash: the leader never persists what it sent.
    let cfg_l = c.nodes[l].config().clone();
    let store = std::mem::replace(
        &mut c.nodes[l],
        LogCore::new(cfg(9, 3), MemStore::new(), BootInstant(0)).unwrap(),
    )
    .into_store()
    .crash();
    c.nodes[l] = LogCore::new(cfg_l, store, now).unwrap();
    c.cut[l] = true;
    deliver(&mut c, early);
    // The followers hold the entry durably; a new leader commits it with its own term.
    c.run(800);
    let nl = c.leader().expect("a new leader");
    assert_ne!(nl, l);
    let g = Gtid::new(0, 1, 1);
    assert_eq!(c.nodes[nl].state_machine().last_gtid(), Some(g));
    // The restarted node learns it from the new leader.
    c.cut[l] = false;
    c.run(400);
    assert_eq!(c.nodes[l].state_machine().last_gtid(), Some(g));
    assert_eq!(
        c.nodes[l].txn(g).unwrap().unwrap().events,
        b"unsynced at the leader"
    );
}

fn report(node: NodeId, applied: u64, healthy: bool) -> Command {
    Command::MemberReport {
        node,
        applied_gtid: Some(Gtid::new(0, 1, applied)),
        healthy,
        diverged: false,
    }
}

#[test]
fn compaction_keeps_what_healthy_members_need_and_flags_members_behind() {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    let epoch = Epoch(c.nodes[l].term());
    let mut prev = None;
    for s in 1..=20u64 {
        let cmd = Command::Append {
            epoch,
            prev_gtid: prev,
            txns: vec![txn(s, "r")],
        };
        c.nodes[l].propose(ProposalId(s), cmd).unwrap();
        prev = Some(Gtid::new(0, 1, s));
        c.run(4);
    }
    let ids: Vec<NodeId> = c.nodes.iter().map(|n| n.id()).collect();
    let (a, b, lag) = (ids[l], ids[(l + 1) % 3], ids[(l + 2) % 3]);
    c.nodes[l]
        .propose(ProposalId(100), report(a, 20, true))
        .unwrap();
    c.nodes[l]
        .propose(ProposalId(101), report(b, 15, true))
        .unwrap();
    // The lagging member is diverged: it needs a rebuild anyway and does not hold the log
    // (an unhealthy but not diverged one would: see retention).
    c.nodes[l]
        .propose(
            ProposalId(102),
            Command::MemberReport {
                node: lag,
                applied_gtid: Some(Gtid::new(0, 1, 5)),
                healthy: false,
                diverged: true,
            },
        )
        .unwrap();
    c.run(20);
    for i in 0..3 {
        let keep = crate::retention::keep_after(c.nodes[i].state_machine());
        assert_eq!(keep, Some(Gtid::new(0, 1, 15)), "node {i}");
        c.nodes[i].compact(keep, 1_000).unwrap().expect("compacts");
        let st = c.nodes[i].status(c.t());
        assert_eq!(st.compacted_through, Some(Gtid::new(0, 1, 15)));
        assert_eq!(st.needs_rebuild, vec![lag], "node {i}: {st:?}");
        // Transactions after the healthy minimum stay readable.
        let rest = c.nodes[i]
            .txns_after(Some(Gtid::new(0, 1, 15)), usize::MAX)
            .unwrap();
        assert_eq!(rest.len(), 5);
    }
    // The cap overrides the members: the healthy member behind it is flagged too.
    let keep = crate::retention::keep_after(c.nodes[l].state_machine());
    c.nodes[l].compact(keep, 2).unwrap().expect("compacts");
    let mut want = vec![b, lag];
    want.sort();
    assert_eq!(c.nodes[l].status(c.t()).needs_rebuild, want);
}

fn chunk(seq: u64, n: u32, last: bool, body: &[u8]) -> TxnChunk {
    TxnChunk {
        gtid: Gtid::new(0, 1, seq),
        origin: BinlogPos {
            file: "bin.000001".into(),
            offset: seq,
        },
        digest: [0; 32],
        chunk: n,
        last,
        events: Bytes::from(body.to_vec()),
    }
}

/// Reads every piece from `from` with `max` bytes per call until nothing more comes; checks the
/// per-call bound and returns the pieces in order.
fn read_all_pieces(n: &LogCore<MemStore>, from: ReadCursor, max: usize) -> Vec<TxnPiece> {
    let mut cursor = from;
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let got = n.read_pieces(cursor, max).unwrap();
        let Some(last) = got.last() else {
            return all;
        };
        let bytes: usize = got.iter().map(|p| p.events.len()).sum();
        assert!(bytes <= max.max(1), "a call returned {bytes} > {max} bytes");
        cursor = last.next_cursor();
        all.extend(got);
    }
    panic!("read_pieces never ran dry");
}

/// The log of the piece tests, on a follower: seq 1 whole; seq 2 in three chunks in three
/// entries (the middle entry also completes nothing else); seq 3..=5 small and whole in one
/// entry; seq 6 open (its last chunk never arrives).
fn chunked_log() -> (Cluster, usize) {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    let epoch = Epoch(c.nodes[l].term());
    let g = |s| Some(Gtid::new(0, 1, s));
    let appends = vec![
        (None, vec![txn(1, "a")]),
        (g(1), vec![chunk(2, 0, false, b"0123456789")]),
        (g(1), vec![chunk(2, 1, false, b"abcdefghij")]),
        (
            g(1),
            vec![
                chunk(2, 2, true, b"KLMNOPQ"),
                txn(3, "xy"),
                txn(4, "zz"),
                txn(5, "w"),
            ],
        ),
        (g(5), vec![chunk(6, 0, false, b"partial")]),
    ];
    for (i, (prev, txns)) in appends.into_iter().enumerate() {
        let cmd = Command::Append {
            epoch,
            prev_gtid: prev,
            txns,
        };
        c.nodes[l].propose(ProposalId(i as u64 + 1), cmd).unwrap();
        c.run(10);
    }
    c.run(20);
    let f = (l + 1) % 3;
    assert_eq!(
        c.nodes[f].state_machine().last_gtid(),
        Some(Gtid::new(0, 1, 5))
    );
    assert!(c.nodes[f].state_machine().has_open_txn());
    (c, f)
}

#[test]
fn a_chunked_transaction_reads_piece_by_piece_as_the_whole_read() {
    let (c, f) = chunked_log();
    let n = &c.nodes[f];
    let whole = n.txns_after(None, usize::MAX).unwrap();
    assert_eq!(
        whole.iter().map(|t| t.gtid.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "the open transaction 6 is invisible"
    );
    for max in [1, 3, 4, 10, 11, 27, 1 << 20] {
        let pieces = read_all_pieces(n, ReadCursor::After(None), max);
        // Reassembled per transaction, the pieces are exactly the whole-transaction read.
        let mut again: Vec<(Gtid, Vec<u8>)> = Vec::new();
        for p in &pieces {
            if p.offset == 0 {
                again.push((p.gtid, p.events.clone()));
            } else {
                let (g, ev) = again.last_mut().expect("a continuation follows a start");
                assert_eq!(
                    *g, p.gtid,
                    "max {max}: a continuation of another transaction"
                );
                assert_eq!(
                    p.offset,
                    ev.len() as u64,
                    "max {max}: offsets are contiguous"
                );
                ev.extend_from_slice(&p.events);
            }
        }
        let want: Vec<(Gtid, Vec<u8>)> = whole.iter().map(|t| (t.gtid, t.events.clone())).collect();
        assert_eq!(again, want, "max {max}");
        // `last` on exactly the final piece of each transaction, and on no other.
        for (i, p) in pieces.iter().enumerate() {
            let next_is_other = pieces.get(i + 1).is_none_or(|q| q.gtid != p.gtid);
            assert_eq!(p.last, next_is_other, "max {max}: piece {i} of {}", p.gtid);
            assert!(!p.events.is_empty());
            assert_eq!(
                p.index,
                whole.iter().find(|t| t.gtid == p.gtid).unwrap().index
            );
        }
        // A transaction of at most `max` bytes is never cut.
        for t in &whole {
            if t.events.len() <= max {
                assert_eq!(
                    pieces.iter().filter(|p| p.gtid == t.gtid).count(),
                    1,
                    "max {max}"
                );
            }
        }
    }
}

#[test]
fn small_transactions_come_many_per_call_and_a_chunked_one_starts_a_call() {
    let (c, f) = chunked_log();
    let n = &c.nodes[f];
    // Seq 1 comes alone: seq 2 has several chunks, so it waits for a call of its own.
    let got = n.read_pieces(ReadCursor::After(None), 1 << 20).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].gtid.seq, got[0].last), (1, true));
    // From seq 2 on: all of it, then the small ones in the same call.
    let got = n.read_pieces(got[0].next_cursor(), 1 << 20).unwrap();
    let seqs: Vec<u64> = got.iter().map(|p| p.gtid.seq).collect();
    assert_eq!(seqs, vec![2, 3, 4, 5]);
    assert_eq!(got[0].events, b"0123456789abcdefghijKLMNOPQ");
    // 5 bytes left after seq 3 ("xy", 2 bytes) and 4 ("zz"): seq 5 ("w") fits; with 3 bytes it
    // fits 3 and stops before 4, which does not fit whole.
    let got = n
        .read_pieces(ReadCursor::After(Some(Gtid::new(0, 1, 2))), 3)
        .unwrap();
    assert_eq!(got.iter().map(|p| p.gtid.seq).collect::<Vec<_>>(), vec![3]);
    // Nothing after the last complete transaction: the open one never shows.
    assert!(n
        .read_pieces(ReadCursor::After(Some(Gtid::new(0, 1, 5))), 1 << 20)
        .unwrap()
        .is_empty());
}

#[test]
fn a_cursor_inside_a_transaction_resumes_at_its_byte() {
    let (c, f) = chunked_log();
    let n = &c.nodes[f];
    let g2 = Gtid::new(0, 1, 2);
    let whole = n.txn(g2).unwrap().unwrap().events;
    for offset in 0..whole.len() as u64 {
        // Without a chunk position (found by reading), and with the one a piece hands out.
        let got = n.read_pieces(ReadCursor::within(g2, offset), 4).unwrap();
        let p = &got[0];
        // Once seq 2 ends, what is left of the 4 bytes goes to the next small transactions.
        assert!(got[1..].iter().all(|q| q.gtid.seq > 2 && q.last));
        let end = (offset as usize + 4).min(whole.len());
        assert_eq!(p.offset, offset);
        assert_eq!(p.events, &whole[offset as usize..end], "offset {offset}");
        assert_eq!(p.last, end == whole.len());
        if let ReadCursor::Within { at: Some(_), .. } = p.next_cursor() {
            let next = n.read_pieces(p.next_cursor(), 4).unwrap();
            let by_offset = n
                .read_pieces(ReadCursor::within(g2, end as u64), 4)
                .unwrap();
            assert_eq!(next, by_offset, "offset {end}");
        }
    }
    assert!(matches!(
        n.read_pieces(ReadCursor::within(g2, whole.len() as u64), 4),
        Err(LogError::BadCursor { .. })
    ));
    assert!(matches!(
        n.read_pieces(ReadCursor::within(Gtid::new(0, 1, 6), 0), 4),
        Err(LogError::UnknownGtid(_))
    ));
    assert!(matches!(
        n.read_pieces(ReadCursor::After(Some(Gtid::new(0, 2, 2))), 4),
        Err(LogError::UnknownGtid(_))
    ));
}

#[test]
fn piece_cursors_into_compacted_transactions_are_refused_as_compacted() {
    let (mut c, f) = chunked_log();
    c.nodes[f]
        .compact(Some(Gtid::new(0, 1, 2)), 1000)
        .unwrap()
        .expect("something to compact");
    let n = &c.nodes[f];
    assert!(matches!(
        n.read_pieces(ReadCursor::within(Gtid::new(0, 1, 1), 0), 4),
        Err(LogError::Compacted { .. })
    ));
    assert!(matches!(
        n.read_pieces(ReadCursor::After(None), 4),
        Err(LogError::Compacted { .. })
    ));
    // The newest compacted transaction is still a valid place to start after.
    let through = n.state_machine().compacted_through().unwrap();
    let got = n
        .read_pieces(ReadCursor::After(Some(through)), 1 << 20)
        .unwrap();
    assert_eq!(got.first().map(|p| p.gtid.seq), Some(through.seq + 1));
}

#[test]
fn a_cut_off_leader_steps_down_and_the_followers_say_whom_they_lost() {
    let mut c = Cluster::new(3);
    let l = c.elect_and_promote();
    let (old_term, old_leader) = (c.nodes[l].term(), c.nodes[l].id());
    c.events.clear();
    c.cut[l] = true;
    c.run(600);
    assert!(
        c.events.contains(&(
            l,
            LogEvent::LostLeadership {
                term: old_term,
                now_term: old_term
            }
        )),
        "the cut-off leader must report stepping down in its own term: {:?}",
        c.events
    );
    let campaigns: Vec<_> = c
        .events
        .iter()
        .filter(|(i, e)| *i != l && matches!(e, LogEvent::Campaigning { .. }))
        .collect();
    assert!(
        campaigns.iter().any(|(_, e)| *e
            == LogEvent::Campaigning {
                term: old_term,
                pre_vote: true,
                last_leader: Some(old_leader)
            }),
        "a follower must report its pre-vote and the leader it lost: {:?}",
        c.events
    );
    let new = c.leader().expect("the other two elect a leader");
    assert_ne!(new, l);
    assert!(c.nodes[new].term() > old_term);
}

#[test]
fn a_loop_gap_longer_than_the_lease_margin_is_reported_with_its_length() {
    let mut c = Cluster::new(3);
    c.elect_and_promote();
    let now = c.t();
    let quiet = c.nodes[0].poll(now).unwrap();
    assert!(!quiet
        .events
        .iter()
        .any(|e| matches!(e, LogEvent::SchedulingGap { .. })));
    // The margin is 5 ms; the node is not entered for 40 ms.
    let later = BootInstant(c.now + 40 * MS);
    let out = c.nodes[0].poll(later).unwrap();
    assert!(
        out.events.contains(&LogEvent::SchedulingGap {
            gap: Duration::from_millis(40)
        }),
        "{:?}",
        out.events
    );
}
