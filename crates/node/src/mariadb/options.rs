//! The mariadbd option file QuorumSQL owns (DESIGN §5) and the start-role arguments every start
//! uses (DESIGN §3).
//!
//! Every option name here was checked against `mariadbd --no-defaults --help --verbose` of
//! 10.11.19, and the `mariadb_supervisor` test starts a server with the rendered file and reads
//! the values back.

use std::path::{Path, PathBuf};

use quorumsql_peer::NodeId;

use super::error::MariadbError;
use crate::config::NodeConfig;

/// The largest `slave_max_allowed_packet` mariadbd accepts. A replica stops replicating on an
/// event larger than this, so it is set to the maximum; the entry cap must stay below it.
pub const SLAVE_MAX_ALLOWED_PACKET: u64 = 1 << 30;

/// Loopback for TCP (v4 and v6) and unix-socket connections: the only places a proxy header may
/// come from. Verified accepted by 10.11.19 (`SELECT @@proxy_protocol_networks` echoes it).
pub const PROXY_PROTOCOL_NETWORKS: &str = "127.0.0.1/32,::1/128,localhost";

/// `session_track_system_variables`: MariaDB 10.11's default list plus `last_gtid`.
pub const SESSION_TRACK_SYSTEM_VARIABLES: &str =
    "autocommit,character_set_client,character_set_connection,character_set_results,time_zone,last_gtid";

/// The binlog base name inside the datadir.
pub const BINLOG_BASENAME: &str = "mysql-bin";

/// sun_path is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Everything the supervisor needs to know about one node's mariadbd.
///
/// Files live under `base_dir`: the datadir `mariadb/`, and beside it (so that a rebuild that
/// replaces the datadir keeps them) `mariadb.cnf`, `mariadb.sock`, `mariadb.pid`, `mariadb.err`,
/// `mariadb.tmp/`.
#[derive(Debug, Clone, PartialEq)]
pub struct MariadbConfig {
    /// Becomes `server_id`; never reused (design-review 33).
    pub node_id: NodeId,
    pub mariadbd: PathBuf,
    pub install_db: PathBuf,
    pub base_dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// mariadbd size syntax, e.g. `128M`.
    pub innodb_buffer_pool_size: String,
    /// The transaction cap: `max_binlog_cache_size` = `max_binlog_stmt_cache_size`.
    pub max_transaction_bytes: u64,
    /// The log's entry cap; only checked to be below `slave_max_allowed_packet`.
    pub entry_cap_bytes: u64,
}

/// One `name = value` line of the option file (`value` None for a bare flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub value: Option<String>,
}

impl MariadbConfig {
    /// A config with the default programs and sizes (1 GiB transaction cap, 4 MiB entry cap,
    /// 128M buffer pool).
    pub fn new(node_id: NodeId, base_dir: impl Into<PathBuf>, port: u16) -> Self {
        MariadbConfig {
            node_id,
            mariadbd: PathBuf::from("/usr/sbin/mariadbd"),
            install_db: PathBuf::from("/usr/bin/mariadb-install-db"),
            base_dir: base_dir.into(),
            port,
            innodb_buffer_pool_size: "128M".to_string(),
            max_transaction_bytes: 1 << 30,
            entry_cap_bytes: 4 << 20,
        }
    }

    /// This node's mariadbd as the node config describes it.
    pub fn from_node_config(cfg: &NodeConfig) -> Self {
        MariadbConfig {
            node_id: NodeId(cfg.node.id),
            mariadbd: cfg.mariadb.mariadbd.clone(),
            install_db: cfg.mariadb.install_db.clone(),
            base_dir: cfg.node.data_dir.clone(),
            port: cfg.me().mariadb_port,
            innodb_buffer_pool_size: cfg.mariadb.innodb_buffer_pool_size.clone(),
            max_transaction_bytes: cfg.mariadb.max_transaction_bytes,
            entry_cap_bytes: cfg.raft.entry_cap_bytes as u64,
        }
    }

