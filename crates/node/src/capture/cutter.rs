//! Cuts the dump stream into transactions, streaming: events are checked (size, CRC32) and
//! appended to the open transaction, which is handed on in parts of at most `chunk_size` bytes as
//! soon as it outgrows that size, so memory stays bounded by the chunk size rather than by the
//! transaction (DESIGN §2, design review 25). The binlog file name is tracked from ROTATE events,
//! because a transaction's end position (what capture ACKs) is only meaningful with its file.
//!
//! Chunk boundaries are a pure function of the transaction's bytes and the chunk size, so a
//! transaction re-read after a reconnect is cut into exactly the same parts (the dedupe step in
//! [`super::dedupe`] relies on that).

use bytes::{Bytes, BytesMut};
use quorumsql_wire::event::{verify_checksum, Checksum, EventType};
use quorumsql_wire::txn::{EventRole, GroupTracker, TxnDigester, TxnError};
use quorumsql_wire::{BinlogPos, Gtid};

use super::sink::CapturedTxn;

/// Why the stream could not be cut into transactions. The master sent something that breaks
/// MariaDB's own replica rules, so capture stops rather than guess.
#[derive(Debug, thiserror::Error)]
pub enum CutError {
    #[error("bad binlog event from the master (binlog file {file:?}): {source}")]
    BadEvent {
        file: Option<String>,
        source: quorumsql_wire::error::WireError,
    },
    #[error("binlog stream breaks the group rules (binlog file {file:?}): {source}")]
    Group {
        file: Option<String>,
        source: TxnError,
    },
    #[error("transaction {gtid} ended before any ROTATE named its binlog file")]
    NoFile { gtid: Gtid },
}

/// What one event was, for the caller's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamEvent {
    pub event_type: EventType,
    pub log_pos: u32,
}

struct OpenTxn {
    gtid: Gtid,
    digester: TxnDigester,
    /// Bytes not yet handed on.
    pending: BytesMut,
    next_chunk: u32,
    /// `log_pos` of the last event added.
    end: u32,
}

/// The cutter of one capture run (it survives reconnects; see [`Cutter::discard_open`]).
pub(crate) struct Cutter {
    chunk_size: usize,
    tracker: GroupTracker,
    open: Option<OpenTxn>,
}

impl Cutter {
    pub fn new(chunk_size: usize) -> Self {
        Cutter {
            chunk_size: chunk_size.max(1),
            tracker: GroupTracker::new(),
            open: None,
        }
    }

    /// Forgets a partially received transaction (the connection broke; it will be re-read).
    pub fn discard_open(&mut self) -> Option<Gtid> {
        self.tracker.reset();
        self.open.take().map(|o| o.gtid)
    }

    /// Feeds one event (header, body and CRC32). Returns the parts that became ready, in order.
    pub fn push(&mut self, event: &[u8]) -> Result<(StreamEvent, Vec<CapturedTxn>), CutError> {
        let file = |t: &GroupTracker| t.current_file().map(str::to_owned);
        verify_checksum(event).map_err(|source| CutError::BadEvent {
            file: file(&self.tracker),
            source,
        })?;
        let header = quorumsql_wire::event::EventHeader::decode(event).map_err(|source| {
            CutError::BadEvent {
                file: file(&self.tracker),
                source,
            }
        })?;
        let ev = StreamEvent {
            event_type: header.event_type,
            log_pos: header.log_pos,
        };
        let role = self
            .tracker
            .classify(event, Checksum::Crc32)
            .map_err(|source| CutError::Group {
                file: self.tracker.current_file().map(str::to_owned),
                source,
            })?;
        let mut out = Vec::new();
        let complete = match role {
            // Heartbeats, ROTATEs, ... are never part of a transaction.
            EventRole::Metadata(_) => return Ok((ev, out)),
            EventRole::Begin(_, gtid) => {
                self.open = Some(OpenTxn {
                    gtid,
                    digester: TxnDigester::new(Checksum::Crc32),
                    pending: BytesMut::new(),
                    next_chunk: 0,
                    end: header.log_pos,
                });
                false
            }
            EventRole::Member => false,
            EventRole::End(_) => true,
        };
        let Some(open) = self.open.as_mut() else {
            // The tracker reports Member/End only for an open group, which we opened at Begin.
            return Err(CutError::Group {
                file: file(&self.tracker),
                source: TxnError::EventOutsideGroup {
                    event_type: header.event_type.as_u8(),
                    log_pos: header.log_pos,
                },
            });
        };
        open.digester
            .update(event)
            .map_err(|source| CutError::BadEvent {
                file: self.tracker.current_file().map(str::to_owned),
                source,
            })?;
        open.pending.extend_from_slice(event);
        open.end = header.log_pos;
        self.flush(complete, &mut out)?;
        Ok((ev, out))
    }

