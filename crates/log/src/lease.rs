//! The master lease (DESIGN §3 "Lease", docs/LEASE.md for why it is sound).
//!
//! Each round is a raft `read_index` (ReadOnlyOption::Safe) whose context carries the term and the
//! CLOCK_BOOTTIME instant the round was started. Raft releases the ReadState only after a quorum
//! (a joint quorum during a membership change) answered the heartbeat carrying that context, and
//! every answering follower had reset its election timer when it received it, so at or after the
//! send instant. The lease then runs until `sent + length()`; a later round never lends its time
//! to an earlier one and an earlier one never to a later one.

use std::time::Duration;

use crate::types::{duration_nanos, BootInstant};

/// Leading bytes of a lease round's read_index context, to tell it from other read requests.
const CTX_MAGIC: &[u8; 3] = b"QLR";
const CTX_LEN: usize = 3 + 8 + 8;

/// The numbers the lease length is derived from. All nodes must run the same tick and election
/// settings (checked at the peer handshake by the runtime).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseParams {
    pub tick_interval: Duration,
    /// raft `election_tick` (the minimum election timeout in ticks; followers refuse votes for
    /// this many ticks after hearing from the leader).
    pub election_ticks: usize,
    /// Bound on relative clock drift between any two nodes, as a fraction: over any interval,
    /// every node's clock advances at least `(1 - max_drift)` times what any other node's does.
    pub max_drift: f64,
    /// Safety margin; also the longest tolerated scheduling gap.
    pub margin: Duration,
}

impl LeaseParams {
    /// The shortest time, on a follower's own clock, during which it refuses votes after hearing
    /// from the leader: `election_ticks` ticks, minus one tick because the heartbeat may arrive
    /// just before a tick fires (raft counts whole ticks).
    pub fn follower_refusal(&self) -> Duration {
        self.tick_interval.saturating_mul(
            u32::try_from(self.election_ticks.saturating_sub(1)).unwrap_or(u32::MAX),
        )
    }

    /// Lease length after a round's send instant, on the leader's clock:
    /// `follower_refusal × (1 − max_drift) − margin`, zero if that is negative.
    pub fn length(&self) -> Duration {
        let drift = self.max_drift.clamp(0.0, 1.0);
        let refusal = duration_nanos(self.follower_refusal()) as f64;
        let scaled = (refusal * (1.0 - drift)).floor();
        let scaled = if scaled.is_finite() && scaled > 0.0 {
            Duration::from_nanos(scaled as u64)
        } else {
            Duration::ZERO
        };
        scaled.saturating_sub(self.margin)
    }
}

/// A lease round's context: the term it was started in and its send instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundContext {
    pub term: u64,
    pub sent: BootInstant,
}

impl RoundContext {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(CTX_LEN);
        v.extend_from_slice(CTX_MAGIC);
        v.extend_from_slice(&self.term.to_le_bytes());
        v.extend_from_slice(&self.sent.0.to_le_bytes());
        v
    }

    /// `None` for contexts that are not lease rounds (other read_index users).
    pub fn decode(ctx: &[u8]) -> Option<RoundContext> {
        if ctx.len() != CTX_LEN || !ctx.starts_with(CTX_MAGIC) {
            return None;
        }
        let term = u64::from_le_bytes(ctx[3..11].try_into().ok()?);
        let sent = u64::from_le_bytes(ctx[11..19].try_into().ok()?);
        Some(RoundContext {
            term,
            sent: BootInstant(sent),
        })
    }
}

/// Lease bookkeeping of one node. Pure arithmetic; the core decides when the node may hold it
/// (leader of the round's term, not transferring).
#[derive(Debug, Clone)]
pub struct Lease {
    params: LeaseParams,
    term: u64,
    until: Option<BootInstant>,
    /// Rounds sent before this instant are ignored (the lease was voided after them).
    not_before: BootInstant,
    last_seen: Option<BootInstant>,
}

impl Lease {
    pub fn new(params: LeaseParams) -> Lease {
        Lease {
            params,
            term: 0,
            until: None,
            not_before: BootInstant(0),
            last_seen: None,
        }
    }

    pub fn params(&self) -> &LeaseParams {
        &self.params
    }

    /// Called on every entry into the core with the current time. A gap longer than the margin
    /// since the previous call (process pause, VM freeze, overloaded loop) voids the lease and
    /// every round sent before now. Returns that gap when it voided the lease, so the caller
    /// can tell an operator the node was starved or paused.
    pub fn observe(&mut self, now: BootInstant) -> Option<Duration> {
        let mut gap = None;
        if let Some(prev) = self.last_seen {
            let since = now.saturating_since(prev);
            if since > self.params.margin {
                self.void(now);
                gap = Some(since);
            }
            if now < prev {
                // BOOTTIME never goes back; if the caller's clock did, trust nothing before now.
                self.void(now);
            }
        }
        self.last_seen = Some(now.max(self.last_seen.unwrap_or(now)));
        gap
    }

