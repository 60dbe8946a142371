//! `SqlConn`: one client connection (text protocol) plus raw packet access.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::codec::Framed;

use quorumsql_wire::auth::{client_auth_response, native_password_response, AuthSwitchRequest};
use quorumsql_wire::auth::{MYSQL_NATIVE_PASSWORD, UNIX_SOCKET};
use quorumsql_wire::command::Command;
use quorumsql_wire::handshake::{caps, Greeting, HandshakeResponse, DEFAULT_CHARSET};
use quorumsql_wire::packet::DEFAULT_MAX_PAYLOAD;
use quorumsql_wire::response::{
    is_err, is_ok, row_strings, ErrPacket, OkPacket, QueryResult, TextResultParser,
};
use quorumsql_wire::{Packet, PacketCodec, WireError};

use super::error::SqlError;
use super::row::{QueryRows, Row};
use super::stream::SqlStream;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What an OK packet reports (affected rows, last insert id, status, warnings, info).
pub type OkInfo = OkPacket;

/// How to connect. [`ConnectOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub user: String,
    pub password: String,
    pub database: Option<String>,
    /// Bounds TCP/unix connect plus the whole handshake.
    pub connect_timeout: Duration,
    /// Bounds each `query`/`exec`/`ping` (changeable later with `set_query_timeout`).
    pub query_timeout: Duration,
    /// Largest packet payload accepted from the server.
    pub max_packet: usize,
    /// Largest total size of one query result.
    pub max_result_bytes: usize,
    pub connect_attrs: Vec<(String, String)>,
}

impl ConnectOptions {
    pub fn new(user: &str, password: &str) -> Self {
        ConnectOptions {
            user: user.to_string(),
            password: password.to_string(),
            database: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            max_packet: DEFAULT_MAX_PAYLOAD,
            max_result_bytes: 256 << 20,
            connect_attrs: vec![("_client_name".into(), "quorumsql".into())],
        }
    }
}

/// How many auth round trips (switches) a handshake may take.
const MAX_AUTH_ROUNDS: usize = 4;

/// One authenticated connection. After any failure other than a server ERR the connection is
/// marked broken and every later call fails with [`SqlError::Broken`]: its state is unknown.
pub struct SqlConn {
    framed: Framed<SqlStream, PacketCodec>,
    peer: String,
    greeting: Greeting,
    capabilities: u32,
    auth_plugin: String,
    query_timeout: Duration,
    max_result_bytes: usize,
    broken: bool,
}

impl std::fmt::Debug for SqlConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlConn")
            .field("peer", &self.peer)
            .field("connection_id", &self.greeting.connection_id)
            .field("server_version", &self.greeting.server_version)
            .field("broken", &self.broken)
            .finish()
    }
}

fn cut(sql: &str) -> String {
    let mut end = sql.len().min(200);
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    if end < sql.len() {
        format!("{}...", &sql[..end])
    } else {
        sql.to_string()
    }
}

impl SqlConn {
    /// Connects over a unix socket (root@localhost authenticates by unix_socket there).
    pub async fn connect_unix(
        path: impl AsRef<Path>,
        user: &str,
        password: &str,
    ) -> Result<Self, SqlError> {
        Self::connect_unix_with(path, &ConnectOptions::new(user, password)).await
    }

    /// Connects over TCP.
    pub async fn connect_tcp(
        addr: SocketAddr,
        user: &str,
        password: &str,
    ) -> Result<Self, SqlError> {
        Self::connect_tcp_with(addr, &ConnectOptions::new(user, password)).await
    }

    pub async fn connect_unix_with(
        path: impl AsRef<Path>,
        opts: &ConnectOptions,
    ) -> Result<Self, SqlError> {
        let path = path.as_ref();
        let peer = format!("unix:{}", path.display());
        let during = "connect";
        let fut = async {
            let s = UnixStream::connect(path)
                .await
                .map_err(|source| SqlError::Io {
                    peer: peer.clone(),
                    during: during.into(),
                    source,
                })?;
            Self::handshake(SqlStream::Unix(s), peer.clone(), opts).await
        };
        tokio::time::timeout(opts.connect_timeout, fut)
            .await
            .map_err(|_| SqlError::Timeout {
                peer: peer.clone(),
                during: "connect and handshake".into(),
                after: opts.connect_timeout,
            })?
    }

