//! Client commands (the first byte of a command packet) and the replication commands'
//! payloads: COM_REGISTER_SLAVE and MariaDB's COM_BINLOG_DUMP.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::{utf8, Reader};
use crate::error::WireError;

/// Command bytes.
pub mod code {
    pub const SLEEP: u8 = 0x00;
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const CREATE_DB: u8 = 0x05;
    pub const DROP_DB: u8 = 0x06;
    pub const REFRESH: u8 = 0x07;
    pub const SHUTDOWN: u8 = 0x08;
    pub const STATISTICS: u8 = 0x09;
    pub const PROCESS_INFO: u8 = 0x0A;
    pub const CONNECT: u8 = 0x0B;
    pub const PROCESS_KILL: u8 = 0x0C;
    pub const DEBUG: u8 = 0x0D;
    pub const PING: u8 = 0x0E;
    pub const TIME: u8 = 0x0F;
    pub const DELAYED_INSERT: u8 = 0x10;
    pub const CHANGE_USER: u8 = 0x11;
    pub const BINLOG_DUMP: u8 = 0x12;
    pub const TABLE_DUMP: u8 = 0x13;
    pub const CONNECT_OUT: u8 = 0x14;
    pub const REGISTER_SLAVE: u8 = 0x15;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1A;
    pub const SET_OPTION: u8 = 0x1B;
    pub const STMT_FETCH: u8 = 0x1C;
    pub const DAEMON: u8 = 0x1D;
    pub const BINLOG_DUMP_GTID: u8 = 0x1E;
    pub const RESET_CONNECTION: u8 = 0x1F;
    /// MariaDB bulk execute.
    pub const STMT_BULK_EXECUTE: u8 = 0xFA;
}

/// `COM_REGISTER_SLAVE` (0x15): a replica announcing itself before its dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterSlave {
    pub server_id: u32,
    pub report_host: Bytes,
    pub report_user: Bytes,
    pub report_password: Bytes,
    pub report_port: u16,
    pub recovery_rank: u32,
    pub master_id: u32,
}

/// `COM_BINLOG_DUMP` (0x12), MariaDB flavour: with `@slave_connect_state` set the master ignores
/// `position` and `file` and starts from the GTID state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogDump {
    pub position: u32,
    pub flags: u16,
    pub server_id: u32,
    pub file: String,
}

/// `BINLOG_DUMP_NON_BLOCK`: send EOF at the end of the binlog instead of waiting.
pub const DUMP_FLAG_NON_BLOCK: u16 = 0x0001;
/// `BINLOG_SEND_ANNOTATE_ROWS_EVENT`.
pub const DUMP_FLAG_SEND_ANNOTATE_ROWS: u16 = 0x0002;

/// One client command packet. Commands the proxy never inspects stay raw in [`Command::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Quit,
    InitDb(Bytes),
    /// SQL text (not necessarily UTF-8).
    Query(Bytes),
    Ping,
    /// `COM_PROCESS_KILL` with the connection id.
    ProcessKill(u32),
    /// `COM_SHUTDOWN` with its optional level byte.
    Shutdown(Option<u8>),
    Statistics,
    ResetConnection,
    StmtPrepare(Bytes),
    RegisterSlave(RegisterSlave),
    BinlogDump(BinlogDump),
    /// MySQL's GTID dump (MariaDB replicas never send it); payload after the command byte.
    BinlogDumpGtid(Bytes),
    /// Any other command: its byte and the payload after it.
    Other {
        code: u8,
        body: Bytes,
    },
}

