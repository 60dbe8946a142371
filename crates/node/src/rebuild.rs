//! Rebuilding a node's mariadbd from a healthy replica (DESIGN §3, rejoin check): the donor
//! streams a `mariadb-backup` over an authenticated peer stream; the joiner unpacks and prepares
//! it, swaps it in for its datadir (the old one is kept beside it, renamed), and leaves a marker
//! with the backup's GTID state. At the next start roles runs `RESET MASTER` and sets
//! `gtid_binlog_state` / `gtid_slave_pos` to that state, and the node replicates from there.
//!
//! Only a healthy *replica* donates: a replica's data holds only transactions the log accepted
//! and committed. A master's binlog can hold a transaction still waiting for its ACK, which the
//! log may never accept; a copy of it would make the joiner diverge again.
//!
//! The stream is framed (`LengthDelimitedCodec`): the donor's first frame says whether it
//! donates; data frames follow; the last frame carries mariadb-backup's exit status, so a
//! donor that dies mid-stream is a failed rebuild, never a silently truncated datadir.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::config::NodeConfig;
use crate::mariadb::mark_initialized;

/// The joiner's marker: the GTID state its new datadir was backed up at. Present from the swap
/// until the first start has applied it.
pub const REBUILD_MARKER: &str = "rebuild_gtid_state";

const MAX_FRAME: usize = 1 << 20;
const DATA_CHUNK: usize = 256 * 1024;
const TAG_DONATING: u8 = b'O';
const TAG_REFUSED: u8 = b'R';
const TAG_DATA: u8 = b'D';
const TAG_END: u8 = b'E';

/// One backup at a time per donor: each costs a full read of the datadir.
static DONATING: AtomicBool = AtomicBool::new(false);

/// Why a rebuild did not complete. The old datadir is untouched unless the error says so.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("donor node{donor} refused: {reason}")]
    Refused { donor: u64, reason: String },
    #[error("donor node{donor}'s mariadb-backup failed (exit {status}): {tail}")]
    DonorFailed {
        donor: u64,
        status: i32,
        tail: String,
    },
    #[error("the stream from donor node{donor} broke off before the backup's end: {why}")]
    Truncated { donor: u64, why: String },
    #[error("{program} failed: {why} (see {log})")]
    Tool {
        program: String,
        why: String,
        log: PathBuf,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the backup carries no readable GTID position ({path}): {why}")]
    NoGtid { path: PathBuf, why: String },
}

impl RebuildError {
    fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        RebuildError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + body.len());
    b.put_u8(tag);
    b.put_slice(body);
    b.freeze()
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Donor side: streams a backup of the local mariadbd when `donate` is `Ok`, else tells the
/// joiner why not. Never returns an error: a failure is reported to the joiner and logged.
pub async fn serve_backup(
    cfg: &NodeConfig,
    socket: &Path,
    stream: TcpStream,
    donate: Result<(), String>,
) {
    let mut framed = Framed::new(stream, codec());
    let refusal = match donate {
        Err(why) => Some(why),
        Ok(()) if DONATING.swap(true, Ordering::AcqRel) => {
            Some("this node is already sending a backup".to_string())
        }
        Ok(()) => None,
    };
    if let Some(why) = refusal {
        let _ = framed.send(frame(TAG_REFUSED, why.as_bytes())).await;
        return;
    }
    let result = stream_backup(cfg, socket, &mut framed).await;
    DONATING.store(false, Ordering::Release);
    match result {
        Ok(()) => tracing::info!("rebuild: backup sent"),
        Err(e) => tracing::warn!(error = %e, "rebuild: sending a backup failed"),
    }
}

