//! Cutting a binlog event stream into whole transactions ("groups"), with MariaDB's replica rules
//! (mariadb-replication §5.5): a group starts with a GTID event and ends with XID, a QUERY
//! `COMMIT`/`ROLLBACK` (non-transactional engines, `XA COMMIT|ROLLBACK`), an XA_PREPARE event, or —
//! for a GTID flagged STANDALONE — the statement that follows (a QUERY, or a rows event that ends
//! its statement). A GTID inside an open group, or a group event without a GTID, is an error.
//! Stream metadata (FD, ROTATE, GTID_LIST, BINLOG_CHECKPOINT, HEARTBEAT, STOP, START_ENCRYPTION)
//! is outside transactions and reported separately, even between a group's events.
//!
//! [`GroupTracker`] classifies events in constant memory (for streaming very large transactions);
//! [`TxnAssembler`] builds on it and buffers whole transactions up to a size cap.
//!
//! # Digest
//!
//! [`TxnDigester`] computes a SHA-256 over the *content* of a group, so that two servers holding
//! "the same GTID" can be compared. Hashed, in order: the ASCII tag `quorumsql-txn-digest-v1`,
//! then for every event except ANNOTATE_ROWS: its type byte, its header server_id (u32 LE), the
//! length of its canonical body (u64 LE) and the canonical body. The canonical body is the event
//! body (after the 19-byte header, without the CRC) with the parts that legitimately differ
//! between a master and a replica that re-logged the event removed:
//!
//! * GTID: `seq` (8) + `domain` (4) + `flags2 & (STANDALONE | TRANSACTIONAL | DDL | PREPARED_XA |
//!   COMPLETED_XA)` (1) + for XA the format id (4 LE), gtrid and bqual each length-prefixed (u8);
//!   commit_id, the scheduling bits (GROUP_COMMIT_ID, ALLOW_PARALLEL, WAITED) and flags_extra are
//!   excluded;
//! * XID: empty (the xid is a server-internal counter);
//! * QUERY `COMMIT`: hashed exactly like an XID (type byte 0x10, empty body): a replica ends a
//!   non-transactional (MyISAM) group with XID where the master wrote a COMMIT query, because the
//!   replica's `mysql.gtid_slave_pos` update makes the group transactional;
//! * other QUERY events: `error_code` (2 LE) + db length (u64 LE) + db + query text; thread id,
//!   exec time and the status variables are excluded;
//! * TABLE_MAP and rows events: the body without its first 6 bytes (the server-local table id);
//! * every other type: the whole body.
//!
//! Never hashed: timestamp, event_size, log_pos, header flags, CRC. ANNOTATE_ROWS events are
//! skipped entirely (a replica writes them only with `replicate_annotate_row_events`). Two servers
//! that split the same rows into different events produce different digests; the digest is exact
//! for comparing what capture received with the binlog of the server that wrote it. Verified on
//! 10.11.19: a replica with `log_slave_updates` and parallel apply re-logs DDL, InnoDB and MyISAM
//! DML with the master's digests (node `sql::tests`).

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::WireError;
use crate::event::{
    check_event, event_body, gtid_flags, Checksum, EventHeader, EventType, GtidEvent, QueryEvent,
    Rotate, HEADER_LEN,
};
use crate::gtid::{BinlogPos, Gtid};

/// Grouping errors: the stream broke MariaDB's group-integrity rules or a cap.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("GTID {next} arrived while group {open} was still open (unexpected break of a group)")]
    GtidInsideGroup { open: Gtid, next: Gtid },
    #[error("a {event_type:#04x} event (log_pos {log_pos}) arrived outside any group: groups must start with a GTID event")]
    EventOutsideGroup { event_type: u8, log_pos: u32 },
    #[error("transaction {gtid} exceeds {max} bytes (reached {bytes})")]
    TooLarge {
        gtid: Gtid,
        bytes: usize,
        max: usize,
    },
    #[error("malformed event in the stream: {0}")]
    Wire(#[from] WireError),
}

/// How a group ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEnd {
    Xid,
    /// QUERY `COMMIT`/`ROLLBACK`/`XA COMMIT`/`XA ROLLBACK`.
    CommitQuery,
    XaPrepare,
    /// The single statement of a STANDALONE group (DDL).
    Standalone,
}

