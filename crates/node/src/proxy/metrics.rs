//! Counters the admin endpoint exports: connections open and total per port, bytes, errors by
//! kind, routing changes. Relaxed atomics: they are statistics, not synchronisation.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a connection got an error or was closed by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    TooManyConnections,
    HandshakeTimeout,
    BadHandshake,
    TlsRequested,
    IdleTimeout,
    NoMaster,
    /// A peer stream arrived at a node that is not the master (never re-forwarded).
    NotMaster,
    RoUnavailable,
    LeaseLost,
    MasterChanged,
    Killed,
    Refused,
    BackendConnect,
    /// The local mariadbd refused the connection before greeting it (its own connection
    /// limit, a blocked host); the client gets mariadbd's error.
    BackendRefused,
    PeerDial,
    BadPeerHeader,
    Io,
    /// mariadbd answered OK to a commit the global binlog does not hold (the commit alarm was
    /// raised); the client got "outcome unknown".
    UnloggedCommit,
    /// Whether a commit is in the global binlog could not be found out in time; the client
    /// got "outcome unknown".
    CommitUnverified,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 19] = [
        ErrorKind::TooManyConnections,
        ErrorKind::HandshakeTimeout,
        ErrorKind::BadHandshake,
        ErrorKind::TlsRequested,
        ErrorKind::IdleTimeout,
        ErrorKind::NoMaster,
        ErrorKind::NotMaster,
        ErrorKind::RoUnavailable,
        ErrorKind::LeaseLost,
        ErrorKind::MasterChanged,
        ErrorKind::Killed,
        ErrorKind::Refused,
        ErrorKind::BackendConnect,
        ErrorKind::BackendRefused,
        ErrorKind::PeerDial,
        ErrorKind::BadPeerHeader,
        ErrorKind::Io,
        ErrorKind::UnloggedCommit,
        ErrorKind::CommitUnverified,
    ];

    /// Stable label for exporters.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::TooManyConnections => "too_many_connections",
            ErrorKind::HandshakeTimeout => "handshake_timeout",
            ErrorKind::BadHandshake => "bad_handshake",
            ErrorKind::TlsRequested => "tls_requested",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::NoMaster => "no_master",
            ErrorKind::NotMaster => "not_master",
            ErrorKind::RoUnavailable => "ro_unavailable",
            ErrorKind::LeaseLost => "lease_lost",
            ErrorKind::MasterChanged => "master_changed",
            ErrorKind::Killed => "killed",
            ErrorKind::Refused => "refused",
            ErrorKind::BackendConnect => "backend_connect",
            ErrorKind::BackendRefused => "backend_refused",
            ErrorKind::PeerDial => "peer_dial",
            ErrorKind::BadPeerHeader => "bad_peer_header",
            ErrorKind::Io => "io",
            ErrorKind::UnloggedCommit => "unlogged_commit",
            ErrorKind::CommitUnverified => "commit_unverified",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one port.
#[derive(Debug, Default)]
pub struct PortMetrics {
    pub(crate) open: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) bytes_from_clients: AtomicU64,
    pub(crate) bytes_to_clients: AtomicU64,
    pub(crate) errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Commits whose GTID was checked against the log before their OK was relayed.
    pub(crate) commit_gtid_checks: AtomicU64,
    /// Of those, the ones the log did not hold yet at the first look (waited for).
    pub(crate) commit_gtid_waits: AtomicU64,
    /// OKs that ended a write transaction without a GTID, held while `SHOW MASTER STATUS` was
    /// asked whether the binlog is open (TEMPORARY tables, or logging off).
    pub(crate) binlog_open_checks: AtomicU64,
}

impl PortMetrics {
    pub(crate) fn error(&self, kind: ErrorKind) {
        self.errors[kind.index()].fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> PortMetricsSnapshot {
        PortMetricsSnapshot {
            open: self.open.load(Relaxed),
            total: self.total.load(Relaxed),
            bytes_from_clients: self.bytes_from_clients.load(Relaxed),
            bytes_to_clients: self.bytes_to_clients.load(Relaxed),
            errors: ErrorKind::ALL
                .iter()
                .map(|k| (*k, self.errors[k.index()].load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            commit_gtid_checks: self.commit_gtid_checks.load(Relaxed),
            commit_gtid_waits: self.commit_gtid_waits.load(Relaxed),
            binlog_open_checks: self.binlog_open_checks.load(Relaxed),
        }
    }
}

/// All proxy counters. Sessions from other nodes' proxies count under `peer_rw` / `peer_ro`.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    pub(crate) rw: PortMetrics,
    pub(crate) ro: PortMetrics,
    pub(crate) peer_rw: PortMetrics,
    pub(crate) peer_ro: PortMetrics,
    pub(crate) routing_changes: AtomicU64,
}

impl ProxyMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            rw: self.rw.snapshot(),
            ro: self.ro.snapshot(),
            peer_rw: self.peer_rw.snapshot(),
            peer_ro: self.peer_ro.snapshot(),
            routing_changes: self.routing_changes.load(Relaxed),
        }
    }
}

/// A copy of one port's counters; `errors` lists only kinds that occurred.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PortMetricsSnapshot {
    pub open: u64,
    pub total: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
    pub errors: Vec<(ErrorKind, u64)>,
    /// See `PortMetrics`: commit checks of the RW relay on the master.
    #[serde(default)]
    pub commit_gtid_checks: u64,
    #[serde(default)]
    pub commit_gtid_waits: u64,
    #[serde(default)]
    pub binlog_open_checks: u64,
}

impl PortMetricsSnapshot {
    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

/// A copy of all counters.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct MetricsSnapshot {
    pub rw: PortMetricsSnapshot,
    pub ro: PortMetricsSnapshot,
    pub peer_rw: PortMetricsSnapshot,
    pub peer_ro: PortMetricsSnapshot,
    pub routing_changes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_counter_and_label() {
        let m = PortMetrics::default();
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?} is out of place in ErrorKind::ALL");
            m.error(*k);
        }
        let s = m.snapshot();
        assert!(ErrorKind::ALL.iter().all(|k| s.errors_of(*k) == 1));
        let labels: std::collections::HashSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
    }
}
