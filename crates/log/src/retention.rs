//! How far the log may be compacted, from the members' reports (DESIGN §3 "Log retention").
//!
//! Every node compacts its own log, but all of them decide from the replicated state machine
//! (the `MemberReport`s it applied and its membership), so they agree on the point. The rule:
//! - never past the smallest GTID applied by the mariadbd of any member that is not diverged,
//!   healthy or not: an unhealthy member is usually one that is restarting or catching up, and
//!   compacting past it would strand it (it would need a rebuild to come back). A member that is
//!   down for long is bounded by the size cap below, not by this rule;
//! - never past what a *majority* of the voters' mariadbds reported applied, so the log alone
//!   still holds every transaction that is not yet on a majority of databases;
//! - a member with no report is ignored by the first rule; a diverged one (it needs a rebuild
//!   anyway), or one whose GTID is not in the log's domain, counts as having applied nothing; no
//!   eligible member at all keeps everything.
//!
//! The size cap (`max_retained_entries` of [`crate::LogCore::compact`]) overrides this rule; the
//! members it leaves behind show up in `LogStatus::needs_rebuild`.

use crate::state_machine::{MemberState, Membership, StateMachine};
use crate::types::{Gtid, NodeId};

/// The GTID domain the log carries; reports in another domain tell nothing about the log.
const LOG_DOMAIN: u32 = 0;

/// The newest transaction every member that still needs the log has applied: entries up to it
/// may be compacted. `None` keeps everything (no healthy member, or one that applied nothing).
pub fn keep_after(sm: &StateMachine) -> Option<Gtid> {
    keep_after_of(sm.members(), sm.membership())
}

fn applied(members: &std::collections::BTreeMap<NodeId, MemberState>, n: NodeId) -> Option<Gtid> {
    members
        .get(&n)
        .filter(|m| !m.diverged)
        .and_then(|m| m.applied_gtid)
        .filter(|g| g.domain == LOG_DOMAIN)
}

/// The highest GTID applied by at least a majority of `voters`; `None` when no majority applied
/// anything (or there are no voters).
fn majority_applied(
    members: &std::collections::BTreeMap<NodeId, MemberState>,
    voters: &[NodeId],
) -> Option<Gtid> {
    if voters.is_empty() {
        return None;
    }
    let mut seen: Vec<Option<Gtid>> = voters.iter().map(|v| applied(members, *v)).collect();
    // Newest first; `None` (nothing applied) sorts last.
    seen.sort_by_key(|g| std::cmp::Reverse(g.map(|g| g.seq)));
    let quorum = voters.len() / 2 + 1;
    seen.get(quorum - 1).copied().flatten()
}

/// [`keep_after`] on explicit members and membership.
pub fn keep_after_of(
    members: &std::collections::BTreeMap<NodeId, MemberState>,
    membership: &Membership,
) -> Option<Gtid> {
    let mut everyone: Vec<NodeId> = membership
        .voters
        .iter()
        .chain(&membership.voters_outgoing)
        .chain(&membership.learners)
        .chain(&membership.learners_next)
        .copied()
        .collect();
    everyone.sort();
    everyone.dedup();

    let mut floor: Option<Gtid> = None;
    let mut any_healthy = false;
    for n in everyone {
        let healthy = members.get(&n).is_some_and(|m| !m.diverged);
        if !healthy {
            continue;
        }
        any_healthy = true;
        let g = applied(members, n)?;
        if floor.is_none_or(|f| g.seq < f.seq) {
            floor = Some(g);
        }
    }
    if !any_healthy {
        return None;
    }
    let mut floor = floor?;
    // Both halves of a joint configuration must have a majority past the point.
    for voters in [&membership.voters, &membership.voters_outgoing] {
        if voters.is_empty() {
            continue;
        }
        let m = majority_applied(members, voters)?;
        if m.seq < floor.seq {
            floor = m;
        }
    }
    Some(floor)
}

