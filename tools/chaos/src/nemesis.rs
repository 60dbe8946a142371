//! The nemesis: a seeded schedule of faults, applied to the real cluster one at a time, each
//! healed before the next quiet gap.
//!
//! The schedule fixes *what* happens *when*; *which* node (the master, a follower) is resolved
//! when the fault starts, since roles move during a run. Every applied fault is recorded with
//! the nodes it hit, for the picture and for reproducing a run (`--seed`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumsql_chaos_check::{FaultSpan, NodeIndex};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock::ClockMode;
use crate::cluster::Cluster;
use crate::ddl_fence::{self, FinalCheck};
use crate::rotation;

/// What a nemesis can do. `--nemesis` takes these names (or `all`, `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// kill -9 of a node's mariadbd or of its quorumsql (the master preferred); restarted later.
    Kill,
    /// SIGSTOP of a node's quorumsql for longer than the lease (the master preferred).
    Pause,
    /// Network partitions: isolate the master, minority/majority split, one-way, bridge (5 nodes).
    Partition,
    /// kill -9 of every node at once, then all restart.
    RestartAll,
    /// Kill the master, and right after the new leader appears, restart a follower.
    FollowerRestart,
    /// Clients sending `KILL QUERY n` for connection ids near their own, through the RW ports.
    KillQuery,
    /// Planned `quorumsql switchover` while the workloads run.
    Switchover,
    /// `pause`, always of the master (for targeted runs such as the planted-bug tests).
    PauseMaster,
    /// `partition`, always isolating the master from every peer (clients still reach it).
    IsolateMaster,
    /// Wall-clock jumps of one node's quorumsql under libfaketime (the master preferred); on
    /// nodes that fake every clock, forward jumps of the lease clock of the master.
    ClockJump,
    /// A stray directory named like the master's next binlog file, then `FLUSH BINARY LOGS`:
    /// MariaDB turns binary logging off (design-review 2); removed again to heal.
    BinlogRotationFailure,
    /// The followers' quorumsql stopped, INSERTs waiting for their ACK on the master and a DDL
    /// behind them, until the master fences itself (design-review 14); the followers resume.
    DdlAtFence,
}

pub const ALL: &[Nemesis] = &[
    Nemesis::Kill,
    Nemesis::Pause,
    Nemesis::Partition,
    Nemesis::RestartAll,
    Nemesis::FollowerRestart,
    Nemesis::KillQuery,
    Nemesis::Switchover,
    Nemesis::ClockJump,
    Nemesis::BinlogRotationFailure,
    Nemesis::DdlAtFence,
];

impl FromStr for Nemesis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "kill" => Nemesis::Kill,
            "pause" => Nemesis::Pause,
            "partition" => Nemesis::Partition,
            "restart-all" => Nemesis::RestartAll,
            "follower-restart" => Nemesis::FollowerRestart,
            "kill-query" => Nemesis::KillQuery,
            "switchover" => Nemesis::Switchover,
            "pause-master" => Nemesis::PauseMaster,
            "isolate-master" => Nemesis::IsolateMaster,
            "clock-jump" => Nemesis::ClockJump,
            "binlog-rotation-failure" => Nemesis::BinlogRotationFailure,
            "ddl-at-fence" => Nemesis::DdlAtFence,
            other => {
                return Err(format!(
                    "unknown nemesis {other:?}; known: kill, pause, partition, restart-all, \
                     follower-restart, kill-query, switchover, pause-master, isolate-master, \
                     clock-jump, binlog-rotation-failure, ddl-at-fence, all, none"
                ))
            }
        })
    }
}

/// Parses `--nemesis kill,pause` (also `all` and `none`).
pub fn parse_list(s: &str) -> Result<Vec<Nemesis>, String> {
    match s.trim() {
        "all" => Ok(ALL.to_vec()),
        "none" | "" => Ok(Vec::new()),
        list => list.split(',').map(|p| p.trim().parse()).collect(),
    }
}

/// One planned fault.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub nemesis: Nemesis,
    /// Offset from the start of the fault phase.
    pub at: Duration,
    pub duration: Duration,
    /// A seeded choice the fault uses at run time (which variant, which follower, ...).
    pub choice: u64,
}

