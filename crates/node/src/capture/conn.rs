//! The replication connection to the local mariadbd: connect (unix socket with `unix_socket` auth
//! or TCP with `mysql_native_password`, through the node's [`SqlConn`]), run the replica set-up
//! sequence of a MariaDB 10.11 IO thread (mariadb-replication §4.1), register, start the
//! semi-sync GTID dump, and then split into a stream reader and an ACK writer.

use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use quorumsql_wire::command::{BinlogDump, Command, RegisterSlave, DUMP_FLAG_SEND_ANNOTATE_ROWS};
use quorumsql_wire::packet::{encode_packet, Packet, PacketCodec};
use quorumsql_wire::semisync::SemiSyncAck;
use quorumsql_wire::{GtidState, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::codec::Decoder;

use crate::sql::{ConnectOptions, SqlConn, SqlError, SqlStream};

/// Where the local mariadbd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Unix socket; the user authenticates with `unix_socket` (root on a QuorumSQL node).
    Unix(PathBuf),
    /// TCP (127.0.0.1); the user authenticates with `mysql_native_password`.
    Tcp(std::net::SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Account capture logs in with (needs REPLICATION SLAVE; root on the unix socket in practice).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a replication connection could not be set up or broke.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error("I/O error on the replication connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed packet on the replication connection: {0}")]
    Wire(#[from] WireError),
    #[error("mariadbd closed the replication connection")]
    Closed,
    /// mariadbd is not set up the way capture requires (a retry cannot fix it).
    #[error("{what}: {detail}")]
    Unexpected { what: String, detail: String },
    #[error("no answer from mariadbd within {0:?} during {1}")]
    Timeout(Duration, &'static str),
}

impl ConnError {
    /// Whether retrying the connection cannot help (wrong set-up, refused login, privileges).
    pub fn is_permanent(&self) -> bool {
        match self {
            ConnError::Unexpected { .. } => true,
            // 1040 too many connections, 1053 shutdown in progress: the server may recover.
            ConnError::Sql(e) => e.server_code().is_some_and(|c| c != 1040 && c != 1053),
            _ => false,
        }
    }
}

/// What the dump needs besides the endpoint.
#[derive(Debug, Clone)]
pub(crate) struct DumpRequest {
    pub server_id: u32,
    pub gtid_state: GtidState,
    pub heartbeat: Duration,
    pub annotate_rows: bool,
}

/// A logged-in connection in command phase.
pub(crate) struct ReplConn {
    conn: SqlConn,
    timeout: Duration,
}

/// Largest result a set-up query may return (they return one short row).
const MAX_RESULT_BYTES: usize = 1 << 20;

impl ReplConn {
    /// Connects and logs in; connect plus handshake, and then every query, are bounded by
    /// `timeout`.
    pub async fn connect(
        endpoint: &Endpoint,
        creds: &Credentials,
        timeout: Duration,
        max_packet: usize,
    ) -> Result<ReplConn, ConnError> {
        let mut opts = ConnectOptions::new(&creds.user, &creds.password);
        opts.connect_timeout = timeout;
        opts.query_timeout = timeout;
        opts.max_packet = max_packet;
        opts.max_result_bytes = MAX_RESULT_BYTES;
        opts.connect_attrs = vec![("_client_name".into(), "quorumsql-capture".into())];
        let conn = match endpoint {
            Endpoint::Unix(path) => SqlConn::connect_unix_with(path, &opts).await?,
            Endpoint::Tcp(addr) => SqlConn::connect_tcp_with(*addr, &opts).await?,
        };
        Ok(ReplConn { conn, timeout })
    }

    async fn value(&mut self, sql: &str) -> Result<String, ConnError> {
        Ok(self.conn.query_value(sql).await?.unwrap_or_default())
    }

    /// The replica set-up sequence, COM_REGISTER_SLAVE and COM_BINLOG_DUMP in GTID mode from
    /// `req.gtid_state` with semi-sync requested. Returns the stream halves.
    pub async fn start_dump(mut self, req: &DumpRequest) -> Result<DumpStream, ConnError> {
        // A master with our server_id would see capture as itself; a replica checks this too.
        let master_id = self.value("SELECT @@server_id").await?;
        if master_id == req.server_id.to_string() {
            return Err(ConnError::Unexpected {
                what: "SELECT @@server_id".into(),
                detail: format!(
                    "mariadbd has server_id {master_id}, the id reserved for capture; capture must use an id no node uses"
                ),
            });
        }
        let hb_ns = req.heartbeat.as_nanos().max(1_000_000);
        self.conn
            .exec(&format!("SET @master_heartbeat_period= {hb_ns}"))
            .await?;
        self.conn
            .exec("SET @master_binlog_checksum= @@global.binlog_checksum")
            .await?;
        let alg = self.value("SELECT @master_binlog_checksum").await?;
        if !alg.eq_ignore_ascii_case("CRC32") {
            return Err(ConnError::Unexpected {
                what: "SELECT @master_binlog_checksum".into(),
                detail: format!(
                    "binlog_checksum is {alg:?}; capture requires CRC32 to verify every event"
                ),
            });
        }
        self.conn.exec("SET @mariadb_slave_capability=4").await?;
        self.conn
            .exec(&format!("SET @slave_connect_state='{}'", req.gtid_state))
            .await?;
        self.conn.exec("SET @slave_gtid_strict_mode=1").await?;
        self.conn
            .exec("SET @slave_gtid_ignore_duplicates=0")
            .await?;
        let register = Command::RegisterSlave(RegisterSlave {
            server_id: req.server_id,
            report_host: bytes::Bytes::from_static(b"quorumsql-capture"),
            report_user: bytes::Bytes::new(),
            report_password: bytes::Bytes::new(),
            report_port: 0,
            recovery_rank: 0,
            master_id: 0,
        });
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            self.conn.send_command(&register.to_bytes()).await?;
            self.conn.read_ok("COM_REGISTER_SLAVE").await
        })
        .await
        .map_err(|_| ConnError::Timeout(timeout, "COM_REGISTER_SLAVE"))??;
        let semi = self
            .conn
            .query("SHOW VARIABLES LIKE 'rpl_semi_sync_master_enabled'")
            .await?;
        let enabled = semi
            .first()
            .and_then(|r| r.values().get(1).cloned().flatten())
            .unwrap_or_default();
        if !enabled.eq_ignore_ascii_case("ON") {
            // Without semi-sync master mode on, commits would not wait for capture at all.
            return Err(ConnError::Unexpected {
                what: "SHOW VARIABLES LIKE 'rpl_semi_sync_master_enabled'".into(),
                detail: format!(
                    "rpl_semi_sync_master_enabled is {enabled:?}; capture requires ON (promotion step 4)"
                ),
            });
        }
        self.conn.exec("SET @rpl_semi_sync_slave= 1").await?;
        let dump = Command::BinlogDump(BinlogDump {
            position: 4,
            flags: if req.annotate_rows {
                DUMP_FLAG_SEND_ANNOTATE_ROWS
            } else {
                0
            },
            server_id: req.server_id,
            file: String::new(),
        });
        tokio::time::timeout(timeout, self.conn.send_command(&dump.to_bytes()))
            .await
            .map_err(|_| ConnError::Timeout(timeout, "COM_BINLOG_DUMP"))??;
        let connection_id = self.conn.connection_id();
        let parts = self.conn.into_framed().into_parts();
        let mut codec = parts.codec;
        // Numbering restarts after every ACK-requested event (mariadb-replication §2.3).
        codec.set_check_sequence(false);
        let (r, w) = tokio::io::split(parts.io);
        Ok(DumpStream {
            reader: DumpReader {
                io: r,
                codec,
                buf: parts.read_buf,
            },
            writer: AckWriter { io: w },
            connection_id,
        })
    }
}

