//! Asking nodes' admin ports for their status, and the cluster verdict built from the answers.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admin::NodeStatus;

/// The whole cluster as seen by asking every member. `master`, `nodes[].id`, `role`,
/// `last_gtid`, `applied_gtid` and `healthy` are a stable interface for scripts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub master: Option<u64>,
    pub nodes: Vec<NodeStatus>,
    /// How many more node failures the cluster survives right now.
    pub tolerates_failures: usize,
    pub verdict: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP answer is malformed: {0}")]
    Malformed(String),
    #[error("HTTP status {0}")]
    Status(u16),
}

/// A minimal HTTP/1.1 GET of a JSON document (admin ports are loopback and tiny; a whole HTTP
/// client stack would be all weight and no help).
pub async fn fetch_json<T: DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<T, AdminClientError> {
    let (code, body) = request(addr, "GET", path, timeout).await?;
    if code != 200 {
        return Err(AdminClientError::Status(code));
    }
    serde_json::from_str(&body).map_err(|e| AdminClientError::Malformed(e.to_string()))
}

/// One HTTP/1.1 request without a body; returns the status code and the (de-chunked) body
/// whatever the status, so callers can read a JSON error.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), AdminClientError> {
    let body = tokio::time::timeout(timeout, async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        // Status documents are small; refuse to buffer anything absurd.
        (&mut s).take(16 << 20).read_to_end(&mut buf).await?;
        Ok::<_, AdminClientError>(buf)
    })
    .await
    .map_err(|_| AdminClientError::Timeout(timeout))??;
    let text = String::from_utf8_lossy(&body);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| AdminClientError::Malformed("no header end".into()))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| AdminClientError::Malformed("no status code".into()))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)?
    } else {
        rest.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> Result<String, AdminClientError> {
    let mut out = String::new();
    loop {
        let (size, rest) = s
            .split_once("\r\n")
            .ok_or_else(|| AdminClientError::Malformed("bad chunk".into()))?;
        let n = usize::from_str_radix(size.trim(), 16)
            .map_err(|_| AdminClientError::Malformed("bad chunk size".into()))?;
        if n == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..n)
            .ok_or_else(|| AdminClientError::Malformed("short chunk".into()))?;
        out.push_str(chunk);
        s = rest.get(n + 2..).unwrap_or("");
    }
}

impl ClusterStatus {
    /// Asks every member (concurrently) and builds the verdict.
    pub async fn gather(members: &[(u64, SocketAddr)], timeout: Duration) -> ClusterStatus {
        let asks = members.iter().map(|&(id, addr)| async move {
            match fetch_json::<NodeStatus>(addr, "/status", timeout).await {
                Ok(s) => s,
                Err(e) => NodeStatus {
                    id,
                    role: "unreachable".into(),
                    healthy: false,
                    problems: vec![format!("admin {addr}: {e}")],
                    ..NodeStatus::default()
                },
            }
        });
        let nodes = futures::future::join_all(asks).await;
        ClusterStatus::from_nodes(nodes)
    }

    /// The verdict: a master that every reachable node agrees on, and how many failures a
    /// majority can still absorb.
    pub fn from_nodes(nodes: Vec<NodeStatus>) -> ClusterStatus {
        let total = nodes.len();
        let healthy = nodes.iter().filter(|n| n.healthy).count();
        let majority = total / 2 + 1;
        // The master is the node that says it is master; the newest epoch wins if two claim it
        // (the older one is about to find out it was deposed).
        let master = nodes
            .iter()
            .filter(|n| n.role == "master")
            .max_by_key(|n| n.epoch)
            .map(|n| n.id);
        let tolerates = healthy.saturating_sub(majority);
        let verdict = match master {
            Some(m) if healthy == total => format!(
                "cluster ok: master node{m}, {healthy}/{total} nodes, tolerates {tolerates} failure{}",
                if tolerates == 1 { "" } else { "s" }
            ),
            Some(m) if healthy >= majority => format!(
                "cluster degraded: master node{m}, {healthy}/{total} nodes healthy, tolerates {tolerates} more failure{}",
                if tolerates == 1 { "" } else { "s" }
            ),
            Some(m) => format!(
                "cluster at risk: master node{m} but only {healthy}/{total} nodes healthy"
            ),
            None if healthy >= majority => format!(
                "cluster electing: no master yet, {healthy}/{total} nodes healthy"
            ),
            None => format!("cluster down: no master, {healthy}/{total} nodes healthy"),
        };
        ClusterStatus {
            master,
            nodes,
            tolerates_failures: tolerates,
            verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, role: &str, healthy: bool) -> NodeStatus {
        NodeStatus {
            id,
            role: role.into(),
            healthy,
            ..NodeStatus::default()
        }
    }

    #[test]
    fn verdicts() {
        let ok = ClusterStatus::from_nodes(vec![
            node(1, "replica", true),
            node(2, "master", true),
            node(3, "replica", true),
        ]);
        assert_eq!(ok.master, Some(2));
        assert_eq!(
            ok.verdict,
            "cluster ok: master node2, 3/3 nodes, tolerates 1 failure"
        );
        let degraded = ClusterStatus::from_nodes(vec![
            node(1, "unreachable", false),
            node(2, "master", true),
            node(3, "replica", true),
        ]);
        assert!(
            degraded.verdict.starts_with("cluster degraded"),
            "{}",
            degraded.verdict
        );
        assert_eq!(degraded.tolerates_failures, 0);
        let down = ClusterStatus::from_nodes(vec![
            node(1, "unreachable", false),
            node(2, "replica", true),
            node(3, "unreachable", false),
        ]);
        assert_eq!(down.master, None);
        assert!(down.verdict.starts_with("cluster down"), "{}", down.verdict);
    }
}
