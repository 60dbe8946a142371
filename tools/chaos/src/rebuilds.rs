//! What the product's automatic rebuild did during a run, read back from each node at the end:
//! the datadirs a rebuild set aside (`mariadb.diverged-<unix time>` beside the node's
//! `mariadb/`, one per completed swap) and the rebuild episodes in the node's log
//! (`node diverged` → `rebuild: receiving a backup` → `rebuild: datadir replaced` → role
//! `replica`), with their times relative to the start of the run.
//!
//! The log's timestamps are the node's wall clock: a `clock-jump` of that node's wall clock in the
//! middle of a rebuild shifts them (only the episode's times, not the count).

use std::path::Path;

use quorumsql_chaos_check::NodeIndex;
use serde::Serialize;

/// One stretch from a node reporting itself diverged to it serving as a replica again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Episode {
    pub node: NodeIndex,
    /// Seconds since the start of the run (negative: before the workloads started).
    pub diverged_at: f64,
    /// Why the node said it diverged (its log's `why=`).
    pub why: String,
    /// Rebuild attempts that failed before the one that finished (or before the end).
    pub failed_attempts: u32,
    /// The last attempt: when the stream to the donor opened (the donor may still refuse), and
    /// which donor.
    pub receiving_at: Option<f64>,
    pub donor: Option<String>,
    /// The rebuilt datadir swapped in.
    pub replaced_at: Option<f64>,
    /// Role `replica` again after the swap.
    pub replica_at: Option<f64>,
}

impl Episode {
    /// A finished rebuild: the datadir was replaced.
    pub fn rebuilt(&self) -> bool {
        self.replaced_at.is_some()
    }

    /// One line for the summary.
    pub fn line(&self) -> String {
        let at = |t: Option<f64>| t.map_or_else(|| "-".to_string(), |t| format!("{t:.1}s"));
        format!(
            "node{}: diverged at {:.1}s ({}); {}last attempt (donor {}) at {}, datadir replaced \
             at {}, replica at {}",
            self.node,
            self.diverged_at,
            cut(&self.why, 120),
            if self.failed_attempts > 0 {
                format!("{} failed attempt(s); ", self.failed_attempts)
            } else {
                String::new()
            },
            self.donor.as_deref().unwrap_or("-"),
            at(self.receiving_at),
            at(self.replaced_at),
            at(self.replica_at),
        )
    }
}

fn cut(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The line without terminal colour sequences (`ESC [ … m`), as the node's log has them.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp as tracing writes it
/// (`2026-11-26T07:32:57.615959Z`); `None` for anything else.
pub fn parse_utc(ts: &str) -> Option<f64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let s: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || s >= 61.0 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + mi * 60) as f64 + s)
}

/// The value of `key=` in a log line: up to the next field (` word=`) or the end of the line.
fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    // The next field starts with a space, an identifier and '='.
    let mut end = rest.len();
    for (i, _) in rest.match_indices(' ') {
        let after = &rest[i + 1..];
        let ident = after
            .find('=')
            .map(|e| &after[..e])
            .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if ident.is_some() {
            end = i;
            break;
        }
    }
    Some(rest[..end].trim().trim_matches('"').to_string())
}

/// The rebuild episodes in one node's log. `run_start` is the Unix time of the run's start.
pub fn parse_log(node: NodeIndex, text: &str, run_start: f64) -> Vec<Episode> {
    let mut out: Vec<Episode> = Vec::new();
    for raw in text.lines() {
        let line = strip_ansi(raw);
        let Some(t) = line
            .split_whitespace()
            .next()
            .and_then(parse_utc)
            .map(|t| t - run_start)
        else {
            continue;
        };
        let open = out.last_mut().filter(|e| e.replica_at.is_none());
        if line.contains(" node diverged") {
            if let Some(e) = open.filter(|e| e.replaced_at.is_none()) {
                // The same divergence seen again after a restart: one episode.
                if e.why.is_empty() {
                    e.why = field(&line, "why").unwrap_or_default();
                }
                continue;
            }
            out.push(Episode {
                node,
                diverged_at: t,
                why: field(&line, "why").unwrap_or_default(),
                failed_attempts: 0,
                receiving_at: None,
                donor: None,
                replaced_at: None,
                replica_at: None,
            });
        } else if let Some(e) = open {
            if line.contains("rebuild: receiving a backup") {
                e.receiving_at = Some(t);
                e.donor = field(&line, "donor");
            } else if line.contains("automatic rebuild failed") {
                e.failed_attempts += 1;
            } else if line.contains("rebuild: datadir replaced") {
                e.replaced_at = Some(t);
            } else if e.replaced_at.is_some() && line.contains("role role=\"replica\"") {
                e.replica_at = Some(t);
            }
        }
    }
    out
}

