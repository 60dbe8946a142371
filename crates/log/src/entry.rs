//! What one raft entry carries: a batch of commands (group commit), encoded with postcard behind a
//! leading format-version byte so a future format can be told apart from garbage.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{BinlogPos, Epoch, Gtid, NodeId, ProposalId};

/// The only payload format this build writes and reads.
pub const ENTRY_FORMAT_V1: u8 = 1;

/// The data of one normal raft entry: several proposals batched together (group commit). Raft's
/// own empty entries (a new leader's first entry) have no payload at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryPayload {
    pub commands: Vec<TaggedCommand>,
}

/// A command and, when it came from a local proposal, who proposed it so the outcome can be routed
/// back. The incarnation tells two runs of the same node apart: proposal ids restart at every
/// process start while the log replays old entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedCommand {
    pub origin: Option<ProposalOrigin>,
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProposalOrigin {
    pub node: NodeId,
    pub incarnation: u64,
    pub id: ProposalId,
}

/// One state machine command (DESIGN §2, §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Transactions captured by the master promoted in `epoch`, continuing the log after
    /// `prev_gtid` (the last complete transaction; `None` for an empty log). A conditional append:
    /// see [`crate::state_machine`] for the accept rules.
    Append {
        epoch: Epoch,
        prev_gtid: Option<Gtid>,
        txns: Vec<TxnChunk>,
    },
    /// `node` finished promotion in term `epoch` with the log's last GTID `gtid`.
    MasterReady {
        node: NodeId,
        epoch: Epoch,
        gtid: Option<Gtid>,
    },
    /// A member's view of its own mariadbd, recorded so every node derives priorities and the
    /// compaction point from the same data.
    MemberReport {
        node: NodeId,
        applied_gtid: Option<Gtid>,
        healthy: bool,
        diverged: bool,
    },
    /// Does nothing; a proposer uses it as a marker ("everything I proposed before is resolved").
    Noop,
}

/// One transaction, or one piece of a transaction larger than the entry cap. A transaction that
/// fits travels as a single chunk with `chunk == 0` and `last == true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnChunk {
    pub gtid: Gtid,
    /// Where the transaction ends in the origin server's binlog (only meaningful there).
    pub origin: BinlogPos,
    /// SHA-256 of the whole transaction's event bytes. Only the last chunk's value counts (a
    /// streaming capture knows it only at the end); earlier chunks may carry anything.
    pub digest: [u8; 32],
    /// 0-based position of this chunk within the transaction.
    pub chunk: u32,
    /// True on the chunk that completes the transaction.
    pub last: bool,
    /// Raw binlog event bytes of this chunk, exactly as the master wrote them.
    pub events: Bytes,
}

impl TxnChunk {
    /// A whole (unchunked) transaction whose digest is computed from `events`.
    pub fn whole(gtid: Gtid, origin: BinlogPos, events: Bytes) -> TxnChunk {
        TxnChunk {
            gtid,
            origin,
            digest: digest_of(&events),
            chunk: 0,
            last: true,
            events,
        }
    }
}

