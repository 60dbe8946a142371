//! serve's error type at its module boundary.

use std::net::SocketAddr;

use quorumsql_wire::WireError;

use super::source::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("serve: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serve: configuration: {0}")]
    Config(String),
    #[error("serve: connection {conn}: I/O error: {source}")]
    Io { conn: u32, source: std::io::Error },
    #[error("serve: connection {conn}: malformed packet from the replica: {source}")]
    Wire { conn: u32, source: WireError },
    #[error("serve: connection {conn}: the replica closed the connection")]
    Closed { conn: u32 },
    #[error("serve: connection {conn}: the transaction source failed: {source}")]
    Source { conn: u32, source: SourceError },
    #[error("serve: connection {conn}: {detail}")]
    Protocol { conn: u32, detail: String },
}
