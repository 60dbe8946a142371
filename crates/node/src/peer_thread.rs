//! The peer transport on its own OS thread, under `SCHED_RR` when allowed.
//!
//! Heartbeats, votes and lease rounds travel through the transport's tasks. On the node's main
//! tokio runtime they would wait behind the proxy's relaying and, when the machine's CPU is
//! saturated, behind the fair scheduler (see `quorumsql_log::runtime::realtime`). Here they run
//! on a current-thread runtime of their own, next to the log thread and at the same priority.
//!
//! Sockets the transport accepts (raw streams for the proxy and rebuilds) stay registered with
//! this thread's reactor: their readiness is signalled from here, their bytes are moved by the
//! tasks that own them on the main runtime.

use quorumsql_log::runtime::realtime;
use quorumsql_peer::{Inbound, PeerConfig, PeerError, PeerNet};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Why the transport's thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum PeerThreadError {
    #[error("cannot start the peer transport thread: {0}")]
    Spawn(std::io::Error),
    #[error("cannot build the peer transport's runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("the peer transport thread ended before it answered")]
    Vanished,
}

/// Starts the transport on a new thread named `quorumsql-peer`, under `SCHED_RR` at
/// `realtime_priority` if given and permitted. The thread lives as long as the process.
pub async fn start(
    cfg: PeerConfig,
    realtime_priority: Option<u8>,
) -> Result<(PeerNet, mpsc::Receiver<Inbound>), PeerThreadError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("quorumsql-peer".into())
        .spawn(move || run(cfg, realtime_priority, tx))
        .map_err(PeerThreadError::Spawn)?;
    rx.await.map_err(|_| PeerThreadError::Vanished)?
}

type Started = Result<(PeerNet, mpsc::Receiver<Inbound>), PeerThreadError>;

fn run(cfg: PeerConfig, realtime_priority: Option<u8>, tx: oneshot::Sender<Started>) {
    if let Some(p) = realtime_priority {
        match realtime::make_current_thread_realtime(p) {
            Ok(()) => info!(priority = p, "peer transport thread runs under SCHED_RR"),
            Err(e) => warn!(priority = p, error = %e,
                "cannot run the peer transport under SCHED_RR; it keeps normal priority"),
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Err(PeerThreadError::Runtime(e)));
            return;
        }
    };
    rt.block_on(async move {
        match PeerNet::start(cfg).await {
            Ok((net, inbound)) => {
                if tx.send(Ok((net, inbound))).is_err() {
                    return;
                }
                // The transport's tasks run on this runtime for the life of the process.
                std::future::pending::<()>().await;
            }
            Err(e) => {
                let _ = tx.send(Err(e.into()));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumsql_peer::{ClusterSecret, Frame, FrameKind};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn cfg(
        id: u64,
        listen: std::net::SocketAddr,
        peers: &BTreeMap<quorumsql_peer::NodeId, std::net::SocketAddr>,
    ) -> PeerConfig {
        let secret = ClusterSecret::from_hex("00112233445566778899aabbccddeeff").expect("secret");
        PeerConfig::new(quorumsql_peer::NodeId(id), listen, peers.clone(), secret)
    }

    fn free_addr() -> std::net::SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_cross_between_transports_running_on_their_own_threads() {
        let (a, b) = (free_addr(), free_addr());
        let peers: BTreeMap<_, _> = [
            (quorumsql_peer::NodeId(1), a),
            (quorumsql_peer::NodeId(2), b),
        ]
        .into_iter()
        .collect();
        let (net1, _in1) = start(cfg(1, a, &peers), None).await.expect("node 1");
        let (_net2, mut in2) = start(cfg(2, b, &peers), None).await.expect("node 2");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let _ = net1.send(
                quorumsql_peer::NodeId(2),
                Frame::new(FrameKind::Raft, &b"hello"[..]),
            );
            match tokio::time::timeout(Duration::from_millis(200), in2.recv()).await {
                Ok(Some(got)) => {
                    assert_eq!(got.from, quorumsql_peer::NodeId(1));
                    break;
                }
                Ok(None) => panic!("node 2's inbound channel closed"),
                Err(_) if tokio::time::Instant::now() < deadline => continue,
                Err(_) => panic!("no frame from node 1 within 10 s: {:?}", net1.status()),
            }
        }
    }

    #[tokio::test]
    async fn a_port_in_use_is_an_error_not_a_hang() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let peers: BTreeMap<_, _> = [(quorumsql_peer::NodeId(1), addr)].into_iter().collect();
        match start(cfg(1, addr, &peers), None).await {
            Err(PeerThreadError::Peer(_)) => {}
            other => panic!("expected a bind error, got {:?}", other.map(|_| ())),
        }
    }
}
