//! Semi-sync framing of the binlog dump stream (mariadb-replication §2.2, §2.3): every event packet
//! is `00 EF <flag> <event>` (flag 01 = ACK requested), and the replica's ACK is
//! `EF <u64 LE position> <file base name>` sent with sequence id 0.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::{utf8, Reader};
use crate::error::WireError;
use crate::response::{is_eof, is_err, ErrPacket};

pub const SEMISYNC_MAGIC: u8 = 0xEF;
/// The ACK's file name must be shorter than this (the master's buffer).
pub const MAX_ACK_FILE_NAME: usize = 511;

/// One event of a semi-sync dump stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemiSyncEvent<'a> {
    pub ack_requested: bool,
    pub event: &'a [u8],
}

impl<'a> SemiSyncEvent<'a> {
    /// Decodes a dump-stream packet payload (the leading 0x00 included).
    pub fn decode(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload, "semi-sync event packet");
        let ok = r.u8()?;
        if ok != 0x00 {
            return Err(WireError::malformed(
                "semi-sync event packet",
                format!("starts with {ok:#04x}, not 0x00"),
            ));
        }
        let magic = r.u8()?;
        if magic != SEMISYNC_MAGIC {
            return Err(WireError::malformed(
                "semi-sync event packet",
                format!("missing magic number: {magic:#04x} instead of 0xEF"),
            ));
        }
        let ack_requested = match r.u8()? {
            0 => false,
            1 => true,
            f => {
                return Err(WireError::malformed(
                    "semi-sync event packet",
                    format!("flag {f:#04x} (expected 0 or 1)"),
                ))
            }
        };
        Ok(SemiSyncEvent {
            ack_requested,
            event: r.rest(),
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        encode_dump_event(true, self.ack_requested, self.event, out);
    }
}

/// Frames `event` as a dump-stream packet payload: `00 [EF flag] event`.
pub fn encode_dump_event(semisync: bool, ack_requested: bool, event: &[u8], out: &mut BytesMut) {
    out.reserve(event.len() + 3);
    out.put_u8(0x00);
    if semisync {
        out.put_u8(SEMISYNC_MAGIC);
        out.put_u8(u8::from(ack_requested));
    }
    out.put_slice(event);
}

/// A packet of the dump stream as the replica side sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpPacket<'a> {
    Event {
        ack_requested: bool,
        event: &'a [u8],
    },
    /// The master ended the stream with an error (1236 = fatal, others = retry).
    Err(ErrPacket),
    /// End of stream (non-blocking dump, or master shutdown).
    Eof,
}

/// Decodes one dump-stream packet, semi-sync framed or not.
pub fn decode_dump_packet(payload: &[u8], semisync: bool) -> Result<DumpPacket<'_>, WireError> {
    if is_err(payload) {
        return Ok(DumpPacket::Err(ErrPacket::decode(payload)?));
    }
    if is_eof(payload) {
        return Ok(DumpPacket::Eof);
    }
    if semisync {
        let e = SemiSyncEvent::decode(payload)?;
        return Ok(DumpPacket::Event {
            ack_requested: e.ack_requested,
            event: e.event,
        });
    }
    match payload.split_first() {
        Some((0x00, event)) => Ok(DumpPacket::Event {
            ack_requested: false,
            event,
        }),
        _ => Err(WireError::malformed(
            "binlog dump packet",
            format!("starts with {:?}, not 0x00", payload.first()),
        )),
    }
}

/// The replica's semi-sync ACK: "everything up to `position` of `file` is safe".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SemiSyncAck {
    pub position: u64,
    pub file: String,
}

impl SemiSyncAck {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(SEMISYNC_MAGIC);
        out.put_u64_le(self.position);
        out.put_slice(self.file.as_bytes());
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload, "semi-sync ACK");
        let magic = r.u8()?;
        if magic != SEMISYNC_MAGIC {
            return Err(WireError::malformed(
                "semi-sync ACK",
                format!("starts with {magic:#04x}, not 0xEF"),
            ));
        }
        let position = r.u64()?;
        let name = r.rest();
        if name.len() > MAX_ACK_FILE_NAME {
            return Err(WireError::TooLarge {
                what: "semi-sync ACK file name",
                len: name.len(),
                max: MAX_ACK_FILE_NAME,
            });
        }
        Ok(SemiSyncAck {
            position,
            file: utf8("semi-sync ACK file name", name)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_ack() {
        let payload =
            hex::decode("ef04070000000000006d7973716c2d62696e2e303030303032").expect("hex");
        let ack = SemiSyncAck::decode(&payload).expect("decodes");
        assert_eq!(
            ack,
            SemiSyncAck {
                position: 1796,
                file: "mysql-bin.000002".into()
            }
        );
        assert_eq!(&ack.to_bytes()[..], &payload[..]);
    }

    #[test]
    fn captured_xid_event_requests_ack() {
        // §2.2: packet header 22 00 00 0c, then 00 ef 01 + XID event.
        let payload = hex::decode(
            "00ef01a15f076b10010000001f00000004070000000037000000000000 00d881530c"
                .replace(' ', ""),
        )
        .expect("hex");
        assert_eq!(payload.len(), 0x22);
        let e = SemiSyncEvent::decode(&payload).expect("decodes");
        assert!(e.ack_requested);
        assert_eq!(e.event.len(), 31);
        assert_eq!(e.event[4], 0x10);
        let mut b = BytesMut::new();
        e.encode(&mut b);
        assert_eq!(&b[..], &payload[..]);
        let missing_magic = [0u8, 0x10, 1];
        assert!(SemiSyncEvent::decode(&missing_magic).is_err());
    }
}
