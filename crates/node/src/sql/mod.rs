//! An async MySQL/MariaDB client for QuorumSQL's own statements (admin queries, `SET
//! sql_log_bin=0`, `SHOW MASTER STATUS`, ...) and the base of the capture replica connection.
//!
//! ```text
//! error   SqlError: a server ERR (code + message) vs I/O, protocol and timeout failures
//! stream  SqlStream: TCP or unix socket
//! row     Row / QueryRows: text rows as Option<String> with column names
//! conn    SqlConn: connect (mysql_native_password, AuthSwitch to unix_socket), query, exec, and
//!         raw packet access for the replication protocol
//! ```

mod conn;
mod error;
mod row;
mod stream;
#[cfg(test)]
mod tests;

pub use conn::{ConnectOptions, OkInfo, SqlConn, DEFAULT_CONNECT_TIMEOUT, DEFAULT_QUERY_TIMEOUT};
pub use error::SqlError;
pub use row::{QueryRows, Row};
pub use stream::SqlStream;
