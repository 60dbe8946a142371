//! One COM_BINLOG_DUMP: decide the start (or refuse with 1236), then stream the virtual binlog —
//! fake ROTATE, FD, GTID_LIST, whole transactions, heartbeats when idle — with semi-sync framing
//! when the replica asked for it, while a reader task takes the replica's ACKs.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use quorumsql_wire::event::{check_event, verify_checksum, Checksum, EventType, FormatDescription};
use quorumsql_wire::packet::encode_packet;
use quorumsql_wire::response::{EofPacket, ErrPacket};
use quorumsql_wire::semisync::{encode_dump_event, SemiSyncAck, SEMISYNC_MAGIC};
use quorumsql_wire::txn::{EventRole, GroupTracker};
use quorumsql_wire::{Gtid, GtidState, PacketCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::error::ServeError;
use super::server::{Counters, ServeEvent, Shared};
use super::session::{Conn, UserVars};
use super::source::{SourceError, Txn, TxnSource};
use super::start::{decide_start, Refusal, RefusalReason, StartDecision};
use super::vbinlog::{normalize_fd, VirtualBinlog};

/// The replica stops (does not retry) on this error.
pub const ER_MASTER_FATAL_ERROR_READING_BINLOG: u16 = 1236;
/// Any other code makes the replica reconnect; this one is used for "try again later".
pub const ER_RETRYABLE: u16 = 1105;
pub const ER_SERVER_SHUTDOWN: u16 = 1053;

/// Framed bytes buffered before they are written to the socket.
const WRITE_CHUNK: usize = 1 << 20;

/// What the session hands over with COM_BINLOG_DUMP.
pub(crate) struct DumpRequest {
    pub conn_id: u32,
    pub replica_server_id: u32,
    pub registered_server_id: Option<u32>,
    pub flags: u16,
    pub vars: UserVars,
}

/// Settings taken from the replica's user variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpSettings {
    pub state: GtidState,
    pub semisync: bool,
    pub heartbeat: Option<Duration>,
    pub annotate_rows: bool,
    pub non_blocking: bool,
}

/// Checks the replica's variables: GTID mode, checksums, semi-sync, heartbeat.
pub fn settings_from_vars(
    vars: &UserVars,
    flags: u16,
    default_heartbeat: Duration,
) -> Result<DumpSettings, Refusal> {
    let refuse = |reason| Refusal::new(None, reason);
    let capability: u32 = vars
        .get("mariadb_slave_capability")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let Some(state) = vars.get("slave_connect_state") else {
        return Err(refuse(RefusalReason::NotGtidMode));
    };
    if capability < 4 {
        return Err(refuse(RefusalReason::NotGtidMode));
    }
    let state: GtidState = state
        .parse()
        .map_err(|_| refuse(RefusalReason::BadConnectState(state.clone())))?;
    match vars.get("master_binlog_checksum") {
        Some(c) if c.eq_ignore_ascii_case("CRC32") => {}
        other => {
            return Err(refuse(RefusalReason::ChecksumUnsupported(
                other.cloned().unwrap_or_else(|| "(not set)".into()),
            )))
        }
    }
    let semisync = vars
        .get("rpl_semi_sync_slave")
        .is_some_and(|v| v != "0" && !v.is_empty());
    // The replica sends nanoseconds; 0 or absent means "the master's default".
    let heartbeat = match vars
        .get("master_heartbeat_period")
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(0) => None,
        Some(ns) => Some(Duration::from_nanos(ns).max(Duration::from_millis(1))),
        None => Some(default_heartbeat),
    };
    Ok(DumpSettings {
        state,
        semisync,
        heartbeat,
        annotate_rows: flags & quorumsql_wire::command::DUMP_FLAG_SEND_ANNOTATE_ROWS != 0,
        non_blocking: flags & quorumsql_wire::command::DUMP_FLAG_NON_BLOCK != 0,
    })
}

/// Writes dump-stream packets: semi-sync framing and the sequence numbering rules (contiguous;
/// restarting at 1 after an ACK-requested event).
struct DumpWriter {
    out: OwnedWriteHalf,
    seq: u8,
    semisync: bool,
    buf: BytesMut,
    payload: BytesMut,
    shared: Arc<Shared>,
}

