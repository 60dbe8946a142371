//! serve's protocol behaviour seen by a scripted client over loopback (no mariadbd): auth,
//! canned answers, refusals, waiting for a lagging source, gaps, KILL, sequence ids, rotation.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use quorumsql_node::serve::{
    MemTxnSource, RefusalKind, Serve, ServeConfig, ServeEvent, ServeHandle, Txn,
};
use quorumsql_wire::auth::{native_password_response, MYSQL_NATIVE_PASSWORD};
use quorumsql_wire::command::{BinlogDump, Command, RegisterSlave};
use quorumsql_wire::event::{
    build_event, check_event, verify_checksum, Checksum, EventType, GtidEvent, GtidList, HEADER_LEN,
};
use quorumsql_wire::handshake::{caps, Greeting, HandshakeResponse};
use quorumsql_wire::response::{is_eof, is_err, is_ok, ErrPacket};
use quorumsql_wire::semisync::SemiSyncAck;
use quorumsql_wire::{Gtid, Packet, PacketCodec};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type Conn = Framed<TcpStream, PacketCodec>;
const T: Duration = Duration::from_secs(10);

fn txn(server: u32, seq: u64, payload_len: usize) -> Txn {
    let mut b = BytesMut::new();
    b.extend_from_slice(&GtidEvent::new(0, seq, 0x0c).build_event(server, 1, 1000, 8));
    let body = vec![b'q'; payload_len];
    b.extend_from_slice(&build_event(
        EventType::AnnotateRows,
        server,
        1,
        2000,
        0,
        &body,
        Checksum::Crc32,
    ));
    b.extend_from_slice(&build_event(
        EventType::Xid,
        server,
        1,
        3000,
        0,
        &seq.to_le_bytes(),
        Checksum::Crc32,
    ));
    Txn {
        gtid: Gtid::new(0, server, seq),
        events: b.freeze(),
        origin_fd: None,
    }
}

fn source(n: u64) -> Arc<MemTxnSource> {
    Arc::new(MemTxnSource::from_txns((1..=n).map(|s| txn(1, s, 10))))
}

async fn serve(src: Arc<MemTxnSource>, tweak: impl FnOnce(&mut ServeConfig)) -> ServeHandle {
    let mut cfg = ServeConfig::new("127.0.0.1:0".parse().unwrap(), 900, "repl", "pw");
    cfg.heartbeat = Duration::from_millis(200);
    tweak(&mut cfg);
    Serve::start(cfg, src).await.unwrap()
}

async fn recv(c: &mut Conn) -> Packet {
    tokio::time::timeout(T, c.next())
        .await
        .expect("timely packet")
        .expect("open")
        .expect("valid packet")
}

/// Handshake; `Err` carries the server's ERR packet.
async fn connect(h: &ServeHandle, user: &str, pw: &str) -> Result<(Conn, u32), ErrPacket> {
    let s = TcpStream::connect(h.local_addr()).await.unwrap();
    let mut c = Framed::new(s, PacketCodec::default());
    let g = Greeting::decode(&recv(&mut c).await.payload).unwrap();
    assert_eq!(
        g.server_version,
        "5.5.5-10.11.19-MariaDB-quorumsql-serve-log"
    );
    let resp = HandshakeResponse {
        capabilities: caps::PROTOCOL_41
            | caps::SECURE_CONNECTION
            | caps::PLUGIN_AUTH
            | caps::LONG_FLAG
            | caps::TRANSACTIONS,
        max_packet: 1 << 24,
        charset: 45,
        mariadb_ext_caps: 0,
        user: user.into(),
        auth_response: native_password_response(pw.as_bytes(), &g.scramble),
        database: None,
        auth_plugin: Some(MYSQL_NATIVE_PASSWORD.into()),
        connect_attrs: None,
    };
    c.send(resp.to_bytes()).await.unwrap();
    let p = recv(&mut c).await;
    if is_err(&p.payload) {
        return Err(ErrPacket::decode(&p.payload).unwrap());
    }
    assert!(is_ok(&p.payload));
    Ok((c, g.connection_id))
}

async fn command(c: &mut Conn, cmd: Command) {
    c.codec_mut().reset_sequence();
    c.send(cmd.to_bytes()).await.unwrap();
}

