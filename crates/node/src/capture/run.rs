//! The capture task: connect, read the dump, hand parts to the appender, and reconnect from the
//! accepted GTID state when the connection drops.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumsql_wire::semisync::{decode_dump_packet, DumpPacket};
use quorumsql_wire::{Gtid, GtidState};
use tokio::sync::{mpsc, watch, Semaphore};

use super::conn::{ConnError, DumpReader, DumpRequest, DumpStream, ReplConn};
use super::cutter::Cutter;
use super::dedupe::{Dedupe, Verdict};
use super::pipeline::{run_appender, Acker, Queued, Shared};
use super::sink::{Epoch, TxnSink};
use super::{CaptureConfig, CaptureError};

/// MariaDB's ER_MASTER_FATAL_ERROR_READING_BINLOG: the master will not serve this request.
const ER_MASTER_FATAL_ERROR_READING_BINLOG: u16 = 1236;

#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    cfg: CaptureConfig,
    sink: Arc<dyn TxnSink>,
    from: GtidState,
    last_gtid: Option<Gtid>,
    epoch: Epoch,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    allow: watch::Receiver<bool>,
) -> Result<(), CaptureError> {
    let (tx, rx) = mpsc::channel::<Queued>(1 << 16);
    let acker = Arc::new(Acker::new(shared.clone(), cfg.io_timeout));
    let mut appender = tokio::spawn(run_appender(
        rx,
        sink,
        epoch,
        last_gtid,
        cfg.entry_cap,
        allow,
        shared.clone(),
        acker.clone(),
    ));
    let reader = reader_loop(&cfg, &shared, &acker, tx, from);
    let result = tokio::select! {
        biased;
        a = &mut appender => match a {
            Ok(Ok(())) => Err(CaptureError::Internal("appender ended while the reader ran".into())),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(CaptureError::Internal(format!("appender task: {e}"))),
        },
        r = reader => match r {
            Err(e) => Err(e),
        },
        _ = stop.wait_for(|s| *s) => Ok(()),
    };
    // An append still in flight is abandoned: whatever the log decides, it is never ACKed.
    appender.abort();
    acker.detach().await;
    result
}

/// Why one dump connection ended.
enum DumpEnd {
    /// Reconnect and resume.
    Retry(String),
    Fatal(CaptureError),
}

impl From<super::cutter::CutError> for DumpEnd {
    fn from(e: super::cutter::CutError) -> Self {
        DumpEnd::Fatal(e.into())
    }
}

impl From<super::dedupe::DedupeError> for DumpEnd {
    fn from(e: super::dedupe::DedupeError) -> Self {
        DumpEnd::Fatal(e.into())
    }
}

async fn reader_loop(
    cfg: &CaptureConfig,
    shared: &Arc<Shared>,
    acker: &Arc<Acker>,
    tx: mpsc::Sender<Queued>,
    from: GtidState,
) -> Result<Infallible, CaptureError> {
    let budget = Arc::new(Semaphore::new(cfg.max_buffered_bytes));
    let mut cutter = Cutter::new(cfg.chunk_size);
    let mut dedupe = Dedupe::new(from);
    loop {
        let resume = shared.accepted.lock().clone();
        let stream = connect_dump(cfg, &resume).await?;
        tracing::info!(
            connection_id = stream.connection_id,
            from = %resume,
            server_id = cfg.server_id,
            "capture: semi-sync dump requested"
        );
        *shared.dump_connection_id.lock() = Some(stream.connection_id);
        acker.install(stream.writer).await;
        dedupe.on_reconnect(&resume);
        let end = read_dump(
            cfg,
            shared,
            &budget,
            &tx,
            &mut cutter,
            &mut dedupe,
            stream.reader,
            &resume,
        )
        .await;
        shared.attached.store(false, Ordering::SeqCst);
        *shared.dump_connection_id.lock() = None;
        acker.detach().await;
        match end {
            DumpEnd::Fatal(e) => return Err(e),
            DumpEnd::Retry(why) => {
                let dropped = cutter.discard_open();
                shared.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = %why, partial = ?dropped, "capture: dump connection lost; reconnecting from the accepted GTID state");
            }
        }
    }
}

