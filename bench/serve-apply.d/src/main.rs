//! serve-apply-driver: runs quorumsql serve over the transactions of a mariadbd's binlog files,
//! for bench/serve-apply (replica apply rate when fed by serve, next to native replication).
//!
//! Usage: serve-apply-driver --index DATADIR/mysql-bin.index [--listen 127.0.0.1:0]
//!        [--server-id 900] [--user repl] [--password PW] [--max-txn-bytes N]
//!
//! Prints `listening ADDR` once serve accepts replicas, then reads commands on stdin, one per
//! line, and answers each with one line on stdout:
//!   load     re-reads the binlog files and appends the transactions after the last one loaded:
//!            `loaded NEW total=N last=GTID bytes=B ms=T` (or `error ...`)
//!   metrics  `metrics txns_sent=.. acks_received=.. bytes_sent=.. dumps_started=.. dumps_open=..
//!            refusals=..`
//!   quit     (or end of input) stops serve and exits.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use quorumsql_node::serve::binlog_file::read_binlog_index;
use quorumsql_node::serve::{MemTxnSource, Serve, ServeConfig, ServeMetrics};

struct Args {
    index: PathBuf,
    listen: SocketAddr,
    server_id: u32,
    user: String,
    password: String,
    max_txn_bytes: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut index = None;
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut server_id = 900u32;
    let mut user = "repl".to_string();
    let mut password = String::new();
    let mut max_txn_bytes = 1usize << 30;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--index" => index = Some(PathBuf::from(value()?)),
            "--listen" => {
                let v = value()?;
                listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--server-id" => {
                let v = value()?;
                server_id = v.parse().map_err(|e| format!("--server-id {v}: {e}"))?;
            }
            "--user" => user = value()?,
            "--password" => password = value()?,
            "--max-txn-bytes" => {
                let v = value()?;
                max_txn_bytes = v.parse().map_err(|e| format!("--max-txn-bytes {v}: {e}"))?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        index: index.ok_or("--index DATADIR/mysql-bin.index is required")?,
        listen,
        server_id,
        user,
        password,
        max_txn_bytes,
    })
}

/// Appends the transactions of the binlog files that follow the last one the source holds.
fn load(args: &Args, source: &MemTxnSource) -> Result<String, String> {
    let t0 = Instant::now();
    let files = read_binlog_index(&args.index, args.max_txn_bytes).map_err(|e| e.to_string())?;
    let last = source.last_gtid();
    let mut past_last = last.is_none();
    let (mut added, mut bytes) = (0u64, 0u64);
    for f in files {
        for t in f.txns {
            if past_last {
                bytes += t.txn.len() as u64;
                added += 1;
                source.push(t.txn);
            } else if Some(t.txn.gtid) == last {
                past_last = true;
            }
        }
    }
    if !past_last {
        return Err(format!(
            "the last loaded transaction {} is no longer in {} (binlog purged or reset?)",
            last.map_or_else(|| "-".to_string(), |g| g.to_string()),
            args.index.display()
        ));
    }
    Ok(format!(
        "loaded {added} total={} last={} bytes={bytes} ms={}",
        source.len(),
        source
            .last_gtid()
            .map_or_else(|| "-".to_string(), |g| g.to_string()),
        t0.elapsed().as_millis()
    ))
}

fn metrics_line(m: &ServeMetrics) -> String {
    format!(
        "metrics txns_sent={} acks_received={} bytes_sent={} dumps_started={} dumps_open={} refusals={}",
        m.txns_sent, m.acks_received, m.bytes_sent, m.dumps_started, m.dumps_open, m.refusals
    )
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("serve-apply-driver: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("serve-apply-driver: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let source = Arc::new(MemTxnSource::new());
    let cfg = ServeConfig::new(args.listen, args.server_id, &args.user, &args.password);
    let serve = match rt.block_on(Serve::start(cfg, source.clone())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("serve-apply-driver: serve did not start: {e}");
            return ExitCode::from(1);
        }
    };
    println!("listening {}", serve.local_addr());
    let mut code = ExitCode::SUCCESS;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "load" => match load(&args, &source) {
                Ok(l) => println!("{l}"),
                Err(e) => {
                    println!("error {e}");
                    code = ExitCode::from(1);
                    break;
                }
            },
            "metrics" => println!("{}", metrics_line(&serve.metrics())),
            "quit" => break,
            "" => {}
            other => println!("error unknown command {other:?}"),
        }
    }
    eprintln!("serve-apply-driver: {}", metrics_line(&serve.metrics()));
    rt.block_on(serve.shutdown());
    code
}
