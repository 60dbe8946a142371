//! Reads a mariadbd's binlog files from disk into whole transactions (tests build a source from
//! them; roles uses it for the rejoin check: which GTIDs does this server's binlog hold, with
//! which content). Files are read whole; a partial event or an unterminated group at the tail of a
//! file (a crash) is reported, never returned as a transaction.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use quorumsql_wire::event::{
    check_event, event_body, flags, Checksum, EventType, FormatDescription,
};
use quorumsql_wire::txn::{Assembled, TxnAssembler, TxnDigest, TxnDigester};
use quorumsql_wire::{BinlogPos, Gtid};

use super::source::Txn;

/// The magic bytes every binlog file starts with.
pub const BINLOG_MAGIC: &[u8; 4] = b"\xfebin";

#[derive(Debug, thiserror::Error)]
pub enum BinlogFileError {
    #[error("binlog {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binlog {path}: not a binlog file (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("binlog {path} at offset {offset}: {detail}")]
    Malformed {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
}

/// One transaction read from a file, with where it ends there.
#[derive(Debug, Clone)]
pub struct FileTxn {
    pub txn: Txn,
    pub end: BinlogPos,
}

impl FileTxn {
    /// The content digest the log records for a transaction (`quorumsql_wire::txn` docs), to
    /// compare this server's copy of a GTID with the log's.
    pub fn digest(&self) -> Result<TxnDigest, quorumsql_wire::WireError> {
        let mut d = TxnDigester::new(Checksum::Crc32);
        let mut rest: &[u8] = &self.txn.events;
        while rest.len() >= 19 {
            let size = u32::from_le_bytes([rest[9], rest[10], rest[11], rest[12]]) as usize;
            let Some(ev) = rest.get(..size.max(19)) else {
                break;
            };
            d.update(ev)?;
            rest = &rest[ev.len()..];
        }
        Ok(d.finish())
    }
}

/// What one binlog file holds.
#[derive(Debug, Clone)]
pub struct BinlogFile {
    pub path: PathBuf,
    /// The file's FORMAT_DESCRIPTION body (without header and CRC).
    pub fd_body: Bytes,
    /// The FD still has BINLOG_IN_USE: the server did not close the file (running or crashed).
    pub in_use: bool,
    pub txns: Vec<FileTxn>,
    /// A group that was opened but not ended at the end of the file (crash, or still being
    /// written): never part of `txns`.
    pub incomplete_tail: Option<Gtid>,
    /// Bytes at the end that do not form a whole event.
    pub partial_event_bytes: u64,
}

/// Reads one binlog file. Transactions larger than `max_txn_bytes` are an error.
pub fn read_binlog_file(path: &Path, max_txn_bytes: usize) -> Result<BinlogFile, BinlogFileError> {
    let data = std::fs::read(path).map_err(|source| BinlogFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_binlog(path, &data, max_txn_bytes)
}

fn parse_binlog(
    path: &Path,
    data: &[u8],
    max_txn_bytes: usize,
) -> Result<BinlogFile, BinlogFileError> {
    if data.get(..4) != Some(&BINLOG_MAGIC[..]) {
        return Err(BinlogFileError::BadMagic {
            path: path.to_path_buf(),
        });
    }
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bad = |offset: usize, detail: String| BinlogFileError::Malformed {
        path: path.to_path_buf(),
        offset: offset as u64,
        detail,
    };
    let mut off = 4usize;
    let mut fd: Option<(Bytes, bool)> = None;
    let mut checksum = Checksum::Crc32;
    let mut asm = TxnAssembler::new(checksum, max_txn_bytes);
    let mut txns = Vec::new();
    while off + 19 <= data.len() {
        let size = u32::from_le_bytes([
            data[off + 9],
            data[off + 10],
            data[off + 11],
            data[off + 12],
        ]) as usize;
        if size < 19 {
            return Err(bad(off, format!("event size {size}")));
        }
        if off + size > data.len() {
            break;
        }
        let ev = &data[off..off + size];
        let h = check_event(ev).map_err(|e| bad(off, e.to_string()))?;
        if h.event_type == EventType::FormatDescription {
            let f = FormatDescription::decode(ev).map_err(|e| bad(off, e.to_string()))?;
            checksum = f.checksum();
            asm = TxnAssembler::new(checksum, max_txn_bytes);
            let body = event_body(ev, checksum).map_err(|e| bad(off, e.to_string()))?;
            fd = Some((
                Bytes::copy_from_slice(body),
                h.flags & flags::BINLOG_IN_USE != 0,
            ));
            off += size;
            continue;
        }
        let Some((fd_body, _)) = &fd else {
            return Err(bad(off, "event before the FORMAT_DESCRIPTION".into()));
        };
        if checksum == Checksum::Crc32 {
            quorumsql_wire::event::verify_checksum(ev).map_err(|e| bad(off, e.to_string()))?;
        }
        match asm
            .push(Bytes::copy_from_slice(ev))
            .map_err(|e| bad(off, e.to_string()))?
        {
            Assembled::Transaction(t) => {
                let mut events = BytesMut::with_capacity(t.size_bytes());
                for e in &t.events {
                    events.extend_from_slice(e);
                }
                txns.push(FileTxn {
                    txn: Txn {
                        gtid: t.gtid,
                        events: events.freeze(),
                        origin_fd: Some(fd_body.clone()),
                    },
                    end: BinlogPos {
                        file: base.clone(),
                        offset: (off + size) as u64,
                    },
                });
            }
            Assembled::Pending | Assembled::Metadata { .. } => {}
        }
        off += size;
    }
    let Some((fd_body, in_use)) = fd else {
        return Err(bad(4, "no FORMAT_DESCRIPTION event".into()));
    };
    Ok(BinlogFile {
        path: path.to_path_buf(),
        fd_body,
        in_use,
        txns,
        incomplete_tail: asm.open_gtid(),
        partial_event_bytes: (data.len() - off) as u64,
    })
}

/// The files listed in a binlog index file (`mysql-bin.index`), resolved against its directory.
pub fn list_binlog_files(index: &Path) -> Result<Vec<PathBuf>, BinlogFileError> {
    let text = std::fs::read_to_string(index).map_err(|source| BinlogFileError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let p = Path::new(l);
            match p.file_name() {
                Some(name) => dir.join(name),
                None => dir.join(p),
            }
        })
        .collect())
}