/// Runs a statement: `Ok(rows)` (OK = no rows) or the ERR packet.
async fn query(c: &mut Conn, sql: &str) -> Result<Vec<Vec<Option<String>>>, ErrPacket> {
    command(c, Command::Query(Bytes::copy_from_slice(sql.as_bytes()))).await;
    let first = recv(c).await;
    if is_err(&first.payload) {
        return Err(ErrPacket::decode(&first.payload).unwrap());
    }
    if is_ok(&first.payload) {
        return Ok(vec![]);
    }
    let ncols = first.payload[0] as usize;
    for _ in 0..ncols {
        recv(c).await;
    }
    assert!(is_eof(&recv(c).await.payload));
    let mut rows = vec![];
    loop {
        let p = recv(c).await;
        if is_eof(&p.payload) {
            return Ok(rows);
        }
        rows.push(
            quorumsql_wire::response::decode_text_row(&p.payload, ncols)
                .unwrap()
                .iter()
                .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                .collect(),
        );
    }
}

/// The replica's set-up sequence (mariadb-replication §4.1) and COM_BINLOG_DUMP.
async fn start_dump(c: &mut Conn, state: &str, semisync: bool) {
    for q in [
        "SET @master_heartbeat_period= 200000000".to_string(),
        "SET @master_binlog_checksum= @@global.binlog_checksum".into(),
        "SET @mariadb_slave_capability=4".into(),
        format!("SET @slave_connect_state='{state}'"),
        "SET @slave_gtid_strict_mode=1".into(),
        "SET @slave_gtid_ignore_duplicates=0".into(),
    ] {
        assert_eq!(query(c, &q).await, Ok(vec![]), "{q}");
    }
    command(
        c,
        Command::RegisterSlave(RegisterSlave {
            server_id: 3,
            report_host: Bytes::new(),
            report_user: Bytes::new(),
            report_password: Bytes::new(),
            report_port: 3306,
            recovery_rank: 0,
            master_id: 0,
        }),
    )
    .await;
    assert!(is_ok(&recv(c).await.payload));
    if semisync {
        assert_eq!(query(c, "SET @rpl_semi_sync_slave= 1").await, Ok(vec![]));
    }
    command(
        c,
        Command::BinlogDump(BinlogDump {
            position: 4,
            flags: 2,
            server_id: 3,
            file: String::new(),
        }),
    )
    .await;
    c.codec_mut().set_check_sequence(false);
}

#[derive(Debug)]
enum Item {
    Event { seq: u8, ack: bool, ev: Bytes },
    Err(ErrPacket),
}

async fn next(c: &mut Conn, semisync: bool) -> Item {
    let p = recv(c).await;
    if is_err(&p.payload) {
        return Item::Err(ErrPacket::decode(&p.payload).unwrap());
    }
    assert_eq!(p.payload[0], 0);
    if semisync {
        assert_eq!(p.payload[1], 0xEF, "every packet is semi-sync framed");
        Item::Event {
            seq: p.seq,
            ack: p.payload[2] == 1,
            ev: p.payload.slice(3..),
        }
    } else {
        Item::Event {
            seq: p.seq,
            ack: false,
            ev: p.payload.slice(1..),
        }
    }
}

fn etype(ev: &[u8]) -> EventType {
    check_event(ev).unwrap().event_type
}

/// Next GTID of a transaction, skipping heartbeats and metadata; checks every event's CRC.
async fn next_gtid(c: &mut Conn, semisync: bool) -> Result<Gtid, ErrPacket> {
    loop {
        match next(c, semisync).await {
            Item::Err(e) => return Err(e),
            Item::Event { ev, .. } => {
                verify_checksum(&ev).unwrap();
                if etype(&ev) == EventType::Gtid {
                    let h = check_event(&ev).unwrap();
                    let g = GtidEvent::decode_body(&ev[HEADER_LEN..ev.len() - 4]).unwrap();
                    return Ok(g.gtid(h.server_id));
                }
            }
        }
    }
}