/// The schedule: quiet gaps of 2–6 s between faults of 3–8 s, nemeses in seeded order.
pub fn schedule(seed: u64, nemeses: &[Nemesis], phase: Duration) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    let mut out = Vec::new();
    if nemeses.is_empty() {
        return out;
    }
    let mut t = Duration::from_secs(rng.gen_range(2..=5));
    loop {
        let nemesis = nemeses[rng.gen_range(0..nemeses.len())];
        let duration = Duration::from_millis(rng.gen_range(3_000..=8_000));
        if t + duration > phase {
            break;
        }
        out.push(Planned {
            nemesis,
            at: t,
            duration,
            choice: rng.gen(),
        });
        t += duration + Duration::from_millis(rng.gen_range(2_000..=6_000));
    }
    out
}

/// One fault as it was applied.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub planned: Planned,
    pub description: String,
    pub span: FaultSpan,
    /// What the end of the run must find on every node because of this fault (statements of
    /// the nemesis itself that were answered OK).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub final_checks: Vec<FinalCheck>,
}

/// Runs the schedule against the cluster. Every fault is healed before the next one starts,
/// and everything is healed when `stop` fires or the schedule ends.
pub async fn run(
    cluster: Arc<Cluster>,
    plan: Vec<Planned>,
    run_start: Instant,
    phase_start: Instant,
    binary: std::path::PathBuf,
    stop: CancellationToken,
) -> Vec<Applied> {
    let mut applied = Vec::new();
    for p in plan {
        let at = phase_start + p.at;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(at.into()) => {}
        }
        let start_ns = ns_since(run_start);
        let mut rng = StdRng::seed_from_u64(p.choice);
        let mut final_checks = Vec::new();
        let (description, nodes) =
            apply(&cluster, &p, &mut rng, &binary, &stop, &mut final_checks).await;
        if let Err(e) = cluster.heal() {
            tracing::error!("healing after {:?}: {e}", p.nemesis);
        }
        let end_ns = ns_since(run_start);
        tracing::info!("nemesis: {description}");
        applied.push(Applied {
            span: FaultSpan {
                label: serde_json::to_value(p.nemesis)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                nodes,
                start_ns,
                end_ns,
            },
            planned: p,
            description,
            final_checks,
        });
    }
    if let Err(e) = cluster.heal() {
        tracing::error!("final heal: {e}");
    }
    applied
}