impl DumpWriter {
    /// Queues one event; `ack` asks the replica for a semi-sync ACK (only with semi-sync).
    fn push_event(&mut self, event: &[u8], ack: bool) {
        let ack = ack && self.semisync;
        self.payload.clear();
        encode_dump_event(self.semisync, ack, event, &mut self.payload);
        self.seq = encode_packet(self.seq, &self.payload, &mut self.buf);
        if ack {
            // The master flushes and restarts numbering after a packet that requests an ACK.
            self.seq = 1;
        }
        Counters::add(&self.shared.counters.events_sent, 1);
    }

    fn push_raw(&mut self, payload: &[u8]) {
        self.seq = encode_packet(self.seq, payload, &mut self.buf);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        Counters::add(&self.shared.counters.bytes_sent, self.buf.len() as u64);
        self.out.write_all(&self.buf).await?;
        self.buf.clear();
        // Keep memory bounded after a large transaction.
        if self.buf.capacity() > 16 << 20 {
            self.buf = BytesMut::new();
            self.payload = BytesMut::new();
        }
        Ok(())
    }

    async fn send_err(&mut self, e: &ErrPacket) -> std::io::Result<()> {
        self.push_raw(&e.to_bytes());
        self.flush().await
    }
}

/// Serves the dump until the replica leaves, is killed, or the stream must stop.
pub(crate) async fn run(
    conn: Conn,
    req: DumpRequest,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    let conn_id = req.conn_id;
    let replica = req.replica_server_id;
    if let Some(r) = req.registered_server_id {
        if r != replica {
            tracing::warn!(
                conn = conn_id,
                registered = r,
                dump = replica,
                "serve: COM_BINLOG_DUMP server_id differs from COM_REGISTER_SLAVE"
            );
        }
    }
    // The codec's next id follows COM_BINLOG_DUMP (seq 0): the first event packet is seq 1.
    let seq = conn.codec().sequence();
    let parts = conn.into_parts();
    let (rd, wr) = parts.io.into_split();
    let mut writer = DumpWriter {
        out: wr,
        seq,
        semisync: false,
        buf: BytesMut::new(),
        payload: BytesMut::new(),
        shared: shared.clone(),
    };
    let io_err = |source| ServeError::Io {
        conn: conn_id,
        source,
    };

    let settings = match settings_from_vars(&req.vars, req.flags, shared.cfg.heartbeat) {
        Ok(s) => s,
        Err(refusal) => {
            refuse(&mut writer, &shared, conn_id, replica, refusal)
                .await
                .map_err(io_err)?;
            return Ok(());
        }
    };
    writer.semisync = settings.semisync;
    shared.register_dump(conn_id, replica);
    Counters::add(&shared.counters.dumps_started, 1);
    Counters::add(&shared.counters.dumps_open, 1);
    tracing::info!(conn = conn_id, replica_server_id = replica, state = %settings.state, semisync = settings.semisync, heartbeat = ?settings.heartbeat, "serve: dump requested");

    // The replica's ACKs (semi-sync) arrive on the same socket; a closed socket ends the dump.
    let reader_done = cancel.child_token();
    let mut codec = PacketCodec::new(shared.cfg.max_command_bytes);
    codec.set_check_sequence(false);
    let mut framed = FramedRead::new(rd, codec);
    framed.read_buffer_mut().extend_from_slice(&parts.read_buf);
    let reader = tokio::spawn(read_acks(
        framed,
        shared.clone(),
        conn_id,
        reader_done.clone(),
    ));

    let mut stream = Streamer {
        shared: shared.clone(),
        conn_id,
        replica,
        settings,
        writer,
        last_sent: None,
    };
    let outcome = tokio::select! {
        _ = cancel.cancelled() => Outcome::Killed,
        _ = reader_done.cancelled() => Outcome::ReplicaGone,
        r = stream.serve() => r,
    };
    reader.abort();
    Counters::sub(&shared.counters.dumps_open, 1);
    let why = match &outcome {
        Outcome::Killed => {
            // KILL (a replica's STOP SLAVE) or serve shutdown: a retryable error, best effort,
            // and only at a packet boundary (a write cut short leaves bytes in `buf`); a torn
            // packet followed by an ERR could read as a corrupt event, which stops the replica.
            if stream.writer.buf.is_empty() {
                let e = ErrPacket::new(
                    ER_SERVER_SHUTDOWN,
                    "quorumsql serve: dump connection ended (KILL or serve shutdown); reconnect later",
                );
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), stream.writer.send_err(&e)).await;
            }
            "killed or shut down".to_string()
        }
        Outcome::ReplicaGone => "the replica closed the connection".to_string(),
        Outcome::Refused => "refused (1236)".to_string(),
        Outcome::Error(e) => e.to_string(),
        Outcome::Finished => "end of a non-blocking dump".to_string(),
    };
    tracing::info!(conn = conn_id, replica_server_id = replica, last_sent = ?stream.last_sent, why = %why, "serve: dump ended");
    shared.emit(ServeEvent::DumpEnded {
        conn: conn_id,
        replica_server_id: replica,
        last_sent: stream.last_sent,
        why,
    });
    match outcome {
        Outcome::Error(e) => Err(e),
        _ => Ok(()),
    }
}

