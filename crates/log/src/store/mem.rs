//! In-memory [`LogStore`] for the simulator and unit tests. It models a disk with a page cache:
//! unsynced writes are visible to reads but a [`MemStore::crash`] drops them (all writes after the
//! last synced one), like a power loss.

use std::collections::BTreeMap;

use raft::eraftpb::{Entry, HardState, Snapshot};

use super::{limit_size, LogStore, StoreError};

#[derive(Debug, Clone, Default)]
struct MemState {
    entries: Vec<Entry>,
    truncated: (u64, u64),
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    meta: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Entry>, Option<HardState>),
    Compact(u64),
    SaveSnapshot(Snapshot),
    InstallSnapshot(Snapshot, HardState),
    PutMeta(String, Vec<u8>),
}

impl MemState {
    fn first_index(&self) -> u64 {
        self.truncated.0 + 1
    }
    fn last_index(&self) -> u64 {
        self.truncated.0 + self.entries.len() as u64
    }

    fn check(&self, op: &Op) -> Result<(), StoreError> {
        if let Op::Append(ents, _) = op {
            if let Some(first) = ents.first() {
                if first.index < self.first_index() {
                    return Err(StoreError::Invalid(format!(
                        "append at {} overwrites compacted entries (first retained {})",
                        first.index,
                        self.first_index()
                    )));
                }
                if first.index > self.last_index() + 1 {
                    return Err(StoreError::Invalid(format!(
                        "append at {} leaves a hole after {}",
                        first.index,
                        self.last_index()
                    )));
                }
            }
        }
        if let Op::Compact(through) = op {
            let snap = self.snapshot.as_ref().map_or(0, |s| s.get_metadata().index);
            if *through > snap || *through > self.last_index() {
                return Err(StoreError::Invalid(format!(
                    "compact through {through} beyond snapshot {snap} or last entry {}",
                    self.last_index()
                )));
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(ents, hs) => {
                if let Some(first) = ents.first() {
                    let keep = (first.index - self.first_index()) as usize;
                    self.entries.truncate(keep);
                    self.entries.extend_from_slice(ents);
                }
                if let Some(hs) = hs {
                    self.hard_state = hs.clone();
                }
            }
            Op::Compact(through) => {
                if *through > self.truncated.0 {
                    let n = (*through - self.truncated.0) as usize;
                    let term = self.entries[n - 1].term;
                    self.entries.drain(..n);
                    self.truncated = (*through, term);
                }
            }
            Op::SaveSnapshot(s) => self.snapshot = Some(s.clone()),
            Op::InstallSnapshot(s, hs) => {
                self.entries.clear();
                self.truncated = (s.get_metadata().index, s.get_metadata().term);
                self.snapshot = Some(s.clone());
                self.hard_state = hs.clone();
            }
            Op::PutMeta(k, v) => {
                self.meta.insert(k.clone(), v.clone());
            }
        }
    }
}

/// In-memory log store that loses unsynced writes on [`MemStore::crash`].
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    visible: MemState,
    durable: MemState,
    pending: Vec<Op>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// What survives a power loss: every synced write and nothing after the last one.
    pub fn crash(mut self) -> MemStore {
        self.visible = self.durable.clone();
        self.pending.clear();
        self
    }

    /// Number of writes a crash would lose now.
    pub fn unsynced_writes(&self) -> usize {
        self.pending.len()
    }

    fn write(&mut self, op: Op, sync: bool) -> Result<(), StoreError> {
        self.visible.check(&op)?;
        self.visible.apply(&op);
        if sync {
            for p in self.pending.drain(..) {
                self.durable.apply(&p);
            }
            self.durable.apply(&op);
        } else {
            self.pending.push(op);
        }
        Ok(())
    }
}

impl LogStore for MemStore {
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StoreError> {
        self.write(Op::Append(entries.to_vec(), hard_state.cloned()), sync)
    }

    fn entries(&self, lo: u64, hi: u64, max_size: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let s = &self.visible;
        if lo < s.first_index() {
            return Err(StoreError::Compacted {
                truncated: s.truncated.0,
            });
        }
        if hi > s.last_index() + 1 || lo > hi {
            return Err(StoreError::Unavailable {
                index: hi.saturating_sub(1),
                last: s.last_index(),
            });
        }
        let off = s.first_index();
        let mut v = s.entries[(lo - off) as usize..(hi - off) as usize].to_vec();
        limit_size(&mut v, max_size);
        Ok(v)
    }

    fn term(&self, index: u64) -> Result<u64, StoreError> {
        let s = &self.visible;
        if index == s.truncated.0 {
            return Ok(s.truncated.1);
        }
        if index < s.first_index() {
            return Err(StoreError::Compacted {
                truncated: s.truncated.0,
            });
        }
        if index > s.last_index() {
            return Err(StoreError::Unavailable {
                index,
                last: s.last_index(),
            });
        }
        Ok(s.entries[(index - s.first_index()) as usize].term)
    }

    fn first_index(&self) -> u64 {
        self.visible.first_index()
    }
    fn last_index(&self) -> u64 {
        self.visible.last_index()
    }
    fn hard_state(&self) -> HardState {
        self.visible.hard_state.clone()
    }
    fn truncated(&self) -> (u64, u64) {
        self.visible.truncated
    }
    fn compact(&mut self, through: u64, sync: bool) -> Result<(), StoreError> {
        self.write(Op::Compact(through), sync)
    }
    fn save_snapshot(&mut self, snapshot: &Snapshot, sync: bool) -> Result<(), StoreError> {
        self.write(Op::SaveSnapshot(snapshot.clone()), sync)
    }
    fn install_snapshot(
        &mut self,
        snapshot: &Snapshot,
        hard_state: &HardState,
        sync: bool,
    ) -> Result<(), StoreError> {
        self.write(
            Op::InstallSnapshot(snapshot.clone(), hard_state.clone()),
            sync,
        )
    }
    fn snapshot(&self) -> Option<Snapshot> {
        self.visible.snapshot.clone()
    }
    fn put_meta(&mut self, key: &str, value: &[u8], sync: bool) -> Result<(), StoreError> {
        self.write(Op::PutMeta(key.to_string(), value.to_vec()), sync)
    }
    fn get_meta(&self, key: &str) -> Option<Vec<u8>> {
        self.visible.meta.get(key).cloned()
    }
}
