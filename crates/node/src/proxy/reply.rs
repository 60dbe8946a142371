//! Whether a session has a command in flight: forwarded towards mariadbd with its reply not yet
//! fully relayed back. This decides which error a session gets when the proxy closes it (master
//! change, lease lost or a hold that timed out, shutdown):
//!
//! - **not in flight** (the last reply was fully written to the client, or nothing was sent
//!   since the login; or the packet that was held is a new command that never reached
//!   mariadbd): 1053 / 08S01, "nothing was executed, retry";
//! - **in flight**: 1053 / 08007, "outcome unknown" — a COMMIT may have reached mariadbd.
//!
//! The rule is one-sided on purpose: "not in flight" is claimed only when the relay *knows*
//! the reply ended. Whatever it cannot follow counts as in flight until the session closes
//! ([`UNKNOWN`] is sticky): commands sent before the previous reply ended (pipelining), cursors
//! (`COM_STMT_EXECUTE` with a cursor flag, `COM_STMT_FETCH`), `COM_STMT_BULK_EXECUTE`, rarely
//! used commands (`COM_STATISTICS`, `COM_FIELD_LIST`, ...), a server packet no command asked
//! for, and anything malformed. `COM_STMT_SEND_LONG_DATA` has no reply and counts as in flight
//! until the next command's reply ends. `LOAD DATA LOCAL INFILE` is in flight from the query
//! until the OK after the file. Multi-result replies (`CALL`, multi-statements) are followed
//! through `SERVER_MORE_RESULTS_EXISTS`. A reply counts as ended only once its last byte has
//! been written to the client (the relay calls [`DONE_PENDING`] → [`IDLE`] after that write),
//! so the client always reads the real answer before the proxy's error.
//!
//! The tracking is a few integer compares per packet on a head the relay has already read (at
//! most [`SERVER_HEAD`] bytes of a server packet): no allocation.

use super::mysql::{com, MAX_CHUNK};

/// Status flag in OK / EOF packets: another result follows.
const MORE_RESULTS: u16 = quorumsql_wire::response::SERVER_MORE_RESULTS_EXISTS;

/// Nothing in flight.
pub(crate) const IDLE: u8 = 0;
/// A command without reply (`COM_STMT_SEND_LONG_DATA`) was forwarded: in flight, but the next
/// command is not pipelining.
pub(crate) const NO_REPLY: u8 = 1;
/// Waiting for the first packet of a result (`COM_QUERY`, `COM_STMT_EXECUTE`, or the next
/// result after `SERVER_MORE_RESULTS_EXISTS`): OK, ERR, `LOCAL INFILE` request or column count.
pub(crate) const FIRST: u8 = 2;
/// Column definitions; `left` of them still to come.
pub(crate) const COLUMNS: u8 = 3;
/// The EOF after the column definitions (clients without `CLIENT_DEPRECATE_EOF`).
pub(crate) const COLUMNS_EOF: u8 = 4;
/// Rows until the EOF / OK terminator.
pub(crate) const ROWS: u8 = 5;
/// Waiting for `COM_STMT_PREPARE`'s OK (or ERR).
pub(crate) const PREPARE: u8 = 6;
/// Parameter and column definitions of a prepare reply; `left` packets still to come.
pub(crate) const PREPARE_DEFS: u8 = 7;
/// A command answered by exactly one OK, EOF or ERR packet.
pub(crate) const SIMPLE: u8 = 8;
/// `COM_CHANGE_USER`: auth exchanges until OK or ERR.
pub(crate) const AUTH: u8 = 9;
/// The client is sending `LOAD DATA LOCAL` file contents.
pub(crate) const INFILE: u8 = 10;
/// The last packet of the reply was seen but not yet written to the client.
pub(crate) const DONE_PENDING: u8 = 11;
/// The relay lost track: in flight until the session closes.
pub(crate) const UNKNOWN: u8 = 12;

/// Bytes of a server packet's payload looked at while a reply is followed: an OK packet's
/// header, two length-encoded integers and its status flags (1 + 9 + 9 + 2).
pub(crate) const SERVER_HEAD: usize = 21;
/// Bytes of a client command looked at: the command byte, a statement id and the
/// `COM_STMT_EXECUTE` flags byte.
pub(crate) const COMMAND_HEAD: usize = 6;

/// Whether the session counts as having a command in flight in state `st`.
pub(crate) fn in_flight(st: u8) -> bool {
    st != IDLE
}

