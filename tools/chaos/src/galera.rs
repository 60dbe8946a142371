//! `--target galera`: the same workloads and faults against a MariaDB Galera cluster (Debian's
//! galera-4), in the same namespaces, so the two systems can be compared side by side.
//!
//! Setup follows what an operator does: bootstrap node 1 (`--wsrep-new-cluster`), stop it
//! cleanly, copy its datadir to the others (mariadbd runs as root here, where Galera's rsync
//! state transfer refuses to work), start node 1 again as the new cluster and let the others
//! join. Settings are Galera's recommended ones plus the same durability as QuorumSQL's nodes
//! (`sync_binlog=1`, `innodb_flush_log_at_trx_commit=1`). Clients use every node as a writer, as
//! a load balancer in front of Galera would; Galera has no read-only port, so the "RO" endpoint
//! of a node is its same port.
//!
//! When every node died at once, Galera forms no primary component by itself: the harness then
//! does the documented manual step, bootstrapping node 1 again (`safe_to_bootstrap: 1`), which is
//! what an operator under pressure does and can lose the transactions only other nodes had.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quorumsql_chaos_check::NodeIndex;
use quorumsql_node::sql::SqlConn;

use crate::net::Network;
use crate::nodes::{signal, NodesError};
use crate::workload::Target;

const LIBGALERA: &str = "/usr/lib/galera/libgalera_smm.so";
const MARIADBD: &str = "/usr/sbin/mariadbd";
const INSTALL_DB: &str = "/usr/bin/mariadb-install-db";

struct GNode {
    dir: PathBuf,
    cnf: PathBuf,
    client: SocketAddr,
    child: Option<Child>,
    paused: bool,
}

