//! Rough cost of the proxy hop against a real mariadbd: round trips of `SELECT 1` and a bulk
//! result, direct vs through the RW port vs through a forwarder and the master's proxy.
//! Run with `cargo test --release -p quorumsql-node --test proxy_bench -- --ignored --nocapture`.

mod proxy_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use proxy_common::*;
use quorumsql_node::proxy::{ProxyHandle, RoRoute, RwRoute};
use quorumsql_peer::NodeId;

async fn round_trips(port: u16, n: usize) -> Duration {
    let mut c = Raw::connect(port, "raw").await;
    let t = Instant::now();
    for _ in 0..n {
        let (_, rows) = c.query("SELECT 1").await.unwrap();
        assert_eq!(rows.len(), 1);
    }
    t.elapsed()
}

async fn bulk(port: u16) -> (Duration, usize) {
    let mut c = Raw::connect(port, "raw").await;
    let t = Instant::now();
    let (_, rows) = c
        .query("SELECT REPEAT('x', 200) FROM t.seq_1_to_200000")
        .await
        .unwrap();
    assert_eq!(rows.len(), 200_000);
    (t.elapsed(), rows.len() * 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; prints numbers"]
async fn proxy_overhead() {
    let server = Server::start(200);
    let master = Arc::new(
        ProxyHandle::start(
            config(server.addr(), test_limits()),
            FakeOracle::master(1),
            Arc::new(PlainDialer::default()),
        )
        .await
        .unwrap(),
    );
    let peer = peer_listener(master.clone(), NodeId(2)).await;
    let dialer = Arc::new(PlainDialer::default());
    dialer.peers.lock().insert(NodeId(1), peer);
    let fwd = ProxyHandle::start(
        config(server.addr(), test_limits()),
        FakeOracle::new(RwRoute::Forward { to: NodeId(1) }, RoRoute::Local),
        dialer,
    )
    .await
    .unwrap();
    const N: usize = 5000;
    for (name, port) in [
        ("direct", server.port),
        ("master proxy", master.rw_addr().port()),
        ("forwarder + master proxy", fwd.rw_addr().port()),
    ] {
        let rt = round_trips(port, N).await;
        let (bt, bytes) = bulk(port).await;
        eprintln!(
            "{name:>26}: SELECT 1 {:>6.1} us/round trip; bulk {:>6.1} MB/s ({} MB)",
            rt.as_secs_f64() * 1e6 / N as f64,
            bytes as f64 / bt.as_secs_f64() / 1e6,
            bytes / 1_000_000
        );
    }
}
