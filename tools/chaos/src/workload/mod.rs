//! Client workloads of the chaos harness: clients that talk to random nodes' RW (and RO) ports,
//! bound every operation with a client-side timeout, and record each one with an honest outcome
//! (`Unknown` when the client cannot know) into a shared [`Recorder`].
//!
//! ```text
//! setup         database + one table per workload, initial rows (retries other nodes)
//! run           cfg.clients client tasks of one workload until `stop`
//! final_reads   after healing: a read of everything, retried on other nodes
//! client        connection per port, op timeout, outcome, recording, client ids
//! outcome       Fail vs Unknown for an error; whether the connection survives it
//! register      read / write / CAS on keyed rows
//! bank          transfers; reads of all balances
//! set           unique inserts; reads of all elements
//! list_append   SERIALIZABLE txns of appends and reads on rotating keys
//! ```

mod bank;
mod client;
mod final_reads;
mod list_append;
pub mod outcome;
mod recorder;
mod register;
mod set;
mod setup;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use quorumsql_chaos_check::NodeIndex;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;

use client::{Client, Ctx};

pub use final_reads::final_reads;
pub use recorder::Recorder;
pub use setup::{setup, SETUP_DEADLINE};

/// One node's client ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub node: NodeIndex,
    pub rw: SocketAddr,
    pub ro: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadConfig {
    pub user: String,
    pub password: String,
    /// Database holding the workload tables (letters, digits and `_` only).
    pub database: String,
    /// Client tasks per workload.
    pub clients: usize,
    /// Client-side bound on each operation, connect included. Past it the operation is given up
    /// (`Unknown` if it may have written) and its connection dropped.
    pub op_timeout: Duration,
    pub register_keys: u32,
    pub bank_accounts: u32,
    pub bank_initial_balance: i64,
    /// Active list-append keys at any time (the window slides over the run; see `list_append`).
    pub list_keys: u32,
    /// Share of reads sent to the RO port.
    pub ro_fraction: f64,
    pub seed: u64,
}

impl WorkloadConfig {
    /// The defaults: database `chaos`, 4 clients, 5 s timeout, 8 register keys, 5 accounts of
    /// 100, 8 list keys, 20 % of reads on the RO port, seed 0.
    pub fn new(user: &str, password: &str) -> Self {
        WorkloadConfig {
            user: user.to_string(),
            password: password.to_string(),
            database: "chaos".into(),
            clients: 4,
            op_timeout: Duration::from_secs(5),
            register_keys: 8,
            bank_accounts: 5,
            bank_initial_balance: 100,
            list_keys: 8,
            ro_fraction: 0.2,
            seed: 0,
        }
    }

