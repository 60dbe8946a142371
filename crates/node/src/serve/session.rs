//! One replica connection before its dump: greeting, mysql_native_password authentication, the
//! canned answers to the replica's set-up statements, COM_REGISTER_SLAVE, KILL, PING, QUIT; then
//! COM_BINLOG_DUMP hands the connection to [`super::dump`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use quorumsql_wire::auth::{verify_native_password, AuthSwitchRequest, MYSQL_NATIVE_PASSWORD};
use quorumsql_wire::command::Command;
use quorumsql_wire::handshake::{
    caps, Greeting, HandshakeResponse, DEFAULT_CHARSET, SERVER_STATUS_AUTOCOMMIT,
};
use quorumsql_wire::response::{encode_text_result_set, ColumnDef, ErrPacket, OkPacket};
use quorumsql_wire::PacketCodec;
use rand::Rng;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::dump::{self, DumpRequest};
use super::error::ServeError;
use super::query::{self, Query};
use super::server::{Counters, Shared};

/// The version serve announces. The `5.5.5-` prefix is what MariaDB servers send; replicas strip
/// it and need major version ≥ 10 for GTID mode.
pub const SERVER_VERSION: &str = "5.5.5-10.11.19-MariaDB-quorumsql-serve-log";

/// Capabilities of the greeting (as the verified prototype: protocol 4.1, plugin auth, connect
/// attributes; no SSL, no compression, no DEPRECATE_EOF). CLIENT_MYSQL is clear: MariaDB server.
const SERVER_CAPS: u32 = 0x003F_F7DE;

pub(crate) const ER_ACCESS_DENIED: u16 = 1045;
pub(crate) const ER_UNKNOWN_COM: u16 = 1047;
pub(crate) const ER_NO_SUCH_THREAD: u16 = 1094;
pub(crate) const ER_NOT_SUPPORTED_YET: u16 = 1235;

pub(crate) type Conn = Framed<TcpStream, PacketCodec>;

/// The user variables a replica set with `SET @x=…` (names lower-cased).
pub type UserVars = HashMap<String, String>;

/// Serves one connection until it quits, is killed, or its dump ends.
pub(crate) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    conn_id: u32,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    let _ = stream.set_nodelay(true);
    let codec = PacketCodec::new(shared.cfg.max_command_bytes);
    let mut conn = Framed::new(stream, codec);
    let auth_timeout = shared.cfg.auth_timeout;
    let authed = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = tokio::time::timeout(auth_timeout, authenticate(&mut conn, peer, conn_id, &shared)) => match r {
            Ok(r) => r?,
            Err(_) => {
                return Err(ServeError::Protocol {
                    conn: conn_id,
                    detail: format!("no authentication within {auth_timeout:?}"),
                })
            }
        },
    };
    if !authed {
        return Ok(());
    }
    let mut vars = UserVars::new();
    let mut registered: Option<u32> = None;
    loop {
        conn.codec_mut().reset_sequence();
        let packet = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            p = conn.next() => match p {
                None => return Ok(()),
                Some(Err(source)) => return Err(ServeError::Wire { conn: conn_id, source }),
                Some(Ok(p)) => p,
            },
        };
        let cmd = match Command::decode(&packet.payload) {
            Ok(c) => c,
            Err(e) => {
                send_err(
                    &mut conn,
                    conn_id,
                    ErrPacket::new(
                        ER_UNKNOWN_COM,
                        format!("quorumsql serve: malformed command: {e}"),
                    ),
                )
                .await?;
                continue;
            }
        };
        match cmd {
            Command::Quit => return Ok(()),
            Command::Ping => send_ok(&mut conn, conn_id).await?,
            Command::Query(sql) => {
                handle_query(&mut conn, conn_id, &shared, &mut vars, &sql).await?;
            }
            Command::ProcessKill(id) => kill(&mut conn, conn_id, &shared, id).await?,
            Command::RegisterSlave(r) => {
                tracing::info!(conn = conn_id, %peer, replica_server_id = r.server_id, "serve: replica registered");
                registered = Some(r.server_id);
                send_ok(&mut conn, conn_id).await?;
            }
            Command::BinlogDump(d) => {
                if d.server_id == shared.cfg.server_id {
                    let msg = format!("quorumsql serve: the replica's server_id {} equals serve's own server_id; give serve a reserved id", d.server_id);
                    send_err(
                        &mut conn,
                        conn_id,
                        ErrPacket::new(dump::ER_MASTER_FATAL_ERROR_READING_BINLOG, msg),
                    )
                    .await?;
                    return Ok(());
                }
                let req = DumpRequest {
                    conn_id,
                    replica_server_id: d.server_id,
                    registered_server_id: registered,
                    flags: d.flags,
                    vars,
                };
                return dump::run(conn, req, shared, cancel).await;
            }
            other => {
                let msg = format!(
                    "quorumsql serve is a replication-only master: command {:#04x} is not supported",
                    other.code()
                );
                send_err(&mut conn, conn_id, ErrPacket::new(ER_UNKNOWN_COM, msg)).await?;
            }
        }
    }
}

