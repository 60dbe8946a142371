//! `quorumsql-chaos`: break a real QuorumSQL cluster on purpose and check every client history.
//!
//! The last line is
//! `chaos: target=T ops=N ok=O fail=F unknown=U anomalies=A lost=L rebuilds=R seed=S`; the
//! exit code is 0 only for a clean run (no anomaly, nothing lost), 1 for a dirty run and 2 when
//! the harness could not run at all.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use quorumsql_chaos::nemesis;
use quorumsql_chaos::runner::{self, NetMode, RunConfig};
use quorumsql_chaos::workload::WorkloadKind;

#[derive(Parser)]
#[command(
    name = "quorumsql-chaos",
    about = "Chaos harness: real processes, real faults, checked histories"
)]
struct Args {
    /// Cluster size (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: u8,
    /// How long faults are injected, e.g. 120s, 3m, 30m (a quiet period and checks follow).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    duration: Duration,
    /// Quiet period under load after the last fault healed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    quiet: Duration,
    /// How long the healed cluster may take to be whole again and its replicas to converge
    /// (at least 120 s once a node is being rebuilt).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    recovery_timeout: Duration,
    /// Comma-separated nemeses: kill, pause, partition, restart-all, follower-restart,
    /// kill-query, switchover, pause-master, isolate-master, clock-jump,
    /// binlog-rotation-failure, ddl-at-fence; or `all` / `none`.
    #[arg(long, default_value = "kill,pause,partition")]
    nemesis: String,
    /// Comma-separated workloads: register, bank, set, list-append.
    #[arg(long, default_value = "register,bank")]
    workload: String,
    /// Clients per workload.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seed of the fault schedule and the clients' choices (random if not given; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory (history, schedule, node logs, report, picture).
    #[arg(long)]
    out: Option<PathBuf>,
    /// What to test: quorumsql, or galera (MariaDB Galera from Debian's galera-4, same faults
    /// and workloads, for comparison).
    #[arg(long, default_value = "quorumsql")]
    target: String,
    /// netns: one network namespace per node (needs root and iproute2; partitions work);
    /// loopback: every node on 127.0.0.1 (no partitions).
    #[arg(long, default_value = "netns")]
    net: String,
    /// Names and subnet of this run's namespaces (`qsc<K>-n1`…, 10.77.K.0/24): runs with
    /// different ids can share a machine.
    #[arg(long, default_value_t = 0)]
    net_id: u8,
    /// The quorumsql binary (default: the one next to this program).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Test builds only: a planted bug the nodes enable (skip-lease, early-ack); needs a binary
    /// built with `--features quorumsql-node/planted-bugs`.
    #[arg(long)]
    planted_bug: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 3m or 1h"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

fn config(args: Args) -> Result<RunConfig, String> {
    if ![3, 5].contains(&args.nodes) {
        return Err(format!(
            "--nodes {}: a cluster has 3 or 5 nodes",
            args.nodes
        ));
    }
    let system = match args.target.as_str() {
        "quorumsql" => runner::System::Quorumsql,
        "galera" => runner::System::Galera,
        o => return Err(format!("--target {o}: use quorumsql or galera")),
    };
    if system == runner::System::Galera && args.planted_bug.is_some() {
        return Err("--planted-bug applies to quorumsql nodes only".into());
    }
    let net = match args.net.as_str() {
        "netns" => NetMode::Netns,
        "loopback" => NetMode::Loopback,
        o => return Err(format!("--net {o}: use netns or loopback")),
    };
    let nemeses = nemesis::parse_list(&args.nemesis)?;
    let workloads = args
        .workload
        .split(',')
        .map(|w| w.trim().parse::<WorkloadKind>())
        .collect::<Result<Vec<_>, _>>()?;
    if workloads.is_empty() {
        return Err("--workload: name at least one workload".into());
    }
    if args.clients == 0 || args.clients > 256 {
        return Err(format!("--clients {}: use 1..=256", args.clients));
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("chaos-out/seed-{seed}")));
    let binary = match args.binary {
        Some(b) => b,
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("quorumsql")))
            .unwrap_or_else(|| PathBuf::from("target/release/quorumsql")),
    };
    Ok(RunConfig {
        system,
        nodes: args.nodes,
        duration: args.duration,
        quiet: args.quiet,
        recovery_timeout: args.recovery_timeout,
        nemeses,
        workloads,
        clients: args.clients,
        seed,
        out,
        binary,
        net,
        net_id: args.net_id,
        planted_bug: args.planted_bug,
    })
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = match config(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quorumsql-chaos: {e}");
            std::process::exit(2);
        }
    };
    eprintln!(
        "chaos: seed {} ({} nodes, {:?} of faults: {:?}; workloads {:?}) -> {}",
        cfg.seed,
        cfg.nodes,
        cfg.duration,
        cfg.nemeses,
        cfg.workloads,
        cfg.out.display()
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quorumsql-chaos: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    // Ctrl-C / SIGTERM: drop the run, which stops every node and removes the namespaces.
    let result = rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = runner::run(cfg) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
            _ = terminated => None,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(15));
    let Some(result) = result else {
        eprintln!("quorumsql-chaos: interrupted; nodes stopped and namespaces removed");
        std::process::exit(130);
    };
    match result {
        Ok(summary) => {
            for p in &summary.problems {
                eprintln!("problem: {}: {}", p.kind, p.message);
            }
            for n in &summary.notes {
                eprintln!("note: {}: {}", n.kind, n.message);
            }
            for e in &summary.rebuilds.episodes {
                eprintln!("rebuild: {}", e.line());
            }
            eprint!("{}", summary.checks.summary());
            println!("{}", summary.last_line());
            std::process::exit(if summary.clean() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("quorumsql-chaos: {e}");
            std::process::exit(2);
        }
    }
}
