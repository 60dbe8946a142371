//! Cuts one transaction's event bytes, which arrive in pieces (issue #2: a transaction larger than
//! serve's read size never sits whole in memory), into whole binlog events, and checks as they
//! pass that they form exactly one group for the transaction's GTID.
//!
//! Piece boundaries fall anywhere, also inside an event: the incomplete tail of an event is
//! carried to the next piece. Memory is therefore bounded by one piece plus the largest single
//! event (a row event can be large: one row of a LONGBLOB is one event, up to
//! `max_allowed_packet`, at most 1 GiB), never by the transaction.
//!
//! The group's end event (XID, COMMIT, or the DDL of a standalone group) is handed out only with
//! the piece that ends the transaction, and only if nothing follows it: a replica never sees a
//! transaction end before all of it was read from the source.

use bytes::{Bytes, BytesMut};
use quorumsql_wire::event::{check_event, verify_checksum, Checksum, EventType, HEADER_LEN};
use quorumsql_wire::txn::{EventRole, GroupTracker};
use quorumsql_wire::Gtid;

/// No MariaDB event is larger than `max_allowed_packet`'s ceiling (1 GiB); a size field above it
/// is corruption, and carrying bytes for it would grow memory without bound.
pub const MAX_EVENT_BYTES: usize = 1 << 30;

/// Why a transaction's bytes are not one well-formed event group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("piece at byte {got} of {gtid}, expected byte {expected}")]
    OutOfOrder { gtid: Gtid, expected: u64, got: u64 },
    #[error("events after the end of the group (at byte {at})")]
    AfterEnd { at: u64 },
    #[error("event at byte {at} declares {size} bytes (an event has 19 to {MAX_EVENT_BYTES})")]
    BadSize { at: u64, size: usize },
    #[error("event at byte {at}: {detail}")]
    Event { at: u64, detail: String },
    #[error("metadata event {event_type:#04x} inside the group (at byte {at})")]
    Metadata { at: u64, event_type: u8 },
    #[error("GTID event in the middle of the group (at byte {at})")]
    GtidInside { at: u64 },
    #[error("the group does not start with a GTID event")]
    NoGtidFirst,
    #[error("its GTID event says {found}")]
    WrongGtid { found: Gtid },
    #[error("the transaction ends inside an event ({bytes} bytes of it)")]
    EndsInsideEvent { bytes: usize },
    #[error("the group has no end event (XID, COMMIT or the DDL of a standalone group)")]
    NoEnd,
}

/// One whole event cut from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEvent {
    pub bytes: Bytes,
    /// The group's end event (always the last one handed out for the transaction).
    pub end: bool,
}

/// Splits one transaction, fed piece by piece in order.
#[derive(Debug)]
pub struct GroupSplitter {
    gtid: Gtid,
    annotate_rows: bool,
    tracker: GroupTracker,
    /// The start of an event whose rest is in a later piece.
    carry: BytesMut,
    /// Bytes of the transaction received so far: where the next piece must start.
    received: u64,
    started: bool,
    /// The end event, once seen; handed out only with the transaction's last piece.
    end: Option<Bytes>,
    ended: bool,
}

impl GroupSplitter {
    /// A splitter for `gtid`'s group; ANNOTATE_ROWS events are dropped unless `annotate_rows`
    /// (the replica's dump flag).
    pub fn new(gtid: Gtid, annotate_rows: bool) -> Self {
        GroupSplitter {
            gtid,
            annotate_rows,
            tracker: GroupTracker::new(),
            carry: BytesMut::new(),
            received: 0,
            started: false,
            end: None,
            ended: false,
        }
    }

    pub fn gtid(&self) -> Gtid {
        self.gtid
    }

    /// Where the next piece must start in the transaction.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes held back for an event that continues in the next piece.
    pub fn carried(&self) -> usize {
        self.carry.len()
    }

    /// Feeds the piece starting at byte `offset` of the transaction; `last` says it ends the
    /// transaction. Returns the events it completes, in order; the end event comes last, with
    /// the last piece. After an error the splitter must be dropped.
    pub fn push(
        &mut self,
        offset: u64,
        piece: Bytes,
        last: bool,
    ) -> Result<Vec<GroupEvent>, GroupError> {
        if offset != self.received {
            return Err(GroupError::OutOfOrder {
                gtid: self.gtid,
                expected: self.received,
                got: offset,
            });
        }
        let start = self.received - self.carry.len() as u64;
        self.received += piece.len() as u64;
        let mut out = Vec::new();
        if self.ended && !piece.is_empty() {
            return Err(GroupError::AfterEnd { at: offset });
        }
        // The stream of this piece: the carried start of an event, then the piece. Only the
        // first event can straddle; the rest are zero-copy slices of the piece.
        let mut rest = piece;
        let mut at = start;
        if !self.carry.is_empty() {
            match self.complete_carry(&mut rest)? {
                Some(ev) => {
                    let len = ev.len() as u64;
                    self.take(ev, at, rest.is_empty(), &mut out)?;
                    at += len;
                }
                None => return self.finish(out, last),
            }
        }
        while !rest.is_empty() {
            if self.ended {
                return Err(GroupError::AfterEnd { at });
            }
            let Some(size) = declared_size(&rest, at)? else {
                self.carry.extend_from_slice(&rest);
                break;
            };
            if size > rest.len() {
                self.carry.extend_from_slice(&rest);
                break;
            }
            let ev = rest.split_to(size);
            self.take(ev, at, rest.is_empty(), &mut out)?;
            at += size as u64;
        }
        self.finish(out, last)
    }