/// Answers a connection over the limit with ER_CON_COUNT_ERROR (a client sees it before auth).
pub(crate) async fn refuse_too_many(stream: TcpStream) {
    let mut conn = Framed::new(stream, PacketCodec::new(1024));
    let e = ErrPacket::new(1040, "Too many connections (quorumsql serve)");
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.send(e.to_bytes())).await;
}

/// Greeting and authentication. `Ok(false)`: the client was refused (ERR sent) or left.
async fn authenticate(
    conn: &mut Conn,
    peer: SocketAddr,
    conn_id: u32,
    shared: &Shared,
) -> Result<bool, ServeError> {
    let scramble: Vec<u8> = {
        let mut rng = rand::thread_rng();
        // Printable bytes: the scramble travels NUL-terminated.
        (0..20).map(|_| rng.gen_range(0x21u8..0x7F)).collect()
    };
    let greeting = Greeting {
        server_version: SERVER_VERSION.to_string(),
        connection_id: conn_id,
        scramble: scramble.clone(),
        capabilities: SERVER_CAPS,
        charset: DEFAULT_CHARSET,
        status: SERVER_STATUS_AUTOCOMMIT,
        mariadb_ext_caps: 0,
        auth_plugin: MYSQL_NATIVE_PASSWORD.to_string(),
    };
    send(conn, conn_id, greeting.to_bytes()).await?;
    let Some(resp) = recv(conn, conn_id).await? else {
        return Ok(false);
    };
    let resp = match HandshakeResponse::decode(&resp) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("quorumsql serve: bad handshake response: {e}");
            send_err(conn, conn_id, ErrPacket::new(1043, msg)).await?;
            return Ok(false);
        }
    };
    let mut auth = resp.auth_response.clone();
    if resp.capabilities & caps::PLUGIN_AUTH != 0
        && resp
            .auth_plugin
            .as_deref()
            .is_some_and(|p| p != MYSQL_NATIVE_PASSWORD)
    {
        let switch = AuthSwitchRequest {
            plugin: MYSQL_NATIVE_PASSWORD.to_string(),
            data: scramble.clone(),
        };
        send(conn, conn_id, switch.to_bytes()).await?;
        let Some(a) = recv(conn, conn_id).await? else {
            return Ok(false);
        };
        auth = a.to_vec();
    }
    let ok = resp.user == shared.cfg.user
        && verify_native_password(&scramble, &auth, shared.password_hash.as_ref());
    if !ok {
        Counters::add(&shared.counters.auth_failures, 1);
        tracing::warn!(conn = conn_id, %peer, user = %resp.user, "serve: access denied");
        let mut e = ErrPacket::new(
            ER_ACCESS_DENIED,
            format!(
                "Access denied for user '{}'@'{}' (using password: {})",
                resp.user,
                peer.ip(),
                if auth.is_empty() { "NO" } else { "YES" }
            ),
        );
        e.state = *b"28000";
        send_err(conn, conn_id, e).await?;
        return Ok(false);
    }
    send_ok(conn, conn_id).await?;
    Ok(true)
}

async fn handle_query(
    conn: &mut Conn,
    conn_id: u32,
    shared: &Shared,
    vars: &mut UserVars,
    sql: &Bytes,
) -> Result<(), ServeError> {
    let text = String::from_utf8_lossy(sql);
    let Some(q) = query::parse(&text) else {
        tracing::info!(conn = conn_id, sql = %text, "serve: unsupported statement");
        let shown: String = text.chars().take(200).collect();
        let msg = format!(
            "quorumsql serve is a replication-only master and does not answer this statement: {shown}"
        );
        return send_err(conn, conn_id, ErrPacket::new(ER_NOT_SUPPORTED_YET, msg)).await;
    };
    tracing::debug!(conn = conn_id, sql = %text, "serve: statement");
    match q {
        Query::UnixTimestamp => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            result_set(
                conn,
                conn_id,
                &["UNIX_TIMESTAMP()"],
                vec![vec![Some(now.to_string())]],
            )
            .await
        }
        Query::Version => {
            let v = SERVER_VERSION.trim_start_matches("5.5.5-").to_string();
            result_set(conn, conn_id, &["VERSION()"], vec![vec![Some(v)]]).await
        }
        Query::ShowVariables(pattern) => {
            let all = [
                ("server_id", shared.cfg.server_id.to_string()),
                // Always a row: without it a replica falls back to asynchronous replication and
                // a demoted master silently skips its own re-served transactions (§3.4).
                ("rpl_semi_sync_master_enabled", "ON".to_string()),
                ("binlog_checksum", query::BINLOG_CHECKSUM.to_string()),
                ("gtid_domain_id", "0".to_string()),
                ("gtid_strict_mode", "ON".to_string()),
            ];
            let rows = all
                .iter()
                .filter(|(name, _)| like(&pattern, name))
                .map(|(n, v)| vec![Some(n.to_string()), Some(v.clone())])
                .collect();
            result_set(conn, conn_id, &["Variable_name", "Value"], rows).await
        }
        Query::SetUserVar { name, value } => {
            vars.insert(name, value);
            send_ok(conn, conn_id).await
        }
        Query::SetSession => send_ok(conn, conn_id).await,
        Query::SelectUserVar(name) => {
            let v = vars.get(&name).cloned();
            let col = format!("@{name}");
            result_set(conn, conn_id, &[col.as_str()], vec![vec![v]]).await
        }
        Query::SelectSysVar(name) => {
            let v = match name.as_str() {
                "gtid_domain_id" => "0".to_string(),
                "server_id" => shared.cfg.server_id.to_string(),
                "binlog_checksum" => query::BINLOG_CHECKSUM.to_string(),
                "version" => SERVER_VERSION.trim_start_matches("5.5.5-").to_string(),
                "gtid_strict_mode" => "1".to_string(),
                _ => {
                    let msg = format!("quorumsql serve does not know the system variable @@{name}");
                    return send_err(conn, conn_id, ErrPacket::new(1193, msg)).await;
                }
            };
            let col = format!("@@{name}");
            result_set(conn, conn_id, &[col.as_str()], vec![vec![Some(v)]]).await
        }
        Query::Kill { id, .. } => kill(conn, conn_id, shared, id).await,
    }
}

