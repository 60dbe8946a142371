//! List-append workload: SERIALIZABLE transactions of appends to and reads of keyed
//! comma-separated lists in `lists` (Elle's list-append).
//!
//! Keys rotate: clients pick among `list_keys` active keys, and the window of active keys slides
//! by one every [`APPENDS_PER_SLIDE`] appends, so each list ends up with about that many elements.
//! Without it lists grow with the run and every read copies a whole list into the history.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quorumsql_chaos_check::{Call, MicroOp, Outcome, Port};
use quorumsql_node::sql::SqlConn;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::client::{backoff, parse_num, pause, Client, OpFuture, Progress, Ran, UniqueValues};
use super::outcome::OpError;

pub(crate) const TABLE: &str = "lists";

pub(crate) const APPENDS_PER_SLIDE: u64 = 64;

/// Session setting of every RW connection: list-append checks serializability.
pub(crate) const RW_INIT: &str = "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE";

pub(crate) fn schema() -> Vec<String> {
    vec![format!(
        "CREATE TABLE {TABLE} (k INT NOT NULL PRIMARY KEY, v MEDIUMTEXT NOT NULL) ENGINE=InnoDB"
    )]
}

/// State shared by the clients of one run of the workload.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    appends: AtomicU64,
}

impl Keys {
    /// The first active key.
    fn base(&self) -> u64 {
        self.appends.load(Ordering::Relaxed) / APPENDS_PER_SLIDE
    }
}

pub(crate) async fn client_loop(mut client: Client, stop: CancellationToken, keys: Arc<Keys>) {
    let active = u64::from(client.ctx.cfg.list_keys.max(1));
    let mut values = UniqueValues::default();
    while !stop.is_cancelled() {
        let n = client.rng.gen_range(1..=4);
        let base = keys.base();
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            let key = u32::try_from(base + client.rng.gen_range(0..active)).unwrap_or(u32::MAX);
            if client.rng.gen_bool(0.5) {
                keys.appends.fetch_add(1, Ordering::Relaxed);
                let value = values.next(client.id());
                ops.push(MicroOp::Append { key, value });
            } else {
                ops.push(MicroOp::Read { key, value: None });
            }
        }
        let read_only = ops.iter().all(|o| matches!(o, MicroOp::Read { .. }));
        let port = if read_only {
            client.read_port()
        } else {
            Port::Rw
        };
        let ran = txn(&mut client, port, ops).await;
        if ran.backoff {
            let d = backoff(&mut client.rng);
            if !pause(&stop, d).await {
                break;
            }
        }
    }
}

/// Runs one transaction of micro-ops; `Ok` carries the values read.
pub(crate) async fn txn(client: &mut Client, port: Port, ops: Vec<MicroOp>) -> Ran {
    let read_only = ops.iter().all(|o| matches!(o, MicroOp::Read { .. }));
    let invocation = Call::ListTxn { ops: ops.clone() };
    client
        .op(
            port,
            read_only,
            invocation,
            move |c: &mut SqlConn, p: &mut Progress| -> OpFuture<'_, ()> {
                Box::pin(async move {
                    // On the RO port no SERIALIZABLE (its shared locks would block the applier):
                    // a read-only snapshot is what a replica read can promise.
                    let begin = match port {
                        Port::Rw => "BEGIN",
                        Port::Ro => "START TRANSACTION READ ONLY",
                    };
                    c.exec(begin).await?;
                    p.began_txn();
                    let mut done = Vec::with_capacity(ops.len());
                    for op in ops {
                        match op {
                            MicroOp::Append { key, value } => {
                                c.exec(&format!(
                                    "INSERT INTO {TABLE} (k, v) VALUES ({key}, '{value}') \
                                     ON DUPLICATE KEY UPDATE v = CONCAT(v, ',', VALUES(v))"
                                ))
                                .await?;
                                done.push(MicroOp::Append { key, value });
                            }
                            MicroOp::Read { key, .. } => {
                                let rows = c
                                    .query(&format!("SELECT v FROM {TABLE} WHERE k = {key}"))
                                    .await?;
                                let list = match rows.first() {
                                    Some(row) => parse_list(row.get_idx(0))?,
                                    None => Vec::new(),
                                };
                                done.push(MicroOp::Read {
                                    key,
                                    value: Some(list),
                                });
                            }
                        }
                    }
                    if !read_only {
                        p.effect_may_land();
                    }
                    c.exec("COMMIT").await?;
                    p.ended_txn();
                    Ok((Outcome::Ok, Call::ListTxn { ops: done }, ()))
                })
            },
        )
        .await
        .0
}

/// Reads every list in one statement of one transaction; `Ok` carries a read of every key in
/// `0..=max(max_key, largest key found)` (absent keys read as empty lists).
pub(crate) async fn read_all(client: &mut Client, max_key: u32) -> Ran {
    let invocation = Call::ListTxn {
        ops: (0..=max_key)
            .map(|key| MicroOp::Read { key, value: None })
            .collect(),
    };
    client
        .op(
            Port::Rw,
            true,
            invocation,
            move |c: &mut SqlConn, p: &mut Progress| -> OpFuture<'_, ()> {
                Box::pin(async move {
                    c.exec("BEGIN").await?;
                    p.began_txn();
                    let rows = c.query(&format!("SELECT k, v FROM {TABLE}")).await?;
                    let mut found = std::collections::BTreeMap::new();
                    for row in &rows {
                        let key: u32 = parse_num(row.get_idx(0), "list key")?;
                        found.insert(key, parse_list(row.get_idx(1))?);
                    }
                    c.exec("COMMIT").await?;
                    p.ended_txn();
                    let last = found.keys().next_back().copied().unwrap_or(0).max(max_key);
                    let ops = (0..=last)
                        .map(|key| MicroOp::Read {
                            key,
                            value: Some(found.remove(&key).unwrap_or_default()),
                        })
                        .collect();
                    Ok((Outcome::Ok, Call::ListTxn { ops }, ()))
                })
            },
        )
        .await
        .0
}

fn parse_list(v: Option<&str>) -> Result<Vec<u64>, OpError> {
    let s = v.ok_or_else(|| OpError::Bad("list value is NULL".into()))?;
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|e| {
            e.parse()
                .map_err(|_| OpError::Bad(format!("list element {e:?} is not a number")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_from_their_stored_form() {
        assert_eq!(parse_list(Some("")).unwrap(), Vec::<u64>::new());
        assert_eq!(parse_list(Some("7")).unwrap(), vec![7]);
        assert_eq!(
            parse_list(Some("7,4294967297,3")).unwrap(),
            vec![7, 4294967297, 3]
        );
        assert!(parse_list(Some("7,,3")).is_err());
        assert!(parse_list(None).is_err());
    }
}
