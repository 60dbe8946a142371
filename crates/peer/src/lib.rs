//! Authenticated peer transport: length-delimited frames over TCP between QuorumSQL nodes.
//!
//! Every connection starts with a handshake ([`handshake`]) in which both ends prove the cluster
//! secret and compare `handshake_params`; only then are frames parsed. Each node keeps, towards each
//! peer, two long-lived outbound connections ("lanes"): [`Lane::Urgent`] for heartbeats, lease
//! rounds, votes and other small messages, [`Lane::Bulk`] for log entries. Separate connections
//! (rather than two queues on one socket) keep an urgent frame from waiting behind megabytes already
//! handed to the kernel's socket buffer for a slow link. Sending never blocks: each lane has a
//! bounded queue and frames are dropped (and counted) when it is full or the lane is down — raft
//! tolerates loss. Raw authenticated TCP streams (for the proxy) are opened on demand.

use std::fmt;

use serde::{Deserialize, Serialize};

mod config;
mod frame;
pub mod handshake;
mod net;
mod secret;

pub use config::{PeerConfig, DEFAULT_MAX_FRAME_BYTES, DEFAULT_QUEUE_DEPTH};
pub use frame::{Frame, FrameError, FrameKind, FRAME_HEADER_BYTES, PROTOCOL_VERSION};
pub use handshake::{HandshakeError, Lane, StreamPurpose};
pub use net::{Inbound, InboundStream, PeerError, PeerNet, PeerStatus, SendError};
pub use secret::{ClusterSecret, SecretError, MIN_SECRET_BYTES};

/// A cluster member's id. Also the `server_id` of its mariadbd; never reused (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node{}", self.0)
    }
}
