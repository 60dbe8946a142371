//! The node's TOML configuration: parsing, defaults and validation.
//!
//! Every error names the file, the key and what is wrong, because the person reading it is an
//! operator at 3 a.m. with a node that will not start. Unknown keys are errors (a typo in a safety
//! setting must not be silently ignored).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Node ids double as mariadbd `server_id`s; the ids above this are reserved for the replication
/// connections QuorumSQL itself makes (capture and serve), which must never equal a node's.
pub const MAX_NODE_ID: u64 = 0x0FFF_FFFF;

/// QuorumSQL's own MariaDB accounts start with this; client accounts may not.
pub const RESERVED_USER_PREFIX: &str = "quorumsql";

/// The `server_id` capture registers with on node `id`'s mariadbd.
pub fn capture_server_id(id: u64) -> u32 {
    0xE000_0000 | (id as u32 & 0x0FFF_FFFF)
}

/// The `server_id` node `id`'s serve announces to its local replica.
pub fn serve_server_id(id: u64) -> u32 {
    0xF000_0000 | (id as u32 & 0x0FFF_FFFF)
}

/// The whole configuration of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub cluster: ClusterSection,
    #[serde(default)]
    pub mariadb: MariadbSection,
    #[serde(default)]
    pub raft: RaftSection,
    #[serde(default)]
    pub admin: AdminSection,
}

/// This node's identity and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Member id; also the `server_id` of this node's mariadbd. Never reused.
    pub id: u64,
    /// Holds `log/` (the raft log) and `mariadb/` (the datadir).
    pub data_dir: PathBuf,
}

/// Who is in the cluster and how the nodes authenticate each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub name: String,
    /// Hex-encoded shared secret; peers prove knowledge of it before any message is parsed.
    pub secret: String,
    pub members: Vec<Member>,
}

/// One cluster member's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    /// Read-write MySQL port (clients).
    pub rw: SocketAddr,
    /// Read-only MySQL port (clients).
    pub ro: SocketAddr,
    /// Peer port (consensus and forwarded client connections).
    pub peer: SocketAddr,
    /// Admin HTTP (`/status`, `/metrics`); loopback by default.
    pub admin: SocketAddr,
    /// The fake replication master the local mariadbd replicates from (loopback).
    pub serve: SocketAddr,
    /// The local mariadbd's TCP port (127.0.0.1 only).
    pub mariadb_port: u16,
}

/// Where the MariaDB programs are and the few sizes an operator may choose. The settings that
/// QuorumSQL owns for safety (DESIGN §5) are not configurable here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MariadbSection {
    pub mariadbd: PathBuf,
    pub install_db: PathBuf,
    pub innodb_buffer_pool_size: String,
    /// The largest transaction a client may commit (`max_binlog_cache_size`), in bytes.
    pub max_transaction_bytes: u64,
    /// A client account created on every node when its datadir is first initialised (the same
    /// on all nodes, outside the binlog). `quorumsql up` sets it; production clusters create
    /// accounts through the RW port instead.
    pub bootstrap_user: Option<String>,
    pub bootstrap_password: Option<String>,
    /// A diverged node rebuilds its mariadbd from a healthy replica by itself (a
    /// `mariadb-backup` stream over the peer port; the old datadir is kept beside the new one).
    /// Off: it waits for an operator.
    pub auto_rebuild: bool,
    /// `mariadb-backup` and `mbstream` (package mariadb-backup), for rebuilds. Not required to
    /// start: a rebuild without them fails with a problem in `quorumsql status`.
    pub mariadb_backup: PathBuf,
    pub mbstream: PathBuf,
}

impl Default for MariadbSection {
    fn default() -> Self {
        MariadbSection {
            mariadbd: PathBuf::from("/usr/sbin/mariadbd"),
            install_db: PathBuf::from("/usr/bin/mariadb-install-db"),
            innodb_buffer_pool_size: "128M".to_string(),
            max_transaction_bytes: 1 << 30,
            bootstrap_user: None,
            bootstrap_password: None,
            auto_rebuild: true,
            mariadb_backup: PathBuf::from("/usr/bin/mariadb-backup"),
            mbstream: PathBuf::from("/usr/bin/mbstream"),
        }
    }
}

