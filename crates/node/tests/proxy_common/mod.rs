//! Shared harness of the proxy tests: a real mariadbd in a temp dir, a `FakeOracle`, a plain-TCP
//! `PeerDialer` standing in for the authenticated peer transport, the `mariadb` CLI and a raw
//! MySQL client for packets the CLI cannot send.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use quorumsql_node::proxy::{
    DialFuture, MasterEpoch, PeerDialer, ProxyConfig, ProxyHandle, ProxyLimits, RoRoute,
    RouteOracle, RwRoute,
};
use quorumsql_peer::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// Password of the `app` test user (granted from 127.0.0.1).
pub const APP_PW: &str = "apppw";

/// A mariadbd in a temp dir, SIGKILLed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Installs and starts mariadbd with the PROXY settings of DESIGN §5 and a general log,
    /// creates `app@127.0.0.1` (password), `raw@127.0.0.1` (no password), `u@127.0.0.5` and the
    /// database `t`.
    pub fn start(max_connections: u32) -> Server {
        Server::start_with(max_connections, &[])
    }

    /// Like [`Server::start`] with extra mariadbd options.
    pub fn start_with(max_connections: u32, extra: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("qsproxy")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        // Each instance needs its own tmpdir: mariadbd deletes `#sql*` files in its tmpdir at
        // start, which breaks concurrent installs sharing /tmp.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let install = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--innodb-log-file-size=8M",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .output()
            .unwrap();
        assert!(
            install.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );
        let port = free_port();
        let socket = dir.path().join("s.sock");
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--skip-name-resolve")
            // Only the proxy's own source address may send a PROXY header.
            .arg("--proxy-protocol-networks=127.0.0.1/32")
            .arg("--innodb-buffer-pool-size=32M")
            .arg("--innodb-log-file-size=8M")
            .arg(format!("--max-connections={max_connections}"))
            .arg("--general-log=1")
            .arg(format!(
                "--general-log-file={}",
                dir.path().join("general.log").display()
            ))
            .arg(format!(
                "--log-error={}",
                dir.path().join("err.log").display()
            ))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Server {
            child,
            port,
            socket,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = s.root_cli("SELECT 1");
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                std::fs::read_to_string(s.dir.path().join("err.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s.root(&format!(
            "CREATE USER app@'127.0.0.1' IDENTIFIED BY '{APP_PW}';
             GRANT ALL ON t.* TO app@'127.0.0.1';
             CREATE USER app2@'127.0.0.1' IDENTIFIED BY '{APP_PW}';
             GRANT ALL ON t.* TO app2@'127.0.0.1';
             CREATE USER raw@'127.0.0.1';
             GRANT ALL ON t.* TO raw@'127.0.0.1';
             CREATE USER u@'127.0.0.5' IDENTIFIED BY 'upw';
             GRANT SELECT ON t.* TO u@'127.0.0.5';
             CREATE DATABASE t;
             CREATE TABLE t.c (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(64)) ENGINE=InnoDB;"
        ));
        s
    }

    fn root_cli(&self, sql: &str) -> Output {
        Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()
            .unwrap()
    }

    /// Runs SQL as root over the unix socket (bypassing the proxy).
    pub fn root(&self, sql: &str) -> String {
        let out = self.root_cli(sql);
        assert!(
            out.status.success(),
            "root SQL failed: {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn general_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("general.log")).unwrap_or_default()
    }
}

/// Runs the `mariadb` CLI over TCP to `port` (a proxy port or mariadbd).
pub async fn cli(port: u16, user: &str, password: &str, sql: &str) -> Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("mariadb")
            .arg("--no-defaults")
            .args(["-h", "127.0.0.1", "--protocol=tcp", "-N", "-B"])
            .arg(format!("-P{port}"))
            .arg(format!("-u{user}"))
            .arg(format!("-p{password}"))
            .args(["-e", sql])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mariadb CLI hung")
    .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// The proxy's view of the cluster, set by the test.
pub struct FakeOracle {
    state: Mutex<FakeState>,
    changes: watch::Sender<u64>,
}

struct FakeState {
    rw: RwRoute,
    ro: RoRoute,
    lease: bool,
}

impl FakeOracle {
    pub fn new(rw: RwRoute, ro: RoRoute) -> Arc<FakeOracle> {
        Arc::new(FakeOracle {
            state: Mutex::new(FakeState {
                rw,
                ro,
                lease: true,
            }),
            changes: watch::channel(1).0,
        })
    }

    pub fn master(epoch: u64) -> Arc<FakeOracle> {
        FakeOracle::new(
            RwRoute::Local {
                master_epoch: MasterEpoch(epoch),
            },
            RoRoute::Local,
        )
    }

    /// Changes the RW route and bumps the master generation.
    pub fn set_rw(&self, rw: RwRoute) {
        self.state.lock().rw = rw;
        self.changes.send_modify(|g| *g += 1);
    }

    /// Changes the RW route without telling the proxy (a master that lost its lease but has not
    /// noticed a new master yet).
    pub fn set_lease(&self, held: bool) {
        self.state.lock().lease = held;
    }

    pub fn set_ro(&self, ro: RoRoute) {
        self.state.lock().ro = ro;
    }
}

impl RouteOracle for FakeOracle {
    fn rw_route(&self) -> RwRoute {
        self.state.lock().rw.clone()
    }

    fn may_forward(&self, epoch: MasterEpoch) -> bool {
        let s = self.state.lock();
        s.lease && matches!(s.rw, RwRoute::Local { master_epoch } if master_epoch == epoch)
    }

    fn ro_route(&self) -> RoRoute {
        self.state.lock().ro.clone()
    }

    fn subscribe_master_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// Connects to other test proxies' peer listeners over plain TCP (the node's dialer is the
/// authenticated peer transport).
#[derive(Default)]
pub struct PlainDialer {
    pub peers: Mutex<HashMap<NodeId, SocketAddr>>,
}

impl PeerDialer for PlainDialer {
    fn open(&self, to: NodeId) -> DialFuture<'_> {
        let addr = self.peers.lock().get(&to).copied();
        Box::pin(async move {
            let addr = addr.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("no address for {to}"))
            })?;
            TcpStream::connect(addr).await
        })
    }
}

