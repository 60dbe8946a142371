//! Three runtimes over real loopback TCP and raft-engine stores in temporary directories.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use quorumsql_peer::{ClusterSecret, PeerConfig, PeerNet};
use tokio::net::TcpListener;

use super::{handshake_params, LogHandle, LogRuntime, RuntimeConfig};
use crate::core::{LogConfig, ProposeError, Role};
use crate::entry::{Command, TxnChunk};
use crate::state_machine::{Outcome, RejectReason};
use crate::store::RaftEngineStore;
use crate::types::{BinlogPos, BootInstant, Epoch, Gtid, NodeId};

const DEADLINE: Duration = Duration::from_secs(20);

/// Fast timings so tests elect within a second: 20 ms ticks, elections after 0.2–0.4 s.
fn log_config(id: u64) -> LogConfig {
    let mut c = LogConfig::new(NodeId(id), vec![NodeId(1), NodeId(2), NodeId(3)]);
    c.tick_interval = Duration::from_millis(20);
    c.lease_margin = Duration::from_millis(40);
    c
}

struct TestCluster {
    nodes: Vec<LogHandle>,
    _dir: tempfile::TempDir,
}

async fn cluster() -> TestCluster {
    cluster_with(|_| {}).await
}

async fn cluster_with(tune: impl Fn(&mut RuntimeConfig)) -> TestCluster {
    let dir = tempfile::tempdir().unwrap();
    let secret = ClusterSecret::random();
    let mut listeners = Vec::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.insert(NodeId(id), l.local_addr().unwrap());
        listeners.push(l);
    }
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let log = log_config(id);
        let mut pc = PeerConfig::new(
            NodeId(id),
            addrs[&NodeId(id)],
            addrs.clone(),
            secret.clone(),
        );
        pc.handshake_params = handshake_params(&log);
        let (net, inbound) = PeerNet::start_on(pc, l).unwrap();
        let store = RaftEngineStore::open(&dir.path().join(format!("n{id}"))).unwrap();
        let mut rc = RuntimeConfig::new(log);
        tune(&mut rc);
        nodes.push(LogRuntime::start(rc, store, net, inbound).await.unwrap());
    }
    TestCluster { nodes, _dir: dir }
}

async fn wait_for<T>(
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    state: impl Fn() -> String,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for {what}; state: {}", state());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl TestCluster {
    fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let s = n.status();
                format!(
                    "{}:{:?}/t{}/c{}/a{} ",
                    s.id, s.role, s.term, s.commit_index, s.applied_index
                )
            })
            .collect()
    }

    /// Index of the single leader whose first entry of its term is committed.
    async fn leader(&self) -> usize {
        wait_for(
            "a leader",
            || {
                let leaders: Vec<usize> = (0..self.nodes.len())
                    .filter(|i| self.nodes[*i].status().role == Role::Leader)
                    .collect();
                (leaders.len() == 1).then(|| leaders[0])
            },
            || self.describe(),
        )
        .await
    }

    /// Makes the current leader master of its term, as promotion step 8 does; returns its index
    /// and epoch. Retries across leader changes (elections may churn on a loaded machine).
    async fn promote(&self) -> (usize, Epoch) {
        let start = std::time::Instant::now();
        loop {
            assert!(
                start.elapsed() < DEADLINE,
                "no master within {DEADLINE:?}: {}",
                self.describe()
            );
            let i = self.leader().await;
            let n = &self.nodes[i];
            let st = n.status();
            let epoch = Epoch(st.term);
            match n
                .propose(Command::MasterReady {
                    node: st.id,
                    epoch,
                    gtid: st.last_gtid,
                })
                .await
            {
                Ok(r) if r.outcome == Outcome::Accepted => return (i, epoch),
                // Not leader any more, or its first entry was not applied yet when we read the
                // status: try again.
                Ok(_) | Err(ProposeError::NotLeader { .. }) | Err(ProposeError::Transferring) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("MasterReady failed: {e}"),
            }
        }
    }
}

