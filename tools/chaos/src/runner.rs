//! One chaos run end to end: start the cluster, load it, break it on schedule, heal, let it go
//! quiet, read everything back, check the history and every node's data, write the outputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumsql_chaos_check::{check, render_svg, FaultSpan, Initial, Op, Outcome};
use quorumsql_node::sql::SqlConn;
use rand::SeedableRng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock::{self, FakeClocks};
use crate::cluster::Cluster;
use crate::galera::GaleraCluster;
use crate::nemesis::{self, Applied, Nemesis};
use crate::net::{Netns, Network};
use crate::nodes::{NodeProcessEnv, QuorumCluster};
use crate::workload::{self, Recorder, WorkloadConfig, WorkloadKind};

/// Which system the run breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum System {
    Quorumsql,
    Galera,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NetMode {
    Netns,
    Loopback,
}

/// Everything a run needs to know; `main` fills it from the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub system: System,
    pub nodes: u8,
    /// How long faults are injected (the quiet period and the checks come on top).
    pub duration: Duration,
    pub quiet: Duration,
    /// How long the healed cluster may take to be whole again, and replicas to converge.
    pub recovery_timeout: Duration,
    pub nemeses: Vec<Nemesis>,
    pub workloads: Vec<WorkloadKind>,
    pub clients: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub binary: PathBuf,
    pub net: NetMode,
    /// Namespace names and subnet of this run (`qsc<K>-…`, 10.77.K.0/24).
    pub net_id: u8,
    /// A planted bug for the node processes (only a binary built with the `planted-bugs`
    /// feature acts on it); the harness must then find anomalies.
    pub planted_bug: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error(transparent)]
    Nodes(#[from] crate::nodes::NodesError),
    #[error(transparent)]
    Workload(#[from] workload::WorkloadError),
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("quorumsql binary {0} not found; build it with `cargo build --release -p quorumsql-cli` or pass --binary")]
    NoBinary(PathBuf),
}

/// What a run found, as written to `report.json` and summarised in the last line.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub target: String,
    pub seed: u64,
    pub nodes: u8,
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
    pub anomalies: usize,
    pub lost: u64,
    pub faults: Vec<Applied>,
    pub problems: Vec<Problem>,
    /// Findings that are the product's designed reaction, not anomalies (a node that must be
    /// rebuilt after a binlog rotation failure).
    pub notes: Vec<Problem>,
    pub checks: quorumsql_chaos_check::CheckReport,
    pub out: PathBuf,
}

impl RunSummary {
    pub fn last_line(&self) -> String {
        format!(
            "chaos: target={} ops={} ok={} fail={} unknown={} anomalies={} lost={} seed={}",
            self.target,
            self.ops,
            self.ok,
            self.fail,
            self.unknown,
            self.anomalies,
            self.lost,
            self.seed
        )
    }

    pub fn clean(&self) -> bool {
        self.anomalies == 0 && self.lost == 0
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    std::fs::write(path, bytes).map_err(|source| RunError::Output {
        path: path.to_path_buf(),
        source,
    })
}

/// Something the harness itself saw go wrong (beyond what the history checkers judge): a
/// cluster that did not recover, replicas that differ, a workload that could not run.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: String,
    pub message: String,
}

fn anomaly(kind: &str, message: String) -> Problem {
    Problem {
        kind: kind.into(),
        message,
    }
}

