//! `quorumsql status`: one line per node and a verdict line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use quorumsql_node::admin::NodeStatus;
use quorumsql_node::admin_client::{fetch_json, ClusterStatus};
use quorumsql_node::config::NodeConfig;

/// Exit status: 0 when the cluster is ok, 2 when it is not, 1 when it cannot be asked.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// A node config file: every member's admin port is asked.
    #[arg(long, conflicts_with = "admin")]
    config: Option<PathBuf>,
    /// One node's admin address: that node gathers the cluster's status.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Print JSON (`master`, `nodes[]` with `id`, `role`, `last_gtid`, `applied_gtid`, `healthy`).
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatusArgs) -> Result<(), String> {
    let timeout = Duration::from_secs(2);
    let cluster: ClusterStatus = match (&args.config, &args.admin) {
        (None, Some(addr)) => fetch_json(*addr, "/cluster", timeout)
            .await
            .map_err(|e| format!("cannot ask {addr}: {e}"))?,
        (config, _) => {
            // Without --config or --admin, the cluster `quorumsql up` runs in this directory.
            let path = config
                .clone()
                .unwrap_or_else(|| PathBuf::from("quorumsql-data/node1.toml"));
            if config.is_none() && !path.is_file() {
                return Err(
                    "give --config FILE or --admin HOST:PORT (no ./quorumsql-data/node1.toml here)"
                        .into(),
                );
            }
            let cfg = NodeConfig::load(&path).map_err(|e| e.to_string())?;
            let members: Vec<(u64, SocketAddr)> = cfg
                .cluster
                .members
                .iter()
                .map(|m| (m.id, m.admin))
                .collect();
            ClusterStatus::gather(&members, timeout).await
        }
    };
    if args.json {
        let text = serde_json::to_string_pretty(&cluster).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print_table(&cluster);
    }
    if cluster.verdict.starts_with("cluster ok") {
        Ok(())
    } else {
        // The verdict is already printed; scripts read the exit status: 2 = not healthy.
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(2)
    }
}

fn print_table(c: &ClusterStatus) {
    println!(
        "{:<6} {:<10} {:>6} {:>9} {:<16} {:<16} {:>6} {:>9} health",
        "node", "role", "epoch", "commit", "log gtid", "applied gtid", "lag", "lease ms"
    );
    for s in &c.nodes {
        let dash = || "-".to_string();
        if s.role == "unreachable" {
            println!(
                "{:<6} {:<10} {}",
                format!("node{}", s.id),
                s.role,
                s.problems.join("; ")
            );
            continue;
        }
        println!(
            "{:<6} {:<10} {:>6} {:>9} {:<16} {:<16} {:>6} {:>9} {}",
            format!("node{}", s.id),
            s.role,
            s.epoch,
            s.commit_index,
            s.last_gtid.clone().unwrap_or_else(dash),
            s.applied_gtid.clone().unwrap_or_else(dash),
            lag(s).map(|l| l.to_string()).unwrap_or_else(dash),
            s.lease_remaining_ms
                .map(|l| l.to_string())
                .unwrap_or_else(dash),
            if s.healthy {
                "ok".to_string()
            } else {
                s.problems.join("; ")
            }
        );
    }
    println!("{}", c.verdict);
}

/// Transactions the node's mariadbd is behind the log (same domain, by sequence number).
fn lag(s: &NodeStatus) -> Option<u64> {
    let seq =
        |g: &Option<String>| -> Option<u64> { g.as_deref()?.rsplit('-').next()?.parse().ok() };
    Some(seq(&s.last_gtid)?.saturating_sub(seq(&s.applied_gtid).unwrap_or(0)))
}
