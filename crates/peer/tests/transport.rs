//! The peer transport over real loopback TCP.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quorumsql_peer::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(10);

struct Node {
    net: PeerNet,
    inbox: mpsc::Receiver<Inbound>,
}

async fn listeners(n: usize) -> (Vec<TcpListener>, BTreeMap<NodeId, SocketAddr>) {
    let mut ls = Vec::new();
    let mut addrs = BTreeMap::new();
    for i in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.insert(NodeId(i as u64 + 1), l.local_addr().unwrap());
        ls.push(l);
    }
    (ls, addrs)
}

fn config(id: u64, addrs: &BTreeMap<NodeId, SocketAddr>, secret: &ClusterSecret) -> PeerConfig {
    let mut c = PeerConfig::new(
        NodeId(id),
        addrs[&NodeId(id)],
        addrs.clone(),
        secret.clone(),
    );
    c.handshake_params = b"tick=50ms election=20 heartbeat=2".to_vec();
    c
}

fn start(cfg: PeerConfig, l: TcpListener) -> Node {
    let (net, inbox) = PeerNet::start_on(cfg, l).unwrap();
    Node { net, inbox }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool, state: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for {what}; state: {}", state());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_connected(a: &PeerNet, b: NodeId) {
    wait_for(
        &format!("{} -> {b} connected", a.node_id()),
        || a.peer_status(b).is_some_and(|s| s.connected),
        || format!("{:?}", a.status()),
    )
    .await;
}

async fn recv(inbox: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(DEADLINE, inbox.recv())
        .await
        .expect("no frame within deadline")
        .expect("inbox closed")
}

/// Asserts that nothing arrives for a while (used only after the refusal has been observed, so the
/// wait is a safety margin, not the thing that makes the test pass).
async fn assert_silent(inbox: &mut mpsc::Receiver<Inbound>) {
    if let Ok(Some(i)) = tokio::time::timeout(Duration::from_millis(200), inbox.recv()).await {
        panic!("unexpected frame {i:?}");
    }
}

/// Captures formatted tracing output of the current thread (tests using it run on a
/// current-thread runtime, so every task logs through this subscriber).
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let w = self.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::set_default(sub)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_frames_on_both_lanes() {
    let secret = ClusterSecret::random();
    let (ls, addrs) = listeners(3).await;
    let mut nodes: Vec<Node> = ls
        .into_iter()
        .enumerate()
        .map(|(i, l)| start(config(i as u64 + 1, &addrs, &secret), l))
        .collect();
    for a in &nodes {
        for b in addrs.keys().filter(|b| **b != a.net.node_id()) {
            wait_connected(&a.net, *b).await;
        }
    }
    for a in &nodes {
        for b in a.net.peer_ids() {
            let me = a.net.node_id().0;
            a.net
                .send(b, Frame::raft(format!("bulk {me}->{}", b.0)))
                .unwrap();
            a.net
                .send_urgent(b, Frame::control(format!("urgent {me}->{}", b.0)))
                .unwrap();
        }
    }
    for n in &mut nodes {
        let me = n.net.node_id();
        let mut got = Vec::new();
        for _ in 0..4 {
            let i = recv(&mut n.inbox).await;
            let kind = i.frame.kind;
            got.push((
                i.from,
                kind == FrameKind::Raft,
                String::from_utf8(i.frame.body.to_vec()).unwrap(),
            ));
        }
        got.sort();
        let mut want = Vec::new();
        for from in addrs.keys().filter(|f| **f != me) {
            want.push((*from, false, format!("urgent {}->{}", from.0, me.0)));
            want.push((*from, true, format!("bulk {}->{}", from.0, me.0)));
        }
        want.sort();
        assert_eq!(got, want);
        let st = n.net.status();
        assert!(
            st.values()
                .all(|s| s.connected && s.dropped == 0 && s.last_seen.is_some()),
            "{st:?}"
        );
    }
    for n in &nodes {
        n.net.shutdown().await;
    }
}

#[tokio::test]
async fn wrong_secret_is_refused_logged_and_delivers_nothing() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let (ls, addrs) = listeners(2).await;
    let mut ls = ls.into_iter();
    let mut good = start(
        config(1, &addrs, &ClusterSecret::random()),
        ls.next().unwrap(),
    );
    let intruder = start(
        config(2, &addrs, &ClusterSecret::random()),
        ls.next().unwrap(),
    );
    wait_for(
        "a refused connection",
        || good.net.refused_connections() >= 2,
        || logs.text(),
    )
    .await;
    assert!(!intruder.net.peer_status(NodeId(1)).unwrap().connected);
    assert_eq!(
        intruder.net.send(NodeId(1), Frame::raft(&b"x"[..])),
        Err(SendError::Disconnected(NodeId(1)))
    );
    let stream = intruder
        .net
        .open_stream(NodeId(1), StreamPurpose::Proxy)
        .await;
    assert!(
        matches!(
            stream,
            Err(PeerError::Handshake {
                source: HandshakeError::BadProof { .. },
                ..
            })
        ),
        "{stream:?}"
    );
    assert_silent(&mut good.inbox).await;
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| {
            l.contains("refused peer connection")
                && l.contains("node2 failed to prove the cluster secret")
        })
        .unwrap_or_else(|| panic!("no refusal line naming the reason in:\n{text}"));
    assert!(
        line.contains("WARN") && line.contains("remote=127.0.0.1:"),
        "{line}"
    );
    good.net.shutdown().await;
    intruder.net.shutdown().await;
}

