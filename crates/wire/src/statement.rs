//! The first keyword of a SQL text, for the proxy's refusals (KILL, SHUTDOWN, XA, FLUSH, ...).
//!
//! Whitespace and comments (`/* */`, `-- `, `#`) are skipped. MariaDB *executes* the content of
//! `/*! ... */` and `/*M! ... */` (optionally with a version number right after the `!`), so that
//! content counts: `/*!50000 KILL */ 5` starts with `KILL`.

/// The first keyword, upper-cased (ASCII), or `None` if the text has no keyword before a
/// non-word character, or ends inside a comment.
pub fn first_keyword(sql: &[u8]) -> Option<String> {
    let mut i = 0;
    let n = sql.len();
    while i < n {
        let c = sql[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if sql[i..].starts_with(b"/*!") || sql[i..].starts_with(b"/*M!") {
            i += if sql[i + 2] == b'!' { 3 } else { 4 };
            while i < n && sql[i].is_ascii_digit() {
                i += 1;
            }
        } else if sql[i..].starts_with(b"/*") {
            let end = sql[i + 2..].windows(2).position(|w| w == b"*/")?;
            i += 2 + end + 2;
        } else if sql[i..].starts_with(b"*/") {
            // The end of an executable comment opened before the keyword.
            i += 2;
        } else if c == b'#' || is_dash_comment(&sql[i..]) {
            match sql[i..].iter().position(|&b| b == b'\n') {
                Some(p) => i += p + 1,
                None => return None,
            }
        } else {
            let start = i;
            while i < n && (sql[i].is_ascii_alphanumeric() || sql[i] == b'_') {
                i += 1;
            }
            if i == start {
                return None;
            }
            return Some(String::from_utf8_lossy(&sql[start..i]).to_ascii_uppercase());
        }
    }
    None
}

/// `-- ` comments need a space or control character (or the end) after the two dashes.
fn is_dash_comment(s: &[u8]) -> bool {
    s.starts_with(b"--") && s.get(2).is_none_or(|&c| c <= b' ')
}

/// Whether `sql` begins with one of `keywords` (given in upper case).
pub fn starts_with_any(sql: &[u8], keywords: &[&str]) -> bool {
    first_keyword(sql).is_some_and(|k| keywords.contains(&k.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_comments_but_not_executable_ones() {
        let cases: &[(&str, Option<&str>)] = &[
            ("  kill 5", Some("KILL")),
            ("/* hi */ SELECT 1", Some("SELECT")),
            ("-- c\nxa start 'x'", Some("XA")),
            ("# c\r\n\tFlush tables", Some("FLUSH")),
            ("/*!50000 KILL */ 5", Some("KILL")),
            ("/*M!100000 shutdown */", Some("SHUTDOWN")),
            ("/*!*/ analyze table t", Some("ANALYZE")),
            ("/* a */ /*! */ /* b */ Set global x=1", Some("SET")),
            ("--1\nselect", None),
            ("/* unterminated", None),
            ("-- only a comment", None),
            ("(select 1)", None),
            ("", None),
            ("select_1", Some("SELECT_1")),
        ];
        for (sql, want) in cases {
            assert_eq!(first_keyword(sql.as_bytes()).as_deref(), *want, "{sql:?}");
        }
        assert!(starts_with_any(b" /**/kill 1", &["KILL", "SHUTDOWN"]));
        assert!(!starts_with_any(b"select 'kill'", &["KILL"]));
    }
}