#[tokio::test]
async fn authentication_and_canned_answers() {
    let h = serve(source(3), |_| {}).await;
    let e = connect(&h, "repl", "wrong").await.unwrap_err();
    assert_eq!(e.code, 1045, "{e}");
    let e = connect(&h, "root", "pw").await.unwrap_err();
    assert_eq!(e.code, 1045, "{e}");
    assert_eq!(h.metrics().auth_failures, 2);

    let (mut c, _) = connect(&h, "repl", "pw").await.unwrap();
    let row = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    assert_eq!(
        query(&mut c, "SHOW VARIABLES LIKE 'SERVER_ID'")
            .await
            .unwrap(),
        vec![row(&["server_id", "900"])]
    );
    assert_eq!(
        query(&mut c, "SHOW VARIABLES LIKE 'rpl_semi_sync_master_enabled'")
            .await
            .unwrap(),
        vec![row(&["rpl_semi_sync_master_enabled", "ON"])]
    );
    assert_eq!(
        query(&mut c, "SELECT @master_binlog_checksum")
            .await
            .unwrap(),
        vec![vec![None]]
    );
    query(
        &mut c,
        "SET @master_binlog_checksum= @@global.binlog_checksum",
    )
    .await
    .unwrap();
    assert_eq!(
        query(&mut c, "SELECT @master_binlog_checksum")
            .await
            .unwrap(),
        vec![row(&["CRC32"])]
    );
    assert_eq!(
        query(&mut c, "SELECT @@GLOBAL.gtid_domain_id")
            .await
            .unwrap(),
        vec![row(&["0"])]
    );
    let ts = query(&mut c, "SELECT UNIX_TIMESTAMP()").await.unwrap();
    assert!(ts[0][0].as_ref().unwrap().parse::<u64>().unwrap() > 1_700_000_000);
    let e = query(&mut c, "DROP DATABASE prod").await.unwrap_err();
    assert!(
        e.message.contains("replication-only") && e.message.contains("DROP DATABASE prod"),
        "{e}"
    );
    // The connection stays usable after an error.
    command(&mut c, Command::Ping).await;
    assert!(is_ok(&recv(&mut c).await.payload));
    let e = query(&mut c, "KILL 4242").await.unwrap_err();
    assert_eq!(e.code, 1094);
    h.shutdown().await;
}