impl Command {
    pub fn code(&self) -> u8 {
        match self {
            Command::Quit => code::QUIT,
            Command::InitDb(_) => code::INIT_DB,
            Command::Query(_) => code::QUERY,
            Command::Ping => code::PING,
            Command::ProcessKill(_) => code::PROCESS_KILL,
            Command::Shutdown(_) => code::SHUTDOWN,
            Command::Statistics => code::STATISTICS,
            Command::ResetConnection => code::RESET_CONNECTION,
            Command::StmtPrepare(_) => code::STMT_PREPARE,
            Command::RegisterSlave(_) => code::REGISTER_SLAVE,
            Command::BinlogDump(_) => code::BINLOG_DUMP,
            Command::BinlogDumpGtid(_) => code::BINLOG_DUMP_GTID,
            Command::Other { code, .. } => *code,
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.code());
        match self {
            Command::Quit
            | Command::Ping
            | Command::Statistics
            | Command::ResetConnection
            | Command::Shutdown(None) => {}
            Command::InitDb(b)
            | Command::Query(b)
            | Command::StmtPrepare(b)
            | Command::BinlogDumpGtid(b)
            | Command::Other { body: b, .. } => out.put_slice(b),
            Command::ProcessKill(id) => out.put_u32_le(*id),
            Command::Shutdown(Some(level)) => out.put_u8(*level),
            Command::RegisterSlave(r) => {
                out.put_u32_le(r.server_id);
                for s in [&r.report_host, &r.report_user, &r.report_password] {
                    let n = s.len().min(255);
                    out.put_u8(n as u8);
                    out.put_slice(&s[..n]);
                }
                out.put_u16_le(r.report_port);
                out.put_u32_le(r.recovery_rank);
                out.put_u32_le(r.master_id);
            }
            Command::BinlogDump(d) => {
                out.put_u32_le(d.position);
                out.put_u16_le(d.flags);
                out.put_u32_le(d.server_id);
                out.put_slice(d.file.as_bytes());
            }
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    /// Decodes a command packet payload; unknown commands decode as [`Command::Other`].
    pub fn decode(payload: &Bytes) -> Result<Self, WireError> {
        let Some(&first) = payload.first() else {
            return Err(WireError::malformed("command", "empty packet"));
        };
        let body = payload.slice(1..);
        Ok(match first {
            code::QUIT => Command::Quit,
            code::PING => Command::Ping,
            code::STATISTICS => Command::Statistics,
            code::RESET_CONNECTION => Command::ResetConnection,
            code::INIT_DB => Command::InitDb(body),
            code::QUERY => Command::Query(body),
            code::STMT_PREPARE => Command::StmtPrepare(body),
            code::BINLOG_DUMP_GTID => Command::BinlogDumpGtid(body),
            code::PROCESS_KILL => {
                let mut r = Reader::new(&body, "COM_PROCESS_KILL");
                Command::ProcessKill(r.u32()?)
            }
            code::SHUTDOWN => Command::Shutdown(body.first().copied()),
            code::REGISTER_SLAVE => {
                let mut r = Reader::new(&body, "COM_REGISTER_SLAVE");
                let server_id = r.u32()?;
                let mut s = || -> Result<Bytes, WireError> {
                    let n = usize::from(r.u8()?);
                    Ok(Bytes::copy_from_slice(r.take(n)?))
                };
                let (report_host, report_user, report_password) = (s()?, s()?, s()?);
                Command::RegisterSlave(RegisterSlave {
                    server_id,
                    report_host,
                    report_user,
                    report_password,
                    report_port: r.u16()?,
                    recovery_rank: r.u32()?,
                    master_id: r.u32()?,
                })
            }
            code::BINLOG_DUMP => {
                let mut r = Reader::new(&body, "COM_BINLOG_DUMP");
                let position = r.u32()?;
                let flags = r.u16()?;
                let server_id = r.u32()?;
                let file = utf8("COM_BINLOG_DUMP file name", r.rest())?;
                Command::BinlogDump(BinlogDump {
                    position,
                    flags,
                    server_id,
                    file,
                })
            }
            code => Command::Other { code, body },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_hex(h: &str) -> Command {
        Command::decode(&Bytes::from(hex::decode(h).expect("hex"))).expect("decodes")
    }

    #[test]
    fn decodes_captured_replication_commands() {
        let reg = decode_hex("15020000000000000b5b0000000000000000");
        let Command::RegisterSlave(r) = &reg else {
            panic!("{reg:?}")
        };
        assert_eq!((r.server_id, r.report_port), (2, 23307));
        assert!(r.report_host.is_empty());
        assert_eq!(
            hex::encode(reg.to_bytes()),
            "15020000000000000b5b0000000000000000"
        );

        let dump = decode_hex("122e0600000200020000006d7973716c2d62696e2e303030303032");
        assert_eq!(
            dump,
            Command::BinlogDump(BinlogDump {
                position: 1582,
                flags: DUMP_FLAG_SEND_ANNOTATE_ROWS,
                server_id: 2,
                file: "mysql-bin.000002".into()
            })
        );
        assert_eq!(
            hex::encode(dump.to_bytes()),
            "122e0600000200020000006d7973716c2d62696e2e303030303032"
        );
    }

    #[test]
    fn kill_and_quit() {
        assert_eq!(decode_hex("0c07000000"), Command::ProcessKill(7));
        assert_eq!(decode_hex("01"), Command::Quit);
        assert!(Command::decode(&Bytes::from_static(&[0x0c, 1])).is_err());
        assert!(Command::decode(&Bytes::new()).is_err());
    }
}
