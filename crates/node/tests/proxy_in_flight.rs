//! Which error a session gets when the master changes, against a real mariadbd (10.11): a
//! session with nothing in flight (idle after any kind of reply, or whose new command is held
//! by the forwarding rule) gets 1053 / 08S01 "nothing was executed, retry"; only a session
//! whose command is inside mariadbd gets 1053 / 08007 "outcome unknown". The same through a
//! forwarding proxy. `ProxyHandle::rw_in_flight` counts the sessions with a command in flight.

mod proxy_common;

use std::sync::Arc;
use std::time::Duration;

use proxy_common::*;
use quorumsql_node::proxy::{MasterEpoch, ProxyHandle, ProxyLimits, RoRoute, RwRoute};
use quorumsql_peer::NodeId;

const DEPRECATE_EOF: u32 = 1 << 24;

/// Reads packets until the end of a text or binary result set (after its first packet).
async fn finish_result_set(s: &mut Raw, deprecate_eof: bool) {
    let mut eofs = 0;
    loop {
        let p = read_pkt(&mut s.s).await.unwrap();
        assert!(!p.is_err(), "{}", p.err_message());
        let terminator = p.payload[0] == 0xFE
            && if deprecate_eof {
                p.payload.len() < 0xFF_FFFF
            } else {
                p.payload.len() < 9
            };
        if terminator {
            eofs += 1;
            if deprecate_eof || eofs == 2 {
                return;
            }
        }
    }
}

/// Reads `n` packets.
async fn skip(s: &mut Raw, n: usize) {
    for _ in 0..n {
        read_pkt(&mut s.s).await.unwrap();
    }
}

/// Opens sessions that are idle after each kind of reply the relay follows.
async fn idle_sessions(port: u16) -> Vec<(&'static str, Raw)> {
    let mut out = Vec::new();

    let mut s = Raw::connect(port, "raw").await;
    out.push(("fresh login", s));

    s = Raw::connect(port, "raw").await;
    let (p, _) = s
        .query("INSERT INTO t.c (v) VALUES ('idle-ok')")
        .await
        .unwrap();
    assert_eq!(p.payload[0], 0, "{}", p.err_message());
    out.push(("after OK", s));

    s = Raw::connect(port, "raw").await;
    let (p, _) = s.query("SELECT * FROM t.no_such_table").await.unwrap();
    assert!(p.is_err());
    out.push(("after ERR", s));

    s = Raw::connect(port, "raw").await;
    let (_, rows) = s.query("SELECT 1, 'a' UNION SELECT 2, 'b'").await.unwrap();
    assert_eq!(rows.len(), 2);
    out.push(("after a result set with EOF packets", s));

    s = Raw::connect_caps(port, "raw", DEPRECATE_EOF).await;
    let p = s
        .command(b"\x03SELECT 1, 'a' UNION SELECT 2, 'b'")
        .await
        .unwrap();
    assert_eq!(p.payload[0], 2);
    finish_result_set(&mut s, true).await;
    // An empty result set: its OK terminator directly follows the column definitions.
    let p = s.command(b"\x03SELECT 1 FROM DUAL WHERE 0").await.unwrap();
    assert_eq!(p.payload[0], 1);
    finish_result_set(&mut s, true).await;
    out.push(("after result sets with CLIENT_DEPRECATE_EOF", s));

    // Prepare (1 parameter, 1 column: definitions and EOFs follow the OK), then a prepare
    // without parameters, its execute (binary result set) and a close (no reply).
    s = Raw::connect(port, "raw").await;
    let p = s
        .command(b"\x16SELECT 1 FROM DUAL WHERE 1 = ?")
        .await
        .unwrap();
    assert_eq!(p.payload[0], 0, "{}", p.err_message());
    skip(&mut s, 4).await;
    let p = s.command(b"\x16SELECT 42").await.unwrap();
    assert_eq!(p.payload[0], 0, "{}", p.err_message());
    let stmt = p.payload[1..5].to_vec();
    skip(&mut s, 2).await;
    let mut exec = vec![0x17];
    exec.extend_from_slice(&stmt);
    exec.extend_from_slice(&[0, 1, 0, 0, 0]);
    let p = s.command(&exec).await.unwrap();
    assert_eq!(p.payload[0], 1, "{p:?}");
    finish_result_set(&mut s, false).await;
    let mut close = vec![0x19];
    close.extend_from_slice(&stmt);
    write_pkt(&mut s.s, 0, &close).await;
    let p = s.command(&[0x0E]).await.unwrap();
    assert_eq!(p.payload[0], 0, "ping");
    out.push(("after prepare, execute, close and ping", s));

    // A CALL: two results, each with SERVER_MORE_RESULTS_EXISTS, then the final OK.
    s = Raw::connect_caps(port, "raw", DEPRECATE_EOF | (1 << 17)).await;
    let p = s.command(b"\x03CALL t.two_results()").await.unwrap();
    assert_eq!(p.payload[0], 1, "{}", p.err_message());
    finish_result_set(&mut s, true).await;
    let p = read_pkt(&mut s.s).await.unwrap();
    assert_eq!(p.payload[0], 1, "{p:?}");
    finish_result_set(&mut s, true).await;
    let p = read_pkt(&mut s.s).await.unwrap();
    assert_eq!(p.payload[0], 0, "final OK {p:?}");
    out.push(("after a CALL with two results", s));
    out
}

