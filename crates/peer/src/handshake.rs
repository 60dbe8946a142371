//! The connection handshake: mutual proof of the cluster secret before any frame is parsed.
//!
//! ```text
//! dialer                                   acceptor
//!   ClientHello{cluster, from, to, nonce_d, purpose, params} ──►
//!            ◄── ServerHello{cluster, from, nonce_a, proof_a, params}
//!   ClientProof{proof_d} ──►
//!            ◄── Verdict{Accepted | Refused(reason)}
//! ```
//! `proof_x = HMAC-SHA256(secret, label_x ‖ cluster ‖ dialer id ‖ acceptor id ‖ nonce_d ‖ nonce_a ‖
//! purpose)`, so each side proves the secret over its peer's fresh nonce, and the direction label
//! keeps an acceptor's proof from being replayed as a dialer's. Every message is
//! `u32 length ‖ "QSQP" ‖ version ‖ type ‖ postcard body`, at most [`MAX_HANDSHAKE_MSG`] bytes,
//! read with exact reads so no byte of what follows the handshake is consumed here.
//! The handshake authenticates the connection, it does not encrypt or MAC later frames: peers are
//! expected on a private network.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hmac::Mac;
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::PROTOCOL_VERSION;
use crate::{ClusterSecret, NodeId};

const MAGIC: [u8; 4] = *b"QSQP";
/// Largest handshake message; anything longer is garbage or an attack.
pub const MAX_HANDSHAKE_MSG: usize = 8 * 1024;
/// Largest `handshake_params` a node may configure (leaves room in [`MAX_HANDSHAKE_MSG`]).
pub const MAX_HANDSHAKE_PARAMS: usize = 4 * 1024;
const MAX_REFUSAL_REASON: usize = 512;

const LABEL_DIALER: &[u8] = b"quorumsql-peer/1 dialer proof";
const LABEL_ACCEPTOR: &[u8] = b"quorumsql-peer/1 acceptor proof";

type Nonce = [u8; 32];
type Proof = [u8; 32];

/// Which of the two long-lived message connections to a peer a frame travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Lane {
    /// Small, latency-critical traffic: heartbeats, lease rounds, votes, append responses.
    Urgent,
    /// Everything else, notably log entries; may hold megabytes in flight.
    Bulk,
}

/// Why a raw authenticated stream was opened (tells the acceptor which service gets it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StreamPurpose {
    /// A client connection forwarded from another node's proxy.
    Proxy,
    /// A backup stream for rebuilding a node from a healthy peer.
    Rebuild,
}

/// What the dialer wants the connection for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ConnPurpose {
    Lane(Lane),
    Stream(StreamPurpose),
}

/// Why a handshake failed. Displayed in the warn line that closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("i/o error during handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake did not complete within {0:?}")]
    Timeout(std::time::Duration),
    #[error("handshake message of {len} bytes exceeds the {MAX_HANDSHAKE_MSG}-byte limit (not a QuorumSQL peer?)")]
    TooLarge { len: usize },
    #[error("not a QuorumSQL peer (bad magic bytes)")]
    BadMagic,
    #[error("peer speaks protocol version {theirs}, this node speaks {PROTOCOL_VERSION}")]
    Version { theirs: u8 },
    #[error("malformed handshake message: {0}")]
    Malformed(String),
    #[error("peer belongs to a different cluster (cluster name hash differs)")]
    ClusterMismatch,
    #[error("dialer addressed {addressed} but this is {ours}")]
    WrongTarget { addressed: NodeId, ours: NodeId },
    #[error("unknown node id {0} (not in this node's peer list)")]
    UnknownNode(NodeId),
    #[error("expected to reach {expected} but the acceptor is {got}")]
    UnexpectedPeer { expected: NodeId, got: NodeId },
    #[error("{peer} failed to prove the cluster secret (wrong secret?)")]
    BadProof { peer: NodeId },
    #[error("handshake parameters differ: this node ({ours_node}) has {ours:?}, {theirs_node} has {theirs:?}")]
    ParamsMismatch {
        ours_node: NodeId,
        ours: String,
        theirs_node: NodeId,
        theirs: String,
    },
    #[error("refused by the acceptor: {0}")]
    Refused(String),
    #[error("cluster secret unusable as an HMAC key")]
    BadKey,
}