/// The state after the client sends a new command (sequence id 0) that the relay forwards.
pub(crate) fn on_command(st: u8, head: &[u8]) -> u8 {
    let Some(&cmd) = head.first() else {
        return UNKNOWN;
    };
    match cmd {
        // No reply and nothing executed: the state stays what it was.
        com::STMT_CLOSE | com::QUIT => return st,
        _ => {}
    }
    if st != IDLE && st != NO_REPLY {
        // Sent before the previous reply ended (pipelining), or already lost.
        return UNKNOWN;
    }
    match cmd {
        com::QUERY => FIRST,
        // Flags byte 0 = CURSOR_TYPE_NO_CURSOR; a cursor's rows come through COM_STMT_FETCH.
        com::STMT_EXECUTE if head.get(5) == Some(&0) => FIRST,
        com::STMT_PREPARE => PREPARE,
        com::INIT_DB | com::PING | com::STMT_RESET | com::RESET_CONNECTION | com::SET_OPTION => {
            SIMPLE
        }
        com::CHANGE_USER => AUTH,
        com::STMT_SEND_LONG_DATA => NO_REPLY,
        _ => UNKNOWN,
    }
}

/// The state after the client's empty packet that ends `LOAD DATA LOCAL` file contents.
pub(crate) fn on_infile_end(st: u8) -> u8 {
    if st == INFILE {
        FIRST
    } else {
        UNKNOWN
    }
}

/// Payload bytes of the next server packet the state needs to see.
pub(crate) fn server_want(st: u8) -> usize {
    match st {
        FIRST | ROWS => SERVER_HEAD,
        COLUMNS_EOF => 5,
        PREPARE => 9,
        SIMPLE | AUTH => 1,
        _ => 0,
    }
}

/// A length-encoded integer at the start of `b`, and its size.
pub(crate) fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let (&first, rest) = b.split_first()?;
    let n = match first {
        0..=0xFA => return Some((u64::from(first), 1)),
        0xFC => 2,
        0xFD => 3,
        0xFE => 8,
        _ => return None,
    };
    let bytes = rest.get(..n)?;
    let mut v = 0u64;
    for (i, &x) in bytes.iter().enumerate() {
        v |= u64::from(x) << (8 * i);
    }
    Some((v, 1 + n))
}

