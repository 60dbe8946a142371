//! Bank workload: transfers between accounts of `bank` in locking transactions, and reads of all
//! balances in one autocommit statement (one consistent snapshot).

use quorumsql_chaos_check::{Call, Outcome, Port};
use quorumsql_node::sql::SqlConn;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::client::{backoff, parse_num, pause, Client, OpFuture, Progress, Ran};
use super::outcome::OpError;

pub(crate) const TABLE: &str = "bank";

/// Largest amount of one transfer: small against the initial balance, so most transfers go
/// through but overdraft refusals (`Fail`) happen too.
const MAX_AMOUNT: i64 = 5;

pub(crate) fn schema(accounts: u32, initial: i64) -> Vec<String> {
    let rows: Vec<String> = (0..accounts).map(|a| format!("({a}, {initial})")).collect();
    vec![
        format!(
            "CREATE TABLE {TABLE} (id INT NOT NULL PRIMARY KEY, bal BIGINT NOT NULL) ENGINE=InnoDB"
        ),
        format!("INSERT INTO {TABLE} (id, bal) VALUES {}", rows.join(", ")),
    ]
}

pub(crate) async fn client_loop(mut client: Client, stop: CancellationToken) {
    let accounts = client.ctx.cfg.bank_accounts.max(2);
    while !stop.is_cancelled() {
        let ran = if client.rng.gen_range(0..10) < 7 {
            let from = client.rng.gen_range(0..accounts);
            let to = (from + client.rng.gen_range(1..accounts)) % accounts;
            let amount = client.rng.gen_range(1..=MAX_AMOUNT);
            transfer(&mut client, from, to, amount).await
        } else {
            let port = client.read_port();
            read(&mut client, port).await
        };
        if ran.backoff {
            let d = backoff(&mut client.rng);
            if !pause(&stop, d).await {
                break;
            }
        }
    }
}

async fn transfer(client: &mut Client, from: u32, to: u32, amount: i64) -> Ran {
    let call = Call::BankTransfer { from, to, amount };
    let done = call.clone();
    client
        .op(
            Port::Rw,
            false,
            call,
            move |c: &mut SqlConn, p: &mut Progress| -> OpFuture<'_, ()> {
                Box::pin(async move {
                    c.exec("BEGIN").await?;
                    p.began_txn();
                    let rows = c
                        .query(&format!(
                            "SELECT id, bal FROM {TABLE} WHERE id IN ({from}, {to}) FOR UPDATE"
                        ))
                        .await?;
                    let mut from_bal = None;
                    for row in &rows {
                        let id: u32 = parse_num(row.get_idx(0), "account id")?;
                        if id == from {
                            from_bal = Some(parse_num::<i64>(row.get_idx(1), "balance")?);
                        }
                    }
                    if rows.len() != 2 {
                        return Err(OpError::Bad(format!(
                            "accounts {from} and {to}: {} row(s) instead of 2",
                            rows.len()
                        )));
                    }
                    let Some(from_bal) = from_bal else {
                        return Err(OpError::Bad(format!("account {from} is missing")));
                    };
                    if from_bal < amount {
                        c.exec("ROLLBACK").await?;
                        p.ended_txn();
                        return Ok((Outcome::Fail, done, ()));
                    }
                    c.exec(&format!(
                        "UPDATE {TABLE} SET bal = bal - {amount} WHERE id = {from}"
                    ))
                    .await?;
                    c.exec(&format!(
                        "UPDATE {TABLE} SET bal = bal + {amount} WHERE id = {to}"
                    ))
                    .await?;
                    p.effect_may_land();
                    c.exec("COMMIT").await?;
                    p.ended_txn();
                    Ok((Outcome::Ok, done, ()))
                })
            },
        )
        .await
        .0
}

/// Reads every balance; `Ok` carries them sorted by account.
pub(crate) async fn read(client: &mut Client, port: Port) -> Ran {
    client
        .op(
            port,
            true,
            Call::BankRead { balances: None },
            move |c: &mut SqlConn, _p: &mut Progress| -> OpFuture<'_, ()> {
                Box::pin(async move {
                    let rows = c
                        .query(&format!("SELECT id, bal FROM {TABLE} ORDER BY id"))
                        .await?;
                    let mut balances = Vec::with_capacity(rows.len());
                    for row in &rows {
                        balances.push((
                            parse_num(row.get_idx(0), "account id")?,
                            parse_num(row.get_idx(1), "balance")?,
                        ));
                    }
                    let call = Call::BankRead {
                        balances: Some(balances),
                    };
                    Ok((Outcome::Ok, call, ()))
                })
            },
        )
        .await
        .0
}
