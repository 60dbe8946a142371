//! `quorumsql-sim`: runs seeded schedules of the real log core and reports the first failing seed.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use quorumsql_sim::{format_failure, run_many, PlantedBug};

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulator of the QuorumSQL global binlog and lease")]
struct Args {
    /// Number of seeds to run (seeds S, S+1, ...).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Cluster size (3 or 5); default alternates by seed.
    #[arg(long)]
    nodes: Option<usize>,
    /// Fault-injection steps per seed (a settle phase follows).
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Run with a deliberately wrong configuration (lease-no-drift) to prove the checker works.
    #[arg(long)]
    plant_bug: Option<PlantedBug>,
    /// Print aggregate statistics.
    #[arg(long)]
    stats: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(n) = args.nodes {
        if n != 3 && n != 5 {
            eprintln!("sim: --nodes must be 3 or 5, got {n}");
            return ExitCode::from(2);
        }
    }
    let t0 = Instant::now();
    if std::env::var("SIM_SHOW").is_ok() {
        let r = quorumsql_sim::run_seed(&quorumsql_sim::SimParams {
            seed: args.seed,
            nodes: args.nodes.unwrap_or(if args.seed % 2 == 0 { 3 } else { 5 }),
            steps: args.steps,
            plant_bug: args.plant_bug,
        });
        eprintln!("{:?}", r.stats);
        for t in &r.trace {
            eprintln!("{t}");
        }
    }
    let (failures, steps, stats) = run_many(
        args.seed,
        args.seeds,
        args.nodes,
        args.steps,
        args.plant_bug,
    );
    for f in failures.iter().take(3) {
        eprint!("{}", format_failure(f));
    }
    if failures.len() > 3 {
        eprintln!("... and {} more failing seeds", failures.len() - 3);
    }
    if args.stats {
        eprintln!("sim: {stats:?} in {:.1}s", t0.elapsed().as_secs_f64());
    }
    println!(
        "sim: seeds={} steps={} violations={}",
        args.seeds,
        steps,
        failures.len()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
