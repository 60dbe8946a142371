//! The client against real mariadbd processes (started in temp dirs, SIGKILLed on drop) and
//! against scripted fake servers for the failure paths.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

use quorumsql_wire::command::{BinlogDump, Command as WireCommand, RegisterSlave};
use quorumsql_wire::event::{check_event, verify_checksum, Checksum, EventHeader, EventType};
use quorumsql_wire::handshake::Greeting;
use quorumsql_wire::response::{is_ok, ErrPacket};
use quorumsql_wire::semisync::{decode_dump_packet, DumpPacket, SemiSyncAck};
use quorumsql_wire::txn::{Assembled, Transaction, TxnAssembler, TxnEnd};
use quorumsql_wire::{Gtid, Packet, PacketCodec};

use super::*;

/// A throwaway mariadbd: installed into a temp dir, listening on a unix socket and a free
/// 127.0.0.1 port, SIGKILLed (and reaped) when dropped, even if the test panicked.
struct TestMariadb {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for TestMariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestMariadb {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("s.sock")
    }

    fn tcp(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("err.log")).unwrap_or_default()
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        l.local_addr().expect("local addr").port()
    }

    async fn start(extra: &[&str]) -> TestMariadb {
        let dir = tempfile::Builder::new()
            .prefix("qs-sql-test")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        // Every mariadbd deletes `#sql*` files in its tmpdir at start: servers started in
        // parallel (other tests, other nodes) must not share /tmp or they break each other.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("tmp dir");
        let out = Command::new("mariadb-install-db")
            .env("TMPDIR", &tmp)
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=socket")
            .arg("--skip-test-db")
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = Self::free_port();
        let d = |name: &str| dir.path().join(name).display().to_string();
        let child = Command::new("mariadbd")
            .env("TMPDIR", &tmp)
            .arg("--no-defaults")
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg("--user=root")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", d("s.sock")))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--log-bin={}", d("bin")))
            .arg("--server-id=1")
            .arg(format!("--log-error={}", d("err.log")))
            .arg(format!("--pid-file={}", d("m.pid")))
            .arg("--skip-name-resolve")
            .arg("--max-allowed-packet=64M")
            .arg("--innodb-buffer-pool-size=32M")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mariadbd");
        let server = TestMariadb { child, dir, port };
        server.wait_ready(&server.socket()).await;
        server
    }

    async fn wait_ready(&self, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while Instant::now() < deadline {
            match SqlConn::connect_unix(socket, "root", "").await {
                Ok(c) => {
                    c.quit().await;
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "mariadbd not ready within 60 s; last error {last:?}; error log:\n{}",
            self.error_log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talks_to_a_real_mariadbd() {
    let db = TestMariadb::start(&[]).await;

    // root@localhost is identified via unix_socket (mariadb-install-db --auth-root-...=socket).
    let mut root = SqlConn::connect_unix(db.socket(), "root", "")
        .await
        .expect("root over the socket");
    assert!(
        root.server_version().contains("MariaDB"),
        "{}",
        root.server_version()
    );
    assert!(root.connection_id() > 0);
    // The unix_socket server plugin reads nothing from the client, so no switch is needed.
    assert_eq!(
        root.query_value("SELECT CURRENT_USER()")
            .await
            .expect("who"),
        Some("root@localhost".into())
    );

    let rows = root
        .query("SELECT 1 AS one, NULL AS nothing, 'x' AS x")
        .await
        .expect("select");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get("one"), Some("1"));
    assert_eq!(rows[0].try_get("nothing").expect("column exists"), None);
    assert_eq!(rows[0].get_idx(2), Some("x"));
    assert!(matches!(
        rows[0].try_get("missing"),
        Err(SqlError::NoSuchColumn { .. })
    ));

    // The admin statements QuorumSQL runs.
    root.exec("SET sql_log_bin=0")
        .await
        .expect("set sql_log_bin");
    let status = root.query_rows("SHOW MASTER STATUS").await.expect("status");
    assert!(
        status.columns.iter().any(|c| c == "File"),
        "{:?}",
        status.columns
    );
    let file = status.rows[0].get("File").expect("binlog file").to_string();
    assert!(file.starts_with("bin."), "{file}");
    root.exec("SET sql_log_bin=1")
        .await
        .expect("set sql_log_bin");
    root.exec("CREATE DATABASE qs_t").await.expect("create db");
    let ok = root
        .exec("CREATE TABLE qs_t.x (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB")
        .await
        .expect("create table");
    assert_eq!(ok.affected_rows, 0);
    let ok = root
        .exec("INSERT INTO qs_t.x VALUES (1,'a'),(2,NULL)")
        .await
        .expect("insert");
    assert_eq!(ok.affected_rows, 2);
    let state = root
        .query_value("SELECT @@gtid_binlog_state")
        .await
        .expect("gtid state")
        .expect("not NULL");
    let state: quorumsql_wire::GtidState = state.parse().expect("parses as a GTID state");
    assert_eq!(state.get(0).map(|g| (g.server, g.seq)), Some((1, 3)));

    // A server ERR is a typed error and leaves the connection usable.
    let err = root.query("SELEKT 1").await.expect_err("bad SQL");
    assert_eq!(err.server_code(), Some(1064), "{err}");
    assert!(root
        .exec("SELECT 1")
        .await
        .is_err_and(|e| matches!(e, SqlError::ReturnedRows { rows: 1, .. })));
    assert_eq!(
        root.query_value("SELECT 2").await.expect("usable"),
        Some("2".into())
    );
    root.ping().await.expect("ping");

    // A result over 16 MiB arrives in continuation packets.
    let big = root
        .query("SELECT REPEAT('z', 17000000) AS big")
        .await
        .expect("big row");
    let v = big[0].get("big").expect("value");
    assert_eq!(v.len(), 17_000_000);
    assert!(v.bytes().all(|b| b == b'z'));

    // mysql_native_password over TCP.
    root.exec("CREATE USER 'qs_app'@'127.0.0.1' IDENTIFIED BY 'pw-1'")
        .await
        .expect("create user");
    root.exec("GRANT SELECT ON qs_t.* TO 'qs_app'@'127.0.0.1'")
        .await
        .expect("grant");
    let mut app = SqlConn::connect_tcp(db.tcp(), "qs_app", "pw-1")
        .await
        .expect("native password over TCP");
    assert_eq!(app.auth_plugin(), "mysql_native_password");
    assert_eq!(
        app.query_value("SELECT CURRENT_USER()").await.expect("who"),
        Some("qs_app@127.0.0.1".into())
    );
    let rows = app
        .query("SELECT id, v FROM qs_t.x ORDER BY id")
        .await
        .expect("rows");
    let values: Vec<_> = rows.iter().map(|r| r.values().to_vec()).collect();
    assert_eq!(
        values,
        vec![
            vec![Some("1".to_string()), Some("a".to_string())],
            vec![Some("2".to_string()), None]
        ]
    );
    let denied = app
        .exec("INSERT INTO qs_t.x VALUES (3,'c')")
        .await
        .expect_err("no grant");
    assert_eq!(denied.server_code(), Some(1142), "{denied}");
    let wrong = SqlConn::connect_tcp(db.tcp(), "qs_app", "wrong")
        .await
        .expect_err("wrong password");
    assert_eq!(wrong.server_code(), Some(1045), "{wrong}");

    // A query that outlives its timeout breaks the connection (its state is unknown).
    app.set_query_timeout(Duration::from_millis(300));
    let slow = app.query("SELECT SLEEP(5)").await.expect_err("times out");
    assert!(matches!(slow, SqlError::Timeout { .. }), "{slow}");
    assert!(matches!(
        app.query("SELECT 1").await,
        Err(SqlError::Broken { .. })
    ));

    // Raw packet access: COM_PING by hand.
    root.send_command(&[0x0e]).await.expect("send");
    let p = root
        .read_packet_timeout(Duration::from_secs(5))
        .await
        .expect("answer");
    assert!(is_ok(&p.payload), "{:?}", p.payload);
    assert_eq!(p.seq, 1);

    // KILL from another session closes this one.
    let id = app.connection_id();
    drop(app);
    let mut victim = SqlConn::connect_tcp(db.tcp(), "qs_app", "pw-1")
        .await
        .expect("victim");
    root.exec(&format!("KILL {}", victim.connection_id()))
        .await
        .expect("kill");
    assert_ne!(id, victim.connection_id());
    let gone = victim.query("SELECT 1").await.expect_err("killed");
    assert!(!gone.connection_usable(), "{gone}");
    root.quit().await;
}

/// A scripted server that sends a greeting, reads the response, then runs `then`.
async fn fake_server<F, Fut>(then: F) -> SocketAddr
where
    F: FnOnce(Framed<tokio::net::TcpStream, PacketCodec>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        let mut f = Framed::new(s, PacketCodec::default());
        let g = Greeting {
            server_version: "5.5.5-10.11.19-MariaDB-fake".into(),
            connection_id: 42,
            scramble: vec![b'a'; 20],
            capabilities: 0x81ff_f7fe,
            charset: 8,
            status: 2,
            mariadb_ext_caps: 0,
            auth_plugin: "mysql_native_password".into(),
        };
        if f.send(g.to_bytes()).await.is_err() {
            return;
        }
        if f.next().await.is_none() {
            return;
        }
        then(f).await;
    });
    addr
}

#[tokio::test]
async fn err_before_any_backend_surfaces_as_server_error() {
    let addr = fake_server(|mut f| async move {
        let e = ErrPacket::new(1927, "quorumsql: no master available");
        let _ = f.send(e.to_bytes()).await;
    })
    .await;
    let err = SqlConn::connect_tcp(addr, "u", "p").await.expect_err("ERR");
    assert_eq!(err.server_code(), Some(1927), "{err}");
}

#[tokio::test]
async fn silent_server_times_out_and_refused_port_is_io() {
    let addr = fake_server(|f| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(f);
    })
    .await;
    let mut opts = ConnectOptions::new("u", "p");
    opts.connect_timeout = Duration::from_millis(200);
    let err = SqlConn::connect_tcp_with(addr, &opts)
        .await
        .expect_err("timeout");
    assert!(matches!(err, SqlError::Timeout { .. }), "{err}");

    let closed = TestMariadb::free_port();
    let err = SqlConn::connect_tcp(SocketAddr::from(([127, 0, 0, 1], closed)), "u", "p")
        .await
        .expect_err("refused");
    assert!(matches!(err, SqlError::Io { .. }), "{err}");
}