/// Accepts plain TCP "peer streams" and hands them to `proxy` as coming from `from`.
pub async fn peer_listener(proxy: Arc<ProxyHandle>, from: NodeId) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            proxy.serve_peer_stream(from, s);
        }
    });
    addr
}

pub fn config(mariadb: SocketAddr, limits: ProxyLimits) -> ProxyConfig {
    ProxyConfig {
        rw_listen: "127.0.0.1:0".parse().unwrap(),
        ro_listen: "127.0.0.1:0".parse().unwrap(),
        mariadb_addr: mariadb,
        limits,
    }
}

pub fn test_limits() -> ProxyLimits {
    ProxyLimits {
        no_master_wait: Duration::from_millis(500),
        handshake_timeout: Duration::from_secs(5),
        ..ProxyLimits::default()
    }
}

/// Listens on 127.0.0.1 and connects each accepted client to `target` from source address
/// `source`, piping bytes: lets the `mariadb` CLI (which cannot bind a source address) reach
/// the proxy as if it ran on another host.
pub async fn source_forwarder(source: std::net::IpAddr, target: SocketAddr) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let sock = TcpSocket::new_v4().unwrap();
                sock.bind(SocketAddr::new(source, 0)).unwrap();
                let Ok(mut up) = sock.connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
            });
        }
    });
    port
}

/// A raw MySQL protocol client for what the CLI cannot do.
pub struct Raw {
    pub s: TcpStream,
    pub connection_id: u32,
}

/// A packet as the raw client reads it.
#[derive(Debug)]
pub struct Pkt {
    pub seq: u8,
    pub payload: Vec<u8>,
}

impl Pkt {
    pub fn is_err(&self) -> bool {
        self.payload.first() == Some(&0xFF)
    }

    pub fn err_code(&self) -> u16 {
        assert!(self.is_err(), "not an ERR packet: {:?}", self.payload);
        u16::from_le_bytes([self.payload[1], self.payload[2]])
    }

    pub fn err_state(&self) -> String {
        String::from_utf8_lossy(&self.payload[4..9]).into_owned()
    }

    pub fn err_message(&self) -> String {
        String::from_utf8_lossy(&self.payload[9..]).into_owned()
    }
}

pub async fn read_pkt(s: &mut TcpStream) -> std::io::Result<Pkt> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await?;
    let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await?;
    Ok(Pkt { seq: h[3], payload })
}

pub async fn write_pkt(s: &mut TcpStream, seq: u8, payload: &[u8]) {
    let mut v = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    v.push(seq);
    v.extend_from_slice(payload);
    s.write_all(&v).await.unwrap();
}

/// A handshake response logging in as `user` with an empty password (mysql_native_password).
pub fn handshake_response(user: &str) -> Vec<u8> {
    handshake_response_caps(user, 0)
}

