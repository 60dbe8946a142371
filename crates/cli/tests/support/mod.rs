//! Real-process cluster harness: writes configs with `quorumsql up --configs-only`, runs each
//! `quorumsql node` as its own child process (so a test can kill -9, SIGSTOP or restart one), asks
//! the admin ports for status, and talks SQL with the `mariadb` command-line client.
//!
//! Every process is killed when the `Cluster` is dropped, also when a test fails.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quorumsql_node::admin::NodeStatus;
use quorumsql_node::admin_client::ClusterStatus;
use quorumsql_node::config::NodeConfig;

pub const USER: &str = "quorum";
pub const PASSWORD: &str = "quorum";

pub struct Node {
    pub id: u64,
    pub config_path: PathBuf,
    pub config: NodeConfig,
    pub child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub base_port: u16,
    pub nodes: Vec<Node>,
    pub rt: tokio::runtime::Runtime,
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quorumsql"))
}

/// A base port P such that P .. P+10n+6 are all free right now.
pub fn free_base_port(n: u64) -> u16 {
    let start = 20_000 + (std::process::id() % 200) as u16 * 100;
    let mut p = start;
    loop {
        let all_free =
            (0..(10 * n as u16 + 6)).all(|k| TcpListener::bind(("127.0.0.1", p + k)).is_ok());
        if all_free {
            return p;
        }
        p = if p > 60_000 { 20_000 } else { p + 100 };
    }
}

impl Cluster {
    /// Writes configs for `n` nodes and starts every node.
    pub fn start(n: u64) -> Cluster {
        Cluster::start_with(n, |_| {})
    }

    /// Like [`Cluster::start`], with every node's config changed by `edit` first.
    pub fn start_with(n: u64, edit: impl Fn(&mut NodeConfig)) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("quorumsql-test-")
            .tempdir()
            .expect("temp dir");
        let base_port = free_base_port(n);
        let out = Command::new(bin())
            .args(["up", "--configs-only", "--nodes"])
            .arg(n.to_string())
            .arg("--dir")
            .arg(dir.path())
            .arg("--base-port")
            .arg(base_port.to_string())
            .output()
            .expect("run quorumsql up --configs-only");
        assert!(
            out.status.success(),
            "quorumsql up --configs-only failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let nodes = (1..=n)
            .map(|id| {
                let config_path = dir.path().join(format!("node{id}.toml"));
                let mut config = NodeConfig::load(&config_path).expect("config written by up");
                edit(&mut config);
                let text = config.to_toml().expect("config serialises");
                std::fs::write(&config_path, text).expect("write edited config");
                Node {
                    id,
                    config_path,
                    config,
                    child: None,
                }
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut c = Cluster {
            dir,
            base_port,
            nodes,
            rt,
        };
        for id in 1..=n {
            c.start_node(id);
        }
        c
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    pub fn start_node(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("node log");
        let log2 = log.try_clone().expect("node log");
        let path = self.node(id).config_path.clone();
        let child = Command::new(bin())
            .arg("node")
            .arg("--config")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn quorumsql node");
        self.node_mut(id).child = Some(child);
    }

    /// kill -9 of the node's quorumsql process (its mariadbd dies with it by PDEATHSIG).
    pub fn kill_node(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal_node(&self, id: u64, sig: libc::c_int) {
        if let Some(child) = &self.node(id).child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, sig);
            }
        }
    }

    pub fn status(&self) -> ClusterStatus {
        let members: Vec<(u64, SocketAddr)> = self
            .nodes
            .iter()
            .map(|n| (n.id, n.config.me().admin))
            .collect();
        self.rt
            .block_on(ClusterStatus::gather(&members, Duration::from_secs(1)))
    }

    pub fn node_status(&self, id: u64) -> Option<NodeStatus> {
        self.status()
            .nodes
            .into_iter()
            .find(|n| n.id == id && n.role != "unreachable")
    }

    /// Waits until `pred` holds for the cluster status; panics with the last status seen.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&ClusterStatus) -> bool,
    ) -> ClusterStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last status:\n{}\nlogs in {}",
                    serde_json::to_string_pretty(&s).unwrap_or_default(),
                    self.dir.path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for a master that every node agrees on (`cluster ok`).
    pub fn wait_healthy(&self, timeout: Duration) -> u64 {
        let s = self.wait_until("a healthy cluster with a master", timeout, |s| {
            s.verdict.starts_with("cluster ok")
        });
        s.master.expect("ok verdict has a master")
    }

    pub fn rw_port(&self, id: u64) -> u16 {
        self.node(id).config.me().rw.port()
    }

    pub fn ro_port(&self, id: u64) -> u16 {
        self.node(id).config.me().ro.port()
    }

    /// The node's own mariadbd socket (root, unix_socket auth): for checks behind the proxy.
    pub fn mariadb_socket(&self, id: u64) -> PathBuf {
        self.node(id).config.node.data_dir.join("mariadb.sock")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(child) = &mut n.child {
                // SIGCONT first: a stopped process cannot die of SIGKILL until it is reaped.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // mariadbd children die by PDEATHSIG; make sure no one is left holding our datadirs.
        kill_mariadbd_under(self.dir.path());
        if std::thread::panicking() {
            // Keep the node logs and data of a failing test for the post-mortem.
            let kept = std::mem::replace(
                &mut self.dir,
                tempfile::Builder::new().tempdir().expect("temp dir"),
            )
            .keep();
            eprintln!("test failed: node logs and data kept in {}", kept.display());
        }
    }
}

/// SIGKILLs every mariadbd whose command line names a path under `dir`.
pub fn kill_mariadbd_under(dir: &Path) {
    let needle = dir.display().to_string();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd);
                if cmd.contains("mariadbd") && cmd.contains(&needle) {
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

/// Runs SQL through a MySQL port with the `mariadb` client; `Err` carries the client's stderr
/// (which starts with `ERROR <code>`).
pub fn sql_tcp(port: u16, sql: &str) -> Result<String, String> {
    mariadb_cli(
        &[
            "-h127.0.0.1".into(),
            "--protocol=tcp".into(),
            format!("-P{port}"),
            format!("-u{USER}"),
            format!("-p{PASSWORD}"),
            "--connect-timeout=5".into(),
        ],
        sql,
    )
}

/// Runs SQL as root on a node's own mariadbd socket (bypassing QuorumSQL).
pub fn sql_socket(socket: &Path, sql: &str) -> Result<String, String> {
    mariadb_cli(
        &["-uroot".into(), format!("--socket={}", socket.display())],
        sql,
    )
}

fn mariadb_cli(args: &[String], sql: &str) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args(["-N", "-B"])
        .args(args)
        .arg("-e")
        .arg(sql)
        .output()
        .map_err(|e| format!("cannot run mariadb: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Polls `f` until it returns `Ok`, or panics with the last error after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last error: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
