//! The RO port and bad input against a real mariadbd: RO refusals and replica-state refusals,
//! garbage, stalled and oversized handshakes, a 16 MiB garbage packet, idle timeout, and
//! thousands of idle connections up to the connection limit.

mod proxy_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use proxy_common::*;
use quorumsql_node::proxy::{ErrorKind, ProxyHandle, ProxyLimits, RoRoute};
use quorumsql_node::sql::SqlConn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start_proxy(server: &Server, limits: ProxyLimits) -> (Arc<FakeOracle>, ProxyHandle) {
    let oracle = FakeOracle::master(1);
    let proxy = ProxyHandle::start(
        config(server.addr(), limits),
        oracle.clone(),
        Arc::new(PlainDialer::default()),
    )
    .await
    .unwrap();
    (oracle, proxy)
}

/// Reads until EOF (bounded); returns what arrived.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let r = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    assert!(
        r.is_ok(),
        "connection not closed within {within:?}; got {out:?}"
    );
    out
}

fn err_code_of(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= 7 && bytes[4] == 0xFF).then(|| u16::from_le_bytes([bytes[5], bytes[6]]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ro_port_refuses_replica_writers_and_serves_reads() {
    let server = Server::start(100);
    let (oracle, proxy) = start_proxy(&server, test_limits()).await;
    let ro = proxy.ro_addr().port();
    let o = cli(ro, "app", APP_PW, "SELECT COUNT(*) FROM t.c").await;
    assert!(o.status.success(), "{}", stderr(&o));
    let mut s = Raw::connect(ro, "raw").await;
    for sql in [
        "ANALYZE TABLE t.c PERSISTENT FOR ALL",
        "optimize table t.c",
        "REPAIR TABLE t.c",
        "FLUSH TABLES",
        "RESET MASTER",
        "PURGE BINARY LOGS BEFORE NOW()",
        "LOCK TABLES t.c READ",
        "SET GLOBAL max_connections=10",
        "XA START 'x'",
        "KILL 1",
        "SHUTDOWN",
    ] {
        let (p, _) = s.query(sql).await.unwrap();
        assert_eq!(p.err_code(), 1235, "{sql}: {:?}", p);
    }
    let (p, _) = s.query("ANALYZE TABLE t.c").await.unwrap();
    assert!(
        p.err_message().contains("read-only port"),
        "{}",
        p.err_message()
    );
    let (_, rows) = s.query("SELECT 3").await.unwrap();
    assert_eq!(rows, vec![vec!["3".to_string()]]);
    let log = server.general_log();
    for bad in [
        "ANALYZE",
        "optimize",
        "FLUSH",
        "RESET",
        "LOCK TABLES",
        "max_connections",
    ] {
        assert!(!log.contains(bad), "{bad} reached mariadbd");
    }
    // A replica that cannot serve refuses new connections, saying why.
    oracle.set_ro(RoRoute::Refuse {
        reason: "replica diverged from the log; rebuild pending".into(),
    });
    let o = cli(ro, "app", APP_PW, "SELECT 1").await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).starts_with(
            "ERROR 1053 (08S01): QuorumSQL: this node's replica cannot serve reads (replica \
             diverged"
        ),
        "{}",
        stderr(&o)
    );
    let p = refused(ro).await;
    assert_eq!((p.err_code(), p.err_state().as_str()), (1053, "08S01"));
    // The session opened before keeps working (roles kills it if it must).
    let (_, rows) = s.query("SELECT 4").await.unwrap();
    assert_eq!(rows, vec![vec!["4".to_string()]]);
    // Promotion step 6: the node closes local RO sessions.
    assert_eq!(proxy.close_local_ro_sessions(), 1);
    let p = read_pkt(&mut s.s).await.unwrap();
    assert_eq!(p.err_code(), 1053);
    let m = proxy.metrics();
    assert_eq!(m.ro.errors_of(ErrorKind::Refused), 12, "{m:?}");
    assert_eq!(m.ro.errors_of(ErrorKind::RoUnavailable), 2, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_and_never_hurts_other_clients() {
    let server = Server::start(100);
    let limits = ProxyLimits {
        handshake_timeout: Duration::from_secs(1),
        ..test_limits()
    };
    let (_oracle, proxy) = start_proxy(&server, limits).await;
    let rw = proxy.rw_addr();
    // A logged-in client that must be unaffected by everything below.
    let mut good = Raw::connect(rw.port(), "raw").await;

    // Random bytes instead of a handshake response.
    let mut s = TcpStream::connect(rw).await.unwrap();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let junk: Vec<u8> = (0..3000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let g = read_pkt(&mut s).await.unwrap();
    assert_eq!(g.payload[0], 10);
    s.write_all(&junk).await.unwrap();
    let rest = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(err_code_of(&rest), Some(1043), "{rest:?}");

    // A TLS request is refused with a clear error.
    let mut s = TcpStream::connect(rw).await.unwrap();
    let mut ssl = ((1u32 << 9) | (1 << 11) | (1 << 15)).to_le_bytes().to_vec();
    ssl.extend_from_slice(&[0; 28]);
    let _ = read_pkt(&mut s).await.unwrap();
    write_pkt(&mut s, 1, &ssl).await;
    let rest = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(err_code_of(&rest), Some(1043));
    assert!(String::from_utf8_lossy(&rest).contains("TLS is not supported"));

    // Truncated handshakes: half a header, half a response, nothing at all. Each is closed
    // with 1043 after the handshake timeout.
    let t = Instant::now();
    let mut stalled = Vec::new();
    for part in [&[0x40u8, 0][..], &[0x40, 0, 0, 1, 0x85, 0xA6][..], &[][..]] {
        let mut s = TcpStream::connect(rw).await.unwrap();
        let _ = read_pkt(&mut s).await.unwrap();
        s.write_all(part).await.unwrap();
        stalled.push(s);
    }
    for mut s in stalled {
        let rest = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert_eq!(err_code_of(&rest), Some(1043), "{rest:?}");
    }
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );

    // A 16 MiB garbage "handshake response" is refused from its header.
    let mut s = TcpStream::connect(rw).await.unwrap();
    let _ = read_pkt(&mut s).await.unwrap();
    s.write_all(&[0xFF, 0xFF, 0xFF, 1]).await.unwrap();
    let _ = s.write_all(&junk).await;
    let rest = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(err_code_of(&rest), Some(1043), "{rest:?}");

    // A 16 MiB garbage command after login is relayed without buffering; mariadbd rejects it.
    let mut big = Raw::connect(rw.port(), "raw").await;
    let mut payload = vec![0xEEu8];
    payload.extend(junk.iter().cycle().take(0xFF_FFFF - 1));
    let writer = tokio::spawn(async move {
        let mut hdr = vec![0xFF, 0xFF, 0xFF, 0];
        hdr.extend_from_slice(&payload);
        hdr.extend_from_slice(&[0, 0, 0, 1]);
        big.s.write_all(&hdr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), read_pkt(&mut big.s))
            .await
            .expect("no answer to the 16 MiB packet")
    });
    let (_, rows) = good.query("SELECT 'still fine'").await.unwrap();
    assert_eq!(rows, vec![vec!["still fine".to_string()]]);
    // mariadbd answers "unknown command" (1047) or "packet too large" (1153).
    let p = writer.await.unwrap().unwrap();
    assert!(matches!(p.err_code(), 1047 | 1153), "{}", p.err_message());

    // A PROXY header on a client port is garbage, not an address claim (only peers send one).
    let mut s = TcpStream::connect(rw).await.unwrap();
    let _ = read_pkt(&mut s).await.unwrap();
    let mut hdr = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A\x21\x11\x00\x0C".to_vec();
    hdr.extend_from_slice(&[10, 9, 8, 7, 127, 0, 0, 1, 0, 80, 0, 80]);
    s.write_all(&hdr).await.unwrap();
    let rest = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(err_code_of(&rest), Some(1043), "{rest:?}");

    // A KILL pipelined behind the handshake response (before the server's OK) is not run.
    let victim = Raw::connect(rw.port(), "raw").await;
    let mut s = TcpStream::connect(rw).await.unwrap();
    let _ = read_pkt(&mut s).await.unwrap();
    let caps: u32 = 1 | (1 << 9) | (1 << 13) | (1 << 15) | (1 << 19);
    let mut r = caps.to_le_bytes().to_vec();
    r.extend_from_slice(&(16u32 << 20).to_le_bytes());
    r.push(45);
    r.extend_from_slice(&[0; 23]);
    r.extend_from_slice(b"raw\0\0mysql_native_password\0");
    let mut both = (r.len() as u32).to_le_bytes()[..3].to_vec();
    both.push(1);
    both.extend_from_slice(&r);
    let kill = format!("\x03KILL {}", victim.connection_id);
    both.extend_from_slice(&(kill.len() as u32).to_le_bytes()[..3]);
    both.push(0);
    both.extend_from_slice(kill.as_bytes());
    s.write_all(&both).await.unwrap();
    let rest = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&rest).contains("bad handshake"),
        "{rest:?}"
    );
    let mut victim = victim;
    let (_, rows) = victim.query("SELECT 'alive'").await.unwrap();
    assert_eq!(rows, vec![vec!["alive".to_string()]]);
    assert!(!server.general_log().contains("KILL"));

    // The proxy is up and the first client unaffected.
    let (_, rows) = good.query("SELECT 1").await.unwrap();
    assert_eq!(rows, vec![vec!["1".to_string()]]);
    let o = cli(rw.port(), "app", APP_PW, "SELECT 2").await;
    assert!(o.status.success(), "{}", stderr(&o));
    let m = proxy.metrics();
    assert_eq!(m.rw.errors_of(ErrorKind::HandshakeTimeout), 3, "{m:?}");
    assert_eq!(m.rw.errors_of(ErrorKind::BadHandshake), 4, "{m:?}");
    assert_eq!(m.rw.errors_of(ErrorKind::TlsRequested), 1, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_with_an_error() {
    let server = Server::start(100);
    let limits = ProxyLimits {
        idle_timeout: Duration::from_millis(800),
        ..test_limits()
    };
    let (_oracle, proxy) = start_proxy(&server, limits).await;
    let mut s = Raw::connect(proxy.rw_addr().port(), "raw").await;
    let (_, rows) = s.query("SELECT 1").await.unwrap();
    assert_eq!(rows.len(), 1);
    // A statement running longer than the idle timeout is not activity... but its result is:
    // keep the test to a plainly idle session.
    let t = Instant::now();
    let p = tokio::time::timeout(Duration::from_secs(5), read_pkt(&mut s.s))
        .await
        .expect("no idle timeout")
        .unwrap();
    assert_eq!(p.err_code(), 1159);
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(proxy.metrics().rw.errors_of(ErrorKind::IdleTimeout), 1);
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_hit_the_limit_and_others_keep_working() {
    const LIMIT: usize = 2000;
    let server = Server::start_with(
        LIMIT as u32 + 100,
        &["--connect-timeout=120", "--thread-stack=196608"],
    );
    let limits = ProxyLimits {
        max_connections_rw: LIMIT,
        handshake_timeout: Duration::from_secs(120),
        ..test_limits()
    };
    let (_oracle, proxy) = start_proxy(&server, limits).await;
    let rw = proxy.rw_addr();
    let mut good = Raw::connect(rw.port(), "raw").await;
    let rss_before = rss_kib();
    let mut idle = Vec::with_capacity(LIMIT);
    // Connections that never answer the greeting (the cheapest slowloris).
    for _ in 0..LIMIT - 1 {
        let mut s = TcpStream::connect(rw).await.unwrap();
        let g = read_pkt(&mut s).await.unwrap();
        assert_eq!(
            g.payload[0],
            10,
            "connection {} not greeted: {:?}",
            idle.len(),
            g
        );
        idle.push(s);
    }
    let rss_after = rss_kib();
    let per_conn = (rss_after.saturating_sub(rss_before)) * 1024 / (LIMIT as u64 - 1);
    eprintln!("idle connections: RSS {rss_before} KiB -> {rss_after} KiB, {per_conn} bytes per connection (client socket + proxy session)");
    assert!(
        per_conn <= 64 * 1024,
        "{per_conn} bytes per idle connection"
    );
    // The excess gets "too many connections" at once, as the answer to its login.
    for _ in 0..19 {
        let p = refused(rw.port()).await;
        assert_eq!((p.err_code(), p.err_state().as_str()), (1040, "08004"));
    }
    let o = cli(rw.port(), "app", APP_PW, "SELECT 1").await;
    assert!(
        stderr(&o).starts_with("ERROR 1040 (08004): Too many connections"),
        "{}",
        stderr(&o)
    );
    // The established client is unaffected.
    let (_, rows) = good.query("SELECT 'ok'").await.unwrap();
    assert_eq!(rows, vec![vec!["ok".to_string()]]);
    let m = proxy.metrics();
    assert_eq!(m.rw.open, LIMIT as u64, "{m:?}");
    assert_eq!(m.rw.errors_of(ErrorKind::TooManyConnections), 20, "{m:?}");
    // Once they go, new clients get in again.
    drop(idle);
    wait_for(Duration::from_secs(30), "idle sessions to close", || {
        proxy.metrics().rw.open == 1
    })
    .await;
    let o = cli(rw.port(), "app", APP_PW, "SELECT 'back'").await;
    assert!(o.status.success(), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadbds_own_refusal_before_its_greeting_reaches_the_client_with_its_code() {
    // max_connections=10 (10.11's minimum): ten clients, plus the slot mariadbd keeps for
    // SUPER (root below).
    let server = Server::start(10);
    let (_oracle, proxy) = start_proxy(&server, test_limits()).await;
    let rw = proxy.rw_addr().port();
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(Raw::connect(rw, "raw").await);
    }
    // Root takes the SUPER slot, and holds it, before any client tries: a client's login racing
    // root's would take that slot itself, root would be refused, and every later client would
    // be refused after its login (08004) rather than before mariadbd's greeting.
    let root = SqlConn::connect_unix(&server.socket, "root", "")
        .await
        .expect("root takes the SUPER slot over the unix socket");
    // Once both slots are taken, mariadbd sends 1040 in place of its greeting; the proxy
    // passes it on as the answer to the client's login, so the CLI shows mariadbd's code.
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        let o = cli(rw, "app", APP_PW, "SELECT 1").await;
        if proxy.metrics().rw.errors_of(ErrorKind::BackendRefused) > 0 {
            break stderr(&o);
        }
        assert!(
            Instant::now() < deadline,
            "mariadbd never refused before its greeting; last: {}",
            stderr(&o)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        err.starts_with("ERROR 1040 (HY000): Too many connections"),
        "{err}"
    );
    let p = refused(rw).await;
    assert_eq!(p.err_code(), 1040, "{}", p.err_message());
    drop(root);
    // The held session is unaffected.
    let (_, rows) = held[0].query("SELECT 'held'").await.unwrap();
    assert_eq!(rows, vec![vec!["held".to_string()]]);
}
