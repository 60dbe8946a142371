//! What can go wrong while supervising mariadbd, with the paths and log tails an operator needs.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why the supervisor could not do what it was asked. Every variant names the file, process or
/// program involved; start failures carry the tail of mariadbd's error log.
#[derive(Debug, thiserror::Error)]
pub enum MariadbError {
    #[error("mariadb settings: {problem}")]
    InvalidConfig { problem: String },

    #[error("{action} {path}: {source}")]
    Io {
        /// What the supervisor was doing, e.g. "writing option file".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "mariadb-install-db failed for {datadir} ({status}); its output ends with:\n{output_tail}"
    )]
    InstallFailed {
        datadir: PathBuf,
        /// Exit status, or why it was stopped (e.g. "killed after 120 s").
        status: String,
        output_tail: String,
    },

    #[error(
        "datadir {path} holds files but was not initialised by QuorumSQL ({reason}); it is \
         neither used nor deleted. Move it away to get a fresh one, or, if it is a complete \
         restored datadir, create the file {marker} in it"
    )]
    UnrecognisedDatadir {
        path: PathBuf,
        reason: String,
        marker: PathBuf,
    },

    #[error("mariadbd is already running as pid {pid}; SIGKILL it before starting another")]
    AlreadyRunning { pid: u32 },

    #[error("mariadbd is not running (last exit: {last_exit})")]
    NotRunning { last_exit: String },

    #[error("the launcher thread that forks mariadbd is gone; the supervisor must be recreated")]
    LauncherGone,

    #[error(
        "mariadbd (pid {pid}) exited during start with {status}; {error_log} ends with:\n{log_tail}"
    )]
    StartFailed {
        pid: u32,
        status: ExitStatus,
        error_log: PathBuf,
        log_tail: String,
    },

    #[error(
        "mariadbd (pid {pid}) did not answer on {socket} within {waited:?} (last problem: \
         {last_problem}); {error_log} ends with:\n{log_tail}"
    )]
    NotReady {
        pid: u32,
        socket: PathBuf,
        waited: Duration,
        last_problem: String,
        error_log: PathBuf,
        log_tail: String,
    },

    #[error(
        "{path} is locked by pid {pid} ({program}), which is not a mariadbd; refusing to kill \
         it or to start a second server on this datadir"
    )]
    DatadirLocked {
        path: PathBuf,
        /// 0 when the lock holder is in another pid namespace.
        pid: i32,
        program: String,
    },

    #[error(
        "stale mariadbd pid {pid} holding {datadir} was SIGKILLed but still holds it after \
         {waited:?}"
    )]
    StaleSurvived {
        pid: i32,
        datadir: PathBuf,
        waited: Duration,
    },
}

impl MariadbError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        MariadbError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