#[derive(Serialize, Deserialize)]
struct ClientHello {
    cluster: [u8; 32],
    from: NodeId,
    to: NodeId,
    nonce: Nonce,
    purpose: ConnPurpose,
    params: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ServerHello {
    cluster: [u8; 32],
    from: NodeId,
    nonce: Nonce,
    proof: Proof,
    params: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ClientProof {
    proof: Proof,
}

#[derive(Serialize, Deserialize)]
pub(crate) enum Verdict {
    Accepted,
    Refused(String),
}

trait HandshakeMsg: Serialize + DeserializeOwned {
    const TYPE: u8;
}
impl HandshakeMsg for ClientHello {
    const TYPE: u8 = 1;
}
impl HandshakeMsg for ServerHello {
    const TYPE: u8 = 2;
}
impl HandshakeMsg for ClientProof {
    const TYPE: u8 = 3;
}
impl HandshakeMsg for Verdict {
    const TYPE: u8 = 4;
}

/// What both sides need to know to run a handshake.
pub(crate) struct Identity<'a> {
    pub node_id: NodeId,
    pub cluster_hash: [u8; 32],
    pub secret: &'a ClusterSecret,
    pub params: &'a [u8],
    pub peers: &'a BTreeMap<NodeId, SocketAddr>,
}

/// The cluster name as it travels in hellos (a hash keeps the message fixed-size).
pub(crate) fn cluster_hash(name: &str) -> [u8; 32] {
    Sha256::digest(name.as_bytes()).into()
}

/// Handshake parameters for log lines: text when it is text, hex otherwise.
pub(crate) fn show_params(p: &[u8]) -> String {
    match std::str::from_utf8(p) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_owned(),
        _ => format!("hex:{}", hex::encode(p)),
    }
}

fn nonce() -> Nonce {
    let mut n = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

struct Transcript<'a> {
    cluster: &'a [u8; 32],
    dialer: NodeId,
    acceptor: NodeId,
    nonce_d: &'a Nonce,
    nonce_a: &'a Nonce,
    purpose: ConnPurpose,
}

impl Transcript<'_> {
    fn mac(
        &self,
        secret: &ClusterSecret,
        label: &[u8],
    ) -> Result<hmac::Hmac<Sha256>, HandshakeError> {
        let mut m = secret.mac().map_err(|_| HandshakeError::BadKey)?;
        m.update(label);
        m.update(self.cluster);
        m.update(&self.dialer.0.to_be_bytes());
        m.update(&self.acceptor.0.to_be_bytes());
        m.update(self.nonce_d);
        m.update(self.nonce_a);
        let purpose = postcard::to_stdvec(&self.purpose)
            .map_err(|e| HandshakeError::Malformed(e.to_string()))?;
        m.update(&purpose);
        Ok(m)
    }

    fn prove(&self, secret: &ClusterSecret, label: &[u8]) -> Result<Proof, HandshakeError> {
        Ok(self.mac(secret, label)?.finalize().into_bytes().into())
    }

    /// Constant-time check of the peer's proof.
    fn verify(
        &self,
        secret: &ClusterSecret,
        label: &[u8],
        proof: &Proof,
        peer: NodeId,
    ) -> Result<(), HandshakeError> {
        self.mac(secret, label)?
            .verify_slice(proof)
            .map_err(|_| HandshakeError::BadProof { peer })
    }
}

async fn write_msg<S: AsyncWrite + Unpin, M: HandshakeMsg>(
    io: &mut S,
    msg: &M,
) -> Result<(), HandshakeError> {
    let body = postcard::to_stdvec(msg).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    let len = MAGIC.len() + 2 + body.len();
    if len > MAX_HANDSHAKE_MSG {
        return Err(HandshakeError::TooLarge { len });
    }
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    buf.extend_from_slice(&MAGIC);
    buf.push(PROTOCOL_VERSION);
    buf.push(M::TYPE);
    buf.extend_from_slice(&body);
    io.write_all(&buf).await?;
    io.flush().await?;
    Ok(())
}

