//! The statements a MariaDB replica's IO thread sends before COM_BINLOG_DUMP
//! (mariadb-replication §4.1), recognised from their text. serve answers exactly these; anything
//! else gets an error naming the statement.

/// A recognised statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `SELECT UNIX_TIMESTAMP()`
    UnixTimestamp,
    /// `SHOW VARIABLES LIKE '<pattern>'` (pattern lower-cased).
    ShowVariables(String),
    /// `SET @name = value`: a user variable (name lower-cased, value evaluated).
    SetUserVar { name: String, value: String },
    /// `SET skip_replication=1` and similar harmless session settings.
    SetSession,
    /// `SELECT @name`
    SelectUserVar(String),
    /// `SELECT @@[GLOBAL.]name` (name lower-cased).
    SelectSysVar(String),
    /// `SELECT VERSION()`
    Version,
    /// `KILL [CONNECTION|QUERY] <id>`
    Kill { id: u32, query_only: bool },
}

/// The checksum algorithm serve's "global binlog_checksum" evaluates to.
pub const BINLOG_CHECKSUM: &str = "CRC32";

/// Recognises `sql`; `None` for anything serve does not answer.
pub fn parse(sql: &str) -> Option<Query> {
    let s = sql.trim().trim_end_matches(';').trim();
    let upper = s.to_ascii_uppercase();
    let compact: String = upper.split_whitespace().collect::<Vec<_>>().join(" ");
    if compact == "SELECT UNIX_TIMESTAMP()" {
        return Some(Query::UnixTimestamp);
    }
    if compact == "SELECT VERSION()" {
        return Some(Query::Version);
    }
    if let Some(rest) = strip_prefix_ci(s, "SHOW VARIABLES LIKE ") {
        let pat = unquote(rest.trim())?;
        return Some(Query::ShowVariables(pat.to_ascii_lowercase()));
    }
    if let Some(rest) = strip_prefix_ci(s, "SET ") {
        let rest = rest.trim_start();
        if let Some(var) = rest.strip_prefix('@') {
            if var.starts_with('@') {
                return None;
            }
            let (name, value) = var.split_once('=')?;
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let value = eval(value.trim())?;
            return Some(Query::SetUserVar {
                name: name.to_ascii_lowercase(),
                value,
            });
        }
        // The IO thread's reconnect after a network error (`mysql_reconnect`) re-applies the
        // connection charset with `SET NAMES`; a refusal makes every reconnect fail, with an
        // empty error message. The dump stream is binary: the charset does not matter.
        if strip_prefix_ci(rest, "NAMES ").is_some()
            || strip_prefix_ci(rest, "CHARACTER SET ").is_some()
        {
            return Some(Query::SetSession);
        }
        let (name, _) = rest.split_once('=')?;
        let name = name.trim().to_ascii_lowercase();
        let name = name.strip_prefix("session ").unwrap_or(&name).trim();
        return matches!(name, "skip_replication" | "sql_log_bin" | "names")
            .then_some(Query::SetSession);
    }
    if let Some(rest) = strip_prefix_ci(s, "SELECT ") {
        let rest = rest.trim();
        if let Some(sys) = rest.strip_prefix("@@") {
            let sys = sys.to_ascii_lowercase();
            let sys = sys
                .strip_prefix("global.")
                .or_else(|| sys.strip_prefix("session."))
                .unwrap_or(&sys)
                .to_string();
            if sys.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Some(Query::SelectSysVar(sys));
            }
            return None;
        }
        if let Some(var) = rest.strip_prefix('@') {
            if var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !var.is_empty() {
                return Some(Query::SelectUserVar(var.to_ascii_lowercase()));
            }
        }
        return None;
    }
    if let Some(rest) = strip_prefix_ci(s, "KILL ") {
        let mut words: Vec<&str> = rest.split_whitespace().collect();
        let mut query_only = false;
        if let Some(w) = words.first() {
            if w.eq_ignore_ascii_case("HARD") || w.eq_ignore_ascii_case("SOFT") {
                words.remove(0);
            }
        }
        if let Some(w) = words.first() {
            if w.eq_ignore_ascii_case("CONNECTION") {
                words.remove(0);
            } else if w.eq_ignore_ascii_case("QUERY") {
                query_only = true;
                words.remove(0);
            }
        }
        if let [id] = words.as_slice() {
            return Some(Query::Kill {
                id: id.parse().ok()?,
                query_only,
            });
        }
    }
    None
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// A quoted string literal ('…' or "…", backslash and doubled-quote escapes).
fn unquote(v: &str) -> Option<String> {
    let q = v.chars().next()?;
    if q != '\'' && q != '"' {
        return None;
    }
    let inner = v.get(1..)?;
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(chars.next()?);
        } else if c == q {
            if chars.peek() == Some(&q) {
                chars.next();
                out.push(q);
            } else {
                return chars.next().is_none().then_some(out);
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// The value of the right-hand side of `SET @x= …`: a literal, or the one expression replicas
/// send (`@@global.binlog_checksum`).
fn eval(v: &str) -> Option<String> {
    if v.starts_with('\'') || v.starts_with('"') {
        return unquote(v);
    }
    if v.eq_ignore_ascii_case("@@global.binlog_checksum")
        || v.eq_ignore_ascii_case("@@binlog_checksum")
    {
        return Some(BINLOG_CHECKSUM.to_string());
    }
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Some(v.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_every_statement_of_the_replica_sequence() {
        assert_eq!(parse("SELECT UNIX_TIMESTAMP()"), Some(Query::UnixTimestamp));
        assert_eq!(
            parse("SHOW VARIABLES LIKE 'SERVER_ID'"),
            Some(Query::ShowVariables("server_id".into()))
        );
        assert_eq!(
            parse("SET @master_heartbeat_period= 2000000000"),
            Some(Query::SetUserVar {
                name: "master_heartbeat_period".into(),
                value: "2000000000".into()
            })
        );
        assert_eq!(
            parse("SET @master_binlog_checksum= @@global.binlog_checksum"),
            Some(Query::SetUserVar {
                name: "master_binlog_checksum".into(),
                value: "CRC32".into()
            })
        );
        assert_eq!(
            parse("SELECT @master_binlog_checksum"),
            Some(Query::SelectUserVar("master_binlog_checksum".into()))
        );
        assert_eq!(parse("SET NAMES latin1"), Some(Query::SetSession));
        assert_eq!(
            parse("set names utf8mb4 COLLATE utf8mb4_general_ci"),
            Some(Query::SetSession)
        );
        assert_eq!(
            parse("SET @mariadb_slave_capability=4"),
            Some(Query::SetUserVar {
                name: "mariadb_slave_capability".into(),
                value: "4".into()
            })
        );
        assert_eq!(
            parse("SELECT @@GLOBAL.gtid_domain_id"),
            Some(Query::SelectSysVar("gtid_domain_id".into()))
        );
        assert_eq!(
            parse("SET @slave_connect_state='0-1-10,1-2-3'"),
            Some(Query::SetUserVar {
                name: "slave_connect_state".into(),
                value: "0-1-10,1-2-3".into()
            })
        );
        assert_eq!(
            parse("SET @slave_connect_state=''"),
            Some(Query::SetUserVar {
                name: "slave_connect_state".into(),
                value: "".into()
            })
        );
        assert_eq!(parse("SET skip_replication=1"), Some(Query::SetSession));
        assert_eq!(
            parse("SHOW VARIABLES LIKE 'rpl_semi_sync_master_enabled'"),
            Some(Query::ShowVariables("rpl_semi_sync_master_enabled".into()))
        );
        assert_eq!(
            parse("SET @rpl_semi_sync_slave= 1"),
            Some(Query::SetUserVar {
                name: "rpl_semi_sync_slave".into(),
                value: "1".into()
            })
        );
        assert_eq!(
            parse("KILL 7"),
            Some(Query::Kill {
                id: 7,
                query_only: false
            })
        );
        assert_eq!(
            parse("kill query 9;"),
            Some(Query::Kill {
                id: 9,
                query_only: true
            })
        );
    }

    #[test]
    fn anything_else_is_not_recognised() {
        for q in [
            "DROP TABLE t",
            "SELECT 1",
            "SET @x = (SELECT 1)",
            "SET @@global.read_only=1",
            "SET GLOBAL read_only=1",
            "KILL abc",
            "SHOW VARIABLES LIKE x",
            "SELECT @a, @b",
            "",
        ] {
            assert_eq!(parse(q), None, "{q}");
        }
    }
}