    pub async fn connect_tcp_with(
        addr: SocketAddr,
        opts: &ConnectOptions,
    ) -> Result<Self, SqlError> {
        let peer = addr.to_string();
        let fut = async {
            let s = TcpStream::connect(addr)
                .await
                .map_err(|source| SqlError::Io {
                    peer: peer.clone(),
                    during: "connect".into(),
                    source,
                })?;
            // Admin statements are small request/response exchanges: no Nagle delay.
            let _ = s.set_nodelay(true);
            Self::handshake(SqlStream::Tcp(s), peer.clone(), opts).await
        };
        tokio::time::timeout(opts.connect_timeout, fut)
            .await
            .map_err(|_| SqlError::Timeout {
                peer: peer.clone(),
                during: "connect and handshake".into(),
                after: opts.connect_timeout,
            })?
    }

    /// Runs the client handshake on an already connected stream (no timeout of its own; the
    /// `connect_*` functions bound it with `connect_timeout`). `peer` names the server in errors.
    pub async fn handshake(
        stream: SqlStream,
        peer: String,
        opts: &ConnectOptions,
    ) -> Result<Self, SqlError> {
        let mut conn = SqlConn {
            framed: Framed::new(stream, PacketCodec::new(opts.max_packet)),
            peer,
            greeting: Greeting {
                server_version: String::new(),
                connection_id: 0,
                scramble: Vec::new(),
                capabilities: 0,
                charset: 0,
                status: 0,
                mariadb_ext_caps: 0,
                auth_plugin: String::new(),
            },
            capabilities: 0,
            auth_plugin: String::new(),
            query_timeout: opts.query_timeout,
            max_result_bytes: opts.max_result_bytes,
            broken: false,
        };
        let during = "handshake";
        let p = conn.next_packet(during).await?;
        if is_err(&p.payload) {
            let e = ErrPacket::decode(&p.payload).map_err(|e| conn.protocol(during, e))?;
            return Err(SqlError::server(e, during));
        }
        let greeting = Greeting::decode(&p.payload).map_err(|e| conn.protocol(during, e))?;
        let wanted = caps::CLIENT_MYSQL
            | caps::LONG_FLAG
            | caps::PROTOCOL_41
            | caps::TRANSACTIONS
            | caps::SECURE_CONNECTION
            | caps::MULTI_RESULTS
            | caps::PS_MULTI_RESULTS
            | caps::PLUGIN_AUTH
            | caps::PLUGIN_AUTH_LENENC_CLIENT_DATA
            | caps::CONNECT_ATTRS
            | if opts.database.is_some() {
                caps::CONNECT_WITH_DB
            } else {
                0
            };
        // CLIENT_MYSQL doubles as "long password"; MariaDB servers clear it in their greeting
        // but clients still send it.
        let capabilities = wanted & (greeting.capabilities | caps::CLIENT_MYSQL);
        for (bit, name) in [
            (caps::PROTOCOL_41, "protocol 4.1"),
            (caps::SECURE_CONNECTION, "secure connection"),
            (caps::PLUGIN_AUTH, "auth plugins"),
        ] {
            if capabilities & bit == 0 {
                conn.broken = true;
                return Err(SqlError::Unexpected {
                    peer: conn.peer.clone(),
                    during: during.into(),
                    detail: format!("server does not support {name}"),
                });
            }
        }
        let password = opts.password.as_bytes();
        let (plugin, auth_response) =
            match client_auth_response(&greeting.auth_plugin, &greeting.scramble, password) {
                Ok(a) => (greeting.auth_plugin.clone(), a),
                // Answer with native password; the server switches us if it wants another plugin.
                Err(_) => (
                    MYSQL_NATIVE_PASSWORD.to_string(),
                    native_password_response(password, &greeting.scramble),
                ),
            };
        let response = HandshakeResponse {
            capabilities,
            max_packet: u32::try_from(opts.max_packet).unwrap_or(u32::MAX),
            charset: DEFAULT_CHARSET,
            mariadb_ext_caps: 0,
            user: opts.user.clone(),
            auth_response,
            database: opts.database.clone(),
            auth_plugin: Some(plugin.clone()),
            connect_attrs: (capabilities & caps::CONNECT_ATTRS != 0)
                .then(|| opts.connect_attrs.clone()),
        };
        conn.greeting = greeting;
        conn.capabilities = capabilities;
        conn.auth_plugin = plugin;
        conn.write_payload_inner(response.to_bytes(), during)
            .await?;
        let during_auth = format!("authentication of user {:?}", opts.user);
        for _ in 0..MAX_AUTH_ROUNDS {
            let p = conn.next_packet(&during_auth).await?;
            match p.payload.first() {
                Some(0x00) => {
                    OkPacket::decode(&p.payload).map_err(|e| conn.protocol(&during_auth, e))?;
                    return Ok(conn);
                }
                Some(0xFF) => {
                    let e = ErrPacket::decode(&p.payload)
                        .map_err(|e| conn.protocol(&during_auth, e))?;
                    return Err(SqlError::server(e, &during_auth));
                }
                Some(0xFE) => {
                    let sw = AuthSwitchRequest::decode(&p.payload)
                        .map_err(|e| conn.protocol(&during_auth, e))?;
                    let answer = client_auth_response(&sw.plugin, &sw.data, password)
                        .map_err(|e| conn.protocol(&during_auth, e))?;
                    conn.auth_plugin = sw.plugin;
                    conn.write_payload_inner(Bytes::from(answer), &during_auth)
                        .await?;
                }
                other => {
                    conn.broken = true;
                    return Err(SqlError::Unexpected {
                        peer: conn.peer.clone(),
                        during: during_auth,
                        detail: format!(
                            "packet starting with {other:?} (only {MYSQL_NATIVE_PASSWORD} and \
                             {UNIX_SOCKET} are supported)"
                        ),
                    });
                }
            }
        }
        conn.broken = true;
        Err(SqlError::Unexpected {
            peer: conn.peer.clone(),
            during: during_auth,
            detail: format!("no OK after {MAX_AUTH_ROUNDS} authentication rounds"),
        })
    }

