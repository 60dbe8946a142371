//! The QuorumSQL cluster under test: configs, `quorumsql node` processes (each inside its
//! node's namespace), and the levers the nemesis pulls (kill, pause, restart).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quorumsql_chaos_check::NodeIndex;
use quorumsql_node::admin::NodeStatus;
use quorumsql_node::admin_client::{fetch_json, ClusterStatus};
use quorumsql_node::config::{
    generate_secret, member_at, AdminSection, ClusterSection, MariadbSection, NodeConfig,
    NodeSection, RaftSection,
};

use crate::clock::{self, ClockMode, FakeClocks};
use crate::net::Network;
use crate::workload::Target;

/// Port block of a node (the same layout as `quorumsql up`).
const BASE_PORT: u16 = 4000;

#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot render the config of node {node}: {detail}")]
    Render { node: NodeIndex, detail: String },
    #[error("cannot start node {node} ({binary}): {source}")]
    Spawn {
        node: NodeIndex,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Clock(#[from] clock::ClockError),
    #[error("galera: {0}")]
    Galera(String),
    #[error("{what} not reached within {within:?}; last cluster status: {status}")]
    Timeout {
        what: String,
        within: Duration,
        status: String,
    },
}

/// What every node process gets in its environment besides its config.
#[derive(Debug, Clone, Default)]
pub struct NodeProcessEnv {
    /// Extra variables (planted bugs of test builds).
    pub env: Vec<(String, String)>,
    /// libfaketime, only in runs with the `clock-jump` nemesis.
    pub clocks: Option<FakeClocks>,
}

struct NodeProc {
    config_path: PathBuf,
    child: Option<Child>,
    /// SIGSTOPped by the nemesis (resumed on heal).
    paused: bool,
    /// The clock offset (seconds) the running process reads from its faketime file.
    clock_offset: i64,
}

pub struct QuorumCluster {
    binary: PathBuf,
    dir: PathBuf,
    net: Network,
    configs: BTreeMap<NodeIndex, NodeConfig>,
    procs: Mutex<BTreeMap<NodeIndex, NodeProc>>,
    /// Extra environment for every node process (planted bugs of test builds).
    env: Vec<(String, String)>,
    /// libfaketime for every node process, only in runs with the `clock-jump` nemesis.
    clocks: Option<FakeClocks>,
}

/// kill(2) of a process this harness started (a stale pid at worst gets ESRCH).
pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill has no memory preconditions; a stale pid gets ESRCH.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl QuorumCluster {
    /// Writes one config per node under `dir/nodeN/`.
    pub fn configure(
        binary: &Path,
        dir: &Path,
        net: Network,
        nodes: NodeIndex,
        user: &str,
        password: &str,
        process: NodeProcessEnv,
    ) -> Result<QuorumCluster, NodesError> {
        let NodeProcessEnv { env, clocks } = process;
        let loopback = !net.supports_partitions();
        let members: Vec<_> = (1..=nodes)
            .map(|i| {
                // On loopback every node needs its own port block; in namespaces every node
                // has its own addresses and uses the same ports.
                let slot = if loopback { u16::from(i) - 1 } else { 0 };
                let base = if loopback { 24000 } else { BASE_PORT };
                let mut m = member_at(u64::from(i), net.node_ip(i), base, slot);
                // The harness asks every node's admin port from the root namespace.
                m.admin = SocketAddr::new(net.node_ip(i), m.admin.port());
                m
            })
            .collect();
        let secret = generate_secret();
        let mut configs = BTreeMap::new();
        let mut procs = BTreeMap::new();
        for m in &members {
            let i = m.id as NodeIndex;
            let node_dir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).map_err(|source| NodesError::Write {
                path: node_dir.clone(),
                source,
            })?;
            let cfg = NodeConfig {
                node: NodeSection {
                    id: m.id,
                    data_dir: node_dir.join("data"),
                },
                cluster: ClusterSection {
                    name: "chaos".into(),
                    secret: secret.clone(),
                    members: members.clone(),
                },
                mariadb: MariadbSection {
                    bootstrap_user: Some(user.into()),
                    bootstrap_password: Some(password.into()),
                    ..MariadbSection::default()
                },
                raft: RaftSection::default(),
                admin: AdminSection {
                    allow_non_loopback: !loopback,
                },
            };
            let text = cfg.to_toml().map_err(|e| NodesError::Render {
                node: i,
                detail: e.to_string(),
            })?;
            let path = node_dir.join("node.toml");
            std::fs::write(&path, text).map_err(|source| NodesError::Write {
                path: path.clone(),
                source,
            })?;
            configs.insert(i, cfg);
            procs.insert(
                i,
                NodeProc {
                    config_path: path,
                    child: None,
                    paused: false,
                    clock_offset: 0,
                },
            );
        }
        Ok(QuorumCluster {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            net,
            configs,
            procs: Mutex::new(procs),
            env,
            clocks,
        })
    }

    /// The faked-clock mode of node `i`'s quorumsql; `None` when clocks are not faked.
    pub fn clock_mode(&self, i: NodeIndex) -> Option<ClockMode> {
        self.clocks.as_ref().and_then(|c| c.mode(i))
    }

    fn clock_file(&self, i: NodeIndex) -> PathBuf {
        self.dir.join(format!("node{i}")).join("faketime.rc")
    }

    /// The clock offset node `i`'s running quorumsql reads now (0 when not faked).
    pub fn clock_offset(&self, i: NodeIndex) -> i64 {
        self.lock().get(&i).map_or(0, |p| p.clock_offset)
    }

    /// Moves node `i`'s faked clocks to `secs` from real time (lands within libfaketime's
    /// 1 s cache).
    pub fn set_clock_offset(&self, i: NodeIndex, secs: i64) -> Result<(), NodesError> {
        if self.clocks.is_none() {
            return Ok(());
        }
        clock::write_offset(&self.clock_file(i), secs)?;
        if let Some(p) = self.lock().get_mut(&i) {
            p.clock_offset = secs;
        }
        Ok(())
    }

    pub fn net(&self) -> &Network {
        &self.net
    }

    pub fn nodes(&self) -> Vec<NodeIndex> {
        self.configs.keys().copied().collect()
    }

    pub fn targets(&self) -> Vec<Target> {
        self.configs
            .iter()
            .map(|(&i, c)| {
                let me = c.me();
                Target {
                    node: i,
                    rw: me.rw,
                    ro: me.ro,
                }
            })
            .collect()
    }

    pub fn admin_addrs(&self) -> Vec<(u64, SocketAddr)> {
        self.configs
            .iter()
            .map(|(&i, c)| (u64::from(i), c.me().admin))
            .collect()
    }

    /// The mariadbd unix socket of node `i` (unix sockets are not network-namespaced, so the
    /// harness reaches every node's mariadbd directly, as root, for the convergence check).
    pub fn mariadb_socket(&self, i: NodeIndex) -> Option<PathBuf> {
        self.configs
            .get(&i)
            .map(|c| c.node.data_dir.join("mariadb.sock"))
    }

    /// Node `i`'s data dir (its log, its `mariadb/` and what rebuilds set aside).
    pub fn data_dir(&self, i: NodeIndex) -> Option<PathBuf> {
        self.configs.get(&i).map(|c| c.node.data_dir.clone())
    }

    pub fn log_path(&self, i: NodeIndex) -> PathBuf {
        self.dir.join(format!("node{i}")).join("quorumsql.log")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeIndex, NodeProc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts node `i` if it is not running.
    pub fn start(&self, i: NodeIndex) -> Result<(), NodesError> {
        let mut procs = self.lock();
        let Some(p) = procs.get_mut(&i) else {
            return Ok(());
        };
        if let Some(child) = p.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
        }
        let log_path = self.log_path(i);
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|source| NodesError::Write {
                    path: log_path.clone(),
                    source,
                })
        };
        let (out, err) = (open_log()?, open_log()?);
        let mut argv = self.net.exec_prefix(i);
        argv.push(self.binary.display().to_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .arg("node")
            .arg("--config")
            .arg(&p.config_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("RUST_LOG", "info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(clocks) = &self.clocks {
            // A new process starts on real time: its clocks have no earlier reading to jump from.
            let file = self.clock_file(i);
            clock::write_offset(&file, 0)?;
            p.clock_offset = 0;
            for (k, v) in clocks.env(i, &file) {
                cmd.env(k, v);
            }
        }
        // SAFETY: prctl in the forked child before exec touches no Rust state. The signal
        // survives `ip netns exec`'s exec of quorumsql, so a harness that dies takes its nodes
        // (and through theirs, their mariadbd) with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| NodesError::Spawn {
            node: i,
            binary: self.binary.clone(),
            source,
        })?;
        p.child = Some(child);
        p.paused = false;
        Ok(())
    }

    pub fn start_all(&self) -> Result<(), NodesError> {
        for i in self.nodes() {
            self.start(i)?;
        }
        Ok(())
    }

    fn pid(&self, i: NodeIndex) -> Option<u32> {
        self.lock()
            .get_mut(&i)
            .and_then(|p| p.child.as_mut())
            .map(|c| c.id())
    }

    /// kill -9 of node `i`'s quorumsql (its mariadbd dies with it by PDEATHSIG).
    pub fn kill_quorumsql(&self, i: NodeIndex) {
        let mut procs = self.lock();
        if let Some(child) = procs.get_mut(&i).and_then(|p| p.child.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(p) = procs.get_mut(&i) {
            p.child = None;
            p.paused = false;
        }
    }

    /// kill -9 of node `i`'s mariadbd only (its quorumsql sees it die and acts).
    pub async fn kill_mariadbd(&self, i: NodeIndex) -> Option<u32> {
        let status = self.status(i).await?;
        let pid = status.mariadb_pid?;
        signal(pid, libc::SIGKILL);
        Some(pid)
    }

    pub fn pause(&self, i: NodeIndex) {
        if let Some(pid) = self.pid(i) {
            signal(pid, libc::SIGSTOP);
            if let Some(p) = self.lock().get_mut(&i) {
                p.paused = true;
            }
        }
    }

    pub fn resume(&self, i: NodeIndex) {
        if let Some(pid) = self.pid(i) {
            signal(pid, libc::SIGCONT);
        }
        if let Some(p) = self.lock().get_mut(&i) {
            p.paused = false;
        }
    }

    /// Every node running and unpaused, every partition gone.
    pub fn heal(&self) -> Result<(), NodesError> {
        let paused: Vec<NodeIndex> = self
            .lock()
            .iter()
            .filter(|(_, p)| p.paused)
            .map(|(&i, _)| i)
            .collect();
        for i in paused {
            self.resume(i);
        }
        if let Err(e) = self.net.heal() {
            tracing::warn!("healing partitions: {e}");
        }
        self.start_all()
    }

    pub async fn status(&self, i: NodeIndex) -> Option<NodeStatus> {
        let addr = self.configs.get(&i)?.me().admin;
        fetch_json::<NodeStatus>(addr, "/status", Duration::from_secs(2))
            .await
            .ok()
    }

    pub async fn cluster_status(&self) -> ClusterStatus {
        ClusterStatus::gather(&self.admin_addrs(), Duration::from_secs(2)).await
    }

    /// The node that says it is master (newest epoch), if any.
    pub async fn master(&self) -> Option<NodeIndex> {
        self.cluster_status()
            .await
            .master
            .and_then(|m| NodeIndex::try_from(m).ok())
    }

    /// Waits until a master is up and `healthy_needed` nodes are healthy.
    pub async fn wait_ready(
        &self,
        healthy_needed: usize,
        within: Duration,
    ) -> Result<ClusterStatus, NodesError> {
        let deadline = Instant::now() + within;
        loop {
            let st = self.cluster_status().await;
            let healthy = st.nodes.iter().filter(|n| n.healthy).count();
            if st.master.is_some() && healthy >= healthy_needed {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(NodesError::Timeout {
                    what: format!("a master and {healthy_needed} healthy nodes"),
                    within,
                    status: describe(&st),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM every node, then SIGKILL what is left after a grace period.
    pub fn stop_all(&self) {
        let mut procs = self.lock();
        for p in procs.values_mut() {
            if let Some(child) = p.child.as_mut() {
                signal(child.id(), libc::SIGCONT);
                signal(child.id(), libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in procs.values_mut() {
            if let Some(mut child) = p.child.take() {
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() >= deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
        }
    }
}

impl Drop for QuorumCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// One line per node, for error messages.
pub fn describe(st: &ClusterStatus) -> String {
    let mut s = st.verdict.clone();
    for n in &st.nodes {
        s.push_str(&format!(
            "; node{} {} healthy={} last={:?} applied={:?} {}",
            n.id,
            n.role,
            n.healthy,
            n.last_gtid,
            n.applied_gtid,
            n.problems.join(" / ")
        ));
    }
    s
}