/// The datadirs a rebuild kept under the node's data dir (`mariadb.diverged-<unix time>`).
pub fn kept_datadirs(data_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(data_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("mariadb.diverged-"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_unix_seconds() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_utc("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        let t = parse_utc("2026-11-26T07:32:57.615959Z").unwrap();
        assert!((t - 1_795_678_377.615_959).abs() < 1e-3, "{t}");
        assert_eq!(parse_utc("2026-11-26 07:32:57Z"), None);
        assert_eq!(parse_utc("2026-13-26T07:32:57Z"), None);
        assert_eq!(parse_utc("node diverged"), None);
    }

    #[test]
    fn colour_sequences_are_removed() {
        let raw = "\u{1b}[2m2026-11-26T07:32:57.615959Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
                   \u{1b}[2mquorumsql_node::roles\u{1b}[0m\u{1b}[2m:\u{1b}[0m role \
                   \u{1b}[3mrole\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"starting\"";
        assert_eq!(
            strip_ansi(raw),
            "2026-11-26T07:32:57.615959Z  INFO quorumsql_node::roles: role role=\"starting\""
        );
    }

    #[test]
    fn fields_end_at_the_next_field() {
        let l = "x: node diverged why=local transaction 0-2-7 is not in the log: a=b c";
        assert_eq!(
            field(l, "why").unwrap(),
            "local transaction 0-2-7 is not in the log:"
        );
        let l = "x: rebuild: receiving a backup donor=3";
        assert_eq!(field(l, "donor").unwrap(), "3");
        assert_eq!(field(l, "nope"), None);
    }

    fn line(t: &str, rest: &str) -> String {
        format!("\u{1b}[2m2026-11-26T08:00:{t}Z\u{1b}[0m  INFO quorumsql_node::roles: {rest}\n")
    }

    #[test]
    fn a_log_with_one_rebuild_and_one_unfinished_divergence() {
        let start = parse_utc("2026-11-26T08:00:00Z").unwrap();
        let log = [
            line("01.0", "role role=\"replica\" problems=[]"),
            line(
                "10.0",
                "node diverged why=DDL recovery ran at this start (\"generated by ddl recovery\")",
            ),
            line("10.0", "role role=\"diverged\" problems=[\"diverged: …\"]"),
            line("13.0", "role role=\"rebuilding\" problems=[]"),
            line("13.1", "rebuild: receiving a backup donor=1"),
            line(
                "14.0",
                "automatic rebuild failed error=stream broke retry_in=6s",
            ),
            line("20.0", "rebuild: receiving a backup donor=3"),
            line(
                "25.5",
                "rebuild: datadir replaced donor=3 gtid_state=0-1-99",
            ),
            line("26.0", "role role=\"starting\" problems=[]"),
            line("28.0", "role role=\"replica\" problems=[]"),
            line(
                "40.0",
                "node diverged why=local transaction 0-2-7 is not in the log",
            ),
            // A restart finds the same divergence again: still one episode.
            line(
                "45.0",
                "node diverged why=local transaction 0-2-7 is not in the log",
            ),
            line("48.0", "rebuild: receiving a backup donor=1"),
        ]
        .concat();
        let eps = parse_log(2, &log, start);
        assert_eq!(eps.len(), 2, "{eps:#?}");
        let e = &eps[0];
        assert!(e.rebuilt());
        assert_eq!(e.diverged_at, 10.0);
        assert!(e.why.starts_with("DDL recovery ran"), "{}", e.why);
        assert_eq!(e.failed_attempts, 1);
        assert_eq!(e.donor.as_deref(), Some("3"));
        assert_eq!(e.receiving_at, Some(20.0));
        assert_eq!(e.replaced_at, Some(25.5));
        assert_eq!(e.replica_at, Some(28.0));
        let e = &eps[1];
        assert!(!e.rebuilt());
        assert_eq!(e.diverged_at, 40.0);
        assert_eq!(e.receiving_at, Some(48.0));
        assert_eq!(e.replica_at, None);
        assert!(
            eps[0].line().contains("replica at 28.0s"),
            "{}",
            eps[0].line()
        );
    }

    #[test]
    fn kept_datadirs_are_found_by_name() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "mariadb",
            "mariadb.diverged-1795678377",
            "mariadb.diverged-1795678400",
        ] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        std::fs::write(d.path().join("mariadb.err"), "").unwrap();
        assert_eq!(
            kept_datadirs(d.path()),
            vec!["mariadb.diverged-1795678377", "mariadb.diverged-1795678400"]
        );
        assert!(kept_datadirs(&d.path().join("missing")).is_empty());
    }
}