    /// Hands on full chunks; with `complete`, also the final part, and closes the transaction.
    fn flush(&mut self, complete: bool, out: &mut Vec<CapturedTxn>) -> Result<(), CutError> {
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        let gtid = open.gtid;
        let origin = || -> Result<BinlogPos, CutError> {
            Ok(BinlogPos {
                file: self
                    .tracker
                    .current_file()
                    .ok_or(CutError::NoFile { gtid })?
                    .to_owned(),
                offset: u64::from(open.end),
            })
        };
        // Strictly larger: the final part always has bytes, and the split points depend only
        // on the transaction's bytes.
        while open.pending.len() > self.chunk_size {
            let events: Bytes = open.pending.split_to(self.chunk_size).freeze();
            out.push(CapturedTxn {
                gtid,
                origin: origin()?,
                digest: None,
                chunk_index: open.next_chunk,
                last: false,
                events,
            });
            open.next_chunk += 1;
        }
        if complete {
            let part = CapturedTxn {
                gtid,
                origin: origin()?,
                digest: Some(open.digester.clone().finish()),
                chunk_index: open.next_chunk,
                last: true,
                events: open.pending.split().freeze(),
            };
            out.push(part);
            self.open = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumsql_wire::event::{build_event, build_fake_rotate, GtidEvent};

    fn gtid_ev(seq: u64, flags2: u8, pos: u32) -> Bytes {
        GtidEvent::new(0, seq, flags2).build_event(1, 0, pos, 0x08)
    }

    fn query_ev(text: &str, pos: u32) -> Bytes {
        let mut body = Vec::new();
        body.extend_from_slice(&7u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.push(0); // db_len
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.push(0);
        body.extend_from_slice(text.as_bytes());
        build_event(EventType::Query, 1, 0, pos, 0, &body, Checksum::Crc32)
    }

    fn rows_ev(len: usize, pos: u32) -> Bytes {
        build_event(
            EventType::WriteRowsV1,
            1,
            0,
            pos,
            0,
            &vec![0xAB; len],
            Checksum::Crc32,
        )
    }

    fn xid_ev(pos: u32) -> Bytes {
        build_event(
            EventType::Xid,
            1,
            0,
            pos,
            0,
            &9u64.to_le_bytes(),
            Checksum::Crc32,
        )
    }

    fn feed(c: &mut Cutter, evs: &[Bytes]) -> Vec<CapturedTxn> {
        let mut out = Vec::new();
        for e in evs {
            out.extend(c.push(e).expect("valid event").1);
        }
        out
    }

    #[test]
    fn cuts_whole_transactions_with_file_and_end_position() {
        let mut c = Cutter::new(1 << 20);
        let evs = [
            build_fake_rotate(1, "mysql-bin.000002", 4, Checksum::Crc32),
            gtid_ev(6, 0x0c, 427),
            rows_ev(20, 500),
            xid_ev(531),
            gtid_ev(7, 0x29, 573),
            query_ev("CREATE TABLE t.x (id INT)", 650),
            gtid_ev(8, 0x08, 700),
            rows_ev(10, 750),
            query_ev("COMMIT", 800),
        ];
        let parts = feed(&mut c, &evs);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(CapturedTxn::is_whole));
        assert_eq!(parts[0].gtid, Gtid::new(0, 1, 6));
        assert_eq!(parts[0].origin.to_string(), "mysql-bin.000002:531");
        let whole: Vec<u8> = [&evs[1][..], &evs[2][..], &evs[3][..]].concat();
        assert_eq!(parts[0].events[..], whole[..]);
        let mut d = TxnDigester::new(Checksum::Crc32);
        for e in &evs[1..4] {
            d.update(e).expect("digest");
        }
        assert_eq!(parts[0].digest, Some(d.finish()));
        assert_eq!(parts[1].origin.offset, 650);
        assert_eq!(parts[2].origin.offset, 800);
    }

    #[test]
    fn streams_a_large_transaction_in_identical_chunks() {
        let evs = [
            build_fake_rotate(1, "mysql-bin.000001", 4, Checksum::Crc32),
            gtid_ev(1, 0x0c, 100),
            rows_ev(1000, 1200),
            rows_ev(1000, 2300),
            rows_ev(3000, 5400),
            xid_ev(5431),
        ];
        let mut c = Cutter::new(700);
        let parts = feed(&mut c, &evs);
        assert!(parts.len() > 5);
        let total: usize = parts.iter().map(|p| p.events.len()).sum();
        let expect: usize = evs[1..].iter().map(|e| e.len()).sum();
        assert_eq!(total, expect);
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.chunk_index as usize, i);
            assert!(p.events.len() <= 700 && !p.events.is_empty());
            assert_eq!(p.last, i == parts.len() - 1);
            assert_eq!(p.digest.is_some(), p.last);
        }
        let again = feed(&mut Cutter::new(700), &evs);
        assert_eq!(parts, again, "re-reading cuts the same parts");
    }

    #[test]
    fn rejects_bad_crc_broken_groups_and_orphans() {
        let mut c = Cutter::new(1 << 20);
        let mut bad = gtid_ev(1, 0x0c, 100).to_vec();
        let n = bad.len();
        bad[n - 1] ^= 0xFF;
        assert!(matches!(c.push(&bad), Err(CutError::BadEvent { .. })));
        let mut c = Cutter::new(1 << 20);
        c.push(&build_fake_rotate(1, "f.000001", 4, Checksum::Crc32))
            .expect("rotate");
        c.push(&gtid_ev(1, 0x0c, 100)).expect("gtid");
        assert!(matches!(
            c.push(&gtid_ev(2, 0x0c, 200)),
            Err(CutError::Group { .. })
        ));
        let mut c = Cutter::new(1 << 20);
        assert!(matches!(c.push(&xid_ev(100)), Err(CutError::Group { .. })));
    }
}
