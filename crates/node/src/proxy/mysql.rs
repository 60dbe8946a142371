//! The MySQL protocol facts the relay needs beyond `quorumsql_wire`: the packet header as a
//! borrowed slice, in-place patches of the greeting and the handshake response (the relay changes
//! a few bits of packets it never decodes and must not allocate per packet), and the error codes
//! the proxy answers with. Capability bits, command bytes and the ERR/OK packets the proxy writes
//! itself come from `quorumsql_wire`.

use bytes::BytesMut;
use quorumsql_wire::handshake::SERVER_STATUS_AUTOCOMMIT;
use quorumsql_wire::packet::encode_packet;
use quorumsql_wire::response::{ErrPacket, OkPacket};

/// Command bytes (first payload byte of a command packet).
pub use quorumsql_wire::command::code as com;
/// Capability bits (the relay touches COMPRESS, PROTOCOL_41, SSL and MULTI_STATEMENTS).
pub use quorumsql_wire::handshake::caps;
/// Largest payload of one physical packet; a chunk of exactly this size is continued.
pub use quorumsql_wire::packet::MAX_CHUNK;

/// Length of a packet header: 3-byte little-endian payload length and a sequence id.
pub const HEADER_LEN: usize = 4;

/// `COM_SET_OPTION` argument that turns multi-statements on.
pub const MYSQL_OPTION_MULTI_STATEMENTS_ON: u16 = 0;

/// Parses a packet header: (payload length, sequence id).
pub fn parse_header(h: &[u8; HEADER_LEN]) -> (usize, u8) {
    (
        usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16,
        h[3],
    )
}

/// What the proxy learned from (and changed in) the server greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreetingInfo {
    /// mariadbd's thread id for this connection; `CONNECTION_ID()` returns the same number.
    pub connection_id: u32,
    /// The server's capability flags as sent (before `clear_caps`).
    pub capabilities: u32,
}

/// Why a greeting could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GreetingError {
    #[error("server greeting has protocol version {0}, expected 10")]
    Protocol(u8),
    #[error("server greeting is truncated")]
    Truncated,
}

/// Reads the connection id from a protocol-10 greeting payload and clears `clear_caps` from its
/// capability flags in place (so the client never negotiates TLS or compression through a relay
/// that does not speak them).
pub fn patch_greeting(payload: &mut [u8], clear_caps: u32) -> Result<GreetingInfo, GreetingError> {
    let proto = *payload.first().ok_or(GreetingError::Truncated)?;
    if proto != 10 {
        return Err(GreetingError::Protocol(proto));
    }
    let nul = payload[1..]
        .iter()
        .position(|&b| b == 0)
        .ok_or(GreetingError::Truncated)?;
    // version NUL, connection id (4), scramble part 1 (8), filler (1), caps low (2),
    // charset (1), status (2), caps high (2).
    let id_at = 1 + nul + 1;
    let caps_lo = id_at + 4 + 8 + 1;
    let caps_hi = caps_lo + 2 + 1 + 2;
    if payload.len() < caps_hi + 2 {
        return Err(GreetingError::Truncated);
    }
    let connection_id = u32::from_le_bytes([
        payload[id_at],
        payload[id_at + 1],
        payload[id_at + 2],
        payload[id_at + 3],
    ]);
    let lo_sent = u16::from_le_bytes([payload[caps_lo], payload[caps_lo + 1]]);
    let hi_sent = u16::from_le_bytes([payload[caps_hi], payload[caps_hi + 1]]);
    let capabilities = u32::from(lo_sent) | u32::from(hi_sent) << 16;
    let lo = lo_sent & !(clear_caps as u16);
    let hi = hi_sent & !((clear_caps >> 16) as u16);
    payload[caps_lo..caps_lo + 2].copy_from_slice(&lo.to_le_bytes());
    payload[caps_hi..caps_hi + 2].copy_from_slice(&hi.to_le_bytes());
    Ok(GreetingInfo {
        connection_id,
        capabilities,
    })
}

