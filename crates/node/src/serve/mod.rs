//! serve: the fake replication master the local mariadbd replicates from while this node is a
//! replica (DESIGN §1). It streams whole transactions that the global binlog committed and
//! accepted, in a virtual binlog of its own, to a MariaDB replica in GTID mode with semi-sync
//! framing; a replica whose position does not match the log exactly gets error 1236. A large
//! transaction is read and sent in pieces (memory: one read plus the largest event), its end
//! event last.
//!
//! * [`source`]: what is streamed ([`TxnSource`], read in pieces by a [`TxnReader`];
//!   [`MemTxnSource`] for tests).
//! * [`group`]: cuts a transaction arriving in pieces into whole events, checking the group.
//! * [`start`]: where a dump starts, or why it is refused.
//! * [`vbinlog`]: the virtual binlog's file names and offsets.
//! * [`query`]: the replica's set-up statements.
//! * [`session`] and [`dump`]: one replica connection.
//! * [`server`]: the listener, connection registry and metrics.
//! * [`binlog_file`]: reads a mariadbd's binlog files into transactions.

pub mod binlog_file;
pub mod dump;
pub mod error;
pub mod group;
pub mod query;
pub mod server;
pub mod session;
pub mod source;
pub mod start;
pub mod vbinlog;

pub use error::ServeError;
pub use server::{Serve, ServeConfig, ServeEvent, ServeHandle, ServeMetrics};
pub use source::{
    MemTxnReader, MemTxnSource, SourceError, Standing, Txn, TxnPiece, TxnReader, TxnSource,
};
pub use start::{Refusal, RefusalKind, RefusalReason};
