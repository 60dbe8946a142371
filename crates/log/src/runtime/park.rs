//! Waiting on tokio channels from the runtime's plain OS thread.
//!
//! The runtime thread receives raft frames straight from the peer transport's tokio channel and
//! requests from handles on another one. A waker that unparks the thread lets it poll both
//! channels and sleep with `park_timeout` until the next deadline: one wake-up per event, no
//! relay task in between, and nanosecond deadlines (tokio timers round to milliseconds).

use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Wakes the thread that created it.
pub(crate) struct Parker {
    waker: Waker,
}

impl Parker {
    /// Must be created on the thread that will park.
    pub(crate) fn for_current_thread() -> Parker {
        Parker {
            waker: Waker::from(Arc::new(Unpark(std::thread::current()))),
        }
    }

    pub(crate) fn context(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }

    /// Sleeps until a registered waker fires or `timeout` passes (may return early: callers
    /// re-poll and re-check their deadline).
    pub(crate) fn park(&self, timeout: Duration) {
        std::thread::park_timeout(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;
    use std::time::Instant;

    #[test]
    fn a_send_from_another_thread_wakes_the_parked_thread() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let parker = Parker::for_current_thread();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(7).unwrap();
        });
        let start = Instant::now();
        let got = loop {
            let mut cx = parker.context();
            if let Poll::Ready(v) = rx.poll_recv(&mut cx) {
                break v;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "never woken");
            parker.park(Duration::from_secs(5));
        };
        assert_eq!(got, Some(7));
        // Woken by the send, not by the 5 s timeout.
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        sender.join().unwrap();
    }
}
