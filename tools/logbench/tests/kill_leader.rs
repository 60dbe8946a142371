//! Real processes: three logd nodes on loopback, 10,000 proposals with 16 in flight, the leader
//! SIGKILLed mid-stream. Every acknowledged proposal must be in every node's log exactly once and
//! in the same order, and the killed node must catch up to the same log after a restart.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorumsql_logbench::client::Client;
use quorumsql_logbench::cluster::Cluster;
use quorumsql_logbench::protocol::{Request, Response};
use quorumsql_wire::Gtid;

const TOTAL: u64 = 10_000;
const IN_FLIGHT: usize = 16;
const KILL_AFTER_ACKS: usize = 3_000;

#[derive(Default)]
struct Ledger {
    /// proposal number -> GTID it was acknowledged as.
    acked: BTreeMap<u64, Gtid>,
    /// Proposals whose outcome is unknown (connection lost, timeout): may or may not be in the log.
    unknown: Vec<u64>,
    /// Acknowledged proposals per worker, in the order the worker got the acknowledgements.
    per_worker: HashMap<usize, Vec<u64>>,
}

fn payload(n: u64) -> Vec<u8> {
    let mut p = format!("proposal-{n:06}-").into_bytes();
    p.resize(1024, b'.');
    p
}

fn number_of(payload: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(payload.get(9..15)?).ok()?;
    s.parse().ok()
}

/// The node among `addrs` that reports itself master, if any answers so.
async fn find_master(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    for a in addrs {
        let Ok(mut c) = Client::connect(*a).await else {
            continue;
        };
        if let Ok(Response::Status(s)) = c.call(&Request::Status, Duration::from_millis(500)).await
        {
            if s.is_master {
                return Some(*a);
            }
        }
    }
    None
}

async fn worker(
    w: usize,
    addrs: Vec<SocketAddr>,
    next: Arc<AtomicU64>,
    total: u64,
    ledger: Arc<Mutex<Ledger>>,
    deadline: Instant,
) {
    let mut client: Option<Client> = None;
    'proposals: loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        if n >= total {
            return;
        }
        // Retry the same proposal only while it is certainly not in the log.
        loop {
            if Instant::now() > deadline {
                ledger.lock().unwrap().unknown.push(n);
                return;
            }
            if client.is_none() {
                match find_master(&addrs).await {
                    Some(a) => client = Client::connect(a).await.ok(),
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                continue;
            }
            let c = client.as_mut().unwrap();
            match c
                .call(
                    &Request::Propose {
                        payload: payload(n),
                    },
                    Duration::from_secs(15),
                )
                .await
            {
                Ok(Response::Committed { gtid, .. }) => {
                    let mut l = ledger.lock().unwrap();
                    l.acked.insert(n, gtid);
                    l.per_worker.entry(w).or_default().push(n);
                    continue 'proposals;
                }
                Ok(Response::Failed {
                    known_not_applied: true,
                    ..
                }) => {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(_) | Err(_) => {
                    ledger.lock().unwrap().unknown.push(n);
                    client = None;
                    continue 'proposals;
                }
            }
        }
    }
}

/// Every accepted transaction of the node at `addr`, in log order.
async fn dump(addr: SocketAddr) -> Result<Vec<(Gtid, Vec<u8>)>, String> {
    let mut c = Client::connect(addr).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let req = Request::Dump {
            after,
            max_bytes: 4 << 20,
        };
        match c
            .call(&req, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?
        {
            Response::Dump { txns, more } => {
                for t in txns {
                    after = Some(t.gtid);
                    out.push((t.gtid, t.payload));
                }
                if !more {
                    return Ok(out);
                }
            }
            other => return Err(format!("dump answered {other:?}")),
        }
    }
}

async fn last_gtid(addr: SocketAddr) -> Option<Gtid> {
    let mut c = Client::connect(addr).await.ok()?;
    match c.call(&Request::Status, Duration::from_secs(2)).await {
        Ok(Response::Status(s)) => s.last_gtid,
        _ => None,
    }
}