#[tokio::test]
async fn garbage_from_the_server_is_a_protocol_error() {
    let addr = fake_server(|mut f| async move {
        // An auth answer that is neither OK, ERR nor a switch.
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0x07, 1, 2, 3]);
        let _ = f.send(b.freeze()).await;
    })
    .await;
    let err = SqlConn::connect_tcp(addr, "u", "p")
        .await
        .expect_err("garbage");
    assert!(matches!(err, SqlError::Unexpected { .. }), "{err}");
}

/// The server asks to switch plugins; the client must answer each with the right bytes.
#[tokio::test]
async fn answers_auth_switch_to_unix_socket_and_native_password() {
    use quorumsql_wire::auth::{native_password_hash, verify_native_password, AuthSwitchRequest};
    let addr = fake_server(|mut f| async move {
        let to_socket = AuthSwitchRequest {
            plugin: "unix_socket".into(),
            data: vec![],
        };
        let _ = f.send(to_socket.to_bytes()).await;
        let Some(Ok(p)) = f.next().await else { return };
        if !p.payload.is_empty() || p.seq != 3 {
            let _ = f
                .send(ErrPacket::new(1045, "bad unix_socket answer").to_bytes())
                .await;
            return;
        }
        let scramble = b"0123456789abcdefghij".to_vec();
        let to_native = AuthSwitchRequest {
            plugin: "mysql_native_password".into(),
            data: scramble.clone(),
        };
        let _ = f.send(to_native.to_bytes()).await;
        let Some(Ok(p)) = f.next().await else { return };
        let stored = native_password_hash(b"pw");
        if verify_native_password(&scramble, &p.payload, Some(&stored)) {
            let _ = f
                .send(quorumsql_wire::response::OkPacket::default().to_bytes())
                .await;
        } else {
            let _ = f
                .send(ErrPacket::new(1045, "bad native answer").to_bytes())
                .await;
        }
    })
    .await;
    let conn = SqlConn::connect_tcp(addr, "u", "pw")
        .await
        .expect("both switches answered");
    assert_eq!(conn.auth_plugin(), "mysql_native_password");
    assert_eq!(conn.connection_id(), 42);
}

