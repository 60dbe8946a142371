//! MySQL packet framing: a 3-byte little-endian payload length and a 1-byte sequence id, with
//! payloads of 16 MiB − 1 or more split across continuation packets.
//!
//! One sequence counter serves both directions of a command exchange (the client sends 0, the
//! server answers 1, ...). [`PacketCodec`] keeps that counter: a decoded packet sets it to its
//! id + 1 and an encoded payload takes it. The semi-sync dump stream restarts numbering after every
//! ACK-requested event (mariadb-replication §2.3), so sequence checking can be switched off.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::WireError;

/// Largest payload of one physical packet; a payload of exactly this size is continued.
pub const MAX_CHUNK: usize = 0xFF_FFFF;

/// Default payload limit: MariaDB's `max_allowed_packet` ceiling (1 GiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 30;

/// One logical packet: the payload of all its chunks joined, and the sequence id of its first chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub seq: u8,
    pub payload: Bytes,
}

/// Frames `payload` starting at sequence id `seq`, splitting it into continuation chunks; returns
/// the sequence id that follows.
pub fn encode_packet(seq: u8, payload: &[u8], out: &mut BytesMut) -> u8 {
    let mut seq = seq;
    let mut rest = payload;
    out.reserve(payload.len() + 4 * (payload.len() / MAX_CHUNK + 1));
    loop {
        let n = rest.len().min(MAX_CHUNK);
        out.put_slice(&(n as u32).to_le_bytes()[..3]);
        out.put_u8(seq);
        out.put_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        // A chunk of exactly MAX_CHUNK bytes announces a continuation, even an empty one.
        if n < MAX_CHUNK {
            return seq;
        }
    }
}

/// tokio-util codec for MySQL packets (see the module docs for the sequence counter).
#[derive(Debug)]
pub struct PacketCodec {
    max_payload: usize,
    check_seq: bool,
    seq: u8,
    /// Chunks of a payload ≥ MAX_CHUNK gathered so far, with the first chunk's sequence id.
    partial: Option<(u8, BytesMut)>,
}