    /// The server's thread id for this connection (what `KILL` and the processlist name).
    pub fn connection_id(&self) -> u32 {
        self.greeting.connection_id
    }

    /// The version string from the greeting (e.g. `5.5.5-10.11.19-MariaDB-log`).
    pub fn server_version(&self) -> &str {
        &self.greeting.server_version
    }

    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// The negotiated capability flags.
    pub fn capabilities(&self) -> u32 {
        self.capabilities
    }

    /// The auth plugin the client answered last (after any AuthSwitch). A server-side plugin
    /// that reads nothing from the client (unix_socket) does not switch, so this may still say
    /// mysql_native_password.
    pub fn auth_plugin(&self) -> &str {
        &self.auth_plugin
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn query_timeout(&self) -> Duration {
        self.query_timeout
    }

    pub fn set_query_timeout(&mut self, timeout: Duration) {
        self.query_timeout = timeout;
    }

    /// Runs `sql` and returns its rows (none for a statement without a result set).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Row>, SqlError> {
        Ok(self.query_rows(sql).await?.rows)
    }

    /// Runs `sql` and returns the column names with the rows.
    pub async fn query_rows(&mut self, sql: &str) -> Result<QueryRows, SqlError> {
        match self.run(sql).await? {
            QueryResult::Ok(_) => Ok(QueryRows::default()),
            QueryResult::Err(e) => Err(SqlError::server(e, &cut(sql))),
            QueryResult::ResultSet(rs) => {
                let columns: Vec<String> = rs.columns.into_iter().map(|c| c.name).collect();
                let shared: Arc<[String]> = columns.clone().into();
                let rows = rs
                    .rows
                    .iter()
                    .map(|r| Row::new(shared.clone(), row_strings(r)))
                    .collect();
                Ok(QueryRows { columns, rows })
            }
        }
    }

