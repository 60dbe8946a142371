//! The connection handshake: the server greeting (protocol 10) and the client's handshake
//! response, with capability flags, auth plugin name and optional connect attributes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::{put_lenenc_bytes, put_lenenc_int, put_nul_terminated, utf8, Reader};
use crate::error::WireError;

/// Client/server capability bits (the low 32 bits; MariaDB's extended bits travel separately).
pub mod caps {
    /// Set by MySQL servers and clients; a MariaDB server clears it to signal extended caps.
    pub const CLIENT_MYSQL: u32 = 1;
    pub const FOUND_ROWS: u32 = 1 << 1;
    pub const LONG_FLAG: u32 = 1 << 2;
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    pub const NO_SCHEMA: u32 = 1 << 4;
    pub const COMPRESS: u32 = 1 << 5;
    pub const LOCAL_FILES: u32 = 1 << 7;
    pub const IGNORE_SPACE: u32 = 1 << 8;
    pub const PROTOCOL_41: u32 = 1 << 9;
    pub const INTERACTIVE: u32 = 1 << 10;
    pub const SSL: u32 = 1 << 11;
    pub const TRANSACTIONS: u32 = 1 << 13;
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
    pub const CAN_HANDLE_EXPIRED_PASSWORDS: u32 = 1 << 22;
    pub const SESSION_TRACK: u32 = 1 << 23;
    pub const DEPRECATE_EOF: u32 = 1 << 24;
}

/// utf8mb4_general_ci.
pub const DEFAULT_CHARSET: u8 = 45;

/// Server status bit: autocommit is on.
pub const SERVER_STATUS_AUTOCOMMIT: u16 = 0x0002;

/// The server's first packet (protocol version 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// e.g. `5.5.5-10.11.19-MariaDB-log` (the `5.5.5-` prefix keeps old MySQL clients happy).
    pub server_version: String,
    pub connection_id: u32,
    /// Auth plugin data; 20 bytes for mysql_native_password (no trailing NUL).
    pub scramble: Vec<u8>,
    pub capabilities: u32,
    pub charset: u8,
    pub status: u16,
    /// MariaDB extended capabilities (only meaningful when `CLIENT_MYSQL` is clear).
    pub mariadb_ext_caps: u32,
    pub auth_plugin: String,
}

/// Capabilities a server built on this crate may announce: what MariaDB 10.11 announces minus
/// SSL, compression, session tracking and DEPRECATE_EOF (this crate's result sets always end with
/// EOF packets, so a client must not be offered OK-instead-of-EOF).
pub const FAKE_SERVER_CAPABILITIES: u32 =
    0x81ff_f7fe & !caps::SSL & !caps::COMPRESS & !caps::SESSION_TRACK & !caps::DEPRECATE_EOF;

impl Greeting {
    /// The greeting of a server implemented on this crate (fake master, proxy): protocol 10,
    /// mysql_native_password, utf8mb4, autocommit. Scramble bytes are made printable ASCII
    /// without NUL, as MariaDB's are (a NUL would end the scramble early on the client).
    pub fn for_fake_server(server_version: &str, connection_id: u32, scramble: [u8; 20]) -> Self {
        let scramble = scramble.iter().map(|&b| 0x21 + (b % 0x5e)).collect();
        Greeting {
            server_version: server_version.to_string(),
            connection_id,
            scramble,
            capabilities: FAKE_SERVER_CAPABILITIES,
            charset: DEFAULT_CHARSET,
            status: SERVER_STATUS_AUTOCOMMIT,
            mariadb_ext_caps: 0,
            auth_plugin: crate::auth::MYSQL_NATIVE_PASSWORD.to_string(),
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(10);
        put_nul_terminated(out, self.server_version.as_bytes());
        out.put_u32_le(self.connection_id);
        let mut part1 = [0u8; 8];
        let n1 = self.scramble.len().min(8);
        part1[..n1].copy_from_slice(&self.scramble[..n1]);
        out.put_slice(&part1);
        out.put_u8(0);
        out.put_u16_le(self.capabilities as u16);
        out.put_u8(self.charset);
        out.put_u16_le(self.status);
        out.put_u16_le((self.capabilities >> 16) as u16);
        let part2: &[u8] = self.scramble.get(8..).unwrap_or(&[]);
        // Auth data length counts the trailing NUL; at most 255.
        let part2 = &part2[..part2.len().min(254 - 8)];
        out.put_u8((8 + part2.len() + 1) as u8);
        out.put_slice(&[0u8; 6]);
        if self.capabilities & caps::CLIENT_MYSQL == 0 {
            out.put_u32_le(self.mariadb_ext_caps);
        } else {
            out.put_u32_le(0);
        }
        // The second part is at least 12 bytes + NUL on the wire.
        out.put_slice(part2);
        for _ in part2.len()..12 {
            out.put_u8(0);
        }
        out.put_u8(0);
        put_nul_terminated(out, self.auth_plugin.as_bytes());
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload, "server greeting");
        let proto = r.u8()?;
        if proto != 10 {
            return Err(WireError::Unsupported {
                what: "server greeting",
                detail: format!("protocol version {proto} (only 10 is spoken)"),
            });
        }
        let server_version = utf8("server greeting version", r.nul_terminated()?)?;
        let connection_id = r.u32()?;
        let mut scramble = r.take(8)?.to_vec();
        r.u8()?;
        let caps_lo = u32::from(r.u16()?);
        let charset = r.u8()?;
        let status = r.u16()?;
        let caps_hi = u32::from(r.u16()?);
        let capabilities = caps_lo | caps_hi << 16;
        let auth_len = usize::from(r.u8()?);
        r.take(6)?;
        let ext = r.u32()?;
        let mariadb_ext_caps = if capabilities & caps::CLIENT_MYSQL == 0 {
            ext
        } else {
            0
        };
        let mut auth_plugin = String::new();
        if capabilities & caps::SECURE_CONNECTION != 0 {
            let n2 = auth_len.saturating_sub(8).max(13);
            let part2 = r.take(n2.min(r.remaining()))?;
            let part2 = part2.strip_suffix(&[0]).unwrap_or(part2);
            scramble.extend_from_slice(part2);
        }
        if capabilities & caps::PLUGIN_AUTH != 0 && !r.is_empty() {
            let rest = r.rest();
            let name = rest.strip_suffix(&[0]).unwrap_or(rest);
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            auth_plugin = utf8("server greeting auth plugin", &name[..end])?;
        }
        Ok(Greeting {
            server_version,
            connection_id,
            scramble,
            capabilities,
            charset,
            status,
            mariadb_ext_caps,
            auth_plugin,
        })
    }
}

