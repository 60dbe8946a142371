//! Finding and SIGKILLing a mariadbd that still holds this node's datadir (a previous daemon's
//! orphan, or one started by hand), before anything else touches the datadir (DESIGN §3,
//! design-review 24).
//!
//! A process is killed only if it is a mariadbd *and* it is tied to this datadir: its command
//! line names our option file or datadir, or it holds InnoDB's / Aria's lock on our datadir. A
//! pid file alone proves nothing (pids are reused, possibly by another node's mariadbd).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::MariadbError;
use super::options::MariadbConfig;

/// Files mariadbd locks with POSIX record locks for as long as it runs (seen in /proc/locks).
const LOCKED_FILES: [&str; 2] = ["ibdata1", "aria_log_control"];

/// Why a process was considered to hold the datadir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StaleEvidence {
    /// Its command line names our option file, datadir or install staging dir.
    CommandLine,
    /// It holds the lock on `ibdata1` or `aria_log_control`.
    DatadirLock,
    /// The pid file names it (only counted together with one of the others).
    PidFile,
}

/// A mariadbd that was SIGKILLed because it held this datadir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleKill {
    pub pid: i32,
    pub evidence: Vec<StaleEvidence>,
}

/// SIGKILLs every mariadbd holding `cfg`'s datadir except `own` (the supervisor's live child),
/// then waits until each is gone and the datadir locks are free. Errors if the datadir is
/// locked by something that is not a mariadbd, or a killed process still holds it at
/// `deadline`.
pub(crate) fn kill_stale(
    cfg: &MariadbConfig,
    own: Option<u32>,
    deadline: Instant,
) -> Result<Vec<StaleKill>, MariadbError> {
    let started = Instant::now();
    let mut evidence: BTreeMap<i32, Vec<StaleEvidence>> = BTreeMap::new();
    let datadir = cfg.datadir();
    // The staging dir catches the bootstrap mariadbd of an install a dead daemon left behind.
    let paths = [
        cfg.defaults_file(),
        datadir.clone(),
        super::install::staging_dir(cfg),
    ];
    for pid in pids_with_path_in_cmdline(&paths) {
        evidence
            .entry(pid)
            .or_default()
            .push(StaleEvidence::CommandLine);
    }
    for (file, pid) in lock_holders(&datadir)? {
        if !is_mariadbd(pid) {
            return Err(MariadbError::DatadirLocked {
                path: file,
                pid,
                program: program_name(pid),
            });
        }
        evidence
            .entry(pid)
            .or_default()
            .push(StaleEvidence::DatadirLock);
    }
    if let Some(pid) = read_pid_file(&cfg.pid_file()) {
        if let Some(ev) = evidence.get_mut(&pid) {
            ev.push(StaleEvidence::PidFile);
        }
    }
    let own = own.map(|p| p as i32);
    let still_holds = |pid: i32| -> bool {
        is_mariadbd(pid)
            && (cmdline_names(pid, &paths)
                || lock_holders(&datadir).is_ok_and(|h| h.iter().any(|(_, p)| *p == pid)))
    };
    let mut killed = Vec::new();
    for (pid, mut ev) in evidence {
        if pid <= 0 || Some(pid) == own || pid == std::process::id() as i32 {
            continue;
        }
        ev.sort_unstable();
        ev.dedup();
        if sigkill_if(pid, still_holds) {
            tracing::warn!(pid, ?ev, datadir = %datadir.display(), "SIGKILLed stale mariadbd");
            killed.push(StaleKill { pid, evidence: ev });
        }
    }
    for k in &killed {
        loop {
            let holds_lock = lock_holders(&datadir)?.iter().any(|(_, p)| *p == k.pid);
            if !is_alive(k.pid) && !holds_lock {
                break;
            }
            if Instant::now() >= deadline {
                return Err(MariadbError::StaleSurvived {
                    pid: k.pid,
                    datadir,
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Whatever still holds the datadir now (a process that appeared meanwhile) is refused.
    if let Some((path, pid)) = lock_holders(&datadir)?
        .into_iter()
        .find(|(_, p)| Some(*p) != own)
    {
        return Err(MariadbError::DatadirLocked {
            path,
            pid,
            program: program_name(pid),
        });
    }
    Ok(killed)
}

/// Sends SIGKILL to `pid` if `check(pid)` holds, through a pidfd opened *before* the check, so
/// a pid reused after the check is never signalled. Returns whether the signal was sent.
fn sigkill_if(pid: i32, check: impl Fn(i32) -> bool) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOSYS) {
            return false; // gone already
        }
        // Kernel without pidfd (< 5.3): plain kill after the check.
        if !check(pid) {
            return false;
        }
        // SAFETY: kill(2) has no memory-safety preconditions.
        return unsafe { libc::kill(pid, libc::SIGKILL) } == 0;
    }
    // SAFETY: `raw` is a descriptor pidfd_open just returned and nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    if !check(pid) {
        return false;
    }
    // SAFETY: valid pidfd; a null siginfo means "as if kill(2)".
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

/// Pids whose command line has an argument equal to one of `paths` or ending in `=<path>`.
fn pids_with_path_in_cmdline(paths: &[PathBuf]) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if cmdline_names(pid, paths) {
            out.push(pid);
        }
    }
    out
}

