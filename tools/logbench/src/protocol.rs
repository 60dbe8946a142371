//! The logd client port: length-delimited postcard frames, one request then one response.

use serde::{Deserialize, Serialize};

use quorumsql_wire::Gtid;

/// Largest request or response frame; a dump answer is cut to fit.
pub const MAX_CLIENT_FRAME: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Append `payload` to the log as one transaction (only the master accepts it).
    Propose {
        payload: Vec<u8>,
    },
    Status,
    /// Run `concurrency` proposers inside this node (as capture proposes inside a QuorumSQL
    /// node), each with one `payload_bytes` proposal in flight, for `millis`; answered with
    /// [`Response::Loaded`]. Only the master accepts the proposals.
    Load {
        concurrency: u32,
        payload_bytes: u32,
        millis: u64,
    },
    /// Accepted transactions after `after` (from the start if `None`), at most about `max_bytes`.
    Dump {
        after: Option<Gtid>,
        max_bytes: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The proposal was accepted as transaction `gtid` in raft entry `index`.
    Committed {
        gtid: Gtid,
        index: u64,
    },
    /// The proposal was not accepted. `known_not_applied` is true when it certainly is not in the
    /// log (refused before proposing, rejected, or dropped); false when the outcome is unknown.
    Failed {
        reason: String,
        known_not_applied: bool,
        leader_hint: Option<u64>,
    },
    Status(NodeStatus),
    Dump {
        txns: Vec<DumpedTxn>,
        more: bool,
    },
    /// The outcome of a [`Request::Load`]: commit latencies in microseconds.
    Loaded {
        committed: u64,
        failed: u64,
        elapsed_us: u64,
        p50_us: u64,
        p99_us: u64,
    },
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    /// Leader with its own `MasterReady` applied: proposals are accepted.
    pub is_master: bool,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_gtid: Option<Gtid>,
    pub master_epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpedTxn {
    pub gtid: Gtid,
    pub index: u64,
    pub payload: Vec<u8>,
}