/// What an event is to the group structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRole {
    /// Stream metadata, outside transactions.
    Metadata(EventType),
    /// A GTID event: opens a group.
    Begin(GtidEvent, Gtid),
    /// A member of the open group that does not end it.
    Member,
    /// The last event of the open group.
    End(TxnEnd),
}

/// Constant-memory classifier enforcing the group rules.
#[derive(Debug, Default)]
pub struct GroupTracker {
    open: Option<(Gtid, bool)>,
    file: Option<String>,
}

impl GroupTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The open group's GTID.
    pub fn open_gtid(&self) -> Option<Gtid> {
        self.open.map(|(g, _)| g)
    }

    /// The binlog file named by the last ROTATE.
    pub fn current_file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// Forgets an open group (after a reconnect, the master re-sends it from its GTID).
    pub fn reset(&mut self) {
        self.open = None;
    }

    /// Classifies the next event and advances the state. On error the state is unchanged.
    pub fn classify(&mut self, event: &[u8], checksum: Checksum) -> Result<EventRole, TxnError> {
        let header = check_event(event)?;
        let t = header.event_type;
        if t.is_metadata() {
            if t == EventType::Rotate {
                let r = Rotate::decode_body(event_body(event, checksum)?)?;
                self.file = Some(r.file);
            }
            return Ok(EventRole::Metadata(t));
        }
        if t == EventType::Gtid {
            let g = GtidEvent::decode_body(event_body(event, checksum)?)?;
            let gtid = g.gtid(header.server_id);
            if let Some((open, _)) = self.open {
                return Err(TxnError::GtidInsideGroup { open, next: gtid });
            }
            self.open = Some((gtid, g.is_standalone()));
            return Ok(EventRole::Begin(g, gtid));
        }
        let Some((_, standalone)) = self.open else {
            return Err(TxnError::EventOutsideGroup {
                event_type: t.as_u8(),
                log_pos: header.log_pos,
            });
        };
        let end = if standalone {
            match t {
                EventType::Query | EventType::QueryCompressed | EventType::Xid => {
                    Some(TxnEnd::Standalone)
                }
                _ if t.is_rows() && ends_statement(event, checksum)? => Some(TxnEnd::Standalone),
                _ => None,
            }
        } else {
            match t {
                EventType::Xid => Some(TxnEnd::Xid),
                EventType::XaPrepare => Some(TxnEnd::XaPrepare),
                EventType::Query => {
                    let q = QueryEvent::decode_body(event_body(event, checksum)?)?;
                    q.ends_group().then_some(TxnEnd::CommitQuery)
                }
                _ => None,
            }
        };
        Ok(match end {
            Some(e) => {
                self.open = None;
                EventRole::End(e)
            }
            None => EventRole::Member,
        })
    }
}

/// A rows event with STMT_END_F (flags after the 6-byte table id).
fn ends_statement(event: &[u8], checksum: Checksum) -> Result<bool, WireError> {
    let body = event_body(event, checksum)?;
    match body.get(6..8) {
        Some(f) => Ok(u16::from_le_bytes([f[0], f[1]]) & 1 != 0),
        None => Err(WireError::Truncated {
            what: "rows event flags",
            offset: HEADER_LEN + 6,
            needed: 2,
            available: body.len().saturating_sub(6),
        }),
    }
}

/// A SHA-256 content digest of a transaction (see the module docs for exactly what is hashed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TxnDigest(pub [u8; 32]);

impl std::fmt::Display for TxnDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Incremental form of the digest, fed event by event (for transactions streamed in chunks).
#[derive(Clone)]
pub struct TxnDigester {
    h: Sha256,
    checksum: Checksum,
}

impl std::fmt::Debug for TxnDigester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TxnDigester")
    }
}

const DIGEST_TAG: &[u8] = b"quorumsql-txn-digest-v1";

impl TxnDigester {
    pub fn new(checksum: Checksum) -> Self {
        let mut h = Sha256::new();
        h.update(DIGEST_TAG);
        TxnDigester { h, checksum }
    }

