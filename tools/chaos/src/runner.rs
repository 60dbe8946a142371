//! One chaos run end to end: start the cluster, load it, break it on schedule, heal, let it go
//! quiet, read everything back, check the history and every node's data, write the outputs.

use std::collections::BTreeMap;
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
use crate::ddl_fence::FinalCheck;
use crate::galera::GaleraCluster;
use crate::nemesis::{self, Applied, Nemesis};
use crate::net::{Netns, Network};
use crate::nodes::{NodeProcessEnv, QuorumCluster};
use crate::rebuilds::{self, Episode};
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
    /// Findings that are not anomalies (where rebuild logs and data dirs disagree).
    pub notes: Vec<Problem>,
    /// The product's automatic rebuilds during the run.
    pub rebuilds: Rebuilds,
    pub checks: quorumsql_chaos_check::CheckReport,
    pub out: PathBuf,
}

impl RunSummary {
    pub fn last_line(&self) -> String {
        format!(
            "chaos: target={} ops={} ok={} fail={} unknown={} anomalies={} lost={} rebuilds={} \
             seed={}",
            self.target,
            self.ops,
            self.ok,
            self.fail,
            self.unknown,
            self.anomalies,
            self.lost,
            self.rebuilds.count,
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
    let run_start_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
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

    // After healing, every node must be back and serving, previously diverged ones included:
    // the product rebuilds a diverged node from a healthy replica on its own.
    let recovery = cluster.wait_recovered(cfg.recovery_timeout).await;
    tracing::info!(
        "recovery after {:?}: master={} not healthy: {:?}",
        recovery.waited,
        recovery.master,
        recovery.not_healthy
    );
    if !recovery.master {
        problems.push(anomaly(
            "no-recovery",
            format!(
                "no master {:?} after the last fault healed: {}",
                recovery.waited, recovery.status
            ),
        ));
    }
    for u in &recovery.not_healthy {
        let kind = if u.role == "diverged" || u.role == "rebuilding" {
            "not-rebuilt"
        } else {
            "no-recovery"
        };
        problems.push(anomaly(
            kind,
            format!(
                "node{} is still {} {:?} after the last fault healed (not healthy): {}",
                u.node, u.role, recovery.waited, u.problems
            ),
        ));
    }
    let unrecovered: Vec<u8> = recovery.not_healthy.iter().map(|u| u.node).collect();
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
    problems.extend(convergence(&cluster, cfg.recovery_timeout, &unrecovered).await);
    let final_checks: Vec<FinalCheck> = applied
        .iter()
        .flat_map(|a| a.final_checks.iter().cloned())
        .collect();
    problems.extend(nemesis_checks(&cluster, &final_checks, &unrecovered).await);
    let rebuilt = rebuilds_seen(&cluster, run_start_unix);

    let history = recorder.snapshot();
    finish(
        &cfg,
        cluster.name(),
        &initial,
        history,
        applied,
        problems,
        rebuilt,
    )
}

/// What the product's automatic rebuilds did in this run (`crate::rebuilds`).
#[derive(Debug, Default, Serialize)]
pub struct Rebuilds {
    /// Completed rebuilds: the datadirs they set aside, over every node.
    pub count: usize,
    /// Per node, the datadirs set aside (`mariadb.diverged-<unix time>`).
    pub kept_datadirs: BTreeMap<String, Vec<String>>,
    /// From the node logs: each divergence and the rebuild that ended it, with run times.
    pub episodes: Vec<Episode>,
    /// Where the logs and the data dirs disagree.
    #[serde(skip)]
    pub notes: Vec<String>,
}

fn rebuilds_seen(cluster: &Cluster, run_start_unix: f64) -> Rebuilds {
    let Some(q) = cluster.quorum() else {
        return Rebuilds::default();
    };
    let mut out = Rebuilds::default();
    for i in q.nodes() {
        let kept = q
            .data_dir(i)
            .map(|d| rebuilds::kept_datadirs(&d))
            .unwrap_or_default();
        let episodes = match std::fs::read_to_string(q.log_path(i)) {
            Ok(text) => rebuilds::parse_log(i, &text, run_start_unix),
            Err(e) => {
                out.notes.push(format!(
                    "node{i}: cannot read {}: {e}",
                    q.log_path(i).display()
                ));
                Vec::new()
            }
        };
        let in_log = episodes.iter().filter(|e| e.rebuilt()).count();
        if in_log != kept.len() {
            out.notes.push(format!(
                "node{i}: {} datadir(s) set aside but {in_log} rebuild(s) in its log",
                kept.len()
            ));
        }
        out.count += kept.len();
        if !kept.is_empty() {
            out.kept_datadirs.insert(format!("node{i}"), kept);
        }
        out.episodes.extend(episodes);
    }
    out.episodes
        .sort_by(|a, b| a.diverged_at.total_cmp(&b.diverged_at));
    out
}

/// The nemeses' own statements that were answered OK must be durable on every node that
/// recovered (`ddl_fence::FinalCheck`).
async fn nemesis_checks(cluster: &Cluster, checks: &[FinalCheck], excluded: &[u8]) -> Vec<Problem> {
    let mut out = Vec::new();
    if checks.is_empty() {
        return out;
    }
    for i in cluster
        .nodes()
        .into_iter()
        .filter(|i| !excluded.contains(i))
    {
        let Some(sock) = cluster.mariadb_socket(i) else {
            continue;
        };
        let mut conn = match SqlConn::connect_unix(&sock, "root", "").await {
            Ok(c) => c,
            Err(e) => {
                out.push(anomaly(
                    "checksum-failed",
                    format!("node{i}: cannot check the nemeses' acknowledged statements: {e}"),
                ));
                continue;
            }
        };
        for c in checks {
            let got = conn.query_value(&c.query).await;
            match got {
                Ok(Some(v)) if v == c.expect => {}
                other => out.push(anomaly(
                    "lost-nemesis-write",
                    format!(
                        "node{i}: {} but `{}` gives {other:?}, not {}",
                        c.what, c.query, c.expect
                    ),
                )),
            }
        }
        conn.quit().await;
    }
    out
}

/// Every node's mariadbd holds the same data once replication caught up (DESIGN §6 inv. 3);
/// nodes that did not recover (already an anomaly; a diverged one's mariadbd is stopped) are
/// left out.
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
    rebuilds: Rebuilds,
) -> Result<RunSummary, RunError> {
    let notes: Vec<Problem> = rebuilds
        .notes
        .iter()
        .map(|n| anomaly("rebuild-count", n.clone()))
        .collect();
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
        rebuilds,
        checks: report,
        out: cfg.out.clone(),
    };
    write(
        &cfg.out.join("report.json"),
        &serde_json::to_vec_pretty(&summary).unwrap_or_default(),
    )?;
    Ok(summary)
}