fn cmdline_names(pid: i32, paths: &[PathBuf]) -> bool {
    // Processes come and go while we scan; an unreadable one is not ours to judge.
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let wanted: Vec<String> = paths
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches('/').to_string())
        .collect();
    raw.split(|&b| b == 0).any(|arg| {
        let arg = String::from_utf8_lossy(arg);
        let value = arg.split_once('=').map_or(&*arg, |(_, v)| v);
        let value = value.trim_end_matches('/');
        wanted.iter().any(|w| value == w)
    })
}

/// (file, pid) for each datadir file that some process holds a POSIX lock on.
fn lock_holders(datadir: &Path) -> Result<Vec<(PathBuf, i32)>, MariadbError> {
    let mut out = Vec::new();
    for name in LOCKED_FILES {
        let path = datadir.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(MariadbError::io("opening to test its lock", &path, e)),
        };
        // SAFETY: a zeroed flock is a valid value; F_GETLK only writes into it.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = 0;
        fl.l_len = 0;
        // SAFETY: valid fd and a valid flock pointer for the duration of the call.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
        if rc != 0 {
            return Err(MariadbError::io(
                "testing the lock on",
                &path,
                std::io::Error::last_os_error(),
            ));
        }
        if fl.l_type != libc::F_UNLCK as libc::c_short {
            out.push((path, fl.l_pid));
        }
    }
    Ok(out)
}

fn read_pid_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True while the process exists and is not a zombie (a zombie holds no files or locks).
fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether `pid` runs a mariadbd (or a pre-10.5 `mysqld`) binary.
pub(crate) fn is_mariadbd(pid: i32) -> bool {
    let known = |name: &str| name == "mariadbd" || name == "mysqld";
    if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
        let name = exe.file_name().map(|n| n.to_string_lossy().into_owned());
        // After a package upgrade the running binary shows as "mariadbd (deleted)".
        if let Some(name) = name {
            if known(name.trim_end_matches(" (deleted)")) {
                return true;
            }
        }
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| known(c.trim()))
}

fn program_name(pid: i32) -> String {
    if pid <= 0 {
        return "a process in another pid namespace".into();
    }
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .or_else(|_| std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim().into()))
        .unwrap_or_else(|_| "unknown program".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_process_is_alive_and_not_mariadbd() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(!is_mariadbd(me));
        assert!(!is_alive(i32::MAX));
    }

    /// A `sleep` child that takes a POSIX write lock on `path` before exec (the lock survives
    /// exec because the descriptor is not close-on-exec).
    fn child_holding_lock(path: &Path) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        // SAFETY: open/fcntl are async-signal-safe; the CString was allocated before fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(cpath.as_ptr(), libc::O_RDWR);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut fl: libc::flock = std::mem::zeroed();
                fl.l_type = libc::F_WRLCK as libc::c_short;
                fl.l_whence = libc::SEEK_SET as libc::c_short;
                if libc::fcntl(fd, libc::F_SETLK, &fl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    #[test]
    fn lock_held_by_a_non_mariadbd_is_refused_and_never_killed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = MariadbConfig::new(quorumsql_peer::NodeId(1), dir.path(), 1);
        let datadir = cfg.datadir();
        std::fs::create_dir(&datadir).unwrap();
        let ibdata = datadir.join("ibdata1");
        std::fs::write(&ibdata, b"x").unwrap();
        assert!(lock_holders(&datadir).unwrap().is_empty());
        let mut child = child_holding_lock(&ibdata);
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        let holders = loop {
            let h = lock_holders(&datadir).unwrap();
            if !h.is_empty() || Instant::now() > deadline {
                break h;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(holders, vec![(ibdata.clone(), pid)]);
        let err = kill_stale(&cfg, None, Instant::now() + Duration::from_secs(1));
        let alive = is_alive(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        match err {
            Err(MariadbError::DatadirLocked {
                path,
                pid: p,
                program,
            }) => {
                assert_eq!((path, p), (ibdata, pid));
                assert!(program.contains("sleep"), "{program}");
            }
            other => panic!("{other:?}"),
        }
        assert!(alive, "a non-mariadbd lock holder must not be killed");
    }

    #[test]
    fn cmdline_scan_finds_a_process_by_path_argument() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("some-defaults.cnf");
        // `sh -c CMD ARG0`: the path appears as an argument of a harmless process.
        // Its own process group, so the sleep that sh forks dies with it below.
        let mut child = std::os::unix::process::CommandExt::process_group(
            std::process::Command::new("sh")
                .arg("-c")
                // Two commands, so sh cannot exec sleep in its own place and lose its argv.
                .arg("sleep 30; true")
                .arg(format!("--defaults-file={}", marker.display())),
            0,
        )
        .spawn()
        .unwrap();
        let pid = child.id() as i32;
        // spawn can return before the new image's argv is visible in /proc (the vfork parent
        // resumes at the mm switch, before exec sets arg_start): poll briefly.
        let until = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let found = pids_with_path_in_cmdline(std::slice::from_ref(&marker));
            if found.contains(&pid) || Instant::now() > until {
                break found;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let other = pids_with_path_in_cmdline(&[dir.path().join("other.cnf")]);
        // SAFETY: kill(2) on the test's own process group; no memory is involved.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        child.wait().unwrap();
        assert!(found.contains(&pid), "{found:?} lacks {pid}");
        assert!(!other.contains(&pid));
    }
}