    pub fn update(&mut self, event: &[u8]) -> Result<(), WireError> {
        let header: EventHeader = check_event(event)?;
        let t = header.event_type;
        if t == EventType::AnnotateRows {
            return Ok(());
        }
        let body = event_body(event, self.checksum)?;
        let mut canon: Vec<u8> = Vec::new();
        let canonical: &[u8] = match t {
            EventType::Gtid => {
                let g = GtidEvent::decode_body(body)?;
                canon.extend_from_slice(&g.seq.to_le_bytes());
                canon.extend_from_slice(&g.domain.to_le_bytes());
                let stable = gtid_flags::STANDALONE
                    | gtid_flags::TRANSACTIONAL
                    | gtid_flags::DDL
                    | gtid_flags::PREPARED_XA
                    | gtid_flags::COMPLETED_XA;
                canon.push(g.flags2 & stable);
                if let Some(xa) = &g.xa {
                    canon.extend_from_slice(&xa.format_id.to_le_bytes());
                    canon.push(xa.gtrid.len() as u8);
                    canon.extend_from_slice(&xa.gtrid);
                    canon.push(xa.bqual.len() as u8);
                    canon.extend_from_slice(&xa.bqual);
                }
                &canon
            }
            EventType::Xid => &[],
            EventType::Query => {
                let q = QueryEvent::decode_body(body)?;
                if q.is_commit() {
                    // A replica may end a non-transactional group with XID instead of a COMMIT
                    // query (its gtid_slave_pos update is transactional): same content.
                    self.h.update([EventType::Xid.as_u8()]);
                    self.h.update(header.server_id.to_le_bytes());
                    self.h.update(0u64.to_le_bytes());
                    return Ok(());
                }
                canon.extend_from_slice(&q.error_code.to_le_bytes());
                canon.extend_from_slice(&(q.db.len() as u64).to_le_bytes());
                canon.extend_from_slice(q.db);
                canon.extend_from_slice(q.query);
                &canon
            }
            _ if t == EventType::TableMap || t.is_rows() => {
                body.get(6..).ok_or(WireError::Truncated {
                    what: "table id of a table-map/rows event",
                    offset: HEADER_LEN,
                    needed: 6,
                    available: body.len(),
                })?
            }
            _ => body,
        };
        self.h.update([t.as_u8()]);
        self.h.update(header.server_id.to_le_bytes());
        self.h.update((canonical.len() as u64).to_le_bytes());
        self.h.update(canonical);
        Ok(())
    }

    pub fn finish(self) -> TxnDigest {
        TxnDigest(self.h.finalize().into())
    }
}

/// One complete group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub gtid: Gtid,
    /// The GTID event's flags2 (see [`gtid_flags`]).
    pub flags2: u8,
    /// Every event of the group in stream order, GTID event first (metadata excluded).
    pub events: Vec<Bytes>,
    pub end: TxnEnd,
    /// `log_pos` of the last event: what a semi-sync ACK names.
    pub end_log_pos: u32,
    /// The binlog file named by the last ROTATE before the end, if any.
    pub file: Option<String>,
}

impl Transaction {
    /// Total bytes of the group's events.
    pub fn size_bytes(&self) -> usize {
        self.events.iter().map(Bytes::len).sum()
    }

    /// Where the group ends in the binlog it was read from (origin coordinates).
    pub fn end_pos(&self) -> Option<BinlogPos> {
        self.file.as_ref().map(|f| BinlogPos {
            file: f.clone(),
            offset: u64::from(self.end_log_pos),
        })
    }

    pub fn digest(&self, checksum: Checksum) -> Result<TxnDigest, WireError> {
        let mut d = TxnDigester::new(checksum);
        for e in &self.events {
            d.update(e)?;
        }
        Ok(d.finish())
    }
}

/// What feeding one event produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembled {
    /// The event joined the open group.
    Pending,
    Transaction(Transaction),
    Metadata {
        header: EventHeader,
        event: Bytes,
    },
}

/// Buffers events into whole [`Transaction`]s, at most `max_txn_bytes` each.
#[derive(Debug)]
pub struct TxnAssembler {
    tracker: GroupTracker,
    checksum: Checksum,
    max_txn_bytes: usize,
    open: Option<(Gtid, u8, Vec<Bytes>, usize)>,
}

