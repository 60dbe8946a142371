//! `quorumsql init`: one config file per host for a multi-machine cluster.

use std::net::IpAddr;
use std::path::PathBuf;

use quorumsql_node::config::{
    generate_secret, member_at, AdminSection, ClusterSection, MariadbSection, NodeConfig,
    NodeSection, RaftSection,
};

#[derive(clap::Args)]
pub struct InitArgs {
    /// Comma-separated IP addresses of the hosts, in node-id order (3 or 5).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<IpAddr>,
    /// Directory to write node1.toml, node2.toml, ... into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Base port on every host (RW = P, RO = P+1, peer = P+2, admin = P+3, mariadbd = P+4,
    /// serve = P+5).
    #[arg(long, default_value_t = 4000)]
    base_port: u16,
    /// Data directory on each host.
    #[arg(long, default_value = "/var/lib/quorumsql")]
    data_dir: PathBuf,
    #[arg(long, default_value = "quorumsql")]
    cluster_name: String,
}

pub fn run(args: InitArgs) -> Result<(), String> {
    if ![3, 5].contains(&args.nodes.len()) {
        return Err(format!(
            "--nodes lists {} hosts; a cluster has 3 or 5",
            args.nodes.len()
        ));
    }
    if args.base_port == 0 || args.base_port > 65530 {
        return Err(format!(
            "--base-port {} leaves no room for 6 ports",
            args.base_port
        ));
    }
    let secret = generate_secret();
    let members: Vec<_> = args
        .nodes
        .iter()
        .enumerate()
        .map(|(i, host)| member_at(i as u64 + 1, *host, args.base_port, 0))
        .collect();
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    for m in &members {
        let cfg = NodeConfig {
            node: NodeSection {
                id: m.id,
                data_dir: args.data_dir.clone(),
            },
            cluster: ClusterSection {
                name: args.cluster_name.clone(),
                secret: secret.clone(),
                members: members.clone(),
            },
            mariadb: MariadbSection::default(),
            raft: RaftSection::default(),
            admin: AdminSection::default(),
        };
        let text = cfg
            .to_toml()
            .map_err(|e| format!("cannot render config: {e}"))?;
        let path = args.out.join(format!("node{}.toml", m.id));
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {} (host {})", path.display(), m.rw.ip());
    }
    println!("copy each file to its host and run: quorumsql node --config nodeN.toml");
    Ok(())
}
