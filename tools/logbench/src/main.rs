//! `logbench logd ...` runs a log-only node; `logbench bench ...` benchmarks three of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use quorumsql_logbench::{bench, logd};
use quorumsql_peer::NodeId;

#[derive(Parser)]
#[command(name = "logbench", about = "QuorumSQL log-only node and log benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a log-only node.
    Logd {
        #[arg(long)]
        id: u64,
        /// Every member including this one: id=host:port,...
        #[arg(long, value_parser = parse_peers)]
        peers: BTreeMap<NodeId, SocketAddr>,
        /// Peer transport address of this node.
        #[arg(long)]
        listen: SocketAddr,
        /// Client port (length-delimited postcard requests).
        #[arg(long)]
        client_listen: SocketAddr,
        /// Log directory (raft-engine).
        #[arg(long)]
        dir: PathBuf,
        /// Cluster secret, hex (at least 32 digits).
        #[arg(long)]
        secret: String,
    },
    /// Start three logd processes and measure commit throughput and latency.
    Bench {
        /// Seconds per concurrency step.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent proposers per step.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 1024)]
        payload_bytes: usize,
        /// Keep node data here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where the proposers run: in-process (inside the master, as capture runs in a node)
        /// or remote (bench process, one TCP connection each).
        #[arg(long, value_enum, default_value = "in-process")]
        proposers: bench::Proposers,
    },
}

fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, SocketAddr>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|e| format!("bad node id {id:?}: {e}"))?;
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|e| format!("bad address {addr:?}: {e}"))?;
        if out.insert(NodeId(id), addr).is_some() {
            return Err(format!("node id {id} named twice"));
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("logbench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Logd {
                id,
                peers,
                listen,
                client_listen,
                dir,
                secret,
            } => logd::run(logd::LogdArgs {
                id: NodeId(id),
                peers,
                listen,
                client_listen,
                dir,
                secret,
            })
            .await
            .map_err(|e| e.to_string()),
            Cmd::Bench {
                seconds,
                concurrency,
                payload_bytes,
                dir,
                proposers,
            } => bench::run(bench::BenchArgs {
                duration: Duration::from_secs(seconds),
                concurrency,
                payload_bytes,
                dir,
                proposers,
            })
            .await
            .map_err(|e| e.to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logbench: {e}");
            ExitCode::FAILURE
        }
    }
}