/// Splits a binlog file into its events (after the 4-byte magic).
fn binlog_file_events(path: &Path) -> Vec<(u64, bytes::Bytes)> {
    let data = std::fs::read(path).expect("read binlog file");
    assert_eq!(&data[..4], b"\xfebin", "binlog magic");
    let mut out = Vec::new();
    let mut at = 4usize;
    while at + 19 <= data.len() {
        let size = u32::from_le_bytes([data[at + 9], data[at + 10], data[at + 11], data[at + 12]])
            as usize;
        if at + size > data.len() {
            break;
        }
        out.push((
            (at + size) as u64,
            bytes::Bytes::copy_from_slice(&data[at..at + size]),
        ));
        at += size;
    }
    out
}

/// The whole replica path on real bytes: register, semi-sync GTID dump, events decoded and cut
/// into transactions, and an ACK that releases a commit waiting in AFTER_SYNC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semisync_dump_stream_decodes_into_transactions_and_acks_release_commits() {
    let db = TestMariadb::start(&[
        "--binlog-format=ROW",
        "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
        "--rpl-semi-sync-master-timeout=30000",
    ])
    .await;
    let mut root = SqlConn::connect_unix(db.socket(), "root", "")
        .await
        .expect("root");
    for sql in [
        "CREATE DATABASE t",
        "CREATE TABLE t.x (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB",
        "INSERT INTO t.x VALUES (1,'one'),(2,'two')",
        "CREATE TABLE t.m (id INT) ENGINE=MyISAM",
        "INSERT INTO t.m VALUES (1)",
        "UPDATE t.x SET v='TWO' WHERE id=2",
    ] {
        root.exec(sql).await.expect(sql);
    }
    let before: quorumsql_wire::GtidState = root
        .query_value("SELECT @@gtid_binlog_pos")
        .await
        .expect("pos")
        .expect("not NULL")
        .parse()
        .expect("GTID state");
    assert_eq!(before.get(0), Some(Gtid::new(0, 1, 6)));
    root.exec("SET GLOBAL rpl_semi_sync_master_enabled=ON")
        .await
        .expect("semi-sync on");

    // The dump connection, set up like a MariaDB 10.11 replica IO thread (reference §4.1).
    let mut dump = SqlConn::connect_unix(db.socket(), "root", "")
        .await
        .expect("dump conn");
    for sql in [
        "SET @master_binlog_checksum= @@global.binlog_checksum",
        "SET @mariadb_slave_capability=4",
        "SET @slave_connect_state=''",
        "SET @slave_gtid_strict_mode=1",
        "SET @rpl_semi_sync_slave= 1",
    ] {
        dump.exec(sql).await.expect(sql);
    }
    let register = WireCommand::RegisterSlave(RegisterSlave {
        server_id: 77,
        report_host: bytes::Bytes::new(),
        report_user: bytes::Bytes::new(),
        report_password: bytes::Bytes::new(),
        report_port: 0,
        recovery_rank: 0,
        master_id: 0,
    });
    dump.send_command(&register.to_bytes())
        .await
        .expect("register");
    dump.read_ok("COM_REGISTER_SLAVE")
        .await
        .expect("registered");
    let request = WireCommand::BinlogDump(BinlogDump {
        position: 4,
        flags: 0,
        server_id: 77,
        file: String::new(),
    });
    dump.send_command(&request.to_bytes()).await.expect("dump");
    dump.set_check_sequence(false);

    let mut asm = TxnAssembler::new(Checksum::Crc32, 1 << 20);
    let mut txns: Vec<(Transaction, bool)> = Vec::new();
    let mut last_ack_flag = false;
    let mut metadata = Vec::new();
    async fn pump(
        dump: &mut SqlConn,
        asm: &mut TxnAssembler,
        txns: &mut Vec<(Transaction, bool)>,
        metadata: &mut Vec<EventType>,
        last_ack_flag: &mut bool,
        want: usize,
    ) {
        while txns.len() < want {
            let p = dump
                .read_packet_timeout(Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("dump stream after {} txns: {e}", txns.len()));
            let ev = match decode_dump_packet(&p.payload, true).expect("semi-sync framed") {
                DumpPacket::Event {
                    ack_requested,
                    event,
                } => {
                    *last_ack_flag = ack_requested;
                    bytes::Bytes::copy_from_slice(event)
                }
                other => panic!("dump ended: {other:?}"),
            };
            verify_checksum(&ev).expect("every event carries a valid CRC");
            match asm.push(ev).expect("group rules hold") {
                Assembled::Transaction(t) => txns.push((t, *last_ack_flag)),
                Assembled::Metadata { header, .. } => metadata.push(header.event_type),
                Assembled::Pending => {}
            }
        }
    }
    pump(
        &mut dump,
        &mut asm,
        &mut txns,
        &mut metadata,
        &mut last_ack_flag,
        6,
    )
    .await;
    assert_eq!(metadata[0], EventType::Rotate, "{metadata:?}");
    assert!(
        metadata.contains(&EventType::FormatDescription),
        "{metadata:?}"
    );
    let gtids: Vec<String> = txns.iter().map(|(t, _)| t.gtid.to_string()).collect();
    assert_eq!(
        gtids,
        ["0-1-1", "0-1-2", "0-1-3", "0-1-4", "0-1-5", "0-1-6"]
    );
    let ends: Vec<TxnEnd> = txns.iter().map(|(t, _)| t.end).collect();
    assert_eq!(
        ends,
        [
            TxnEnd::Standalone,
            TxnEnd::Standalone,
            TxnEnd::Xid,
            TxnEnd::Standalone,
            TxnEnd::CommitQuery,
            TxnEnd::Xid
        ]
    );

    // Same content, same digest: the stream's transactions equal the binlog file's bytes.
    let file = txns[0].0.file.clone().expect("file from the fake ROTATE");
    let on_disk = binlog_file_events(&db.dir.path().join(&file));
    for (t, _) in &txns {
        let end = t.end_pos().expect("origin coordinates");
        let last = on_disk
            .iter()
            .find(|(end_off, _)| *end_off == end.offset)
            .unwrap_or_else(|| panic!("{} ends at {end} but no event ends there", t.gtid));
        assert_eq!(&last.1, t.events.last().expect("events"), "{}", t.gtid);
        let mut file_asm = TxnAssembler::new(Checksum::Crc32, 1 << 20);
        let mut from_file = None;
        for (_, ev) in &on_disk {
            if let Ok(Assembled::Transaction(ft)) = file_asm.push(ev.clone()) {
                if ft.gtid == t.gtid {
                    from_file = Some(ft);
                }
            }
        }
        let ft = from_file.unwrap_or_else(|| panic!("{} not in {file}", t.gtid));
        assert_eq!(
            ft.digest(Checksum::Crc32).expect("digest"),
            t.digest(Checksum::Crc32).expect("digest"),
            "{}",
            t.gtid
        );
    }

    // A commit now waits for our ACK (AFTER_SYNC); the ACK of its end releases it.
    let sock = db.socket();
    let writer = tokio::spawn(async move {
        let mut w = SqlConn::connect_unix(&sock, "root", "")
            .await
            .expect("writer");
        let started = Instant::now();
        let r = w.exec("INSERT INTO t.x VALUES (3,'three')").await;
        (r.map(|ok| ok.affected_rows), started.elapsed())
    });
    pump(
        &mut dump,
        &mut asm,
        &mut txns,
        &mut metadata,
        &mut last_ack_flag,
        7,
    )
    .await;
    let (t, ack_requested) = &txns[6];
    assert_eq!(t.gtid, Gtid::new(0, 1, 7));
    assert!(
        ack_requested,
        "the master must request an ACK for a waiting commit"
    );
    let header = EventHeader::decode(t.events.last().expect("events")).expect("header");
    check_event(t.events.last().expect("events")).expect("sized");
    let ack = SemiSyncAck {
        position: u64::from(header.log_pos),
        file: t.file.clone().expect("file"),
    };
    dump.write_packet(Packet {
        seq: 0,
        payload: ack.to_bytes(),
    })
    .await
    .expect("ACK sent");
    let (r, took) = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("commit released")
        .expect("writer task");
    assert_eq!(r.expect("insert"), 1);
    assert!(
        took < Duration::from_secs(10),
        "commit waited {took:?}: ACK not accepted"
    );
    let yes = root
        .query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_yes_tx'")
        .await
        .expect("status");
    assert_eq!(yes[0].get("Value"), Some("1"), "{yes:?}");
}

