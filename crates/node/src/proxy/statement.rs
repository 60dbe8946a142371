//! What the proxy refuses (DESIGN §4): the first keyword of `COM_QUERY` / `COM_STMT_PREPARE`
//! text, after whitespace and comments, and the commands that are never forwarded.
//!
//! Only the head of a packet is looked at (see [`STATEMENT_HEAD`]); a statement whose first
//! keyword lies beyond it is refused rather than guessed. MariaDB executes the body of
//! `/*! … */` and `/*M! … */` comments, so their markers are skipped and their text is read as
//! SQL.
//!
//! Also refused: statements naming QuorumSQL's internal accounts (a configurable prefix,
//! DESIGN §4) and `ALTER` with RAND/UUID/UUID_SHORT/SYSDATE calls, whose per-replica values
//! diverge existing rows (DESIGN §5). `EXECUTE IMMEDIATE '…'` and `PREPARE … FROM '…'` with a
//! literal are inspected like the statement they hold.
//!
//! Compound statements outside routines (`BEGIN NOT ATOMIC`, `IF`, `CASE`, `LOOP`, `WHILE`,
//! `REPEAT`, labels) are scanned whole for KILL/SHUTDOWN/XA and refused when longer than the
//! inspected head.
//!
//! Known residue (documented for operators): a `KILL` inside a stored procedure or in dynamic
//! SQL whose text is not a literal (`EXECUTE IMMEDIATE @q`) is executed by mariadbd; and with
//! multi-statements enabled (`ProxyLimits::allow_multi_statements`), only the first statement
//! of a packet is inspected.

use super::mysql::{com, MYSQL_OPTION_MULTI_STATEMENTS_ON};
use super::{PortKind, ProxyLimits};

/// Bytes of a command packet's payload inspected before it is forwarded.
pub const STATEMENT_HEAD: usize = 4096;

/// What to do with a command packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// Answer with an ERR (code `ER_REFUSED`) and this message; the connection stays open.
    Refuse(String),
    /// `KILL [CONNECTION|QUERY] n`, implemented by the proxy.
    Kill {
        thread_id: u64,
    },
}

/// Classifies a command packet from the head of its payload (`total_len` is the whole payload).
pub fn classify(port: PortKind, head: &[u8], total_len: usize, limits: &ProxyLimits) -> Verdict {
    let Some(&cmd) = head.first() else {
        return Verdict::Forward;
    };
    match cmd {
        com::PROCESS_KILL => Verdict::Refuse(
            "QuorumSQL never forwards COM_PROCESS_KILL: killing a session that waits for its \
             commit to reach the cluster would commit it locally; use KILL <id>, which the proxy \
             implements by closing that session (its outcome is then unknown)"
                .into(),
        ),
        com::SHUTDOWN => Verdict::Refuse(
            "QuorumSQL never forwards COM_SHUTDOWN; the node manages mariadbd".into(),
        ),
        com::BINLOG_DUMP | com::BINLOG_DUMP_GTID | com::REGISTER_SLAVE => Verdict::Refuse(
            "QuorumSQL does not let replicas or binlog readers connect through the client ports; \
             read the binlog from a node's serve endpoint"
                .into(),
        ),
        com::REFRESH if port == PortKind::Ro => Verdict::Refuse(
            "COM_REFRESH (FLUSH) is refused on the read-only port: it writes a local GTID that \
             stops this replica's replication"
                .into(),
        ),
        com::SET_OPTION
            if !limits.allow_multi_statements
                && head.get(1..3) == Some(&MYSQL_OPTION_MULTI_STATEMENTS_ON.to_le_bytes()[..]) =>
        {
            Verdict::Refuse(
                "multi-statements are disabled by the QuorumSQL proxy (it inspects only the \
                 first statement of a packet); send statements one at a time"
                    .into(),
            )
        }
        com::QUERY | com::STMT_PREPARE => {
            let sql = &head[1..];
            let prefix = limits.reserved_account_prefix.as_bytes();
            if !prefix.is_empty() && contains_ignore_case(sql, prefix) {
                return Verdict::Refuse(format!(
                    "statements naming QuorumSQL's internal accounts ({}*) are refused; manage \
                     accounts through the quorumsql admin commands",
                    limits.reserved_account_prefix
                ));
            }
            classify_sql(port, sql, total_len - 1, cmd == com::STMT_PREPARE, 0)
        }
        _ => Verdict::Forward,
    }
}

