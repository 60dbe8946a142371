//! DESIGN §6 invariant 9 with real processes: a restarted follower does not vote during its
//! hold-off (`election_timeout_max` after its start).
//!
//! The setup makes the hold-off decide the election: follower A is killed first and the log
//! moves on without it (the master's canary commits every second), so A's log is behind B's and
//! B never votes for A. Then the master is killed and A restarted at once. B can win only with
//! A's vote, and A may not give it during its hold-off. So: while A reports hold-off time left,
//! nobody may lead; A must count refused (pre-)vote requests from B; once the hold-off is over,
//! B must win.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quorumsql_node::admin::NodeStatus;
use quorumsql_node::admin_client::fetch_json;
use support::Cluster;

const START: Duration = Duration::from_secs(180);

/// A status answered with this much hold-off still left is "inside the hold-off" even allowing
/// for the time the next request takes (polls are a few ms apart).
const MARGIN_MS: u64 = 300;

fn status(c: &Cluster, addr: SocketAddr) -> Option<NodeStatus> {
    c.rt.block_on(fetch_json::<NodeStatus>(
        addr,
        "/status",
        Duration::from_millis(500),
    ))
    .ok()
}

#[test]
fn a_restarted_follower_does_not_vote_during_its_hold_off() {
    let mut c = Cluster::start(3);
    let m = c.wait_healthy(START);
    let mut followers = (1..=3).filter(|&n| n != m);
    let (a, b) = (
        followers.next().expect("follower"),
        followers.next().expect("follower"),
    );
    let a_admin = c.node(a).config.me().admin;
    let b_admin = c.node(b).config.me().admin;

    // A stops; the log moves on without it, so B's log is longer than A's.
    let k0 = c.node_status(b).map(|s| s.commit_index).expect("B status");
    c.kill_node(a);
    c.wait_until(
        "B's log to move on without A",
        Duration::from_secs(30),
        |s| {
            s.nodes
                .iter()
                .any(|n| n.id == b && n.commit_index >= k0 + 5)
        },
    );
    let old_term = c.node_status(b).map(|s| s.raft_term).expect("B status");

    // The master dies and A comes back at once: B needs A's vote.
    c.kill_node(m);
    let restarted = Instant::now();
    c.start_node(a);

    let deadline = restarted + Duration::from_secs(30);
    let mut max_hold_off_seen = 0u64;
    let mut hold_off_over_at: Option<Instant> = None;
    let mut last = (None, None);
    let leader = loop {
        assert!(
            Instant::now() < deadline,
            "no leader within 30 s of A's restart; last A status {:?}, last B status {:?}; logs in {}",
            last.0,
            last.1,
            c.dir.path().display()
        );
        // A first, then B: a B answer that follows an A answer with hold-off left was given
        // while A still was in its hold-off.
        let sa = status(&c, a_admin);
        let sb = status(&c, b_admin);
        let a_in_hold_off = sa
            .as_ref()
            .and_then(|s| s.vote_hold_off_remaining_ms)
            .is_some_and(|r| r > MARGIN_MS);
        if let Some(r) = sa.as_ref().and_then(|s| s.vote_hold_off_remaining_ms) {
            max_hold_off_seen = max_hold_off_seen.max(r);
        }
        if sa.is_some() && !a_in_hold_off && hold_off_over_at.is_none() && max_hold_off_seen > 0 {
            hold_off_over_at = Some(Instant::now());
        }
        let b_leads = sb
            .as_ref()
            .is_some_and(|s| s.raft_leader == Some(b) && s.raft_term > old_term);
        let a_knows_leader = sa
            .as_ref()
            .and_then(|s| s.raft_leader)
            .filter(|_| sa.as_ref().is_some_and(|s| s.raft_term > old_term));
        if a_in_hold_off {
            assert!(
                !b_leads && a_knows_leader.is_none(),
                "a leader was elected while A was in its vote hold-off: A {sa:?}, B {sb:?}"
            );
        }
        if b_leads && max_hold_off_seen > 0 {
            break b;
        }
        if let Some(l) = a_knows_leader {
            if !a_in_hold_off && max_hold_off_seen > 0 {
                break l;
            }
        }
        last = (sa, sb);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        max_hold_off_seen > MARGIN_MS,
        "A's status never showed its hold-off (max seen {max_hold_off_seen} ms): A came up too slowly to observe it"
    );
    assert_eq!(
        leader, b,
        "A's log is behind B's, so only B can win (with A's vote)"
    );
    let sa = status(&c, a_admin).expect("A status after the election");
    assert!(
        sa.votes_refused_in_hold_off > 0,
        "A refused no vote request during its hold-off, so the test proved nothing: {sa:?}"
    );
    eprintln!(
        "A restarted; hold-off seen up to {max_hold_off_seen} ms, over after {:?}; A refused {} \
         (pre-)vote requests; B elected {:?} after A's restart",
        hold_off_over_at.map(|t| t - restarted),
        sa.votes_refused_in_hold_off,
        restarted.elapsed()
    );
}