/// Consensus timing. All nodes must run the same values: peers compare them at the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    pub tick_ms: u64,
    pub heartbeat_ticks: usize,
    pub election_ticks_min: usize,
    pub election_ticks_max: usize,
    /// Assumed worst-case relative clock-rate difference between nodes (e.g. 0.01 = 1 %).
    pub max_clock_drift: f64,
    /// Safety margin subtracted from every lease.
    pub lease_margin_ms: u64,
    /// Largest log entry; bigger transactions travel in chunks.
    pub entry_cap_bytes: usize,
    /// `SCHED_RR` priority (1..=99) of the log and peer transport threads, so that a saturated
    /// CPU cannot delay heartbeats and lease rounds (bench/RESULTS.md, "Spurious master moves");
    /// 0 keeps them at normal priority. Needs root or CAP_SYS_NICE; without it the node logs a
    /// warning and runs at normal priority. Not compared between nodes.
    pub realtime_priority: u8,
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            tick_ms: 100,
            heartbeat_ticks: 2,
            election_ticks_min: 10,
            election_ticks_max: 20,
            max_clock_drift: 0.01,
            lease_margin_ms: 100,
            entry_cap_bytes: 4 << 20,
            realtime_priority: 10,
        }
    }
}

impl RaftSection {
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
    pub fn election_timeout_min(&self) -> Duration {
        self.tick() * self.election_ticks_min as u32
    }
}

/// The admin HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Allow the admin port on a non-loopback address (it has no authentication yet).
    pub allow_non_loopback: bool,
}

/// Why a configuration file was refused. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