/// A cursor over SQL text that skips whitespace and comments.
struct Sql<'a> {
    s: &'a [u8],
    at: usize,
}

/// Outcome of looking for the next token.
enum Next<'a> {
    Word(&'a [u8]),
    /// Some other character (a digit run counts as a word).
    Other,
    /// The text ends here.
    End,
    /// The inspected head ended inside whitespace or a comment.
    Truncated,
}

impl<'a> Sql<'a> {
    /// Skips whitespace and comments; `complete` says the slice is the whole statement.
    fn skip(&mut self, complete: bool) -> Option<()> {
        let s = self.s;
        loop {
            match s.get(self.at..) {
                None | Some([]) => return if complete { Some(()) } else { None },
                Some([b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C | b';', ..]) => self.at += 1,
                Some([b'#', ..]) => self.skip_line(complete)?,
                // `--` starts a comment only when followed by whitespace or a control character.
                Some([b'-', b'-', c, ..]) if *c <= b' ' => self.skip_line(complete)?,
                Some([b'-', b'-'] | [b'-']) if !complete => return None,
                Some([b'/', b'*', b'!', ..]) => {
                    self.at += 3;
                    self.skip_version();
                }
                Some([b'/', b'*', b'M', b'!', ..]) => {
                    self.at += 4;
                    self.skip_version();
                }
                Some([b'/', b'*', ..]) => {
                    let rest = &s[self.at + 2..];
                    let end = rest.windows(2).position(|w| w == b"*/")?;
                    self.at += 2 + end + 2;
                }
                Some([b'/']) if !complete => return None,
                // The end of an executable comment whose body we already read as SQL.
                Some([b'*', b'/', ..]) => self.at += 2,
                Some(_) => return Some(()),
            }
        }
    }

    fn skip_line(&mut self, complete: bool) -> Option<()> {
        let rest = &self.s[self.at..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(end) => self.at += end + 1,
            None if complete => self.at = self.s.len(),
            None => return None,
        }
        Some(())
    }

    fn skip_version(&mut self) {
        let digits = self.s[self.at..]
            .iter()
            .take(6)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 5 || digits == 6 {
            self.at += digits;
        }
    }

    fn next(&mut self, complete: bool) -> Next<'a> {
        if self.skip(complete).is_none() {
            return Next::Truncated;
        }
        let rest = &self.s[self.at..];
        if rest.is_empty() {
            return Next::End;
        };
        let n = rest
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'$')
            .count();
        if n == 0 {
            self.at += 1;
            return Next::Other;
        }
        if n == rest.len() && !complete {
            return Next::Truncated;
        }
        self.at += n;
        Next::Word(&rest[..n])
    }
}

fn is(word: &[u8], kw: &str) -> bool {
    word.eq_ignore_ascii_case(kw.as_bytes())
}

/// Keywords refused on the RO port because they write a local GTID (stopping replication) or
/// block the applier (design-review 20).
const RO_REFUSED: [&str; 7] = [
    "ANALYZE", "OPTIMIZE", "REPAIR", "FLUSH", "RESET", "PURGE", "LOCK",
];

/// Nesting of `EXECUTE IMMEDIATE '…'` literals followed.
const MAX_DYNAMIC_DEPTH: u8 = 4;