/// Reads the error a closed session got.
async fn closing_error(s: &mut Raw, what: &str) -> Pkt {
    let p = tokio::time::timeout(Duration::from_secs(10), read_pkt(&mut s.s))
        .await
        .unwrap_or_else(|_| panic!("{what}: no error packet after the master change"))
        .unwrap_or_else(|e| panic!("{what}: connection closed without an error: {e}"));
    assert!(p.is_err(), "{what}: {p:?}");
    p
}

fn assert_nothing_executed(p: &Pkt, what: &str) {
    assert_eq!(
        (p.err_code(), p.err_state().as_str()),
        (1053, "08S01"),
        "{what}: {}",
        p.err_message()
    );
    let m = p.err_message();
    assert!(
        m.contains("nothing was executed") || m.contains("not executed"),
        "{what}: {m}"
    );
}

fn assert_outcome_unknown(p: &Pkt, what: &str) {
    assert_eq!(
        (p.err_code(), p.err_state().as_str()),
        (1053, "08007"),
        "{what}: {}",
        p.err_message()
    );
    assert!(p.err_message().contains("unknown outcome"), "{what}");
}

fn create_procedure(server: &Server) {
    server.root(
        "DELIMITER //\nCREATE PROCEDURE IF NOT EXISTS t.two_results() BEGIN SELECT 1; SELECT 2; END//",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_change_tells_idle_sessions_nothing_ran_and_busy_ones_outcome_unknown() {
    let server = Server::start(200);
    create_procedure(&server);
    let oracle = FakeOracle::master(7);
    let limits = ProxyLimits {
        lease_pause: Duration::from_secs(5),
        ..test_limits()
    };
    let proxy = ProxyHandle::start(
        config(server.addr(), limits),
        oracle.clone(),
        Arc::new(PlainDialer::default()),
    )
    .await
    .unwrap();
    let rw = proxy.rw_addr().port();

    let mut idle = idle_sessions(rw).await;
    assert_eq!(proxy.rw_in_flight(), 0, "idle sessions count as in flight");

    // A statement inside mariadbd when the master changes.
    let mut busy = Raw::connect(rw, "raw").await;
    write_pkt(&mut busy.s, 0, b"\x03SELECT SLEEP(5) /* busy-at-change */").await;
    wait_for(Duration::from_secs(5), "the SLEEP to run", || {
        server
            .root("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(5)%'")
            == "1"
    })
    .await;
    assert_eq!(proxy.rw_in_flight(), 1);

    // A new command held by the forwarding rule when the master changes.
    let mut held = Raw::connect(rw, "raw").await;
    oracle.set_lease(false);
    write_pkt(
        &mut held.s,
        0,
        b"\x03INSERT INTO t.c (v) VALUES (CONCAT('held-', 'never-ran'))",
    )
    .await;
    // Whether or not the proxy has read it yet, it must not reach mariadbd: both ways the
    // answer is 08S01. Give it time to be read so the hold is what is exercised.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        proxy.rw_in_flight(),
        1,
        "a held command does not count, the busy one does"
    );

    oracle.set_rw(RwRoute::Local {
        master_epoch: MasterEpoch(9),
    });
    for (what, s) in idle.iter_mut() {
        let p = closing_error(s, what).await;
        assert_nothing_executed(&p, what);
    }
    let p = closing_error(&mut held, "held").await;
    assert_nothing_executed(&p, "held");
    assert_eq!(p.seq, 1, "the ERR answers the held command");
    let p = closing_error(&mut busy, "busy").await;
    assert_outcome_unknown(&p, "busy");
    assert_eq!(
        server.root("SELECT COUNT(*) FROM t.c WHERE v = 'held-never-ran'"),
        "0"
    );
    wait_for(
        Duration::from_secs(5),
        "the in-flight count to drop",
        || proxy.rw_in_flight() == 0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_sessions_get_the_masters_answer() {
    let server = Server::start(200);
    create_procedure(&server);
    let master_oracle = FakeOracle::master(3);
    let master = Arc::new(
        ProxyHandle::start(
            config(
                server.addr(),
                ProxyLimits {
                    lease_pause: Duration::from_secs(5),
                    ..test_limits()
                },
            ),
            master_oracle.clone(),
            Arc::new(PlainDialer::default()),
        )
        .await
        .unwrap(),
    );
    let master_peer = peer_listener(master.clone(), NodeId(2)).await;
    let dialer = Arc::new(PlainDialer::default());
    dialer.peers.lock().insert(NodeId(1), master_peer);
    let fwd_oracle = FakeOracle::new(
        RwRoute::Forward { to: NodeId(1) },
        RoRoute::Forward { to: NodeId(1) },
    );
    let forwarder = ProxyHandle::start(
        config(
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            test_limits(),
        ),
        fwd_oracle.clone(),
        dialer,
    )
    .await
    .unwrap();
    let frw = forwarder.rw_addr().port();

    let mut idle = idle_sessions(frw).await;
    let mut busy = Raw::connect(frw, "raw").await;
    write_pkt(&mut busy.s, 0, b"\x03SELECT SLEEP(5) /* fwd-busy */").await;
    wait_for(Duration::from_secs(5), "the SLEEP to run", || {
        master.rw_in_flight() == 1
    })
    .await;
    let mut held = Raw::connect(frw, "raw").await;
    master_oracle.set_lease(false);
    write_pkt(
        &mut held.s,
        0,
        b"\x03INSERT INTO t.c (v) VALUES (CONCAT('fwd-held-', 'never-ran'))",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The forwarding node learns of the new master first: it closes its idle sessions at once
    // and lets the master's proxy answer the ones with a command in flight.
    fwd_oracle.set_rw(RwRoute::Forward { to: NodeId(9) });
    for (what, s) in idle.iter_mut() {
        let p = closing_error(s, what).await;
        assert_nothing_executed(&p, what);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    master_oracle.set_rw(RwRoute::Forward { to: NodeId(9) });
    let p = closing_error(&mut held, "held").await;
    assert_nothing_executed(&p, "held");
    let p = closing_error(&mut busy, "busy").await;
    assert_outcome_unknown(&p, "busy");
    assert_eq!(
        server.root("SELECT COUNT(*) FROM t.c WHERE v = 'fwd-held-never-ran'"),
        "0"
    );
    wait_for(
        Duration::from_secs(5),
        "the in-flight count to drop",
        || master.rw_in_flight() == 0,
    )
    .await;
}
