//! Post-handshake frames: `[protocol version u8][kind u8][body]` inside a length-delimited record.

use bytes::{BufMut, Bytes, BytesMut};

/// Version of the peer wire protocol (handshake and frames). Both sides must speak the same one.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes a frame adds in front of its body.
pub const FRAME_HEADER_BYTES: usize = 2;

/// What a frame's body holds. New kinds get new numbers; a number is never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum FrameKind {
    /// A raft `eraftpb::Message` in protobuf encoding.
    Raft = 1,
    /// One of QuorumSQL's own messages, postcard-encoded (defined by the layer above).
    Control = 2,
}

impl TryFrom<u8> for FrameKind {
    type Error = FrameError;
    fn try_from(b: u8) -> Result<Self, FrameError> {
        match b {
            1 => Ok(FrameKind::Raft),
            2 => Ok(FrameKind::Control),
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// One message between peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub body: Bytes,
}

/// Why received bytes are not a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than its 2-byte header")]
    Truncated(usize),
    #[error("frame has protocol version {got}, this node speaks {PROTOCOL_VERSION}")]
    Version { got: u8 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

impl Frame {
    pub fn new(kind: FrameKind, body: impl Into<Bytes>) -> Self {
        Self {
            kind,
            body: body.into(),
        }
    }

    pub fn raft(body: impl Into<Bytes>) -> Self {
        Self::new(FrameKind::Raft, body)
    }

    pub fn control(body: impl Into<Bytes>) -> Self {
        Self::new(FrameKind::Control, body)
    }

    /// Size of the record on the wire (without the length prefix); compared with `max_frame_bytes`.
    pub fn wire_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.body.len()
    }

    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.wire_len());
        b.put_u8(PROTOCOL_VERSION);
        b.put_u8(self.kind as u8);
        b.extend_from_slice(&self.body);
        b.freeze()
    }

    pub(crate) fn decode(mut record: Bytes) -> Result<Self, FrameError> {
        if record.len() < FRAME_HEADER_BYTES {
            return Err(FrameError::Truncated(record.len()));
        }
        let version = record[0];
        if version != PROTOCOL_VERSION {
            return Err(FrameError::Version { got: version });
        }
        let kind = FrameKind::try_from(record[1])?;
        let body = record.split_off(FRAME_HEADER_BYTES);
        Ok(Self { kind, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let f = Frame::raft(&b"hello"[..]);
        assert_eq!(Frame::decode(f.encode()), Ok(f));
    }

    #[test]
    fn refuses_bad_headers() {
        assert_eq!(
            Frame::decode(Bytes::from_static(&[1])),
            Err(FrameError::Truncated(1))
        );
        assert_eq!(
            Frame::decode(Bytes::from_static(&[9, 1])),
            Err(FrameError::Version { got: 9 })
        );
        assert_eq!(
            Frame::decode(Bytes::from_static(&[1, 77, 0])),
            Err(FrameError::UnknownKind(77))
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Frame::decode(Bytes::from(bytes));
        }
    }
}
