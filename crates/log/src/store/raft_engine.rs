//! [`LogStore`] on raft-engine 0.4 (TiKV's raft log engine). Every write with `sync == true` is
//! fdatasync'ed before it returns; any write error is [`StoreError::Fatal`] and never retried.

use std::path::{Path, PathBuf};

use raft::eraftpb::{Entry, HardState, Snapshot};
use raft_engine::{Command, Config, Engine, LogBatch, MessageExt, ReadableSize};

use super::{LogStore, StoreError};

/// The single raft group of the global binlog inside the engine.
const GROUP: u64 = 1;
const KEY_HARD_STATE: &[u8] = b"hs";
const KEY_TRUNCATED: &[u8] = b"truncated";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const META_PREFIX: &str = "meta/";

#[derive(Clone)]
struct EntryExt;
impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// raft-engine backed log store in one directory.
pub struct RaftEngineStore {
    engine: Engine,
    dir: PathBuf,
    hard_state: HardState,
    truncated: (u64, u64),
    snapshot: Option<Snapshot>,
}

impl std::fmt::Debug for RaftEngineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftEngineStore")
            .field("dir", &self.dir)
            .finish()
    }
}

impl RaftEngineStore {
    /// Opens (creating if needed) the log in `dir` and recovers what was synced.
    pub fn open(dir: &Path) -> Result<RaftEngineStore, StoreError> {
        let dir_s = dir.display().to_string();
        let cfg = Config {
            dir: dir_s.clone(),
            target_file_size: ReadableSize::mb(64),
            purge_threshold: ReadableSize::gb(2),
            ..Default::default()
        };
        let engine = Engine::open(cfg).map_err(|e| StoreError::Fatal {
            dir: dir_s.clone(),
            detail: format!("open: {e}"),
        })?;
        let corrupt = |what: &str, e: String| StoreError::Corrupt {
            dir: dir_s.clone(),
            what: what.to_string(),
            detail: e,
        };
        let hard_state = engine
            .get_message::<HardState>(GROUP, KEY_HARD_STATE)
            .map_err(|e| corrupt("hard state", e.to_string()))?
            .unwrap_or_default();
        let snapshot = engine
            .get_message::<Snapshot>(GROUP, KEY_SNAPSHOT)
            .map_err(|e| corrupt("snapshot", e.to_string()))?;
        let truncated = match engine.get(GROUP, KEY_TRUNCATED) {
            None => (0, 0),
            Some(v) => decode_truncated(&v)
                .ok_or_else(|| corrupt("truncation point", format!("{} bytes", v.len())))?,
        };
        Ok(RaftEngineStore {
            engine,
            dir: dir.to_path_buf(),
            hard_state,
            truncated,
            snapshot,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write(&mut self, batch: &mut LogBatch, sync: bool) -> Result<(), StoreError> {
        self.engine
            .write(batch, sync)
            .map(|_| ())
            .map_err(|e| self.fatal(format!("write (sync={sync}): {e}")))
    }

    fn fatal(&self, detail: String) -> StoreError {
        StoreError::Fatal {
            dir: self.dir.display().to_string(),
            detail,
        }
    }

    fn encode_err(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        self.fatal(format!("encode {what}: {e}"))
    }
}

fn encode_truncated(t: (u64, u64)) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&t.0.to_le_bytes());
    v.extend_from_slice(&t.1.to_le_bytes());
    v
}

fn decode_truncated(v: &[u8]) -> Option<(u64, u64)> {
    let a: [u8; 8] = v.get(..8)?.try_into().ok()?;
    let b: [u8; 8] = v.get(8..16)?.try_into().ok()?;
    Some((u64::from_le_bytes(a), u64::from_le_bytes(b)))
}

impl LogStore for RaftEngineStore {
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StoreError> {
        let mut batch = LogBatch::default();
        if let Some(first) = entries.first() {
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
            batch
                .add_entries::<EntryExt>(GROUP, entries)
                .map_err(|e| self.encode_err("entries", e))?;
        }
        if let Some(hs) = hard_state {
            batch
                .put_message(GROUP, KEY_HARD_STATE.to_vec(), hs)
                .map_err(|e| self.encode_err("hard state", e))?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.write(&mut batch, sync)?;
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    fn entries(&self, lo: u64, hi: u64, max_size: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        if lo < self.first_index() {
            return Err(StoreError::Compacted {
                truncated: self.truncated.0,
            });
        }
        if hi > self.last_index() + 1 || lo > hi {
            return Err(StoreError::Unavailable {
                index: hi.saturating_sub(1),
                last: self.last_index(),
            });
        }
        let mut out = Vec::with_capacity((hi - lo) as usize);
        if lo == hi {
            return Ok(out);
        }
        let max = max_size.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        self.engine
            .fetch_entries_to::<EntryExt>(GROUP, lo, hi, max, &mut out)
            .map_err(|e| self.fatal(format!("read entries [{lo}, {hi}): {e}")))?;
        if out.is_empty() {
            return Err(self.fatal(format!(
                "entries [{lo}, {hi}) missing although within the log"
            )));
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> Result<u64, StoreError> {
        if index == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if index < self.first_index() {
            return Err(StoreError::Compacted {
                truncated: self.truncated.0,
            });
        }
        if index > self.last_index() {
            return Err(StoreError::Unavailable {
                index,
                last: self.last_index(),
            });
        }
        match self.engine.get_entry::<EntryExt>(GROUP, index) {
            Ok(Some(e)) => Ok(e.term),
            Ok(None) => Err(self.fatal(format!("entry {index} missing although within the log"))),
            Err(e) => Err(self.fatal(format!("read entry {index}: {e}"))),
        }
    }

    fn first_index(&self) -> u64 {
        self.truncated.0 + 1
    }

    fn last_index(&self) -> u64 {
        self.engine
            .last_index(GROUP)
            .unwrap_or(self.truncated.0)
            .max(self.truncated.0)
    }

    fn hard_state(&self) -> HardState {
        self.hard_state.clone()
    }

    fn truncated(&self) -> (u64, u64) {
        self.truncated
    }

    fn compact(&mut self, through: u64, sync: bool) -> Result<(), StoreError> {
        if through <= self.truncated.0 {
            return Ok(());
        }
        let snap = self.snapshot.as_ref().map_or(0, |s| s.get_metadata().index);
        if through > snap || through > self.last_index() {
            return Err(StoreError::Invalid(format!(
                "compact through {through} beyond snapshot {snap} or last entry {}",
                self.last_index()
            )));
        }
        let term = self.term(through)?;
        let mut batch = LogBatch::default();
        batch.add_command(GROUP, Command::Compact { index: through + 1 });
        batch
            .put(
                GROUP,
                KEY_TRUNCATED.to_vec(),
                encode_truncated((through, term)),
            )
            .map_err(|e| self.encode_err("truncation point", e))?;
        self.write(&mut batch, sync)?;
        self.truncated = (through, term);
        // Reclaiming files is best effort: failing to delete old files loses nothing.
        if let Err(e) = self.engine.purge_expired_files() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "raft-engine purge failed");
        }
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot, sync: bool) -> Result<(), StoreError> {
        let mut batch = LogBatch::default();
        batch
            .put_message(GROUP, KEY_SNAPSHOT.to_vec(), snapshot)
            .map_err(|e| self.encode_err("snapshot", e))?;
        self.write(&mut batch, sync)?;
        self.snapshot = Some(snapshot.clone());
        Ok(())
    }

    fn install_snapshot(
        &mut self,
        snapshot: &Snapshot,
        hard_state: &HardState,
        sync: bool,
    ) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata();
        let truncated = (meta.index, meta.term);
        let mut batch = LogBatch::default();
        // Clean drops the whole group (entries and keys); the keys are written again after it in
        // the same atomic batch, and replay applies the items in order.
        batch.add_command(GROUP, Command::Clean);
        let metas: Vec<(String, Vec<u8>)> = self.meta_pairs()?;
        batch
            .put_message(GROUP, KEY_SNAPSHOT.to_vec(), snapshot)
            .map_err(|e| self.encode_err("snapshot", e))?;
        batch
            .put_message(GROUP, KEY_HARD_STATE.to_vec(), hard_state)
            .map_err(|e| self.encode_err("hard state", e))?;
        batch
            .put(GROUP, KEY_TRUNCATED.to_vec(), encode_truncated(truncated))
            .map_err(|e| self.encode_err("truncation point", e))?;
        for (k, v) in metas {
            batch
                .put(GROUP, k.into_bytes(), v)
                .map_err(|e| self.encode_err("metadata", e))?;
        }
        self.write(&mut batch, sync)?;
        self.snapshot = Some(snapshot.clone());
        self.hard_state = hard_state.clone();
        self.truncated = truncated;
        Ok(())
    }

    fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot.clone()
    }

    fn put_meta(&mut self, key: &str, value: &[u8], sync: bool) -> Result<(), StoreError> {
        let mut batch = LogBatch::default();
        batch
            .put(
                GROUP,
                format!("{META_PREFIX}{key}").into_bytes(),
                value.to_vec(),
            )
            .map_err(|e| self.encode_err("metadata", e))?;
        self.write(&mut batch, sync)
    }

    fn get_meta(&self, key: &str) -> Option<Vec<u8>> {
        self.engine
            .get(GROUP, format!("{META_PREFIX}{key}").as_bytes())
    }
}

impl RaftEngineStore {
    fn meta_pairs(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let start = META_PREFIX.as_bytes();
        self.engine
            .scan_raw_messages(GROUP, Some(start), None, false, |k, v| {
                if k.starts_with(start) {
                    out.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
                    true
                } else {
                    false
                }
            })
            .map_err(|e| self.fatal(format!("scan metadata: {e}")))?;
        Ok(out)
    }
}
