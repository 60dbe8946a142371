//! `Client`: one logical client process. Keeps a connection per port to a random node, runs one
//! operation at a time under the client-side timeout, classifies its outcome and records it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use quorumsql_chaos_check::{Call, Op, Outcome, Port};
use quorumsql_node::sql::{ConnectOptions, SqlConn};
use rand::rngs::StdRng;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::outcome::{describe, is_contention, keeps_connection, outcome_of, OpError};
use super::{Recorder, Target, WorkloadConfig};

/// The body of one operation: runs on a connected session, marks its progress, and returns the
/// outcome (`Ok` or `Fail`) with the completed call and whatever the workload wants to learn
/// from it (`T`, e.g. the value a read saw).
pub(crate) type OpFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<(Outcome, Call, T), OpError>> + Send + 'a>>;

/// What every client of one workload shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub cfg: WorkloadConfig,
    pub targets: Vec<Target>,
    pub recorder: Recorder,
    opts: ConnectOptions,
    /// Statements run on every new RW connection (e.g. the isolation level).
    rw_init: Vec<String>,
    ro_init: Vec<String>,
}

impl Ctx {
    pub fn new(
        cfg: WorkloadConfig,
        targets: Vec<Target>,
        recorder: Recorder,
        rw_init: Vec<String>,
    ) -> Arc<Ctx> {
        let mut opts = ConnectOptions::new(&cfg.user, &cfg.password);
        opts.database = Some(cfg.database.clone());
        opts.connect_timeout = cfg.op_timeout;
        opts.query_timeout = cfg.op_timeout;
        opts.connect_attrs
            .push(("program_name".into(), "quorumsql-chaos".into()));
        // Lock waits must end as a definite 1205 (Fail) well before the client gives up on the
        // operation (Unknown).
        let lock_wait = (cfg.op_timeout.as_secs() / 2).max(1);
        let common = format!("SET SESSION innodb_lock_wait_timeout = {lock_wait}");
        let mut rw = vec![common.clone()];
        rw.extend(rw_init);
        Arc::new(Ctx {
            cfg,
            targets,
            recorder,
            opts,
            rw_init: rw,
            ro_init: vec![common],
        })
    }
}

/// Tracks how far an operation got, for [`outcome_of`].
#[derive(Debug, Default)]
pub(crate) struct Progress {
    effect_sent: bool,
    in_txn: bool,
}

impl Progress {
    /// Call right before sending a statement that can make the effect durable (an autocommit
    /// write or COMMIT).
    pub fn effect_may_land(&mut self) {
        self.effect_sent = true;
    }

    /// Call once BEGIN succeeded: on an error the client rolls back before reusing the session.
    pub fn began_txn(&mut self) {
        self.in_txn = true;
    }

    /// Call once COMMIT or ROLLBACK succeeded.
    pub fn ended_txn(&mut self) {
        self.in_txn = false;
    }
}

struct Conn {
    target: usize,
    sql: SqlConn,
}

/// What the caller's loop needs to know about the operation it just ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ran {
    pub outcome: Outcome,
    /// The recorded error text, if any.
    pub error: Option<String>,
    /// Pause briefly before the next operation (the connection was dropped or the server
    /// refused), so an outage does not turn into a tight loop of failed attempts.
    pub backoff: bool,
}

pub(crate) struct Client {
    pub ctx: Arc<Ctx>,
    pub rng: StdRng,
    id: u32,
    rw: Option<Conn>,
    ro: Option<Conn>,
    /// Target for the next new connection instead of a random one (final reads walk the nodes).
    next_target: Option<usize>,
}

impl Client {
    pub fn new(ctx: Arc<Ctx>, rng: StdRng) -> Client {
        let id = ctx.recorder.new_client_id();
        Client {
            ctx,
            rng,
            id,
            rw: None,
            ro: None,
            next_target: None,
        }
    }

    /// The current client id (changes after every `Unknown` outcome).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends the next new connection to `target`, dropping the current one on `port`.
    pub fn reconnect_to(&mut self, port: Port, target: usize) {
        *self.slot(port) = None;
        self.next_target = Some(target);
    }

    /// `Port::Ro` with probability `ro_fraction`, else `Port::Rw`.
    pub fn read_port(&mut self) -> Port {
        if self.rng.gen_bool(self.ctx.cfg.ro_fraction) {
            Port::Ro
        } else {
            Port::Rw
        }
    }

    fn slot(&mut self, port: Port) -> &mut Option<Conn> {
        match port {
            Port::Rw => &mut self.rw,
            Port::Ro => &mut self.ro,
        }
    }

