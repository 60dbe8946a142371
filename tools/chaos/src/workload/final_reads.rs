//! `final_reads`: after the cluster has healed, one read of everything each workload wrote,
//! retried on the other nodes until it succeeds. These are the reads the checkers compare every
//! acknowledged write against.

use std::time::{Duration, Instant};

use quorumsql_chaos_check::{Call, MicroOp, Outcome, Port};
use rand::Rng;

use super::client::{Client, Ctx, Ran};
use super::{bank, check_inputs, client_rng, list_append, register, rw_init, set};
use super::{Recorder, Target, WorkloadConfig, WorkloadError, WorkloadKind};

const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Keeps the final reads' RNG streams apart from the workload clients'.
const FINAL_SEED: u64 = 0xF1A1_F1A1_F1A1_F1A1;

#[derive(Debug, Clone, Copy)]
enum FinalRead {
    Register(u32),
    Bank,
    Set,
    Lists { max_key: u32 },
}

impl FinalRead {
    fn name(self) -> String {
        match self {
            FinalRead::Register(k) => format!("register key {k}"),
            FinalRead::Bank => "bank balances".into(),
            FinalRead::Set => "set elements".into(),
            FinalRead::Lists { .. } => "lists".into(),
        }
    }
}

/// For each workload in `kinds`: a RW read of every register key, of all bank balances, of the
/// whole set, and of every list key (one transaction). Each read is retried on the next node
/// until it succeeds or `deadline` passes (every attempt is recorded). Fails naming the reads
/// that never succeeded.
pub async fn final_reads(
    kinds: &[WorkloadKind],
    cfg: &WorkloadConfig,
    targets: &[Target],
    recorder: &Recorder,
    deadline: Instant,
) -> Result<(), WorkloadError> {
    check_inputs(cfg, targets)?;
    let mut failed = Vec::new();
    let mut last_errors = Vec::new();
    let mut attempts = 0;
    for &kind in kinds {
        let ctx = Ctx::new(
            cfg.clone(),
            targets.to_vec(),
            recorder.clone(),
            rw_init(kind),
        );
        let mut client = Client::new(ctx, client_rng(cfg.seed ^ FINAL_SEED, kind, 0));
        let reads: Vec<FinalRead> = match kind {
            WorkloadKind::Register => (0..cfg.register_keys).map(FinalRead::Register).collect(),
            WorkloadKind::Bank => vec![FinalRead::Bank],
            WorkloadKind::Set => vec![FinalRead::Set],
            WorkloadKind::ListAppend => vec![FinalRead::Lists {
                max_key: max_list_key(recorder).max(cfg.list_keys.saturating_sub(1)),
            }],
        };
        let mut target = client.rng.gen_range(0..targets.len());
        for read in reads {
            loop {
                attempts += 1;
                let ran = run_read(&mut client, read).await;
                if ran.outcome == Outcome::Ok {
                    break;
                }
                let error = ran.error.unwrap_or_else(|| "no error text".into());
                tracing::debug!(read = %read.name(), %error, "final read failed, trying the next node");
                if Instant::now() >= deadline {
                    failed.push(read.name());
                    last_errors.push(format!("{}: {error}", read.name()));
                    break;
                }
                target = (target + 1) % targets.len();
                client.reconnect_to(Port::Rw, target);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(WorkloadError::FinalReads {
            failed: failed.join(", "),
            attempts,
            last_errors: last_errors.join("; "),
        })
    }
}

async fn run_read(client: &mut Client, read: FinalRead) -> Ran {
    match read {
        FinalRead::Register(key) => register::read(client, Port::Rw, key).await.0,
        FinalRead::Bank => bank::read(client, Port::Rw).await,
        FinalRead::Set => set::read(client, Port::Rw).await.0,
        FinalRead::Lists { max_key } => list_append::read_all(client, max_key).await,
    }
}

/// The largest list key any recorded transaction touched.
fn max_list_key(recorder: &Recorder) -> u32 {
    recorder.scan(|ops| {
        ops.iter()
            .filter_map(|op| match &op.call {
                Call::ListTxn { ops } => ops
                    .iter()
                    .map(|m| match m {
                        MicroOp::Append { key, .. } | MicroOp::Read { key, .. } => *key,
                    })
                    .max(),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    })
}