    fn validate(&self) -> Result<(), WorkloadError> {
        let bad = |why: String| Err(WorkloadError::Config(why));
        if self.database.is_empty()
            || !self
                .database
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return bad(format!(
                "database name {:?} must be letters, digits and '_'",
                self.database
            ));
        }
        if self.clients == 0 {
            return bad("clients must be at least 1".into());
        }
        if self.op_timeout.is_zero() {
            return bad("op_timeout must be positive".into());
        }
        if self.register_keys == 0 || self.list_keys == 0 {
            return bad("register_keys and list_keys must be at least 1".into());
        }
        if self.bank_accounts < 2 || self.bank_initial_balance < 0 {
            return bad(format!(
                "bank needs at least 2 accounts and a non-negative balance (got {} of {})",
                self.bank_accounts, self.bank_initial_balance
            ));
        }
        if !(0.0..=1.0).contains(&self.ro_fraction) {
            return bad(format!("ro_fraction {} is not in [0, 1]", self.ro_fraction));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Register,
    Bank,
    Set,
    ListAppend,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 4] = [
        WorkloadKind::Register,
        WorkloadKind::Bank,
        WorkloadKind::Set,
        WorkloadKind::ListAppend,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Register => "register",
            WorkloadKind::Bank => "bank",
            WorkloadKind::Set => "set",
            WorkloadKind::ListAppend => "list-append",
        }
    }

    /// The comma-separated form `register,bank,set,list-append` (what `--workloads` takes).
    pub fn parse_list(s: &str) -> Result<Vec<WorkloadKind>, WorkloadError> {
        let mut kinds = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let k: WorkloadKind = part.parse()?;
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        Ok(kinds)
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WorkloadKind {
    type Err = WorkloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkloadKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| WorkloadError::UnknownKind(s.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("unknown workload {0:?} (expected register, bank, set or list-append)")]
    UnknownKind(String),
    #[error("invalid workload configuration: {0}")]
    Config(String),
    #[error("no targets: the workloads need at least one node's client ports")]
    NoTargets,
    #[error(
        "setup of the workload tables failed on every node for {waited:?} ({attempts} attempts); \
         last error per node: {last_errors}"
    )]
    Setup {
        waited: Duration,
        attempts: usize,
        last_errors: String,
    },
    #[error(
        "final reads did not succeed before the deadline ({attempts} attempts): {failed}; \
         last errors: {last_errors}"
    )]
    FinalReads {
        failed: String,
        attempts: usize,
        last_errors: String,
    },
    #[error("a {kind} client task panicked or was cancelled: {source}")]
    ClientTask {
        kind: WorkloadKind,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// For the CLI, whose argument errors are plain strings (`"x".parse::<WorkloadKind>()?`).
impl From<WorkloadError> for String {
    fn from(e: WorkloadError) -> String {
        e.to_string()
    }
}

/// A per-client RNG: distinct streams for every (seed, workload, client).
fn client_rng(seed: u64, kind: WorkloadKind, index: usize) -> StdRng {
    let kind_no = WorkloadKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(0) as u64;
    let mix = seed
        ^ (kind_no + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    StdRng::seed_from_u64(mix)
}

fn check_inputs(cfg: &WorkloadConfig, targets: &[Target]) -> Result<(), WorkloadError> {
    cfg.validate()?;
    if targets.is_empty() {
        return Err(WorkloadError::NoTargets);
    }
    Ok(())
}

fn rw_init(kind: WorkloadKind) -> Vec<String> {
    match kind {
        WorkloadKind::ListAppend => vec![list_append::RW_INIT.to_string()],
        _ => Vec::new(),
    }
}

/// Runs `cfg.clients` clients of workload `kind` until `stop` is cancelled, recording every
/// operation. Returns when every client has finished its operation in flight (at most
/// `op_timeout` after `stop`). Tables must exist ([`setup`]).
pub async fn run(
    kind: WorkloadKind,
    cfg: WorkloadConfig,
    targets: Vec<Target>,
    stop: CancellationToken,
    recorder: Recorder,
) -> Result<(), WorkloadError> {
    check_inputs(&cfg, &targets)?;
    let clients = cfg.clients;
    let seed = cfg.seed;
    let ctx = Ctx::new(cfg, targets, recorder, rw_init(kind));
    let keys = Arc::new(list_append::Keys::default());
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let client = Client::new(ctx.clone(), client_rng(seed, kind, i));
        let stop = stop.clone();
        tasks.push(match kind {
            WorkloadKind::Register => tokio::spawn(register::client_loop(client, stop)),
            WorkloadKind::Bank => tokio::spawn(bank::client_loop(client, stop)),
            WorkloadKind::Set => tokio::spawn(set::client_loop(client, stop)),
            WorkloadKind::ListAppend => {
                tokio::spawn(list_append::client_loop(client, stop, keys.clone()))
            }
        });
    }
    let mut first_err = None;
    for t in tasks {
        if let Err(source) = t.await {
            first_err.get_or_insert(WorkloadError::ClientTask { kind, source });
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_their_names() {
        assert_eq!(
            WorkloadKind::parse_list("register,bank, set,list-append,bank").unwrap(),
            WorkloadKind::ALL.to_vec()
        );
        for k in WorkloadKind::ALL {
            assert_eq!(k.to_string().parse::<WorkloadKind>().unwrap(), k);
        }
        assert!(matches!(
            "list_append".parse::<WorkloadKind>(),
            Err(WorkloadError::UnknownKind(_))
        ));
        let cli = || -> Result<WorkloadKind, String> { Ok("nope".parse::<WorkloadKind>()?) };
        assert!(cli().unwrap_err().contains("\"nope\""));
    }

    #[test]
    fn config_is_validated() {
        let ok = WorkloadConfig::new("u", "p");
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.database = "chaos; DROP".into();
        assert!(matches!(c.validate(), Err(WorkloadError::Config(_))));
        let mut c = ok.clone();
        c.ro_fraction = 1.5;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.bank_accounts = 1;
        assert!(c.validate().is_err());
        assert!(matches!(
            check_inputs(&ok, &[]),
            Err(WorkloadError::NoTargets)
        ));
    }

    #[test]
    fn client_rngs_differ_per_client_and_workload() {
        use rand::Rng;
        let a: u64 = client_rng(1, WorkloadKind::Register, 0).gen();
        let b: u64 = client_rng(1, WorkloadKind::Register, 1).gen();
        let c: u64 = client_rng(1, WorkloadKind::Bank, 0).gen();
        let again: u64 = client_rng(1, WorkloadKind::Register, 0).gen();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, again);
    }
}
