//! PROXY protocol v2 headers (binary), which carry a forwarded client's real address to mariadbd
//! (`proxy_protocol_networks`, mariadb-replication §6).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::WireError;

pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// MariaDB accepts headers up to 256 bytes; longer ones are rejected before buffering.
pub const MAX_HEADER_LEN: usize = 256;

/// A decoded v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// `LOCAL`: no proxied address (health checks); the connection's own address applies.
    Local,
    /// `PROXY` over TCP: the real client (`source`) and the address it connected to.
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

impl ProxyHeader {
    /// Encodes the header. Source and destination of different IP families are both written as
    /// IPv6 (IPv4-mapped), since one header names one family.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&SIGNATURE);
        match self {
            ProxyHeader::Local => {
                out.put_u8(0x20);
                out.put_u8(0x00);
                out.put_u16(0);
            }
            ProxyHeader::Proxy {
                source,
                destination,
            } => {
                out.put_u8(0x21);
                match (source.ip(), destination.ip()) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        out.put_u8(0x11);
                        out.put_u16(12);
                        out.put_slice(&s.octets());
                        out.put_slice(&d.octets());
                    }
                    (s, d) => {
                        let v6 = |ip: IpAddr| match ip {
                            IpAddr::V4(a) => a.to_ipv6_mapped(),
                            IpAddr::V6(a) => a,
                        };
                        out.put_u8(0x21);
                        out.put_u16(36);
                        out.put_slice(&v6(s).octets());
                        out.put_slice(&v6(d).octets());
                    }
                }
                out.put_u16(source.port());
                out.put_u16(destination.port());
            }
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    /// Decodes a header at the start of `buf`: `Ok(None)` if more bytes are needed, otherwise
    /// the header and the number of bytes it took (TLVs after the addresses are skipped).
    pub fn decode(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, WireError> {
        let sig_len = buf.len().min(SIGNATURE.len());
        if buf[..sig_len] != SIGNATURE[..sig_len] {
            return Err(WireError::malformed(
                "PROXY v2 header",
                "bad signature (not a PROXY protocol v2 header)",
            ));
        }
        if buf.len() < 16 {
            return Ok(None);
        }
        let ver_cmd = buf[12];
        let fam = buf[13];
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if 16 + len > MAX_HEADER_LEN {
            return Err(WireError::TooLarge {
                what: "PROXY v2 header",
                len: 16 + len,
                max: MAX_HEADER_LEN,
            });
        }
        if ver_cmd >> 4 != 2 {
            return Err(WireError::malformed(
                "PROXY v2 header",
                format!("version {} (expected 2)", ver_cmd >> 4),
            ));
        }
        if buf.len() < 16 + len {
            return Ok(None);
        }
        let body = &buf[16..16 + len];
        let header = match ver_cmd & 0x0F {
            0x0 => ProxyHeader::Local,
            0x1 => match fam {
                0x11 => {
                    let a = body.get(..12).ok_or_else(|| short(len, 12))?;
                    let ip = |o: usize| Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]);
                    ProxyHeader::Proxy {
                        source: SocketAddr::new(ip(0).into(), u16::from_be_bytes([a[8], a[9]])),
                        destination: SocketAddr::new(
                            ip(4).into(),
                            u16::from_be_bytes([a[10], a[11]]),
                        ),
                    }
                }
                0x21 => {
                    let a = body.get(..36).ok_or_else(|| short(len, 36))?;
                    let ip = |o: usize| {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(&a[o..o + 16]);
                        Ipv6Addr::from(b)
                    };
                    ProxyHeader::Proxy {
                        source: SocketAddr::new(ip(0).into(), u16::from_be_bytes([a[32], a[33]])),
                        destination: SocketAddr::new(
                            ip(16).into(),
                            u16::from_be_bytes([a[34], a[35]]),
                        ),
                    }
                }
                other => {
                    return Err(WireError::Unsupported {
                        what: "PROXY v2 header",
                        detail: format!("address family/protocol {other:#04x}"),
                    })
                }
            },
            cmd => {
                return Err(WireError::malformed(
                    "PROXY v2 header",
                    format!("command {cmd:#x} (expected LOCAL 0 or PROXY 1)"),
                ))
            }
        };
        Ok(Some((header, 16 + len)))
    }
}

fn short(len: usize, needed: usize) -> WireError {
    WireError::Truncated {
        what: "PROXY v2 addresses",
        offset: 16,
        needed,
        available: len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_v6_and_local() {
        let v4 = ProxyHeader::Proxy {
            source: "10.9.8.6:40000".parse().expect("addr"),
            destination: "127.0.0.1:3306".parse().expect("addr"),
        };
        let b = v4.to_bytes();
        assert_eq!(b.len(), 28);
        assert_eq!(&b[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(ProxyHeader::decode(&b).expect("ok"), Some((v4, 28)));
        assert_eq!(ProxyHeader::decode(&b[..20]).expect("ok"), None);
        let v6 = ProxyHeader::Proxy {
            source: "[fe80::1]:1".parse().expect("addr"),
            destination: "[::1]:2".parse().expect("addr"),
        };
        assert_eq!(
            ProxyHeader::decode(&v6.to_bytes()).expect("ok"),
            Some((v6, 52))
        );
        let local = ProxyHeader::Local.to_bytes();
        assert_eq!(
            ProxyHeader::decode(&local).expect("ok"),
            Some((ProxyHeader::Local, 16))
        );
        assert!(ProxyHeader::decode(b"PROXY TCP4 1.2.3.4").is_err());
    }
}