    /// Runs one operation on `port` and records it. `invocation` is the call as invoked (result
    /// fields `None`); it is recorded when the body fails.
    pub async fn op<T, F>(
        &mut self,
        port: Port,
        read_only: bool,
        invocation: Call,
        body: F,
    ) -> (Ran, Option<T>)
    where
        F: for<'a> FnOnce(&'a mut SqlConn, &'a mut Progress) -> OpFuture<'a, T>,
    {
        let ctx = self.ctx.clone();
        let current = self.slot(port).as_ref().map(|c| c.target);
        let target = match (current, self.next_target.take()) {
            (Some(t), _) => t,
            (None, Some(t)) => t % ctx.targets.len(),
            (None, None) => self.rng.gen_range(0..ctx.targets.len()),
        };
        let t = &ctx.targets[target];
        let (addr, init) = match port {
            Port::Rw => (t.rw, &ctx.rw_init),
            Port::Ro => (t.ro, &ctx.ro_init),
        };
        let id = ctx.recorder.next_op_id();
        let start_ns = ctx.recorder.now_ns();
        let mut progress = Progress::default();
        let slot = self.slot(port);
        let limit = ctx.cfg.op_timeout;
        let result = tokio::time::timeout(limit, async {
            if slot.is_none() {
                let sql = connect(addr, &ctx.opts, init).await?;
                *slot = Some(Conn { target, sql });
            }
            let Some(conn) = slot.as_mut() else {
                return Err(OpError::Bad("no connection after connecting".into()));
            };
            body(&mut conn.sql, &mut progress).await
        })
        .await
        .unwrap_or(Err(OpError::Timeout(limit)));
        let end_ns = ctx.recorder.now_ns();

        let (outcome, call, learned, error) = match result {
            Ok((outcome, call, learned)) => (outcome, call, Some(learned), None),
            Err(e) => {
                let outcome = outcome_of(&e, read_only, progress.effect_sent);
                (outcome, invocation, None, Some(e))
            }
        };
        let error_text = error.as_ref().map(describe);
        ctx.recorder.record(Op {
            id,
            client: self.id,
            node: t.node,
            port,
            start_ns,
            end_ns,
            outcome,
            error: error_text.clone(),
            call,
        });
        if outcome == Outcome::Unknown {
            // Jepsen's rule: the unknown op may still be in flight, so this process is "crashed";
            // continuing under a new id keeps every client's ops sequential.
            self.id = ctx.recorder.new_client_id();
        }

        let slot = self.slot(port);
        let mut keep = error.as_ref().is_none_or(keeps_connection)
            && slot.as_ref().is_some_and(|c| !c.sql.is_broken());
        if keep && progress.in_txn {
            // A server error left the transaction open (1205 rolls back only the statement).
            if let Some(c) = slot.as_mut() {
                let r = tokio::time::timeout(limit, c.sql.exec("ROLLBACK")).await;
                keep = matches!(r, Ok(Ok(_)));
            }
        }
        if !keep {
            *slot = None;
        }
        let ran = Ran {
            outcome,
            // Contention is the point of the workloads; every other error (a refusal, a lost
            // connection, a node that is down) must not become a tight loop of recorded failures.
            backoff: !keep || error.as_ref().is_some_and(|e| !is_contention(e)),
            error: error_text,
        };
        (ran, learned)
    }
}

async fn connect(
    addr: std::net::SocketAddr,
    opts: &ConnectOptions,
    init: &[String],
) -> Result<SqlConn, OpError> {
    let mut sql = SqlConn::connect_tcp_with(addr, opts).await?;
    for stmt in init {
        sql.exec(stmt).await?;
    }
    Ok(sql)
}

/// Sleeps `d` unless `stop` fires first; returns false if it did.
pub(crate) async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// The pause after an operation that lost its connection (jittered so clients do not retry in
/// lockstep).
pub(crate) fn backoff(rng: &mut StdRng) -> Duration {
    Duration::from_millis(rng.gen_range(50..150))
}

/// Values unique across the run: the client id in the high half, a per-task counter in the low.
/// Client ids are never reused, so two tasks never produce the same value; never 0 because the
/// counter starts at 1.
#[derive(Debug, Default)]
pub(crate) struct UniqueValues {
    counter: u32,
}

impl UniqueValues {
    pub fn next(&mut self, client: u32) -> u64 {
        self.counter = self.counter.wrapping_add(1).max(1);
        (u64::from(client) << 32) | u64::from(self.counter)
    }
}

/// Parses one integer column value.
pub(crate) fn parse_num<T: std::str::FromStr>(v: Option<&str>, what: &str) -> Result<T, OpError> {
    let s = v.ok_or_else(|| OpError::Bad(format!("{what} is NULL or missing")))?;
    s.parse()
        .map_err(|_| OpError::Bad(format!("{what} is not a number: {s:?}")))
}
