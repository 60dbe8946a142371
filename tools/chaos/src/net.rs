//! Where the nodes live: one network namespace per node joined by veth pairs and a bridge, so
//! partitions are real; or plain loopback, for machines without namespaces (no partitions).
//!
//! Partitions are blackhole routes inside the node namespaces (`ip route add blackhole PEER/32`):
//! a route drops what a node *sends* to a peer, so one-way partitions come for free and a
//! two-way cut is a route on each side. Clients run in the root namespace and reach every node
//! over the bridge, which a partition between nodes never touches: a client of an isolated node
//! sees what a real client of a partitioned machine would.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use quorumsql_chaos_check::NodeIndex;

/// Names of everything a run creates start with `qsc<K>-` (K = `--net-id`), so a crashed run's
/// leftovers are recognisable and removed by the next run with the same K, and runs with
/// different K (and subnets 10.77.K.0/24) can share a machine.
const HOST_OCTET: u8 = 254;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "network namespaces need root (running as uid {uid}); run as root or use --net loopback"
    )]
    NotRoot { uid: u32 },
    #[error("`ip` (iproute2) is missing or `ip netns` does not work here ({detail}); install iproute2 or use --net loopback")]
    NoNetns { detail: String },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("partitions need --net netns (loopback mode has one network)")]
    NoPartitions,
}

/// The network the cluster runs on.
pub enum Network {
    Netns(Netns),
    Loopback,
}

impl Network {
    /// The address node `i` listens on for clients and peers.
    pub fn node_ip(&self, i: NodeIndex) -> IpAddr {
        match self {
            Network::Netns(n) => Netns::ip(n.id, i),
            Network::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// The command prefix that runs a program inside node `i`'s namespace (empty on loopback).
    pub fn exec_prefix(&self, i: NodeIndex) -> Vec<String> {
        match self {
            Network::Netns(n) => vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                Netns::ns_name(n.id, i),
            ],
            Network::Loopback => Vec::new(),
        }
    }

    pub fn supports_partitions(&self) -> bool {
        matches!(self, Network::Netns(_))
    }

    /// Drop everything `from` sends to `to` (one way).
    pub fn cut(&self, from: NodeIndex, to: NodeIndex) -> Result<(), NetError> {
        match self {
            Network::Netns(n) => n.cut(from, to),
            Network::Loopback => Err(NetError::NoPartitions),
        }
    }

    /// Remove every cut.
    pub fn heal(&self) -> Result<(), NetError> {
        match self {
            Network::Netns(n) => n.heal(),
            Network::Loopback => Ok(()),
        }
    }
}

/// Namespaces `qsc<K>-n1..` with `10.77.K.i/24`, bridged to the root namespace at
/// `10.77.K.254`.
pub struct Netns {
    id: u8,
    nodes: Vec<NodeIndex>,
    cuts: std::sync::Mutex<BTreeSet<(NodeIndex, NodeIndex)>>,
}

fn run(args: &[&str]) -> Result<String, NetError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| NetError::Command {
            command: args.join(" "),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetError::Command {
            command: args.join(" "),
            detail: format!(
                "{} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Netns {
    fn prefix(id: u8) -> String {
        format!("qsc{id}")
    }

    pub fn ns_name(id: u8, i: NodeIndex) -> String {
        format!("{}-n{i}", Self::prefix(id))
    }

    fn bridge(id: u8) -> String {
        format!("{}-br", Self::prefix(id))
    }

    pub fn ip(id: u8, i: NodeIndex) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 77, id, i))
    }

    /// Checks that this machine can do it, removes leftovers of an earlier run, and builds the
    /// namespaces, veth pairs and bridge.
    pub fn create(id: u8, nodes: &[NodeIndex]) -> Result<Netns, NetError> {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            return Err(NetError::NotRoot { uid });
        }
        run(&["ip", "netns", "list"]).map_err(|e| NetError::NoNetns {
            detail: e.to_string(),
        })?;
        remove_leftovers(id);
        let host = format!("10.77.{id}.{HOST_OCTET}/24");
        let bridge = Self::bridge(id);
        let prefix = Self::prefix(id);
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&["ip", "addr", "add", &host, "dev", &bridge])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for &i in nodes {
            let ns = Self::ns_name(id, i);
            let inner = format!("{prefix}-v{i}");
            let outer = format!("{prefix}-p{i}");
            let addr = format!("{}/24", Self::ip(id, i));
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            run(&["ip", "link", "set", &inner, "netns", &ns])?;
            run(&["ip", "link", "set", &outer, "master", &bridge])?;
            run(&["ip", "link", "set", &outer, "up"])?;
            run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            run(&["ip", "-n", &ns, "link", "set", &inner, "up"])?;
        }
        Ok(Netns {
            id,
            nodes: nodes.to_vec(),
            cuts: std::sync::Mutex::new(BTreeSet::new()),
        })
    }

    fn cut(&self, from: NodeIndex, to: NodeIndex) -> Result<(), NetError> {
        let mut cuts = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        if cuts.insert((from, to)) {
            let dst = format!("{}/32", Self::ip(self.id, to));
            run(&[
                "ip",
                "-n",
                &Self::ns_name(self.id, from),
                "route",
                "add",
                "blackhole",
                &dst,
            ])?;
        }
        Ok(())
    }

    fn heal(&self) -> Result<(), NetError> {
        let mut cuts = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        let mut first_err = None;
        for (from, to) in std::mem::take(&mut *cuts) {
            let dst = format!("{}/32", Self::ip(self.id, to));
            if let Err(e) = run(&[
                "ip",
                "-n",
                &Self::ns_name(self.id, from),
                "route",
                "del",
                "blackhole",
                &dst,
            ]) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for &i in &self.nodes {
            kill_namespace_processes(&Self::ns_name(self.id, i));
        }
        remove_leftovers(self.id);
    }
}

/// SIGKILLs every process still running inside a namespace (a node that outlived the harness
/// would keep the namespace's addresses busy for the next run).
fn kill_namespace_processes(ns: &str) {
    if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill has no memory preconditions; a stale pid at worst gets ESRCH.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Removes every namespace and link of runs with this `--net-id`, also a crashed earlier one's.
pub fn remove_leftovers(id: u8) {
    let ns_prefix = format!("{}-n", Netns::prefix(id));
    if let Ok(list) = run(&["ip", "netns", "list"]) {
        for ns in list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&ns_prefix))
        {
            kill_namespace_processes(ns);
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
    // Deleting a namespace deletes its veth end and with it the peer; the bridge stays.
    let _ = run(&["ip", "link", "del", &Netns::bridge(id)]);
}
