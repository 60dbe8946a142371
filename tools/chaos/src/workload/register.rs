//! Register workload: read / blind write / compare-and-set on a few keyed rows of `reg`.

use std::collections::HashMap;

use quorumsql_chaos_check::{Call, Outcome, Port};
use quorumsql_node::sql::SqlConn;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::client::{backoff, parse_num, pause, Client, OpFuture, Progress, Ran, UniqueValues};
use super::outcome::OpError;

pub(crate) const TABLE: &str = "reg";

pub(crate) fn schema(keys: u32) -> Vec<String> {
    let rows: Vec<String> = (0..keys).map(|k| format!("({k}, 0)")).collect();
    vec![
        format!(
            "CREATE TABLE {TABLE} (k INT NOT NULL PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB"
        ),
        format!("INSERT INTO {TABLE} (k, v) VALUES {}", rows.join(", ")),
    ]
}

pub(crate) async fn client_loop(mut client: Client, stop: CancellationToken) {
    let keys = client.ctx.cfg.register_keys.max(1);
    // The last value this client saw (read or wrote) per key: the `from` of its next CAS, so
    // CASes succeed often enough to matter.
    let mut last: HashMap<u32, i64> = HashMap::new();
    let mut values = UniqueValues::default();
    while !stop.is_cancelled() {
        let key = client.rng.gen_range(0..keys);
        let dice = client.rng.gen_range(0..10);
        let ran = if dice < 4 {
            let port = client.read_port();
            let (ran, seen) = read(&mut client, port, key).await;
            if let Some(v) = seen {
                last.insert(key, v);
            }
            ran
        } else {
            let to = register_value(values.next(client.id()));
            let ran = if dice < 7 {
                write(&mut client, key, to).await
            } else {
                let from = last.get(&key).copied().unwrap_or(0);
                cas(&mut client, key, from, to).await
            };
            if ran.outcome == Outcome::Ok {
                last.insert(key, to);
            }
            ran
        };
        if ran.backoff {
            let d = backoff(&mut client.rng);
            if !pause(&stop, d).await {
                break;
            }
        }
    }
}

/// Register values are `i64`; unique values fit because client ids stay far below 2^31.
fn register_value(unique: u64) -> i64 {
    (unique & (i64::MAX as u64)) as i64
}

/// One read of `key`; returns the value read when `Ok`.
pub(crate) async fn read(client: &mut Client, port: Port, key: u32) -> (Ran, Option<i64>) {
    client
        .op(
            port,
            true,
            Call::RegRead { key, value: None },
            move |c: &mut SqlConn, _p: &mut Progress| -> OpFuture<'_, i64> {
                Box::pin(async move {
                    let v = read_value(c, key).await?;
                    let call = Call::RegRead {
                        key,
                        value: Some(v),
                    };
                    Ok((Outcome::Ok, call, v))
                })
            },
        )
        .await
}

async fn read_value(c: &mut SqlConn, key: u32) -> Result<i64, OpError> {
    let rows = c
        .query(&format!("SELECT v FROM {TABLE} WHERE k = {key}"))
        .await?;
    match rows.first() {
        Some(row) => parse_num(row.get_idx(0), "register value"),
        // Every key exists from the start: a missing row is itself an anomaly worth the text.
        None => Err(OpError::Bad(format!("register row {key} is missing"))),
    }
}

async fn write(client: &mut Client, key: u32, value: i64) -> Ran {
    client
        .op(
            Port::Rw,
            false,
            Call::RegWrite { key, value },
            move |c: &mut SqlConn, p: &mut Progress| -> OpFuture<'_, ()> {
                Box::pin(async move {
                    p.effect_may_land();
                    c.exec(&format!("UPDATE {TABLE} SET v = {value} WHERE k = {key}"))
                        .await?;
                    Ok((Outcome::Ok, Call::RegWrite { key, value }, ()))
                })
            },
        )
        .await
        .0
}

async fn cas(client: &mut Client, key: u32, from: i64, to: i64) -> Ran {
    client
        .op(
            Port::Rw,
            false,
            Call::RegCas { key, from, to },
            move |c: &mut SqlConn, p: &mut Progress| -> OpFuture<'_, ()> {
                Box::pin(async move {
                    p.effect_may_land();
                    let ok = c
                        .exec(&format!(
                            "UPDATE {TABLE} SET v = {to} WHERE k = {key} AND v = {from}"
                        ))
                        .await?;
                    // `to` is unique and never equals `from`, so a matching row is always changed.
                    let outcome = match ok.affected_rows {
                        0 => Outcome::Fail,
                        1 => Outcome::Ok,
                        n => return Err(OpError::Bad(format!("CAS changed {n} rows"))),
                    };
                    Ok((outcome, Call::RegCas { key, from, to }, ()))
                })
            },
        )
        .await
        .0
}
