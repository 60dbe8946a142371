//! The mariadbd supervisor: the option file QuorumSQL owns (DESIGN §5), datadir initialisation,
//! start in the safe start role and SIGKILL fencing (DESIGN §3), and the error-log lines that
//! make a node diverged or fatal.
//!
//! ```text
//! options    settings -> option file text, start-role arguments
//! install    mariadb-install-db into a staging dir, atomically moved into place
//! stale      find and SIGKILL a mariadbd still holding the datadir
//! launcher   the long-lived thread that forks with PR_SET_PDEATHSIG=SIGKILL
//! supervisor Mariadb: start / wait_ready / sigkill / wait_exit / status
//! error_log  ErrorLogScanner and ErrorLogFinding
//! ```

mod error;
pub mod error_log;
mod install;
mod launcher;
pub mod options;
mod stale;
mod supervisor;

pub use error::MariadbError;
pub use error_log::{classify_line, Consequence, ErrorLogFinding, ErrorLogScanner};
pub use install::{mark_initialized, InitOutcome, INIT_MARKER};
pub use options::{MariadbConfig, Setting};
pub use stale::{StaleEvidence, StaleKill};
pub use supervisor::{Mariadb, MariadbStatus, Started};