fn append(epoch: Epoch, prev: Option<Gtid>, seq: u64, body: &[u8]) -> (Gtid, Command) {
    let gtid = Gtid::new(0, 1, seq);
    let txn = TxnChunk::whole(
        gtid,
        BinlogPos {
            file: "b.000001".into(),
            offset: seq,
        },
        Bytes::copy_from_slice(body),
    );
    (
        gtid,
        Command::Append {
            epoch,
            prev_gtid: prev,
            txns: vec![txn],
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_commit_group_and_replicate_everywhere() {
    let c = cluster().await;
    let (l, epoch) = c.promote().await;
    let leader = &c.nodes[l];

    // Followers refuse at once and name the leader.
    let f = (l + 1) % 3;
    let refused = c.nodes[f].submit(Command::Noop);
    assert!(
        matches!(refused, Err(ProposeError::NotLeader { leader: Some(id) }) if id == leader.status().id),
        "{:?}",
        refused.err()
    );

    // 200 chained appends submitted back to back: all accepted, in few entries (group commit).
    let mut tickets = Vec::new();
    let mut prev = leader.status().last_gtid;
    for seq in 1..=200u64 {
        let (gtid, cmd) = append(epoch, prev, seq, format!("txn {seq}").as_bytes());
        tickets.push((gtid, leader.submit(cmd).unwrap()));
        prev = Some(gtid);
    }
    let mut indexes = BTreeSet::new();
    for (gtid, t) in tickets {
        let p = t.wait().await.unwrap();
        assert_eq!(p.outcome, Outcome::Accepted, "{gtid}");
        assert_eq!(p.completed, vec![gtid]);
        indexes.insert(p.index.unwrap());
    }
    assert!(
        indexes.len() < 50,
        "200 proposals took {} entries: no group commit",
        indexes.len()
    );

    // A broken chain is rejected by the state machine, not by the runtime.
    let (_, stale) = append(epoch, None, 500, b"x");
    let r = leader.propose(stale).await.unwrap();
    assert!(
        matches!(
            r.outcome,
            Outcome::Rejected(RejectReason::PrevGtidMismatch { .. })
        ),
        "{r:?}"
    );

    // Every node applies the same 200 transactions and can read them back.
    let last = Some(Gtid::new(0, 1, 200));
    for n in &c.nodes {
        let got = n
            .wait_for_txns_after(
                Some(Gtid::new(0, 1, 199)),
                tokio::time::Instant::now() + DEADLINE,
            )
            .await;
        assert_eq!(got, last, "node {}", n.status().id);
        assert_eq!(n.subscribe_applied().borrow().last_gtid, last);
        let txns = n.read_txns_after(None, usize::MAX).await.unwrap();
        assert_eq!(txns.len(), 200);
        assert!(txns
            .iter()
            .enumerate()
            .all(|(i, t)| t.events == format!("txn {}", i + 1).into_bytes()));
        let tail = n
            .read_txns_after(Some(Gtid::new(0, 1, 150)), 1)
            .await
            .unwrap();
        assert_eq!(
            tail.len(),
            1,
            "max_bytes limits the answer but returns at least one"
        );
        assert_eq!(tail[0].gtid, Gtid::new(0, 1, 151));
    }
    // Nothing newer arrives: the wait ends at its deadline.
    let t0 = tokio::time::Instant::now();
    assert_eq!(
        leader
            .wait_for_txns_after(last, t0 + Duration::from_millis(100))
            .await,
        None
    );
    for n in &c.nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_holds_the_lease_and_transfer_gives_it_up() {
    let c = cluster().await;
    let l = wait_for(
        "a lease holder",
        || (0..3).find(|i| c.nodes[*i].holds_lease()),
        || c.describe(),
    )
    .await;
    wait_for(
        "the leader's lease",
        || c.nodes[l].holds_lease().then_some(()),
        || c.describe(),
    )
    .await;
    let until = c.nodes[l].lease_valid_until().unwrap();
    let now = BootInstant::now();
    // The lease never runs past one election timeout from now (it is measured from a past round).
    assert!(
        until.saturating_since(now) <= Duration::from_millis(200),
        "lease until {until}, now {now}"
    );
    for (i, n) in c.nodes.iter().enumerate() {
        if i != l {
            assert_eq!(
                n.lease_valid_until(),
                None,
                "follower {i} must not hold a lease"
            );
        }
    }

    let target = (l + 1) % 3;
    let target_id = c.nodes[target].status().id;
    c.nodes[l].transfer_leader(target_id).await.unwrap();
    // The old leader gives the lease up at once, before the transferee campaigns.
    assert_eq!(c.nodes[l].lease_valid_until(), None);
    wait_for(
        "the transfer",
        || (c.nodes[target].status().role == Role::Leader).then_some(()),
        || c.describe(),
    )
    .await;
    wait_for(
        "the new leader's lease",
        || c.nodes[target].holds_lease().then_some(()),
        || c.describe(),
    )
    .await;
    let refused = c.nodes[l].transfer_leader(target_id).await;
    assert!(
        matches!(refused, Err(ProposeError::NotLeader { .. })),
        "{refused:?}"
    );
    for n in &c.nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_runtime_and_fails_later_calls() {
    let c = cluster().await;
    let l = c.leader().await;
    let n = &c.nodes[l];
    n.shutdown().await;
    let r = n.propose(Command::Noop).await;
    assert!(
        matches!(
            r,
            Err(ProposeError::Stopped(_)) | Err(ProposeError::NotLeader { .. })
        ),
        "{r:?}"
    );
    assert!(n.read_txns_after(None, 1).await.is_err());
    assert_eq!(n.lease_valid_until(), None);
    assert_eq!(n.fatal(), None, "a requested shutdown is not a fatal error");
    for m in &c.nodes {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_reports_drive_compaction_and_flag_a_lagging_member() {
    let c = cluster_with(|rc| {
        rc.compact_interval = Duration::from_millis(50);
        rc.compact_min_entries = 1;
        rc.compaction_slack_entries = 0;
    })
    .await;
    let (l, epoch) = c.promote().await;
    let leader = &c.nodes[l];
    // One transaction per entry (each waits for the previous), so the log can be compacted
    // exactly behind any of them.
    let mut prev = leader.status().last_gtid;
    for seq in 1..=30u64 {
        let (gtid, cmd) = append(epoch, prev, seq, format!("txn {seq}").as_bytes());
        assert_eq!(
            leader.propose(cmd).await.unwrap().outcome,
            Outcome::Accepted
        );
        prev = Some(gtid);
    }
    let g = |seq| Some(Gtid::new(0, 1, seq));
    // Nothing is compacted while no member reported.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(c
        .nodes
        .iter()
        .all(|n| n.status().compacted_through.is_none()));

    // The leader's mariadbd applied everything, a follower's up to 20, the other follower's is
    // unhealthy at 10. Followers' reports reach the log only through the leader.
    let (f1, f2) = ((l + 1) % 3, (l + 2) % 3);
    let lagging = c.nodes[f2].status().id;
    leader.report_member(g(30), true, false);
    c.nodes[f1].report_member(g(20), true, false);
    c.nodes[f2].report_member(g(10), false, true);
    for (i, n) in c.nodes.iter().enumerate() {
        wait_for(
            "compaction below the smallest healthy applied GTID",
            || {
                let st = n.status();
                (st.compacted_through == g(20) && st.needs_rebuild == vec![lagging]).then_some(())
            },
            || {
                let st = n.status();
                format!(
                    "node index {i}: compacted {:?} first {} needs_rebuild {:?}",
                    st.compacted_through, st.first_index, st.needs_rebuild
                )
            },
        )
        .await;
        // What a healthy member still needs stays readable; older positions are gone.
        let rest = n.read_txns_after(g(20), usize::MAX).await.unwrap();
        assert_eq!(rest.len(), 10);
        assert!(matches!(
            n.read_txns_after(g(10), usize::MAX).await,
            Err(crate::core::LogError::Compacted { .. })
        ));
    }

    // A later, lower report of the healthy follower is recorded too (newest report wins) and
    // holds the log where it is; the compaction point never moves back.
    c.nodes[f1].report_member(g(25), true, false);
    c.nodes[f2].report_member(g(30), true, false);
    for n in &c.nodes {
        wait_for(
            "compaction up to the new healthy minimum",
            || (n.status().compacted_through == g(25)).then_some(()),
            || format!("{:?}", n.status().compacted_through),
        )
        .await;
        assert!(n.status().needs_rebuild.is_empty(), "{:?}", n.status());
    }
    for n in &c.nodes {
        n.shutdown().await;
    }
}