/// Whether `member` (with `state`) lacks transactions the log no longer holds, given the newest
/// compacted transaction's seq.
pub(crate) fn is_behind(state: Option<&MemberState>, compacted_through_seq: u64) -> bool {
    state
        .and_then(|m| m.applied_gtid)
        .is_none_or(|g| g.seq < compacted_through_seq)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn g(seq: u64) -> Gtid {
        Gtid::new(0, 1, seq)
    }

    fn m(applied: Option<u64>, healthy: bool, diverged: bool) -> MemberState {
        MemberState {
            applied_gtid: applied.map(g),
            healthy,
            diverged,
        }
    }

    fn voters(ids: &[u64]) -> Membership {
        Membership {
            voters: ids.iter().map(|i| NodeId(*i)).collect(),
            ..Default::default()
        }
    }

    fn members(list: &[(u64, MemberState)]) -> BTreeMap<NodeId, MemberState> {
        list.iter().map(|(i, s)| (NodeId(*i), s.clone())).collect()
    }

    #[test]
    fn smallest_healthy_applied_gtid() {
        let ms = members(&[
            (1, m(Some(100), true, false)),
            (2, m(Some(40), true, false)),
            (3, m(Some(70), true, false)),
        ]);
        assert_eq!(keep_after_of(&ms, &voters(&[1, 2, 3])), Some(g(40)));
    }

    #[test]
    fn diverged_members_do_not_hold_the_log_but_unhealthy_ones_do() {
        // Node 2 is restarting (unhealthy): compacting past 5 would strand it.
        let ms = members(&[
            (1, m(Some(100), true, false)),
            (2, m(Some(5), false, false)),
            (3, m(Some(90), true, false)),
            (4, m(Some(1), true, true)),
            (5, m(Some(95), true, false)),
        ]);
        assert_eq!(keep_after_of(&ms, &voters(&[1, 2, 3, 4, 5])), Some(g(5)));
        // Diverged node 4 alone does not hold it.
        let ms = members(&[
            (1, m(Some(100), true, false)),
            (3, m(Some(90), true, false)),
            (4, m(Some(1), true, true)),
            (5, m(Some(95), true, false)),
        ]);
        assert_eq!(keep_after_of(&ms, &voters(&[1, 3, 4, 5])), Some(g(90)));
    }

    #[test]
    fn never_past_what_a_majority_applied() {
        // Nodes 2 and 3 never reported: node 1's own position would allow compacting
        // everything, but no majority applied anything.
        let ms = members(&[(1, m(Some(100), true, false))]);
        assert_eq!(keep_after_of(&ms, &voters(&[1, 2, 3])), None);
        // Node 3 is diverged (applied nothing for the majority rule); the majority point is 30.
        let ms = members(&[
            (1, m(Some(100), true, false)),
            (2, m(Some(30), true, false)),
            (3, m(Some(20), false, true)),
        ]);
        assert_eq!(keep_after_of(&ms, &voters(&[1, 2, 3])), Some(g(30)));
        // A diverged member counts as having applied nothing.
        let ms = members(&[
            (1, m(Some(100), true, false)),
            (2, m(Some(30), false, true)),
            (3, m(Some(20), false, false)),
        ]);
        assert_eq!(keep_after_of(&ms, &voters(&[1, 2, 3])), Some(g(20)));
        // No majority applied anything: keep everything.
        let ms = members(&[(1, m(Some(100), true, false))]);
        assert_eq!(keep_after_of(&ms, &voters(&[1, 2, 3])), None);
    }

    #[test]
    fn joint_configuration_needs_both_majorities() {
        let ms = members(&[
            (1, m(Some(100), true, false)),
            (2, m(Some(100), true, false)),
            (3, m(Some(100), true, false)),
            (4, m(Some(10), false, false)),
            (5, m(Some(60), true, false)),
        ]);
        let joint = Membership {
            voters: vec![NodeId(1), NodeId(4), NodeId(5)],
            voters_outgoing: vec![NodeId(1), NodeId(2), NodeId(3)],
            ..Default::default()
        };
        assert_eq!(keep_after_of(&ms, &joint), Some(g(10)));
    }

    #[test]
    fn keeps_everything_without_an_eligible_position() {
        let ms = members(&[
            (1, m(Some(100), true, false)),
            (2, m(None, true, false)),
            (3, m(Some(100), true, false)),
        ]);
        assert_eq!(keep_after_of(&ms, &voters(&[1, 2, 3])), None);
        let ms = members(&[
            (1, m(Some(100), false, true)),
            (2, m(Some(100), false, true)),
            (3, m(Some(100), false, true)),
        ]);
        assert_eq!(keep_after_of(&ms, &voters(&[1, 2, 3])), None);
        assert_eq!(keep_after_of(&BTreeMap::new(), &voters(&[1, 2, 3])), None);
    }

    #[test]
    fn learners_hold_the_log_and_removed_members_do_not() {
        let ms = members(&[
            (1, m(Some(100), true, false)),
            (2, m(Some(100), true, false)),
            (3, m(Some(100), true, false)),
            (4, m(Some(50), true, false)),
            (9, m(Some(1), true, false)),
        ]);
        let mut ship = voters(&[1, 2, 3]);
        ship.learners = vec![NodeId(4)];
        assert_eq!(keep_after_of(&ms, &ship), Some(g(50)));
    }

    #[test]
    fn other_domains_tell_nothing() {
        let mut ms = members(&[
            (1, m(Some(100), true, false)),
            (2, m(Some(100), true, false)),
            (3, m(Some(100), true, false)),
        ]);
        if let Some(s) = ms.get_mut(&NodeId(2)) {
            s.applied_gtid = Some(Gtid::new(7, 1, 500));
        }
        assert_eq!(keep_after_of(&ms, &voters(&[1, 2, 3])), None);
    }

    #[test]
    fn behind_the_compaction_point() {
        assert!(is_behind(None, 10));
        assert!(is_behind(Some(&m(None, true, false)), 10));
        assert!(is_behind(Some(&m(Some(9), true, false)), 10));
        assert!(!is_behind(Some(&m(Some(10), true, false)), 10));
    }
}
