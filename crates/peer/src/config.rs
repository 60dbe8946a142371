//! Settings of one node's peer transport.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::handshake::MAX_HANDSHAKE_PARAMS;
use crate::{ClusterSecret, NodeId, PeerError};

/// Default frame limit: the 4 MiB log entry cap (DESIGN §2) plus 1 MiB for the raft message and
/// command envelope around it.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 5 << 20;
/// Default per-peer, per-lane send queue length (frames).
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub node_id: NodeId,
    /// Address this node accepts peer connections on.
    pub listen: SocketAddr,
    /// Every other member's peer address. An entry for `node_id` itself is allowed and ignored, so
    /// all nodes can share one member list.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub secret: ClusterSecret,
    /// Nodes of different clusters refuse each other even if they share a secret by mistake.
    pub cluster_name: String,
    /// Largest frame (header + body) accepted or sent; a larger one closes the connection.
    pub max_frame_bytes: usize,
    /// Opaque settings that must be byte-equal on both ends (e.g. tick and election settings, which
    /// the lease depends on, DESIGN §3). Prefer readable text: a mismatch is logged with both values.
    pub handshake_params: Vec<u8>,
    /// Frames queued per peer and lane before `send` starts dropping.
    pub queue_depth: usize,
    /// Frames received from all peers that may wait for the consumer before readers stop reading
    /// (TCP back-pressure then slows the senders).
    pub inbound_depth: usize,
    /// Accepted raw streams that may wait for the consumer of `take_stream_receiver`.
    pub stream_depth: usize,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Reconnect delay grows from `backoff_min` to `backoff_max` (each delay jittered to 50–100%).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl PeerConfig {
    /// A config with default limits, timeouts and an empty `handshake_params`.
    pub fn new(
        node_id: NodeId,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        secret: ClusterSecret,
    ) -> Self {
        Self {
            node_id,
            listen,
            peers,
            secret,
            cluster_name: "quorumsql".to_owned(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            handshake_params: Vec::new(),
            queue_depth: DEFAULT_QUEUE_DEPTH,
            inbound_depth: 4096,
            stream_depth: 64,
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), PeerError> {
        let bad = |what: String| Err(PeerError::Config(what));
        if self.handshake_params.len() > MAX_HANDSHAKE_PARAMS {
            return bad(format!(
                "handshake_params is {} bytes, at most {MAX_HANDSHAKE_PARAMS} allowed",
                self.handshake_params.len()
            ));
        }
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > u32::MAX as usize {
            return bad(format!(
                "max_frame_bytes {} is outside 1 KiB ..= 4 GiB",
                self.max_frame_bytes
            ));
        }
        if self.queue_depth == 0 || self.inbound_depth == 0 || self.stream_depth == 0 {
            return bad(
                "queue_depth, inbound_depth and stream_depth must be at least 1".to_owned(),
            );
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return bad(format!(
                "backoff_min {:?} must be positive and at most backoff_max {:?}",
                self.backoff_min, self.backoff_max
            ));
        }
        Ok(())
    }
}