/// Bytes of a handshake response the proxy looks at: caps (4), max packet (4), charset (1),
/// filler (23), then the NUL-terminated user name (at most 128 characters in MariaDB, in utf8).
pub const HANDSHAKE_RESPONSE_HEAD: usize = 32 + 512 + 1;

/// The client's handshake response as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHello {
    /// The short packet a client sends before switching to TLS.
    SslRequest,
    /// A handshake response; `user` is `None` when it did not fit the inspected head.
    Response { user: Option<String> },
    /// Not a protocol-4.1 handshake response.
    Malformed,
}

/// Inspects the head of the client's first packet, clearing `clear_caps` and setting
/// `set_caps` in place (the proxy sets `CLIENT_SESSION_TRACK` to learn each commit's GTID).
pub fn patch_handshake_response(
    head: &mut [u8],
    total_len: usize,
    clear_caps: u32,
    set_caps: u32,
) -> ClientHello {
    if head.len() < 4 {
        return ClientHello::Malformed;
    }
    let caps = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if caps & caps::PROTOCOL_41 == 0 || total_len < 32 {
        return ClientHello::Malformed;
    }
    if caps & caps::SSL != 0 && total_len == 32 {
        return ClientHello::SslRequest;
    }
    head[0..4].copy_from_slice(&((caps & !clear_caps) | set_caps).to_le_bytes());
    let user = head.get(32..).and_then(|rest| {
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok().map(str::to_owned)
    });
    ClientHello::Response { user }
}

/// A MariaDB error the proxy answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlError {
    pub code: u16,
    pub state: [u8; 5],
}

impl SqlError {
    pub const fn new(code: u16, state: [u8; 5]) -> Self {
        SqlError { code, state }
    }
}

/// `ER_CON_COUNT_ERROR`: too many connections.
pub const ER_CON_COUNT: SqlError = SqlError::new(1040, *b"08004");
/// `ER_HANDSHAKE_ERROR`: bad handshake (garbage, TLS request, stalled handshake).
pub const ER_HANDSHAKE: SqlError = SqlError::new(1043, *b"08S01");
/// `ER_SERVER_SHUTDOWN` with SQLSTATE 08S01 (communication link failure): the proxy's
/// retryable "no master right now / not here" code. Drivers and pools treat both as "reconnect
/// and retry": nothing was executed.
pub const ER_NO_MASTER: SqlError = SqlError::new(1053, *b"08S01");
/// `ER_SERVER_SHUTDOWN` with SQLSTATE 08007 ("transaction resolution unknown"): the connection is
/// gone and a statement in flight (a COMMIT in particular) may or may not have committed.
pub const ER_OUTCOME_UNKNOWN: SqlError = SqlError::new(1053, *b"08007");
/// `ER_CONNECTION_KILLED` with SQLSTATE 08007: closed by a `KILL` through the proxy.
pub const ER_CONNECTION_KILLED: SqlError = SqlError::new(1927, *b"08007");
/// `ER_NET_READ_INTERRUPTED`: closed after the idle timeout.
pub const ER_IDLE: SqlError = SqlError::new(1159, *b"08S01");
/// `ER_NOT_SUPPORTED_YET` (42000): statement or command refused by the proxy; the connection
/// stays open.
pub const ER_REFUSED: SqlError = SqlError::new(1235, *b"42000");
/// `ER_NO_SUCH_THREAD`.
pub const ER_NO_SUCH_THREAD: SqlError = SqlError::new(1094, *b"HY000");
/// `ER_KILL_DENIED_ERROR`.
pub const ER_KILL_DENIED: SqlError = SqlError::new(1095, *b"HY000");
/// `ER_SERVER_SHUTDOWN` / 08S01 for replica-state refusals on the RO port (diverged,
/// rebuilding, behind): pools reconnect, preferably elsewhere.
pub const ER_RO_UNAVAILABLE: SqlError = SqlError::new(1053, *b"08S01");

/// MariaDB's own messages are at most 512 bytes; longer ones are cut (at a character boundary).
const MAX_MESSAGE: usize = 512;