#[tokio::test]
async fn semisync_stream_framing_sequence_and_acks() {
    let src = source(3);
    let h = serve(src.clone(), |_| {}).await;
    let (mut c, _) = connect(&h, "repl", "pw").await.unwrap();
    start_dump(&mut c, "0-1-1", true).await;
    // Preamble: fake ROTATE, FD, GTID_LIST of the start state.
    let mut expect_seq = 1u8;
    let mut types = vec![];
    let mut offset = 4u64;
    let mut acks = 0;
    while types.iter().filter(|t| **t == EventType::Xid).count() < 2 {
        let Item::Event { seq, ack, ev } = next(&mut c, true).await else {
            panic!("error")
        };
        assert_eq!(seq, expect_seq, "sequence ids");
        verify_checksum(&ev).unwrap();
        let hd = check_event(&ev).unwrap();
        let t = hd.event_type;
        if t == EventType::GtidList {
            let gl = GtidList::decode_body(&ev[HEADER_LEN..ev.len() - 4]).unwrap();
            assert_eq!(gl.gtids, vec![Gtid::new(0, 1, 1)]);
        }
        if t != EventType::Rotate && t != EventType::Heartbeat {
            offset += ev.len() as u64;
            assert_eq!(u64::from(hd.log_pos), offset, "{t:?} log_pos is contiguous");
        }
        assert_eq!(
            ack,
            t == EventType::Xid,
            "ACK requested exactly at transaction ends"
        );
        expect_seq = if ack { 1 } else { seq.wrapping_add(1) };
        if ack {
            acks += 1;
            let mut a = Packet {
                seq: 0,
                payload: SemiSyncAck {
                    position: u64::from(hd.log_pos),
                    file: "quorumsql-bin.000001".into(),
                }
                .to_bytes(),
            };
            a.seq = 0;
            c.send(a).await.unwrap();
        }
        types.push(t);
    }
    assert_eq!(
        &types[..3],
        &[
            EventType::Rotate,
            EventType::FormatDescription,
            EventType::GtidList
        ]
    );
    assert_eq!(
        &types[3..6],
        &[EventType::Gtid, EventType::AnnotateRows, EventType::Xid]
    );
    assert_eq!(acks, 2);
    tokio::time::timeout(T, async {
        while h.metrics().acks_received < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("serve counted the ACKs");
    // Idle: heartbeats at the current offset, never behind.
    let Item::Event { ev, .. } = next(&mut c, true).await else {
        panic!()
    };
    let hb = check_event(&ev).unwrap();
    assert_eq!(hb.event_type, EventType::Heartbeat);
    assert_eq!(u64::from(hb.log_pos), offset);
    // Live: a new transaction arrives without reconnecting.
    src.push(txn(1, 4, 10));
    assert_eq!(next_gtid(&mut c, true).await.unwrap(), Gtid::new(0, 1, 4));
    h.shutdown().await;
}

#[tokio::test]
async fn plain_stream_has_contiguous_sequence_ids_and_no_annotations_unless_asked() {
    let h = serve(source(5), |_| {}).await;
    let (mut c, _) = connect(&h, "repl", "pw").await.unwrap();
    for q in [
        "SET @master_binlog_checksum= @@global.binlog_checksum",
        "SET @mariadb_slave_capability=4",
        "SET @slave_connect_state=''",
    ] {
        query(&mut c, q).await.unwrap();
    }
    command(
        &mut c,
        Command::BinlogDump(BinlogDump {
            position: 4,
            flags: 0,
            server_id: 3,
            file: String::new(),
        }),
    )
    .await;
    c.codec_mut().set_check_sequence(false);
    let mut expect = 1u8;
    let mut gtids = vec![];
    while gtids.len() < 5 {
        let Item::Event { seq, ev, .. } = next(&mut c, false).await else {
            panic!()
        };
        assert_eq!(seq, expect);
        expect = expect.wrapping_add(1);
        assert_ne!(etype(&ev), EventType::AnnotateRows);
        if etype(&ev) == EventType::Gtid {
            let g = GtidEvent::decode_body(&ev[HEADER_LEN..ev.len() - 4]).unwrap();
            gtids.push(g.seq);
        }
    }
    assert_eq!(gtids, vec![1, 2, 3, 4, 5]);
    h.shutdown().await;
}

#[tokio::test]
async fn refusals_answer_1236_and_are_reported() {
    let src = source(5);
    let h = serve(src.clone(), |_| {}).await;
    let mut events = h.subscribe();
    for (state, needle, kind) in [
        ("0-2-3", "diverged", RefusalKind::Diverged),
        ("5-1-3", "replication domain", RefusalKind::Diverged),
        ("0-1-2,1-1-1", "domains", RefusalKind::Misconfigured),
    ] {
        let (mut c, _) = connect(&h, "repl", "pw").await.unwrap();
        start_dump(&mut c, state, true).await;
        let e = next_gtid(&mut c, true).await.unwrap_err();
        assert_eq!(e.code, 1236, "{state}: {e}");
        assert!(e.message.contains(needle), "{state}: {e}");
        let refused = tokio::time::timeout(T, async {
            loop {
                if let ServeEvent::Refused { gtid, reason, .. } = events.recv().await.unwrap() {
                    assert_eq!(reason.kind(), kind, "{reason}");
                    return gtid;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(
            refused.map(|g| g.to_string()),
            state.split(',').next().map(str::to_string)
        );
    }
    src.compact_through(Gtid::new(0, 1, 3));
    for state in ["0-1-2", ""] {
        let (mut c, _) = connect(&h, "repl", "pw").await.unwrap();
        start_dump(&mut c, state, true).await;
        let e = next_gtid(&mut c, true).await.unwrap_err();
        assert_eq!(e.code, 1236, "{state}: {e}");
        assert!(e.message.contains("compacted"), "{e}");
    }
    // The newest compacted transaction is still a valid position.
    let (mut c, _) = connect(&h, "repl", "pw").await.unwrap();
    start_dump(&mut c, "0-1-3", true).await;
    assert_eq!(next_gtid(&mut c, true).await.unwrap(), Gtid::new(0, 1, 4));
    assert_eq!(h.metrics().refusals, 5);
    h.shutdown().await;
}

#[tokio::test]
async fn a_replica_ahead_of_the_source_waits_then_continues_exactly() {
    let src = source(3);
    let h = serve(src.clone(), |_| {}).await;
    let mut events = h.subscribe();
    let (mut c, _) = connect(&h, "repl", "pw").await.unwrap();
    start_dump(&mut c, "0-1-5", true).await;
    let waiting = tokio::time::timeout(T, async {
        loop {
            if let ServeEvent::WaitingForLog { gtid, .. } = events.recv().await.unwrap() {
                return gtid;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(waiting, Gtid::new(0, 1, 5));
    // Only metadata and heartbeats while the source lags.
    for _ in 0..6 {
        let Item::Event { ev, .. } = next(&mut c, true).await else {
            panic!("refused a lagging source")
        };
        assert!(matches!(
            etype(&ev),
            EventType::Rotate
                | EventType::FormatDescription
                | EventType::GtidList
                | EventType::Heartbeat
        ));
    }
    src.push(txn(1, 4, 10));
    src.push(txn(1, 5, 10));
    src.push(txn(1, 6, 10));
    assert_eq!(next_gtid(&mut c, true).await.unwrap(), Gtid::new(0, 1, 6));
    h.shutdown().await;
}

#[tokio::test]
async fn a_gap_in_the_source_stops_the_stream() {
    let src = Arc::new(MemTxnSource::from_txns([
        txn(1, 1, 5),
        txn(1, 2, 5),
        txn(1, 4, 5),
    ]));
    let h = serve(src, |_| {}).await;
    let (mut c, _) = connect(&h, "repl", "pw").await.unwrap();
    start_dump(&mut c, "", true).await;
    assert_eq!(next_gtid(&mut c, true).await.unwrap(), Gtid::new(0, 1, 1));
    assert_eq!(next_gtid(&mut c, true).await.unwrap(), Gtid::new(0, 1, 2));
    let e = next_gtid(&mut c, true).await.unwrap_err();
    assert_eq!(e.code, 1236);
    assert!(
        e.message.contains("0-1-2") && e.message.contains("0-1-4"),
        "{e}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn kill_ends_the_named_dump_and_files_rotate() {
    let src = Arc::new(MemTxnSource::from_txns((1..=20).map(|s| txn(1, s, 3000))));
    let h = serve(src, |c| c.rotate_at = 10_000).await;
    let (mut dump, id) = connect(&h, "repl", "pw").await.unwrap();
    start_dump(&mut dump, "", false).await;
    let mut files = vec![];
    let mut gtids = 0;
    while gtids < 20 {
        let Item::Event { ev, .. } = next(&mut dump, false).await else {
            panic!()
        };
        match etype(&ev) {
            EventType::Rotate => {
                let name = String::from_utf8_lossy(&ev[HEADER_LEN + 8..ev.len() - 4]).into_owned();
                files.push((check_event(&ev).unwrap().flags, name));
            }
            EventType::Gtid => gtids += 1,
            _ => {}
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    assert_eq!(files[0], (0x20, "quorumsql-bin.000001".to_string()));
    assert_eq!(
        files[1],
        (0, "quorumsql-bin.000002".to_string()),
        "real ROTATE closes a file"
    );
    assert_eq!(
        files[2],
        (0x20, "quorumsql-bin.000002".to_string()),
        "then a fake one opens the next"
    );

    let (mut other, _) = connect(&h, "repl", "pw").await.unwrap();
    assert_eq!(query(&mut other, &format!("KILL {id}")).await, Ok(vec![]));
    // The dump connection ends (a retryable error, then EOF).
    let end = tokio::time::timeout(T, async {
        loop {
            match dump.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(p)) if is_err(&p.payload) => {
                    return Some(ErrPacket::decode(&p.payload).unwrap())
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("dump ended");
    if let Some(e) = end {
        assert_ne!(e.code, 1236, "KILL must not be fatal for the replica");
    }
    tokio::time::timeout(T, async {
        while h.metrics().dumps_open != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("dump closed");
    h.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_get_error_1040() {
    let h = serve(source(1), |c| c.max_connections = 1).await;
    let (mut first, _) = connect(&h, "repl", "pw").await.unwrap();
    let s = TcpStream::connect(h.local_addr()).await.unwrap();
    let mut second = Framed::new(s, PacketCodec::default());
    let p = recv(&mut second).await;
    assert_eq!(ErrPacket::decode(&p.payload).unwrap().code, 1040);
    // The first connection is unaffected.
    command(&mut first, Command::Ping).await;
    assert!(is_ok(&recv(&mut first).await.payload));
    assert_eq!(h.metrics().connections_open, 1);
    h.shutdown().await;
}

/// A transaction of `members` ANNOTATE_ROWS events of `len` bytes each between its GTID and XID.
fn big_txn(seq: u64, members: usize, len: usize) -> (Txn, Vec<Bytes>) {
    let mut events = vec![GtidEvent::new(0, seq, 0x0c).build_event(1, 1, 1000, 8)];
    for i in 0..members {
        let body: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
        events.push(build_event(
            EventType::AnnotateRows,
            1,
            1,
            2000,
            0,
            &body,
            Checksum::Crc32,
        ));
    }
    events.push(build_event(
        EventType::Xid,
        1,
        1,
        3000,
        0,
        &seq.to_le_bytes(),
        Checksum::Crc32,
    ));
    let mut all = BytesMut::new();
    for e in &events {
        all.extend_from_slice(e);
    }
    let txn = Txn {
        gtid: Gtid::new(0, 1, seq),
        events: all.freeze(),
        origin_fd: None,
    };
    (txn, events)
}

/// Issue #2: with reads of 333 bytes, a 40 kB transaction comes in ~120 pieces and every event
/// straddles pieces; the replica still gets each event whole, in order, with contiguous
/// positions, the ACK request only on the XID, and the next transaction after it.
#[tokio::test]
async fn a_transaction_larger_than_a_read_streams_event_by_event() {
    let (big, events) = big_txn(2, 40, 1000);
    let src = Arc::new(MemTxnSource::from_txns([txn(1, 1, 10), big, txn(1, 3, 10)]));
    let h = serve(src, |c| c.batch_bytes = 333).await;
    let (mut c, _) = connect(&h, "repl", "pw").await.unwrap();
    start_dump(&mut c, "0-1-1", true).await;
    let mut got = Vec::new();
    let mut offset = 4u64;
    loop {
        let Item::Event { ack, ev, .. } = next(&mut c, true).await else {
            panic!("error instead of an event")
        };
        verify_checksum(&ev).unwrap();
        let hd = check_event(&ev).unwrap();
        if hd.event_type == EventType::Heartbeat {
            continue;
        }
        if hd.event_type != EventType::Rotate {
            offset += ev.len() as u64;
            assert_eq!(u64::from(hd.log_pos), offset, "contiguous log_pos");
        }
        let is_meta = matches!(
            hd.event_type,
            EventType::Rotate | EventType::FormatDescription | EventType::GtidList
        );
        if !is_meta {
            assert_eq!(ack, hd.event_type == EventType::Xid, "ACK only at the end");
            got.push(ev);
        }
        if got.len() == events.len() {
            break;
        }
    }
    // The same events as the origin wrote, but for log_pos and CRC.
    for (i, (g, e)) in got.iter().zip(&events).enumerate() {
        assert_eq!(g.len(), e.len(), "event {i}");
        assert_eq!(g[..13], e[..13], "event {i} header");
        assert_eq!(
            g[17..g.len() - 4],
            e[17..e.len() - 4],
            "event {i} flags and body"
        );
    }
    assert_eq!(next_gtid(&mut c, true).await.unwrap(), Gtid::new(0, 1, 3));
    h.shutdown().await;
}

/// A corrupt event in the middle of a transaction that is streamed in pieces: the events before
/// it may be sent, but never the end event; the replica gets 1236.
#[tokio::test]
async fn a_corrupt_event_inside_a_streamed_transaction_is_refused_before_its_end() {
    let (big, events) = big_txn(2, 40, 1000);
    let mut bad = BytesMut::from(&big.events[..]);
    let at: usize = events[..30].iter().map(|e| e.len()).sum::<usize>() + 100;
    bad[at] ^= 0xff;
    let bad = Txn {
        events: bad.freeze(),
        ..big
    };
    let src = Arc::new(MemTxnSource::from_txns([txn(1, 1, 10), bad]));
    let h = serve(src, |c| c.batch_bytes = 5000).await;
    let (mut c, _) = connect(&h, "repl", "pw").await.unwrap();
    start_dump(&mut c, "0-1-1", true).await;
    let mut members = 0;
    let err = loop {
        match next(&mut c, true).await {
            Item::Err(e) => break e,
            Item::Event { ev, .. } => {
                let t = etype(&ev);
                assert_ne!(t, EventType::Xid, "the end event is never sent");
                if t == EventType::AnnotateRows {
                    members += 1;
                }
            }
        }
    };
    assert_eq!(err.code, 1236);
    assert!(err.message.contains("0-1-2"), "{}", err.message);
    // Events went out before the whole transaction was read (it is not buffered whole), and
    // none from the corrupt one on.
    assert!(
        (1..30).contains(&members),
        "only events before the corrupt one: {members}"
    );
    h.shutdown().await;
}