/// Status flags of an OK packet (header 0x00 or 0xFE).
fn ok_status(head: &[u8]) -> Option<u16> {
    let mut at = 1;
    for _ in 0..2 {
        at += lenenc(head.get(at..)?)?.1;
    }
    let s = head.get(at..at + 2)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Status flags of an EOF packet (0xFE, warnings, status).
fn eof_status(head: &[u8]) -> Option<u16> {
    let s = head.get(3..5)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// After a result's OK / EOF with `status`: the next result, or the end of the reply.
fn after_result(status: Option<u16>) -> u8 {
    match status {
        Some(s) if s & MORE_RESULTS != 0 => FIRST,
        Some(_) => DONE_PENDING,
        None => UNKNOWN,
    }
}

/// The state after the first chunk of a server packet in the command phase. `head` holds up
/// to [`server_want`] bytes of its payload, `len` is the chunk's length, `left` the count of
/// definitions still to come, `deprecate_eof` whether both sides negotiated
/// `CLIENT_DEPRECATE_EOF`.
pub(crate) fn on_server_packet(
    st: u8,
    left: &mut u64,
    head: &[u8],
    len: usize,
    deprecate_eof: bool,
) -> u8 {
    let b0 = head.first().copied();
    let small = len < MAX_CHUNK;
    match st {
        FIRST => match b0 {
            Some(0x00) if small => after_result(ok_status(head)),
            Some(0xFF) if small => DONE_PENDING,
            Some(0xFB) => INFILE,
            Some(_) => match lenenc(head) {
                Some((n, _)) if n > 0 => {
                    *left = n;
                    COLUMNS
                }
                _ => UNKNOWN,
            },
            None => UNKNOWN,
        },
        COLUMNS => {
            *left = left.saturating_sub(1);
            match (*left, deprecate_eof) {
                (0, true) => ROWS,
                (0, false) => COLUMNS_EOF,
                _ => COLUMNS,
            }
        }
        COLUMNS_EOF => match b0 {
            Some(0xFE) if len < 9 => ROWS,
            _ => UNKNOWN,
        },
        // A text row never starts with 0xFF (not a length prefix) and starts with 0xFE only
        // for a value of 2^24 bytes or more (a full chunk); binary rows start with 0x00.
        ROWS => match b0 {
            Some(0xFE) if deprecate_eof && small => after_result(ok_status(head)),
            Some(0xFE) if !deprecate_eof && len < 9 => after_result(eof_status(head)),
            Some(0xFF) if small => DONE_PENDING,
            _ => ROWS,
        },
        PREPARE => match b0 {
            Some(0x00) if head.len() >= 9 => {
                let cols = u64::from(u16::from_le_bytes([head[5], head[6]]));
                let params = u64::from(u16::from_le_bytes([head[7], head[8]]));
                let eofs = if deprecate_eof {
                    0
                } else {
                    u64::from(cols > 0) + u64::from(params > 0)
                };
                *left = cols + params + eofs;
                if *left == 0 {
                    DONE_PENDING
                } else {
                    PREPARE_DEFS
                }
            }
            Some(0xFF) if small => DONE_PENDING,
            _ => UNKNOWN,
        },
        PREPARE_DEFS => {
            *left = left.saturating_sub(1);
            if *left == 0 {
                DONE_PENDING
            } else {
                PREPARE_DEFS
            }
        }
        SIMPLE => match b0 {
            Some(0x00 | 0xFE | 0xFF) if small => DONE_PENDING,
            _ => UNKNOWN,
        },
        AUTH => match b0 {
            Some(0x00 | 0xFF) if small => DONE_PENDING,
            // Auth switch request or more auth data: the exchange goes on.
            _ => AUTH,
        },
        // A packet no command asked for (or one during the file upload): lost track.
        _ => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds server packets (payload heads with their lengths) and returns the final state.
    fn replies(mut st: u8, packets: &[&[u8]], deprecate_eof: bool) -> u8 {
        let mut left = 0;
        for p in packets {
            let want = server_want(st).min(p.len());
            st = on_server_packet(st, &mut left, &p[..want], p.len(), deprecate_eof);
        }
        st
    }

    const OK: &[u8] = &[0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00];
    const OK_MORE: &[u8] = &[0x00, 0x00, 0x00, 0x0A, 0x00, 0x00, 0x00];
    const ERR: &[u8] = &[0xFF, 0x15, 0x04, b'#', b'2', b'8', b'0', b'0', b'0', b'x'];
    const EOF: &[u8] = &[0xFE, 0x00, 0x00, 0x02, 0x00];
    const EOF_MORE: &[u8] = &[0xFE, 0x00, 0x00, 0x0A, 0x00];
    const OK_EOF: &[u8] = &[0xFE, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00];
    const COLDEF: &[u8] = &[0x03, b'd', b'e', b'f', 0x00];
    const ROW: &[u8] = &[0x01, b'1'];

    #[test]
    fn single_packet_replies_end_the_command() {
        assert_eq!(
            replies(on_command(IDLE, &[com::QUERY]), &[OK], true),
            DONE_PENDING
        );
        assert_eq!(
            replies(on_command(IDLE, &[com::QUERY]), &[ERR], true),
            DONE_PENDING
        );
        assert_eq!(
            replies(on_command(IDLE, &[com::PING]), &[OK], false),
            DONE_PENDING
        );
        let exec = [com::STMT_EXECUTE, 1, 0, 0, 0, 0, 1, 0, 0, 0];
        assert_eq!(replies(on_command(IDLE, &exec), &[OK], true), DONE_PENDING);
    }

    #[test]
    fn result_sets_end_at_their_terminator_with_and_without_deprecate_eof() {
        let q = on_command(IDLE, &[com::QUERY]);
        let with = [&[0x02][..], COLDEF, COLDEF, ROW, ROW];
        assert_eq!(replies(q, &with, true), ROWS);
        assert_eq!(
            replies(q, &[&with[..], &[OK_EOF]].concat(), true),
            DONE_PENDING
        );
        // Without DEPRECATE_EOF: the EOF after the definitions is not the end.
        let without = [&[0x02][..], COLDEF, COLDEF, EOF, ROW];
        assert_eq!(replies(q, &without, false), ROWS);
        assert_eq!(
            replies(q, &[&without[..], &[EOF]].concat(), false),
            DONE_PENDING
        );
        // No rows.
        assert_eq!(
            replies(q, &[&[0x01][..], COLDEF, OK_EOF], true),
            DONE_PENDING
        );
        // An error in the middle of the rows ends it too.
        assert_eq!(
            replies(q, &[&[0x01][..], COLDEF, ROW, ERR], true),
            DONE_PENDING
        );
        // A 16 MiB row that starts with 0xFE is a row, not a terminator.
        let mut big = vec![0u8; MAX_CHUNK];
        big[0] = 0xFE;
        assert_eq!(replies(q, &[&[0x01][..], COLDEF, &big], true), ROWS);
    }

    #[test]
    fn more_results_are_followed_to_the_last() {
        let q = on_command(IDLE, &[com::QUERY]);
        assert_eq!(replies(q, &[OK_MORE], true), FIRST);
        assert_eq!(replies(q, &[OK_MORE, OK], true), DONE_PENDING);
        let call = [&[0x01][..], COLDEF, EOF, ROW, EOF_MORE, OK];
        assert_eq!(replies(q, &call, false), DONE_PENDING);
        assert_eq!(replies(q, &call[..5], false), FIRST);
    }

    #[test]
    fn prepare_counts_its_definitions() {
        let p = on_command(IDLE, &[com::STMT_PREPARE]);
        // statement 1, 2 columns, 1 parameter.
        let ok = [0x00, 1, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0];
        assert_eq!(replies(p, &[&ok[..], COLDEF, COLDEF], true), PREPARE_DEFS);
        assert_eq!(
            replies(p, &[&ok[..], COLDEF, COLDEF, COLDEF], true),
            DONE_PENDING
        );
        let defs = [&ok[..], COLDEF, EOF, COLDEF, COLDEF, EOF];
        assert_eq!(replies(p, &defs[..5], false), PREPARE_DEFS);
        assert_eq!(replies(p, &defs, false), DONE_PENDING);
        let none = [0x00, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(replies(p, &[&none[..]], false), DONE_PENDING);
    }

    #[test]
    fn what_the_relay_cannot_follow_stays_in_flight() {
        // Pipelining: a command before the previous reply ended.
        assert_eq!(on_command(FIRST, &[com::QUERY]), UNKNOWN);
        assert_eq!(on_command(DONE_PENDING, &[com::QUERY]), UNKNOWN);
        // Sticky.
        assert_eq!(on_command(UNKNOWN, &[com::PING]), UNKNOWN);
        assert_eq!(replies(UNKNOWN, &[OK], true), UNKNOWN);
        // Cursors, rare commands, long data.
        let cursor = [com::STMT_EXECUTE, 1, 0, 0, 0, 1, 1, 0, 0, 0];
        assert_eq!(on_command(IDLE, &cursor), UNKNOWN);
        assert_eq!(on_command(IDLE, &[com::STATISTICS]), UNKNOWN);
        assert_eq!(on_command(IDLE, &[com::STMT_BULK_EXECUTE]), UNKNOWN);
        let long = on_command(IDLE, &[com::STMT_SEND_LONG_DATA, 1, 0, 0, 0, 0, 0]);
        assert!(in_flight(long));
        // ... until the execute that follows it answers.
        let exec = [com::STMT_EXECUTE, 1, 0, 0, 0, 0, 1, 0, 0, 0];
        assert_eq!(replies(on_command(long, &exec), &[OK], true), DONE_PENDING);
        // A server packet nobody asked for.
        assert_eq!(replies(IDLE, &[ERR], true), UNKNOWN);
        // STMT_CLOSE has no reply and changes nothing.
        assert_eq!(on_command(IDLE, &[com::STMT_CLOSE]), IDLE);
        assert_eq!(on_command(FIRST, &[com::STMT_CLOSE]), FIRST);
    }

    #[test]
    fn local_infile_is_in_flight_until_the_ok_after_the_file() {
        let q = on_command(IDLE, &[com::QUERY]);
        let st = replies(q, &[&[0xFB, b'f'][..]], true);
        assert_eq!(st, INFILE);
        assert!(in_flight(st));
        let st = on_infile_end(st);
        assert_eq!(replies(st, &[OK], true), DONE_PENDING);
        assert_eq!(replies(INFILE, &[ERR], true), UNKNOWN);
    }

    #[test]
    fn change_user_ends_at_ok_or_err_after_auth_switches() {
        let c = on_command(IDLE, &[com::CHANGE_USER]);
        assert_eq!(replies(c, &[&[0xFE, b'm'][..]], true), AUTH);
        assert_eq!(replies(c, &[&[0xFE, b'm'][..], &[0x01, 3]], true), AUTH);
        assert_eq!(replies(c, &[&[0xFE, b'm'][..], OK], true), DONE_PENDING);
    }
}
