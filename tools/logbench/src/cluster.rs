//! A cluster of logd processes on loopback, for the bench and the real-process tests. Dropping it
//! SIGKILLs every process it started, so a failing test never leaves nodes behind.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::protocol::{NodeStatus, Request, Response};

/// One node's addresses and directory.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u64,
    pub peer_addr: SocketAddr,
    pub client_addr: SocketAddr,
    pub dir: PathBuf,
}

pub struct Cluster {
    bin: PathBuf,
    secret: String,
    nodes: Vec<NodeSpec>,
    children: Vec<Option<Child>>,
    extra_args: Vec<String>,
}

/// A free loopback port: bind port 0 and release it. Another process could take it before logd
/// binds it; the window is microseconds and a clash fails loudly (logd exits, the wait times out).
fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl Cluster {
    /// Plans `n` nodes with data directories under `base`; starts nothing.
    pub fn new(bin: &Path, base: &Path, n: u64) -> std::io::Result<Cluster> {
        let mut nodes = Vec::new();
        for id in 1..=n {
            let dir = base.join(format!("node{id}"));
            std::fs::create_dir_all(&dir)?;
            nodes.push(NodeSpec {
                id,
                peer_addr: free_addr()?,
                client_addr: free_addr()?,
                dir,
            });
        }
        let children = nodes.iter().map(|_| None).collect();
        Ok(Cluster {
            bin: bin.to_path_buf(),
            secret: hex_secret(),
            nodes,
            children,
            extra_args: Vec::new(),
        })
    }

    /// Extra flags passed to every logd started from now on.
    pub fn set_extra_args(&mut self, args: Vec<String>) {
        self.extra_args = args;
    }

    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    fn peers_arg(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `i` (0-based) with its output appended to `<dir>/logd.log`.
    pub fn start(&mut self, i: usize) -> std::io::Result<()> {
        let n = &self.nodes[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(n.dir.join("logd.log"))?;
        let child = Command::new(&self.bin)
            .arg("logd")
            .args(["--id", &n.id.to_string()])
            .args(["--peers", &self.peers_arg()])
            .args(["--listen", &n.peer_addr.to_string()])
            .args(["--client-listen", &n.client_addr.to_string()])
            .arg("--dir")
            .arg(n.dir.join("log"))
            .args(["--secret", &self.secret])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children[i] = Some(child);
        Ok(())
    }

    pub fn start_all(&mut self) -> std::io::Result<()> {
        for i in 0..self.nodes.len() {
            self.start(i)?;
        }
        Ok(())
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        match self.children[i].as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// The last `lines` lines of every node's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(n.dir.join("logd.log")).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "---- node{} log (last {lines} lines) ----\n",
                n.id
            ));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Status of node `i`, or `None` if it does not answer.
    pub async fn status(&self, i: usize) -> Option<NodeStatus> {
        let mut c = Client::connect(self.nodes[i].client_addr).await.ok()?;
        match c.call(&Request::Status, Duration::from_secs(2)).await {
            Ok(Response::Status(s)) => Some(s),
            _ => None,
        }
    }

    /// Waits until exactly one of the running nodes in `among` is master and returns its index.
    pub async fn wait_master(
        &mut self,
        among: &[usize],
        deadline: Duration,
    ) -> Result<usize, String> {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            seen.clear();
            let mut masters = Vec::new();
            for &i in among {
                let st = self.status(i).await;
                if st.as_ref().is_some_and(|s| s.is_master) {
                    masters.push(i);
                }
                seen.push((i, st));
            }
            if masters.len() == 1 {
                return Ok(masters[0]);
            }
            if start.elapsed() > deadline {
                return Err(format!(
                    "no single master within {deadline:?}; statuses: {seen:?}"
                ));
            }
            for &i in among {
                if !self.is_running(i) {
                    return Err(format!(
                        "node{} exited; statuses: {seen:?}\n{}",
                        i + 1,
                        self.log_tails(30)
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

fn hex_secret() -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for _ in 0..32 {
        let _ = write!(s, "{:02x}", rand::random::<u8>());
    }
    s
}