#[tokio::test]
async fn handshake_params_mismatch_is_refused_naming_both_values() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let secret = ClusterSecret::random();
    let (ls, addrs) = listeners(2).await;
    let mut ls = ls.into_iter();
    let mut a = start(config(1, &addrs, &secret), ls.next().unwrap());
    let mut cfg_b = config(2, &addrs, &secret);
    cfg_b.handshake_params = b"tick=100ms election=20 heartbeat=2".to_vec();
    let b = start(cfg_b, ls.next().unwrap());
    wait_for(
        "refusals on both nodes",
        || a.net.refused_connections() >= 1 && b.net.refused_connections() >= 1,
        || logs.text(),
    )
    .await;
    assert!(!a.net.peer_status(NodeId(2)).unwrap().connected);
    assert!(!b.net.peer_status(NodeId(1)).unwrap().connected);
    assert_silent(&mut a.inbox).await;
    let text = logs.text();
    assert!(
        text.lines().any(|l| l.contains("WARN")
            && l.contains("handshake parameters differ")
            && l.contains("tick=50ms election=20 heartbeat=2")
            && l.contains("tick=100ms election=20 heartbeat=2")),
        "{text}"
    );
    a.net.shutdown().await;
    b.net.shutdown().await;
}

/// Connects a raw socket, writes `bytes` and waits until the node closes the connection.
async fn raw_client_is_closed(addr: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = vec![0u8; 64 * 1024];
    let r = tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // The node may have answered a well-formed hello before refusing.
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "node did not close a connection that sent {:?}",
        &bytes[..bytes.len().min(16)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_handshakes_are_refused_and_good_peers_still_served() {
    let secret = ClusterSecret::random();
    let (ls, addrs) = listeners(2).await;
    let mut ls = ls.into_iter();
    let mut a = start(config(1, &addrs, &secret), ls.next().unwrap());
    let b = start(config(2, &addrs, &secret), ls.next().unwrap());
    let target = addrs[&NodeId(1)];

    raw_client_is_closed(target, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    raw_client_is_closed(target, &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]).await;
    let mut bad_magic = 16u32.to_be_bytes().to_vec();
    bad_magic.extend_from_slice(b"XXXX\x01\x01garbage!!!");
    raw_client_is_closed(target, &bad_magic).await;
    let mut bad_version = 16u32.to_be_bytes().to_vec();
    bad_version.extend_from_slice(b"QSQP\x63\x01garbage!!!");
    raw_client_is_closed(target, &bad_version).await;
    let mut bad_body = 16u32.to_be_bytes().to_vec();
    bad_body.extend_from_slice(b"QSQP\x01\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff");
    raw_client_is_closed(target, &bad_body).await;
    wait_for(
        "five refusals",
        || a.net.refused_connections() >= 5,
        || a.net.refused_connections().to_string(),
    )
    .await;

    wait_connected(&b.net, NodeId(1)).await;
    b.net
        .send(NodeId(1), Frame::raft(&b"still here"[..]))
        .unwrap();
    let i = recv(&mut a.inbox).await;
    assert_eq!(
        (i.from, i.frame.body),
        (NodeId(2), Bytes::from_static(b"still here"))
    );
    a.net.shutdown().await;
    b.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_above_the_limit_closes_the_connection_without_delivering_it() {
    let secret = ClusterSecret::random();
    let (ls, addrs) = listeners(2).await;
    let mut ls = ls.into_iter();
    let mut cfg_a = config(1, &addrs, &secret);
    cfg_a.max_frame_bytes = 64 * 1024;
    let mut a = start(cfg_a, ls.next().unwrap());
    let mut cfg_b = config(2, &addrs, &secret);
    cfg_b.max_frame_bytes = 4 << 20;
    let b = start(cfg_b, ls.next().unwrap());
    wait_connected(&b.net, NodeId(1)).await;
    let before = b.net.peer_status(NodeId(1)).unwrap().reconnects;

    b.net
        .send(NodeId(1), Frame::raft(vec![7u8; 512 * 1024]))
        .unwrap();
    wait_for(
        "b to reconnect after a closed the bulk lane",
        || {
            b.net
                .peer_status(NodeId(1))
                .is_some_and(|s| s.reconnects > before && s.connected)
        },
        || format!("{:?}", b.net.status()),
    )
    .await;
    b.net.send(NodeId(1), Frame::raft(&b"small"[..])).unwrap();
    let i = recv(&mut a.inbox).await;
    assert_eq!(
        i.frame.body,
        Bytes::from_static(b"small"),
        "the oversized frame must never be delivered"
    );
    // The sender refuses frames above its own limit locally.
    assert!(matches!(
        b.net.send(NodeId(1), Frame::raft(vec![0u8; 5 << 20])),
        Err(SendError::TooLarge { .. })
    ));
    a.net.shutdown().await;
    b.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_remote_restarts() {
    let secret = ClusterSecret::random();
    let (ls, addrs) = listeners(2).await;
    let mut ls = ls.into_iter();
    let a = start(config(1, &addrs, &secret), ls.next().unwrap());
    let b = start(config(2, &addrs, &secret), ls.next().unwrap());
    wait_connected(&a.net, NodeId(2)).await;
    b.net.shutdown().await;
    drop(b);
    wait_for(
        "a to see b gone",
        || !a.net.peer_status(NodeId(2)).unwrap().connected,
        || format!("{:?}", a.net.status()),
    )
    .await;

    let l = TcpListener::bind(addrs[&NodeId(2)]).await.unwrap();
    let mut b = start(config(2, &addrs, &secret), l);
    wait_connected(&a.net, NodeId(2)).await;
    a.net
        .send(NodeId(2), Frame::raft(&b"after restart"[..]))
        .unwrap();
    let i = recv(&mut b.inbox).await;
    assert_eq!(
        (i.from, i.frame.body),
        (NodeId(1), Bytes::from_static(b"after restart"))
    );
    let st = a.net.peer_status(NodeId(2)).unwrap();
    assert!(st.reconnects >= 2, "both lanes reconnected: {st:?}");
    a.net.shutdown().await;
    b.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_instead_of_blocking() {
    let secret = ClusterSecret::random();
    let (ls, addrs) = listeners(2).await;
    let mut ls = ls.into_iter();
    let mut cfg_a = config(1, &addrs, &secret);
    cfg_a.queue_depth = 4;
    let a = start(cfg_a, ls.next().unwrap());
    let mut cfg_b = config(2, &addrs, &secret);
    cfg_b.inbound_depth = 1;
    // b never reads its inbox: its reader stalls, TCP buffers fill, and a's queue overflows.
    let _b = start(cfg_b, ls.next().unwrap());
    wait_connected(&a.net, NodeId(2)).await;

    let body = Bytes::from(vec![1u8; 64 * 1024]);
    let started = Instant::now();
    let mut refused = 0u64;
    for _ in 0..20_000 {
        match a.net.send(NodeId(2), Frame::raft(body.clone())) {
            Ok(()) => {}
            Err(SendError::QueueFull(_)) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
        if refused > 100 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let took = started.elapsed();
    assert!(refused > 100, "queue never filled");
    assert!(
        took < Duration::from_secs(5),
        "sending took {took:?}: it must never wait for the peer"
    );
    let st = a.net.peer_status(NodeId(2)).unwrap();
    assert_eq!(st.dropped, refused, "{st:?}");
    // The urgent lane is a separate connection and queue: it still accepts frames.
    a.net
        .send_urgent(NodeId(2), Frame::raft(&b"hb"[..]))
        .unwrap();
    a.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_stream_relays_bytes_both_ways() {
    let secret = ClusterSecret::random();
    let (ls, addrs) = listeners(3).await;
    let mut ls = ls.into_iter();
    let a = start(config(1, &addrs, &secret), ls.next().unwrap());
    let b = start(config(2, &addrs, &secret), ls.next().unwrap());
    let c = start(config(3, &addrs, &secret), ls.next().unwrap());
    let mut streams = a.net.take_stream_receiver().unwrap();
    assert!(a.net.take_stream_receiver().is_none());

    let mut out = b
        .net
        .open_stream(NodeId(1), StreamPurpose::Proxy)
        .await
        .unwrap();
    out.write_all(b"ping from b").await.unwrap();
    let mut inc = tokio::time::timeout(DEADLINE, streams.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((inc.from, inc.purpose), (NodeId(2), StreamPurpose::Proxy));
    let mut buf = [0u8; 11];
    inc.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping from b");
    inc.stream.write_all(b"pong from a").await.unwrap();
    out.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong from a");

    // c never took its stream receiver: streams to it are refused, and the dialer is told why.
    let refused = b.net.open_stream(NodeId(3), StreamPurpose::Proxy).await;
    assert!(
        matches!(
            refused,
            Err(PeerError::Handshake {
                source: HandshakeError::Refused(_),
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(matches!(
        b.net.open_stream(NodeId(9), StreamPurpose::Proxy).await,
        Err(PeerError::UnknownPeer(NodeId(9)))
    ));
    for n in [&a, &b, &c] {
        n.net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_handshake_timeout() {
    let (ls, addrs) = listeners(1).await;
    let mut cfg = config(1, &addrs, &ClusterSecret::random());
    cfg.handshake_timeout = Duration::from_millis(300);
    let a = start(cfg, ls.into_iter().next().unwrap());
    let started = Instant::now();
    // Sends nothing at all: only the timeout can end this handshake.
    raw_client_is_closed(addrs[&NodeId(1)], b"").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the timeout"
    );
    wait_for(
        "the refusal count",
        || a.net.refused_connections() == 1,
        || a.net.refused_connections().to_string(),
    )
    .await;
    a.net.shutdown().await;
}
