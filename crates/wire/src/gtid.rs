//! MariaDB GTIDs (`domain-server-seq`), GTID states (one GTID per domain) and binlog positions.
//!
//! Binlog file names and offsets differ between nodes and are only ever meaningful on the server
//! that wrote them: across nodes QuorumSQL speaks GTIDs only.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One MariaDB global transaction id: replication domain, originating server_id, sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl Gtid {
    pub const fn new(domain: u32, server: u32, seq: u64) -> Self {
        Gtid {
            domain,
            server,
            seq,
        }
    }
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GtidParseError {
    #[error("GTID {0:?} is not of the form domain-server-seq")]
    Malformed(String),
    #[error("GTID state {0:?} names domain {1} twice")]
    DuplicateDomain(String, u32),
}

impl FromStr for Gtid {
    type Err = GtidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || GtidParseError::Malformed(s.to_string());
        let mut parts = s.trim().splitn(3, '-');
        let domain = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let server = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let seq = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        Ok(Gtid {
            domain,
            server,
            seq,
        })
    }
}

/// A GTID state as MariaDB prints `@@gtid_binlog_pos` / `@@gtid_slave_pos`: the last GTID of each
/// replication domain. QuorumSQL uses domain 0 only, but replicas may report others and they must
/// be compared, not ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GtidState {
    domains: BTreeMap<u32, Gtid>,
}

impl GtidState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last GTID recorded for `domain`.
    pub fn get(&self, domain: u32) -> Option<Gtid> {
        self.domains.get(&domain).copied()
    }

    /// Records `gtid` as the newest of its domain.
    pub fn set(&mut self, gtid: Gtid) {
        self.domains.insert(gtid.domain, gtid);
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Gtid> + '_ {
        self.domains.values().copied()
    }
}

impl FromIterator<Gtid> for GtidState {
    fn from_iter<I: IntoIterator<Item = Gtid>>(iter: I) -> Self {
        let mut s = GtidState::new();
        for g in iter {
            s.set(g);
        }
        s
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for g in self.domains.values() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

impl FromStr for GtidState {
    type Err = GtidParseError;
    /// Parses MariaDB's comma-separated list; the empty string is the empty state.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut state = GtidState::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g: Gtid = part.parse()?;
            if state.domains.insert(g.domain, g).is_some() {
                return Err(GtidParseError::DuplicateDomain(s.to_string(), g.domain));
            }
        }
        Ok(state)
    }
}

/// A position in one server's binlog: file base name and byte offset. Only meaningful on the
/// server that wrote it (recorded as a transaction's origin coordinates).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BinlogPos {
    pub file: String,
    pub offset: u64,
}

impl fmt::Display for BinlogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_gtid_states() {
        let s: GtidState = "0-1-33, 1-2-4".parse().expect("valid state");
        assert_eq!(s.get(0), Some(Gtid::new(0, 1, 33)));
        assert_eq!(s.to_string(), "0-1-33,1-2-4");
        assert_eq!("".parse::<GtidState>(), Ok(GtidState::new()));
    }

    #[test]
    fn rejects_malformed_gtids() {
        for bad in ["0-1", "a-b-c", "0-1-2-3", "-1-2", "0--1", "4294967296-1-1"] {
            assert!(bad.parse::<Gtid>().is_err(), "{bad} should not parse");
        }
        assert!(matches!(
            "0-1-2,0-3-4".parse::<GtidState>(),
            Err(GtidParseError::DuplicateDomain(_, 0))
        ));
    }
}
