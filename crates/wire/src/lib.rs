//! MySQL/MariaDB wire formats, with no sockets: packet framing, handshake and auth, commands, text
//! result sets, MariaDB binlog events, semi-sync framing, and the grouping of events into
//! transactions. Every decoder returns an error on malformed input and never panics.

mod buf;

pub mod auth;
pub mod command;
pub mod error;
pub mod event;
pub mod gtid;
pub mod handshake;
pub mod packet;
pub mod proxy_protocol;
pub mod response;
pub mod semisync;
pub mod statement;
pub mod txn;

pub use error::WireError;
pub use event::{EventHeader, EventType};
pub use gtid::{BinlogPos, Gtid, GtidParseError, GtidState};
pub use packet::{Packet, PacketCodec};
