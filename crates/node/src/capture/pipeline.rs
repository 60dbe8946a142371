//! Group commit and the ACK rule.
//!
//! The appender keeps one append in flight. Everything that completes meanwhile queues up and goes
//! out together as the next append, up to the entry cap. Only when the sink reports an append
//! *accepted* does the acker send the semi-sync ACK for the end of the newest transaction that
//! append completed; the master releases every waiter at or below an ACKed position, so one ACK
//! per append is enough. A rejected append, or one whose outcome is unknown, ends capture and is
//! never ACKed (DESIGN §2 step 5, design review 5).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use quorumsql_wire::semisync::SemiSyncAck;
use quorumsql_wire::{BinlogPos, Gtid, GtidState};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use super::conn::AckWriter;
use super::sink::{AppendOutcome, CapturedTxn, Epoch, TxnSink};
use super::CaptureError;

/// A part waiting for its append; the permit holds its bytes against the buffer budget.
pub(crate) struct Queued {
    pub part: CapturedTxn,
    /// When the part's last event arrived (ACK latency is measured from here).
    pub received: Instant,
    pub _permit: OwnedSemaphorePermit,
}

/// The newest transaction end capture has ACKed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedPos {
    pub gtid: Gtid,
    /// Position in the master's binlog named by the ACK.
    pub pos: BinlogPos,
}

/// Counters of one capture run (monotonic; read with [`super::CaptureHandle::metrics`]).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub txns_captured: AtomicU64,
    pub parts_captured: AtomicU64,
    pub bytes_captured: AtomicU64,
    pub txns_skipped_resent: AtomicU64,
    pub parts_skipped_resent: AtomicU64,
    pub appends: AtomicU64,
    pub appends_accepted: AtomicU64,
    pub txns_accepted: AtomicU64,
    pub acks_sent: AtomicU64,
    pub ack_requests_seen: AtomicU64,
    pub ack_latency_count: AtomicU64,
    pub ack_latency_sum_us: AtomicU64,
    pub ack_latency_max_us: AtomicU64,
    pub reconnects: AtomicU64,
}

/// A snapshot of capture's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureMetrics {
    /// Complete transactions handed to the sink.
    pub txns_captured: u64,
    /// Parts handed to the sink (a transaction larger than the chunk size has several).
    pub parts_captured: u64,
    /// Event bytes handed to the sink.
    pub bytes_captured: u64,
    /// Transactions re-sent by the master after a reconnect and skipped (verified identical).
    pub txns_skipped_resent: u64,
    /// Parts re-sent after a reconnect and skipped (verified identical).
    pub parts_skipped_resent: u64,
    /// Appends proposed / accepted.
    pub appends: u64,
    pub appends_accepted: u64,
    pub txns_accepted: u64,
    /// ACK packets written to the master.
    pub acks_sent: u64,
    /// Events the master flagged "ACK requested".
    pub ack_requests_seen: u64,
    /// Time from a transaction's last event arriving to its ACK being written.
    pub ack_latency_count: u64,
    pub ack_latency_sum: Duration,
    pub ack_latency_max: Duration,
    pub reconnects: u64,
}

impl Metrics {
    pub fn snapshot(&self) -> CaptureMetrics {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CaptureMetrics {
            txns_captured: g(&self.txns_captured),
            parts_captured: g(&self.parts_captured),
            bytes_captured: g(&self.bytes_captured),
            txns_skipped_resent: g(&self.txns_skipped_resent),
            parts_skipped_resent: g(&self.parts_skipped_resent),
            appends: g(&self.appends),
            appends_accepted: g(&self.appends_accepted),
            txns_accepted: g(&self.txns_accepted),
            acks_sent: g(&self.acks_sent),
            ack_requests_seen: g(&self.ack_requests_seen),
            ack_latency_count: g(&self.ack_latency_count),
            ack_latency_sum: Duration::from_micros(g(&self.ack_latency_sum_us)),
            ack_latency_max: Duration::from_micros(g(&self.ack_latency_max_us)),
            reconnects: g(&self.reconnects),
        }
    }

    fn record_ack_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.ack_latency_count.fetch_add(1, Ordering::Relaxed);
        self.ack_latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.ack_latency_max_us.fetch_max(us, Ordering::Relaxed);
    }
}

/// State shared by the capture tasks and the handle.
pub(crate) struct Shared {
    pub attached: AtomicBool,
    /// GTID state of everything the sink accepted (the resume point after a reconnect).
    pub accepted: Mutex<GtidState>,
    pub last_acked: Mutex<Option<AckedPos>>,
    pub dump_connection_id: Mutex<Option<u32>>,
    pub metrics: Metrics,
}

impl Shared {
    pub fn new(from: GtidState) -> Self {
        Shared {
            attached: AtomicBool::new(false),
            accepted: Mutex::new(from),
            last_acked: Mutex::new(None),
            dump_connection_id: Mutex::new(None),
            metrics: Metrics::default(),
        }
    }
}

