//! Member reports (DESIGN §3: nodes report {applied GTID, healthy, diverged} to their peers).
//!
//! The design, chosen because it never forwards a proposal:
//! - each node's roles calls [`LogHandle::report_member`](super::LogHandle::report_member) every
//!   few seconds; the runtime keeps that report and sends it to every peer as a `Control` frame
//!   (fire and forget; the next report repairs a loss);
//! - every runtime remembers the newest report it heard from each member (newest by the sender's
//!   incarnation, then its report counter, so a delayed frame never overrides a newer one);
//! - only the raft leader turns reports into `MemberReport` commands, proposed as its own
//!   proposals (the report is data, not a proposal: nothing travels to another leader), and only
//!   when the report differs from what the state machine holds for that member and no proposal
//!   for that member is in flight. A new leader already has every member's latest report.
//!
//! A node reports only itself: a frame whose report names another node than its authenticated
//! sender is dropped.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::state_machine::{MemberState, StateMachine};
use crate::types::{NodeId, ProposalId};

/// Body of a `Control` peer frame (postcard). New variants go at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ControlMsg {
    MemberReport(Report),
}

/// One node's report about its own mariadbd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Report {
    pub node: NodeId,
    /// The sender's log incarnation: reports of a restarted process supersede older ones.
    pub incarnation: u64,
    /// Counts the reports of one incarnation.
    pub seq: u64,
    pub state: MemberState,
}

impl Report {
    fn newer_than(&self, other: &Report) -> bool {
        (self.incarnation, self.seq) > (other.incarnation, other.seq)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("control frame does not decode: {0}")]
    Decode(String),
    #[error("cannot encode control frame: {0}")]
    Encode(String),
    #[error("peer {from} sent a report about {about}; a node reports only itself")]
    NotItself { from: NodeId, about: NodeId },
}

pub(crate) fn encode(m: &ControlMsg) -> Result<Vec<u8>, ControlError> {
    postcard::to_stdvec(m).map_err(|e| ControlError::Encode(e.to_string()))
}

pub(crate) fn decode(body: &[u8]) -> Result<ControlMsg, ControlError> {
    postcard::from_bytes(body).map_err(|e| ControlError::Decode(e.to_string()))
}

/// The reports a runtime heard, and the leader's proposals of them in flight.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    heard: BTreeMap<NodeId, Report>,
    in_flight: HashMap<ProposalId, NodeId>,
    /// A report arrived since the leader last looked.
    pub(crate) dirty: bool,
}

impl Reports {
    /// Records a report received from authenticated peer `from` (or from this node itself).
    pub(crate) fn heard(&mut self, from: NodeId, r: Report) -> Result<(), ControlError> {
        if r.node != from {
            return Err(ControlError::NotItself {
                from,
                about: r.node,
            });
        }
        if self.heard.get(&from).is_none_or(|old| r.newer_than(old)) {
            self.heard.insert(from, r);
            self.dirty = true;
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn latest(&self, node: NodeId) -> Option<&Report> {
        self.heard.get(&node)
    }

    /// Reports the state machine does not reflect yet, of current members, with no proposal in
    /// flight: what a leader should propose now.
    pub(crate) fn to_propose(&self, sm: &StateMachine) -> Vec<(NodeId, MemberState)> {
        let m = sm.membership();
        self.heard
            .iter()
            .filter(|(n, _)| {
                m.voters.contains(n)
                    || m.voters_outgoing.contains(n)
                    || m.learners.contains(n)
                    || m.learners_next.contains(n)
            })
            .filter(|(n, r)| sm.members().get(n) != Some(&r.state))
            .filter(|(n, _)| !self.in_flight.values().any(|f| f == *n))
            .map(|(n, r)| (*n, r.state.clone()))
            .collect()
    }

    pub(crate) fn proposed(&mut self, id: ProposalId, node: NodeId) {
        self.in_flight.insert(id, node);
    }

    /// Forgets a resolved proposal; true if it was a member report.
    pub(crate) fn resolved(&mut self, id: ProposalId) -> bool {
        self.in_flight.remove(&id).is_some()
    }

    /// Leadership ended: its queued proposals resolve as dropped anyway, but forget them now so
    /// a later leadership starts clean.
    pub(crate) fn forget_in_flight(&mut self) {
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Command, EntryPayload, TaggedCommand};
    use crate::state_machine::Membership;
    use crate::types::Gtid;

    fn state(seq: u64) -> MemberState {
        MemberState {
            applied_gtid: Some(Gtid::new(0, 1, seq)),
            healthy: true,
            diverged: false,
        }
    }

    fn report(node: u64, incarnation: u64, seq: u64, applied: u64) -> Report {
        Report {
            node: NodeId(node),
            incarnation,
            seq,
            state: state(applied),
        }
    }

    fn sm3() -> StateMachine {
        StateMachine::new(Membership {
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            ..Default::default()
        })
    }

    #[test]
    fn control_frames_round_trip_and_garbage_is_an_error() {
        let m = ControlMsg::MemberReport(report(2, 3, 4, 5));
        assert_eq!(decode(&encode(&m).unwrap()).unwrap(), m);
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn newest_report_wins_and_delayed_ones_are_ignored() {
        let mut r = Reports::default();
        r.heard(NodeId(2), report(2, 1, 5, 50)).unwrap();
        r.heard(NodeId(2), report(2, 1, 4, 40)).unwrap();
        assert_eq!(r.latest(NodeId(2)).unwrap().state, state(50));
        // A restarted process starts counting again.
        r.heard(NodeId(2), report(2, 2, 1, 10)).unwrap();
        assert_eq!(r.latest(NodeId(2)).unwrap().state, state(10));
        r.heard(NodeId(2), report(2, 1, 9, 90)).unwrap();
        assert_eq!(r.latest(NodeId(2)).unwrap().state, state(10));
    }

    #[test]
    fn a_node_reports_only_itself() {
        let mut r = Reports::default();
        assert!(matches!(
            r.heard(NodeId(2), report(3, 1, 1, 1)),
            Err(ControlError::NotItself { .. })
        ));
        assert!(r.latest(NodeId(3)).is_none());
    }

    #[test]
    fn leader_proposes_changed_reports_of_members_once() {
        let mut sm = sm3();
        let mut r = Reports::default();
        r.heard(NodeId(2), report(2, 1, 1, 20)).unwrap();
        r.heard(NodeId(3), report(3, 1, 1, 30)).unwrap();
        r.heard(NodeId(9), report(9, 1, 1, 90)).unwrap(); // not a member
        let want = r.to_propose(&sm);
        assert_eq!(want, vec![(NodeId(2), state(20)), (NodeId(3), state(30))]);
        // In flight: not proposed again.
        r.proposed(ProposalId(7), NodeId(2));
        assert_eq!(r.to_propose(&sm), vec![(NodeId(3), state(30))]);
        // Applied: the state machine reflects it, nothing left for node 2 once resolved.
        let cmd = |n: u64, s: MemberState| TaggedCommand {
            origin: None,
            command: Command::MemberReport {
                node: NodeId(n),
                applied_gtid: s.applied_gtid,
                healthy: s.healthy,
                diverged: s.diverged,
            },
        };
        sm.apply_entry(
            1,
            1,
            &EntryPayload {
                commands: vec![cmd(2, state(20)), cmd(3, state(30))],
            },
        );
        assert!(r.resolved(ProposalId(7)));
        assert!(!r.resolved(ProposalId(7)));
        assert!(r.to_propose(&sm).is_empty());
    }
}