    /// The first column of the first row (`None` if there is no row or the value is NULL), e.g.
    /// `SELECT @@gtid_binlog_state`.
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<String>, SqlError> {
        let rows = self.query(sql).await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_values().into_iter().next().flatten()))
    }

    /// Runs a statement that returns no rows (SET, CREATE, INSERT, ...).
    pub async fn exec(&mut self, sql: &str) -> Result<OkInfo, SqlError> {
        match self.run(sql).await? {
            QueryResult::Ok(ok) => Ok(ok),
            QueryResult::Err(e) => Err(SqlError::server(e, &cut(sql))),
            QueryResult::ResultSet(rs) => Err(SqlError::ReturnedRows {
                statement: cut(sql),
                rows: rs.rows.len(),
            }),
        }
    }

    /// COM_PING.
    pub async fn ping(&mut self) -> Result<(), SqlError> {
        self.check_usable()?;
        let t = self.query_timeout;
        let r = tokio::time::timeout(t, async {
            self.send_command(&Command::Ping.to_bytes()).await?;
            self.read_ok("ping").await
        })
        .await;
        self.settle(r, "ping", t).map(|_| ())
    }

    /// COM_QUIT and close; errors are ignored (the server may already be gone).
    pub async fn quit(mut self) {
        if !self.broken {
            let _ = self.send_command(&Command::Quit.to_bytes()).await;
        }
        let _ = SinkExt::<Bytes>::close(&mut self.framed).await;
    }

    async fn run(&mut self, sql: &str) -> Result<QueryResult, SqlError> {
        self.check_usable()?;
        let t = self.query_timeout;
        let during = cut(sql);
        let r = tokio::time::timeout(t, self.run_inner(sql, &during)).await;
        self.settle(r, &during, t)
    }

    async fn run_inner(&mut self, sql: &str, during: &str) -> Result<QueryResult, SqlError> {
        let mut payload = BytesMut::with_capacity(sql.len() + 1);
        payload.extend_from_slice(&[0x03]);
        payload.extend_from_slice(sql.as_bytes());
        self.framed.codec_mut().reset_sequence();
        self.write_payload_inner(payload.freeze(), during).await?;
        let first = self.read_result(during).await?;
        // Drain further results (CALL, multi-result statements); an error among them wins.
        let mut more = first.more_results();
        let mut later_err = None;
        while more {
            let r = self.read_result(during).await?;
            more = r.more_results();
            if let QueryResult::Err(e) = r {
                later_err.get_or_insert(e);
            }
        }
        match later_err {
            Some(e) if !matches!(first, QueryResult::Err(_)) => Ok(QueryResult::Err(e)),
            _ => Ok(first),
        }
    }

    async fn read_result(&mut self, during: &str) -> Result<QueryResult, SqlError> {
        let mut parser = TextResultParser::new(self.max_result_bytes);
        loop {
            let p = self.next_packet(during).await?;
            match parser.push(&p.payload) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(self.protocol(during, e)),
            }
        }
    }

    fn check_usable(&self) -> Result<(), SqlError> {
        if self.broken {
            return Err(SqlError::Broken {
                peer: self.peer.clone(),
            });
        }
        Ok(())
    }

    fn settle<T>(
        &mut self,
        r: Result<Result<T, SqlError>, tokio::time::error::Elapsed>,
        during: &str,
        after: Duration,
    ) -> Result<T, SqlError> {
        let r = r.unwrap_or_else(|_| {
            Err(SqlError::Timeout {
                peer: self.peer.clone(),
                during: during.to_string(),
                after,
            })
        });
        if let Err(e) = &r {
            if !e.connection_usable() {
                self.broken = true;
            }
        }
        r
    }

    fn protocol(&mut self, during: &str, source: WireError) -> SqlError {
        self.broken = true;
        match source {
            WireError::Io(source) => SqlError::Io {
                peer: self.peer.clone(),
                during: during.to_string(),
                source,
            },
            source => SqlError::Protocol {
                peer: self.peer.clone(),
                during: during.to_string(),
                source,
            },
        }
    }

    async fn next_packet(&mut self, during: &str) -> Result<Packet, SqlError> {
        match self.framed.next().await {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => Err(self.protocol(during, e)),
            None => {
                self.broken = true;
                Err(SqlError::Closed {
                    peer: self.peer.clone(),
                    during: during.to_string(),
                })
            }
        }
    }

    async fn write_payload_inner(&mut self, payload: Bytes, during: &str) -> Result<(), SqlError> {
        match self.framed.send(payload).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.protocol(during, e)),
        }
    }

    // ------------------------------------------------------------ raw packet access

    /// Starts a new command: resets the sequence to 0 and sends `payload` (command byte first).
    /// No timeout: wrap the call if one is needed.
    pub async fn send_command(&mut self, payload: &[u8]) -> Result<(), SqlError> {
        self.check_usable()?;
        self.framed.codec_mut().reset_sequence();
        self.write_payload_inner(Bytes::copy_from_slice(payload), "sending a command")
            .await
    }

    /// Sends `payload` with the next sequence id of the current exchange.
    pub async fn write_payload(&mut self, payload: &[u8]) -> Result<(), SqlError> {
        self.check_usable()?;
        self.write_payload_inner(Bytes::copy_from_slice(payload), "writing a packet")
            .await
    }

    /// Sends a packet with its own sequence id (e.g. a semi-sync ACK, always 0).
    pub async fn write_packet(&mut self, packet: Packet) -> Result<(), SqlError> {
        self.check_usable()?;
        if let Err(e) = self.framed.send(packet).await {
            return Err(self.protocol("writing a packet", e));
        }
        Ok(())
    }

    /// Reads the next packet, waiting as long as it takes (a dump stream may idle between
    /// heartbeats; wrap the call in a timeout if needed).
    pub async fn read_packet(&mut self) -> Result<Packet, SqlError> {
        self.check_usable()?;
        self.next_packet("reading a packet").await
    }

    /// Reads the next packet within `timeout`; a timeout leaves the connection broken.
    pub async fn read_packet_timeout(&mut self, timeout: Duration) -> Result<Packet, SqlError> {
        self.check_usable()?;
        let r = tokio::time::timeout(timeout, self.next_packet("reading a packet")).await;
        self.settle(r, "reading a packet", timeout)
    }

    /// Reads one packet that must be OK (returned) or ERR (a server error), e.g. the answer to
    /// COM_REGISTER_SLAVE or COM_PING.
    pub async fn read_ok(&mut self, during: &str) -> Result<OkInfo, SqlError> {
        self.check_usable()?;
        let p = self.next_packet(during).await?;
        if is_ok(&p.payload) {
            return OkPacket::decode(&p.payload).map_err(|e| self.protocol(during, e));
        }
        if is_err(&p.payload) {
            let e = ErrPacket::decode(&p.payload).map_err(|e| self.protocol(during, e))?;
            return Err(SqlError::server(e, during));
        }
        self.broken = true;
        Err(SqlError::Unexpected {
            peer: self.peer.clone(),
            during: during.to_string(),
            detail: format!(
                "expected OK or ERR, got a packet starting with {:?}",
                p.payload.first()
            ),
        })
    }

    /// Whether incoming packets must carry consecutive sequence ids (switch off for the
    /// semi-sync dump stream, whose numbering restarts after every ACK request).
    pub fn set_check_sequence(&mut self, check: bool) {
        self.framed.codec_mut().set_check_sequence(check);
    }

    pub fn codec_mut(&mut self) -> &mut PacketCodec {
        self.framed.codec_mut()
    }

    /// Gives up the client for the framed stream (buffers included), e.g. to split it into a
    /// reader of dump events and a writer of ACKs.
    pub fn into_framed(self) -> Framed<SqlStream, PacketCodec> {
        self.framed
    }
}
