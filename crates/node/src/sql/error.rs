//! What can go wrong talking to a MariaDB server.

use std::time::Duration;

use quorumsql_wire::response::ErrPacket;
use quorumsql_wire::WireError;

/// A failed client operation. `Server` is the server saying no (the connection stays usable);
/// every other variant leaves the connection unusable (the client marks it broken).
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("server error {code} ({state}) during {during}: {message}")]
    Server {
        code: u16,
        state: String,
        message: String,
        /// The statement (cut to 200 bytes) or the phase, e.g. "handshake".
        during: String,
    },
    #[error("I/O error during {during} with {peer}: {source}")]
    Io {
        peer: String,
        during: String,
        #[source]
        source: std::io::Error,
    },
    #[error("protocol error during {during} with {peer}: {source}")]
    Protocol {
        peer: String,
        during: String,
        #[source]
        source: WireError,
    },
    #[error("unexpected answer during {during} with {peer}: {detail}")]
    Unexpected {
        peer: String,
        during: String,
        detail: String,
    },
    #[error("{during} with {peer} timed out after {after:?}")]
    Timeout {
        peer: String,
        during: String,
        after: Duration,
    },
    #[error("{peer} closed the connection during {during}")]
    Closed { peer: String, during: String },
    #[error("connection to {peer} is unusable after an earlier failure")]
    Broken { peer: String },
    #[error("{statement:?} returned a result set of {rows} row(s); use query() for it")]
    ReturnedRows { statement: String, rows: usize },
    #[error("column {column:?} is not in the result (columns: {columns:?})")]
    NoSuchColumn {
        column: String,
        columns: Vec<String>,
    },
}

impl SqlError {
    pub(crate) fn server(err: ErrPacket, during: &str) -> Self {
        SqlError::Server {
            code: err.code,
            state: err.state_str(),
            message: err.message,
            during: during.to_string(),
        }
    }

    /// The server error code, if this is a server ERR.
    pub fn server_code(&self) -> Option<u16> {
        match self {
            SqlError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the connection may still be used (only a server ERR leaves it in a known state).
    pub fn connection_usable(&self) -> bool {
        matches!(
            self,
            SqlError::Server { .. } | SqlError::NoSuchColumn { .. } | SqlError::ReturnedRows { .. }
        )
    }
}
