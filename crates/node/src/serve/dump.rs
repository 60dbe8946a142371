//! One COM_BINLOG_DUMP: decide the start (or refuse with 1236), then stream the virtual binlog —
//! fake ROTATE, FD, GTID_LIST, transactions, heartbeats when idle — with semi-sync framing when
//! the replica asked for it, while a reader task takes the replica's ACKs. A transaction is read
//! from the source in pieces of at most `batch_bytes` and sent event by event as the pieces come
//! ([`super::group`]), so a dump holds at most one piece plus the largest single event, whatever
//! the size of the transaction; its end event is sent only after all of it was read.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use quorumsql_wire::event::FormatDescription;
use quorumsql_wire::packet::encode_packet;
use quorumsql_wire::response::{EofPacket, ErrPacket};
use quorumsql_wire::semisync::{encode_dump_event, SemiSyncAck, SEMISYNC_MAGIC};
use quorumsql_wire::{Gtid, GtidState, PacketCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::error::ServeError;
use super::group::GroupSplitter;
use super::server::{Counters, ServeEvent, Shared};
use super::session::{Conn, UserVars};
use super::source::{SourceError, TxnPiece, TxnReader, TxnSource};
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
        let mut reader: Option<Box<dyn TxnReader>> = None;
        let mut batch = match &decision {
            StartDecision::Stream { after } => {
                reader = Some(self.source().reader(*after));
                match self.read(&mut reader).await {
                    Ok(b) => b,
                    Err(o) => return Ok(o),
                }
            }
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
                    reader = Some(self.source().reader(*after));
                    batch = match self.read(&mut reader).await {
                        Ok(b) => b,
                        Err(o) => return Ok(o),
                    }
                }
                StartDecision::Wait { .. } => {}
            }
        }
        let StartDecision::Stream { .. } = decision else {
            return Ok(Outcome::Refused);
        };
        // The transaction being streamed, when the source hands it out in pieces.
        let mut open: Option<GroupSplitter> = None;
        loop {
            if batch.is_empty() {
                if let Some(g) = &open {
                    // The rest of a transaction the source started is always readable.
                    let e = SourceError::Unavailable(format!(
                        "the source returned nothing after byte {} of {}",
                        g.received(),
                        g.gtid()
                    ));
                    return Ok(self.source_failed(e).await);
                }
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
            for piece in batch.drain(..) {
                let mut at = StreamAt {
                    open: &mut open,
                    sent_state: &mut sent_state,
                    fd_cache: &mut fd_cache,
                    vb: &mut vb,
                };
                if let Some(end) = self.stream_piece(piece, &mut at).await? {
                    return Ok(end);
                }
            }
            changes.borrow_and_update();
            batch = match self.read(&mut reader).await {
                Ok(b) => b,
                Err(o) => return Ok(o),
            };
        }
    }

    /// Sends the events `piece` completes. A transaction is checked as it goes (one whole group
    /// for its GTID, valid CRCs) and its end event goes out last, with its last piece.
    /// `Some(outcome)` ends the dump.
    async fn stream_piece(
        &mut self,
        piece: TxnPiece,
        at: &mut StreamAt<'_>,
    ) -> Result<Option<Outcome>, ServeError> {
        let conn = self.conn_id;
        let io_err = |source| ServeError::Io { conn, source };
        let gtid = piece.gtid;
        let starts = at.open.is_none();
        if starts {
            if piece.offset != 0 {
                let e = SourceError::Unavailable(format!(
                    "the source started {gtid} at byte {} instead of 0",
                    piece.offset
                ));
                return Ok(Some(self.source_failed(e).await));
            }
            // Never skip one: the next transaction of a domain follows the previous exactly.
            if let Some(prev) = at.sent_state.get(gtid.domain) {
                if gtid.seq != prev.seq + 1 {
                    let r = Refusal::new(Some(gtid), RefusalReason::Gap { prev, next: gtid });
                    return self.refuse(r).await.map(Some);
                }
            }
        }
        let splitter = at
            .open
            .get_or_insert_with(|| GroupSplitter::new(gtid, self.settings.annotate_rows));
        // A source that breaks its order is retried (reconnect), never refused with 1236: the
        // log itself may be fine.
        if splitter.gtid() != gtid || splitter.received() != piece.offset {
            let e = SourceError::Unavailable(format!(
                "the source sent byte {} of {gtid} after byte {} of {}",
                piece.offset,
                splitter.received(),
                splitter.gtid()
            ));
            return Ok(Some(self.source_failed(e).await));
        }
        let whole = piece.is_whole();
        let events = match splitter.push(piece.offset, piece.events, piece.last) {
            Ok(e) => e,
            Err(e) => {
                // Part of a large group may already be with the replica: it stops on 1236 with a
                // partial group in its relay log that can never complete (it is never applied:
                // the end event was not sent). Either way this log entry needs an operator.
                let r = Refusal::new(Some(gtid), RefusalReason::Malformed(gtid, e.to_string()));
                return self.refuse(r).await.map(Some);
            }
        };
        if starts {
            if piece.origin_fd != at.fd_cache.origin {
                *at.fd_cache = match self.fd_for(piece.origin_fd.clone(), Some(gtid)) {
                    Ok(f) => f,
                    Err(r) => return self.refuse(r).await.map(Some),
                };
            }
            // The size is known only for a transaction that came whole; one in pieces starts a
            // new file unless the current one holds no transaction yet, so that it can use the
            // whole u32 `log_pos` range whatever its size.
            let size = whole.then(|| events.iter().map(|e| e.bytes.len() as u64).sum());
            if at.vb.needs_rotation(size, &at.fd_cache.fd) {
                for ev in at.vb.rotate(at.sent_state, at.fd_cache.fd.clone()) {
                    self.writer.push_event(&ev, false);
                }
                tracing::info!(conn, file = %at.vb.file_name(), "serve: rotated to a new virtual binlog file");
            }
        }
        for ev in &events {
            let placed = at.vb.place(&ev.bytes).map_err(|e| ServeError::Protocol {
                conn,
                detail: e.to_string(),
            })?;
            // The end event asks for the semi-sync ACK.
            self.writer.push_event(&placed, ev.end);
            // A large transaction goes out as it is framed, not buffered whole.
            if self.writer.buf.len() >= WRITE_CHUNK {
                self.writer.flush().await.map_err(io_err)?;
            }
        }
        if piece.last {
            self.writer.flush().await.map_err(io_err)?;
            at.sent_state.set(gtid);
            *at.open = None;
            self.last_sent = Some(gtid);
            Counters::add(&self.shared.counters.txns_sent, 1);
        }
        Ok(None)
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

    /// Reads the next batch of pieces (at most `batch_bytes`). A source error becomes the end of
    /// the dump: compaction past the replica is a refusal (rebuild); anything else is retryable.
    async fn read(
        &mut self,
        reader: &mut Option<Box<dyn TxnReader>>,
    ) -> Result<Vec<TxnPiece>, Outcome> {
        let Some(mut rd) = reader.take() else {
            let e = SourceError::Unavailable("the reader was lost by a failed read task".into());
            return Err(self.source_failed(e).await);
        };
        let max = self.shared.cfg.batch_bytes;
        let r = tokio::task::spawn_blocking(move || {
            let r = rd.read(max);
            (rd, r)
        })
        .await;
        let err = match r {
            Ok((rd, Ok(b))) => {
                *reader = Some(rd);
                return Ok(b);
            }
            Ok((rd, Err(e))) => {
                *reader = Some(rd);
                e
            }
            Err(e) => SourceError::Unavailable(format!("read task failed: {e}")),
        };
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
        Err(self.source_failed(err).await)
    }

    /// Ends the dump on a source failure with a retryable error: the replica reconnects at its
    /// last complete transaction.
    async fn source_failed(&mut self, err: SourceError) -> Outcome {
        let conn = self.conn_id;
        tracing::warn!(conn, error = %err, "serve: source failed; the replica will reconnect");
        let e = ErrPacket::new(
            ER_RETRYABLE,
            format!("quorumsql serve: the log is unavailable ({err}); retry later"),
        );
        let _ = self.writer.send_err(&e).await;
        Outcome::Error(ServeError::Source { conn, source: err })
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

/// Where a dump stands while it streams: the open transaction and the virtual binlog.
struct StreamAt<'a> {
    open: &'a mut Option<GroupSplitter>,
    sent_state: &'a mut GtidState,
    fd_cache: &'a mut FdCache,
    vb: &'a mut VirtualBinlog,
}

#[cfg(test)]
mod tests {
    use super::*;

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
