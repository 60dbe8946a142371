//! `quorumsql up`: the embedded default. Writes one config per node under DIR (or reuses the
//! ones a previous `up` wrote, so a second `up` restarts the same cluster with its data), runs
//! every node as a child `quorumsql node` process on loopback, waits until the cluster has a
//! master, prints how to connect, and stops everything on Ctrl-C.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use quorumsql_node::admin_client::ClusterStatus;
use quorumsql_node::config::{
    generate_secret, member_at, AdminSection, ClusterSection, MariadbSection, NodeConfig,
    NodeSection, RaftSection,
};
use tokio::process::{Child, Command};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Number of nodes (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Where configs, logs and data live.
    #[arg(long, default_value = "./quorumsql-data")]
    dir: PathBuf,
    /// Node i uses ports P+10(i−1)+k: k = 0 RW, 1 RO, 2 peer, 3 admin, 4 mariadbd, 5 serve.
    #[arg(long, default_value_t = 4000)]
    base_port: u16,
    /// Client account to create (all privileges on application data, none administrative).
    #[arg(long, default_value = "quorum")]
    user: String,
    #[arg(long, default_value = "quorum")]
    password: String,
    /// How long to wait for the first master before giving up.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    wait: Duration,
    /// Only write (or check) the node configs and exit: for running the nodes under another
    /// supervisor, or one by one in tests.
    #[arg(long)]
    configs_only: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s or 2m"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

pub async fn run(args: UpArgs) -> Result<(), String> {
    if ![3, 5].contains(&args.nodes) {
        return Err(format!(
            "--nodes {}: a cluster has 3 or 5 nodes",
            args.nodes
        ));
    }
    if args.base_port == 0 || u32::from(args.base_port) + 10 * args.nodes as u32 > 65535 {
        return Err(format!(
            "--base-port {} leaves no room for {} nodes",
            args.base_port, args.nodes
        ));
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", args.dir.display()))?;
    let configs = write_or_reuse_configs(&dir, &args)?;
    if args.configs_only {
        for (_, p) in &configs {
            println!("{}", p.display());
        }
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;

    let mut children: Vec<(u64, Child)> = Vec::new();
    for (id, path) in &configs {
        let log_path = dir.join(format!("node{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("node")
            .arg("--config")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true);
        // If `up` dies without cleaning up (SIGKILL), its nodes get SIGTERM and fence their own
        // mariadbd on the way out, instead of running on unsupervised.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        println!(
            "started node{id} (pid {}), log {}",
            child.id().unwrap_or(0),
            log_path.display()
        );
        children.push((*id, child));
    }

    let members: Vec<(u64, SocketAddr)> = configs
        .iter()
        .filter_map(|(_, p)| NodeConfig::load(p).ok())
        .map(|c| (c.node.id, c.me().admin))
        .collect();
    let status_cmd = format!(
        "quorumsql status --config {}",
        configs
            .first()
            .map(|(_, p)| p.display().to_string())
            .unwrap_or_default()
    );

    let deadline = Instant::now() + args.wait;
    let outcome = tokio::select! {
        r = wait_for_master(&members, deadline) => r,
        _ = stop_signal() => Err("interrupted".to_string()),
    };
    match outcome {
        Ok(status) => {
            let master = status.master.unwrap_or(1);
            let rw_port = args.base_port + 10 * (master as u16 - 1);
            println!();
            println!("{}", status.verdict);
            println!();
            println!("Connect (read-write, any node's RW port reaches the master):");
            println!(
                "  mariadb -h127.0.0.1 -P{rw_port} -u{} -p{}",
                args.user, args.password
            );
            println!("Read-only port of node i: {} + 10(i-1) + 1", args.base_port);
            println!("Cluster status:  {status_cmd}");
            println!(
                "Ctrl-C stops every process this command started; data stays in {}.",
                dir.display()
            );
        }
        Err(e) => {
            stop_all(&mut children).await;
            return Err(format!(
                "{e}; see the node logs in {} ({status_cmd})",
                dir.display()
            ));
        }
    }

    // Foreground until Ctrl-C or until a node process dies (which the operator must hear about).
    let result = tokio::select! {
        _ = stop_signal() => Ok(()),
        (id, status) = first_exit(&mut children) => {
            Err(format!("node{id} exited ({status}); see {}", dir.join(format!("node{id}.log")).display()))
        }
    };
    println!("stopping...");
    stop_all(&mut children).await;
    result
}

fn write_or_reuse_configs(dir: &Path, args: &UpArgs) -> Result<Vec<(u64, PathBuf)>, String> {
    let paths: Vec<(u64, PathBuf)> = (1..=args.nodes)
        .map(|i| (i, dir.join(format!("node{i}.toml"))))
        .collect();
    let existing = paths.iter().filter(|(_, p)| p.exists()).count();
    if existing == paths.len() {
        for (_, p) in &paths {
            let cfg = NodeConfig::load(p).map_err(|e| e.to_string())?;
            if cfg.cluster.members.len() as u64 != args.nodes {
                return Err(format!(
                    "{} describes a {}-node cluster, not {}; use another --dir",
                    p.display(),
                    cfg.cluster.members.len(),
                    args.nodes
                ));
            }
        }
        println!("reusing the cluster in {}", dir.display());
        return Ok(paths);
    }
    if existing > 0 {
        return Err(format!(
            "{} holds only some node configs ({existing} of {}); remove it or use another --dir",
            dir.display(),
            args.nodes
        ));
    }
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let members: Vec<_> = (1..=args.nodes)
        .map(|i| member_at(i, lo, args.base_port, (i - 1) as u16))
        .collect();
    let secret = generate_secret();
    for (id, path) in &paths {
        let cfg = NodeConfig {
            node: NodeSection {
                id: *id,
                data_dir: dir.join(format!("node{id}")),
            },
            cluster: ClusterSection {
                name: "local".into(),
                secret: secret.clone(),
                members: members.clone(),
            },
            mariadb: MariadbSection {
                bootstrap_user: Some(args.user.clone()),
                bootstrap_password: Some(args.password.clone()),
                ..MariadbSection::default()
            },
            raft: RaftSection::default(),
            admin: AdminSection::default(),
        };
        let text = cfg
            .to_toml()
            .map_err(|e| format!("cannot render config: {e}"))?;
        // Validate what we wrote exactly as `quorumsql node` will read it.
        NodeConfig::parse(&text, path).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    println!("wrote {} node configs to {}", args.nodes, dir.display());
    Ok(paths)
}

async fn wait_for_master(
    members: &[(u64, SocketAddr)],
    deadline: Instant,
) -> Result<ClusterStatus, String> {
    let mut last = String::new();
    loop {
        let status = ClusterStatus::gather(members, Duration::from_secs(1)).await;
        if status.verdict.starts_with("cluster ok") {
            return Ok(status);
        }
        if status.verdict != last {
            println!("waiting: {}", status.verdict);
            last = status.verdict.clone();
        }
        if Instant::now() >= deadline {
            return Err(format!("no healthy cluster in time; last seen: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Ctrl-C (SIGINT) or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn first_exit(children: &mut [(u64, Child)]) -> (u64, String) {
    loop {
        for (id, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return (*id, status.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM every node (a node fences its own mariadbd with SIGKILL on the way out), then
/// SIGKILL whatever is still there after a grace period.
async fn stop_all(children: &mut [(u64, Child)]) {
    for (_, child) in children.iter() {
        if let Some(pid) = child.id() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (id, child) in children.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, child.wait()).await.is_err() {
            eprintln!("node{id} did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
}
