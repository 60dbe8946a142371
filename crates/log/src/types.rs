//! Domain types shared by the whole log: epochs, proposal ids and CLOCK_BOOTTIME instants.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use quorumsql_peer::NodeId;
pub use quorumsql_wire::{BinlogPos, Gtid, GtidState};

/// A master epoch: the raft term in which a master was promoted (DESIGN §3). Appends carry the
/// epoch of the master that captured them; the state machine compares it with raft terms, so the
/// two share one number space on purpose.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch{}", self.0)
    }
}

/// Identifies one proposal of this node so its outcome can be routed back to the proposer.
/// Chosen by the caller; unique per node process (the core does not check uniqueness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProposalId(pub u64);

impl fmt::Display for ProposalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal{}", self.0)
    }
}

/// An instant on CLOCK_BOOTTIME in nanoseconds. BOOTTIME keeps counting while the machine is
/// suspended (CLOCK_MONOTONIC and Rust's `Instant` do not), so a lease computed on it cannot be
/// mistaken for fresh after a resume (design review 10).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct BootInstant(pub u64);

impl BootInstant {
    /// Reads CLOCK_BOOTTIME. Only the runtime calls this; the sans-IO core receives time as an
    /// argument so the simulator can drive it.
    pub fn now() -> BootInstant {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec and CLOCK_BOOTTIME exists on every Linux
        // kernel we support (>= 2.6.39).
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        if rc != 0 {
            // clock_gettime on a supported clock id cannot fail; if it ever did, time standing
            // still is the safe direction: leases computed from it only get shorter.
            return BootInstant(0);
        }
        BootInstant((ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64)
    }

    pub fn from_nanos(n: u64) -> BootInstant {
        BootInstant(n)
    }

    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    #[allow(clippy::should_implement_trait)] // saturating, unlike `Add`
    pub fn add(self, d: Duration) -> BootInstant {
        BootInstant(self.0.saturating_add(duration_nanos(d)))
    }

    /// `self - d`, saturating at zero.
    #[allow(clippy::should_implement_trait)] // saturating, unlike `Sub`
    pub fn sub(self, d: Duration) -> BootInstant {
        BootInstant(self.0.saturating_sub(duration_nanos(d)))
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_since(self, earlier: BootInstant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for BootInstant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Converts a raft node id to ours. Raft ids are our node ids (never reused, never 0).
pub(crate) fn node(id: u64) -> NodeId {
    NodeId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_advances() {
        let a = BootInstant::now();
        let b = BootInstant::now();
        assert!(a.0 > 0, "CLOCK_BOOTTIME read as zero");
        assert!(b >= a);
    }

    #[test]
    fn instant_arithmetic_saturates() {
        let t = BootInstant(5);
        assert_eq!(t.sub(Duration::from_nanos(10)), BootInstant(0));
        assert_eq!(
            BootInstant(u64::MAX).add(Duration::from_secs(1)),
            BootInstant(u64::MAX)
        );
        assert_eq!(t.saturating_since(BootInstant(9)), Duration::ZERO);
        assert_eq!(BootInstant(9).saturating_since(t), Duration::from_nanos(4));
    }
}
