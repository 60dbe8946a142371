//! The system under test, whichever it is: the nemesis and the runner pull the same levers on a
//! QuorumSQL cluster and on a Galera cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use quorumsql_chaos_check::NodeIndex;

use crate::galera::GaleraCluster;
use crate::net::Network;
use crate::nodes::{describe, NodesError, QuorumCluster};
use crate::workload::Target;

/// A rebuild streams a full backup, prepares it and restarts mariadbd: the end of a run waits at
/// least this long once one is under way, whatever `--recovery-timeout` says.
pub const REBUILD_RECOVERY_MIN: Duration = Duration::from_secs(120);

/// A node that was not healthy when the end of the run stopped waiting.
#[derive(Debug, Clone)]
pub struct Unrecovered {
    pub node: NodeIndex,
    pub role: String,
    pub problems: String,
}

/// How the end-of-run wait ended.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// A master was up at the end.
    pub master: bool,
    pub not_healthy: Vec<Unrecovered>,
    pub waited: Duration,
    /// The last cluster status, one line per node.
    pub status: String,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            master: true,
            not_healthy: Vec::new(),
            waited: Duration::ZERO,
            status: String::new(),
        }
    }
}

pub enum Cluster {
    Quorum(QuorumCluster),
    Galera(GaleraCluster),
}