struct AckerState {
    writer: Option<AckWriter>,
    /// Newest accepted transaction end, and when its last event arrived.
    target: Option<(AckedPos, Instant)>,
    /// What the current writer has already sent.
    sent: Option<BinlogPos>,
}

/// Owns the ACK side of the current dump connection.
pub(crate) struct Acker {
    state: tokio::sync::Mutex<AckerState>,
    shared: Arc<Shared>,
    write_timeout: Duration,
}

impl Acker {
    pub fn new(shared: Arc<Shared>, write_timeout: Duration) -> Self {
        Acker {
            state: tokio::sync::Mutex::new(AckerState {
                writer: None,
                target: None,
                sent: None,
            }),
            shared,
            write_timeout,
        }
    }

    /// A new dump connection: re-sends the newest accepted position on it, in case the ACK on the
    /// old connection was lost (the master ignores ACKs at or below what it already has).
    pub async fn install(&self, writer: AckWriter) {
        let mut st = self.state.lock().await;
        st.writer = Some(writer);
        st.sent = None;
        self.flush(&mut st).await;
    }

    pub async fn detach(&self) {
        let mut st = self.state.lock().await;
        st.writer = None;
        st.sent = None;
    }

    /// Records `pos` as accepted and ACKs it. Only the appender calls this, after an accepted
    /// append, so positions only move forward.
    pub async fn ack(&self, pos: AckedPos, received: Instant) {
        let mut st = self.state.lock().await;
        st.target = Some((pos, received));
        self.flush(&mut st).await;
    }

    async fn flush(&self, st: &mut AckerState) {
        let Some((target, received)) = st.target.clone() else {
            return;
        };
        if st.sent.as_ref() == Some(&target.pos) {
            return;
        }
        let Some(writer) = st.writer.as_mut() else {
            return;
        };
        let ack = SemiSyncAck {
            position: target.pos.offset,
            file: target.pos.file.clone(),
        };
        match tokio::time::timeout(self.write_timeout, writer.send(&ack)).await {
            Ok(Ok(())) => {
                st.sent = Some(target.pos.clone());
                self.shared
                    .metrics
                    .acks_sent
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.record_ack_latency(received.elapsed());
                *self.shared.last_acked.lock() = Some(target);
            }
            Ok(Err(e)) => {
                // The reader sees the broken connection too and reconnects; install() re-sends.
                tracing::warn!(error = %e, ack = %target.pos, "capture: writing the semi-sync ACK failed");
                st.writer = None;
            }
            Err(_) => {
                tracing::warn!(ack = %target.pos, "capture: writing the semi-sync ACK timed out");
                st.writer = None;
            }
        }
    }
}

/// Encoded size of an append beyond its parts, and of one part beyond its event bytes: the same
/// upper bound the log uses when it checks an entry against its cap (GTID, origin, digest, flags
/// and framing), so a full batch never exceeds the log's entry cap.
const APPEND_OVERHEAD: usize = 64;

fn part_cost(part: &CapturedTxn) -> usize {
    part.events.len() + part.origin.file.len() + 32 + 64
}

