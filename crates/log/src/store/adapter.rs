//! raft-rs reads the log through this adapter over a [`LogStore`].

use raft::eraftpb::{ConfState, Entry, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::{LogStore, StoreError};

/// Implements `raft::Storage` over a [`LogStore`]. The configuration raft starts from is the one
/// of the stored snapshot (or the bootstrap configuration): the core replays every entry after
/// the snapshot through the state machine, conf changes included, on each start.
pub struct RaftStorage<S: LogStore> {
    store: S,
    initial_conf: ConfState,
}

impl<S: LogStore> RaftStorage<S> {
    pub fn new(store: S, initial_conf: ConfState) -> RaftStorage<S> {
        RaftStorage {
            store,
            initial_conf,
        }
    }
    pub fn store(&self) -> &S {
        &self.store
    }
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }
    pub fn into_store(self) -> S {
        self.store
    }
    pub fn set_initial_conf(&mut self, cs: ConfState) {
        self.initial_conf = cs;
    }
}

pub(crate) fn to_raft_error(e: StoreError) -> raft::Error {
    match e {
        StoreError::Compacted { .. } => raft::Error::Store(StorageError::Compacted),
        StoreError::Unavailable { .. } => raft::Error::Store(StorageError::Unavailable),
        other => raft::Error::Store(StorageError::Other(Box::new(other))),
    }
}

impl<S: LogStore> raft::Storage for RaftStorage<S> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let conf = match self.store.snapshot() {
            Some(s) => s.get_metadata().get_conf_state().clone(),
            None => self.initial_conf.clone(),
        };
        Ok(RaftState::new(self.store.hard_state(), conf))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.store
            .entries(low, high, max_size.into())
            .map_err(to_raft_error)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.store.term(idx).map_err(to_raft_error)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.store.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.store.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match self.store.snapshot() {
            Some(s) if s.get_metadata().index >= request_index => Ok(s),
            _ => Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            )),
        }
    }
}