impl Cluster {
    pub fn name(&self) -> &'static str {
        match self {
            Cluster::Quorum(_) => "quorumsql",
            Cluster::Galera(_) => "galera",
        }
    }

    /// The QuorumSQL cluster, for levers Galera has no counterpart of.
    pub fn quorum(&self) -> Option<&QuorumCluster> {
        match self {
            Cluster::Quorum(c) => Some(c),
            Cluster::Galera(_) => None,
        }
    }

    pub fn net(&self) -> &Network {
        match self {
            Cluster::Quorum(c) => c.net(),
            Cluster::Galera(c) => c.net(),
        }
    }

    pub fn nodes(&self) -> Vec<NodeIndex> {
        match self {
            Cluster::Quorum(c) => c.nodes(),
            Cluster::Galera(c) => c.nodes(),
        }
    }

    pub fn targets(&self) -> Vec<Target> {
        match self {
            Cluster::Quorum(c) => c.targets(),
            Cluster::Galera(c) => c.targets(),
        }
    }

    pub fn mariadb_socket(&self, i: NodeIndex) -> Option<PathBuf> {
        match self {
            Cluster::Quorum(c) => c.mariadb_socket(i),
            Cluster::Galera(c) => c.mariadb_socket(i),
        }
    }

    /// Starts every node for the first time.
    pub async fn start_all(&self) -> Result<(), NodesError> {
        match self {
            Cluster::Quorum(c) => c.start_all(),
            Cluster::Galera(c) => c.start_all().await,
        }
    }

    /// Starts every node that is down (after a crash of some or all).
    pub fn start_down(&self) -> Result<(), NodesError> {
        match self {
            Cluster::Quorum(c) => c.start_all(),
            Cluster::Galera(c) => c.start_down(),
        }
    }

    pub fn start(&self, i: NodeIndex) -> Result<(), NodesError> {
        match self {
            Cluster::Quorum(c) => c.start(i),
            Cluster::Galera(c) => c.start(i),
        }
    }

    /// kill -9 of the whole node (QuorumSQL: its quorumsql, whose mariadbd dies with it).
    pub fn kill_node(&self, i: NodeIndex) {
        match self {
            Cluster::Quorum(c) => c.kill_quorumsql(i),
            Cluster::Galera(c) => {
                let _ = c.kill(i);
            }
        }
    }

    /// kill -9 of the node's mariadbd only; `None` if its pid was unknown.
    pub async fn kill_db(&self, i: NodeIndex) -> Option<u32> {
        match self {
            Cluster::Quorum(c) => c.kill_mariadbd(i).await,
            Cluster::Galera(c) => c.kill(i),
        }
    }

    /// SIGSTOP of the node's deciding process (QuorumSQL: quorumsql; Galera: mariadbd).
    pub fn pause(&self, i: NodeIndex) {
        match self {
            Cluster::Quorum(c) => c.pause(i),
            Cluster::Galera(c) => c.pause(i),
        }
    }

    pub fn resume(&self, i: NodeIndex) {
        match self {
            Cluster::Quorum(c) => c.resume(i),
            Cluster::Galera(c) => c.resume(i),
        }
    }

    pub fn heal(&self) -> Result<(), NodesError> {
        match self {
            Cluster::Quorum(c) => c.heal(),
            Cluster::Galera(c) => c.heal(),
        }
    }

    /// The node writes go to, where there is one (Galera: every node takes writes).
    pub async fn master(&self) -> Option<NodeIndex> {
        match self {
            Cluster::Quorum(c) => c.master().await,
            Cluster::Galera(_) => None,
        }
    }

    /// The raft leader as node `i` sees it (QuorumSQL only).
    pub async fn leader_seen_by(&self, i: NodeIndex) -> Option<u64> {
        match self {
            Cluster::Quorum(c) => c.status(i).await.and_then(|s| s.raft_leader),
            Cluster::Galera(_) => None,
        }
    }

    /// The admin address of node `i` (QuorumSQL only).
    pub fn admin_addr(&self, i: NodeIndex) -> Option<SocketAddr> {
        match self {
            Cluster::Quorum(c) => c
                .admin_addrs()
                .into_iter()
                .find(|(n, _)| *n == u64::from(i))
                .map(|(_, a)| a),
            Cluster::Galera(_) => None,
        }
    }

    /// Serving with every node healthy; returns a one-line description.
    pub async fn wait_ready(&self, within: Duration) -> Result<String, NodesError> {
        match self {
            Cluster::Quorum(c) => {
                let n = c.nodes().len();
                c.wait_ready(n, within).await.map(|s| s.verdict)
            }
            Cluster::Galera(c) => c.wait_ready(within).await,
        }
    }

    /// After healing: a master and every node healthy, previously diverged nodes included (the
    /// product rebuilds them from a healthy replica). Waits `within`, and at least
    /// [`REBUILD_RECOVERY_MIN`] once a node was seen diverged or rebuilding while a healthy
    /// donor existed. Returns the nodes still not healthy at the deadline (none when the cluster
    /// is whole), each with its role and problems, and whether a master was up.
    pub async fn wait_recovered(&self, within: Duration) -> Recovery {
        let c = match self {
            Cluster::Quorum(c) => c,
            Cluster::Galera(c) => {
                return match c.wait_ready(within).await {
                    Ok(_) => Recovery::default(),
                    Err(e) => Recovery {
                        master: false,
                        not_healthy: Vec::new(),
                        waited: within,
                        status: e.to_string(),
                    },
                };
            }
        };
        let started = Instant::now();
        let mut rebuild_seen = false;
        loop {
            let st = c.cluster_status().await;
            let not_healthy: Vec<Unrecovered> = st
                .nodes
                .iter()
                .filter(|n| !n.healthy)
                .filter_map(|n| {
                    NodeIndex::try_from(n.id).ok().map(|node| Unrecovered {
                        node,
                        role: n.role.clone(),
                        problems: n.problems.join(" / "),
                    })
                })
                .collect();
            // A node that does not answer is not in `st.nodes` at all.
            let answered = st.nodes.len();
            let expected = c.nodes().len();
            if st.master.is_some() && not_healthy.is_empty() && answered >= expected {
                return Recovery {
                    master: true,
                    not_healthy,
                    waited: started.elapsed(),
                    status: describe(&st),
                };
            }
            rebuild_seen |= not_healthy
                .iter()
                .any(|u| u.role == "diverged" || u.role == "rebuilding")
                && st.nodes.iter().any(|n| n.healthy);
            let limit = if rebuild_seen {
                within.max(REBUILD_RECOVERY_MIN)
            } else {
                within
            };
            if started.elapsed() >= limit {
                let mut not_healthy = not_healthy;
                for i in c.nodes() {
                    if !st.nodes.iter().any(|n| n.id == u64::from(i)) {
                        not_healthy.push(Unrecovered {
                            node: i,
                            role: "unreachable".into(),
                            problems: "its admin port did not answer /status".into(),
                        });
                    }
                }
                return Recovery {
                    master: st.master.is_some(),
                    not_healthy,
                    waited: started.elapsed(),
                    status: describe(&st),
                };
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every node's database applied everything (replication caught up), but for `excluded`
    /// nodes (diverged ones, whose mariadbd stays stopped until rebuilt).
    pub async fn wait_caught_up(
        &self,
        within: Duration,
        excluded: &[NodeIndex],
    ) -> Result<(), String> {
        match self {
            Cluster::Quorum(c) => {
                let deadline = Instant::now() + within;
                loop {
                    let st = c.cluster_status().await;
                    let last = st.nodes.iter().filter_map(|n| n.last_gtid.clone()).max();
                    let caught_up = st
                        .nodes
                        .iter()
                        .filter(|n| !excluded.iter().any(|&x| u64::from(x) == n.id))
                        .all(|n| {
                            n.healthy
                                && last.is_some()
                                && n.applied_gtid.as_deref() == last.as_deref()
                        });
                    if caught_up {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "replicas did not catch up within {within:?}: {}",
                            describe(&st)
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            Cluster::Galera(c) => c.wait_caught_up(within).await,
        }
    }
}
