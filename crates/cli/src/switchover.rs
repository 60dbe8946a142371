//! `quorumsql switchover`: hand the master role to a replica without failing a commit
//! (DESIGN §3 "Planned switchover"). The master does the work on `POST /switchover`; this command
//! finds the master, asks it, and waits until the new master has finished its promotion.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use quorumsql_node::admin::ControlError;
use quorumsql_node::admin_client::{fetch_json, request, AdminClientError, ClusterStatus};
use quorumsql_node::config::NodeConfig;
use quorumsql_node::roles::switchover::{parse_node, SwitchoverReport};
use serde::Serialize;

/// Exit status: 0 when the new master is ready, 1 otherwise (the message says whether anything
/// changed).
#[derive(clap::Args)]
pub struct SwitchoverArgs {
    /// A node config file: every member's admin port is known from it.
    #[arg(long, conflicts_with = "admin")]
    config: Option<PathBuf>,
    /// One node's admin address; the request is sent on to the master if this is not it.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// The node to hand over to (`2` or `node2`); default: the most caught-up healthy replica.
    #[arg(long)]
    to: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// How long to wait for the new master to finish its promotion.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchoverCliError {
    #[error("give --config FILE or --admin HOST:PORT (no ./quorumsql-data/node1.toml here)")]
    NoTarget,
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    BadArgument(String),
    #[error("cannot ask the admin port {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: AdminClientError,
    },
    #[error("no master right now ({verdict}); nothing was changed")]
    NoMaster { verdict: String },
    #[error("the admin address of node{0} is not known (give --config)")]
    UnknownAdmin(u64),
    #[error("switchover refused by {addr} (HTTP {code}): {error}")]
    Refused {
        addr: SocketAddr,
        code: u16,
        error: String,
    },
    #[error("switchover answer from {addr} is not understood (HTTP {code}): {body}")]
    Malformed {
        addr: SocketAddr,
        code: u16,
        body: String,
    },
    #[error("node{from} handed over to node{to}, but node{to} was not the ready master within {waited:?}; last verdict: {verdict}")]
    NotReady {
        from: u64,
        to: u64,
        waited: Duration,
        verdict: String,
    },
}

#[derive(Serialize)]
struct Done {
    /// From the request until the new master's MasterReady was seen.
    seconds: f64,
    new_epoch: u64,
    #[serde(flatten)]
    report: SwitchoverReport,
}

/// Where the cluster's status comes from.
enum Source {
    Members(Vec<(u64, SocketAddr)>),
    Admin(SocketAddr),
}

impl Source {
    async fn cluster(&self) -> Result<ClusterStatus, SwitchoverCliError> {
        let timeout = Duration::from_secs(2);
        match self {
            Source::Members(m) => Ok(ClusterStatus::gather(m, timeout).await),
            Source::Admin(addr) => fetch_json(*addr, "/cluster", timeout)
                .await
                .map_err(|source| SwitchoverCliError::Admin {
                    addr: *addr,
                    source,
                }),
        }
    }

    fn admin_of(&self, node: u64) -> Option<SocketAddr> {
        match self {
            Source::Members(m) => m.iter().find(|(id, _)| *id == node).map(|(_, a)| *a),
            Source::Admin(_) => None,
        }
    }
}

pub async fn run(args: SwitchoverArgs) -> Result<(), String> {
    run_inner(args).await.map_err(|e| e.to_string())
}

async fn run_inner(args: SwitchoverArgs) -> Result<(), SwitchoverCliError> {
    let source = match (&args.config, &args.admin) {
        (None, Some(addr)) => Source::Admin(*addr),
        (config, _) => {
            let path = config
                .clone()
                .unwrap_or_else(|| PathBuf::from("quorumsql-data/node1.toml"));
            if config.is_none() && !path.is_file() {
                return Err(SwitchoverCliError::NoTarget);
            }
            let cfg =
                NodeConfig::load(&path).map_err(|e| SwitchoverCliError::Config(e.to_string()))?;
            Source::Members(
                cfg.cluster
                    .members
                    .iter()
                    .map(|m| (m.id, m.admin))
                    .collect(),
            )
        }
    };
    let to = match &args.to {
        Some(t) => {
            Some(parse_node(t.trim()).map_err(|e| SwitchoverCliError::BadArgument(e.to_string()))?)
        }
        None => None,
    };
    // Ask the master directly when we know where it is; otherwise the given node, which names
    // the master in its refusal.
    let mut addr = match &source {
        Source::Admin(a) => *a,
        Source::Members(_) => {
            let c = source.cluster().await?;
            let m = c.master.ok_or(SwitchoverCliError::NoMaster {
                verdict: c.verdict.clone(),
            })?;
            source
                .admin_of(m)
                .ok_or(SwitchoverCliError::UnknownAdmin(m))?
        }
    };
    let path = match to {
        Some(n) => format!("/switchover?to={n}"),
        None => "/switchover".to_string(),
    };
    let started = Instant::now();
    let mut followed = false;
    let report: SwitchoverReport = loop {
        // Longer than the master's own bound on the whole switchover.
        let (code, body) = request(addr, "POST", &path, Duration::from_secs(40))
            .await
            .map_err(|source| SwitchoverCliError::Admin { addr, source })?;
        if code == 200 {
            break serde_json::from_str(&body).map_err(|_| SwitchoverCliError::Malformed {
                addr,
                code,
                body: body.clone(),
            })?;
        }
        let err: ControlError =
            serde_json::from_str(&body).map_err(|_| SwitchoverCliError::Malformed {
                addr,
                code,
                body: body.chars().take(500).collect(),
            })?;
        match err.master_admin {
            // A non-master names the master: ask it, once.
            Some(next) if !followed && code == 409 && next != addr => {
                addr = next;
                followed = true;
            }
            _ => {
                return Err(SwitchoverCliError::Refused {
                    addr,
                    code,
                    error: err.error,
                })
            }
        }
    };

    // The old master let go; the switchover is done when the new one applied its MasterReady.
    let waited = Duration::from_secs(args.timeout_secs);
    let mut verdict = String::new();
    let new_epoch = loop {
        if let Ok(c) = source.cluster().await {
            verdict = c.verdict.clone();
            let ready = c
                .nodes
                .iter()
                .find(|n| n.id == report.to && n.role == "master" && n.epoch > report.epoch);
            if let (Some(n), Some(m)) = (ready, c.master) {
                if m == report.to {
                    break n.epoch;
                }
            }
        }
        if started.elapsed() >= waited {
            return Err(SwitchoverCliError::NotReady {
                from: report.from,
                to: report.to,
                waited,
                verdict,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let done = Done {
            seconds,
            new_epoch,
            report,
        };
        match serde_json::to_string_pretty(&done) {
            Ok(t) => println!("{t}"),
            Err(e) => return Err(SwitchoverCliError::Config(e.to_string())),
        }
    } else {
        println!(
            "switchover done: node{} -> node{} in {seconds:.2} s (drain {} ms, read_only {} ms, transfer {} ms)",
            report.from, report.to, report.drain_ms, report.read_only_ms, report.transfer_ms
        );
    }
    Ok(())
}
