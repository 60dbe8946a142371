//! The disk's own commit latency: what one `write(1 KiB) + fdatasync` costs in the log directory.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::stats::Latencies;

/// How the probe file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Append to a growing file: every sync also commits the file size (a journal commit on ext4).
    Append,
    /// Overwrite a file whose blocks already exist, as raft-engine does with its preallocated log
    /// files: the sync only flushes data.
    Preallocated,
}

const PREALLOCATED_BYTES: u64 = 16 << 20;

/// Writes 1 KiB records with `fdatasync` after each, for `duration`.
pub fn measure(dir: &Path, duration: Duration, probe: Probe) -> std::io::Result<Latencies> {
    let path = dir.join("fsync-probe.bin");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    if probe == Probe::Preallocated {
        fill(&mut f)?;
    }
    let record = [0x5au8; 1024];
    let mut lat = Latencies::default();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        f.write_all(&record)?;
        f.sync_data()?;
        lat.record(t.elapsed());
        let wrap = match probe {
            Probe::Append => 64 << 20,
            Probe::Preallocated => PREALLOCATED_BYTES - 1024,
        };
        if f.stream_position()? >= wrap {
            f.seek(SeekFrom::Start(0))?;
        }
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(lat)
}

fn fill(f: &mut File) -> std::io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..PREALLOCATED_BYTES / chunk.len() as u64 {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    f.seek(SeekFrom::Start(0))?;
    Ok(())
}