/// Like [`handshake_response`], with `extra_caps` (e.g. `CLIENT_DEPRECATE_EOF`, 1 << 24).
pub fn handshake_response_caps(user: &str, extra_caps: u32) -> Vec<u8> {
    let caps: u32 = 1 | (1 << 9) | (1 << 13) | (1 << 15) | (1 << 19) | extra_caps;
    let mut r = caps.to_le_bytes().to_vec();
    r.extend_from_slice(&(16u32 << 20).to_le_bytes());
    r.push(45);
    r.extend_from_slice(&[0; 23]);
    r.extend_from_slice(user.as_bytes());
    r.push(0);
    r.push(0); // empty auth response
    r.extend_from_slice(b"mysql_native_password\0");
    r
}

/// Connects to a port that refuses (before any backend greets) and returns the ERR packet as a
/// client sees it: a protocol-10 greeting first, then, in answer to the handshake response, the
/// ERR with sequence id 2, then EOF.
pub async fn refused(port: u16) -> Pkt {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let g = tokio::time::timeout(Duration::from_secs(10), read_pkt(&mut s))
        .await
        .expect("no greeting")
        .unwrap();
    assert_eq!((g.seq, g.payload[0]), (0, 10), "greeting expected: {g:?}");
    write_pkt(&mut s, 1, &handshake_response("raw")).await;
    let p = tokio::time::timeout(Duration::from_secs(10), read_pkt(&mut s))
        .await
        .expect("no answer to the handshake response")
        .unwrap();
    assert!(p.is_err(), "ERR expected: {p:?}");
    assert_eq!(p.seq, 2, "{p:?}");
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(r, Ok(Ok(0))),
        "connection not closed after the ERR: {r:?} {rest:?}"
    );
    p
}

impl Raw {
    /// Logs in as `user` with an empty password (mysql_native_password).
    pub async fn connect(port: u16, user: &str) -> Raw {
        Raw::connect_caps(port, user, 0).await
    }

    /// Logs in with `extra_caps` added to the client capabilities.
    pub async fn connect_caps(port: u16, user: &str, extra_caps: u32) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let g = read_pkt(&mut s).await.unwrap();
        assert_eq!(g.payload[0], 10, "greeting expected, got {:?}", g.payload);
        let nul = g.payload[1..].iter().position(|&b| b == 0).unwrap();
        let at = 1 + nul + 1;
        let connection_id = u32::from_le_bytes(g.payload[at..at + 4].try_into().unwrap());
        write_pkt(&mut s, 1, &handshake_response_caps(user, extra_caps)).await;
        let ok = read_pkt(&mut s).await.unwrap();
        assert_eq!(
            ok.payload[0],
            0,
            "login failed: {:?}",
            String::from_utf8_lossy(&ok.payload)
        );
        Raw { s, connection_id }
    }

    /// Sends a command packet (seq 0) and returns the first response packet.
    pub async fn command(&mut self, payload: &[u8]) -> std::io::Result<Pkt> {
        write_pkt(&mut self.s, 0, payload).await;
        read_pkt(&mut self.s).await
    }

    /// Sends a query and reads the whole response; returns the first packet and the text rows.
    pub async fn query(&mut self, sql: &str) -> std::io::Result<(Pkt, Vec<Vec<String>>)> {
        let mut p = vec![0x03];
        p.extend_from_slice(sql.as_bytes());
        let first = self.command(&p).await?;
        let mut rows = Vec::new();
        if first.payload[0] == 0 || first.is_err() {
            return Ok((first, rows));
        }
        // Column definitions until EOF, then rows until EOF.
        loop {
            let p = read_pkt(&mut self.s).await?;
            if p.payload[0] == 0xFE && p.payload.len() < 9 {
                break;
            }
        }
        loop {
            let p = read_pkt(&mut self.s).await?;
            if p.payload[0] == 0xFE && p.payload.len() < 9 {
                break;
            }
            let mut row = Vec::new();
            let mut i = 0;
            while i < p.payload.len() {
                if p.payload[i] == 0xFB {
                    row.push("NULL".to_string());
                    i += 1;
                    continue;
                }
                let len = p.payload[i] as usize;
                row.push(String::from_utf8_lossy(&p.payload[i + 1..i + 1 + len]).into_owned());
                i += 1 + len;
            }
            rows.push(row);
        }
        Ok((first, rows))
    }
}

/// Polls `cond` every 20 ms until it holds or `within` passes; panics with `what` otherwise.
pub async fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn data_dir(s: &Server) -> &Path {
    s.dir.path()
}
