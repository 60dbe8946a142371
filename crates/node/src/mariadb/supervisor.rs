//! The supervisor of one node's mariadbd: initialise, start in the safe start role, wait until
//! it answers, SIGKILL (the only way it is ever stopped), reap.
//!
//! All methods block (at most until the deadline they take, or for the reaping `waitpid` after a
//! SIGKILL); async callers run them on `spawn_blocking`. That is safe for the parent-death
//! signal because the fork itself always happens on the supervisor's own launcher thread.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::error::MariadbError;
use super::error_log::{log_tail, ErrorLogScanner};
use super::install::{self, InitOutcome, INIT_MARKER};
use super::launcher::Launcher;
use super::options::{mariadbd_args, MariadbConfig};
use super::stale::{self, StaleKill};

/// How long a start waits for a killed stale mariadbd to let go of the datadir.
const STALE_KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of the error log quoted in start errors.
const TAIL_LINES: usize = 25;

/// A snapshot of the supervisor's state (for `/status` and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MariadbStatus {
    /// The running mariadbd child, if any.
    pub pid: Option<u32>,
    /// Number of successful spawns since the supervisor was created.
    pub start_count: u64,
    /// How the previous mariadbd ended (a SIGKILL shows as `signal: 9 (SIGKILL)`).
    pub last_exit: Option<ExitStatus>,
    /// Error-log offset at the last start: findings after it belong to that start.
    pub error_log_offset_at_start: u64,
}

/// What `start` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub pid: u32,
    /// Stale mariadbd processes that held the datadir and were SIGKILLed first.
    pub killed_stale: Vec<StaleKill>,
}

/// Supervises one mariadbd. Dropping it SIGKILLs and reaps the child (never a clean shutdown:
/// that would commit transactions waiting for a semi-sync ACK).
#[derive(Debug)]
pub struct Mariadb {
    cfg: MariadbConfig,
    launcher: Launcher,
    child: Option<Child>,
    start_count: u64,
    last_exit: Option<ExitStatus>,
    log_offset_at_start: u64,
}

impl Mariadb {
    /// Validates the settings and starts the launcher thread. Touches no files.
    pub fn new(cfg: MariadbConfig) -> Result<Self, MariadbError> {
        cfg.validate()?;
        Ok(Mariadb {
            cfg,
            launcher: Launcher::new()?,
            child: None,
            start_count: 0,
            last_exit: None,
            log_offset_at_start: 0,
        })
    }

    pub fn config(&self) -> &MariadbConfig {
        &self.cfg
    }

    /// Runs `mariadb-install-db` if the datadir does not exist or is empty; redoes an
    /// interrupted install; refuses a non-empty datadir that QuorumSQL did not complete.
    /// Kills a stale mariadbd first: no install may race a running server.
    pub fn initialize_if_needed(&mut self) -> Result<InitOutcome, MariadbError> {
        self.kill_stale()?;
        install::initialize_if_needed(&self.cfg, &self.launcher)
    }

    /// SIGKILLs every mariadbd that holds this node's datadir and is not the supervisor's own
    /// child, and waits until the datadir is free. The daemon calls this first thing at start
    /// (DESIGN §3); `start` and `initialize_if_needed` call it too. Refuses while the
    /// supervisor's own child runs.
    pub fn kill_stale(&mut self) -> Result<Vec<StaleKill>, MariadbError> {
        if let Some(pid) = self.running_pid()? {
            return Err(MariadbError::AlreadyRunning { pid });
        }
        stale::kill_stale(&self.cfg, None, Instant::now() + STALE_KILL_TIMEOUT)
    }

