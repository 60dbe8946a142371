//! The RW relay's guard against acknowledging a commit the global binlog does not hold
//! (invariant 7; design-review 2).
//!
//! After a failed binlog rotation MariaDB 10.11 "turns logging off for the whole duration of the
//! server process" and from then on answers commits with OK while writing no binlog event and
//! waiting for no semi-sync ACK. So the master's proxy does not relay an OK that ends a write
//! transaction unless it knows the transaction is in the log:
//!
//! - mariadbd reports each commit's GTID in the OK packet (`session_track_system_variables`
//!   includes `last_gtid`; the relay sets `CLIENT_SESSION_TRACK` in the handshake response of
//!   clients that did not ask for it and strips the session state from their OKs again). An OK
//!   carrying `last_gtid` is relayed once the log accepted that GTID (verified on 10.11.19: the
//!   OK of an autocommit INSERT and of COMMIT carry `last_gtid=0-7-3`; with logging off they
//!   carry nothing).
//! - An OK that ends a transaction which wrote rows (affected rows > 0 in autocommit, or in any
//!   OK of an explicit transaction whose end clears `SERVER_STATUS_IN_TRANS`) but carries no
//!   GTID is what "logging off" looks like — and also what a write to a TEMPORARY table looks
//!   like. The relay holds it and asks whether the binlog is still open (`SHOW MASTER STATUS`
//!   has a row); this is rare in normal workloads.
//!
//! The decision is taken at the last packet of a reply (after `SERVER_MORE_RESULTS_EXISTS`
//! results), so multi-statements and `CALL` are covered; `COM_STMT_EXECUTE` answers with the
//! same OK packet. Only OK packets are parsed, in place, without allocation.
//!
//! Known gaps: a reply the relay cannot follow (`reply::UNKNOWN`: pipelined commands, cursors)
//! is not checked; an autocommit `INSERT … RETURNING` read by a client without
//! `CLIENT_DEPRECATE_EOF` ends with an EOF packet that carries neither affected rows nor the
//! GTID, so it is not checked either.

use quorumsql_wire::Gtid;

/// OK status flag: the packet carries session state changes.
pub(crate) const SESSION_STATE_CHANGED: u16 = 0x4000;
/// OK status flag: a transaction is open.
pub(crate) const IN_TRANS: u16 = 0x0001;
/// Session-state entry type of a tracked system variable.
const SESSION_TRACK_SYSTEM_VARIABLES: u8 = 0;

/// An OK packet longer than this is not read whole (its GTID is then unknown and the check
/// falls back to "is the binlog open"). Real OKs are a few dozen bytes.
pub(crate) const OK_MAX: usize = 1024;

/// What an OK packet says, as far as the commit check cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OkView {
    pub(crate) affected_rows: u64,
    pub(crate) status: u16,
    /// Offset of the status flags in the payload.
    pub(crate) status_at: usize,
    /// The whole packet was available (`head.len() == len`).
    pub(crate) complete: bool,
    /// Payload length without the session state (and without an empty info string): what a
    /// client that did not negotiate `CLIENT_SESSION_TRACK` must get.
    pub(crate) len_without_state: usize,
    pub(crate) last_gtid: Option<Gtid>,
}

/// A length-encoded integer at `b[at..]`: (value, bytes used).
fn lenenc(b: &[u8], at: usize) -> Option<(u64, usize)> {
    super::reply::lenenc(b.get(at..)?)
}

/// A length-encoded string at `b[at..]`: (the bytes, offset after it).
fn lenenc_str(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let (n, k) = lenenc(b, at)?;
    let start = at + k;
    let end = start.checked_add(usize::try_from(n).ok()?)?;
    Some((b.get(start..end)?, end))
}