pub async fn run(cfg: RunConfig) -> Result<RunSummary, RunError> {
    if cfg.system == System::Quorumsql && !cfg.binary.is_file() {
        return Err(RunError::NoBinary(cfg.binary.clone()));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|source| RunError::Output {
        path: cfg.out.clone(),
        source,
    })?;
    // Node configs need absolute paths (a node refuses a relative data_dir).
    let mut cfg = cfg;
    cfg.out = std::fs::canonicalize(&cfg.out).map_err(|source| RunError::Output {
        path: cfg.out.clone(),
        source,
    })?;
    let node_ids: Vec<u8> = (1..=cfg.nodes).collect();
    let net = match cfg.net {
        NetMode::Netns => Network::Netns(Netns::create(cfg.net_id, &node_ids)?),
        NetMode::Loopback => Network::Loopback,
    };
    let env = cfg
        .planted_bug
        .iter()
        .map(|b| ("QUORUMSQL_PLANTED_BUG".to_string(), b.clone()))
        .collect();
    // libfaketime only in runs that jump clocks: every other run's processes stay unpreloaded.
    let clocks = if cfg.system == System::Quorumsql && cfg.nemeses.contains(&Nemesis::ClockJump) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x0063_6c6f_636b);
        let clocks = FakeClocks::new(clock::assign_modes(&node_ids, &mut rng))
            .map_err(crate::nodes::NodesError::from)?;
        tracing::info!("faked clocks: {:?}", clocks.modes());
        Some(clocks)
    } else {
        None
    };
    let nodes_dir = cfg.out.join("nodes");
    let cluster = Arc::new(match cfg.system {
        System::Quorumsql => Cluster::Quorum(QuorumCluster::configure(
            &cfg.binary,
            &nodes_dir,
            net,
            cfg.nodes,
            crate::USER,
            crate::PASSWORD,
            NodeProcessEnv { env, clocks },
        )?),
        System::Galera => Cluster::Galera(GaleraCluster::configure(
            &nodes_dir,
            net,
            cfg.nodes,
            crate::USER,
            crate::PASSWORD,
        )?),
    });
    cluster.start_all().await?;
    let st = cluster.wait_ready(Duration::from_secs(180)).await?;
    tracing::info!("cluster up: {st}");

    let wcfg = WorkloadConfig {
        clients: cfg.clients,
        seed: cfg.seed,
        ..WorkloadConfig::new(crate::USER, crate::PASSWORD)
    };
    let targets = cluster.targets();
    let initial = workload::setup(&cfg.workloads, &wcfg, &targets).await?;
    // RO-port reads may be stale, but not older than the initial state the checkers assume:
    // start the clients once every replica has the setup.
    if let Err(e) = cluster.wait_caught_up(Duration::from_secs(60), &[]).await {
        tracing::warn!("starting the workloads before every replica has the setup: {e}");
    }

    let run_start = Instant::now();
    let recorder = Recorder::new(run_start);
    let stop_load = CancellationToken::new();
    let mut clients = Vec::new();
    for &kind in &cfg.workloads {
        clients.push(tokio::spawn(workload::run(
            kind,
            wcfg.clone(),
            targets.clone(),
            stop_load.clone(),
            recorder.clone(),
        )));
    }

    // Faults, then everything healed, then a quiet period under load.
    let plan = nemesis::schedule(cfg.seed, &cfg.nemeses, cfg.duration);
    write(
        &cfg.out.join("schedule.json"),
        &serde_json::to_vec_pretty(&plan).unwrap_or_default(),
    )?;
    let stop_nemesis = CancellationToken::new();
    let phase_start = Instant::now();
    let nemesis_task = tokio::spawn(nemesis::run(
        cluster.clone(),
        plan,
        run_start,
        phase_start,
        cfg.binary.clone(),
        stop_nemesis.clone(),
    ));
    tokio::time::sleep_until((phase_start + cfg.duration).into()).await;
    stop_nemesis.cancel();
    let applied = nemesis_task.await.unwrap_or_default();
    if let Err(e) = cluster.heal() {
        tracing::error!("heal: {e}");
    }
    tokio::time::sleep(cfg.quiet).await;
    stop_load.cancel();
    let mut problems = Vec::new();
    for c in clients {
        match c.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(anomaly("workload-failed", e.to_string())),
            Err(e) => problems.push(anomaly("workload-panicked", e.to_string())),
        }
    }

    // After healing, every node must be back and serving, or say it is diverged. A node hit
    // by a binlog rotation failure is expected to need a rebuild (design-review 2): that is a
    // note. Any other diverged node is an anomaly.
    let rotation_hit: Vec<u8> = applied
        .iter()
        .filter(|a| a.planned.nemesis == Nemesis::BinlogRotationFailure)
        .flat_map(|a| a.span.nodes.iter().copied())
        .collect();
    let mut notes = Vec::new();
    let diverged = match cluster.wait_recovered(cfg.recovery_timeout).await {
        Ok(d) => d,
        Err(e) => {
            problems.push(anomaly("no-recovery", e.to_string()));
            Vec::new()
        }
    };
    for (n, why) in &diverged {
        if rotation_hit.contains(n) {
            notes.push(anomaly(
                "needs-rebuild",
                format!(
                    "node{n} is diverged after a binlog rotation failure and stays out until an \
                     operator rebuilds it (no automatic rebuild): {why}"
                ),
            ));
        } else {
            problems.push(anomaly("diverged", format!("node{n}: {why}")));
        }
    }
    let diverged: Vec<u8> = diverged.into_iter().map(|(n, _)| n).collect();
    if let Err(e) = workload::final_reads(
        &cfg.workloads,
        &wcfg,
        &targets,
        &recorder,
        Instant::now() + Duration::from_secs(60),
    )
    .await
    {
        problems.push(anomaly("final-read-failed", e.to_string()));
    }
    problems.extend(convergence(&cluster, cfg.recovery_timeout, &diverged).await);

    let history = recorder.snapshot();
    finish(
        &cfg,
        cluster.name(),
        &initial,
        history,
        applied,
        problems,
        notes,
    )
}