/// SHA-256 of a transaction's event bytes (the digest recorded in the log).
pub fn digest_of(events: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(events).into()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryDecodeError {
    #[error("raft entry payload is empty")]
    Empty,
    #[error("raft entry payload has format version {0}, this build reads only version {ENTRY_FORMAT_V1}")]
    UnknownVersion(u8),
    #[error("raft entry payload (format {ENTRY_FORMAT_V1}) does not decode: {0}")]
    Malformed(String),
    #[error("raft entry payload has {0} trailing bytes after the commands")]
    TrailingBytes(usize),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode raft entry payload: {0}")]
pub struct EntryEncodeError(String);

impl EntryPayload {
    pub fn encode(&self) -> Result<Vec<u8>, EntryEncodeError> {
        let mut out = vec![ENTRY_FORMAT_V1];
        let body = postcard::to_stdvec(self).map_err(|e| EntryEncodeError(e.to_string()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn decode(data: &[u8]) -> Result<EntryPayload, EntryDecodeError> {
        let (&version, body) = data.split_first().ok_or(EntryDecodeError::Empty)?;
        if version != ENTRY_FORMAT_V1 {
            return Err(EntryDecodeError::UnknownVersion(version));
        }
        let (payload, rest) = postcard::take_from_bytes::<EntryPayload>(body)
            .map_err(|e| EntryDecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(EntryDecodeError::TrailingBytes(rest.len()));
        }
        Ok(payload)
    }
}

/// Upper bound of the encoded size of one tagged command, used to fill entries up to the cap
/// without encoding twice. Exact enough: postcard varints never exceed 10 bytes per integer.
pub(crate) fn encoded_size_bound(cmd: &TaggedCommand) -> usize {
    let fixed = 64;
    match &cmd.command {
        Command::Append { txns, .. } => {
            fixed
                + txns
                    .iter()
                    .map(|t| t.events.len() + t.origin.file.len() + 32 + 64)
                    .sum::<usize>()
        }
        _ => fixed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(seq: u64, bytes: Vec<u8>) -> TxnChunk {
        TxnChunk::whole(
            Gtid::new(0, 1, seq),
            BinlogPos {
                file: "bin.000001".into(),
                offset: seq * 100,
            },
            Bytes::from(bytes),
        )
    }

    #[test]
    fn rejects_garbage_and_other_versions() {
        assert_eq!(EntryPayload::decode(&[]), Err(EntryDecodeError::Empty));
        assert_eq!(
            EntryPayload::decode(&[2, 0]),
            Err(EntryDecodeError::UnknownVersion(2))
        );
        assert!(matches!(
            EntryPayload::decode(&[1, 5, 0xff]),
            Err(EntryDecodeError::Malformed(_))
        ));
        let good = EntryPayload {
            commands: vec![TaggedCommand {
                origin: None,
                command: Command::Noop,
            }],
        }
        .encode()
        .unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            EntryPayload::decode(&trailing),
            Err(EntryDecodeError::TrailingBytes(1))
        );
        assert!(EntryPayload::decode(&good).is_ok());
    }

    #[test]
    fn size_bound_covers_encoding() {
        let cmd = TaggedCommand {
            origin: Some(ProposalOrigin {
                node: NodeId(u64::MAX),
                incarnation: u64::MAX,
                id: ProposalId(u64::MAX),
            }),
            command: Command::Append {
                epoch: Epoch(u64::MAX),
                prev_gtid: Some(Gtid::new(u32::MAX, u32::MAX, u64::MAX)),
                txns: vec![chunk(u64::MAX, vec![7; 1000])],
            },
        };
        let n = EntryPayload {
            commands: vec![cmd.clone()],
        }
        .encode()
        .unwrap()
        .len();
        assert!(n <= encoded_size_bound(&cmd) + 16, "{n} > bound");
    }

    proptest! {
        #[test]
        fn round_trips(seqs in proptest::collection::vec(any::<u64>(), 0..5),
                       data in proptest::collection::vec(any::<u8>(), 0..300),
                       epoch in any::<u64>(), node in any::<u64>()) {
            let txns: Vec<TxnChunk> = seqs.iter().map(|s| chunk(*s, data.clone())).collect();
            let p = EntryPayload { commands: vec![
                TaggedCommand { origin: Some(ProposalOrigin { node: NodeId(node), incarnation: 3, id: ProposalId(9) }),
                    command: Command::Append { epoch: Epoch(epoch), prev_gtid: seqs.first().map(|s| Gtid::new(0, 2, *s)), txns } },
                TaggedCommand { origin: None, command: Command::MasterReady { node: NodeId(node), epoch: Epoch(epoch), gtid: None } },
                TaggedCommand { origin: None, command: Command::MemberReport { node: NodeId(node), applied_gtid: None, healthy: true, diverged: false } },
                TaggedCommand { origin: None, command: Command::Noop },
            ]};
            let enc = p.encode().unwrap();
            prop_assert_eq!(EntryPayload::decode(&enc).unwrap(), p);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = EntryPayload::decode(&data);
        }
    }
}
