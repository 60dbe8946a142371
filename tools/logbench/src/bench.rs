//! `logbench bench`: three logd processes on loopback, 1 KiB proposals at several concurrencies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Client;
use crate::cluster::Cluster;
use crate::fsync::{self, Probe};
use crate::protocol::{Request, Response};
use crate::stats::Latencies;

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub duration: Duration,
    pub concurrency: Vec<usize>,
    pub payload_bytes: usize,
    /// Where the nodes keep their logs (a fresh temporary directory if `None`).
    pub dir: Option<PathBuf>,
    pub proposers: Proposers,
}

/// Where the proposers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proposers {
    /// Inside the master's process, as capture proposes inside a QuorumSQL node: measures the
    /// log alone.
    InProcess,
    /// In the bench process, each over its own TCP connection to the master: adds a loopback
    /// round trip and two process wake-ups to every commit, and the client's CPU to the machine.
    Remote,
}

#[derive(Debug, Clone)]
pub struct LoadResult {
    pub concurrency: usize,
    pub committed: u64,
    pub failed: u64,
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Cluster(String),
}

pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    let tmp;
    let base: &Path = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d
        }
        None => {
            tmp = tempfile::Builder::new().prefix("logbench-").tempdir()?;
            tmp.path()
        }
    };
    let exe = std::env::current_exe()?;
    let mut cluster = Cluster::new(&exe, base, 3)?;
    cluster.start_all()?;
    let master = cluster
        .wait_master(&[0, 1, 2], Duration::from_secs(30))
        .await
        .map_err(BenchError::Cluster)?;
    let target = cluster.nodes()[master].client_addr;
    println!(
        "logbench: 3 logd nodes in {}, master node{}, {} B payloads, {:?} per step, proposers {}",
        base.display(),
        master + 1,
        args.payload_bytes,
        args.duration,
        match args.proposers {
            Proposers::InProcess => "in the master's process",
            Proposers::Remote => "in the bench process over TCP",
        }
    );
    let load = |c: usize, d: Duration| {
        let mode = args.proposers;
        let bytes = args.payload_bytes;
        async move {
            match mode {
                Proposers::InProcess => load_in_process(target, c, bytes, d).await,
                Proposers::Remote => load(target, c, bytes, d).await,
            }
        }
    };

    // Warm up (connections, page cache, raft-engine file creation) without measuring.
    let _ = load(4, Duration::from_secs(1)).await?;
    let mut results = Vec::new();
    for &c in &args.concurrency {
        let before = cluster.status(master).await.map(|s| s.applied_index);
        let r = load(c, args.duration).await?;
        let after = cluster.status(master).await.map(|s| s.applied_index);
        // Raft entries written during the step: shows how many proposals one entry (and one
        // fsync) carried.
        let per_entry = match (before, after) {
            (Some(b), Some(a)) if a > b => format!("{:.1}", r.committed as f64 / (a - b) as f64),
            _ => "?".to_string(),
        };
        println!(
            "  proposers={:>3}  committed={:>7}  failed={:>4}  rate={:>9.1} txn/s  p50={:>8.3} ms  p99={:>8.3} ms  txns/entry={}",
            r.concurrency, r.committed, r.failed, r.rate, ms(r.p50), ms(r.p99), per_entry
        );
        results.push(r);
    }
    drop(cluster);

    let mut disk = fsync::measure(base, Duration::from_secs(3), Probe::Append)?;
    let mut disk_pre = fsync::measure(base, Duration::from_secs(3), Probe::Preallocated)?;
    let fsync_p50 = disk.percentile(50.0);
    let pre_p50 = disk_pre.percentile(50.0);
    let mut rtt = loopback_rtt(2000).await?;
    let rtt_p50 = rtt.percentile(50.0);
    println!(
        "  disk: append 1 KiB + fdatasync p50={:.3} ms p99={:.3} ms; into a preallocated file (as raft-engine writes) p50={:.3} ms p99={:.3} ms",
        ms(fsync_p50),
        ms(disk.percentile(99.0)),
        ms(pre_p50),
        ms(disk_pre.percentile(99.0))
    );
    println!(
        "  loopback TCP round trip (1 KiB out, 8 B back) p50={:.3} ms",
        ms(rtt_p50)
    );

    let rate_at = |c: usize| results.iter().find(|r| r.concurrency == c);
    if let (Some(one), Some(many)) = (rate_at(1), rate_at(64)) {
        let ratio = if one.rate > 0.0 {
            many.rate / one.rate
        } else {
            0.0
        };
        println!(
            "  target: rate(64) >= 20 x rate(1): {:.1} x -> {}",
            ratio,
            verdict(ratio >= 20.0)
        );
        for (what, f) in [("append fsync", fsync_p50), ("preallocated fsync", pre_p50)] {
            let bound = (f + rtt_p50) * 3;
            println!(
                "  target: p50(1) <= 3 x ({what} + loopback RTT) = {:.3} ms: p50(1) = {:.3} ms -> {}",
                ms(bound),
                ms(one.p50),
                verdict(one.p50 <= bound)
            );
        }
    }
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "NOT MET"
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `concurrency` proposers inside the master's process ([`Request::Load`]), for `duration`.
pub async fn load_in_process(
    target: SocketAddr,
    concurrency: usize,
    payload_bytes: usize,
    duration: Duration,
) -> Result<LoadResult, BenchError> {
    let bad = |what: String| BenchError::Cluster(format!("in-process load on {target}: {what}"));
    let mut c = Client::connect(target)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let req = Request::Load {
        concurrency: u32::try_from(concurrency).map_err(|_| bad("too many proposers".into()))?,
        payload_bytes: u32::try_from(payload_bytes).map_err(|_| bad("payload too large".into()))?,
        millis: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
    };
    // The answer comes when the step ends; proposals still in flight then may take a while.
    match c.call(&req, duration + Duration::from_secs(60)).await {
        Ok(Response::Loaded {
            committed,
            failed,
            elapsed_us,
            p50_us,
            p99_us,
        }) => Ok(LoadResult {
            concurrency,
            committed,
            failed,
            rate: committed as f64 / (elapsed_us.max(1) as f64 / 1e6),
            p50: Duration::from_micros(p50_us),
            p99: Duration::from_micros(p99_us),
        }),
        Ok(other) => Err(bad(format!("unexpected answer {other:?}"))),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// `concurrency` proposers, each with its own connection and one proposal in flight, for `duration`.
pub async fn load(
    target: SocketAddr,
    concurrency: usize,
    payload_bytes: usize,
    duration: Duration,
) -> Result<LoadResult, BenchError> {
    let payload = Arc::new(vec![0xabu8; payload_bytes]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut failed = 0u64;
            let Ok(mut c) = Client::connect(target).await else {
                return (lat, 1);
            };
            while start.elapsed() < duration {
                let t = Instant::now();
                match c
                    .call(
                        &Request::Propose {
                            payload: payload.to_vec(),
                        },
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok(Response::Committed { .. }) => lat.record(t.elapsed()),
                    Ok(_) => failed += 1,
                    Err(_) => {
                        failed += 1;
                        match Client::connect(target).await {
                            Ok(n) => c = n,
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }
            }
            (lat, failed)
        }));
    }
    let mut all = Latencies::default();
    let mut failed = 0;
    for t in tasks {
        if let Ok((l, f)) = t.await {
            all.extend(l);
            failed += f;
        }
    }
    let elapsed = start.elapsed();
    let committed = all.len() as u64;
    Ok(LoadResult {
        concurrency,
        committed,
        failed,
        rate: committed as f64 / elapsed.as_secs_f64(),
        p50: all.percentile(50.0),
        p99: all.percentile(99.0),
    })
}

/// Round trip of a 1 KiB request and an 8-byte answer over loopback TCP (the network part of a
/// commit on this machine).
async fn loopback_rtt(rounds: usize) -> std::io::Result<Latencies> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 1024];
        loop {
            if s.read_exact(&mut buf).await.is_err() {
                return Ok::<(), std::io::Error>(());
            }
            s.write_all(&[0u8; 8]).await?;
        }
    });
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    c.set_nodelay(true)?;
    let mut lat = Latencies::default();
    let req = [1u8; 1024];
    let mut resp = [0u8; 8];
    for _ in 0..rounds {
        let t = Instant::now();
        c.write_all(&req).await?;
        c.read_exact(&mut resp).await?;
        lat.record(t.elapsed());
    }
    drop(c);
    let _ = server.await;
    Ok(lat)
}
