//! `KILL QUERY` of a session whose COMMIT waits for its semi-sync ACK (DESIGN §4, design review
//! finding 1): run by mariadbd, it would release the wait, commit the transaction locally and
//! tell its client "OK" although the log never accepted it. Through the proxy the waiting
//! client gets an "outcome unknown" error, mariadbd never sees the KILL, and the transaction
//! stays prepared and invisible.
//!
//! The ACK never comes because mariadbd runs as a semi-sync master with no replica at all
//! (AFTER_SYNC, infinite timeout, `wait_no_slave=ON`: DESIGN §5), which is what a master whose
//! capture is blocked looks like to its clients.

mod proxy_common;

use std::sync::Arc;
use std::time::Duration;

use proxy_common::*;
use quorumsql_node::proxy::{ErrorKind, ProxyHandle};
use quorumsql_peer::NodeId;

/// mariadbd's state for a session waiting for the ACK (10.11).
const WAITING: &str = "Waiting for semi-sync ACK from slave";

fn state_of(server: &Server, thread_id: u32) -> String {
    server.root(&format!(
        "SELECT IFNULL(STATE, '') FROM information_schema.PROCESSLIST WHERE ID = {thread_id}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_query_of_a_commit_waiting_for_its_ack_is_never_a_false_ok() {
    let server = Server::start_with(
        100,
        &[
            "--log-bin=mysql-bin",
            "--server-id=1",
            "--binlog-format=ROW",
            "--sync-binlog=1",
        ],
    );
    server.root(
        "CREATE TABLE t.w (id INT PRIMARY KEY, v INT) ENGINE=InnoDB;
         INSERT INTO t.w VALUES (1, 0);",
    );
    // From now on every commit waits for an ACK that never comes. (Setting these is not
    // binlogged; the setup above committed before.)
    server.root(
        "SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC,
                    rpl_semi_sync_master_timeout = 18446744073709551615,
                    rpl_semi_sync_master_wait_no_slave = ON,
                    rpl_semi_sync_master_enabled = ON",
    );
    let oracle = FakeOracle::master(5);
    let master = Arc::new(
        ProxyHandle::start(
            config(server.addr(), test_limits()),
            oracle.clone(),
            Arc::new(PlainDialer::default()),
        )
        .await
        .unwrap(),
    );
    let rw = master.rw_addr().port();

    // The victim's autocommit UPDATE reaches the binlog and waits for its ACK.
    let mut victim = Raw::connect(rw, "raw").await;
    write_pkt(&mut victim.s, 0, b"\x03UPDATE t.w SET v = 100 WHERE id = 1").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = state_of(&server, victim.connection_id);
        if st == WAITING {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the UPDATE never waited for its ACK; state {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The same user runs KILL QUERY through a forwarding node's proxy (the common case: its
    // driver's query timeout fires on another connection of its pool).
    let master_peer = peer_listener(master.clone(), NodeId(2)).await;
    let dialer = Arc::new(PlainDialer::default());
    dialer.peers.lock().insert(NodeId(1), master_peer);
    let forwarder = ProxyHandle::start(
        config(
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            test_limits(),
        ),
        FakeOracle::new(
            quorumsql_node::proxy::RwRoute::Forward { to: NodeId(1) },
            quorumsql_node::proxy::RoRoute::Forward { to: NodeId(1) },
        ),
        dialer,
    )
    .await
    .unwrap();
    let mut killer = Raw::connect(forwarder.rw_addr().port(), "raw").await;
    let (p, _) = killer
        .query(&format!("KILL QUERY {}", victim.connection_id))
        .await
        .unwrap();
    assert_eq!(p.payload[0], 0, "KILL QUERY answered {p:?}");

    // The victim learns that its outcome is unknown: never an OK.
    let p = tokio::time::timeout(Duration::from_secs(5), read_pkt(&mut victim.s))
        .await
        .expect("the waiting client got no answer after KILL QUERY")
        .unwrap();
    assert!(
        p.is_err(),
        "the waiting client got {:?} instead of an error",
        p.payload
    );
    assert_eq!((p.err_code(), p.err_state().as_str()), (1927, "08007"));
    assert!(
        p.err_message().contains("unknown outcome"),
        "{}",
        p.err_message()
    );
    assert!(
        read_pkt(&mut victim.s).await.is_err(),
        "killed session stays open"
    );

    // mariadbd never ran a KILL: the transaction still waits for its ACK, prepared and
    // invisible, and no commit was released without one.
    assert!(
        !server.general_log().contains("KILL"),
        "KILL reached mariadbd"
    );
    assert_eq!(state_of(&server, victim.connection_id), WAITING);
    assert_eq!(server.root("SELECT v FROM t.w WHERE id = 1"), "0");
    assert_eq!(
        server.root(
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
             WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_NO_TX'"
        ),
        "0"
    );
    let m = master.metrics();
    assert_eq!(m.rw.errors_of(ErrorKind::Killed), 1, "{m:?}");
    // The killer's own session is unaffected.
    let (_, rows) = killer.query("SELECT 'still here'").await.unwrap();
    assert_eq!(rows, vec![vec!["still here".to_string()]]);
    // Dropping `server` SIGKILLs mariadbd: a clean shutdown would commit the waiting UPDATE.
}
