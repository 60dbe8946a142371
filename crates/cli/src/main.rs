//! `quorumsql`: run a node, run a whole local cluster, ask a cluster how it is, write configs.

mod init;
mod status;
mod switchover;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "quorumsql",
    version,
    about = "MariaDB made highly available by a replicated binlog"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node: supervise its mariadbd and take part in the cluster.
    Node {
        /// The node's TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a whole cluster on this machine (loopback), in the foreground. Ctrl-C stops it.
    Up(up::UpArgs),
    /// Show every node's role, position and health, and a verdict line.
    Status(status::StatusArgs),
    /// Write one config per host for a multi-machine deployment.
    Init(init::InitArgs),
    /// Hand the master role to a replica (planned; no commit fails): `--to N` or the most
    /// caught-up healthy replica.
    Switchover(switchover::SwitchoverArgs),
}

/// The nice value of a node process when it runs as root. The log's heartbeats and lease
/// rounds must not starve when clients saturate the CPU (measured: 32 client threads straight
/// at the master's mariadbd on 2 cores made it lose its leadership). mariadbd runs 10 levels
/// lower, at 0 (see the launcher), so the node's few, short-lived tasks win the CPU while
/// mariadbd still competes evenly with its clients.
const NODE_NICE: libc::c_int = -10;

/// Raises the priority of the calling thread, before any other thread exists: every thread the
/// node starts inherits it.
fn raise_node_priority() {
    // SAFETY: geteuid and setpriority have no memory preconditions; who=0 is this thread.
    unsafe {
        if libc::geteuid() == 0 && libc::setpriority(libc::PRIO_PROCESS, 0, NODE_NICE) != 0 {
            eprintln!(
                "quorumsql: cannot raise the node's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Node { .. }) {
        raise_node_priority();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUORUMSQL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quorumsql: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result: Result<(), String> = runtime.block_on(async move {
        match cli.command {
            Command::Node { config } => {
                let cfg =
                    quorumsql_node::config::NodeConfig::load(&config).map_err(|e| e.to_string())?;
                quorumsql_node::daemon::run(cfg)
                    .await
                    .map_err(|e| e.to_string())
            }
            Command::Up(args) => up::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Init(args) => init::run(args),
            Command::Switchover(args) => switchover::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("quorumsql: {msg}");
            ExitCode::from(1)
        }
    }
}
