//! `Recorder`: the shared, append-only history of one run.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use quorumsql_chaos_check::Op;

/// Collects every operation of a run. Clones share the same history, clock and id counters, so
/// every client task (of every workload) records into one history with unique op and client ids.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    next_op: AtomicU64,
    next_client: AtomicU32,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    /// A recorder whose time 0 is `start` (the harness passes the run's start, so nemesis
    /// events and ops share one time axis).
    pub fn new(start: Instant) -> Self {
        Recorder {
            inner: Arc::new(Inner {
                start,
                next_op: AtomicU64::new(0),
                next_client: AtomicU32::new(0),
                ops: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Time 0 of the run.
    pub fn start(&self) -> Instant {
        self.inner.start
    }

    /// Nanoseconds since the start of the run.
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// `at` in nanoseconds since the start of the run (0 for instants before it).
    pub fn ns_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.inner.start).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A fresh operation id, unique in this run.
    pub fn next_op_id(&self) -> u64 {
        self.inner.next_op.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh client (logical process) id, never reused in this run.
    pub fn new_client_id(&self) -> u32 {
        self.inner.next_client.fetch_add(1, Ordering::Relaxed)
    }

    pub fn record(&self, op: Op) {
        self.lock().push(op);
    }

    /// How many operations have been recorded so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the history so far, sorted by completion time.
    pub fn snapshot(&self) -> Vec<Op> {
        let mut ops = self.lock().clone();
        sort(&mut ops);
        ops
    }

    /// The whole history, sorted by completion time (copies it if other clones are still alive).
    pub fn into_history(self) -> Vec<Op> {
        let mut ops = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner.ops.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(shared) => Recorder { inner: shared }.lock().clone(),
        };
        sort(&mut ops);
        ops
    }

    /// Runs `f` over the ops recorded so far (in recording order) without copying them.
    pub(crate) fn scan<R>(&self, f: impl FnOnce(&[Op]) -> R) -> R {
        f(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Op>> {
        // A panicking recorder user cannot leave a half-pushed Vec: the data stays valid.
        self.inner.ops.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn sort(ops: &mut [Op]) {
    ops.sort_by_key(|op| (op.end_ns, op.id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumsql_chaos_check::{Call, Outcome, Port};

    fn op(id: u64, end_ns: u64) -> Op {
        Op {
            id,
            client: 0,
            node: 1,
            port: Port::Rw,
            start_ns: 0,
            end_ns,
            outcome: Outcome::Ok,
            error: None,
            call: Call::SetAdd { value: id },
        }
    }

    #[test]
    fn clones_share_one_history_sorted_by_completion() {
        let r = Recorder::new(Instant::now());
        let r2 = r.clone();
        assert_eq!(r.next_op_id(), 0);
        assert_eq!(r2.next_op_id(), 1);
        assert_eq!(r.new_client_id(), 0);
        assert_eq!(r2.new_client_id(), 1);
        r.record(op(0, 30));
        r2.record(op(1, 10));
        r2.record(op(2, 10));
        let ids: Vec<u64> = r.snapshot().iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![1, 2, 0]);
        assert_eq!(r.len(), 3);
        drop(r2);
        let ids: Vec<u64> = r.into_history().iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![1, 2, 0]);
    }

    #[test]
    fn time_is_relative_to_the_start() {
        let start = Instant::now();
        let r = Recorder::new(start);
        assert_eq!(r.ns_at(start), 0);
        assert_eq!(
            r.ns_at(start + std::time::Duration::from_millis(2)),
            2_000_000
        );
        let a = r.now_ns();
        let b = r.now_ns();
        assert!(a <= b);
    }
}