async fn stream_backup(
    cfg: &NodeConfig,
    socket: &Path,
    framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
) -> Result<(), String> {
    let base = &cfg.node.data_dir;
    let tmp = base.join("backup.tmp");
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    tokio::fs::create_dir_all(&tmp)
        .await
        .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let log_path = base.join("backup-donor.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let mut child = Command::new(&cfg.mariadb.mariadb_backup)
        .arg("--backup")
        .arg("--stream=xbstream")
        .arg(format!("--target-dir={}", tmp.display()))
        .arg(format!("--socket={}", socket.display()))
        .arg("--user=root")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", cfg.mariadb.mariadb_backup.display()))?;
    framed
        .send(frame(TAG_DONATING, b""))
        .await
        .map_err(|e| format!("joiner gone: {e}"))?;
    let Some(mut out) = child.stdout.take() else {
        return Err("mariadb-backup has no stdout".into());
    };
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        let n = out
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading mariadb-backup's output: {e}"))?;
        if n == 0 {
            break;
        }
        framed
            .send(frame(TAG_DATA, &buf[..n]))
            .await
            .map_err(|e| format!("joiner gone: {e}"))?;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for mariadb-backup: {e}"))?;
    let code = status.code().unwrap_or(-1);
    let mut end = code.to_le_bytes().to_vec();
    if code != 0 {
        end.extend_from_slice(tail(&log_path).as_bytes());
    }
    framed
        .send(frame(TAG_END, &end))
        .await
        .map_err(|e| format!("joiner gone: {e}"))?;
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    if code != 0 {
        return Err(format!(
            "mariadb-backup exited with {code} (see {})",
            log_path.display()
        ));
    }
    Ok(())
}

/// The last lines of a tool's log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Joiner side: receives a backup from `donor` over `stream`, prepares it and swaps it in for
/// this node's datadir (mariadbd must be stopped). Returns the backup's GTID state, also left in
/// [`REBUILD_MARKER`] for the next start. On error the datadir is untouched.
pub async fn receive_and_install(
    cfg: &NodeConfig,
    donor: u64,
    stream: TcpStream,
) -> Result<String, RebuildError> {
    let base = cfg.node.data_dir.clone();
    let staging = base.join("mariadb.rebuild");
    if staging.exists() {
        tokio::fs::remove_dir_all(&staging)
            .await
            .map_err(|e| RebuildError::io("removing an old staging directory", &staging, e))?;
    }
    tokio::fs::create_dir_all(&staging)
        .await
        .map_err(|e| RebuildError::io("creating", &staging, e))?;
    let mut framed = Framed::new(stream, codec());
    let truncated = |why: String| RebuildError::Truncated { donor, why };
    let first = framed
        .next()
        .await
        .ok_or_else(|| truncated("closed before answering".into()))?
        .map_err(|e| truncated(e.to_string()))?;
    match first.first() {
        Some(&TAG_DONATING) => {}
        Some(&TAG_REFUSED) => {
            return Err(RebuildError::Refused {
                donor,
                reason: String::from_utf8_lossy(&first[1..]).into_owned(),
            })
        }
        _ => return Err(truncated("unexpected first frame".into())),
    }
    let unpack_log = base.join("rebuild-unpack.log");
    let mut mbstream = spawn_logged(
        Command::new(&cfg.mariadb.mbstream)
            .arg("-x")
            .arg("-C")
            .arg(&staging)
            .stdin(Stdio::piped()),
        &unpack_log,
    )?;
    let Some(mut stdin) = mbstream.stdin.take() else {
        return Err(RebuildError::Tool {
            program: "mbstream".into(),
            why: "no stdin".into(),
            log: unpack_log,
        });
    };
    let mut bytes = 0u64;
    loop {
        let f = framed
            .next()
            .await
            .ok_or_else(|| truncated(format!("after {bytes} bytes")))?
            .map_err(|e| truncated(e.to_string()))?;
        match f.first() {
            Some(&TAG_DATA) => {
                stdin
                    .write_all(&f[1..])
                    .await
                    .map_err(|e| RebuildError::Tool {
                        program: "mbstream".into(),
                        why: format!("writing to it: {e}"),
                        log: unpack_log.clone(),
                    })?;
                bytes += (f.len() - 1) as u64;
            }
            Some(&TAG_END) => {
                let code = f
                    .get(1..5)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(-1);
                if code != 0 {
                    return Err(RebuildError::DonorFailed {
                        donor,
                        status: code,
                        tail: String::from_utf8_lossy(f.get(5..).unwrap_or_default()).into_owned(),
                    });
                }
                break;
            }
            _ => return Err(truncated("unexpected frame".into())),
        }
    }
    drop(stdin);
    run_ok(&mut mbstream, "mbstream", &unpack_log).await?;
    tracing::info!(donor, bytes, "rebuild: backup received; preparing it");

    let prepare_log = base.join("rebuild-prepare.log");
    let mut prepare = spawn_logged(
        Command::new(&cfg.mariadb.mariadb_backup)
            .arg("--prepare")
            .arg(format!("--target-dir={}", staging.display()))
            .stdin(Stdio::null()),
        &prepare_log,
    )?;
    run_ok(&mut prepare, "mariadb-backup --prepare", &prepare_log).await?;

    // MariaDB 10.11 writes `xtrabackup_binlog_info`; newer versions `mariadb_backup_binlog_info`.
    let info = ["mariadb_backup_binlog_info", "xtrabackup_binlog_info"]
        .iter()
        .map(|n| staging.join(n))
        .find(|p| p.is_file())
        .unwrap_or_else(|| staging.join("xtrabackup_binlog_info"));
    let text = tokio::fs::read_to_string(&info)
        .await
        .map_err(|e| RebuildError::NoGtid {
            path: info.clone(),
            why: e.to_string(),
        })?;
    let gtid_state = parse_binlog_info(&text).map_err(|why| RebuildError::NoGtid {
        path: info.clone(),
        why,
    })?;
    // The datadir is complete: the same marker a finished mariadb-install-db leaves.
    mark_initialized(&staging).map_err(|e| RebuildError::Tool {
        program: "marking the datadir complete".into(),
        why: e.to_string(),
        log: staging.clone(),
    })?;

    // The swap. The marker goes first: a crash between the renames leaves either the old
    // datadir (the marker is then ignored: the node is diverged again and rebuilds) or the new
    // one with its marker.
    let marker = base.join(REBUILD_MARKER);
    std::fs::write(&marker, gtid_state.as_bytes())
        .map_err(|e| RebuildError::io("writing", &marker, e))?;
    let datadir = cfg.mariadb_dir();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let kept = base.join(format!("mariadb.diverged-{stamp}"));
    if datadir.exists() {
        std::fs::rename(&datadir, &kept)
            .map_err(|e| RebuildError::io("moving the old datadir aside to", &kept, e))?;
    }
    std::fs::rename(&staging, &datadir)
        .map_err(|e| RebuildError::io("moving the rebuilt datadir into", &datadir, e))?;
    if let Ok(d) = std::fs::File::open(&base) {
        let _ = d.sync_all();
    }
    tracing::info!(donor, %gtid_state, kept = %kept.display(), "rebuild: datadir replaced");
    Ok(gtid_state)
}

/// Starts one of the joiner's tools with its stderr in `log` (named in every error about it).
fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<tokio::process::Child, RebuildError> {
    let file = std::fs::File::create(log).map_err(|e| RebuildError::io("creating", log, e))?;
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    cmd.stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| RebuildError::Tool {
            program,
            why: e.to_string(),
            log: log.to_path_buf(),
        })
}

