//! Raft messages on the peer transport: protobuf bytes in `Raft` frames, and which lane each
//! message type travels on.

use protobuf::Message as _;
use quorumsql_peer::{Frame, FrameKind, Lane};
use raft::eraftpb::{Message, MessageType};

/// The lane a raft message travels on. Everything that keeps leadership and the lease alive or
/// decides an election goes on the urgent lane, so it never waits behind megabytes of entries
/// (DESIGN §3: heartbeats and lease rounds never queue behind log entries). Appends and snapshots
/// keep their relative order on the bulk lane.
pub(crate) fn lane_of(m: &Message) -> Lane {
    match m.get_msg_type() {
        MessageType::MsgAppend | MessageType::MsgSnapshot | MessageType::MsgPropose => Lane::Bulk,
        _ => Lane::Urgent,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot encode raft message to node{to}: {detail}")]
    Encode { to: u64, detail: String },
    #[error("raft frame does not decode: {0}")]
    Decode(String),
    #[error("frame of kind {0:?} is not a raft message")]
    NotRaft(FrameKind),
}

pub(crate) fn encode(m: &Message) -> Result<Frame, WireError> {
    let bytes = m.write_to_bytes().map_err(|e| WireError::Encode {
        to: m.to,
        detail: e.to_string(),
    })?;
    Ok(Frame::raft(bytes))
}

pub(crate) fn decode(f: &Frame) -> Result<Message, WireError> {
    if f.kind != FrameKind::Raft {
        return Err(WireError::NotRaft(f.kind));
    }
    Message::parse_from_bytes(&f.body).map_err(|e| WireError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_and_votes_are_urgent_appends_are_bulk() {
        let mut m = Message::default();
        for (t, lane) in [
            (MessageType::MsgHeartbeat, Lane::Urgent),
            (MessageType::MsgHeartbeatResponse, Lane::Urgent),
            (MessageType::MsgRequestVote, Lane::Urgent),
            (MessageType::MsgRequestPreVote, Lane::Urgent),
            (MessageType::MsgReadIndex, Lane::Urgent),
            (MessageType::MsgReadIndexResp, Lane::Urgent),
            (MessageType::MsgAppendResponse, Lane::Urgent),
            (MessageType::MsgTimeoutNow, Lane::Urgent),
            (MessageType::MsgAppend, Lane::Bulk),
            (MessageType::MsgSnapshot, Lane::Bulk),
        ] {
            m.set_msg_type(t);
            assert_eq!(lane_of(&m), lane, "{t:?}");
        }
    }

    #[test]
    fn round_trip_and_garbage() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.to = 2;
        m.from = 1;
        m.term = 9;
        m.context = b"QLR...".to_vec().into();
        let f = encode(&m).unwrap();
        assert_eq!(decode(&f).unwrap(), m);
        assert!(decode(&Frame::raft(vec![0xff; 7])).is_err());
        assert!(matches!(
            decode(&Frame::control(vec![])),
            Err(WireError::NotRaft(_))
        ));
    }
}
