//! PROXY protocol v2 headers on the proxy's two hops: the master's proxy writes one to mariadbd
//! so that grants by host see the real client address; a forwarding proxy writes one at the
//! start of the peer stream with an application TLV naming the port (RW or RO) the client
//! connected to. The header itself is `quorumsql_wire::proxy_protocol`; this module adds the
//! port TLV, which only QuorumSQL's proxies write and read, and the address canonicalisation.

use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, BytesMut};
use quorumsql_wire::proxy_protocol::{ProxyHeader, MAX_HEADER_LEN};
use quorumsql_wire::WireError;

use super::PortKind;

/// Fixed part: signature, version/command, family/protocol, address length.
pub const FIXED_LEN: usize = 16;
/// mariadbd accepts headers of at most 256 bytes; the proxy never sends or reads more.
pub const MAX_HEADER: usize = MAX_HEADER_LEN;
/// First of the TLV types the spec leaves to applications (`PP2_TYPE_MIN_CUSTOM`).
const TLV_PORT_KIND: u8 = 0xE0;

/// The addresses a header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedAddrs {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Why a peer's header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("bad PROXY v2 header: {0}")]
    Wire(#[from] WireError),
    #[error("PROXY header is LOCAL; a forwarding proxy always sends the client's address")]
    Local,
    #[error("PROXY header length {0} does not match what it announces")]
    Length(usize),
    #[error("PROXY header from a forwarding proxy lacks the QuorumSQL port TLV")]
    MissingPortKind,
}

/// An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 client) as IPv4, so that
/// mariadbd matches it against IPv4 grants.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// Encodes a header; `kind` adds the QuorumSQL port TLV (peer hop only, never to mariadbd).
/// Mixed families are written as IPv6 (v4-mapped). Once per connection, never per packet.
pub fn encode(addrs: ProxiedAddrs, kind: Option<PortKind>) -> BytesMut {
    let mut out = BytesMut::with_capacity(64);
    ProxyHeader::Proxy {
        source: canonical(addrs.source),
        destination: canonical(addrs.destination),
    }
    .encode(&mut out);
    if let Some(kind) = kind {
        out.put_u8(TLV_PORT_KIND);
        out.put_u16(1);
        out.put_u8(kind.tlv_byte());
        let body = (out.len() - FIXED_LEN) as u16;
        out[14..FIXED_LEN].copy_from_slice(&body.to_be_bytes());
    }
    out
}

/// Total header length announced by the fixed part (call with the first 16 bytes): checks the
/// signature, version and size before the rest is read.
pub fn total_len(fixed: &[u8; FIXED_LEN]) -> Result<usize, ProxyHeaderError> {
    match ProxyHeader::decode(fixed)? {
        Some((_, len)) => Ok(len),
        None => Ok(FIXED_LEN + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))),
    }
}

/// Decodes a whole header written by a forwarding proxy.
pub fn decode(header: &[u8]) -> Result<(ProxiedAddrs, PortKind), ProxyHeaderError> {
    let (decoded, len) =
        ProxyHeader::decode(header)?.ok_or(ProxyHeaderError::Length(header.len()))?;
    if len != header.len() {
        return Err(ProxyHeaderError::Length(header.len()));
    }
    let ProxyHeader::Proxy {
        source,
        destination,
    } = decoded
    else {
        return Err(ProxyHeaderError::Local);
    };
    let addrs = ProxiedAddrs {
        source: canonical(source),
        destination: canonical(destination),
    };
    // TLVs follow the address block, whose size the family byte gives.
    let addr_len = if header[13] == 0x11 { 12 } else { 36 };
    let mut tlvs = header.get(FIXED_LEN + addr_len..).unwrap_or(&[]);
    while tlvs.len() >= 3 {
        let t = tlvs[0];
        let l = usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
        let v = tlvs
            .get(3..3 + l)
            .ok_or(ProxyHeaderError::Length(header.len()))?;
        if t == TLV_PORT_KIND && l == 1 {
            if let Some(kind) = PortKind::from_tlv_byte(v[0]) {
                return Ok((addrs, kind));
            }
        }
        tlvs = &tlvs[3 + l..];
    }
    Err(ProxyHeaderError::MissingPortKind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6_with_port_kind() {
        for (s, d) in [
            ("10.9.8.7:5000", "127.0.0.1:3306"),
            ("[2001:db8::1]:5000", "[::1]:3306"),
            ("[2001:db8::1]:5000", "127.0.0.1:3306"),
        ] {
            let a = ProxiedAddrs {
                source: s.parse().unwrap(),
                destination: d.parse().unwrap(),
            };
            for kind in [PortKind::Rw, PortKind::Ro] {
                let h = encode(a, Some(kind));
                let (got, k) = decode(&h).unwrap();
                assert_eq!(k, kind);
                assert_eq!(got.source, a.source);
                assert_eq!(got.destination.port(), a.destination.port());
            }
        }
    }

    #[test]
    fn mariadb_header_is_exactly_what_proxyfwd_py_sent() {
        // reference/mariadb-replication-tools/proxyfwd.py, verified against mariadbd 10.11.19.
        let a = ProxiedAddrs {
            source: "10.9.8.6:54321".parse().unwrap(),
            destination: "127.0.0.1:3306".parse().unwrap(),
        };
        let h = encode(a, None);
        let mut want = quorumsql_wire::proxy_protocol::SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 10, 9, 8, 6, 127, 0, 0, 1]);
        want.extend_from_slice(&54321u16.to_be_bytes());
        want.extend_from_slice(&3306u16.to_be_bytes());
        assert_eq!(&h[..], &want[..]);
        assert!(matches!(decode(&h), Err(ProxyHeaderError::MissingPortKind)));
        // An IPv4 client seen by a dual-stack listener is still sent as IPv4.
        let mapped = ProxiedAddrs {
            source: "[::ffff:10.9.8.6]:54321".parse().unwrap(),
            destination: "[::ffff:127.0.0.1]:3306".parse().unwrap(),
        };
        assert_eq!(&encode(mapped, None)[..], &want[..]);
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(decode(&[0u8; 16]), Err(ProxyHeaderError::Wire(_))));
        let mut h = encode(
            ProxiedAddrs {
                source: "1.2.3.4:1".parse().unwrap(),
                destination: "1.2.3.4:2".parse().unwrap(),
            },
            Some(PortKind::Rw),
        );
        h[13] = 0x31;
        assert!(matches!(decode(&h), Err(ProxyHeaderError::Wire(_))));
        let mut fixed = [0u8; 16];
        fixed[..12].copy_from_slice(&quorumsql_wire::proxy_protocol::SIGNATURE);
        fixed[12] = 0x21;
        fixed[14] = 0xFF;
        assert!(matches!(total_len(&fixed), Err(ProxyHeaderError::Wire(_))));
        fixed[12] = 0x20;
        fixed[14] = 0;
        assert!(matches!(decode(&fixed), Err(ProxyHeaderError::Local)));
        assert!(decode(&h[..20]).is_err());
    }
}