enum Outcome {
    Killed,
    ReplicaGone,
    Refused,
    Finished,
    Error(ServeError),
}

async fn refuse(
    writer: &mut DumpWriter,
    shared: &Shared,
    conn_id: u32,
    replica: u32,
    refusal: Refusal,
) -> std::io::Result<()> {
    tracing::warn!(conn = conn_id, replica_server_id = replica, refusal = %refusal, "serve: refusing the replica (error 1236)");
    Counters::add(&shared.counters.refusals, 1);
    shared.emit(ServeEvent::Refused {
        conn: conn_id,
        replica_server_id: replica,
        gtid: refusal.gtid,
        reason: refusal.reason.clone(),
    });
    writer
        .send_err(&ErrPacket::new(
            ER_MASTER_FATAL_ERROR_READING_BINLOG,
            refusal.to_string(),
        ))
        .await
}

async fn read_acks(
    mut framed: FramedRead<tokio::net::tcp::OwnedReadHalf, PacketCodec>,
    shared: Arc<Shared>,
    conn_id: u32,
    done: CancellationToken,
) {
    while let Some(p) = framed.next().await {
        match p {
            Ok(p) if p.payload.first() == Some(&SEMISYNC_MAGIC) => {
                match SemiSyncAck::decode(&p.payload) {
                    Ok(ack) => {
                        Counters::add(&shared.counters.acks_received, 1);
                        tracing::trace!(conn = conn_id, file = %ack.file, pos = ack.position, "serve: ACK");
                    }
                    Err(e) => {
                        tracing::warn!(conn = conn_id, error = %e, "serve: malformed semi-sync ACK ignored")
                    }
                }
            }
            Ok(p) => {
                tracing::debug!(conn = conn_id, len = p.payload.len(), first = ?p.payload.first(), "serve: unexpected packet on a dump connection ignored");
            }
            Err(e) => {
                tracing::info!(conn = conn_id, error = %e, "serve: reading from the replica failed");
                break;
            }
        }
    }
    done.cancel();
}

struct Streamer {
    shared: Arc<Shared>,
    conn_id: u32,
    replica: u32,
    settings: DumpSettings,
    writer: DumpWriter,
    last_sent: Option<Gtid>,
}

/// The origin FD of the last transaction and its normalized form (most transactions share it).
struct FdCache {
    origin: Option<Bytes>,
    fd: FormatDescription,
}

impl Streamer {
    fn source(&self) -> Arc<dyn TxnSource> {
        self.shared.source.clone()
    }

    async fn serve(&mut self) -> Outcome {
        match self.serve_inner().await {
            Ok(o) => o,
            Err(e) => Outcome::Error(e),
        }
    }