async fn read_msg<S: AsyncRead + Unpin, M: HandshakeMsg>(io: &mut S) -> Result<M, HandshakeError> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE_MSG {
        return Err(HandshakeError::TooLarge { len });
    }
    if len < MAGIC.len() + 2 {
        return Err(HandshakeError::Malformed(format!(
            "message of {len} bytes is shorter than its header"
        )));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    if buf[..4] != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    if buf[4] != PROTOCOL_VERSION {
        return Err(HandshakeError::Version { theirs: buf[4] });
    }
    if buf[5] != M::TYPE {
        return Err(HandshakeError::Malformed(format!(
            "expected message type {}, got {}",
            M::TYPE,
            buf[5]
        )));
    }
    let (msg, rest) = postcard::take_from_bytes::<M>(&buf[6..])
        .map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(HandshakeError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(msg)
}

fn check_params(me: &Identity<'_>, peer: NodeId, theirs: &[u8]) -> Result<(), HandshakeError> {
    if me.params == theirs {
        return Ok(());
    }
    Err(HandshakeError::ParamsMismatch {
        ours_node: me.node_id,
        ours: show_params(me.params),
        theirs_node: peer,
        theirs: show_params(theirs),
    })
}

/// Runs the dialer side. On success the connection is authenticated both ways and accepted.
pub(crate) async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    me: &Identity<'_>,
    to: NodeId,
    purpose: ConnPurpose,
) -> Result<(), HandshakeError> {
    let nonce_d = nonce();
    let hello = ClientHello {
        cluster: me.cluster_hash,
        from: me.node_id,
        to,
        nonce: nonce_d,
        purpose,
        params: me.params.to_vec(),
    };
    write_msg(io, &hello).await?;
    let server: ServerHello = read_msg(io).await?;
    if server.cluster != me.cluster_hash {
        return Err(HandshakeError::ClusterMismatch);
    }
    if server.from != to {
        return Err(HandshakeError::UnexpectedPeer {
            expected: to,
            got: server.from,
        });
    }
    let t = Transcript {
        cluster: &me.cluster_hash,
        dialer: me.node_id,
        acceptor: to,
        nonce_d: &nonce_d,
        nonce_a: &server.nonce,
        purpose,
    };
    let authentic = t.verify(me.secret, LABEL_ACCEPTOR, &server.proof, to);
    let params = check_params(me, to, &server.params);
    // Prove ourselves even when the acceptor failed its proof or the params differ, so that the
    // acceptor logs the real reason too (an operator usually reads one node's log). This hands out
    // nothing useful: the proof covers the acceptor's fresh nonce and the dialer label.
    write_msg(
        io,
        &ClientProof {
            proof: t.prove(me.secret, LABEL_DIALER)?,
        },
    )
    .await?;
    authentic?;
    params?;
    match read_msg::<_, Verdict>(io).await? {
        Verdict::Accepted => Ok(()),
        Verdict::Refused(reason) => Err(HandshakeError::Refused(reason)),
    }
}

/// An authenticated dialer whose connection awaits a verdict from [`finish_accept`].
pub(crate) struct Authenticated {
    pub from: NodeId,
    pub purpose: ConnPurpose,
}

/// Runs the acceptor side up to the verdict. Refusals after the dialer proved itself are told to the
/// dialer (best effort) so that its log names the reason too.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    me: &Identity<'_>,
) -> Result<Authenticated, HandshakeError> {
    let hello: ClientHello = read_msg(io).await?;
    if hello.cluster != me.cluster_hash {
        return Err(HandshakeError::ClusterMismatch);
    }
    if hello.to != me.node_id {
        return Err(HandshakeError::WrongTarget {
            addressed: hello.to,
            ours: me.node_id,
        });
    }
    if hello.from == me.node_id || !me.peers.contains_key(&hello.from) {
        return Err(HandshakeError::UnknownNode(hello.from));
    }
    let nonce_a = nonce();
    let t = Transcript {
        cluster: &me.cluster_hash,
        dialer: hello.from,
        acceptor: me.node_id,
        nonce_d: &hello.nonce,
        nonce_a: &nonce_a,
        purpose: hello.purpose,
    };
    let server = ServerHello {
        cluster: me.cluster_hash,
        from: me.node_id,
        nonce: nonce_a,
        proof: t.prove(me.secret, LABEL_ACCEPTOR)?,
        params: me.params.to_vec(),
    };
    write_msg(io, &server).await?;
    let proof: ClientProof = read_msg(io).await?;
    t.verify(me.secret, LABEL_DIALER, &proof.proof, hello.from)?;
    if let Err(e) = check_params(me, hello.from, &hello.params) {
        let _ = finish_accept(io, Verdict::Refused(e.to_string())).await;
        return Err(e);
    }
    Ok(Authenticated {
        from: hello.from,
        purpose: hello.purpose,
    })
}