    /// Adds bytes from `rest` to the carried event; the whole event once it is complete.
    fn complete_carry(&mut self, rest: &mut Bytes) -> Result<Option<Bytes>, GroupError> {
        let at = self.received - rest.len() as u64 - self.carry.len() as u64;
        if self.carry.len() < HEADER_LEN {
            let need = (HEADER_LEN - self.carry.len()).min(rest.len());
            self.carry.extend_from_slice(&rest.split_to(need));
        }
        let Some(size) = declared_size(&self.carry, at)? else {
            return Ok(None);
        };
        let need = (size - self.carry.len()).min(rest.len());
        self.carry.extend_from_slice(&rest.split_to(need));
        if self.carry.len() < size {
            return Ok(None);
        }
        // Hand the buffer over and start a fresh one: a large event's allocation is not kept.
        Ok(Some(std::mem::take(&mut self.carry).freeze()))
    }

    /// Checks one whole event at byte `at` and queues it (or holds it back if it ends the group).
    fn take(
        &mut self,
        ev: Bytes,
        at: u64,
        piece_done: bool,
        out: &mut Vec<GroupEvent>,
    ) -> Result<(), GroupError> {
        let bad = |e: quorumsql_wire::WireError| GroupError::Event {
            at,
            detail: e.to_string(),
        };
        let h = check_event(&ev).map_err(bad)?;
        verify_checksum(&ev).map_err(bad)?;
        let role = self
            .tracker
            .classify(&ev, Checksum::Crc32)
            .map_err(|e| GroupError::Event {
                at,
                detail: e.to_string(),
            })?;
        match role {
            EventRole::Metadata(t) => {
                return Err(GroupError::Metadata {
                    at,
                    event_type: t.as_u8(),
                })
            }
            EventRole::Begin(_, g) => {
                if self.started {
                    return Err(GroupError::GtidInside { at });
                }
                if g != self.gtid {
                    return Err(GroupError::WrongGtid { found: g });
                }
                self.started = true;
            }
            EventRole::Member => {
                if !self.started {
                    return Err(GroupError::NoGtidFirst);
                }
            }
            EventRole::End(_) => {
                if !self.started {
                    return Err(GroupError::NoGtidFirst);
                }
                if !piece_done {
                    return Err(GroupError::AfterEnd {
                        at: at + ev.len() as u64,
                    });
                }
                self.ended = true;
                self.end = Some(ev);
                return Ok(());
            }
        }
        if h.event_type == EventType::AnnotateRows && !self.annotate_rows {
            return Ok(());
        }
        out.push(GroupEvent {
            bytes: ev,
            end: false,
        });
        Ok(())
    }

    fn finish(
        &mut self,
        mut out: Vec<GroupEvent>,
        last: bool,
    ) -> Result<Vec<GroupEvent>, GroupError> {
        if !last {
            return Ok(out);
        }
        if !self.carry.is_empty() {
            return Err(GroupError::EndsInsideEvent {
                bytes: self.carry.len(),
            });
        }
        match self.end.take() {
            Some(bytes) => {
                out.push(GroupEvent { bytes, end: true });
                Ok(out)
            }
            None if !self.started => Err(GroupError::NoGtidFirst),
            None => Err(GroupError::NoEnd),
        }
    }
}

