//! `setup`: the database and one fresh table per workload, with their initial rows.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use quorumsql_chaos_check::Initial;
use quorumsql_node::sql::{ConnectOptions, SqlConn, SqlError};

use super::{bank, check_inputs, list_append, register, set};
use super::{Target, WorkloadConfig, WorkloadError, WorkloadKind};

/// How long setup keeps trying (QuorumSQL may still be electing its first master).
pub const SETUP_DEADLINE: Duration = Duration::from_secs(60);

/// DDL can be slow on a cluster that just started; it is bounded separately from client ops.
const DDL_TIMEOUT: Duration = Duration::from_secs(30);

const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Creates `cfg.database` (if missing) and drops and re-creates the tables of `kinds` with their
/// initial rows, through the RW port of the targets in turn until one succeeds (at most
/// [`SETUP_DEADLINE`]). Running it again resets the tables.
pub async fn setup(
    kinds: &[WorkloadKind],
    cfg: &WorkloadConfig,
    targets: &[Target],
) -> Result<Initial, WorkloadError> {
    check_inputs(cfg, targets)?;
    let statements = statements(kinds, cfg);
    let mut opts = ConnectOptions::new(&cfg.user, &cfg.password);
    opts.connect_timeout = cfg.op_timeout;
    opts.query_timeout = DDL_TIMEOUT.max(cfg.op_timeout);
    let started = Instant::now();
    let mut last_errors: BTreeMap<u8, String> = BTreeMap::new();
    let mut attempts = 0;
    loop {
        let t = &targets[attempts % targets.len()];
        attempts += 1;
        match apply(t, &opts, &statements).await {
            Ok(()) => break,
            Err(e) => {
                tracing::debug!(node = t.node, error = %e, "workload setup failed, trying the next node");
                last_errors.insert(t.node, e.to_string());
            }
        }
        if started.elapsed() >= SETUP_DEADLINE {
            return Err(WorkloadError::Setup {
                waited: started.elapsed(),
                attempts,
                last_errors: last_errors
                    .iter()
                    .map(|(n, e)| format!("node {n}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Ok(Initial {
        register_keys: cfg.register_keys,
        bank_accounts: cfg.bank_accounts,
        bank_initial_balance: cfg.bank_initial_balance,
    })
}

fn statements(kinds: &[WorkloadKind], cfg: &WorkloadConfig) -> Vec<String> {
    let db = &cfg.database;
    let mut out = vec![
        format!("CREATE DATABASE IF NOT EXISTS `{db}`"),
        format!("USE `{db}`"),
    ];
    for kind in kinds {
        let (table, schema) = match kind {
            WorkloadKind::Register => (register::TABLE, register::schema(cfg.register_keys)),
            WorkloadKind::Bank => (
                bank::TABLE,
                bank::schema(cfg.bank_accounts, cfg.bank_initial_balance),
            ),
            WorkloadKind::Set => (set::TABLE, set::schema()),
            WorkloadKind::ListAppend => (list_append::TABLE, list_append::schema()),
        };
        out.push(format!("DROP TABLE IF EXISTS {table}"));
        out.extend(schema);
    }
    out
}

async fn apply(t: &Target, opts: &ConnectOptions, statements: &[String]) -> Result<(), SqlError> {
    let mut conn = SqlConn::connect_tcp_with(t.rw, opts).await?;
    for s in statements {
        conn.exec(s).await?;
    }
    conn.quit().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_gets_a_fresh_table_with_its_initial_rows() {
        let mut cfg = WorkloadConfig::new("u", "p");
        cfg.register_keys = 2;
        cfg.bank_accounts = 3;
        cfg.bank_initial_balance = 10;
        let s = statements(&WorkloadKind::ALL, &cfg);
        assert_eq!(s[0], "CREATE DATABASE IF NOT EXISTS `chaos`");
        for table in ["reg", "bank", "set_elems", "lists"] {
            let drop = s
                .iter()
                .position(|x| *x == format!("DROP TABLE IF EXISTS {table}"));
            let create = s
                .iter()
                .position(|x| x.starts_with(&format!("CREATE TABLE {table} ")));
            assert!(drop.is_some() && drop < create, "{table}: {s:?}");
        }
        assert!(s.contains(&"INSERT INTO reg (k, v) VALUES (0, 0), (1, 0)".to_string()));
        assert!(
            s.contains(&"INSERT INTO bank (id, bal) VALUES (0, 10), (1, 10), (2, 10)".to_string())
        );
        assert!(s.iter().all(|x| !x.contains("DEFAULT")), "{s:?}");
    }
}