/// Appends queued parts to the sink, one append in flight, and ACKs what was accepted. Returns
/// when the queue closes (capture stopping) or with the error that must end capture.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_appender(
    mut rx: mpsc::Receiver<Queued>,
    sink: Arc<dyn TxnSink>,
    epoch: Epoch,
    mut prev_gtid: Option<Gtid>,
    entry_cap: usize,
    mut proposals_allowed: watch::Receiver<bool>,
    shared: Arc<Shared>,
    acker: Arc<Acker>,
) -> Result<(), CaptureError> {
    // Capture may attach before the node is allowed to propose (promotion: MasterReady first).
    if proposals_allowed
        .wait_for(|allowed| *allowed)
        .await
        .is_err()
    {
        return Ok(());
    }
    let mut carry: Option<Queued> = None;
    loop {
        let first = match carry.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return Ok(()),
            },
        };
        let mut bytes = APPEND_OVERHEAD + part_cost(&first.part);
        let mut batch = vec![first];
        while let Ok(next) = rx.try_recv() {
            if bytes + part_cost(&next.part) > entry_cap {
                carry = Some(next);
                break;
            }
            bytes += part_cost(&next.part);
            batch.push(next);
        }
        let parts: Vec<CapturedTxn> = batch.iter().map(|q| q.part.clone()).collect();
        let first_gtid = parts.first().map(|p| p.gtid);
        let last_gtid = parts.last().map(|p| p.gtid);
        shared.metrics.appends.fetch_add(1, Ordering::Relaxed);
        if crate::planted::active(crate::planted::Bug::EarlyAck) {
            // Planted bug (test builds only): the client hears "committed" before the log
            // has the transaction.
            if let Some(q) = batch.iter().rev().find(|q| q.part.last) {
                let pos = AckedPos {
                    gtid: q.part.gtid,
                    pos: q.part.origin.clone(),
                };
                acker.ack(pos, q.received).await;
            }
        }
        let outcome = sink.append(epoch, prev_gtid, parts).await;
        match outcome {
            Ok(AppendOutcome::Accepted) => {}
            Ok(AppendOutcome::Rejected { reason }) => {
                return Err(CaptureError::Rejected {
                    epoch,
                    prev_gtid,
                    first: first_gtid,
                    last: last_gtid,
                    reason,
                })
            }
            Err(e) => {
                return Err(CaptureError::Sink {
                    epoch,
                    first: first_gtid,
                    last: last_gtid,
                    source: e,
                })
            }
        }
        shared
            .metrics
            .appends_accepted
            .fetch_add(1, Ordering::Relaxed);
        let mut newest: Option<(AckedPos, Instant)> = None;
        {
            let mut accepted = shared.accepted.lock();
            for q in &batch {
                if q.part.last {
                    accepted.set(q.part.gtid);
                    prev_gtid = Some(q.part.gtid);
                    shared.metrics.txns_accepted.fetch_add(1, Ordering::Relaxed);
                    newest = Some((
                        AckedPos {
                            gtid: q.part.gtid,
                            pos: q.part.origin.clone(),
                        },
                        q.received,
                    ));
                }
            }
        }
        if let Some((pos, received)) = newest {
            acker.ack(pos, received).await;
        }
        // Permits go back to the reader only now: memory stays bounded by the budget.
        drop(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::sink::{AppendFuture, SinkError};
    use bytes::Bytes;
    use tokio::sync::Semaphore;

    /// Records appends; holds each one until the test releases it.
    struct FakeSink {
        seen: parking_lot::Mutex<Vec<(Option<Gtid>, Vec<Gtid>)>>,
        release: tokio::sync::Semaphore,
        reject_at: usize,
    }

    impl TxnSink for FakeSink {
        fn append(
            &self,
            _e: Epoch,
            prev: Option<Gtid>,
            txns: Vec<CapturedTxn>,
        ) -> AppendFuture<'_> {
            Box::pin(async move {
                let n = {
                    let mut seen = self.seen.lock();
                    seen.push((prev, txns.iter().map(|t| t.gtid).collect()));
                    seen.len()
                };
                let permit = self
                    .release
                    .acquire()
                    .await
                    .map_err(|_| SinkError::Fenced("closed".into()))?;
                permit.forget();
                if n == self.reject_at {
                    return Ok(AppendOutcome::Rejected {
                        reason: "test".into(),
                    });
                }
                Ok(AppendOutcome::Accepted)
            })
        }
    }

    fn queued(seq: u64, len: usize, budget: &Arc<Semaphore>) -> Queued {
        Queued {
            part: CapturedTxn {
                gtid: Gtid::new(0, 1, seq),
                origin: BinlogPos {
                    file: "mysql-bin.000001".into(),
                    offset: seq * 100,
                },
                digest: Some(quorumsql_wire::txn::TxnDigest([seq as u8; 32])),
                chunk_index: 0,
                last: true,
                events: Bytes::from(vec![0u8; len]),
            },
            received: Instant::now(),
            _permit: budget
                .clone()
                .try_acquire_many_owned(len as u32)
                .expect("budget"),
        }
    }

    #[tokio::test]
    async fn batches_while_in_flight_within_the_cap_and_stops_on_rejection() {
        let sink = Arc::new(FakeSink {
            seen: parking_lot::Mutex::new(Vec::new()),
            release: Semaphore::new(0),
            reject_at: 3,
        });
        let shared = Arc::new(Shared::new(GtidState::new()));
        let acker = Arc::new(Acker::new(shared.clone(), Duration::from_secs(1)));
        let (tx, rx) = mpsc::channel(64);
        let (_allow_tx, allow_rx) = watch::channel(true);
        let budget = Arc::new(Semaphore::new(1 << 20));
        let task = tokio::spawn(run_appender(
            rx,
            sink.clone(),
            Epoch(3),
            Some(Gtid::new(0, 1, 0)),
            500,
            allow_rx,
            shared.clone(),
            acker,
        ));
        tx.send(queued(1, 100, &budget)).await.expect("send");
        while sink.seen.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        // While append 1 is in flight, 2..=5 queue up; the cap fits two parts of 100 event bytes
        // plus their overhead, so they go 2+2.
        for seq in 2..=5 {
            tx.send(queued(seq, 100, &budget)).await.expect("send");
        }
        sink.release.add_permits(3);
        let out = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("appender ends")
            .expect("join");
        assert!(matches!(out, Err(CaptureError::Rejected { .. })), "{out:?}");
        let g = |s| Gtid::new(0, 1, s);
        let seen = sink.seen.lock().clone();
        assert_eq!(
            seen,
            vec![
                (Some(g(0)), vec![g(1)]),
                (Some(g(1)), vec![g(2), g(3)]),
                (Some(g(3)), vec![g(4), g(5)]),
            ]
        );
        // The rejected append's transactions are not accepted (and so never ACKed).
        assert_eq!(shared.accepted.lock().get(0), Some(g(3)));
        assert_eq!(shared.metrics.snapshot().txns_accepted, 3);
    }
}