/// `KILL n`: a semi-sync replica's STOP SLAVE sends it on a second connection to end its dump.
async fn kill(conn: &mut Conn, conn_id: u32, shared: &Shared, id: u32) -> Result<(), ServeError> {
    if shared.kill(id) {
        tracing::info!(conn = conn_id, killed = id, "serve: KILL");
        send_ok(conn, conn_id).await
    } else {
        send_err(
            conn,
            conn_id,
            ErrPacket::new(ER_NO_SUCH_THREAD, format!("Unknown thread id: {id}")),
        )
        .await
    }
}

/// SQL LIKE with `%` and `_`, ASCII case-insensitive (names are lower-cased already).
fn like(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'%', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some((b'_', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((b'\\', rest)) if !rest.is_empty() => {
                n.first() == rest.first() && go(&rest[1..], &n[1..])
            }
            Some((c, rest)) => {
                n.first().is_some_and(|x| x.eq_ignore_ascii_case(c)) && go(rest, &n[1..])
            }
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

async fn result_set(
    conn: &mut Conn,
    conn_id: u32,
    columns: &[&str],
    rows: Vec<Vec<Option<String>>>,
) -> Result<(), ServeError> {
    let cols: Vec<ColumnDef> = columns.iter().map(|c| ColumnDef::text(c)).collect();
    let payloads = encode_text_result_set(&cols, &rows, SERVER_STATUS_AUTOCOMMIT);
    for p in payloads {
        conn.feed(p).await.map_err(|e| wire_to_serve(conn_id, e))?;
    }
    SinkExt::<Bytes>::flush(conn)
        .await
        .map_err(|e| wire_to_serve(conn_id, e))
}

pub(crate) async fn send(conn: &mut Conn, conn_id: u32, payload: Bytes) -> Result<(), ServeError> {
    conn.send(payload)
        .await
        .map_err(|e| wire_to_serve(conn_id, e))
}

pub(crate) async fn send_ok(conn: &mut Conn, conn_id: u32) -> Result<(), ServeError> {
    let ok = OkPacket {
        status: SERVER_STATUS_AUTOCOMMIT,
        ..OkPacket::default()
    };
    send(conn, conn_id, ok.to_bytes()).await
}

pub(crate) async fn send_err(
    conn: &mut Conn,
    conn_id: u32,
    e: ErrPacket,
) -> Result<(), ServeError> {
    send(conn, conn_id, e.to_bytes()).await
}

async fn recv(conn: &mut Conn, conn_id: u32) -> Result<Option<Bytes>, ServeError> {
    match conn.next().await {
        None => Ok(None),
        Some(Ok(p)) => Ok(Some(p.payload)),
        Some(Err(source)) => Err(ServeError::Wire {
            conn: conn_id,
            source,
        }),
    }
}

fn wire_to_serve(conn: u32, e: quorumsql_wire::WireError) -> ServeError {
    match e {
        quorumsql_wire::WireError::Io(source) => ServeError::Io { conn, source },
        source => ServeError::Wire { conn, source },
    }
}

#[cfg(test)]
mod tests {
    use super::like;

    #[test]
    fn like_patterns() {
        assert!(like("server_id", "server_id"));
        assert!(like(
            "rpl_semi_sync_master_enabled",
            "rpl_semi_sync_master_enabled"
        ));
        assert!(like("rpl_semi%", "rpl_semi_sync_master_enabled"));
        assert!(like("server\\_id", "server_id"));
        assert!(!like("server_id", "gtid_domain_id"));
    }
}
