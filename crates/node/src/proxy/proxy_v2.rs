//! PROXY protocol v2 headers (haproxy's spec): the master's proxy writes one to mariadbd so that
//! grants by host see the real client address; a forwarding proxy writes one at the start of the
//! peer stream, with an application TLV naming the port (RW or RO) the client connected to.
//!
//! TODO(wire): `quorumsql_wire::proxy_protocol` is coming; this local codec knows exactly what
//! the proxy needs (TCP over IPv4/IPv6, one custom TLV) and refuses everything else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::PortKind;

/// The 12-byte v2 signature.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Fixed part: signature, version/command, family/protocol, address length.
pub const FIXED_LEN: usize = 16;
/// mariadbd accepts headers of at most 256 bytes; the proxy never sends or reads more.
pub const MAX_HEADER: usize = 256;
/// First of the TLV types the spec leaves to applications (`PP2_TYPE_MIN_CUSTOM`).
const TLV_PORT_KIND: u8 = 0xE0;

/// The addresses a header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedAddrs {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Why a peer's header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("not a PROXY v2 header (bad signature)")]
    Signature,
    #[error("PROXY header version/command byte {0:#04x} is not v2 PROXY")]
    Command(u8),
    #[error("PROXY header address family {0:#04x} is not TCP over IPv4/IPv6")]
    Family(u8),
    #[error("PROXY header length {0} is out of range")]
    Length(usize),
    #[error("PROXY header from a forwarding proxy lacks the QuorumSQL port TLV")]
    MissingPortKind,
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Encodes a header; `kind` adds the QuorumSQL port TLV (peer hop only, never to mariadbd).
/// Mixed families are written as IPv6 (v4-mapped).
pub fn encode(addrs: ProxiedAddrs, kind: Option<PortKind>) -> Vec<u8> {
    let src = canonical(addrs.source.ip());
    let dst = canonical(addrs.destination.ip());
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, PROXY
    let mut body = Vec::with_capacity(48);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21);
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
        }
    }
    body.extend_from_slice(&addrs.source.port().to_be_bytes());
    body.extend_from_slice(&addrs.destination.port().to_be_bytes());
    if let Some(kind) = kind {
        body.push(TLV_PORT_KIND);
        body.extend_from_slice(&1u16.to_be_bytes());
        body.push(kind.tlv_byte());
    }
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Total header length announced by the fixed part (call with the first 16 bytes).
pub fn total_len(fixed: &[u8; FIXED_LEN]) -> Result<usize, ProxyHeaderError> {
    if fixed[..12] != SIGNATURE {
        return Err(ProxyHeaderError::Signature);
    }
    if fixed[12] != 0x21 {
        return Err(ProxyHeaderError::Command(fixed[12]));
    }
    let len = FIXED_LEN + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_HEADER {
        return Err(ProxyHeaderError::Length(len));
    }
    Ok(len)
}

/// Decodes a whole header written by a forwarding proxy.
pub fn decode(header: &[u8]) -> Result<(ProxiedAddrs, PortKind), ProxyHeaderError> {
    let fixed: &[u8; FIXED_LEN] = header
        .get(..FIXED_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(ProxyHeaderError::Length(header.len()))?;
    let len = total_len(fixed)?;
    if header.len() != len {
        return Err(ProxyHeaderError::Length(header.len()));
    }
    let body = &header[FIXED_LEN..];
    let (addrs, rest) = match fixed[13] {
        0x11 if body.len() >= 12 => {
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            (
                ProxiedAddrs {
                    source: SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                    destination: SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
                },
                &body[12..],
            )
        }
        0x21 if body.len() >= 36 => {
            let ip = |b: &[u8]| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[..16]);
                canonical(IpAddr::V6(Ipv6Addr::from(o)))
            };
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            (
                ProxiedAddrs {
                    source: SocketAddr::new(ip(&body[0..16]), port(&body[32..34])),
                    destination: SocketAddr::new(ip(&body[16..32]), port(&body[34..36])),
                },
                &body[36..],
            )
        }
        0x11 | 0x21 => return Err(ProxyHeaderError::Length(header.len())),
        other => return Err(ProxyHeaderError::Family(other)),
    };
    let mut tlvs = rest;
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
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 10, 9, 8, 6, 127, 0, 0, 1]);
        want.extend_from_slice(&54321u16.to_be_bytes());
        want.extend_from_slice(&3306u16.to_be_bytes());
        assert_eq!(h, want);
        assert_eq!(decode(&h), Err(ProxyHeaderError::MissingPortKind));
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(decode(&[0u8; 16]), Err(ProxyHeaderError::Signature));
        let mut h = encode(
            ProxiedAddrs {
                source: "1.2.3.4:1".parse().unwrap(),
                destination: "1.2.3.4:2".parse().unwrap(),
            },
            Some(PortKind::Rw),
        );
        h[13] = 0x31;
        assert_eq!(decode(&h), Err(ProxyHeaderError::Family(0x31)));
        let mut fixed = [0u8; 16];
        fixed[..12].copy_from_slice(&SIGNATURE);
        fixed[12] = 0x21;
        fixed[14] = 0xFF;
        assert!(matches!(
            total_len(&fixed),
            Err(ProxyHeaderError::Length(_))
        ));
        assert!(decode(&h[..20]).is_err());
    }
}
