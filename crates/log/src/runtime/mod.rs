//! The log runtime: a dedicated OS thread that drives the sans-IO [`LogCore`](crate::LogCore) with
//! the real clock (CLOCK_BOOTTIME) and the peer transport, and an async [`LogHandle`] for the rest
//! of the node.
//!
//! Why a thread: raft-engine's synced writes block on fdatasync, which must never stall a tokio
//! worker. The thread loop:
//! 1. waits for the first event (a frame from the peer transport's channel, read directly by the
//!    thread; a request) or the next deadline (tick, lease round, and at least every
//!    `lease_margin / 2` so the lease never sees a false scheduling gap);
//! 2. drains *every* queued event: raft messages are stepped, proposals queued in the core, so many
//!    proposals become one entry and one fsync (group commit); member reports are recorded;
//! 3. ticks (at most one raft tick per whole interval elapsed, never faster than the clock),
//!    starts a lease round every heartbeat interval, proposes member reports (leader only), and
//!    polls the core in two phases: the leader's messages (appends, heartbeats) are sent *before*
//!    its own fsync, so leader and followers persist in parallel; the rest (votes, append
//!    responses) only after it. A follower's append responses leave the moment its fsync
//!    returns, before it applies committed entries (`LogCore::finish_poll_with`); a leader
//!    answers the proposals a Ready commits before it fsyncs that Ready's new entries
//!    (`LogCore::apply_before_persist`). Messages go through
//!    [`PeerNet`](quorumsql_peer::PeerNet) — heartbeats, votes, lease rounds and append
//!    responses on the urgent lane, entries on the bulk lane — and unreachable peers are
//!    reported to raft;
//! 4. answers proposers, compacts the log now and then (`crate::retention`), and publishes
//!    status, the applied position and the lease.
//!
//! A store failure is fatal: the thread stops, every waiting proposer gets
//! [`ProposeError::Stopped`](crate::ProposeError::Stopped), and [`LogHandle::fatal`] says why.

mod driver;
mod handle;
mod park;
pub mod realtime;
mod report;
mod ticker;
mod wire;

use std::time::Duration;

pub use driver::LogRuntime;
pub use handle::{AppliedPosition, LogHandle, ProposalTicket, Proposed, SeqLookup};
pub use wire::WireError;

use crate::core::LogConfig;

/// Settings of the runtime around a [`LogConfig`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The core's settings. The defaults of [`LogConfig::new`] are kept on purpose: 100 ms ticks,
    /// elections after 10–20 ticks (1–2 s), heartbeats every 2 ticks (200 ms), 1% drift and a
    /// 100 ms lease margin give a lease of about 0.79 s renewed every 0.2 s, and a failover in
    /// 1–3 s. Every node must use the same values (see [`handshake_params`]).
    pub log: LogConfig,
    /// How often the leader starts a lease round; defaults to the heartbeat interval.
    pub lease_round_interval: Duration,
    /// Log retention cap: entries applied beyond this many are compacted even if a member still
    /// needs them (that member is then marked for rebuild, DESIGN §3).
    pub retain_max_entries: u64,
    /// How often the runtime considers compacting its log.
    pub compact_interval: Duration,
    /// Compaction writes a state machine snapshot (synced) on the runtime thread, so it waits
    /// until at least this many entries can go.
    pub compact_min_entries: u64,
    /// Entries kept below the members' retention point, so that a deposed leader's
    /// conflicting tail is resolved from the log rather than by a snapshot (see
    /// `LogCore::set_compaction_slack`).
    pub compaction_slack_entries: u64,
    /// Run the log thread under `SCHED_RR` at this priority (see [`realtime`]); `None` leaves it
    /// at normal priority. If the process may not, the thread says so and runs anyway.
    pub realtime_priority: Option<u8>,
}

impl RuntimeConfig {
    pub fn new(log: LogConfig) -> RuntimeConfig {
        let hb = u32::try_from(log.heartbeat_ticks).unwrap_or(u32::MAX);
        RuntimeConfig {
            lease_round_interval: log.tick_interval.saturating_mul(hb),
            log,
            retain_max_entries: 100_000,
            compact_interval: Duration::from_secs(10),
            compact_min_entries: 1_000,
            compaction_slack_entries: 1_024,
            realtime_priority: None,
        }
    }
}

/// The bytes every node must present identically at the peer handshake
/// (`PeerConfig::handshake_params`): the tick, election, lease and entry settings the lease's
/// soundness depends on (DESIGN §3). Readable text, so a mismatch log line is self-explaining.
pub fn handshake_params(log: &LogConfig) -> Vec<u8> {
    format!(
        "quorumsql-log/1 tick_ms={} election_ticks={}..{} heartbeat_ticks={} max_drift={} lease_margin_ms={} entry_cap={}",
        log.tick_interval.as_millis(),
        log.election_ticks,
        log.election_ticks_max,
        log.heartbeat_ticks,
        log.max_drift,
        log.lease_margin.as_millis(),
        log.entry_cap
    )
    .into_bytes()
}

#[cfg(test)]
mod tests;