fn ns_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Waits `d` or until `stop`.
async fn hold(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// The master if there is one (70 % of the time when `prefer_master`), else a random node.
async fn pick(cluster: &Cluster, rng: &mut StdRng, prefer_master: bool) -> NodeIndex {
    let nodes = cluster.nodes();
    if prefer_master && rng.gen_bool(0.7) {
        if let Some(m) = cluster.master().await {
            return m;
        }
    }
    *nodes.choose(rng).unwrap_or(&1)
}

async fn apply(
    cluster: &Arc<Cluster>,
    p: &Planned,
    rng: &mut StdRng,
    binary: &std::path::Path,
    stop: &CancellationToken,
    final_checks: &mut Vec<FinalCheck>,
) -> (String, Vec<NodeIndex>) {
    let all = cluster.nodes();
    match p.nemesis {
        Nemesis::Kill => {
            let n = pick(cluster, rng, true).await;
            let what = if rng.gen_bool(0.5) {
                match cluster.kill_db(n).await {
                    Some(pid) => format!("kill -9 mariadbd of node{n} (pid {pid})"),
                    None => {
                        cluster.kill_node(n);
                        format!("kill -9 node{n} (its mariadbd pid was unknown)")
                    }
                }
            } else {
                cluster.kill_node(n);
                format!("kill -9 node{n} ({})", cluster.name())
            };
            hold(p.duration, stop).await;
            (format!("{what}; restarted after {:?}", p.duration), vec![n])
        }
        Nemesis::Pause | Nemesis::PauseMaster => {
            let n = if p.nemesis == Nemesis::PauseMaster {
                match cluster.master().await {
                    Some(m) => m,
                    None => pick(cluster, rng, true).await,
                }
            } else {
                pick(cluster, rng, true).await
            };
            cluster.pause(n);
            hold(p.duration, stop).await;
            cluster.resume(n);
            (
                format!(
                    "SIGSTOP {} of node{n} for {:?}",
                    if cluster.name() == "galera" {
                        "mariadbd"
                    } else {
                        "quorumsql"
                    },
                    p.duration
                ),
                vec![n],
            )
        }
        Nemesis::Partition | Nemesis::IsolateMaster => {
            if !cluster.net().supports_partitions() {
                hold(p.duration, stop).await;
                return ("partition skipped (loopback network)".into(), Vec::new());
            }
            let master = cluster.master().await.unwrap_or(1);
            let others: Vec<NodeIndex> = all.iter().copied().filter(|&n| n != master).collect();
            let variant = if p.nemesis == Nemesis::IsolateMaster {
                0
            } else {
                rng.gen_range(0..4)
            };
            let (desc, hit) = match variant {
                0 => {
                    for &o in &others {
                        cut_both(cluster, master, o);
                    }
                    (format!("isolate master node{master}"), vec![master])
                }
                1 => {
                    let mut shuffled = all.clone();
                    shuffled.shuffle(rng);
                    let minority: Vec<NodeIndex> = shuffled[..(all.len() - 1) / 2].to_vec();
                    for &a in &minority {
                        for &b in all.iter().filter(|b| !minority.contains(b)) {
                            cut_both(cluster, a, b);
                        }
                    }
                    (
                        format!("split minority {minority:?} from the rest"),
                        minority,
                    )
                }
                2 => {
                    // The master can still hear its followers but nothing it sends arrives.
                    for &o in &others {
                        let _ = cluster.net().cut(master, o);
                    }
                    (
                        format!("one-way: master node{master} cannot send"),
                        vec![master],
                    )
                }
                _ if all.len() >= 5 => {
                    // Bridge: two halves that both reach one node in the middle.
                    let mut shuffled = all.clone();
                    shuffled.shuffle(rng);
                    let bridge = shuffled[0];
                    let (a, b) = shuffled[1..].split_at((all.len() - 1) / 2);
                    for &x in a {
                        for &y in b {
                            cut_both(cluster, x, y);
                        }
                    }
                    (
                        format!("bridge node{bridge} between {a:?} and {b:?}"),
                        vec![bridge],
                    )
                }
                _ => {
                    // 3 nodes: cut one follower from the master only (a partial partition).
                    let f = others[rng.gen_range(0..others.len())];
                    cut_both(cluster, master, f);
                    (
                        format!("cut master node{master} from follower node{f}"),
                        vec![master, f],
                    )
                }
            };
            hold(p.duration, stop).await;
            (format!("{desc} for {:?}", p.duration), hit)
        }
        Nemesis::RestartAll => {
            for &n in &all {
                cluster.kill_node(n);
            }
            hold(Duration::from_secs(1), stop).await;
            if let Err(e) = cluster.start_down() {
                tracing::error!("restart all: {e}");
            }
            hold(p.duration, stop).await;
            ("kill -9 every node at once, restart all".into(), all)
        }
        Nemesis::FollowerRestart => {
            let old = cluster.master().await;
            let Some(old) = old else {
                hold(p.duration, stop).await;
                return (
                    format!("follower-restart skipped (no master on {})", cluster.name()),
                    Vec::new(),
                );
            };
            cluster.kill_node(old);
            // Wait (bounded) for a new leader, then restart a follower right away.
            let deadline = Instant::now() + Duration::from_secs(6);
            let mut new = None;
            while Instant::now() < deadline && !stop.is_cancelled() {
                let observer = *all.iter().find(|&&n| n != old).unwrap_or(&1);
                if let Some(l) = cluster
                    .leader_seen_by(observer)
                    .await
                    .filter(|&l| l != u64::from(old))
                {
                    new = Some(l);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let follower = all
                .iter()
                .copied()
                .find(|&n| n != old && Some(u64::from(n)) != new);
            if let Some(f) = follower {
                cluster.kill_node(f);
                if let Err(e) = cluster.start(f) {
                    tracing::error!("restart follower: {e}");
                }
            }
            hold(p.duration, stop).await;
            (
                format!(
                    "kill -9 master node{old}; new leader {new:?}; restart follower {follower:?}"
                ),
                [Some(old), follower].into_iter().flatten().collect(),
            )
        }
        Nemesis::KillQuery => {
            let targets = cluster.targets();
            let deadline = Instant::now() + p.duration;
            let mut sent = 0u64;
            while Instant::now() < deadline && !stop.is_cancelled() {
                let t = targets[rng.gen_range(0..targets.len())];
                let victim_offset: i64 = rng.gen_range(-20..=20);
                sent += kill_query_once(&t.rw, victim_offset).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (format!("KILL QUERY storm: {sent} statements"), Vec::new())
        }
        Nemesis::ClockJump => clock_jump(cluster, p, rng, binary, stop).await,
        Nemesis::BinlogRotationFailure => binlog_rotation_failure(cluster, p, rng, stop).await,
        Nemesis::DdlAtFence => {
            let (Some(q), Some(m)) = (cluster.quorum(), cluster.master().await) else {
                hold(p.duration, stop).await;
                return (
                    format!("ddl-at-fence skipped (no master on {})", cluster.name()),
                    Vec::new(),
                );
            };
            let out = ddl_fence::run(q, m, p.duration, stop).await;
            final_checks.extend(out.checks);
            (out.description, out.nodes)
        }
        Nemesis::Switchover => {
            let master = cluster.master().await;
            let out = match master.and_then(|m| cluster.admin_addr(m)) {
                Some(admin) => {
                    let out = tokio::process::Command::new(binary)
                        .arg("switchover")
                        .arg("--admin")
                        .arg(admin.to_string())
                        .output()
                        .await;
                    match out {
                        Ok(o) => format!(
                            "switchover from node{}: {} {}",
                            master.unwrap_or(0),
                            String::from_utf8_lossy(&o.stdout).trim(),
                            String::from_utf8_lossy(&o.stderr).trim()
                        ),
                        Err(e) => format!("switchover could not run: {e}"),
                    }
                }
                None => format!("switchover skipped (no master on {})", cluster.name()),
            };
            hold(p.duration, stop).await;
            (out, master.into_iter().collect())
        }
    }
}

/// One clock jump (docs/CHAOS.md, clock-jump). Wall-only nodes: the wall clock steps by
/// ±1–15 min and steps back when healed. All-clocks nodes (CLOCK_BOOTTIME, the lease clock,
/// moves too): only the master, only forward, and never back within the process's life, since a
/// lease clock that goes back is not physical (and only lengthens leases); a forward jump of the
/// lease holder's clock is a suspend as the process sees it.
async fn clock_jump(
    cluster: &Arc<Cluster>,
    p: &Planned,
    rng: &mut StdRng,
    binary: &std::path::Path,
    stop: &CancellationToken,
) -> (String, Vec<NodeIndex>) {
    let Some(q) = cluster.quorum() else {
        hold(p.duration, stop).await;
        return (
            format!("clock-jump skipped (not faked on {})", cluster.name()),
            Vec::new(),
        );
    };
    let mut master = cluster.master().await;
    let mut moved = String::new();
    if rng.gen_bool(0.5) {
        // The lease-clock variant needs the lease on a node whose every clock is faked: hand
        // the master role there first (a planned switchover, bounded) when it is elsewhere.
        let all_clocks: Vec<NodeIndex> = cluster
            .nodes()
            .into_iter()
            .filter(|&n| q.clock_mode(n) == Some(ClockMode::AllClocks))
            .collect();
        if let (Some(m), Some(&to)) = (master, all_clocks.choose(rng)) {
            if q.clock_mode(m) != Some(ClockMode::AllClocks) {
                let out = switchover_to(cluster, binary, m, to).await;
                master = cluster.master().await;
                moved = format!(" (after switchover node{m} -> node{to}: {out})");
            }
        }
    }
    if let Some(m) = master.filter(|&m| q.clock_mode(m) == Some(ClockMode::AllClocks)) {
        let jump: i64 = rng.gen_range(60..=600);
        let total = q.clock_offset(m) + jump;
        if let Err(e) = q.set_clock_offset(m, total) {
            tracing::error!("clock-jump: {e}");
        }
        hold(p.duration, stop).await;
        return (
            format!(
                "clock-jump: master node{m}, every clock (CLOCK_BOOTTIME too) +{jump}s, now \
                 {total:+}s from real time; kept until its quorumsql restarts{moved}"
            ),
            vec![m],
        );
    }
    let wall_only: Vec<NodeIndex> = cluster
        .nodes()
        .into_iter()
        .filter(|&n| q.clock_mode(n) == Some(ClockMode::WallOnly))
        .collect();
    let n = match master.filter(|m| wall_only.contains(m)) {
        Some(m) if rng.gen_bool(0.7) => m,
        _ => match wall_only.choose(rng) {
            Some(&n) => n,
            None => {
                hold(p.duration, stop).await;
                return ("clock-jump skipped (no wall-only node)".into(), Vec::new());
            }
        },
    };
    let magnitude: i64 = rng.gen_range(60..=900);
    let secs = if rng.gen_bool(0.5) {
        magnitude
    } else {
        -magnitude
    };
    if let Err(e) = q.set_clock_offset(n, secs) {
        tracing::error!("clock-jump: {e}");
    }
    hold(p.duration, stop).await;
    if let Err(e) = q.set_clock_offset(n, 0) {
        tracing::error!("clock-jump heal: {e}");
    }
    let role = if Some(n) == master {
        "master"
    } else {
        "follower"
    };
    (
        format!(
            "clock-jump: {role} node{n}, wall clock {secs:+}s for {:?} (monotonic and boot \
             clocks real), then back{moved}",
            p.duration
        ),
        vec![n],
    )
}

/// `quorumsql switchover --to` from master `from`; returns what it said (bounded to 15 s).
async fn switchover_to(
    cluster: &Cluster,
    binary: &std::path::Path,
    from: NodeIndex,
    to: NodeIndex,
) -> String {
    let Some(admin) = cluster.admin_addr(from) else {
        return "no admin address".into();
    };
    let run = tokio::process::Command::new(binary)
        .arg("switchover")
        .arg("--admin")
        .arg(admin.to_string())
        .arg("--to")
        .arg(to.to_string())
        .arg("--timeout-secs")
        .arg("10")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(15), run).await {
        Ok(Ok(o)) => format!(
            "{} {}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        )
        .trim()
        .to_string(),
        Ok(Err(e)) => format!("could not run: {e}"),
        Err(_) => "no answer within 15 s".into(),
    }
}

/// Design-review 2: the master's binlog rotation fails and MariaDB turns logging off. The
/// product must fence that master (its canary commit gets no GTID) and fail over. Healing
/// removes the stray directory: at once after the failed rotation (a transient cause such as
/// EMFILE) or only after the fault's duration (a lasting one, which the node's mariadbd
/// restarts also meet).
async fn binlog_rotation_failure(
    cluster: &Arc<Cluster>,
    p: &Planned,
    rng: &mut StdRng,
    stop: &CancellationToken,
) -> (String, Vec<NodeIndex>) {
    let (Some(q), Some(m)) = (cluster.quorum(), cluster.master().await) else {
        hold(p.duration, stop).await;
        return (
            format!(
                "binlog-rotation-failure skipped (no master on {})",
                cluster.name()
            ),
            Vec::new(),
        );
    };
    let Some(socket) = q.mariadb_socket(m) else {
        hold(p.duration, stop).await;
        return (
            format!("binlog-rotation-failure skipped (node{m} has no socket)"),
            Vec::new(),
        );
    };
    let transient = rng.gen_bool(0.5);
    let started = Instant::now();
    let planted = match rotation::break_rotation(&socket).await {
        Ok(pl) => pl,
        Err(e) => {
            hold(p.duration, stop).await;
            return (
                format!("binlog-rotation-failure on node{m} not planted: {e}"),
                vec![m],
            );
        }
    };
    let mut healed = false;
    if transient {
        if let Err(e) = rotation::heal(&planted.dir) {
            tracing::error!("binlog-rotation-failure heal: {e}");
        }
        healed = true;
    }
    // Watch the product react: the master fenced (no longer master, or a new mariadbd) and a
    // new master elected.
    let pid_before = q.status(m).await.and_then(|s| s.mariadb_pid);
    let mut fenced_after = None;
    let mut new_master = None;
    let deadline = started + p.duration;
    while Instant::now() < deadline && !stop.is_cancelled() {
        let st = q.cluster_status().await;
        if let Some(s) = st.nodes.iter().find(|s| s.id == u64::from(m)) {
            if fenced_after.is_none() && (s.role != "master" || s.mariadb_pid != pid_before) {
                fenced_after = Some((started.elapsed(), s.role.clone()));
            }
        }
        if new_master.is_none() {
            if let Some(nm) = st.master.filter(|&nm| nm != u64::from(m)) {
                new_master = Some((nm, started.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !healed {
        if let Err(e) = rotation::heal(&planted.dir) {
            tracing::error!("binlog-rotation-failure heal: {e}");
        }
    }
    let role_now = q
        .status(m)
        .await
        .map_or_else(|| "unreachable".to_string(), |s| s.role);
    (
        format!(
            "binlog-rotation-failure: master node{m}, stray directory {} (after {}), FLUSH \
             BINARY LOGS: {}, logging {}; fenced: {}; new master: {}; directory removed {}; \
             node{m} now {role_now}",
            planted.dir.display(),
            planted.current,
            match &planted.flush {
                Ok(()) => "ok".to_string(),
                Err(e) => e.clone(),
            },
            if planted.logging_off {
                "off (SHOW MASTER STATUS empty)"
            } else {
                "still on"
            },
            fenced_after.map_or_else(
                || "not seen".to_string(),
                |(t, role)| format!("after {t:?} ({role})")
            ),
            new_master.map_or_else(
                || "none seen".to_string(),
                |(n, t)| format!("node{n} after {t:?}")
            ),
            if transient {
                "at once (transient cause)"
            } else {
                "after the fault's duration (lasting cause)"
            },
        ),
        vec![m],
    )
}

fn cut_both(cluster: &Cluster, a: NodeIndex, b: NodeIndex) {
    for (x, y) in [(a, b), (b, a)] {
        if let Err(e) = cluster.net().cut(x, y) {
            tracing::error!("partition {x}->{y}: {e}");
        }
    }
}

/// One connection that asks for its own id and kills the query of a nearby one. Returns how
/// many KILL statements it sent.
async fn kill_query_once(addr: &std::net::SocketAddr, offset: i64) -> u64 {
    use quorumsql_node::sql::{ConnectOptions, SqlConn};
    let mut opts = ConnectOptions::new(crate::USER, crate::PASSWORD);
    opts.connect_timeout = Duration::from_secs(2);
    opts.query_timeout = Duration::from_secs(2);
    let Ok(mut conn) = SqlConn::connect_tcp_with(*addr, &opts).await else {
        return 0;
    };
    let me = i64::from(conn.connection_id());
    let victim = (me + offset).max(1);
    let _ = conn.exec(&format!("KILL QUERY {victim}")).await;
    conn.quit().await;
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nemesis_parses_by_the_name_it_is_reported_under() {
        let mut every = ALL.to_vec();
        every.extend([Nemesis::PauseMaster, Nemesis::IsolateMaster]);
        for n in every {
            let name = serde_json::to_value(n).unwrap();
            let name = name.as_str().unwrap();
            assert_eq!(name.parse::<Nemesis>().unwrap(), n, "{name}");
        }
    }

    #[test]
    fn all_includes_the_clock_binlog_and_ddl_faults() {
        let all = parse_list("all").unwrap();
        assert!(all.contains(&Nemesis::ClockJump));
        assert!(all.contains(&Nemesis::BinlogRotationFailure));
        assert!(all.contains(&Nemesis::DdlAtFence));
        assert_eq!(
            parse_list("ddl-at-fence,kill").unwrap(),
            vec![Nemesis::DdlAtFence, Nemesis::Kill]
        );
        assert_eq!(
            parse_list(" clock-jump , binlog-rotation-failure,kill").unwrap(),
            vec![
                Nemesis::ClockJump,
                Nemesis::BinlogRotationFailure,
                Nemesis::Kill
            ]
        );
        assert!(parse_list("none").unwrap().is_empty());
        let err = parse_list("clock-skew").unwrap_err();
        assert!(err.contains("clock-jump"), "{err}");
    }

    #[test]
    fn the_schedule_uses_only_the_named_nemeses_and_fits_the_phase() {
        let phase = Duration::from_secs(300);
        let plan = schedule(
            7,
            &[Nemesis::ClockJump, Nemesis::BinlogRotationFailure],
            phase,
        );
        assert!(plan.len() >= 10, "{} faults in 300 s", plan.len());
        assert!(plan.iter().any(|p| p.nemesis == Nemesis::ClockJump));
        assert!(plan
            .iter()
            .any(|p| p.nemesis == Nemesis::BinlogRotationFailure));
        assert!(plan.iter().all(|p| p.at + p.duration <= phase));
        assert_eq!(
            serde_json::to_string(&plan).unwrap(),
            serde_json::to_string(&schedule(
                7,
                &[Nemesis::ClockJump, Nemesis::BinlogRotationFailure],
                phase
            ))
            .unwrap(),
            "the same seed gives the same schedule"
        );
    }
}