/// Sends the acceptor's verdict; the connection carries frames (or stream bytes) after `Accepted`.
pub(crate) async fn finish_accept<S: AsyncWrite + Unpin>(
    io: &mut S,
    verdict: Verdict,
) -> Result<(), HandshakeError> {
    let verdict = match verdict {
        Verdict::Refused(mut r) => {
            if r.len() > MAX_REFUSAL_REASON {
                let mut cut = MAX_REFUSAL_REASON;
                while !r.is_char_boundary(cut) {
                    cut -= 1;
                }
                r.truncate(cut);
            }
            Verdict::Refused(r)
        }
        v => v,
    };
    write_msg(io, &verdict).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> BTreeMap<NodeId, SocketAddr> {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        [(NodeId(1), a), (NodeId(2), a)].into_iter().collect()
    }

    async fn run(
        d_secret: &ClusterSecret,
        a_secret: &ClusterSecret,
        d_params: &[u8],
        a_params: &[u8],
    ) -> (
        Result<(), HandshakeError>,
        Result<Authenticated, HandshakeError>,
    ) {
        let peers = peers();
        let (d_io, a_io) = tokio::io::duplex(64 * 1024);
        let d = Identity {
            node_id: NodeId(1),
            cluster_hash: cluster_hash("c"),
            secret: d_secret,
            params: d_params,
            peers: &peers,
        };
        let a = Identity {
            node_id: NodeId(2),
            cluster_hash: cluster_hash("c"),
            secret: a_secret,
            params: a_params,
            peers: &peers,
        };
        // Each side drops its end when done, as a real connection would be closed.
        let dial = async {
            let mut io = d_io;
            dial(&mut io, &d, NodeId(2), ConnPurpose::Lane(Lane::Bulk)).await
        };
        let acc = async {
            let mut io = a_io;
            let r = accept(&mut io, &a).await;
            if r.is_ok() {
                finish_accept(&mut io, Verdict::Accepted).await.unwrap();
            }
            r
        };
        tokio::join!(dial, acc)
    }

    #[tokio::test]
    async fn same_secret_and_params_authenticate_both_ways() {
        let s = ClusterSecret::random();
        let (d, a) = run(&s, &s, b"tick=50", b"tick=50").await;
        d.unwrap();
        let a = a.unwrap();
        assert_eq!(a.from, NodeId(1));
        assert_eq!(a.purpose, ConnPurpose::Lane(Lane::Bulk));
    }

    #[tokio::test]
    async fn wrong_secret_fails_on_both_sides() {
        let (d, a) = run(&ClusterSecret::random(), &ClusterSecret::random(), b"", b"").await;
        assert!(
            matches!(d, Err(HandshakeError::BadProof { peer: NodeId(2) })),
            "{d:?}"
        );
        assert!(a.is_err());
    }

    /// A dialer claiming `from` in cluster `cluster` against acceptor node2 of cluster "c".
    async fn accept_from(
        from: NodeId,
        cluster: &str,
    ) -> (
        Result<(), HandshakeError>,
        Result<Authenticated, HandshakeError>,
    ) {
        let s = ClusterSecret::random();
        let peers = peers();
        let (d_io, a_io) = tokio::io::duplex(64 * 1024);
        let d = Identity {
            node_id: from,
            cluster_hash: cluster_hash(cluster),
            secret: &s,
            params: b"",
            peers: &peers,
        };
        let a = Identity {
            node_id: NodeId(2),
            cluster_hash: cluster_hash("c"),
            secret: &s,
            params: b"",
            peers: &peers,
        };
        let dial = async {
            let mut io = d_io;
            dial(
                &mut io,
                &d,
                NodeId(2),
                ConnPurpose::Stream(StreamPurpose::Proxy),
            )
            .await
        };
        let acc = async {
            let mut io = a_io;
            accept(&mut io, &a).await
        };
        tokio::join!(dial, acc)
    }

    #[tokio::test]
    async fn unknown_node_and_foreign_cluster_are_refused_before_any_proof() {
        let (d, a) = accept_from(NodeId(7), "c").await;
        assert!(
            matches!(a, Err(HandshakeError::UnknownNode(NodeId(7)))),
            "{:?}",
            a.err()
        );
        assert!(matches!(d, Err(HandshakeError::Io(_))), "{d:?}");
        let (_, a) = accept_from(NodeId(2), "c").await;
        assert!(
            matches!(a, Err(HandshakeError::UnknownNode(NodeId(2)))),
            "a node never accepts itself"
        );
        let (_, a) = accept_from(NodeId(1), "other").await;
        assert!(
            matches!(a, Err(HandshakeError::ClusterMismatch)),
            "{:?}",
            a.err()
        );
    }

    #[tokio::test]
    async fn params_mismatch_names_both_values_on_both_sides() {
        let s = ClusterSecret::random();
        let (d, a) = run(&s, &s, b"tick=50", b"tick=100").await;
        let d = d.unwrap_err().to_string();
        let a = a.err().unwrap().to_string();
        for msg in [&d, &a] {
            assert!(msg.contains("tick=50") && msg.contains("tick=100"), "{msg}");
        }
    }
}
