//! Helpers for the switchover tests: steady writers on the RW ports that classify every answer,
//! and one-shot admin control calls. Included with `#[path]` beside `support` (mod.rs stays
//! untouched).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorumsql_node::sql::{SqlConn, SqlError};

use super::support::{PASSWORD, USER};

/// What one writer saw.
#[derive(Debug, Default, Clone)]
pub struct WriterLog {
    pub writer: u64,
    pub port: u16,
    /// Ids whose INSERT was answered OK.
    pub acked: Vec<u64>,
    /// 1053 / 08S01: nothing was executed; the writer reconnected.
    pub no_master: Vec<(u64, String)>,
    /// 1053 / 08007 or another "outcome unknown" close (server answer with SQLSTATE 08007).
    pub outcome_unknown: Vec<(u64, String)>,
    /// The connection broke mid-statement without an error packet (also outcome unknown).
    pub io_errors: Vec<(u64, String)>,
    /// Any other server error (e.g. 1290 read-only): the statement failed cleanly.
    pub other_errors: Vec<(u64, String)>,
    /// Failed connection attempts (retried).
    pub connect_errors: u64,
    /// (end of the longest gap between two acknowledged inserts, its length).
    pub longest_pause: Option<(Instant, Duration)>,
}

/// Writers inserting `(id, writer)` rows in autocommit through RW ports, one id per attempt.
pub struct Writers {
    stop: Arc<AtomicBool>,
    logs: Vec<Arc<Mutex<WriterLog>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub acked_total: Arc<AtomicU64>,
}

impl Writers {
    /// Starts one writer thread per port in `ports`, inserting into `table`.
    pub fn start(ports: &[u16], table: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked_total = Arc::new(AtomicU64::new(0));
        let mut logs = Vec::new();
        let mut threads = Vec::new();
        for (i, &port) in ports.iter().enumerate() {
            let writer = i as u64 + 1;
            let log = Arc::new(Mutex::new(WriterLog {
                writer,
                port,
                ..WriterLog::default()
            }));
            logs.push(log.clone());
            let stop = stop.clone();
            let table = table.to_string();
            let acked_total = acked_total.clone();
            threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("writer runtime");
                rt.block_on(write_loop(writer, port, table, stop, log, acked_total));
            }));
        }
        Writers {
            stop,
            logs,
            threads,
            acked_total,
        }
    }

    /// Acknowledged inserts per writer so far.
    pub fn acked_counts(&self) -> Vec<usize> {
        self.logs
            .iter()
            .map(|l| l.lock().map(|l| l.acked.len()).unwrap_or(0))
            .collect()
    }

    /// Stops every writer and returns what each saw.
    pub fn stop(self) -> Vec<WriterLog> {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
        self.logs
            .iter()
            .map(|l| l.lock().map(|l| l.clone()).unwrap_or_default())
            .collect()
    }
}

async fn write_loop(
    writer: u64,
    port: u16,
    table: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriterLog>>,
    acked_total: Arc<AtomicU64>,
) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut next = writer * 10_000_000;
    let mut last_ok: Option<Instant> = None;
    let mut conn: Option<SqlConn> = None;
    while !stop.load(Ordering::Acquire) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match SqlConn::connect_tcp(addr, USER, PASSWORD).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    if let Ok(mut l) = log.lock() {
                        l.connect_errors += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        next += 1;
        let id = next;
        let r = c
            .exec(&format!(
                "INSERT INTO {table} (id, writer) VALUES ({id}, {writer})"
            ))
            .await;
        let mut l = match log.lock() {
            Ok(l) => l,
            Err(_) => return,
        };
        match r {
            Ok(_) => {
                let now = Instant::now();
                if let Some(prev) = last_ok {
                    let gap = now - prev;
                    if l.longest_pause.is_none_or(|(_, g)| gap > g) {
                        l.longest_pause = Some((now, gap));
                    }
                }
                last_ok = Some(now);
                l.acked.push(id);
                acked_total.fetch_add(1, Ordering::Relaxed);
            }
            Err(SqlError::Server {
                code,
                state,
                message,
                ..
            }) => {
                let what = format!("{code} ({state}): {message}");
                if code == 1053 && state == "08S01" {
                    l.no_master.push((id, what));
                    conn = None;
                } else if state == "08007" {
                    l.outcome_unknown.push((id, what));
                    conn = None;
                } else {
                    l.other_errors.push((id, what));
                }
            }
            Err(e) => {
                l.io_errors.push((id, e.to_string()));
                conn = None;
            }
        }
    }
}

/// `POST path` on an admin port: (HTTP status, body).
pub fn admin_post(addr: SocketAddr, path: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(quorumsql_node::admin_client::request(
        addr,
        "POST",
        path,
        Duration::from_secs(40),
    ))
    .unwrap_or_else(|e| panic!("POST {path} on {addr}: {e}"))
}

/// `GET path` on an admin port: (HTTP status, body).
pub fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(quorumsql_node::admin_client::request(
        addr,
        "GET",
        path,
        Duration::from_secs(10),
    ))
    .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// Runs `quorumsql switchover` with `args`: (exit code, stdout, stderr).
pub fn run_switchover(args: &[String]) -> (i32, String, String) {
    let out = std::process::Command::new(super::support::bin())
        .arg("switchover")
        .args(args)
        .output()
        .expect("run quorumsql switchover");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// The set of ids in `table` on node `id`'s own mariadbd.
pub fn ids_on(c: &super::support::Cluster, id: u64, table: &str) -> Result<Vec<u64>, String> {
    let out =
        super::support::sql_socket(&c.mariadb_socket(id), &format!("SELECT id FROM {table}"))?;
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.trim().parse().map_err(|e| format!("id {l:?}: {e}")))
        .collect()
}
