//! Creating a fresh datadir with `mariadb-install-db`, so that an interrupted install can never
//! be mistaken for a datadir.
//!
//! The install runs into a sibling directory (`mariadb.installing`); only a complete install
//! gets the marker file and is then renamed onto the datadir path (rename is atomic). So the
//! datadir either does not exist, is empty, or is complete; a leftover `mariadb.installing` is
//! an interrupted install and is deleted and redone.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::error::MariadbError;
use super::error_log::log_tail;
use super::launcher::Launcher;
use super::options::MariadbConfig;

/// Present in a datadir that QuorumSQL initialised completely (or that a rebuild restored and
/// marked with [`mark_initialized`]).
pub const INIT_MARKER: &str = "quorumsql-datadir-complete";

/// install-db takes about a second here (baselines.md); this only guards against a hang.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What `initialize_if_needed` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// The datadir was already complete; nothing was run.
    AlreadyInitialized,
    /// A new datadir was created. `removed_partial` is set when a previous, interrupted install
    /// was found and deleted first.
    Installed {
        took: Duration,
        removed_partial: Option<PathBuf>,
    },
}

pub(crate) fn staging_dir(cfg: &MariadbConfig) -> PathBuf {
    cfg.base_dir.join("mariadb.installing")
}

pub(crate) fn initialize_if_needed(
    cfg: &MariadbConfig,
    launcher: &Launcher,
) -> Result<InitOutcome, MariadbError> {
    let datadir = cfg.datadir();
    let marker = datadir.join(INIT_MARKER);
    if marker.is_file() {
        if !datadir.join("mysql").is_dir() {
            return Err(MariadbError::UnrecognisedDatadir {
                path: datadir,
                reason: "it is marked complete but has no mysql/ schema".into(),
                marker,
            });
        }
        return Ok(InitOutcome::AlreadyInitialized);
    }
    match std::fs::read_dir(&datadir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(MariadbError::UnrecognisedDatadir {
                    path: datadir,
                    reason: format!("no {INIT_MARKER} marker"),
                    marker,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(MariadbError::io("listing datadir", &datadir, e)),
    }

    let started = Instant::now();
    std::fs::create_dir_all(&cfg.base_dir)
        .map_err(|e| MariadbError::io("creating directory", &cfg.base_dir, e))?;
    let staging = staging_dir(cfg);
    let removed_partial = if staging.exists() {
        tracing::warn!(path = %staging.display(), "removing an interrupted mariadb-install-db");
        std::fs::remove_dir_all(&staging)
            .map_err(|e| MariadbError::io("removing interrupted install", &staging, e))?;
        Some(staging.clone())
    } else {
        None
    };

    run_install_db(cfg, launcher, &staging)?;
    if !staging.join("mysql").join("global_priv.frm").is_file() {
        return Err(MariadbError::InstallFailed {
            datadir: staging.clone(),
            status: "exit status 0 but mysql/global_priv.frm is missing".into(),
            output_tail: install_output_summary(&install_log(cfg)),
        });
    }
    let staged_marker = staging.join(INIT_MARKER);
    write_synced(&staged_marker, b"initialised by mariadb-install-db\n")?;
    sync_dir(&staging)?;
    // rename(2) replaces an empty directory atomically.
    std::fs::rename(&staging, &datadir)
        .map_err(|e| MariadbError::io("moving the new datadir into place at", &datadir, e))?;
    sync_dir(&cfg.base_dir)?;
    Ok(InitOutcome::Installed {
        took: started.elapsed(),
        removed_partial,
    })
}

/// Marks a datadir restored by other means (a rebuild from a backup) as complete.
pub fn mark_initialized(datadir: &Path) -> Result<(), MariadbError> {
    write_synced(
        &datadir.join(INIT_MARKER),
        b"marked complete by a rebuild\n",
    )?;
    sync_dir(datadir)
}

fn install_log(cfg: &MariadbConfig) -> PathBuf {
    cfg.base_dir.join("mariadb-install-db.log")
}

fn run_install_db(
    cfg: &MariadbConfig,
    launcher: &Launcher,
    staging: &Path,
) -> Result<(), MariadbError> {
    let log_path = install_log(cfg);
    let log = File::create(&log_path)
        .map_err(|e| MariadbError::io("creating install log", &log_path, e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| MariadbError::io("duplicating install log handle", &log_path, e))?;
    let tmpdir = cfg.tmpdir();
    std::fs::create_dir_all(&tmpdir)
        .map_err(|e| MariadbError::io("creating directory", &tmpdir, e))?;
    let mut cmd = Command::new(&cfg.install_db);
    // --no-defaults must come first: no system option file may leak into the bootstrap.
    cmd.arg("--no-defaults")
        .arg("--user=root")
        .arg(format!("--datadir={}", staging.display()))
        .arg("--auth-root-authentication-method=socket")
        .arg("--skip-test-db")
        .arg("--skip-name-resolve")
        // Passed on to the bootstrap mariadbd (see MariadbConfig::tmpdir for why).
        .arg(format!("--tmpdir={}", tmpdir.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    let mut child = launcher.spawn(cmd)?.map_err(|e| MariadbError::Spawn {
        program: cfg.install_db.clone(),
        source: e,
    })?;
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => break st.to_string(),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break format!("killed after {INSTALL_TIMEOUT:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(MariadbError::io("waiting for", &cfg.install_db, e)),
        }
    };
    Err(MariadbError::InstallFailed {
        datadir: staging.to_path_buf(),
        status,
        output_tail: install_output_summary(&log_path),
    })
}

/// install-db prints its real error early and then a long generic help text: quote the error
/// lines, then the end.
fn install_output_summary(path: &Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("[Warning]"))
        .take(10)
        .collect();
    format!(
        "{}\n(output in {})\n{}",
        errors.join("\n"),
        path.display(),
        log_tail(path, 0, 8)
    )
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), MariadbError> {
    let mut f = File::create(path).map_err(|e| MariadbError::io("creating", path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| MariadbError::io("writing", path, e))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), MariadbError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| MariadbError::io("syncing directory", dir, e))
}