    /// Gives the lease up and ignores every round started before `now`.
    pub fn void(&mut self, now: BootInstant) {
        self.until = None;
        self.not_before = self.not_before.max(now);
    }

    /// Starts a round in `term` at `now`; the returned bytes are the read_index context.
    pub fn start_round(&mut self, term: u64, now: BootInstant) -> Vec<u8> {
        RoundContext { term, sent: now }.encode()
    }

    /// A quorum echoed round `ctx`. `term` is the node's current term; the caller only passes
    /// rounds while it is leader and not transferring.
    pub fn on_quorum_ack(&mut self, ctx: &RoundContext, term: u64) {
        if ctx.term != term || ctx.sent < self.not_before {
            return;
        }
        if self.term != term {
            self.term = term;
            self.until = None;
        }
        let end = ctx.sent.add(self.params.length());
        if self.until.is_none_or(|u| end > u) {
            self.until = Some(end);
        }
    }

    /// End of the lease held in `term`, if any (may lie in the past: compare with the clock).
    pub fn valid_until(&self, term: u64) -> Option<BootInstant> {
        if self.term == term {
            self.until
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> LeaseParams {
        LeaseParams {
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            max_drift: 0.01,
            margin: Duration::from_millis(50),
        }
    }

    #[test]
    fn length_follows_the_formula() {
        // (10 - 1) ticks x 100 ms = 900 ms; x 0.99 = 891 ms; - 50 ms = 841 ms.
        assert_eq!(params().length(), Duration::from_millis(841));
        let tiny = LeaseParams {
            margin: Duration::from_secs(5),
            ..params()
        };
        assert_eq!(tiny.length(), Duration::ZERO);
        let mad = LeaseParams {
            max_drift: 7.0,
            ..params()
        };
        assert_eq!(mad.length(), Duration::ZERO);
    }

    #[test]
    fn lease_runs_from_its_own_round_and_never_backwards() {
        let mut l = Lease::new(params());
        let t = |ms: u64| BootInstant(ms * 1_000_000);
        l.observe(t(1000));
        let late = RoundContext {
            term: 3,
            sent: t(1000),
        };
        let early = RoundContext {
            term: 3,
            sent: t(900),
        };
        l.on_quorum_ack(&late, 3);
        assert_eq!(l.valid_until(3), Some(t(1841)));
        // A slower echo of an earlier round does not shorten or extend it.
        l.on_quorum_ack(&early, 3);
        assert_eq!(l.valid_until(3), Some(t(1841)));
        // Another term's round gives nothing; the lease is only for its term.
        l.on_quorum_ack(
            &RoundContext {
                term: 2,
                sent: t(1010),
            },
            3,
        );
        assert_eq!(l.valid_until(3), Some(t(1841)));
        assert_eq!(l.valid_until(4), None);
    }

    #[test]
    fn a_scheduling_gap_voids_the_lease_and_older_rounds() {
        let mut l = Lease::new(params());
        let t = |ms: u64| BootInstant(ms * 1_000_000);
        l.observe(t(1000));
        l.on_quorum_ack(
            &RoundContext {
                term: 1,
                sent: t(1000),
            },
            1,
        );
        assert_eq!(l.observe(t(1040)), None, "a 40 ms gap is within the margin");
        assert!(l.valid_until(1).is_some());
        // 60 ms gap > 50 ms margin
        assert_eq!(l.observe(t(1100)), Some(Duration::from_millis(60)));
        assert_eq!(l.valid_until(1), None);
        l.on_quorum_ack(
            &RoundContext {
                term: 1,
                sent: t(1090),
            },
            1,
        );
        assert_eq!(
            l.valid_until(1),
            None,
            "round sent before the gap ended must not count"
        );
        l.on_quorum_ack(
            &RoundContext {
                term: 1,
                sent: t(1100),
            },
            1,
        );
        assert_eq!(l.valid_until(1), Some(t(1941)));
    }

    #[test]
    fn context_round_trips_and_rejects_foreign_contexts() {
        let c = RoundContext {
            term: 7,
            sent: BootInstant(42),
        };
        assert_eq!(RoundContext::decode(&c.encode()), Some(c));
        assert_eq!(RoundContext::decode(b"r1"), None);
        let mut bad = c.encode();
        bad[0] = b'X';
        assert_eq!(RoundContext::decode(&bad), None);
    }
}