impl TxnAssembler {
    pub fn new(checksum: Checksum, max_txn_bytes: usize) -> Self {
        TxnAssembler {
            tracker: GroupTracker::new(),
            checksum,
            max_txn_bytes,
            open: None,
        }
    }

    pub fn open_gtid(&self) -> Option<Gtid> {
        self.tracker.open_gtid()
    }

    pub fn current_file(&self) -> Option<&str> {
        self.tracker.current_file()
    }

    /// Drops a partially received group (after a reconnect).
    pub fn reset(&mut self) {
        self.tracker.reset();
        self.open = None;
    }

    pub fn push(&mut self, event: Bytes) -> Result<Assembled, TxnError> {
        if let Some((gtid, _, _, bytes)) = &self.open {
            let total = bytes + event.len();
            if total > self.max_txn_bytes {
                return Err(TxnError::TooLarge {
                    gtid: *gtid,
                    bytes: total,
                    max: self.max_txn_bytes,
                });
            }
        }
        match self.tracker.classify(&event, self.checksum)? {
            EventRole::Metadata(_) => Ok(Assembled::Metadata {
                header: EventHeader::decode(&event)?,
                event,
            }),
            EventRole::Begin(g, gtid) => {
                let n = event.len();
                self.open = Some((gtid, g.flags2, vec![event], n));
                Ok(Assembled::Pending)
            }
            EventRole::Member => {
                if let Some((_, _, events, bytes)) = &mut self.open {
                    *bytes += event.len();
                    events.push(event);
                }
                Ok(Assembled::Pending)
            }
            EventRole::End(end) => {
                let end_log_pos = EventHeader::decode(&event)?.log_pos;
                let Some((gtid, flags2, mut events, _)) = self.open.take() else {
                    // The tracker only reports End for an open group.
                    return Err(TxnError::EventOutsideGroup {
                        event_type: event.get(4).copied().unwrap_or(0),
                        log_pos: end_log_pos,
                    });
                };
                events.push(event);
                Ok(Assembled::Transaction(Transaction {
                    gtid,
                    flags2,
                    events,
                    end,
                    end_log_pos,
                    file: self.tracker.current_file().map(str::to_owned),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{build_event, build_fake_rotate, build_heartbeat, gtid_flags};
    use bytes::BytesMut;

    const SUM: Checksum = Checksum::Crc32;

    fn gtid(seq: u64, flags2: u8, server: u32) -> Bytes {
        GtidEvent::new(0, seq, flags2).build_event(server, 1, 100, 8)
    }
    fn ev(t: EventType, body: &[u8], log_pos: u32) -> Bytes {
        build_event(t, 1, 1, log_pos, 0, body, SUM)
    }
    fn query(text: &str, log_pos: u32) -> Bytes {
        let mut b = BytesMut::new();
        QueryEvent {
            thread_id: 1,
            exec_time: 0,
            error_code: 0,
            status_vars: &[],
            db: b"t",
            query: text.as_bytes(),
        }
        .encode_body(&mut b);
        ev(EventType::Query, &b, log_pos)
    }
    fn rows(table_id: u8, stmt_end: bool, log_pos: u32) -> Bytes {
        let body = [table_id, 0, 0, 0, 0, 0, u8::from(stmt_end), 0, 1, 2, 3];
        ev(EventType::WriteRowsV1, &body, log_pos)
    }

    #[test]
    fn assembles_xid_commit_and_standalone_groups() {
        let mut a = TxnAssembler::new(SUM, 1 << 20);
        let rot = build_fake_rotate(9, "bin.000002", 4, SUM);
        assert!(matches!(
            a.push(rot).expect("ok"),
            Assembled::Metadata { .. }
        ));
        assert_eq!(a.push(gtid(1, 0x0c, 1)).expect("ok"), Assembled::Pending);
        a.push(ev(EventType::TableMap, &[5, 0, 0, 0, 0, 0, 0, 0], 0))
            .expect("ok");
        a.push(rows(5, true, 0)).expect("ok");
        // A heartbeat between events is metadata and does not break the group.
        let hb = a
            .push(build_heartbeat(9, "bin.000002", 50, SUM))
            .expect("ok");
        assert!(matches!(hb, Assembled::Metadata { .. }));
        let Assembled::Transaction(t) = a
            .push(ev(EventType::Xid, &7u64.to_le_bytes(), 603))
            .expect("ok")
        else {
            panic!("XID must end the group")
        };
        assert_eq!(t.gtid, Gtid::new(0, 1, 1));
        assert_eq!(
            (t.events.len(), t.end, t.end_log_pos),
            (4, TxnEnd::Xid, 603)
        );
        assert_eq!(
            t.end_pos().expect("file known").to_string(),
            "bin.000002:603"
        );

        a.push(gtid(2, 0x08, 1)).expect("ok");
        a.push(query("BEGIN", 0)).expect("ok");
        a.push(rows(6, true, 0)).expect("ok");
        let Assembled::Transaction(t) = a.push(query("COMMIT", 700)).expect("ok") else {
            panic!("COMMIT must end the group")
        };
        assert_eq!(t.end, TxnEnd::CommitQuery);

        a.push(gtid(3, gtid_flags::STANDALONE | gtid_flags::DDL, 1))
            .expect("ok");
        let Assembled::Transaction(t) = a.push(query("CREATE TABLE x (id INT)", 800)).expect("ok")
        else {
            panic!("a standalone group ends with its statement")
        };
        assert_eq!((t.end, t.events.len()), (TxnEnd::Standalone, 2));
    }

    #[test]
    fn enforces_group_rules_and_cap() {
        let mut a = TxnAssembler::new(SUM, 1 << 20);
        assert!(matches!(
            a.push(rows(1, true, 0)),
            Err(TxnError::EventOutsideGroup {
                event_type: 0x17,
                ..
            })
        ));
        a.push(gtid(1, 0x0c, 1)).expect("ok");
        assert!(matches!(
            a.push(gtid(2, 0x0c, 1)),
            Err(TxnError::GtidInsideGroup { .. })
        ));
        a.reset();
        a.push(gtid(2, 0x0c, 1))
            .expect("after reset a new group may start");

        let mut small = TxnAssembler::new(SUM, 100);
        small.push(gtid(1, 0x0c, 1)).expect("ok");
        assert!(matches!(
            small.push(ev(EventType::WriteRowsV1, &[0u8; 80], 0)),
            Err(TxnError::TooLarge { .. })
        ));
    }

    #[test]
    fn digest_ignores_server_local_fields_but_not_content() {
        let build = |table_id: u8, xid: u64, log_pos: u32, value: u8| {
            let mut d = TxnDigester::new(SUM);
            let mut g = GtidEvent::new(0, 5, 0x0c | gtid_flags::ALLOW_PARALLEL);
            g.flags2 |= gtid_flags::GROUP_COMMIT_ID;
            g.commit_id = Some(u64::from(table_id) * 1000);
            d.update(&g.build_event(1, 9, log_pos, 8)).expect("ok");
            let ann = ev(EventType::AnnotateRows, b"INSERT ...", log_pos);
            if table_id & 1 == 0 {
                d.update(&ann).expect("ok");
            }
            d.update(&ev(
                EventType::TableMap,
                &[table_id, 0, 0, 0, 0, 0, 1, 0, 9],
                log_pos,
            ))
            .expect("ok");
            let body = [table_id, 0, 0, 0, 0, 0, 1, 0, value];
            d.update(&ev(EventType::WriteRowsV1, &body, log_pos + 1))
                .expect("ok");
            d.update(&ev(EventType::Xid, &xid.to_le_bytes(), log_pos + 2))
                .expect("ok");
            d.finish()
        };
        assert_eq!(build(1, 10, 100, 7), build(2, 99, 5000, 7));
        assert_ne!(build(1, 10, 100, 7), build(1, 10, 100, 8));
    }

    #[test]
    fn digest_treats_commit_query_and_xid_alike() {
        let digest = |end: Bytes| {
            let mut d = TxnDigester::new(SUM);
            d.update(&gtid(4, 0x08, 1)).expect("ok");
            d.update(&rows(3, true, 0)).expect("ok");
            d.update(&end).expect("ok");
            d.finish()
        };
        let xid = ev(EventType::Xid, &9u64.to_le_bytes(), 0);
        assert_eq!(digest(query("COMMIT", 0)), digest(xid));
        assert_ne!(digest(query("ROLLBACK", 0)), digest(query("COMMIT", 0)));
    }
}