/// Parses an OK packet (header byte 0x00, or 0xFE ending a result set with
/// `CLIENT_DEPRECATE_EOF`) whose first `head.len()` payload bytes are given; `len` is the whole
/// payload length. `None` if even the fixed fields are not there.
pub(crate) fn parse_ok(head: &[u8], len: usize) -> Option<OkView> {
    let (affected_rows, k1) = lenenc(head, 1)?;
    let (_insert_id, k2) = lenenc(head, 1 + k1)?;
    let at = 1 + k1 + k2;
    let s = head.get(at..at + 2)?;
    let status = u16::from_le_bytes([s[0], s[1]]);
    let after_warnings = at + 4;
    if head.len() < after_warnings {
        return None;
    }
    let complete = head.len() == len;
    let mut view = OkView {
        affected_rows,
        status,
        status_at: at,
        complete,
        len_without_state: len,
        last_gtid: None,
    };
    if !complete || head.len() == after_warnings {
        return Some(view);
    }
    let Some((info, info_end)) = lenenc_str(head, after_warnings) else {
        return Some(view);
    };
    if status & SESSION_STATE_CHANGED == 0 {
        return Some(view);
    }
    view.len_without_state = if info.is_empty() {
        after_warnings
    } else {
        info_end
    };
    let Some((state, _)) = lenenc_str(head, info_end) else {
        return Some(view);
    };
    // Entries: type (1), length-encoded entry data.
    let mut at = 0;
    while at < state.len() {
        let kind = state[at];
        let Some((entry, next)) = lenenc_str(state, at + 1) else {
            break;
        };
        at = next;
        if kind != SESSION_TRACK_SYSTEM_VARIABLES {
            continue;
        }
        let Some((name, after_name)) = lenenc_str(entry, 0) else {
            continue;
        };
        if name != b"last_gtid" {
            continue;
        }
        view.last_gtid = lenenc_str(entry, after_name)
            .and_then(|(v, _)| std::str::from_utf8(v).ok())
            .filter(|v| !v.is_empty())
            .and_then(|v| v.parse().ok());
    }
    Some(view)
}

/// What must be known before the reply's last packet may go to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitEvidence {
    /// A write transaction ended with this GTID: it must be in the log.
    Gtid(Gtid),
    /// A write transaction ended with no GTID (logging off, or a TEMPORARY table): the binlog
    /// must still be open.
    NoGtid,
}

/// The answer of [`super::RouteOracle::verify_commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitVerdict {
    /// Relay the OK.
    Logged,
    /// Definitely not in the log (the oracle raised the commit alarm): the client gets
    /// "outcome unknown" and the session closes.
    NotLogged(String),
    /// Could not find out in time: the client gets "outcome unknown" and the session closes,
    /// but nothing is proven against the master.
    Unknown(String),
}

/// Per-session bookkeeping of write transactions across OK packets (plain fields: a session's
/// server direction runs in one task).
#[derive(Debug, Default)]
pub(crate) struct CommitTracker {
    /// The open transaction changed rows so far.
    wrote: bool,
    /// The newest GTID reported in the reply being followed.
    gtid: Option<Gtid>,
    /// A write transaction ended in this reply without a GTID.
    unlogged_end: bool,
}

impl CommitTracker {
    /// Takes note of an OK packet of the reply being followed.
    pub(crate) fn on_ok(&mut self, ok: &OkView) {
        // An OK too long to read whole might hide its GTID: count it as a write, so that its
        // end is checked (the fallback check is sound, merely slower).
        let wrote_now = ok.affected_rows > 0 || !ok.complete;
        if let Some(g) = ok.last_gtid {
            // A commit happened (this statement's, or an implicit one).
            self.gtid = Some(g);
            self.wrote = false;
        }
        if ok.status & IN_TRANS != 0 {
            self.wrote |= wrote_now;
            return;
        }
        if ok.last_gtid.is_none() && (self.wrote || wrote_now) {
            self.unlogged_end = true;
        }
        self.wrote = false;
    }

    /// An OK packet of the reply that could not be parsed: it may have ended a write, with a
    /// GTID the relay cannot see, so the end of the reply is checked the slow way.
    pub(crate) fn on_unreadable_ok(&mut self) {
        self.unlogged_end = true;
        self.wrote = false;
    }