    async fn serve_inner(&mut self) -> Result<Outcome, ServeError> {
        let conn = self.conn_id;
        let io_err = |source| ServeError::Io { conn, source };
        let mut changes = self.source().changes();
        changes.borrow_and_update();
        let state = self.settings.state.clone();
        let mut decision = self.decide(&state).await?;
        if let StartDecision::Refuse(r) = decision {
            refuse(&mut self.writer, &self.shared, conn, self.replica, r)
                .await
                .map_err(io_err)?;
            return Ok(Outcome::Refused);
        }
        // Peek at the first transactions for the origin's FD before opening the file.
        let mut batch = match &decision {
            StartDecision::Stream { after } => match self.read(*after).await {
                Ok(b) => b,
                Err(o) => return Ok(o),
            },
            _ => Vec::new(),
        };
        let mut fd_cache = match self.fd_for(batch.first().and_then(|t| t.origin_fd.clone()), None)
        {
            Ok(f) => f,
            Err(r) => return self.refuse(r).await,
        };
        let mut vb = VirtualBinlog::new(
            self.shared.cfg.server_id,
            self.shared.cfg.rotate_at,
            fd_cache.fd.clone(),
        );
        let mut sent_state = state.clone();
        for ev in vb.open_file(&sent_state) {
            self.writer.push_event(&ev, false);
        }
        self.writer.flush().await.map_err(io_err)?;
        self.shared.emit(ServeEvent::DumpStarted {
            conn,
            replica_server_id: self.replica,
            state: state.clone(),
            semisync: self.settings.semisync,
        });

        // A replica ahead of the source (lagging follower) waits here, kept alive by heartbeats.
        if let StartDecision::Wait { gtid } = decision {
            tracing::info!(conn, %gtid, "serve: the replica is ahead of the log; waiting for the log to catch up");
            self.shared.emit(ServeEvent::WaitingForLog {
                conn,
                replica_server_id: self.replica,
                gtid,
            });
        }
        while let StartDecision::Wait { .. } = decision {
            self.idle_wait(&mut changes, &vb).await?;
            decision = self.decide(&state).await?;
            match &decision {
                StartDecision::Refuse(r) => return self.refuse(r.clone()).await,
                StartDecision::Stream { after } => {
                    batch = match self.read(*after).await {
                        Ok(b) => b,
                        Err(o) => return Ok(o),
                    }
                }
                StartDecision::Wait { .. } => {}
            }
        }
        let StartDecision::Stream { after } = decision else {
            return Ok(Outcome::Refused);
        };
        let mut cursor = after;
        loop {
            if batch.is_empty() {
                if self.settings.non_blocking {
                    self.writer.push_raw(
                        &EofPacket {
                            warnings: 0,
                            status: 2,
                        }
                        .to_bytes(),
                    );
                    self.writer.flush().await.map_err(io_err)?;
                    return Ok(Outcome::Finished);
                }
                self.idle_wait(&mut changes, &vb).await?;
            }
            for txn in batch.drain(..) {
                // Never skip one: the next transaction of a domain follows the previous exactly.
                if let Some(prev) = sent_state.get(txn.gtid.domain) {
                    if txn.gtid.seq != prev.seq + 1 {
                        let r = Refusal::new(
                            Some(txn.gtid),
                            RefusalReason::Gap {
                                prev,
                                next: txn.gtid,
                            },
                        );
                        return self.refuse(r).await;
                    }
                }
                let events = match split_group(&txn, self.settings.annotate_rows) {
                    Ok(e) => e,
                    Err(detail) => {
                        return self
                            .refuse(Refusal::new(
                                Some(txn.gtid),
                                RefusalReason::Malformed(txn.gtid, detail),
                            ))
                            .await
                    }
                };
                if txn.origin_fd != fd_cache.origin {
                    fd_cache = match self.fd_for(txn.origin_fd.clone(), Some(txn.gtid)) {
                        Ok(f) => f,
                        Err(r) => return self.refuse(r).await,
                    };
                }
                let bytes: u64 = events.iter().map(|e| e.len() as u64).sum();
                if vb.needs_rotation(bytes, &fd_cache.fd) {
                    for ev in vb.rotate(&sent_state, fd_cache.fd.clone()) {
                        self.writer.push_event(&ev, false);
                    }
                    tracing::info!(conn, file = %vb.file_name(), "serve: rotated to a new virtual binlog file");
                }
                let n = events.len();
                for (i, ev) in events.iter().enumerate() {
                    let placed = vb.place(ev).map_err(|e| ServeError::Protocol {
                        conn,
                        detail: e.to_string(),
                    })?;
                    self.writer.push_event(&placed, i + 1 == n);
                    // A large transaction goes out as it is framed, not buffered whole.
                    if self.writer.buf.len() >= WRITE_CHUNK {
                        self.writer.flush().await.map_err(io_err)?;
                    }
                }
                self.writer.flush().await.map_err(io_err)?;
                sent_state.set(txn.gtid);
                cursor = Some(txn.gtid);
                self.last_sent = Some(txn.gtid);
                Counters::add(&self.shared.counters.txns_sent, 1);
            }
            changes.borrow_and_update();
            batch = match self.read(cursor).await {
                Ok(b) => b,
                Err(o) => return Ok(o),
            };
        }
    }