/// The client's answer to the greeting (protocol 4.1 layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    pub capabilities: u32,
    pub max_packet: u32,
    pub charset: u8,
    /// MariaDB extended capabilities (sent only when `CLIENT_MYSQL` is clear).
    pub mariadb_ext_caps: u32,
    pub user: String,
    pub auth_response: Vec<u8>,
    /// Sent iff `capabilities` has `CONNECT_WITH_DB`.
    pub database: Option<String>,
    /// Sent iff `capabilities` has `PLUGIN_AUTH`.
    pub auth_plugin: Option<String>,
    /// Sent iff `capabilities` has `CONNECT_ATTRS`.
    pub connect_attrs: Option<Vec<(String, String)>>,
}

/// The most connect attributes a decoded response may carry (they are only logged).
pub const MAX_CONNECT_ATTRS: usize = 256;

impl HandshakeResponse {
    /// Encodes the fields the capability bits say are present; the bits are adjusted so that the
    /// optional fields and the flags agree.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut capabilities = self.capabilities | caps::PROTOCOL_41 | caps::SECURE_CONNECTION;
        let set = |c: &mut u32, bit: u32, on: bool| {
            if on {
                *c |= bit
            } else {
                *c &= !bit
            }
        };
        set(
            &mut capabilities,
            caps::CONNECT_WITH_DB,
            self.database.is_some(),
        );
        set(
            &mut capabilities,
            caps::PLUGIN_AUTH,
            self.auth_plugin.is_some(),
        );
        set(
            &mut capabilities,
            caps::CONNECT_ATTRS,
            self.connect_attrs.is_some(),
        );
        out.put_u32_le(capabilities);
        out.put_u32_le(self.max_packet);
        out.put_u8(self.charset);
        out.put_slice(&[0u8; 19]);
        if capabilities & caps::CLIENT_MYSQL == 0 {
            out.put_u32_le(self.mariadb_ext_caps);
        } else {
            out.put_u32_le(0);
        }
        put_nul_terminated(out, self.user.as_bytes());
        if capabilities & caps::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            put_lenenc_bytes(out, &self.auth_response);
        } else {
            let n = self.auth_response.len().min(255);
            out.put_u8(n as u8);
            out.put_slice(&self.auth_response[..n]);
        }
        if let Some(db) = &self.database {
            put_nul_terminated(out, db.as_bytes());
        }
        if let Some(p) = &self.auth_plugin {
            put_nul_terminated(out, p.as_bytes());
        }
        if let Some(attrs) = &self.connect_attrs {
            let mut a = BytesMut::new();
            for (k, v) in attrs {
                put_lenenc_bytes(&mut a, k.as_bytes());
                put_lenenc_bytes(&mut a, v.as_bytes());
            }
            put_lenenc_int(out, a.len() as u64);
            out.put_slice(&a);
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload, "handshake response");
        let capabilities = r.u32()?;
        if capabilities & caps::PROTOCOL_41 == 0 {
            return Err(WireError::Unsupported {
                what: "handshake response",
                detail: "pre-4.1 client protocol".into(),
            });
        }
        let max_packet = r.u32()?;
        let charset = r.u8()?;
        r.take(19)?;
        let ext = r.u32()?;
        if r.is_empty() && capabilities & caps::SSL != 0 {
            return Err(WireError::Unsupported {
                what: "handshake response",
                detail: "the client asked for TLS (SSL request)".into(),
            });
        }
        let mariadb_ext_caps = if capabilities & caps::CLIENT_MYSQL == 0 {
            ext
        } else {
            0
        };
        let user = utf8("handshake response user", r.nul_terminated()?)?;
        let auth_response = if capabilities & caps::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            r.lenenc_bytes()?.to_vec()
        } else if capabilities & caps::SECURE_CONNECTION != 0 {
            let n = usize::from(r.u8()?);
            r.take(n)?.to_vec()
        } else {
            r.nul_terminated()?.to_vec()
        };
        let database = if capabilities & caps::CONNECT_WITH_DB != 0 {
            Some(utf8("handshake response database", r.nul_terminated()?)?)
        } else {
            None
        };
        let auth_plugin = if capabilities & caps::PLUGIN_AUTH != 0 {
            Some(utf8("handshake response auth plugin", r.nul_terminated()?)?)
        } else {
            None
        };
        let connect_attrs = if capabilities & caps::CONNECT_ATTRS != 0 {
            let len = usize::try_from(r.lenenc_int()?).unwrap_or(usize::MAX);
            let mut a = Reader::new(r.take(len)?, "handshake response connect attrs");
            let mut attrs = Vec::new();
            while !a.is_empty() {
                if attrs.len() >= MAX_CONNECT_ATTRS {
                    return Err(WireError::TooLarge {
                        what: "handshake response connect attrs",
                        len: attrs.len() + 1,
                        max: MAX_CONNECT_ATTRS,
                    });
                }
                let k = String::from_utf8_lossy(a.lenenc_bytes()?).into_owned();
                let v = String::from_utf8_lossy(a.lenenc_bytes()?).into_owned();
                attrs.push((k, v));
            }
            Some(attrs)
        } else {
            None
        };
        Ok(HandshakeResponse {
            capabilities,
            max_packet,
            charset,
            mariadb_ext_caps,
            user,
            auth_response,
            database,
            auth_plugin,
            connect_attrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The greeting MariaDB 10.11.19 sent in the capture (capture-replica-to-master.txt, stream 0).
    const CAPTURED_GREETING: &[u8] = b"\n5.5.5-10.11.19-MariaDB-0+deb12u1-log\x00\x07\x00\x00\x00dgW\\LFZs\x00\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00R}DvF=>\\6:_Q\x00mysql_native_password\x00";

    #[test]
    fn decodes_the_captured_greeting() {
        let g = Greeting::decode(CAPTURED_GREETING).expect("decodes");
        assert_eq!(g.server_version, "5.5.5-10.11.19-MariaDB-0+deb12u1-log");
        assert_eq!(g.connection_id, 7);
        assert_eq!(g.scramble, b"dgW\\LFZsR}DvF=>\\6:_Q".to_vec());
        assert_eq!(g.capabilities, 0x81ff_f7fe);
        assert_eq!(g.charset, 8);
        assert_eq!(g.status, 2);
        assert_eq!(g.mariadb_ext_caps, 0x1d);
        assert_eq!(g.auth_plugin, "mysql_native_password");
        assert_eq!(&g.to_bytes()[..], CAPTURED_GREETING);
    }

    #[test]
    fn fake_server_greeting_offers_no_tls_and_keeps_eof() {
        let g = Greeting::for_fake_server("5.5.5-10.11.19-MariaDB-quorumsql", 9, [0u8; 20]);
        assert!(g.scramble.iter().all(|&b| (0x21..0x7f).contains(&b)));
        for bit in [caps::SSL, caps::COMPRESS, caps::DEPRECATE_EOF] {
            assert_eq!(g.capabilities & bit, 0);
        }
        assert!(g.capabilities & caps::PLUGIN_AUTH != 0);
        assert_eq!(Greeting::decode(&g.to_bytes()).expect("decodes"), g);
    }

    #[test]
    fn decodes_the_captured_response_prefix() {
        // First 120 bytes of the replica's response (the capture truncates the attributes).
        let wire = hex::decode("05a238807b0300400800000000000000000000000000000000000000000000007265706c0014120a6e1c14a120c2f6bfe0572d7cfbcd274cfa7d6d7973716c5f6e61746976655f70617373776f726400").expect("hex");
        let r = HandshakeResponse::decode(&wire[..]);
        // Caps announce CONNECT_ATTRS but the capture cut them off: must be an error, not a panic.
        assert!(matches!(r, Err(WireError::Truncated { .. })), "{r:?}");
        let mut no_attrs = wire.clone();
        no_attrs[2] &= !((caps::CONNECT_ATTRS >> 16) as u8);
        let r = HandshakeResponse::decode(&no_attrs).expect("decodes");
        assert_eq!(r.user, "repl");
        assert_eq!(r.auth_response.len(), 20);
        assert_eq!(r.auth_plugin.as_deref(), Some("mysql_native_password"));
        assert_eq!(r.database, None);
    }
}