impl GNode {
    fn datadir(&self) -> PathBuf {
        self.dir.join("data")
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("mariadb.sock")
    }
    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

pub struct GaleraCluster {
    net: Network,
    nodes: Mutex<BTreeMap<NodeIndex, GNode>>,
    user: String,
    password: String,
}

fn err(what: impl Into<String>) -> NodesError {
    NodesError::Galera(what.into())
}

fn write(path: &Path, text: &str) -> Result<(), NodesError> {
    std::fs::write(path, text).map_err(|source| NodesError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), NodesError> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .map_err(|source| NodesError::Write {
            path: to.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(err(format!(
            "copying {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Sets `safe_to_bootstrap` in a node's grastate.dat.
fn set_safe_to_bootstrap(datadir: &Path, yes: bool) -> Result<(), NodesError> {
    let path = datadir.join("grastate.dat");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let (from, to) = if yes {
        ("safe_to_bootstrap: 0", "safe_to_bootstrap: 1")
    } else {
        ("safe_to_bootstrap: 1", "safe_to_bootstrap: 0")
    };
    write(&path, &text.replace(from, to))
}

impl GaleraCluster {
    pub fn configure(
        dir: &Path,
        net: Network,
        count: NodeIndex,
        user: &str,
        password: &str,
    ) -> Result<GaleraCluster, NodesError> {
        if !Path::new(LIBGALERA).exists() {
            return Err(err(format!(
                "{LIBGALERA} is missing: install galera-4 (apt-get install galera-4)"
            )));
        }
        let loopback = !net.supports_partitions();
        let port = |i: NodeIndex, k: u16| -> u16 {
            if loopback {
                24000 + 10 * (u16::from(i) - 1) + k
            } else {
                4000 + k
            }
        };
        let gcomm: Vec<String> = (1..=count)
            .map(|i| format!("{}:{}", net.node_ip(i), port(i, 7)))
            .collect();
        let mut nodes = BTreeMap::new();
        for i in 1..=count {
            let ndir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(ndir.join("tmp")).map_err(|source| NodesError::Write {
                path: ndir.clone(),
                source,
            })?;
            let ip = net.node_ip(i);
            let cnf = ndir.join("my.cnf");
            let text = format!(
                "[mariadbd]\n\
                 datadir = {data}\n\
                 socket = {sock}\n\
                 pid_file = {dir}/mariadb.pid\n\
                 tmpdir = {dir}/tmp\n\
                 log_error = {dir}/error.log\n\
                 user = root\n\
                 bind_address = {ip}\n\
                 port = {client}\n\
                 server_id = {i}\n\
                 skip_name_resolve\n\
                 log_bin = mysql-bin\n\
                 log_slave_updates = ON\n\
                 binlog_format = ROW\n\
                 binlog_row_image = FULL\n\
                 sync_binlog = 1\n\
                 innodb_flush_log_at_trx_commit = 1\n\
                 innodb_buffer_pool_size = 128M\n\
                 innodb_autoinc_lock_mode = 2\n\
                 max_connections = 500\n\
                 wsrep_on = ON\n\
                 wsrep_provider = {LIBGALERA}\n\
                 wsrep_cluster_name = chaos\n\
                 wsrep_cluster_address = gcomm://{peers}\n\
                 wsrep_node_name = node{i}\n\
                 wsrep_node_address = {ip}:{g}\n\
                 wsrep_node_incoming_address = {ip}:{client}\n\
                 wsrep_provider_options = \"gmcast.listen_addr=tcp://{ip}:{g};ist.recv_addr={ip}:{ist}\"\n\
                 wsrep_sst_receive_address = {ip}:{sst}\n\
                 wsrep_sst_method = mariabackup\n\
                 wsrep_sst_auth = root:\n\
                 wsrep_slave_threads = 4\n",
                data = ndir.join("data").display(),
                sock = ndir.join("mariadb.sock").display(),
                dir = ndir.display(),
                client = port(i, 0),
                peers = gcomm.join(","),
                g = port(i, 7),
                ist = port(i, 8),
                sst = port(i, 9),
            );
            write(&cnf, &text)?;
            nodes.insert(
                i,
                GNode {
                    dir: ndir,
                    cnf,
                    client: SocketAddr::new(ip, port(i, 0)),
                    child: None,
                    paused: false,
                },
            );
        }
        Ok(GaleraCluster {
            net,
            nodes: Mutex::new(nodes),
            user: user.into(),
            password: password.into(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeIndex, GNode>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn net(&self) -> &Network {
        &self.net
    }

    pub fn nodes(&self) -> Vec<NodeIndex> {
        self.lock().keys().copied().collect()
    }

    pub fn targets(&self) -> Vec<Target> {
        self.lock()
            .iter()
            .map(|(&i, n)| Target {
                node: i,
                rw: n.client,
                ro: n.client,
            })
            .collect()
    }

    pub fn mariadb_socket(&self, i: NodeIndex) -> Option<PathBuf> {
        self.lock().get(&i).map(|n| n.socket())
    }

    fn spawn(&self, i: NodeIndex, bootstrap: bool) -> Result<(), NodesError> {
        let mut nodes = self.lock();
        let Some(n) = nodes.get_mut(&i) else {
            return Ok(());
        };
        if n.running() {
            return Ok(());
        }
        let log = n.dir.join("stdout.log");
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|source| NodesError::Write {
                    path: log.clone(),
                    source,
                })
        };
        let mut argv = self.net.exec_prefix(i);
        argv.push(MARIADBD.into());
        argv.push(format!("--defaults-file={}", n.cnf.display()));
        if bootstrap {
            argv.push("--wsrep-new-cluster".into());
        }
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?);
        // SAFETY: prctl in the forked child before exec touches no Rust state.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| NodesError::Spawn {
            node: i,
            binary: PathBuf::from(MARIADBD),
            source,
        })?;
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    /// `wsrep_local_state_comment` of node `i` ("Synced", "Joining", ...), if it answers.
    pub async fn state(&self, i: NodeIndex) -> Option<(String, u64, u64)> {
        let sock = self.mariadb_socket(i)?;
        let mut c = tokio::time::timeout(
            Duration::from_secs(2),
            SqlConn::connect_unix(&sock, "root", ""),
        )
        .await
        .ok()?
        .ok()?;
        let rows = c
            .query("SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_state_comment', 'wsrep_cluster_size', 'wsrep_last_committed')")
            .await
            .ok()?;
        let get = |name: &str| {
            rows.iter()
                .find(|r| r.get_idx(0) == Some(name))
                .and_then(|r| r.get_idx(1))
                .unwrap_or_default()
                .to_string()
        };
        let state = get("wsrep_local_state_comment");
        let size = get("wsrep_cluster_size").parse().unwrap_or(0);
        let last = get("wsrep_last_committed").parse().unwrap_or(0);
        c.quit().await;
        Some((state, size, last))
    }

    async fn wait_synced(&self, i: NodeIndex, within: Duration) -> Result<(), NodesError> {
        let deadline = Instant::now() + within;
        loop {
            let st = self.state(i).await;
            if st.as_ref().is_some_and(|(s, _, _)| s == "Synced") {
                return Ok(());
            }
            let exited = self.lock().get_mut(&i).is_some_and(|n| !n.running());
            if exited || Instant::now() >= deadline {
                let tail = self
                    .lock()
                    .get(&i)
                    .and_then(|n| std::fs::read_to_string(n.dir.join("error.log")).ok())
                    .map(|t| t.lines().rev().take(15).collect::<Vec<_>>().join(" | "))
                    .unwrap_or_default();
                return Err(NodesError::Timeout {
                    what: format!("galera node{i} Synced"),
                    within,
                    status: format!(
                        "state {st:?}, exited {exited}; error log (newest first): {tail}"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Initialises, bootstraps and joins every node (see the module comment).
    pub async fn start_all(&self) -> Result<(), NodesError> {
        let ids = self.nodes();
        let Some(&first) = ids.first() else {
            return Ok(());
        };
        let first_data = self
            .lock()
            .get(&first)
            .map(|n| n.datadir())
            .unwrap_or_default();
        let out = Command::new(INSTALL_DB)
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", first_data.display()))
            .arg("--skip-test-db")
            .output()
            .map_err(|source| NodesError::Spawn {
                node: first,
                binary: PathBuf::from(INSTALL_DB),
                source,
            })?;
        if !out.status.success() {
            return Err(err(format!(
                "mariadb-install-db: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        self.spawn(first, true)?;
        self.wait_synced(first, Duration::from_secs(120)).await?;
        let sock = self.mariadb_socket(first).unwrap_or_default();
        let mut c = SqlConn::connect_unix(&sock, "root", "")
            .await
            .map_err(|e| err(format!("galera node{first}: {e}")))?;
        for stmt in [
            format!(
                "CREATE USER '{}'@'%' IDENTIFIED BY '{}'",
                self.user, self.password
            ),
            format!("GRANT ALL PRIVILEGES ON *.* TO '{}'@'%'", self.user),
        ] {
            c.exec(&stmt)
                .await
                .map_err(|e| err(format!("galera node{first}: {stmt}: {e}")))?;
        }
        c.quit().await;
        self.stop(first);
        for &i in &ids[1..] {
            let data = self.lock().get(&i).map(|n| n.datadir()).unwrap_or_default();
            copy_dir(&first_data, &data)?;
            set_safe_to_bootstrap(&data, false)?;
        }
        self.spawn(first, true)?;
        self.wait_synced(first, Duration::from_secs(120)).await?;
        for &i in &ids[1..] {
            self.spawn(i, false)?;
            self.wait_synced(i, Duration::from_secs(180)).await?;
        }
        Ok(())
    }

    /// Starts node `i`; when no node runs at all, bootstraps it as a new cluster.
    pub fn start(&self, i: NodeIndex) -> Result<(), NodesError> {
        let anyone = self.lock().values_mut().any(|n| n.running());
        if !anyone {
            let data = self.lock().get(&i).map(|n| n.datadir()).unwrap_or_default();
            set_safe_to_bootstrap(&data, true)?;
            return self.spawn(i, true);
        }
        self.spawn(i, false)
    }

    /// Restarts whatever is down: node 1 first when the whole cluster is down.
    pub fn start_down(&self) -> Result<(), NodesError> {
        let ids = self.nodes();
        for i in ids {
            self.start(i)?;
        }
        Ok(())
    }

    /// kill -9 of node `i`'s mariadbd; returns its pid if it was running.
    pub fn kill(&self, i: NodeIndex) -> Option<u32> {
        let mut nodes = self.lock();
        let n = nodes.get_mut(&i)?;
        n.paused = false;
        let mut c = n.child.take()?;
        let pid = c.id();
        let _ = c.kill();
        let _ = c.wait();
        Some(pid)
    }

    fn stop(&self, i: NodeIndex) {
        if let Some(n) = self.lock().get_mut(&i) {
            if let Some(mut c) = n.child.take() {
                signal(c.id(), libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(60);
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn signal(&self, i: NodeIndex, sig: libc::c_int) {
        if let Some(n) = self.lock().get_mut(&i) {
            if let Some(c) = n.child.as_ref() {
                signal(c.id(), sig);
                n.paused = sig == libc::SIGSTOP;
            }
        }
    }

    pub fn pause(&self, i: NodeIndex) {
        self.signal(i, libc::SIGSTOP);
    }

    pub fn resume(&self, i: NodeIndex) {
        self.signal(i, libc::SIGCONT);
    }

    pub fn heal(&self) -> Result<(), NodesError> {
        let paused: Vec<NodeIndex> = self
            .lock()
            .iter()
            .filter(|(_, n)| n.paused)
            .map(|(&i, _)| i)
            .collect();
        for i in paused {
            self.resume(i);
        }
        if let Err(e) = self.net.heal() {
            tracing::warn!("healing partitions: {e}");
        }
        self.start_down()
    }

    /// Every node Synced in one primary component of full size.
    pub async fn wait_ready(&self, within: Duration) -> Result<String, NodesError> {
        let deadline = Instant::now() + within;
        let n = self.nodes().len() as u64;
        loop {
            let mut states = Vec::new();
            for i in self.nodes() {
                states.push((i, self.state(i).await));
            }
            let ok = states.iter().all(|(_, s)| {
                s.as_ref()
                    .is_some_and(|(st, size, _)| st == "Synced" && *size == n)
            });
            let desc = format!("{states:?}");
            if ok {
                return Ok(desc);
            }
            if Instant::now() >= deadline {
                return Err(NodesError::Timeout {
                    what: "every galera node Synced".into(),
                    within,
                    status: desc,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every node applied the same last writeset.
    pub async fn wait_caught_up(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let mut last = Vec::new();
            for i in self.nodes() {
                last.push(self.state(i).await.map(|s| s.2));
            }
            if last.iter().all(|l| l.is_some() && *l == last[0]) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "galera nodes did not reach the same wsrep_last_committed within {within:?}: {last:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn stop_all(&self) {
        for i in self.nodes() {
            self.resume(i);
            let _ = self.kill(i);
        }
    }
}

impl Drop for GaleraCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