/// Checks one node's log against the ledger; returns a description of the first problem.
fn check_log(name: &str, log: &[(Gtid, Vec<u8>)], ledger: &Ledger) -> Result<(), String> {
    let mut position: HashMap<u64, usize> = HashMap::new();
    for (i, (gtid, p)) in log.iter().enumerate() {
        let n = number_of(p)
            .ok_or_else(|| format!("{name}: entry {i} ({gtid}) holds a foreign payload"))?;
        if p != &payload(n) {
            return Err(format!("{name}: payload of {gtid} is corrupted"));
        }
        if let Some(prev) = position.insert(n, i) {
            return Err(format!(
                "{name}: proposal {n} appears twice (positions {prev} and {i})"
            ));
        }
        if i > 0 && log[i - 1].0.seq >= gtid.seq {
            return Err(format!(
                "{name}: GTIDs not increasing at {i}: {} then {gtid}",
                log[i - 1].0
            ));
        }
    }
    for (n, gtid) in &ledger.acked {
        let i = position
            .get(n)
            .ok_or_else(|| format!("{name}: acknowledged proposal {n} ({gtid}) is missing"))?;
        if log[*i].0 != *gtid {
            return Err(format!(
                "{name}: proposal {n} acknowledged as {gtid} but logged as {}",
                log[*i].0
            ));
        }
    }
    for (w, ns) in &ledger.per_worker {
        for pair in ns.windows(2) {
            if position[&pair[0]] > position[&pair[1]] {
                return Err(format!("{name}: worker {w} got {} acknowledged before proposing {}, but the log orders them the other way", pair[0], pair[1]));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_proposal() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_quorumsql-logbench"));
    let mut cluster = Cluster::new(bin, tmp.path(), 3).unwrap();
    cluster.start_all().unwrap();
    let leader = match cluster
        .wait_master(&[0, 1, 2], Duration::from_secs(30))
        .await
    {
        Ok(l) => l,
        Err(e) => panic!("{e}\n{}", cluster.log_tails(40)),
    };
    let addrs: Vec<SocketAddr> = cluster.nodes().iter().map(|n| n.client_addr).collect();

    let next = Arc::new(AtomicU64::new(0));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let deadline = Instant::now() + Duration::from_secs(150);
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|w| {
            tokio::spawn(worker(
                w,
                addrs.clone(),
                next.clone(),
                TOTAL,
                ledger.clone(),
                deadline,
            ))
        })
        .collect();

    let wait_acks = Instant::now();
    while ledger.lock().unwrap().acked.len() < KILL_AFTER_ACKS {
        if wait_acks.elapsed() > Duration::from_secs(60) {
            panic!(
                "only {} acks within 60 s\n{}",
                ledger.lock().unwrap().acked.len(),
                cluster.log_tails(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.kill(leader);
    let acked_at_kill = ledger.lock().unwrap().acked.len();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new_leader = match cluster
        .wait_master(&survivors, Duration::from_secs(30))
        .await
    {
        Ok(l) => l,
        Err(e) => panic!(
            "no new master after killing node{}: {e}\n{}",
            leader + 1,
            cluster.log_tails(40)
        ),
    };
    let failover = killed_at.elapsed();

    for w in workers {
        w.await.unwrap();
    }
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    assert!(
        ledger.acked.len() > acked_at_kill,
        "no proposal was acknowledged after the kill ({} acked, {} unknown)",
        ledger.acked.len(),
        ledger.unknown.len()
    );

    // Wait until both survivors applied the same tail, then compare whole logs.
    let tail_deadline = Instant::now() + Duration::from_secs(30);
    let tail = loop {
        let tails: Vec<Option<Gtid>> =
            futures::future::join_all(survivors.iter().map(|i| last_gtid(addrs[*i]))).await;
        if tails[0].is_some() && tails.iter().all(|t| *t == tails[0]) {
            break tails[0];
        }
        assert!(
            Instant::now() < tail_deadline,
            "survivors never agreed on the last GTID: {tails:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reference = dump(addrs[new_leader]).await.unwrap();
    for &i in &survivors {
        let log = dump(addrs[i]).await.unwrap();
        if let Err(e) = check_log(&format!("node{}", i + 1), &log, &ledger) {
            panic!("{e}\n{}", cluster.log_tails(40));
        }
        assert!(
            log == reference,
            "node{} and node{} logs differ",
            i + 1,
            new_leader + 1
        );
    }

    // The killed node comes back and catches up to the same log.
    cluster.start(leader).unwrap();
    let catch_up = Instant::now();
    loop {
        if last_gtid(addrs[leader]).await == tail {
            break;
        }
        if catch_up.elapsed() > Duration::from_secs(30) {
            panic!(
                "restarted node{} did not catch up to {tail:?}\n{}",
                leader + 1,
                cluster.log_tails(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rejoined = dump(addrs[leader]).await.unwrap();
    check_log(&format!("restarted node{}", leader + 1), &rejoined, &ledger).unwrap();
    assert!(
        rejoined == reference,
        "restarted node{} log differs from the survivors'",
        leader + 1
    );

    println!(
        "kill_leader: {} acked ({} before the kill), {} unknown, {} in the log; failover to node{} in {:?}; total {:?}",
        ledger.acked.len(),
        acked_at_kill,
        ledger.unknown.len(),
        reference.len(),
        new_leader + 1,
        failover,
        started.elapsed()
    );
}

/// Runs `total` proposals (numbered from `first`) with `IN_FLIGHT` workers to completion.
async fn propose_all(addrs: &[SocketAddr], first: u64, total: u64, ledger: Arc<Mutex<Ledger>>) {
    let next = Arc::new(AtomicU64::new(first));
    let deadline = Instant::now() + Duration::from_secs(120);
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|w| {
            tokio::spawn(worker(
                w,
                addrs.to_vec(),
                next.clone(),
                first + total,
                ledger.clone(),
                deadline,
            ))
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_every_node_at_once_keeps_every_acknowledged_proposal() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_quorumsql-logbench"));
    let mut cluster = Cluster::new(bin, tmp.path(), 3).unwrap();
    cluster.start_all().unwrap();
    if let Err(e) = cluster
        .wait_master(&[0, 1, 2], Duration::from_secs(30))
        .await
    {
        panic!("{e}\n{}", cluster.log_tails(40));
    }
    let addrs: Vec<SocketAddr> = cluster.nodes().iter().map(|n| n.client_addr).collect();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    propose_all(&addrs, 0, 2_000, ledger.clone()).await;
    let acked_before = ledger.lock().unwrap().acked.len();
    assert!(
        acked_before >= 1_900,
        "only {acked_before} of 2000 acknowledged on a healthy cluster"
    );

    for i in 0..3 {
        cluster.kill(i);
    }
    cluster.start_all().unwrap();
    if let Err(e) = cluster
        .wait_master(&[0, 1, 2], Duration::from_secs(30))
        .await
    {
        panic!(
            "no master after restarting every node: {e}\n{}",
            cluster.log_tails(40)
        );
    }
    // The new master continues the chain after the recovered log.
    propose_all(&addrs, 2_000, 500, ledger.clone()).await;
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    assert!(
        ledger.acked.len() >= acked_before + 450,
        "few proposals acknowledged after the restart"
    );

    let tail_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tails: Vec<Option<Gtid>> =
            futures::future::join_all(addrs.iter().map(|a| last_gtid(*a))).await;
        if tails[0].is_some() && tails.iter().all(|t| *t == tails[0]) {
            break;
        }
        assert!(
            Instant::now() < tail_deadline,
            "nodes never agreed on the last GTID: {tails:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reference = dump(addrs[0]).await.unwrap();
    for (i, a) in addrs.iter().enumerate() {
        let log = dump(*a).await.unwrap();
        if let Err(e) = check_log(&format!("node{}", i + 1), &log, &ledger) {
            panic!("{e}\n{}", cluster.log_tails(40));
        }
        assert!(log == reference, "node{} log differs from node1's", i + 1);
    }
}