/// The size field of the event starting `buf`, once its header is there.
fn declared_size(buf: &[u8], at: u64) -> Result<Option<usize>, GroupError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let size = u32::from_le_bytes([buf[9], buf[10], buf[11], buf[12]]) as usize;
    if !(HEADER_LEN..=MAX_EVENT_BYTES).contains(&size) {
        return Err(GroupError::BadSize { at, size });
    }
    Ok(Some(size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumsql_wire::event::{build_event, GtidEvent};

    /// GTID, ANNOTATE_ROWS, a 5000-byte WRITE_ROWS-like member (a QUERY "INSERT"), XID.
    fn group(seq: u64) -> (Bytes, Vec<Bytes>) {
        let events = vec![
            GtidEvent::new(0, seq, 0x0c).build_event(1, 1, 100, 8),
            build_event(
                EventType::AnnotateRows,
                1,
                1,
                150,
                0,
                b"INSERT",
                Checksum::Crc32,
            ),
            build_event(
                EventType::Query,
                1,
                1,
                5200,
                0,
                &query_body(&"i".repeat(5000)),
                Checksum::Crc32,
            ),
            build_event(
                EventType::Xid,
                1,
                1,
                5300,
                0,
                &7u64.to_le_bytes(),
                Checksum::Crc32,
            ),
        ];
        let mut all = BytesMut::new();
        for e in &events {
            all.extend_from_slice(e);
        }
        (all.freeze(), events)
    }

    /// A QUERY event body: thread id, exec time, db len 0, error 0, no status vars, "" db, text.
    fn query_body(text: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.push(0);
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.push(0);
        b.extend_from_slice(text.as_bytes());
        b
    }

    fn feed(bytes: &Bytes, cuts: &[usize], annotate: bool) -> Result<Vec<GroupEvent>, GroupError> {
        let mut s = GroupSplitter::new(Gtid::new(0, 1, 5), annotate);
        let mut out = Vec::new();
        let mut from = 0;
        for (i, &to) in cuts.iter().chain([&bytes.len()]).enumerate() {
            let last = i == cuts.len();
            out.extend(s.push(from as u64, bytes.slice(from..to), last)?);
            assert!(s.carried() < 5300, "carry holds at most one event");
            from = to;
        }
        Ok(out)
    }

    #[test]
    fn every_cut_yields_the_same_events_with_the_end_last() {
        let (bytes, events) = group(5);
        let whole = feed(&bytes, &[], true).unwrap();
        assert_eq!(
            whole.iter().map(|e| e.bytes.clone()).collect::<Vec<_>>(),
            events
        );
        assert_eq!(
            whole.iter().map(|e| e.end).collect::<Vec<_>>(),
            vec![false, false, false, true]
        );
        // One cut anywhere, including inside headers and exactly on event boundaries.
        for cut in 1..bytes.len() {
            let got = feed(&bytes, &[cut], true).unwrap();
            assert_eq!(got, whole, "cut at {cut}");
        }
        // Many tiny pieces: every event straddles several.
        let cuts: Vec<usize> = (1..bytes.len()).step_by(7).collect();
        assert_eq!(feed(&bytes, &cuts, true).unwrap(), whole);
        // Without the dump flag ANNOTATE_ROWS is dropped, wherever the cuts are.
        let no_annotate = feed(&bytes, &cuts, false).unwrap();
        assert_eq!(no_annotate.len(), 3);
        assert!(no_annotate
            .iter()
            .all(|e| check_event(&e.bytes).unwrap().event_type != EventType::AnnotateRows));
    }

    #[test]
    fn the_end_event_waits_for_the_last_piece() {
        let (bytes, events) = group(5);
        let xid_at = bytes.len() - events[3].len();
        let mut s = GroupSplitter::new(Gtid::new(0, 1, 5), true);
        // The first piece holds everything: the XID is complete but the source has not said
        // the transaction ends here, so it is held back.
        let got = s.push(0, bytes.clone(), false).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|e| !e.end));
        // The (empty) last piece releases it.
        let got = s.push(bytes.len() as u64, Bytes::new(), true).unwrap();
        assert_eq!(
            got,
            vec![GroupEvent {
                bytes: events[3].clone(),
                end: true
            }]
        );
        // Bytes after the end event, in the same piece or the next, are refused.
        let mut two = BytesMut::from(&bytes[..]);
        two.extend_from_slice(&events[2]);
        assert!(matches!(
            feed(&two.freeze(), &[], true),
            Err(GroupError::AfterEnd { .. })
        ));
        let mut s = GroupSplitter::new(Gtid::new(0, 1, 5), true);
        s.push(0, bytes.clone(), false).unwrap();
        assert!(matches!(
            s.push(bytes.len() as u64, events[2].clone(), true),
            Err(GroupError::AfterEnd { .. })
        ));
        let _ = xid_at;
    }

    #[test]
    fn broken_groups_and_out_of_order_pieces_are_refused() {
        let (bytes, events) = group(5);
        // Ends inside an event.
        assert!(matches!(
            feed(&bytes.slice(..bytes.len() - 3), &[100], true),
            Err(GroupError::EndsInsideEvent { .. })
        ));
        // No end event.
        let no_xid = bytes.slice(..bytes.len() - events[3].len());
        assert_eq!(feed(&no_xid, &[50], true), Err(GroupError::NoEnd));
        // Another transaction's group.
        let (other, _) = group(6);
        assert!(matches!(
            feed(&other, &[10], true),
            Err(GroupError::WrongGtid { .. })
        ));
        // A flipped bit in a member straddling two pieces fails its CRC.
        let mut bad = BytesMut::from(&bytes[..]);
        bad[events[0].len() + events[1].len() + 100] ^= 1;
        assert!(matches!(
            feed(&bad.freeze(), &[events[0].len() + 50], true),
            Err(GroupError::Event { .. })
        ));
        // A size field beyond any real event.
        let mut huge = BytesMut::from(&bytes[..]);
        huge[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            feed(&huge.freeze(), &[5], true),
            Err(GroupError::BadSize { .. })
        ));
        // A piece that does not continue where the previous one ended.
        let mut s = GroupSplitter::new(Gtid::new(0, 1, 5), true);
        s.push(0, bytes.slice(..10), false).unwrap();
        assert!(matches!(
            s.push(11, bytes.slice(11..), true),
            Err(GroupError::OutOfOrder { .. })
        ));
    }
}