    async fn refuse(&mut self, r: Refusal) -> Result<Outcome, ServeError> {
        let conn = self.conn_id;
        refuse(&mut self.writer, &self.shared, conn, self.replica, r)
            .await
            .map_err(|source| ServeError::Io { conn, source })?;
        Ok(Outcome::Refused)
    }

    fn fd_for(&self, origin: Option<Bytes>, gtid: Option<Gtid>) -> Result<FdCache, Refusal> {
        match normalize_fd(origin.as_deref()) {
            Ok(fd) => Ok(FdCache { origin, fd }),
            Err(e) => Err(Refusal::new(
                gtid,
                RefusalReason::Malformed(
                    gtid.unwrap_or(Gtid::new(0, 0, 0)),
                    format!("origin FORMAT_DESCRIPTION: {e}"),
                ),
            )),
        }
    }

    async fn decide(&self, state: &GtidState) -> Result<StartDecision, ServeError> {
        let source = self.source();
        let st = state.clone();
        let conn = self.conn_id;
        tokio::task::spawn_blocking(move || decide_start(source.as_ref(), &st))
            .await
            .map_err(|e| ServeError::Protocol {
                conn,
                detail: format!("start decision task failed: {e}"),
            })?
            .map_err(|source| ServeError::Source { conn, source })
    }

    /// Reads the next batch. A source error becomes the end of the dump: compaction past the
    /// replica is a refusal (rebuild); anything else is retryable.
    async fn read(&mut self, after: Option<Gtid>) -> Result<Vec<Txn>, Outcome> {
        let source = self.source();
        let max = self.shared.cfg.batch_bytes;
        let r = tokio::task::spawn_blocking(move || source.read_after(after, max)).await;
        let err = match r {
            Ok(Ok(b)) => return Ok(b),
            Ok(Err(e)) => e,
            Err(e) => SourceError::Unavailable(format!("read task failed: {e}")),
        };
        let conn = self.conn_id;
        if let SourceError::Compacted { after } = err {
            return Err(
                match self
                    .refuse(Refusal::new(Some(after), RefusalReason::Compacted))
                    .await
                {
                    Ok(o) => o,
                    Err(e) => Outcome::Error(e),
                },
            );
        }
        tracing::warn!(conn, error = %err, "serve: source failed; the replica will reconnect");
        let e = ErrPacket::new(
            ER_RETRYABLE,
            format!("quorumsql serve: the log is unavailable ({err}); retry later"),
        );
        let _ = self.writer.send_err(&e).await;
        Err(Outcome::Error(ServeError::Source { conn, source: err }))
    }

    /// Waits for the source to change, sending a heartbeat whenever the connection was idle for
    /// the heartbeat period.
    async fn idle_wait(
        &mut self,
        changes: &mut watch::Receiver<u64>,
        vb: &VirtualBinlog,
    ) -> Result<(), ServeError> {
        let conn = self.conn_id;
        let period = self.settings.heartbeat.unwrap_or(Duration::from_secs(3600));
        loop {
            let deadline = Instant::now() + period;
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(_)) => {
                    return Err(ServeError::Source {
                        conn,
                        source: SourceError::Unavailable(
                            "the transaction source was dropped".into(),
                        ),
                    })
                }
                Err(_) => {
                    if self.settings.heartbeat.is_some() {
                        let hb = vb.heartbeat();
                        self.writer.push_event(&hb, false);
                        self.writer
                            .flush()
                            .await
                            .map_err(|source| ServeError::Io { conn, source })?;
                        Counters::add(&self.shared.counters.heartbeats_sent, 1);
                    }
                }
            }
        }
    }
}