    /// The datadir (same as `NodeConfig::mariadb_dir`).
    pub fn datadir(&self) -> PathBuf {
        self.base_dir.join("mariadb")
    }
    pub fn defaults_file(&self) -> PathBuf {
        self.base_dir.join("mariadb.cnf")
    }
    pub fn socket(&self) -> PathBuf {
        self.base_dir.join("mariadb.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.base_dir.join("mariadb.pid")
    }
    pub fn error_log(&self) -> PathBuf {
        self.base_dir.join("mariadb.err")
    }
    /// `tmpdir`: private, because every mariadbd deletes all `#sql*` files in its tmpdir when
    /// it starts; with a shared /tmp, one node's start (or install) deletes another's temporary
    /// tables (seen here: parallel installs failing with "Can't find file
    /// '/tmp/#sql-temptable-…MAI'").
    pub fn tmpdir(&self) -> PathBuf {
        self.base_dir.join("mariadb.tmp")
    }
    /// `log_bin`: inside the datadir, so a datadir and its binlog always travel together.
    pub fn binlog_basename(&self) -> PathBuf {
        self.datadir().join(BINLOG_BASENAME)
    }

    /// Refuses values that mariadbd would reject or that would break the option file.
    pub fn validate(&self) -> Result<(), MariadbError> {
        let bad = |problem: String| Err(MariadbError::InvalidConfig { problem });
        if self.node_id.0 == 0 || self.node_id.0 > u64::from(u32::MAX) {
            return bad(format!(
                "node id {} cannot be a server_id (1..=4294967295)",
                self.node_id.0
            ));
        }
        if self.port == 0 {
            return bad("mariadbd port must not be 0".into());
        }
        if !self.base_dir.is_absolute() {
            return bad(format!(
                "{} must be an absolute path",
                self.base_dir.display()
            ));
        }
        for p in [
            self.datadir(),
            self.socket(),
            self.pid_file(),
            self.error_log(),
        ] {
            let s = p.to_string_lossy();
            if p.to_str().is_none() || s.contains(['\n', '\r', '#', '"', '\'']) {
                return bad(format!(
                    "{s:?} cannot be written into an option file (non-UTF-8, newline, quote or #)"
                ));
            }
        }
        let sock_len = self.socket().as_os_str().len();
        if sock_len > MAX_SOCKET_PATH {
            return bad(format!(
                "socket path {} is {sock_len} bytes; unix sockets allow {MAX_SOCKET_PATH}: use a \
                 shorter data_dir",
                self.socket().display()
            ));
        }
        if !is_size(&self.innodb_buffer_pool_size) {
            return bad(format!(
                "innodb_buffer_pool_size {:?} is not a size like 128M or 1G",
                self.innodb_buffer_pool_size
            ));
        }
        if !(4096..=u64::from(u32::MAX) * 4096).contains(&self.max_transaction_bytes) {
            return bad(format!(
                "max_transaction_bytes {} is below mariadbd's minimum of 4096 or absurdly large",
                self.max_transaction_bytes
            ));
        }
        if self.entry_cap_bytes >= SLAVE_MAX_ALLOWED_PACKET {
            return bad(format!(
                "entry cap {} must stay below slave_max_allowed_packet {SLAVE_MAX_ALLOWED_PACKET}",
                self.entry_cap_bytes
            ));
        }
        Ok(())
    }

    /// The settings of the option file, in file order.
    pub fn settings(&self) -> Vec<Setting> {
        let v = |name: &'static str, value: String| Setting {
            name,
            value: Some(value),
        };
        let s = |name: &'static str, value: &str| v(name, value.to_string());
        let flag = |name: &'static str| Setting { name, value: None };
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let cap = self.max_transaction_bytes.to_string();
        vec![
            // Files and network: the server is reachable only through loopback and its socket.
            v("datadir", path(self.datadir())),
            v("socket", path(self.socket())),
            v("port", self.port.to_string()),
            v("pid_file", path(self.pid_file())),
            v("log_error", path(self.error_log())),
            v("tmpdir", path(self.tmpdir())),
            // root: a user change would clear PR_SET_PDEATHSIG (prctl(2)) and orphan mariadbd.
            s("user", "root"),
            s("bind_address", "127.0.0.1"),
            flag("skip_name_resolve"),
            s("proxy_protocol_networks", PROXY_PROTOCOL_NETWORKS),
            // Identity and GTIDs.
            v("server_id", self.node_id.0.to_string()),
            s("gtid_domain_id", "0"),
            s("gtid_strict_mode", "ON"),
            v("log_bin", path(self.binlog_basename())),
            // The default relay log name contains the host name; pin it so a renamed host
            // still finds its relay logs.
            v("relay_log", path(self.datadir().join("relay-bin"))),
            s("log_slave_updates", "ON"),
            s("binlog_checksum", "CRC32"),
            // Durability.
            s("binlog_format", "ROW"),
            s("binlog_row_image", "FULL"),
            s("sync_binlog", "1"),
            s("innodb_flush_log_at_trx_commit", "1"),
            // Replica.
            s("slave_exec_mode", "STRICT"),
            s("replicate_events_marked_for_skip", "REPLICATE"),
            flag("skip_slave_start"),
            s("slave_parallel_threads", "4"),
            s("slave_parallel_mode", "optimistic"),
            // Semi-sync: master side stays OFF until promotion step 4.
            s("rpl_semi_sync_slave_enabled", "ON"),
            s("rpl_semi_sync_master_enabled", "OFF"),
            s("rpl_semi_sync_master_wait_point", "AFTER_SYNC"),
            s("rpl_semi_sync_master_timeout", "18446744073709551615"),
            s("rpl_semi_sync_master_wait_no_slave", "ON"),
            // Engines, isolation, events.
            s("enforce_storage_engine", "InnoDB"),
            s("innodb_snapshot_isolation", "ON"),
            s("event_scheduler", "OFF"),
            // Every OK that ends a commit carries its GTID (MariaDB's default list plus
            // last_gtid): the master's proxy relays it only once the log accepted that GTID
            // (design-review 2: a binlog that turned itself off acknowledges commits with no
            // event and no semi-sync wait).
            s(
                "session_track_system_variables",
                SESSION_TRACK_SYSTEM_VARIABLES,
            ),
            // Sizes.
            v("max_binlog_cache_size", cap.clone()),
            v("max_binlog_stmt_cache_size", cap),
            v(
                "slave_max_allowed_packet",
                SLAVE_MAX_ALLOWED_PACKET.to_string(),
            ),
            s("binlog_alter_two_phase", "OFF"),
            v(
                "innodb_buffer_pool_size",
                self.innodb_buffer_pool_size.clone(),
            ),
            // Start role (DESIGN §3); also forced on the command line by `start_role_args`.
            s("init_rpl_role", "SLAVE"),
            s("read_only", "ON"),
        ]
    }