/// Connects and starts the dump, retrying transient failures for `reconnect_timeout`.
async fn connect_dump(cfg: &CaptureConfig, resume: &GtidState) -> Result<DumpStream, CaptureError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let req = DumpRequest {
        server_id: cfg.server_id,
        gtid_state: resume.clone(),
        heartbeat: cfg.heartbeat,
        annotate_rows: cfg.annotate_rows,
    };
    loop {
        let attempt = async {
            let conn = ReplConn::connect(
                &cfg.endpoint,
                &cfg.credentials,
                cfg.io_timeout,
                cfg.max_packet,
            )
            .await?;
            conn.start_dump(&req).await
        }
        .await;
        let err = match attempt {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        if err.is_permanent() {
            return Err(CaptureError::Setup {
                endpoint: cfg.endpoint.to_string(),
                source: Box::new(err),
            });
        }
        let waited = started.elapsed();
        if waited >= cfg.reconnect_timeout {
            return Err(CaptureError::Connect {
                endpoint: cfg.endpoint.to_string(),
                waited,
                source: Box::new(err),
            });
        }
        tracing::warn!(error = %err, "capture: cannot start the dump yet; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_dump(
    cfg: &CaptureConfig,
    shared: &Arc<Shared>,
    budget: &Arc<Semaphore>,
    tx: &mpsc::Sender<Queued>,
    cutter: &mut Cutter,
    dedupe: &mut Dedupe,
    mut reader: DumpReader,
    resume: &GtidState,
) -> DumpEnd {
    let metrics = &shared.metrics;
    loop {
        let packet = match tokio::time::timeout(cfg.read_timeout, reader.next_packet()).await {
            Err(_) => {
                return DumpEnd::Retry(format!("no event or heartbeat for {:?}", cfg.read_timeout))
            }
            Ok(Err(ConnError::Wire(e))) => {
                return DumpEnd::Fatal(CaptureError::Protocol(e.to_string()))
            }
            Ok(Err(e)) => return DumpEnd::Retry(e.to_string()),
            Ok(Ok(p)) => p,
        };
        let (ack_requested, event) = match decode_dump_packet(&packet.payload, true) {
            Err(e) => return DumpEnd::Fatal(CaptureError::Protocol(e.to_string())),
            Ok(DumpPacket::Err(err)) if err.code == ER_MASTER_FATAL_ERROR_READING_BINLOG => {
                return DumpEnd::Fatal(CaptureError::MasterFatal {
                    code: err.code,
                    message: err.message,
                    from: resume.clone(),
                })
            }
            Ok(DumpPacket::Err(err)) => return DumpEnd::Retry(format!("master error: {err}")),
            Ok(DumpPacket::Eof) => return DumpEnd::Retry("master ended the dump (EOF)".into()),
            Ok(DumpPacket::Event {
                ack_requested,
                event,
            }) => (ack_requested, event),
        };
        if !shared.attached.swap(true, Ordering::SeqCst) {
            tracing::info!("capture: attached as the semi-sync replica");
        }
        if ack_requested {
            metrics.ack_requests_seen.fetch_add(1, Ordering::Relaxed);
        }
        let parts = match cutter.push(event) {
            Ok((_, parts)) => parts,
            Err(e) => return e.into(),
        };
        if parts.is_empty() {
            continue;
        }
        let received = Instant::now();
        dedupe.prune(&shared.accepted.lock());
        for part in parts {
            match dedupe.check(&part) {
                Err(e) => return e.into(),
                Ok(Verdict::Skip) => {
                    metrics.parts_skipped_resent.fetch_add(1, Ordering::Relaxed);
                    if part.last {
                        metrics.txns_skipped_resent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Verdict::Forward) => {
                    let len = part.events.len();
                    let n = u32::try_from(len.min(cfg.max_buffered_bytes)).unwrap_or(u32::MAX);
                    let permit = match budget.clone().acquire_many_owned(n).await {
                        Ok(p) => p,
                        Err(_) => {
                            return DumpEnd::Fatal(CaptureError::Internal(
                                "buffer budget closed".into(),
                            ))
                        }
                    };
                    metrics.parts_captured.fetch_add(1, Ordering::Relaxed);
                    metrics
                        .bytes_captured
                        .fetch_add(len as u64, Ordering::Relaxed);
                    if part.last {
                        metrics.txns_captured.fetch_add(1, Ordering::Relaxed);
                    }
                    let q = Queued {
                        part,
                        received,
                        _permit: permit,
                    };
                    if tx.send(q).await.is_err() {
                        return DumpEnd::Fatal(CaptureError::Internal(
                            "appender stopped taking transactions".into(),
                        ));
                    }
                }
            }
        }
    }
}