impl Default for PacketCodec {
    fn default() -> Self {
        PacketCodec::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl PacketCodec {
    /// A codec that rejects payloads larger than `max_payload` bytes before buffering them and
    /// checks sequence ids.
    pub fn new(max_payload: usize) -> Self {
        PacketCodec {
            max_payload,
            check_seq: true,
            seq: 0,
            partial: None,
        }
    }

    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Whether decoded packets must carry the expected sequence id (off on the semi-sync dump
    /// stream, whose numbering restarts after every ACK request).
    pub fn set_check_sequence(&mut self, check: bool) {
        self.check_seq = check;
    }

    pub fn check_sequence(&self) -> bool {
        self.check_seq
    }

    /// The sequence id the next packet (sent or received) carries.
    pub fn sequence(&self) -> u8 {
        self.seq
    }

    pub fn set_sequence(&mut self, seq: u8) {
        self.seq = seq;
    }

    /// Starts a new command exchange: the next packet carries sequence id 0.
    pub fn reset_sequence(&mut self) {
        self.seq = 0;
    }
}

impl Decoder for PacketCodec {
    type Item = Packet;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, WireError> {
        loop {
            if src.len() < 4 {
                return Ok(None);
            }
            let len = usize::from(src[0]) | usize::from(src[1]) << 8 | usize::from(src[2]) << 16;
            let seq = src[3];
            let so_far = self.partial.as_ref().map_or(0, |(_, b)| b.len());
            if so_far + len > self.max_payload {
                return Err(WireError::TooLarge {
                    what: "packet payload",
                    len: so_far + len,
                    max: self.max_payload,
                });
            }
            if self.check_seq && seq != self.seq {
                return Err(WireError::OutOfOrder {
                    expected: self.seq,
                    got: seq,
                });
            }
            if src.len() < 4 + len {
                src.reserve(4 + len - src.len());
                return Ok(None);
            }
            src.advance(4);
            let chunk = src.split_to(len);
            self.seq = seq.wrapping_add(1);
            let continued = len == MAX_CHUNK;
            match self.partial.take() {
                None if !continued => {
                    return Ok(Some(Packet {
                        seq,
                        payload: chunk.freeze(),
                    }))
                }
                None => self.partial = Some((seq, chunk)),
                Some((first, mut acc)) => {
                    acc.extend_from_slice(&chunk);
                    if !continued {
                        return Ok(Some(Packet {
                            seq: first,
                            payload: acc.freeze(),
                        }));
                    }
                    self.partial = Some((first, acc));
                }
            }
        }
    }
}

/// Sends a payload with the codec's current sequence id.
impl Encoder<Bytes> for PacketCodec {
    type Error = WireError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode(payload.as_ref(), dst)
    }
}

impl Encoder<&[u8]> for PacketCodec {
    type Error = WireError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), WireError> {
        if payload.len() > self.max_payload {
            return Err(WireError::TooLarge {
                what: "outgoing packet payload",
                len: payload.len(),
                max: self.max_payload,
            });
        }
        self.seq = encode_packet(self.seq, payload, dst);
        Ok(())
    }
}

/// Sends a packet with its own sequence id (e.g. a semi-sync ACK, always id 0).
impl Encoder<Packet> for PacketCodec {
    type Error = WireError;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), WireError> {
        self.seq = packet.seq;
        self.encode(packet.payload.as_ref(), dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut PacketCodec, bytes: &[u8]) -> Vec<Packet> {
        let mut src = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(p) = codec.decode(&mut src).expect("decodes") {
            out.push(p);
        }
        assert!(src.is_empty(), "left {} bytes", src.len());
        out
    }

    #[test]
    fn decodes_the_captured_ack_packet() {
        let wire =
            hex::decode("19000000ef04070000000000006d7973716c2d62696e2e303030303032").expect("hex");
        let p = decode_all(&mut PacketCodec::default(), &wire);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].seq, 0);
        assert_eq!(p[0].payload.len(), 0x19);
    }

    #[test]
    fn splits_and_joins_payloads_of_16_mib_and_more() {
        for len in [MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 1, 2 * MAX_CHUNK] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut wire = BytesMut::new();
            let next = encode_packet(7, &payload, &mut wire);
            let chunks = len / MAX_CHUNK + 1;
            assert_eq!(next, 7 + chunks as u8, "len {len}");
            assert_eq!(wire.len(), len + 4 * chunks);
            let mut codec = PacketCodec::new(64 << 20);
            codec.set_sequence(7);
            let p = decode_all(&mut codec, &wire);
            assert_eq!(p.len(), 1);
            assert_eq!(p[0].seq, 7);
            assert!(p[0].payload[..] == payload[..], "len {len} payload differs");
            assert_eq!(codec.sequence(), next);
        }
    }

    #[test]
    fn rejects_oversized_payload_before_buffering_it() {
        let mut codec = PacketCodec::new(100);
        let mut src = BytesMut::from(&[101u8, 0, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(WireError::TooLarge {
                len: 101,
                max: 100,
                ..
            })
        ));
        assert!(src.capacity() < 1000);
    }

    #[test]
    fn sequence_check_can_be_switched_off() {
        let wire = [1u8, 0, 0, 5, 0xAA];
        let mut strict = PacketCodec::default();
        assert!(matches!(
            strict.decode(&mut BytesMut::from(&wire[..])),
            Err(WireError::OutOfOrder {
                expected: 0,
                got: 5
            })
        ));
        let mut lax = PacketCodec::default();
        lax.set_check_sequence(false);
        let p = decode_all(&mut lax, &wire);
        assert_eq!(p[0].seq, 5);
        assert_eq!(lax.sequence(), 6);
    }
}