impl NodeConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            // toml's message already names the key and shows the line.
            message: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            problem,
        };
        if self.node.id == 0 || self.node.id > MAX_NODE_ID {
            return Err(invalid(
                "node.id",
                format!(
                    "{} is not a valid id: it becomes the mariadbd server_id (1..={MAX_NODE_ID}; larger server_ids are reserved for capture and serve)",
                    self.node.id
                ),
            ));
        }
        if self.cluster.name.trim().is_empty() {
            return Err(invalid("cluster.name", "must not be empty".into()));
        }
        match hex_decode(&self.cluster.secret) {
            Some(bytes) if bytes.len() >= 16 => {}
            _ => {
                return Err(invalid(
                    "cluster.secret",
                    "must be at least 32 hex digits (16 bytes); `quorumsql init` generates one"
                        .into(),
                ))
            }
        }
        let n = self.cluster.members.len();
        if !(1..=7).contains(&n) {
            return Err(invalid(
                "cluster.members",
                format!("{n} members; QuorumSQL runs 3 or 5 (1 for tests)"),
            ));
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, m) in self.cluster.members.iter().enumerate() {
            let key = |field: &str| format!("cluster.members[{i}].{field}");
            if m.id == 0 || m.id > MAX_NODE_ID || !ids.insert(m.id) {
                return Err(invalid(
                    &key("id"),
                    format!("{} is zero, too large or used twice", m.id),
                ));
            }
            for (field, addr) in [
                ("rw", m.rw),
                ("ro", m.ro),
                ("peer", m.peer),
                ("admin", m.admin),
                ("serve", m.serve),
            ] {
                // Loopback addresses only clash between members on the same host (the embedded
                // cluster); on separate hosts every node uses 127.0.0.1 for its admin and serve.
                let host = if addr.ip().is_loopback() {
                    Some(m.peer.ip())
                } else {
                    None
                };
                if addr.port() == 0 || !addrs.insert((host, addr)) {
                    return Err(invalid(
                        &key(field),
                        format!("{addr} is port 0 or used twice in this cluster"),
                    ));
                }
            }
            if !m.serve.ip().is_loopback() {
                return Err(invalid(
                    &key("serve"),
                    format!(
                        "{} must be a loopback address: only the local mariadbd connects to it",
                        m.serve
                    ),
                ));
            }
            if !m.admin.ip().is_loopback() && !self.admin.allow_non_loopback {
                return Err(invalid(
                    &key("admin"),
                    format!(
                        "{} is not loopback; the admin port has no authentication (set admin.allow_non_loopback = true to accept the risk)",
                        m.admin
                    ),
                ));
            }
            if m.mariadb_port == 0 {
                return Err(invalid(&key("mariadb_port"), "must not be 0".into()));
            }
        }
        if !ids.contains(&self.node.id) {
            return Err(invalid(
                "node.id",
                format!("{} is not one of cluster.members", self.node.id),
            ));
        }
        if !self.node.data_dir.is_absolute() {
            return Err(invalid(
                "node.data_dir",
                format!("{} must be an absolute path", self.node.data_dir.display()),
            ));
        }
        match self.node.data_dir.parent() {
            Some(parent) if parent.is_dir() => {}
            _ => {
                return Err(invalid(
                    "node.data_dir",
                    format!(
                        "the parent directory of {} does not exist",
                        self.node.data_dir.display()
                    ),
                ))
            }
        }
        for (key, p) in [
            ("mariadb.mariadbd", &self.mariadb.mariadbd),
            ("mariadb.install_db", &self.mariadb.install_db),
        ] {
            if !p.is_file() {
                return Err(invalid(
                    key,
                    format!(
                        "{} does not exist (install mariadb-server, or set the path)",
                        p.display()
                    ),
                ));
            }
        }
        if let Some(u) = &self.mariadb.bootstrap_user {
            let ok = !u.is_empty()
                && u.len() <= 32
                && u.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !u.to_ascii_lowercase().starts_with(RESERVED_USER_PREFIX);
            if !ok {
                return Err(invalid(
                    "mariadb.bootstrap_user",
                    format!("{u:?} must be 1-32 letters, digits or _, and not start with {RESERVED_USER_PREFIX:?}"),
                ));
            }
            match &self.mariadb.bootstrap_password {
                Some(p) if !p.is_empty() && p.chars().all(|c| c.is_ascii_graphic() && c != '\'' && c != '\\') => {}
                _ => {
                    return Err(invalid(
                        "mariadb.bootstrap_password",
                        "must be set with bootstrap_user: printable ASCII without quotes or backslashes".into(),
                    ))
                }
            }
        }
        let r = &self.raft;
        if r.realtime_priority > quorumsql_log::runtime::realtime::MAX_PRIORITY {
            return Err(invalid(
                "raft.realtime_priority",
                format!(
                    "{} is outside 0..={} (0 = normal priority)",
                    r.realtime_priority,
                    quorumsql_log::runtime::realtime::MAX_PRIORITY
                ),
            ));
        }
        if r.tick_ms == 0 || r.tick_ms > 10_000 {
            return Err(invalid(
                "raft.tick_ms",
                format!("{} is outside 1..=10000", r.tick_ms),
            ));
        }
        if r.heartbeat_ticks == 0 || r.heartbeat_ticks >= r.election_ticks_min {
            return Err(invalid(
                "raft.heartbeat_ticks",
                "must be at least 1 and below raft.election_ticks_min".into(),
            ));
        }
        if r.election_ticks_max <= r.election_ticks_min {
            return Err(invalid(
                "raft.election_ticks_max",
                "must be greater than raft.election_ticks_min".into(),
            ));
        }
        if !(0.0..0.5).contains(&r.max_clock_drift) {
            return Err(invalid(
                "raft.max_clock_drift",
                format!("{} is outside [0, 0.5)", r.max_clock_drift),
            ));
        }
        let lease_budget = r.election_timeout_min().as_secs_f64() * (1.0 - r.max_clock_drift);
        if Duration::from_millis(r.lease_margin_ms).as_secs_f64() >= lease_budget {
            return Err(invalid(
                "raft.lease_margin_ms",
                "leaves no lease at all: it must be well below the election timeout".into(),
            ));
        }
        if r.entry_cap_bytes < 64 * 1024 || r.entry_cap_bytes > 64 << 20 {
            return Err(invalid(
                "raft.entry_cap_bytes",
                format!("{} is outside 64 KiB..=64 MiB", r.entry_cap_bytes),
            ));
        }
        Ok(())
    }

    /// This node's own member entry (validated to exist).
    pub fn me(&self) -> &Member {
        // `validate` guarantees the id is present; fall back to the first member defensively.
        self.cluster
            .members
            .iter()
            .find(|m| m.id == self.node.id)
            .unwrap_or(&self.cluster.members[0])
    }

    pub fn secret_bytes(&self) -> Vec<u8> {
        hex_decode(&self.cluster.secret).unwrap_or_default()
    }

    pub fn log_dir(&self) -> PathBuf {
        self.node.data_dir.join("log")
    }

    pub fn mariadb_dir(&self) -> PathBuf {
        self.node.data_dir.join("mariadb")
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    hex::decode(s.trim()).ok()
}