fn classify_sql(port: PortKind, sql: &[u8], total: usize, prepare: bool, depth: u8) -> Verdict {
    let complete = sql.len() == total;
    let mut cur = Sql { s: sql, at: 0 };
    let word = match cur.next(complete) {
        Next::Word(w) => w,
        Next::Other | Next::End => return Verdict::Forward,
        Next::Truncated => {
            return Verdict::Refuse(format!(
                "the QuorumSQL proxy inspects the first {STATEMENT_HEAD} bytes of a statement \
                 and found no keyword there; shorten the leading comments"
            ))
        }
    };
    // Dynamic SQL from a literal is inspected like the statement it holds: `EXECUTE IMMEDIATE
    // 'KILL 5'` and `PREPARE s FROM 'KILL 5'` would otherwise reach mariadbd.
    let dynamic = if is(word, "EXECUTE") {
        matches!(cur.next(complete), Next::Word(w) if is(w, "IMMEDIATE"))
    } else if is(word, "PREPARE") {
        matches!(cur.next(complete), Next::Word(_))
            && matches!(cur.next(complete), Next::Word(w) if is(w, "FROM"))
    } else {
        false
    };
    if dynamic {
        if cur.skip(complete).is_none() {
            return Verdict::Forward;
        }
        let Some((text, closed)) = string_literal(&cur.s[cur.at..]) else {
            // A variable or expression: not inspectable (documented residue).
            return Verdict::Forward;
        };
        if depth >= MAX_DYNAMIC_DEPTH {
            return Verdict::Refuse("dynamic SQL nested too deep for the QuorumSQL proxy".into());
        }
        let total = if closed { text.len() } else { usize::MAX };
        return match classify_sql(port, &text, total, true, depth + 1) {
            Verdict::Forward => Verdict::Forward,
            Verdict::Refuse(msg) => Verdict::Refuse(msg),
            Verdict::Kill { .. } => Verdict::Refuse(
                "KILL in dynamic SQL is refused by QuorumSQL; send KILL <id> as a plain query"
                    .into(),
            ),
        };
    }
    // Compound statements run outside routines (`BEGIN NOT ATOMIC … END`, `IF … END IF`, ...)
    // hold statements of their own: refuse any that mentions what the proxy refuses.
    let compound = ["IF", "CASE", "LOOP", "WHILE", "REPEAT"]
        .iter()
        .any(|kw| is(word, kw))
        || (is(word, "BEGIN") && {
            let mut peek = Sql {
                s: cur.s,
                at: cur.at,
            };
            matches!(peek.next(complete), Next::Word(w) if is(w, "NOT"))
        })
        || {
            // `label: LOOP …`
            let mut peek = Sql {
                s: cur.s,
                at: cur.at,
            };
            peek.skip(complete).is_some()
                && cur.s.get(peek.at) == Some(&b':')
                && cur.s.get(peek.at + 1) != Some(&b'=')
        };
    if compound {
        if !complete {
            return Verdict::Refuse(format!(
                "compound statements longer than {STATEMENT_HEAD} bytes are refused by the \
                 QuorumSQL proxy (it cannot inspect them); use a stored procedure"
            ));
        }
        let body = &cur.s[cur.at..];
        if let Some(kw) = ["KILL", "SHUTDOWN", "XA"]
            .iter()
            .find(|kw| contains_word(body, kw.as_bytes()))
        {
            return Verdict::Refuse(format!(
                "{kw} inside a compound statement is refused by QuorumSQL; send KILL <id> as a \
                 plain query"
            ));
        }
        return Verdict::Forward;
    }
    if port == PortKind::Rw && is(word, "ALTER") && non_deterministic_default(&cur.s[cur.at..]) {
        return Verdict::Refuse(
            "ALTER with a non-deterministic expression (RAND, UUID, UUID_SHORT, SYSDATE) is \
             refused by QuorumSQL: each replica would compute different values for existing \
             rows; add the column without it and fill it with UPDATE"
                .into(),
        );
    }
    if is(word, "SHUTDOWN") {
        return Verdict::Refuse(
            "SHUTDOWN is refused by QuorumSQL; the node manages mariadbd".into(),
        );
    }
    if is(word, "XA") {
        return Verdict::Refuse(
            "XA transactions are refused by QuorumSQL: a prepared XA branch survives failover \
             and blocks crash recovery"
                .into(),
        );
    }
    if is(word, "KILL") {
        if port == PortKind::Ro {
            return Verdict::Refuse(
                "KILL is refused on the read-only port; sessions there are managed by QuorumSQL"
                    .into(),
            );
        }
        if prepare {
            return Verdict::Refuse(
                "KILL cannot be prepared through the QuorumSQL proxy; send KILL <id> as a \
                 plain query"
                    .into(),
            );
        }
        return parse_kill(&mut cur, complete);
    }
    if port == PortKind::Ro {
        if let Some(kw) = RO_REFUSED.iter().find(|kw| is(word, kw)) {
            return Verdict::Refuse(format!(
                "{kw} is refused on the read-only port: it would write to this replica (a \
                 local GTID stops its replication) or block its applier; run it on the \
                 read-write port"
            ));
        }
        if is(word, "SET") && set_is_global(&cur) {
            return Verdict::Refuse(
                "SET GLOBAL is refused on the read-only port; QuorumSQL owns server settings"
                    .into(),
            );
        }
    }
    Verdict::Forward
}