/// Every transaction of a server's binlog files (in `dir`, named `bin.NNNNNN`), by GTID.
fn binlog_transactions(dir: &Path) -> Vec<Transaction> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("bin.0"))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let mut asm = TxnAssembler::new(Checksum::Crc32, 1 << 24);
        for (_, ev) in binlog_file_events(&f) {
            if let Assembled::Transaction(t) = asm.push(ev).expect("group rules hold on disk") {
                out.push(t);
            }
        }
    }
    out
}

/// The digest's promise: a replica that re-logged a transaction (log_slave_updates) has the
/// same digest for that GTID as the master, though table ids, xids, log positions, status vars
/// and GTID scheduling flags differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_replica_relogs_transactions_with_the_same_digest() {
    let (master, replica) = tokio::join!(
        TestMariadb::start(&["--binlog-format=ROW"]),
        TestMariadb::start(&[
            "--binlog-format=ROW",
            "--server-id=2",
            "--log-slave-updates=ON",
            "--gtid-strict-mode=ON",
            "--slave-parallel-threads=4",
            "--slave-parallel-mode=optimistic",
        ]),
    );
    let mut m = SqlConn::connect_unix(master.socket(), "root", "")
        .await
        .expect("master");
    m.exec("CREATE USER 'repl'@'127.0.0.1' IDENTIFIED BY 'rpw'")
        .await
        .expect("user");
    m.exec("GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1'")
        .await
        .expect("grant");
    for sql in [
        "CREATE DATABASE d",
        "CREATE TABLE d.a (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(50), n DOUBLE, b BLOB) ENGINE=InnoDB",
        "CREATE TABLE d.b (id INT PRIMARY KEY) ENGINE=InnoDB",
        "CREATE TABLE d.m (id INT) ENGINE=MyISAM",
        "INSERT INTO d.a (v, n, b) VALUES ('x', 1.5, 'blob'), (NULL, NULL, NULL), ('y', -2, REPEAT('q', 3000))",
        "INSERT INTO d.b VALUES (1), (2), (3)",
        "UPDATE d.a SET v = CONCAT(v, '!') WHERE id <= 2",
        "DELETE FROM d.b WHERE id = 2",
        "INSERT INTO d.m VALUES (7)",
        "INSERT INTO d.a (v) SELECT CONCAT('s', id) FROM d.b",
        "ALTER TABLE d.b ADD COLUMN c INT DEFAULT 5",
    ] {
        m.exec(sql).await.expect(sql);
    }
    // A multi-statement transaction touching two tables.
    for sql in [
        "BEGIN",
        "INSERT INTO d.b (id) VALUES (10)",
        "UPDATE d.a SET n = n * 2",
        "COMMIT",
    ] {
        m.exec(sql).await.expect(sql);
    }
    let master_pos = m
        .query_value("SELECT @@gtid_binlog_pos")
        .await
        .expect("pos")
        .expect("not NULL");

    let mut r = SqlConn::connect_unix(replica.socket(), "root", "")
        .await
        .expect("replica");
    r.exec(&format!(
        "CHANGE MASTER TO master_host='127.0.0.1', master_port={}, master_user='repl', \
         master_password='rpw', master_use_gtid=slave_pos",
        master.port
    ))
    .await
    .expect("change master");
    r.exec("START SLAVE").await.expect("start slave");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pos = r
            .query_value("SELECT @@gtid_binlog_pos")
            .await
            .expect("replica pos");
        if pos.as_deref() == Some(master_pos.as_str()) {
            break;
        }
        if Instant::now() > deadline {
            let status = r.query("SHOW SLAVE STATUS").await.expect("status");
            panic!(
                "replica at {pos:?}, master at {master_pos}; Last_Error {:?} Last_IO_Error {:?}",
                status.first().and_then(|s| s.get("Last_Error")),
                status.first().and_then(|s| s.get("Last_IO_Error"))
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let on_master = binlog_transactions(master.dir.path());
    let on_replica = binlog_transactions(replica.dir.path());
    assert!(on_master.len() >= 14, "{} transactions", on_master.len());
    let mut compared = 0;
    for t in &on_master {
        let Some(rt) = on_replica.iter().find(|rt| rt.gtid == t.gtid) else {
            panic!("{} is not in the replica's binlog", t.gtid)
        };
        if t.digest(Checksum::Crc32).expect("d") != rt.digest(Checksum::Crc32).expect("d") {
            for (name, x) in [("master", t), ("replica", rt)] {
                for e in &x.events {
                    eprintln!(
                        "{name} {:02x} {}",
                        e[4],
                        e[19..]
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>()
                    );
                }
            }
        }
        assert_eq!(
            t.digest(Checksum::Crc32).expect("digest"),
            rt.digest(Checksum::Crc32).expect("digest"),
            "{}: same GTID, different content digest",
            t.gtid
        );
        compared += 1;
    }
    assert_eq!(compared, on_master.len());
    // And the digest does tell different transactions apart.
    let d: std::collections::HashSet<_> = on_master
        .iter()
        .map(|t| t.digest(Checksum::Crc32).expect("digest"))
        .collect();
    assert_eq!(d.len(), on_master.len());
}
