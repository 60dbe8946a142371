//! Real-time scheduling for the threads the lease and elections depend on.
//!
//! Why: on a machine whose CPU is saturated, the kernel's fair scheduler has left the log thread
//! of every node runnable but not running for up to 9.8 s at a time (bench/RESULTS.md, "Spurious
//! master moves"), long enough to void the master's lease and start elections, while ordinary
//! processes beside it waited at most ~200 ms and a SCHED_FIFO one never more than 100 ms. nice
//! did not prevent it. A thread under `SCHED_RR` always runs before every normal thread, so
//! heartbeats, lease rounds and votes keep their timing however busy mariadbd and its clients
//! are. This is what corosync does for the same reason.
//!
//! The threads put here do little CPU work (a few percent of a core) and block on I/O;
//! `SCHED_RESET_ON_FORK` keeps any thread or process they start at normal priority, and the
//! kernel's RT throttling still leaves normal threads 5 % of each second should one of them
//! ever spin.

use std::io;

/// Highest priority accepted in the configuration (Linux allows 1..=99).
pub const MAX_PRIORITY: u8 = 99;

/// Puts the calling thread under `SCHED_RR` at `priority` (1..=99), with
/// `SCHED_RESET_ON_FORK`. Fails without `CAP_SYS_NICE` (or an RLIMIT_RTPRIO that allows it);
/// the caller then keeps running at normal priority and should say so.
pub fn make_current_thread_realtime(priority: u8) -> io::Result<()> {
    if priority == 0 || priority > MAX_PRIORITY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("real-time priority {priority} is outside 1..={MAX_PRIORITY}"),
        ));
    }
    let param = libc::sched_param {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the
    // calling thread.
    let r =
        unsafe { libc::sched_setscheduler(0, libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_priorities_are_refused_before_the_kernel_is_asked() {
        for p in [0, 100, 255] {
            let e = make_current_thread_realtime(p).expect_err("must refuse");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{p}: {e}");
        }
    }

    #[test]
    fn a_thread_made_realtime_runs_under_sched_rr_and_its_children_do_not() {
        let outcome = std::thread::spawn(|| {
            let r = make_current_thread_realtime(1);
            // SAFETY: sched_getscheduler has no memory preconditions.
            let policy = unsafe { libc::sched_getscheduler(0) };
            let child_policy = std::thread::spawn(|| unsafe { libc::sched_getscheduler(0) })
                .join()
                .unwrap_or(-1);
            (r, policy, child_policy)
        })
        .join()
        .expect("test thread");
        match outcome {
            (Ok(()), policy, child) => {
                assert_eq!(policy & !libc::SCHED_RESET_ON_FORK, libc::SCHED_RR);
                assert_eq!(
                    child,
                    libc::SCHED_OTHER,
                    "a thread it starts must not inherit RT"
                );
            }
            // Unprivileged test runs cannot raise the policy; the refusal must be EPERM.
            (Err(e), _, _) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }
}
