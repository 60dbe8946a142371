//! Durable storage of the raft log: the [`LogStore`] trait, its raft-engine implementation, an
//! in-memory twin for the simulator and the adapter raft-rs reads through.
//!
//! The store keeps: entries after the truncation point, the hard state, the truncation point
//! (index and term of the last discarded entry, needed by raft's log matching), the newest raft
//! snapshot (state machine data at some index), and a few opaque metadata values.

mod adapter;
mod mem;
mod raft_engine;

pub use adapter::RaftStorage;
pub use mem::MemStore;
pub use raft_engine::RaftEngineStore;

use raft::eraftpb::{Entry, HardState, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The requested entries lie below the truncation point.
    #[error("raft log entries up to index {truncated} were compacted away")]
    Compacted { truncated: u64 },
    /// The requested index lies beyond the last entry.
    #[error("raft log index {index} is beyond the last entry {last}")]
    Unavailable { index: u64, last: u64 },
    /// A caller tried to write something the log cannot hold (a hole, an overwrite of compacted
    /// entries). A bug in the caller, reported instead of a panic inside the engine.
    #[error("invalid raft log write: {0}")]
    Invalid(String),
    /// A write or fsync failed. The node must stop: after a failed fsync the kernel may have
    /// dropped the dirty pages, so retrying could report success for lost data (design review 35).
    #[error(
        "raft log storage failed at {dir}: {detail}; this node must stop and be checked (no retry)"
    )]
    Fatal { dir: String, detail: String },
    #[error("raft log storage at {dir} holds undecodable data under {what}: {detail}")]
    Corrupt {
        dir: String,
        what: String,
        detail: String,
    },
}

/// Storage of one node's raft log. Writes with `sync == true` are durable when they return;
/// writes with `sync == false` may be lost by a crash (only together with every later write).
pub trait LogStore {
    /// Appends `entries` (overwriting any conflicting suffix from `entries[0].index` on) and/or
    /// stores `hard_state`, atomically.
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StoreError>;
    /// Entries in `[lo, hi)`, stopping once `max_size` bytes are exceeded (always at least one).
    fn entries(&self, lo: u64, hi: u64, max_size: Option<u64>) -> Result<Vec<Entry>, StoreError>;
    /// Term of entry `index`; the truncation point's term for `index == first_index() - 1`.
    fn term(&self, index: u64) -> Result<u64, StoreError>;
    /// Index of the first retained entry (truncation index + 1).
    fn first_index(&self) -> u64;
    /// Index of the last entry (the truncation index when no entry is retained).
    fn last_index(&self) -> u64;
    fn hard_state(&self) -> HardState;
    /// (index, term) of the last discarded entry; (0, 0) for a log never compacted.
    fn truncated(&self) -> (u64, u64);
    /// Discards entries up to and including `through`, which must be covered by the stored
    /// snapshot (`through <= snapshot index`) so the state machine can still be rebuilt.
    fn compact(&mut self, through: u64, sync: bool) -> Result<(), StoreError>;
    /// Stores a snapshot of this node's own state machine (taken before compacting).
    fn save_snapshot(&mut self, snapshot: &Snapshot, sync: bool) -> Result<(), StoreError>;
    /// Installs a snapshot received from the leader: drops every entry, truncates at the
    /// snapshot's index and term, stores the snapshot and `hard_state`, atomically.
    fn install_snapshot(
        &mut self,
        snapshot: &Snapshot,
        hard_state: &HardState,
        sync: bool,
    ) -> Result<(), StoreError>;
    /// The newest stored snapshot, if any.
    fn snapshot(&self) -> Option<Snapshot>;
    fn put_meta(&mut self, key: &str, value: &[u8], sync: bool) -> Result<(), StoreError>;
    fn get_meta(&self, key: &str) -> Option<Vec<u8>>;
}

/// Truncates `ents` so their total encoded size stays within `max_size`, keeping at least one.
pub(crate) fn limit_size(ents: &mut Vec<Entry>, max_size: Option<u64>) {
    use protobuf::Message;
    let Some(max) = max_size else { return };
    let mut size = 0u64;
    let keep = ents
        .iter()
        .take_while(|e| {
            size += u64::from(e.compute_size());
            size <= max
        })
        .count();
    ents.truncate(keep.max(1));
}

#[cfg(test)]
mod tests;