/// Splits a transaction into its events and checks it is one whole group whose GTID event names
/// `txn.gtid`, with valid CRCs. ANNOTATE_ROWS events are dropped unless the replica asked for them.
pub fn split_group(txn: &Txn, annotate_rows: bool) -> Result<Vec<&[u8]>, String> {
    let mut rest: &[u8] = &txn.events;
    let mut out = Vec::new();
    let mut tracker = GroupTracker::new();
    let mut ended = false;
    while !rest.is_empty() {
        if ended {
            return Err("events after the end of the group".into());
        }
        if rest.len() < 19 {
            return Err(format!("{} trailing bytes are not an event", rest.len()));
        }
        let size = u32::from_le_bytes([rest[9], rest[10], rest[11], rest[12]]) as usize;
        if size < 19 || size > rest.len() {
            return Err(format!("event size {size} with {} bytes left", rest.len()));
        }
        let (ev, tail) = rest.split_at(size);
        rest = tail;
        let h = check_event(ev).map_err(|e| e.to_string())?;
        verify_checksum(ev).map_err(|e| e.to_string())?;
        match tracker
            .classify(ev, Checksum::Crc32)
            .map_err(|e| e.to_string())?
        {
            EventRole::Metadata(t) => {
                return Err(format!(
                    "metadata event {:#04x} inside the group",
                    t.as_u8()
                ))
            }
            EventRole::Begin(_, g) => {
                if !out.is_empty() {
                    return Err("GTID event in the middle of the group".into());
                }
                if g != txn.gtid {
                    return Err(format!("its GTID event says {g}"));
                }
            }
            EventRole::Member => {
                if out.is_empty() {
                    return Err("the group does not start with a GTID event".into());
                }
            }
            EventRole::End(_) => ended = true,
        }
        if h.event_type == EventType::AnnotateRows && !annotate_rows {
            continue;
        }
        out.push(ev);
    }
    if !ended {
        return Err(
            "the group has no end event (XID, COMMIT or the DDL of a standalone group)".into(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumsql_wire::event::{build_event, GtidEvent};

    fn group(seq: u64) -> Bytes {
        let mut b = BytesMut::new();
        b.extend_from_slice(&GtidEvent::new(0, seq, 0x0c).build_event(1, 1, 100, 8));
        b.extend_from_slice(&build_event(
            EventType::AnnotateRows,
            1,
            1,
            150,
            0,
            b"INSERT",
            Checksum::Crc32,
        ));
        b.extend_from_slice(&build_event(
            EventType::Xid,
            1,
            1,
            200,
            0,
            &7u64.to_le_bytes(),
            Checksum::Crc32,
        ));
        b.freeze()
    }

    fn txn(seq: u64, events: Bytes) -> Txn {
        Txn {
            gtid: Gtid::new(0, 1, seq),
            events,
            origin_fd: None,
        }
    }

    #[test]
    fn whole_groups_split_and_annotations_follow_the_dump_flag() {
        let t = txn(5, group(5));
        assert_eq!(split_group(&t, true).unwrap().len(), 3);
        assert_eq!(split_group(&t, false).unwrap().len(), 2);
    }

    #[test]
    fn partial_mislabelled_or_corrupt_groups_are_rejected() {
        let g = group(5);
        let gtid_len = check_event(&g[..42])
            .map(|h| h.event_size as usize)
            .unwrap();
        let partial = txn(5, g.slice(..g.len() - 31));
        assert!(split_group(&partial, true).is_err());
        assert!(split_group(&txn(6, g.clone()), true)
            .unwrap_err()
            .contains("0-1-5"));
        let mut bad = BytesMut::from(&g[..]);
        bad[gtid_len + 20] ^= 1;
        assert!(split_group(&txn(5, bad.freeze()), true).is_err());
        let mut two = BytesMut::from(&g[..]);
        two.extend_from_slice(&group(6));
        assert!(split_group(&txn(5, two.freeze()), true).is_err());
    }

    #[test]
    fn settings_require_gtid_mode_and_crc32() {
        let mut v = UserVars::new();
        let hb = Duration::from_secs(30);
        assert!(matches!(
            settings_from_vars(&v, 0, hb),
            Err(Refusal {
                reason: RefusalReason::NotGtidMode,
                ..
            })
        ));
        v.insert("mariadb_slave_capability".into(), "4".into());
        v.insert("slave_connect_state".into(), "0-1-5".into());
        assert!(matches!(
            settings_from_vars(&v, 0, hb),
            Err(Refusal {
                reason: RefusalReason::ChecksumUnsupported(_),
                ..
            })
        ));
        v.insert("master_binlog_checksum".into(), "CRC32".into());
        v.insert("rpl_semi_sync_slave".into(), "1".into());
        v.insert("master_heartbeat_period".into(), "2000000000".into());
        let s = settings_from_vars(&v, 2, hb).unwrap();
        assert!(s.semisync && s.annotate_rows && !s.non_blocking);
        assert_eq!(s.heartbeat, Some(Duration::from_secs(2)));
        assert_eq!(s.state.to_string(), "0-1-5");
    }
}