    /// At the last packet of a reply: what to verify before relaying it, if anything.
    pub(crate) fn take_check(&mut self) -> Option<CommitEvidence> {
        let gtid = self.gtid.take();
        let unlogged = std::mem::take(&mut self.unlogged_end);
        // Binary logging never turns itself back on: a GTID after a GTID-less end means the
        // binlog was open for both (the earlier one wrote only temporary tables); checking the
        // newest GTID covers the earlier ones, since the log holds them in binlog order.
        match (gtid, unlogged) {
            (Some(g), _) => Some(CommitEvidence::Gtid(g)),
            (None, true) => Some(CommitEvidence::NoGtid),
            (None, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OK payloads captured from mariadbd 10.11.19 with CLIENT_SESSION_TRACK and
    /// `session_track_system_variables=…,last_gtid`.
    const AUTOCOMMIT_INSERT: &[u8] =
        b"\x00\x01\x00\x02\x40\x00\x00\x00\x12\x00\x10\tlast_gtid\x050-7-3";
    const BEGIN: &[u8] = b"\x00\x00\x00\x03\x00\x00\x00";
    const INSERT_IN_TXN: &[u8] = b"\x00\x01\x00\x03\x00\x00\x00";
    const COMMIT: &[u8] = b"\x00\x00\x00\x02\x40\x00\x00\x00\x12\x00\x10\tlast_gtid\x050-7-4";
    const MULTI_ROW: &[u8] =
        b"\x00\x02\x00\x02\x40\x00\x00&Records: 2  Duplicates: 0  Warnings: 0\x12\x00\x10\tlast_gtid\x050-7-6";
    const SET_AUTOCOMMIT_OFF: &[u8] =
        b"\x00\x00\x00\x00\x40\x00\x00\x00\x11\x00\x0f\nautocommit\x03OFF";
    /// With logging off: an autocommit INSERT, no state at all.
    const INSERT_LOGGING_OFF: &[u8] = b"\x00\x01\x00\x02\x00\x00\x00";
    const NO_OP_UPDATE: &[u8] =
        b"\x00\x00\x00\x02\x00\x00\x00(Rows matched: 1  Changed: 0  Warnings: 0";

    fn ok(p: &[u8]) -> OkView {
        parse_ok(p, p.len()).unwrap()
    }

    #[test]
    fn last_gtid_is_read_from_the_session_state() {
        let v = ok(AUTOCOMMIT_INSERT);
        assert_eq!(v.affected_rows, 1);
        assert_eq!(v.last_gtid, Some(Gtid::new(0, 7, 3)));
        // Empty info and the state are cut for clients that did not ask for them.
        assert_eq!(v.len_without_state, 7);
        let v = ok(MULTI_ROW);
        assert_eq!(v.last_gtid, Some(Gtid::new(0, 7, 6)));
        assert_eq!(
            &MULTI_ROW[7..v.len_without_state],
            b"&Records: 2  Duplicates: 0  Warnings: 0"
        );
        let v = ok(SET_AUTOCOMMIT_OFF);
        assert_eq!(v.last_gtid, None);
        assert_eq!(v.len_without_state, 7);
        let v = ok(NO_OP_UPDATE);
        assert_eq!(
            (v.last_gtid, v.len_without_state),
            (None, NO_OP_UPDATE.len())
        );
        // Truncated heads and garbage never panic.
        for p in [AUTOCOMMIT_INSERT, MULTI_ROW, COMMIT] {
            for cut in 0..p.len() {
                let _ = parse_ok(&p[..cut], p.len());
                let _ = parse_ok(&p[..cut], cut);
            }
        }
        assert!(
            !parse_ok(&AUTOCOMMIT_INSERT[..10], AUTOCOMMIT_INSERT.len())
                .unwrap()
                .complete
        );
    }

    fn check(oks: &[&[u8]]) -> Option<CommitEvidence> {
        let mut t = CommitTracker::default();
        for p in oks {
            t.on_ok(&ok(p));
        }
        t.take_check()
    }

    #[test]
    fn the_end_of_a_write_transaction_is_checked() {
        assert_eq!(
            check(&[AUTOCOMMIT_INSERT]),
            Some(CommitEvidence::Gtid(Gtid::new(0, 7, 3)))
        );
        // Inside the transaction nothing is checked; its COMMIT is.
        assert_eq!(check(&[BEGIN]), None);
        assert_eq!(check(&[BEGIN, INSERT_IN_TXN]), None);
        assert_eq!(
            check(&[BEGIN, INSERT_IN_TXN, COMMIT]),
            Some(CommitEvidence::Gtid(Gtid::new(0, 7, 4)))
        );
        // Logging off: a write with no GTID, in autocommit or at COMMIT.
        assert_eq!(check(&[INSERT_LOGGING_OFF]), Some(CommitEvidence::NoGtid));
        let commit_off = b"\x00\x00\x00\x02\x00\x00\x00";
        assert_eq!(
            check(&[BEGIN, INSERT_IN_TXN, commit_off]),
            Some(CommitEvidence::NoGtid)
        );
        // Reads, no-op writes and SETs are not.
        assert_eq!(check(&[NO_OP_UPDATE]), None);
        assert_eq!(check(&[SET_AUTOCOMMIT_OFF]), None);
        assert_eq!(check(&[BEGIN, commit_off]), None);
    }

    #[test]
    fn the_tracker_spans_replies_until_the_transaction_ends() {
        let mut t = CommitTracker::default();
        for p in [BEGIN, INSERT_IN_TXN] {
            t.on_ok(&ok(p));
            assert_eq!(t.take_check(), None);
        }
        t.on_ok(&ok(b"\x00\x00\x00\x02\x00\x00\x00"));
        assert_eq!(t.take_check(), Some(CommitEvidence::NoGtid));
        // Checked once.
        assert_eq!(t.take_check(), None);
        // A later GTID in the same reply covers an earlier GTID-less end.
        t.on_ok(&ok(INSERT_LOGGING_OFF));
        t.on_ok(&ok(AUTOCOMMIT_INSERT));
        assert_eq!(
            t.take_check(),
            Some(CommitEvidence::Gtid(Gtid::new(0, 7, 3)))
        );
    }
}
