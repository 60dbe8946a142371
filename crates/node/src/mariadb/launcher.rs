//! A dedicated thread that forks mariadbd (and mariadb-install-db) with
//! `PR_SET_PDEATHSIG=SIGKILL`.
//!
//! The parent-death signal fires when the *thread* that forked the child exits, not the
//! process (prctl(2)). Forking from a tokio `spawn_blocking` thread, or any short-lived thread,
//! would SIGKILL mariadbd as soon as that thread retires. So every fork happens on this one
//! thread, which lives as long as its [`Launcher`] value: until the supervisor is dropped or the
//! daemon process dies, and in both cases mariadbd must die too (design-review 24).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::error::MariadbError;

/// How many nice levels below the node process mariadbd (and mariadb-install-db) run; see the
/// comment at its use.
pub const MARIADBD_NICE_OFFSET: libc::c_int = 10;

/// The nice value of a child forked by a thread at `parent` nice: [`MARIADBD_NICE_OFFSET`] below
/// the node, but never below normal priority (a node raised to -10 as root leaves mariadbd at 0).
pub(crate) fn mariadbd_nice(parent: libc::c_int) -> libc::c_int {
    parent.saturating_add(MARIADBD_NICE_OFFSET).max(0)
}

type Reply = mpsc::Sender<std::io::Result<Child>>;

/// Owner of the forking thread.
#[derive(Debug)]
pub(crate) struct Launcher {
    requests: Option<mpsc::Sender<(Command, Reply)>>,
    thread: Option<JoinHandle<()>>,
}

impl Launcher {
    pub(crate) fn new() -> Result<Self, MariadbError> {
        let (tx, rx) = mpsc::channel::<(Command, Reply)>();
        let thread = std::thread::Builder::new()
            .name("mariadbd-launcher".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_pdeathsig(&mut cmd));
                }
            })
            .map_err(|e| MariadbError::Spawn {
                program: "mariadbd-launcher thread".into(),
                source: e,
            })?;
        Ok(Launcher {
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    /// Spawns `cmd` from the launcher thread. `Ok(Err(_))` is the fork/exec error.
    pub(crate) fn spawn(&self, cmd: Command) -> Result<std::io::Result<Child>, MariadbError> {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.requests
            .as_ref()
            .ok_or(MariadbError::LauncherGone)?
            .send((cmd, reply_tx))
            .map_err(|_| MariadbError::LauncherGone)?;
        reply_rx.recv().map_err(|_| MariadbError::LauncherGone)
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn_with_pdeathsig(cmd: &mut Command) -> std::io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe
    // functions (prctl, getppid, setsid, getpriority, setpriority); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then no signal will ever come.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("parent exited before exec"));
            }
            // Its own session, so its own scheduler autogroup (sched(7)): with autogroups on
            // (Debian's default), nice only ranks threads inside one group, and 64 busy client
            // threads in mariadbd outweighed the node's one raft thread at nice -10 in a shared
            // group; the master lost its quorum check under 64 point-select clients straight at
            // its mariadbd (bench/RESULTS.md). In separate groups the node gets its share
            // however many threads mariadbd runs. Best effort, like the nice below; the
            // parent-death signal does not depend on the session.
            libc::setsid();
            // mariadbd runs at a lower CPU priority than QuorumSQL: under a CPU-bound client load
            // a starved raft loop misses heartbeats and loses leadership and its lease, which
            // costs a failover; a slightly slower query costs nothing of the kind. The gap is
            // relative: a node raised to nice -10 (as root) leaves mariadbd at 0, where it
            // competes evenly with the proxy that relays its queries and with the clients
            // (bench/proxy measured +10 under a -10 node to cost a third of point-select
            // throughput); an unprivileged node at 0 puts mariadbd at +10. Best effort: a
            // failure leaves the inherited priority. getpriority can return -1 as a value, so
            // errno tells an error apart.
            *libc::__errno_location() = 0;
            let own_nice = libc::getpriority(libc::PRIO_PROCESS, 0);
            if own_nice != -1 || *libc::__errno_location() == 0 {
                libc::setpriority(libc::PRIO_PROCESS, 0, mariadbd_nice(own_nice));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::{mariadbd_nice, Launcher};
    use std::process::Command;

    #[test]
    fn a_launched_child_leads_its_own_session() {
        // Its own session is its own scheduler autogroup: the node's threads keep their CPU
        // share however many threads mariadbd runs.
        let launcher = Launcher::new().expect("launcher");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut child = launcher
            .spawn(cmd)
            .expect("launcher thread")
            .expect("spawn sleep");
        let pid = child.id() as libc::pid_t;
        // SAFETY: getsid only reads the session id of a process.
        let (child_sid, own_sid) = unsafe { (libc::getsid(pid), libc::getsid(0)) };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(child_sid, pid, "the child should lead a new session");
        assert_ne!(
            child_sid, own_sid,
            "the child should not share the node's session"
        );
    }

    #[test]
    fn mariadbd_runs_below_the_node_but_never_below_normal_priority() {
        assert_eq!(mariadbd_nice(-10), 0);
        assert_eq!(mariadbd_nice(-15), 0);
        assert_eq!(mariadbd_nice(0), 10);
        assert_eq!(mariadbd_nice(-5), 5);
        assert_eq!(mariadbd_nice(15), 25);
    }
}