async fn run_ok(
    child: &mut tokio::process::Child,
    program: &str,
    log: &Path,
) -> Result<(), RebuildError> {
    let status = child.wait().await.map_err(|e| RebuildError::Tool {
        program: program.into(),
        why: e.to_string(),
        log: log.to_path_buf(),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(RebuildError::Tool {
            program: program.into(),
            why: format!("{status}; {}", tail(log)),
            log: log.to_path_buf(),
        })
    }
}

/// The GTID state from `xtrabackup_binlog_info` ("file<TAB>position<TAB>gtid-list"): the
/// donor's `gtid_binlog_pos` at the backup's consistent point. An empty list is valid (a donor
/// that has applied nothing yet).
pub fn parse_binlog_info(text: &str) -> Result<String, String> {
    let line = text.lines().next().ok_or("the file is empty")?;
    let mut fields = line.split('\t');
    let (Some(_file), Some(_pos)) = (fields.next(), fields.next()) else {
        return Err(format!("unexpected line {line:?}"));
    };
    let gtids = fields.next().unwrap_or("").trim();
    for g in gtids.split(',').filter(|g| !g.is_empty()) {
        g.trim()
            .parse::<quorumsql_wire::Gtid>()
            .map_err(|e| format!("bad GTID {g:?} in {line:?}: {e}"))?;
    }
    Ok(gtids.to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_binlog_info;

    #[test]
    fn binlog_info_gives_the_gtid_state() {
        assert_eq!(
            parse_binlog_info("mysql-bin.000002\t1234\t0-1-100\n").as_deref(),
            Ok("0-1-100")
        );
        assert_eq!(
            parse_binlog_info("mysql-bin.000002\t1234\t0-1-100,1-2-5\n").as_deref(),
            Ok("0-1-100,1-2-5")
        );
        assert_eq!(
            parse_binlog_info("mysql-bin.000001\t328\t\n").as_deref(),
            Ok("")
        );
        assert!(parse_binlog_info("").is_err());
        assert!(parse_binlog_info("mysql-bin.000001\t4\tnot-a-gtid").is_err());
        assert!(parse_binlog_info("garbage").is_err());
    }
}
