//! serve at scale against real MariaDB 10.11: a primary A commits more than 10,000 mixed
//! transactions (multi-statement transactions from several concurrent clients, DDL on tables and
//! indexes, 16 MiB blob rows, a 32 MiB row update and one transaction larger than 64 MiB), serve
//! re-serves them from A's binlog files, and a replica C (semi-sync, parallel optimistic apply,
//! log_slave_updates, gtid_strict_mode) replicating from serve must end with exactly A's data:
//! the same tables, the same `SHOW CREATE TABLE`, the same `CHECKSUM TABLE`, the same GTID
//! position, and no replication error. Every mariadbd runs in its own temp dir (datadir, socket,
//! tmpdir) on 127.0.0.1 and is SIGKILLed by a Drop guard, as are the workload clients.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumsql_node::serve::binlog_file::read_binlog_index;
use quorumsql_node::serve::{MemTxnSource, Serve, ServeConfig, ServeHandle};

const SERVE_SERVER_ID: u32 = 900;
const REPL_USER: &str = "repl";
const REPL_PASSWORD: &str = "scale-pw";
/// Concurrent workload clients on A (besides the one that writes the blobs).
const WORKERS: usize = 4;
/// Workload units per client; every unit commits exactly one transaction (one GTID), and DDL
/// blocks add more, so A's binlog ends well above 10,000 transactions.
const UNITS_PER_WORKER: usize = 2_600;
/// The floor for the number of transactions the replica must get right.
const MIN_TXNS: u64 = 10_000;
/// One blob row: 64 hex digits × 262,144 = exactly 16 MiB.
const BLOB_REPEAT: usize = 262_144;
/// Rows of 8 MiB in the one large transaction (9 × 8 MiB = 72 MiB, above 64 MiB).
const BIG_ROWS: usize = 9;
const BIG_TXN_FLOOR: usize = 64 << 20;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An initialised datadir (`TEMPLATE/data`) that every server of the test copies: one
/// mariadb-install-db instead of one per server. Removed when dropped.
fn install_template() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("qs-scale-tpl-")
        .tempdir()
        .unwrap();
    let out = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.path().join("data").display()))
        .args([
            "--user=root",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mariadb-install-db failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// One mariadbd in a temp dir (datadir, socket, its own tmpdir: instances that share a tmpdir
/// delete each other's `#sql*` files); SIGKILLed when dropped.
struct Mariadb {
    name: &'static str,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Mariadb {
    fn start(template: &Path, name: &'static str, server_id: u32, extra: &[&str]) -> Mariadb {
        let dir = tempfile::Builder::new()
            .prefix("qs-scale-")
            .tempdir()
            .unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(template.join("data"))
            .arg(dir.path().join("data"))
            .status()
            .unwrap();
        assert!(st.success(), "{name}: copying the template datadir failed");
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let mut m = Mariadb {
            name,
            dir,
            port: free_port(),
            child: None,
        };
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", m.path("data").display()))
            .arg(format!("--tmpdir={}", m.path("tmp").display()))
            .arg(format!("--socket={}", m.socket().display()))
            .arg(format!("--port={}", m.port))
            .arg(format!("--server-id={server_id}"))
            .arg(format!("--log-error={}", m.path("err.log").display()))
            .arg(format!("--pid-file={}", m.path("m.pid").display()))
            .args([
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--log-bin=mysql-bin",
                "--gtid-strict-mode=ON",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-checksum=CRC32",
                "--innodb-buffer-pool-size=128M",
                "--innodb-log-file-size=256M",
                "--max-allowed-packet=1G",
                "--skip-slave-start",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        m.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if m.sql("SELECT 1").is_ok() {
                return m;
            }
            if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                panic!("{name}: mariadbd exited with {st}:\n{}", m.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "{name}: mariadbd did not answer within 90 s:\n{}",
                m.error_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn socket(&self) -> PathBuf {
        self.path("m.sock")
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.path("err.log")).unwrap_or_default()
    }

    fn client(&self) -> Command {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "--max-allowed-packet=1G"]);
        c
    }

    fn sql(&self, q: &str) -> Result<String, String> {
        let out = self
            .client()
            .args(["-N", "-B", "-e", q])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn must(&self, q: &str) -> String {
        self.sql(q)
            .unwrap_or_else(|e| panic!("{}: `{q}` failed: {e}", self.name))
    }

    fn var(&self, v: &str) -> String {
        self.must(&format!("SELECT {v}"))
    }

    /// Runs a SQL script file through one `mariadb` client (stops at the first error).
    fn spawn_script(&self, script: &Path) -> ClientGuard {
        let child = self
            .client()
            .arg("--batch")
            .stdin(std::fs::File::open(script).unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        ClientGuard {
            what: script.display().to_string(),
            child: Some(child),
        }
    }

    /// `SHOW SLAVE STATUS` as (column, value) pairs.
    fn slave_status(&self) -> Vec<(String, String)> {
        let out = self
            .client()
            .args(["-E", "-e", "SHOW SLAVE STATUS"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A workload client; killed if the test fails before it finished.
struct ClientGuard {
    what: String,
    child: Option<Child>,
}

impl ClientGuard {
    fn wait_ok(mut self, deadline: Instant) {
        let mut child = self.child.take().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                assert!(st.success(), "{} failed ({st}): {err}", self.what);
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not finish in time", self.what);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn field(st: &[(String, String)], f: &str) -> String {
    st.iter()
        .find(|(k, _)| k == f)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Deterministic xorshift64*: the workload is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Rows a worker inserted and has not deleted: every UPDATE and DELETE it generates names a live
/// row, so that every unit changes data and commits exactly one GTID.
struct Live {
    ids: Vec<u32>,
    next: u32,
}

impl Live {
    fn fresh(&mut self) -> u32 {
        self.next += 1;
        self.ids.push(self.next);
        self.next
    }

    fn pick(&self, rng: &mut Rng) -> u32 {
        self.ids[rng.below(self.ids.len() as u64) as usize]
    }

    fn remove(&mut self, rng: &mut Rng) -> u32 {
        let i = rng.below(self.ids.len() as u64) as usize;
        self.ids.swap_remove(i)
    }
}

fn row(w: usize, id: u32, rng: &mut Rng) -> String {
    format!(
        "({id},{},'w{w}-{id}-{:x}','{:x}')",
        rng.below(1000),
        rng.next(),
        rng.next() >> 4
    )
}

/// The SQL script of workload client `w`: its own table `mix.w{w}` (plus DDL-churned tables and
/// indexes), and updates of the shared `mix.hot` rows that the other clients update too (so that
/// the replica's optimistic parallel apply meets real conflicts).
fn worker_script(w: usize) -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x1000_0001));
    let mut live = Live {
        ids: Vec::new(),
        next: 0,
    };
    let t = format!("mix.w{w}");
    let mut s = String::new();
    // Seed rows so that updates and deletes always find one.
    let mut seed = Vec::new();
    for _ in 0..50 {
        let id = live.fresh();
        seed.push(row(w, id, &mut rng));
    }
    writeln!(s, "INSERT INTO {t} (id,k,c,pad) VALUES {};", seed.join(",")).unwrap();
    let mut ddl_block = 0usize;
    for unit in 0..UNITS_PER_WORKER {
        if unit % 250 == 249 {
            ddl_block += 1;
            let j = ddl_block;
            let d = format!("mix.w{w}_d{j}");
            writeln!(
                s,
                "CREATE TABLE {d} (id INT PRIMARY KEY, v VARCHAR(30) NOT NULL) ENGINE=InnoDB;\n\
                 INSERT INTO {d} VALUES (1,'a{j}'),(2,'b{j}'),(3,'c{j}');\n\
                 ALTER TABLE {d} ADD COLUMN n INT NOT NULL DEFAULT {j};\n\
                 CREATE INDEX v_idx ON {d} (v);\n\
                 UPDATE {d} SET n=n+1 WHERE id=2;"
            )
            .unwrap();
            if j % 2 == 1 {
                writeln!(s, "ALTER TABLE {t} ADD INDEX c_idx{j} (c(16));").unwrap();
            } else {
                writeln!(s, "DROP INDEX c_idx{} ON {t};", j - 1).unwrap();
            }
            if j.is_multiple_of(3) {
                writeln!(
                    s,
                    "ALTER TABLE {t} ADD COLUMN x{j} INT NULL, ALGORITHM=COPY;\n\
                     ALTER TABLE {t} DROP COLUMN x{j};"
                )
                .unwrap();
            }
            if j > 1 {
                let prev = format!("mix.w{w}_d{}", j - 1);
                if j.is_multiple_of(2) {
                    writeln!(s, "RENAME TABLE {prev} TO mix.w{w}_r{j};").unwrap();
                    writeln!(s, "DROP TABLE mix.w{w}_r{j};").unwrap();
                } else {
                    writeln!(s, "DROP TABLE {prev};").unwrap();
                }
            }
            continue;
        }
        let hot = rng.below(16);
        match rng.below(100) {
            0..=34 => {
                let n = 1 + rng.below(3);
                let rows: Vec<String> = (0..n)
                    .map(|_| {
                        let id = live.fresh();
                        row(w, id, &mut rng)
                    })
                    .collect();
                let upd = live.pick(&mut rng);
                write!(
                    s,
                    "BEGIN; INSERT INTO {t} (id,k,c,pad) VALUES {}; \
                     UPDATE {t} SET k=k+1, c=LEFT(CONCAT('u',c),120) WHERE id={upd};",
                    rows.join(",")
                )
                .unwrap();
                if rng.below(2) == 0 && live.ids.len() > 10 {
                    let del = live.remove(&mut rng);
                    write!(s, " DELETE FROM {t} WHERE id={del};").unwrap();
                }
                if rng.below(3) == 0 {
                    write!(s, " UPDATE mix.hot SET v=v+1, who={w} WHERE id={hot};").unwrap();
                }
                writeln!(s, " COMMIT;").unwrap();
            }
            35..=59 => {
                let id = live.fresh();
                let r = row(w, id, &mut rng);
                writeln!(s, "INSERT INTO {t} (id,k,c,pad) VALUES {r};").unwrap();
            }
            60..=74 => {
                let id = live.pick(&mut rng);
                writeln!(s, "UPDATE {t} SET k=k+7, pad=REVERSE(pad) WHERE id={id};").unwrap();
            }
            75..=84 => {
                let old = live.pick(&mut rng);
                let new = live.fresh();
                let r = row(w, new, &mut rng);
                writeln!(
                    s,
                    "BEGIN; INSERT INTO {t} (id,k,c,pad) VALUES ({old},0,'dup','dup') \
                     ON DUPLICATE KEY UPDATE k=k+1000, c='upserted'; \
                     REPLACE INTO {t} (id,k,c,pad) VALUES {r}; COMMIT;"
                )
                .unwrap();
            }
            85..=91 if live.ids.len() > 10 => {
                let id = live.remove(&mut rng);
                writeln!(s, "DELETE FROM {t} WHERE id={id};").unwrap();
            }
            _ => {
                writeln!(
                    s,
                    "BEGIN; UPDATE mix.hot SET v=v+1, who={w} WHERE id={hot}; \
                     INSERT INTO mix.journal (w, note) VALUES ({w}, 'hot{hot}'); COMMIT;"
                )
                .unwrap();
            }
        }
    }
    s
}

/// The large rows: 16 MiB blobs inserted one per transaction, an update of a blob row (its FULL
/// row image is a 32 MiB event), a delete of one, and one transaction of 9 × 8 MiB rows.
fn blob_script() -> String {
    let mut s = String::new();
    for i in 1..=4 {
        writeln!(
            s,
            "INSERT INTO mix.blobs (id, note, b) VALUES ({i}, 'n{i}', REPEAT(SHA2('blob-{i}',256), {BLOB_REPEAT}));"
        )
        .unwrap();
    }
    writeln!(s, "UPDATE mix.blobs SET note='updated' WHERE id=2;").unwrap();
    writeln!(s, "DELETE FROM mix.blobs WHERE id=3;").unwrap();
    write!(s, "BEGIN;").unwrap();
    for i in 1..=BIG_ROWS {
        write!(
            s,
            " INSERT INTO mix.big (id, b) VALUES ({i}, REPEAT(SHA2('big-{i}',256), {}));",
            BLOB_REPEAT / 2
        )
        .unwrap();
    }
    writeln!(s, " UPDATE mix.hot SET v=v+100 WHERE id=0; COMMIT;").unwrap();
    writeln!(
        s,
        "INSERT INTO mix.blobs (id, note, b) VALUES (5, 'after-big', REPEAT('z', 1000));"
    )
    .unwrap();
    s
}

fn setup_sql() -> String {
    let mut s = String::from(
        "CREATE DATABASE mix;\n\
         CREATE TABLE mix.hot (id INT PRIMARY KEY, v BIGINT NOT NULL, who INT NOT NULL) ENGINE=InnoDB;\n\
         CREATE TABLE mix.journal (seq BIGINT AUTO_INCREMENT PRIMARY KEY, w INT NOT NULL, note VARCHAR(20) NOT NULL) ENGINE=InnoDB;\n\
         CREATE TABLE mix.blobs (id INT PRIMARY KEY, note VARCHAR(20) NOT NULL, b LONGBLOB NOT NULL) ENGINE=InnoDB;\n\
         CREATE TABLE mix.big (id INT PRIMARY KEY, b LONGBLOB NOT NULL) ENGINE=InnoDB;\n",
    );
    let hot: Vec<String> = (0..16).map(|i| format!("({i},0,-1)")).collect();
    writeln!(s, "INSERT INTO mix.hot VALUES {};", hot.join(",")).unwrap();
    for w in 0..WORKERS {
        writeln!(
            s,
            "CREATE TABLE mix.w{w} (id INT PRIMARY KEY, k INT NOT NULL, c VARCHAR(120) NOT NULL, \
             pad CHAR(60) NOT NULL, KEY k_idx (k)) ENGINE=InnoDB;"
        )
        .unwrap();
    }
    s
}

fn user_tables(m: &Mariadb) -> Vec<String> {
    m.must(
        "SELECT CONCAT(table_schema,'.',table_name) FROM information_schema.tables \
         WHERE table_schema NOT IN ('mysql','information_schema','performance_schema','sys') \
         ORDER BY 1",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// `SHOW CREATE TABLE` without the AUTO_INCREMENT counter (a primary may have reserved values
/// that no row used; the replica only sees the rows).
fn table_definition(m: &Mariadb, t: &str) -> String {
    m.must(&format!("SHOW CREATE TABLE {t}"))
        .split_whitespace()
        .filter(|w| !w.starts_with("AUTO_INCREMENT="))
        .collect::<Vec<_>>()
        .join(" ")
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn start_serve(rt: &tokio::runtime::Runtime, source: Arc<MemTxnSource>) -> ServeHandle {
    let mut cfg = ServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        SERVE_SERVER_ID,
        REPL_USER,
        REPL_PASSWORD,
    );
    cfg.heartbeat = Duration::from_secs(1);
    // Several virtual files: the 16 MiB rows and the 72 MiB transaction force rotations too.
    cfg.rotate_at = 48 << 20;
    rt.block_on(Serve::start(cfg, source)).unwrap()
}

#[test]
fn replica_fed_by_serve_matches_the_primary_after_10k_mixed_transactions() {
    let t0 = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A: durability relaxed (the binlog files are still complete on disk: the reader sees the
    // page cache) so that 10,000 commits take seconds; several binlog files, one of them holding
    // a transaction larger than max_binlog_size.
    let template = install_template();
    let a = Mariadb::start(
        template.path(),
        "A",
        1,
        &[
            "--sync-binlog=0",
            "--innodb-flush-log-at-trx-commit=2",
            "--max-binlog-size=32M",
            "--max-binlog-cache-size=1G",
            "--max-binlog-stmt-cache-size=1G",
        ],
    );
    let c = Mariadb::start(
        template.path(),
        "C",
        3,
        &[
            "--slave-max-allowed-packet=1073741824",
            "--rpl-semi-sync-slave-enabled=ON",
            "--log-slave-updates=ON",
            "--slave-parallel-threads=4",
            "--slave-parallel-mode=optimistic",
            "--read-only=ON",
        ],
    );

    // 1. The workload: setup, then WORKERS clients and the blob client at the same time.
    let scripts = a.path("scripts");
    std::fs::create_dir(&scripts).unwrap();
    let setup = scripts.join("setup.sql");
    std::fs::write(&setup, setup_sql()).unwrap();
    a.spawn_script(&setup)
        .wait_ok(Instant::now() + Duration::from_secs(60));
    let mut clients = Vec::new();
    for w in 0..WORKERS {
        let p = scripts.join(format!("w{w}.sql"));
        std::fs::write(&p, worker_script(w)).unwrap();
        clients.push(a.spawn_script(&p));
    }
    let blobs = scripts.join("blobs.sql");
    std::fs::write(&blobs, blob_script()).unwrap();
    clients.push(a.spawn_script(&blobs));
    let deadline = Instant::now() + Duration::from_secs(150);
    for cl in clients {
        cl.wait_ok(deadline);
    }
    let a_pos = a.var("@@gtid_binlog_pos");
    let t_workload = t0.elapsed();

    // 2. The source: every transaction of A's binlog files.
    let files = read_binlog_index(&a.path("data").join("mysql-bin.index"), 256 << 20).unwrap();
    assert!(files.len() >= 3, "expected several binlog files of A");
    let source = Arc::new(MemTxnSource::new());
    let mut largest = 0usize;
    let mut count = 0u64;
    for f in files {
        assert_eq!(f.incomplete_tail, None, "{}", f.path.display());
        assert_eq!(f.partial_event_bytes, 0, "{}", f.path.display());
        for t in f.txns {
            largest = largest.max(t.txn.len());
            count += 1;
            source.push(t.txn);
        }
    }
    assert_eq!(
        source.last_gtid().map(|g| g.to_string()),
        Some(a_pos.clone()),
        "the binlog reader found every transaction of A"
    );
    let last_seq: u64 = a_pos.rsplit('-').next().unwrap().parse().unwrap();
    assert_eq!(count, last_seq, "one transaction per GTID, none missing");
    assert!(
        count >= MIN_TXNS,
        "the workload committed only {count} transactions"
    );
    assert!(
        largest > BIG_TXN_FLOOR,
        "the largest transaction is only {largest} bytes"
    );

    // 3. C replicates everything from serve.
    let serve = start_serve(&rt, source.clone());
    let port = serve.local_addr().port();
    c.must(&format!(
        "CHANGE MASTER TO master_host='127.0.0.1', master_port={port}, master_user='{REPL_USER}', \
         master_password='{REPL_PASSWORD}', master_use_gtid=slave_pos, master_connect_retry=1, \
         master_heartbeat_period=1; START SLAVE"
    ));
    let t_apply = Instant::now();
    let deadline = t_apply + Duration::from_secs(150);
    loop {
        let pos = c.var("@@gtid_slave_pos");
        if pos == a_pos {
            break;
        }
        let st = c.slave_status();
        let sql_errno = field(&st, "Last_SQL_Errno");
        assert!(
            sql_errno == "0" || sql_errno.is_empty(),
            "C's applier stopped at {pos}: {sql_errno} {}",
            field(&st, "Last_SQL_Error")
        );
        assert!(
            Instant::now() < deadline,
            "C did not reach {a_pos} within 150 s: gtid_slave_pos={pos}, IO error {} {:?}, \
             serve {:?}",
            field(&st, "Last_IO_Errno"),
            field(&st, "Last_IO_Error"),
            serve.metrics()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let t_apply = t_apply.elapsed();

    // 4. The same data, schema and GTIDs; no error.
    let tables = user_tables(&a);
    assert!(tables.len() >= WORKERS + 5, "{tables:?}");
    assert_eq!(tables, user_tables(&c), "table lists differ");
    for t in &tables {
        assert_eq!(
            table_definition(&a, t),
            table_definition(&c, t),
            "{t}: definitions differ"
        );
        let q = format!("CHECKSUM TABLE {t}");
        assert_eq!(a.must(&q), c.must(&q), "{t}: data differs between A and C");
    }
    assert_eq!(
        c.must("SELECT COUNT(*), SUM(LENGTH(b)) FROM mix.big"),
        format!("{BIG_ROWS}\t{}", BIG_ROWS * (8 << 20))
    );
    assert_eq!(
        c.must("SELECT GROUP_CONCAT(id ORDER BY id), MAX(LENGTH(b)) FROM mix.blobs"),
        "1,2,4,5\t16777216"
    );
    assert_eq!(
        c.var("@@gtid_binlog_pos"),
        a_pos,
        "log_slave_updates keeps A's GTIDs"
    );
    let st = c.slave_status();
    for (f, want) in [
        ("Slave_IO_Running", "Yes"),
        ("Slave_SQL_Running", "Yes"),
        ("Last_Errno", "0"),
        ("Last_IO_Errno", "0"),
        ("Last_SQL_Errno", "0"),
        ("Last_Error", ""),
        ("Last_IO_Error", ""),
        ("Last_SQL_Error", ""),
        ("Master_Server_Id", "900"),
    ] {
        assert_eq!(field(&st, f), want, "SHOW SLAVE STATUS {f}: {st:?}");
    }
    let file = field(&st, "Master_Log_File");
    assert!(
        file.starts_with("quorumsql-bin.") && file != "quorumsql-bin.000001",
        "expected rotated virtual binlog files, C reads {file}"
    );
    assert_eq!(
        c.must("SHOW STATUS LIKE 'Rpl_semi_sync_slave_status'"),
        "Rpl_semi_sync_slave_status\tON"
    );
    let m = serve.metrics();
    assert_eq!(m.txns_sent, count, "{m:?}");
    assert_eq!(m.refusals, 0, "{m:?}");
    assert_eq!(m.dumps_started, 1, "one dump, never reconnected: {m:?}");
    let rss = peak_rss_mib();
    eprintln!(
        "serve_scale: {count} transactions (largest {largest} bytes, {} MiB sent) in {} tables; \
         workload {:.1} s, replica apply {:.1} s, total {:.1} s; test process peak RSS {rss} MiB",
        m.bytes_sent >> 20,
        tables.len(),
        t_workload.as_secs_f64(),
        t_apply.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    // The source holds every transaction in memory (~190 MiB here); serve itself must stream the
    // 72 MiB transaction without copying the whole stream, and the binlog reader holds one file
    // at a time on top of what it returns.
    assert!(
        rss < 1024,
        "the test process peaked at {rss} MiB for {} MiB of transactions",
        m.bytes_sent >> 20
    );
    rt.block_on(serve.shutdown());
}