async fn read_packet<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    codec: &mut PacketCodec,
    buf: &mut BytesMut,
) -> Result<Packet, ConnError> {
    loop {
        if let Some(p) = codec.decode(buf)? {
            return Ok(p);
        }
        if buf.capacity() - buf.len() < 8192 {
            buf.reserve(64 * 1024);
        }
        let n = io.read_buf(buf).await?;
        if n == 0 {
            return Err(ConnError::Closed);
        }
    }
}

/// The two halves of a started dump.
pub(crate) struct DumpStream {
    pub reader: DumpReader,
    pub writer: AckWriter,
    pub connection_id: u32,
}

/// Reads dump-stream packets (sequence ids not checked).
pub(crate) struct DumpReader {
    io: ReadHalf<SqlStream>,
    codec: PacketCodec,
    buf: BytesMut,
}

impl DumpReader {
    pub async fn next_packet(&mut self) -> Result<Packet, ConnError> {
        read_packet(&mut self.io, &mut self.codec, &mut self.buf).await
    }
}

/// Writes semi-sync ACKs on the dump connection.
pub(crate) struct AckWriter {
    io: WriteHalf<SqlStream>,
}

impl AckWriter {
    /// Sends one ACK as a fresh packet with sequence id 0 (the master's ack receiver resets its
    /// counter before every read).
    pub async fn send(&mut self, ack: &SemiSyncAck) -> Result<(), ConnError> {
        let mut out = BytesMut::new();
        encode_packet(0, &ack.to_bytes(), &mut out);
        self.io.write_all(&out).await?;
        self.io.flush().await?;
        Ok(())
    }
}