    /// The option file text.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# Written by QuorumSQL on every mariadbd start; edits are overwritten.\n\
             # See DESIGN.md section 5 for why each setting is what it is.\n\
             [mariadbd]\n",
        );
        for s in self.settings() {
            match s.value {
                Some(v) => out.push_str(&format!("{} = {}\n", s.name, v)),
                None => out.push_str(&format!("{}\n", s.name)),
            }
        }
        out
    }
}

/// Command-line arguments every mariadbd start gets after `--defaults-file` (DESIGN §3): crash
/// recovery rolls back prepared transactions and truncates the binlog tail, nothing writes, no
/// replication or event runs until roles decides.
pub fn start_role_args() -> [&'static str; 5] {
    [
        "--init-rpl-role=SLAVE",
        "--read-only=ON",
        "--rpl-semi-sync-master-enabled=OFF",
        "--event-scheduler=OFF",
        "--skip-slave-start",
    ]
}

/// The full mariadbd argument list for `defaults_file`.
pub fn mariadbd_args(defaults_file: &Path) -> Vec<String> {
    // --defaults-file must be the first argument or mariadbd ignores it.
    let mut args = vec![format!("--defaults-file={}", defaults_file.display())];
    args.extend(start_role_args().iter().map(|a| a.to_string()));
    args
}

fn is_size(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    !digits.is_empty() && digits.len() + 1 >= s.len() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MariadbConfig {
        MariadbConfig::new(NodeId(3), "/var/lib/qs/n3", 3306)
    }

    fn value_of(text: &str, name: &str) -> Option<String> {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    }

    #[test]
    fn renders_the_design_settings() {
        let text = cfg().render();
        assert!(text.contains("[mariadbd]\n"));
        for (name, want) in [
            ("server_id", "3"),
            ("gtid_strict_mode", "ON"),
            ("log_bin", "/var/lib/qs/n3/mariadb/mysql-bin"),
            ("sync_binlog", "1"),
            ("rpl_semi_sync_master_wait_point", "AFTER_SYNC"),
            ("rpl_semi_sync_master_timeout", "18446744073709551615"),
            ("rpl_semi_sync_master_enabled", "OFF"),
            ("max_binlog_cache_size", "1073741824"),
            ("max_binlog_stmt_cache_size", "1073741824"),
            ("bind_address", "127.0.0.1"),
            ("datadir", "/var/lib/qs/n3/mariadb"),
            ("socket", "/var/lib/qs/n3/mariadb.sock"),
            ("user", "root"),
            (
                "session_track_system_variables",
                "autocommit,character_set_client,character_set_connection,\
                 character_set_results,time_zone,last_gtid",
            ),
        ] {
            assert_eq!(value_of(&text, name).as_deref(), Some(want), "{name}");
        }
        assert!(text.lines().any(|l| l == "skip_slave_start"));
        assert!(text.lines().any(|l| l == "skip_name_resolve"));
        // No setting twice: a later duplicate would silently win.
        let mut names: Vec<_> = cfg().settings().iter().map(|s| s.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn args_put_defaults_file_first_and_force_the_start_role() {
        let args = mariadbd_args(Path::new("/x/mariadb.cnf"));
        assert_eq!(args[0], "--defaults-file=/x/mariadb.cnf");
        for want in [
            "--init-rpl-role=SLAVE",
            "--read-only=ON",
            "--skip-slave-start",
        ] {
            assert!(args.iter().any(|a| a == want), "{want}");
        }
    }

    #[test]
    fn validate_refuses_what_mariadbd_or_the_file_cannot_take() {
        assert!(cfg().validate().is_ok());
        let mut c = cfg();
        c.node_id = NodeId(0);
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.base_dir = PathBuf::from(format!("/{}", "d".repeat(120)));
        assert!(c.validate().unwrap_err().to_string().contains("socket"));
        let mut c = cfg();
        c.innodb_buffer_pool_size = "128M\nskip_grant_tables".into();
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.base_dir = PathBuf::from("/tmp/a\nb");
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.entry_cap_bytes = SLAVE_MAX_ALLOWED_PACKET;
        assert!(c.validate().is_err());
        for ok in ["128M", "1G", "134217728"] {
            assert!(is_size(ok), "{ok}");
        }
        for bad in ["", "M", "12MM", "1.5G", "-1"] {
            assert!(!is_size(bad), "{bad}");
        }
    }
}