/// Ports of node `i` (1-based) in a cluster laid out from one base port: node i uses
/// `base + 10(i−1) + k` with k = 0 RW, 1 RO, 2 peer, 3 admin, 4 mariadbd, 5 serve.
pub fn member_at(id: u64, host: std::net::IpAddr, base_port: u16, slot: u16) -> Member {
    let p = base_port + 10 * slot;
    let lo = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    Member {
        id,
        rw: SocketAddr::new(host, p),
        ro: SocketAddr::new(host, p + 1),
        peer: SocketAddr::new(host, p + 2),
        admin: SocketAddr::new(lo, p + 3),
        mariadb_port: p + 4,
        serve: SocketAddr::new(lo, p + 5),
    }
}

/// A fresh random cluster secret (32 bytes, hex).
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

impl NodeConfig {
    /// Renders the config as TOML, with a header saying where it came from.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let body = toml::to_string_pretty(self)?;
        Ok(format!(
            "# QuorumSQL node {} of cluster {:?}. Keep cluster.secret private.\n\n{body}",
            self.node.id, self.cluster.name
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> String {
        format!(
            r#"
[node]
id = 1
data_dir = "{dir}/node1"

[cluster]
name = "test"
secret = "00112233445566778899aabbccddeeff"

[[cluster.members]]
id = 1
rw = "127.0.0.1:4000"
ro = "127.0.0.1:4001"
peer = "127.0.0.1:4002"
admin = "127.0.0.1:4003"
mariadb_port = 4004
serve = "127.0.0.1:4005"

[mariadb]
mariadbd = "/bin/sh"
install_db = "/bin/sh"
"#,
            dir = dir.display()
        )
    }

    #[test]
    fn accepts_a_valid_file() {
        let dir = std::env::temp_dir();
        let cfg = NodeConfig::parse(&sample(&dir), Path::new("node1.toml")).expect("valid");
        assert_eq!(cfg.me().id, 1);
        assert_eq!(cfg.raft.tick_ms, 100);
        assert_eq!(cfg.raft.realtime_priority, 10, "SCHED_RR by default");
    }

    #[test]
    fn realtime_priority_is_0_to_99() {
        let dir = std::env::temp_dir();
        for (p, ok) in [(0, true), (99, true), (100, false), (255, false)] {
            let text = sample(&dir).replace(
                "[mariadb]",
                &format!("[raft]\nrealtime_priority = {p}\n\n[mariadb]"),
            );
            match NodeConfig::parse(&text, Path::new("n.toml")) {
                Ok(cfg) => {
                    assert!(ok, "{p} must be refused");
                    assert_eq!(cfg.raft.realtime_priority, p);
                }
                Err(e) => {
                    assert!(!ok, "{p} must be accepted: {e}");
                    assert!(e.to_string().contains("raft.realtime_priority"), "{e}");
                }
            }
        }
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let dir = std::env::temp_dir();
        let text = sample(&dir).replace("[mariadb]", "[mariadb]\nsync_binlog = 0");
        let err = NodeConfig::parse(&text, Path::new("node1.toml")).expect_err("unknown key");
        let msg = err.to_string();
        assert!(
            msg.contains("node1.toml") && msg.contains("sync_binlog"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = std::env::temp_dir();
        let cases = [
            ("id = 1\ndata_dir", "id = 9\ndata_dir", "node.id"),
            ("00112233445566778899aabbccddeeff", "xyz", "cluster.secret"),
            (
                "serve = \"127.0.0.1:4005\"",
                "serve = \"127.0.0.1:4000\"",
                "cluster.members[0].serve",
            ),
            (
                "mariadbd = \"/bin/sh\"",
                "mariadbd = \"/nonexistent/mariadbd\"",
                "mariadb.mariadbd",
            ),
        ];
        for (from, to, key) in cases {
            let text = sample(&dir).replacen(from, to, 1);
            let err = NodeConfig::parse(&text, Path::new("n.toml")).expect_err(key);
            let msg = err.to_string();
            assert!(msg.contains(key) && msg.contains("n.toml"), "{key}: {msg}");
        }
    }
}