/// Every node's mariadbd holds the same data once replication caught up (DESIGN §6 inv. 3);
/// diverged nodes (mariadbd stopped until rebuilt) are left out.
async fn convergence(cluster: &Cluster, within: Duration, diverged: &[u8]) -> Vec<Problem> {
    if let Err(e) = cluster.wait_caught_up(within, diverged).await {
        return vec![anomaly("not-converged", e)];
    }
    let mut sums: Vec<(u8, Result<Vec<String>, String>)> = Vec::new();
    for i in cluster
        .nodes()
        .into_iter()
        .filter(|i| !diverged.contains(i))
    {
        let Some(sock) = cluster.mariadb_socket(i) else {
            continue;
        };
        sums.push((i, checksums(&sock).await));
    }
    let mut out = Vec::new();
    let reference = sums
        .iter()
        .find_map(|(i, s)| s.as_ref().ok().map(|s| (*i, s)));
    for (i, s) in &sums {
        match (s, reference) {
            (Err(e), _) => out.push(anomaly(
                "checksum-failed",
                format!("node{i}: cannot checksum: {e}"),
            )),
            (Ok(s), Some((r, rs))) if s != rs => out.push(anomaly(
                "divergence",
                format!("node{i} differs from node{r}: {s:?} vs {rs:?}"),
            )),
            _ => {}
        }
    }
    out
}

async fn checksums(sock: &Path) -> Result<Vec<String>, String> {
    let mut conn = SqlConn::connect_unix(sock, "root", "")
        .await
        .map_err(|e| e.to_string())?;
    let tables = conn
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'chaos' ORDER BY table_name")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for t in tables {
        let name = t.get_idx(0).unwrap_or_default().to_string();
        let rows = conn
            .query(&format!("CHECKSUM TABLE chaos.`{name}`"))
            .await
            .map_err(|e| e.to_string())?;
        let sum = rows
            .first()
            .and_then(|r| r.get_idx(1))
            .unwrap_or("NULL")
            .to_string();
        out.push(format!("{name}={sum}"));
    }
    Ok(out)
}

fn finish(
    cfg: &RunConfig,
    target: &str,
    initial: &Initial,
    mut history: Vec<Op>,
    applied: Vec<Applied>,
    problems: Vec<Problem>,
    notes: Vec<Problem>,
) -> Result<RunSummary, RunError> {
    history.sort_by_key(|o| (o.end_ns, o.id));
    let report = check(&history, initial);
    let mut hist = Vec::new();
    for op in &history {
        // Writing to a Vec cannot fail but for encoding errors, which the types rule out.
        let _ = quorumsql_chaos_check::history::write_op(&mut hist, op);
    }
    write(&cfg.out.join("history.jsonl"), &hist)?;
    let spans: Vec<FaultSpan> = applied.iter().map(|a| a.span.clone()).collect();
    let title = format!(
        "{target} chaos: {} nodes, seed {}, nemeses {:?}",
        cfg.nodes, cfg.seed, cfg.nemeses
    );
    write(
        &cfg.out.join("run.svg"),
        render_svg(&history, &spans, &report, &title).as_bytes(),
    )?;
    let count = |o: Outcome| history.iter().filter(|op| op.outcome == o).count();
    let mut problems = problems;
    if count(Outcome::Ok) == 0 {
        // A run in which nothing succeeded proves nothing; it must not look clean.
        problems.push(anomaly(
            "no-progress",
            format!("no operation succeeded among {} recorded", history.len()),
        ));
    }
    let summary = RunSummary {
        target: target.into(),
        seed: cfg.seed,
        nodes: cfg.nodes,
        ops: history.len(),
        ok: count(Outcome::Ok),
        fail: count(Outcome::Fail),
        unknown: count(Outcome::Unknown),
        anomalies: report.anomalies.len() + problems.len(),
        lost: report.lost,
        faults: applied,
        problems,
        notes,
        checks: report,
        out: cfg.out.clone(),
    };
    write(
        &cfg.out.join("report.json"),
        &serde_json::to_vec_pretty(&summary).unwrap_or_default(),
    )?;
    Ok(summary)
}
