//! The QuorumSQL node daemon: one `quorumsql node` process supervises one mariadbd and runs the
//! global binlog, capture, serve, roles, proxy and admin (see docs/ARCHITECTURE.md).

pub mod admin;
pub mod admin_client;
pub mod capture;
pub mod commit_alarm;
pub mod config;
pub mod daemon;
pub mod log_adapters;
pub mod mariadb;
pub mod peer_thread;
pub mod planted;
pub mod proxy;
pub mod proxy_glue;
pub mod rebuild;
pub mod roles;
pub mod serve;
pub mod sql;

/// The account the local mariadbd uses to replicate from this node's serve. Loopback only, and
/// derived from the cluster secret so nothing extra has to be stored or configured.
pub fn serve_credentials(cfg: &config::NodeConfig) -> (String, String) {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"quorumsql serve password\0");
    h.update(cfg.secret_bytes());
    h.update(cfg.node.id.to_le_bytes());
    let password = hex::encode(h.finalize())[..32].to_string();
    ("quorumsql_serve".to_string(), password)
}