    /// SIGKILLs any mariadbd still holding the datadir, checks the datadir is complete, writes
    /// the option file and spawns mariadbd in the start role of DESIGN §3. Returns once the
    /// process exists; call [`Mariadb::wait_ready`] next.
    pub fn start(&mut self) -> Result<Started, MariadbError> {
        let killed_stale = self.kill_stale()?;
        let datadir = self.cfg.datadir();
        let marker = datadir.join(INIT_MARKER);
        if !marker.is_file() {
            return Err(MariadbError::UnrecognisedDatadir {
                path: datadir,
                reason: "it is not initialised (run initialize_if_needed first)".into(),
                marker,
            });
        }
        self.write_option_file()?;
        let tmpdir = self.cfg.tmpdir();
        std::fs::create_dir_all(&tmpdir)
            .map_err(|e| MariadbError::io("creating directory", &tmpdir, e))?;
        let socket = self.cfg.socket();
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(MariadbError::io("removing stale socket", &socket, e)),
        }
        let log_path = self.cfg.error_log();
        // mariadbd writes to its log_error file once it has parsed its options; anything
        // earlier (an unknown option, a bad path) goes to stderr, so both go to the same file.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| MariadbError::io("opening error log", &log_path, e))?;
        self.log_offset_at_start = log
            .metadata()
            .map_err(|e| MariadbError::io("reading error log size", &log_path, e))?
            .len();
        let log2 = log
            .try_clone()
            .map_err(|e| MariadbError::io("duplicating error log handle", &log_path, e))?;
        let mut cmd = Command::new(&self.cfg.mariadbd);
        cmd.args(mariadbd_args(&self.cfg.defaults_file()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = self.launcher.spawn(cmd)?.map_err(|e| MariadbError::Spawn {
            program: self.cfg.mariadbd.clone(),
            source: e,
        })?;
        let pid = child.id();
        tracing::info!(pid, datadir = %self.cfg.datadir().display(), "mariadbd started");
        self.child = Some(child);
        self.start_count += 1;
        Ok(Started { pid, killed_stale })
    }

    /// Waits until mariadbd accepts a connection on its unix socket and sends a protocol-10
    /// greeting. Fails early, with the error log's tail, if mariadbd exits.
    pub fn wait_ready(&mut self, deadline: Instant) -> Result<(), MariadbError> {
        let started = Instant::now();
        let socket = self.cfg.socket();
        loop {
            let pid = match self.child.as_mut() {
                None => {
                    return Err(MariadbError::NotRunning {
                        last_exit: describe(self.last_exit),
                    })
                }
                Some(child) => {
                    let pid = child.id();
                    match child.try_wait() {
                        Ok(None) => pid,
                        Ok(Some(status)) => {
                            self.child = None;
                            self.last_exit = Some(status);
                            return Err(MariadbError::StartFailed {
                                pid,
                                status,
                                error_log: self.cfg.error_log(),
                                log_tail: self.log_tail(),
                            });
                        }
                        Err(e) => {
                            return Err(MariadbError::io("waiting for", &self.cfg.mariadbd, e))
                        }
                    }
                }
            };
            let last_problem = match probe_greeting(&socket, deadline) {
                Ok(()) => return Ok(()),
                Err(problem) => problem,
            };
            if Instant::now() >= deadline {
                return Err(MariadbError::NotReady {
                    pid,
                    socket,
                    waited: started.elapsed(),
                    last_problem,
                    error_log: self.cfg.error_log(),
                    log_tail: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fencing: SIGKILL the running mariadbd (never SIGTERM or SHUTDOWN, which would commit
    /// transactions waiting for an ACK) and reap it. Returns its exit status, or None if no
    /// mariadbd was running.
    pub fn sigkill(&mut self) -> Result<Option<ExitStatus>, MariadbError> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        // Child::kill sends SIGKILL; the pid cannot have been reused since the child is not
        // reaped yet. An error means it already exited, which wait() then reports.
        let _ = child.kill();
        let status = child
            .wait()
            .map_err(|e| MariadbError::io("reaping", &self.cfg.mariadbd, e))?;
        tracing::warn!(pid = child.id(), %status, "mariadbd SIGKILLed");
        self.last_exit = Some(status);
        Ok(Some(status))
    }

    /// Waits until mariadbd exits on its own (it never should: any exit is a crash or a failed
    /// start). Returns None if it is still running at `deadline`, or if none was running.
    pub fn wait_exit(&mut self, deadline: Instant) -> Result<Option<ExitStatus>, MariadbError> {
        loop {
            if self.child.is_none() {
                return Ok(None);
            }
            if let Some(status) = self.try_exit()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Non-blocking: if the child has exited, reaps it and returns its status.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>, MariadbError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!(pid = child.id(), %status, "mariadbd exited");
                self.child = None;
                self.last_exit = Some(status);
                Ok(Some(status))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(MariadbError::io("waiting for", &self.cfg.mariadbd, e)),
        }
    }

    /// Current state; reaps the child first if it has exited.
    pub fn status(&mut self) -> Result<MariadbStatus, MariadbError> {
        let pid = self.running_pid()?;
        Ok(MariadbStatus {
            pid,
            start_count: self.start_count,
            last_exit: self.last_exit,
            error_log_offset_at_start: self.log_offset_at_start,
        })
    }

    /// A scanner over the error log from the last start on (what recovery did at that start
    /// and everything after it).
    pub fn error_log_since_start(&self) -> ErrorLogScanner {
        ErrorLogScanner::new(
            self.cfg.error_log(),
            self.log_offset_at_start,
            &self.cfg.binlog_basename(),
        )
    }

    /// The error log's last lines since the last start.
    pub fn log_tail(&self) -> String {
        log_tail(&self.cfg.error_log(), self.log_offset_at_start, TAIL_LINES)
    }

    fn running_pid(&mut self) -> Result<Option<u32>, MariadbError> {
        self.try_exit()?;
        Ok(self.child.as_ref().map(|c| c.id()))
    }

    fn write_option_file(&self) -> Result<(), MariadbError> {
        let path = self.cfg.defaults_file();
        std::fs::create_dir_all(&self.cfg.base_dir)
            .map_err(|e| MariadbError::io("creating directory", &self.cfg.base_dir, e))?;
        let tmp = path.with_extension("cnf.tmp");
        std::fs::write(&tmp, self.cfg.render())
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .map_err(|e| MariadbError::io("writing option file", &tmp, e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| MariadbError::io("moving option file into place at", &path, e))?;
        install::sync_dir(&self.cfg.base_dir)
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Err(e) = self.sigkill() {
            tracing::error!(error = %e, "SIGKILL of mariadbd on supervisor drop failed");
        }
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "never started".to_string(), |s| s.to_string())
}

/// One readiness probe: connect and read the first packet. Ok if it is a protocol-10 greeting.
fn probe_greeting(socket: &std::path::Path, deadline: Instant) -> Result<(), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let budget = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(50), Duration::from_secs(2));
    stream
        .set_read_timeout(Some(budget))
        .map_err(|e| format!("set timeout: {e}"))?;
    let mut header = [0u8; 4];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("reading greeting header: {e}"))?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    if len == 0 {
        return Err("empty first packet".into());
    }
    let mut payload = vec![0u8; len.min(1024)];
    stream
        .read_exact(&mut payload)
        .map_err(|e| format!("reading greeting: {e}"))?;
    match payload[0] {
        10 => Ok(()),
        0xFF => Err(format!(
            "server sent an error instead of a greeting: {}",
            String::from_utf8_lossy(payload.get(3..).unwrap_or_default())
        )),
        other => Err(format!("unexpected first packet type {other:#04x}")),
    }
}