/// `word` as a whole word (not part of an identifier), ignoring case.
fn contains_word(hay: &[u8], word: &[u8]) -> bool {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    hay.windows(word.len()).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(word)
            && (i == 0 || !ident(hay[i - 1]))
            && hay.get(i + word.len()).is_none_or(|c| !ident(*c))
    })
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A call of a function whose value differs per server, as in `ADD COLUMN c … DEFAULT (UUID())`
/// (DESIGN §5).
fn non_deterministic_default(rest: &[u8]) -> bool {
    ["RAND", "UUID", "UUID_SHORT", "SYSDATE"].iter().any(|f| {
        let f = f.as_bytes();
        rest.windows(f.len()).enumerate().any(|(i, w)| {
            if !w.eq_ignore_ascii_case(f) {
                return false;
            }
            let before_ok = i == 0 || !(rest[i - 1].is_ascii_alphanumeric() || rest[i - 1] == b'_');
            let after = rest[i + f.len()..]
                .iter()
                .find(|c| !c.is_ascii_whitespace());
            before_ok && after == Some(&b'(')
        })
    })
}

/// The contents of a quoted string at the start of `s` (backslash escapes and doubled quotes
/// undone) and whether it closed within `s`; `None` if `s` does not start with a quote.
fn string_literal(s: &[u8]) -> Option<(Vec<u8>, bool)> {
    let q = *s.first()?;
    if q != b'\'' && q != b'"' {
        return None;
    }
    let mut out = Vec::with_capacity(s.len().min(256));
    let mut i = 1;
    while i < s.len() {
        let c = s[i];
        if c == b'\\' {
            if let Some(&n) = s.get(i + 1) {
                out.push(n);
            }
            i += 2;
        } else if c == q {
            if s.get(i + 1) == Some(&q) {
                out.push(q);
                i += 2;
            } else {
                return Some((out, true));
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    Some((out, false))
}

/// `SET GLOBAL …`, `SET @@global.…` anywhere in the inspected text of a SET statement.
fn set_is_global(cur: &Sql<'_>) -> bool {
    let rest = &cur.s[cur.at..];
    let lower: Vec<u8> = rest.iter().map(u8::to_ascii_lowercase).collect();
    let word_at = |i: usize| {
        let before = i == 0 || !(lower[i - 1].is_ascii_alphanumeric() || lower[i - 1] == b'_');
        let after = lower
            .get(i + 6)
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'));
        before && after
    };
    lower
        .windows(6)
        .enumerate()
        .any(|(i, w)| w == b"global" && word_at(i))
}

/// `KILL [HARD|SOFT] [CONNECTION|QUERY] <number>`; anything else is refused with the reason.
fn parse_kill(cur: &mut Sql<'_>, complete: bool) -> Verdict {
    let unsupported = || {
        Verdict::Refuse(
            "the QuorumSQL proxy implements only KILL [CONNECTION | QUERY] <connection id> (it \
             closes that session; a KILL forwarded to mariadbd would commit a transaction that \
             waits for the cluster)"
                .into(),
        )
    };
    if !complete {
        return unsupported();
    }
    let mut word = cur.next(true);
    if let Next::Word(w) = word {
        if is(w, "HARD") || is(w, "SOFT") {
            word = cur.next(true);
        }
    }
    if let Next::Word(w) = word {
        if is(w, "CONNECTION") || is(w, "QUERY") {
            word = cur.next(true);
        }
    }
    let Next::Word(num) = word else {
        return unsupported();
    };
    if !num.iter().all(u8::is_ascii_digit) {
        return unsupported();
    }
    let Some(thread_id) = std::str::from_utf8(num)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return unsupported();
    };
    match cur.next(true) {
        Next::End => Verdict::Kill { thread_id },
        _ => unsupported(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(port: PortKind, sql: &str) -> Verdict {
        let mut p = vec![com::QUERY];
        p.extend_from_slice(sql.as_bytes());
        classify(port, &p, p.len(), &ProxyLimits::default())
    }

    fn limits(multi: bool) -> ProxyLimits {
        ProxyLimits {
            allow_multi_statements: multi,
            ..ProxyLimits::default()
        }
    }

    fn refused(v: &Verdict) -> bool {
        matches!(v, Verdict::Refuse(_))
    }

    #[test]
    fn kill_forms() {
        use PortKind::Rw;
        for (sql, id) in [
            ("KILL 5", 5),
            ("kill query 7;", 7),
            ("  /* c */ KILL CONNECTION 9 ", 9),
            ("KILL HARD QUERY 3", 3),
            ("-- x\nKILL 12", 12),
            ("/*!KILL 4*/", 4),
            ("/*M!100000 KILL 4 */", 4),
            ("# hi\n kill\t8", 8),
        ] {
            assert_eq!(q(Rw, sql), Verdict::Kill { thread_id: id }, "{sql}");
        }
        for sql in [
            "KILL USER app",
            "KILL QUERY ID 5",
            "KILL CONNECTION_ID()",
            "KILL 5, 6",
            "KILL 5; SELECT 1",
            "KILL",
        ] {
            assert!(refused(&q(Rw, sql)), "{sql}");
        }
        assert!(refused(&q(PortKind::Ro, "KILL 5")));
        let mut p = vec![com::STMT_PREPARE];
        p.extend_from_slice(b"KILL 5");
        assert!(refused(&classify(Rw, &p, p.len(), &limits(false))));
    }

    #[test]
    fn refused_everywhere() {
        for port in [PortKind::Rw, PortKind::Ro] {
            for sql in [
                "SHUTDOWN",
                "xa start 'x'",
                "/*!50000 XA */ START 'x'",
                "/* a */ -- b\n Shutdown WAIT FOR ALL SLAVES",
            ] {
                assert!(refused(&q(port, sql)), "{port:?} {sql}");
            }
            for cmd in [
                com::PROCESS_KILL,
                com::SHUTDOWN,
                com::BINLOG_DUMP,
                com::BINLOG_DUMP_GTID,
                com::REGISTER_SLAVE,
            ] {
                assert!(refused(&classify(
                    port,
                    &[cmd, 1, 0, 0, 0],
                    5,
                    &limits(false)
                )));
            }
        }
    }

    #[test]
    fn ro_port_refusals_and_passes() {
        use PortKind::{Ro, Rw};
        for sql in [
            "ANALYZE TABLE t PERSISTENT FOR ALL",
            "optimize table t",
            "REPAIR TABLE t",
            "FLUSH TABLES",
            "RESET MASTER",
            "PURGE BINARY LOGS BEFORE NOW()",
            "LOCK TABLES t READ",
            "SET GLOBAL read_only=0",
            "set @@global.read_only=0",
            "SET SESSION x=1, GLOBAL y=2",
        ] {
            assert!(refused(&q(Ro, sql)), "{sql}");
            assert_eq!(q(Rw, sql), Verdict::Forward, "{sql}");
        }
        for sql in [
            "SELECT 1",
            "SET NAMES utf8mb4",
            "set @globalx = 1",
            "UNLOCK TABLES",
            "",
            "   ",
            "/* only a comment */",
            "(SELECT 1)",
            "ANALYZE_x",
        ] {
            assert_eq!(q(Ro, sql), Verdict::Forward, "{sql:?}");
        }
        assert!(refused(&classify(
            Ro,
            &[com::REFRESH, 1],
            2,
            &limits(false)
        )));
        assert_eq!(
            classify(Rw, &[com::REFRESH, 1], 2, &limits(false)),
            Verdict::Forward
        );
    }

    #[test]
    fn truncated_heads_are_refused_not_guessed() {
        let mut p = vec![com::QUERY];
        p.extend_from_slice(b"/* ");
        p.extend(std::iter::repeat_n(b'x', 100));
        // The packet is longer than what we saw and the comment never closes in the head.
        assert!(refused(&classify(
            PortKind::Rw,
            &p,
            100_000,
            &limits(false)
        )));
        // A word that runs to the end of the head could be a prefix of KILL… or of SELECT.
        let mut p = vec![com::QUERY];
        p.extend_from_slice(b"  KI");
        assert!(refused(&classify(
            PortKind::Rw,
            &p,
            100_000,
            &limits(false)
        )));
        let mut p = vec![com::QUERY];
        p.extend_from_slice(b"SELECT ");
        p.extend(std::iter::repeat_n(b'1', 100));
        assert_eq!(
            classify(PortKind::Rw, &p, 100_000, &limits(false)),
            Verdict::Forward
        );
    }

    #[test]
    fn dynamic_sql_literals_are_inspected() {
        use PortKind::{Ro, Rw};
        for sql in [
            "EXECUTE IMMEDIATE 'KILL 5'",
            "execute immediate \"KILL QUERY 5\"",
            "PREPARE s FROM 'XA START ''x'''",
            "PREPARE s FROM '/* c */ SHUTDOWN'",
            "EXECUTE IMMEDIATE 'EXECUTE IMMEDIATE ''KILL 1'''",
        ] {
            assert!(refused(&q(Rw, sql)), "{sql}");
        }
        assert!(refused(&q(Ro, "EXECUTE IMMEDIATE 'FLUSH TABLES'")));
        for sql in [
            "EXECUTE IMMEDIATE 'SELECT 1'",
            "PREPARE s FROM 'INSERT INTO t VALUES (\\'KILL\\')'",
            "EXECUTE s",
            "EXECUTE IMMEDIATE @q",
        ] {
            assert_eq!(q(Rw, sql), Verdict::Forward, "{sql}");
        }
    }

    #[test]
    fn internal_accounts_and_non_deterministic_alters() {
        use PortKind::{Ro, Rw};
        for sql in [
            "DROP USER quorumsql_serve@localhost",
            "SET PASSWORD FOR 'QuorumSQL_capture'@'localhost' = PASSWORD('x')",
            "GRANT ALL ON *.* TO quorumsql_admin",
        ] {
            assert!(refused(&q(Rw, sql)), "{sql}");
            assert!(refused(&q(Ro, sql)), "{sql}");
        }
        let off = ProxyLimits {
            reserved_account_prefix: String::new(),
            ..ProxyLimits::default()
        };
        let p = b"\x03DROP USER quorumsql_serve";
        assert_eq!(classify(Rw, p, p.len(), &off), Verdict::Forward);
        assert_eq!(q(Rw, "SELECT * FROM quorumsql.heartbeat"), Verdict::Forward);
        for sql in [
            "ALTER TABLE t ADD COLUMN u CHAR(36) DEFAULT (UUID())",
            "alter table t add c double default (rand() * 10)",
            "ALTER TABLE t ADD c BIGINT DEFAULT (uuid_short ())",
            "ALTER TABLE t ADD c DATETIME DEFAULT (SYSDATE())",
        ] {
            assert!(refused(&q(Rw, sql)), "{sql}");
        }
        for sql in [
            "ALTER TABLE t ADD COLUMN operand INT DEFAULT 0",
            "ALTER TABLE t ADD c DATETIME DEFAULT CURRENT_TIMESTAMP",
            "ALTER TABLE t ADD COLUMN rand_col INT",
            "CREATE TABLE t2 (u CHAR(36) DEFAULT (UUID()))",
        ] {
            assert_eq!(q(Rw, sql), Verdict::Forward, "{sql}");
        }
    }

    #[test]
    fn compound_statements_are_scanned() {
        use PortKind::Rw;
        for sql in [
            "BEGIN NOT ATOMIC KILL 5; END",
            "begin not atomic select 1; kill query 5; end",
            "IF 1 THEN KILL 5; END IF",
            "lbl: LOOP KILL 5; LEAVE lbl; END LOOP",
            "WHILE 1 DO XA START 'x'; END WHILE",
        ] {
            assert!(refused(&q(Rw, sql)), "{sql}");
        }
        for sql in [
            "BEGIN",
            "BEGIN WORK",
            "BEGIN NOT ATOMIC SELECT 'skill'; END",
            "IF 1 THEN SELECT killer FROM t; END IF",
        ] {
            assert_eq!(q(Rw, sql), Verdict::Forward, "{sql}");
        }
        let mut p = vec![com::QUERY];
        p.extend_from_slice(b"BEGIN NOT ATOMIC SELECT 1; ");
        assert!(refused(&classify(Rw, &p, 100_000, &limits(false))));
    }

    #[test]
    fn multi_statements_switch() {
        let on = [com::SET_OPTION, 0, 0];
        assert!(refused(&classify(PortKind::Rw, &on, 3, &limits(false))));
        assert_eq!(
            classify(PortKind::Rw, &on, 3, &limits(true)),
            Verdict::Forward
        );
        let off = [com::SET_OPTION, 1, 0];
        assert_eq!(
            classify(PortKind::Rw, &off, 3, &limits(false)),
            Verdict::Forward
        );
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..2000usize {
            let mut p = Vec::with_capacity(len);
            for _ in 0..len % 64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                p.push(b"KILL /*!*-#\n 0123 XAx;"[(seed % 22) as usize]);
            }
            for port in [PortKind::Rw, PortKind::Ro] {
                let _ = classify(port, &p, p.len() + len % 3, &limits(false));
            }
        }
    }
}
