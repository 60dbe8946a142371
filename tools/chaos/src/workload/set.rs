//! Set workload: inserts of unique elements into `set_elems`, and periodic reads of all of them.

use quorumsql_chaos_check::{Call, Outcome, Port};
use quorumsql_node::sql::SqlConn;
use tokio_util::sync::CancellationToken;

use super::client::{backoff, parse_num, pause, Client, OpFuture, Progress, Ran, UniqueValues};

pub(crate) const TABLE: &str = "set_elems";

/// A client reads the whole set after this many of its own operations...
const READ_EVERY: usize = 50;
/// ...or after (size of its last read) / this many, whichever is more: every read copies the
/// whole set into the history, so a fixed interval would make the history grow with the square
/// of the run length. With this, all reads together hold about this many times the adds.
const READ_GROWTH: usize = 8;

pub(crate) fn schema() -> Vec<String> {
    vec![format!(
        "CREATE TABLE {TABLE} (v BIGINT UNSIGNED NOT NULL PRIMARY KEY) ENGINE=InnoDB"
    )]
}

pub(crate) async fn client_loop(mut client: Client, stop: CancellationToken) {
    let mut values = UniqueValues::default();
    let mut since_read = 0usize;
    let mut last_size = 0usize;
    while !stop.is_cancelled() {
        let ran = if since_read >= READ_EVERY.max(last_size / READ_GROWTH) {
            since_read = 0;
            let port = client.read_port();
            let (ran, size) = read(&mut client, port).await;
            last_size = size.unwrap_or(last_size);
            ran
        } else {
            since_read += 1;
            let value = values.next(client.id());
            add(&mut client, value).await
        };
        if ran.backoff {
            let d = backoff(&mut client.rng);
            if !pause(&stop, d).await {
                break;
            }
        }
    }
}

async fn add(client: &mut Client, value: u64) -> Ran {
    client
        .op(
            Port::Rw,
            false,
            Call::SetAdd { value },
            move |c: &mut SqlConn, p: &mut Progress| -> OpFuture<'_, ()> {
                Box::pin(async move {
                    p.effect_may_land();
                    c.exec(&format!("INSERT INTO {TABLE} (v) VALUES ({value})"))
                        .await?;
                    Ok((Outcome::Ok, Call::SetAdd { value }, ()))
                })
            },
        )
        .await
        .0
}

/// Reads the whole set; returns its size when `Ok`.
pub(crate) async fn read(client: &mut Client, port: Port) -> (Ran, Option<usize>) {
    client
        .op(
            port,
            true,
            Call::SetRead { values: None },
            move |c: &mut SqlConn, _p: &mut Progress| -> OpFuture<'_, usize> {
                Box::pin(async move {
                    let rows = c.query(&format!("SELECT v FROM {TABLE}")).await?;
                    let mut values = Vec::with_capacity(rows.len());
                    for row in &rows {
                        values.push(parse_num(row.get_idx(0), "set element")?);
                    }
                    values.sort_unstable();
                    let n = values.len();
                    let call = Call::SetRead {
                        values: Some(values),
                    };
                    Ok((Outcome::Ok, call, n))
                })
            },
        )
        .await
}