/// Every whole transaction of every file listed in `index`, in order.
pub fn read_binlog_index(
    index: &Path,
    max_txn_bytes: usize,
) -> Result<Vec<BinlogFile>, BinlogFileError> {
    list_binlog_files(index)?
        .iter()
        .map(|p| read_binlog_file(p, max_txn_bytes))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::vbinlog::builtin_fd_body;
    use quorumsql_wire::event::{build_event, GtidEvent};

    fn file(groups: &[(u64, bool)]) -> Vec<u8> {
        let mut d = BINLOG_MAGIC.to_vec();
        let fd = FormatDescription::from_body(&builtin_fd_body()).unwrap();
        d.extend_from_slice(&fd.build_event(1, 1, 0, flags::BINLOG_IN_USE));
        for &(seq, complete) in groups {
            d.extend_from_slice(&GtidEvent::new(0, seq, 0x0c).build_event(1, 1, 0, 8));
            if complete {
                d.extend_from_slice(&build_event(
                    EventType::Xid,
                    1,
                    1,
                    0,
                    0,
                    &seq.to_le_bytes(),
                    Checksum::Crc32,
                ));
            }
        }
        d
    }

    #[test]
    fn reads_whole_groups_and_reports_the_unfinished_tail() {
        let mut d = file(&[(1, true), (2, true), (3, false)]);
        d.extend_from_slice(&[1, 2, 3]);
        let f = parse_binlog(Path::new("/x/mysql-bin.000001"), &d, 1 << 20).unwrap();
        assert_eq!(
            f.txns.iter().map(|t| t.txn.gtid.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(f.incomplete_tail, Some(Gtid::new(0, 1, 3)));
        assert_eq!(f.partial_event_bytes, 3);
        assert!(f.in_use);
        assert_eq!(f.txns[1].end.file, "mysql-bin.000001");
        assert_ne!(f.txns[0].digest().unwrap(), f.txns[1].digest().unwrap());
    }

    #[test]
    fn corrupt_files_are_errors() {
        assert!(matches!(
            parse_binlog(Path::new("x"), b"nope", 1 << 20),
            Err(BinlogFileError::BadMagic { .. })
        ));
        let mut d = file(&[(1, true)]);
        let n = d.len();
        d[n - 6] ^= 0xFF;
        assert!(matches!(
            parse_binlog(Path::new("x"), &d, 1 << 20),
            Err(BinlogFileError::Malformed { .. })
        ));
    }
}