/// An ERR packet (header included) with sequence id `seq`; only on error paths.
pub fn err_packet(seq: u8, err: SqlError, message: &str) -> BytesMut {
    let mut cut = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let payload = ErrPacket {
        code: err.code,
        state: err.state,
        message: message[..cut].to_owned(),
    }
    .to_bytes();
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    encode_packet(seq, &payload, &mut out);
    out
}

/// An OK packet with no affected rows, autocommit status and no warnings.
pub fn ok_packet(seq: u8) -> BytesMut {
    let payload = OkPacket {
        status: SERVER_STATUS_AUTOCOMMIT,
        ..OkPacket::default()
    }
    .to_bytes();
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    encode_packet(seq, &payload, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A greeting captured from mariadbd 10.11.19 (connection id 5, SSL not offered).
    fn greeting() -> Vec<u8> {
        let mut p = vec![10u8];
        p.extend_from_slice(b"5.5.5-10.11.19-MariaDB-log\0");
        p.extend_from_slice(&5u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh");
        p.push(0);
        p.extend_from_slice(&0xFFFFu16.to_le_bytes()); // caps low incl. SSL + COMPRESS
        p.push(45);
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&0x81BFu16.to_le_bytes()); // caps high incl. MULTI_STATEMENTS
        p.push(21);
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
        p
    }

    #[test]
    fn greeting_patch_clears_ssl_and_compress_and_reads_the_connection_id() {
        let mut g = greeting();
        let info = patch_greeting(&mut g, caps::SSL | caps::COMPRESS).unwrap();
        assert_eq!(info.connection_id, 5);
        let at = 1 + 27 + 4 + 8 + 1;
        let lo = u16::from_le_bytes([g[at], g[at + 1]]);
        assert_eq!(u32::from(lo) & (caps::SSL | caps::COMPRESS), 0);
        assert_eq!(lo, 0xFFFF ^ 0x800 ^ 0x20);
        assert_eq!(
            patch_greeting(&mut g[..20], 0),
            Err(GreetingError::Truncated)
        );
        assert_eq!(
            patch_greeting(&mut [9u8, 0, 0], 0),
            Err(GreetingError::Protocol(9))
        );
        assert_eq!(patch_greeting(&mut [], 0), Err(GreetingError::Truncated));
    }

    #[test]
    fn handshake_response_user_and_ssl_request() {
        let mut r = Vec::new();
        r.extend_from_slice(&(caps::PROTOCOL_41 | caps::MULTI_STATEMENTS).to_le_bytes());
        r.extend_from_slice(&[0; 28]);
        r.extend_from_slice(b"app\0\x14");
        let total = r.len();
        assert_eq!(
            patch_handshake_response(&mut r, total, caps::MULTI_STATEMENTS, 0),
            ClientHello::Response {
                user: Some("app".into())
            }
        );
        assert_eq!(
            u32::from_le_bytes([r[0], r[1], r[2], r[3]]),
            caps::PROTOCOL_41
        );
        let mut ssl = (caps::PROTOCOL_41 | caps::SSL).to_le_bytes().to_vec();
        ssl.extend_from_slice(&[0; 28]);
        assert_eq!(
            patch_handshake_response(&mut ssl, 32, 0, 0),
            ClientHello::SslRequest
        );
        assert_eq!(
            patch_handshake_response(&mut [1, 2], 2, 0, 0),
            ClientHello::Malformed
        );
    }

    #[test]
    fn err_packet_layout() {
        let p = err_packet(2, ER_NO_MASTER, "no master");
        assert_eq!(&p[..4], &[(1 + 2 + 1 + 5 + 9) as u8, 0, 0, 2]);
        assert_eq!(p[4], 0xFF);
        assert_eq!(u16::from_le_bytes([p[5], p[6]]), 1053);
        assert_eq!(&p[7..13], b"#08S01");
        assert_eq!(&p[13..], b"no master");
        let long = "é".repeat(400);
        let p = err_packet(0, ER_REFUSED, &long);
        assert!(std::str::from_utf8(&p[13..]).is_ok());
        assert_eq!(p.len(), 13 + 512);
        assert_eq!(
            &ok_packet(3)[..],
            &[7, 0, 0, 3, 0x00, 0, 0, 0x02, 0x00, 0, 0]
        );
    }
}
