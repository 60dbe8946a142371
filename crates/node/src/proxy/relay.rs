//! One session's relay: bytes flow unchanged in both directions, framed just enough to know
//! where packets start.
//!
//! Client → backend: the head of a packet is looked at before any of its bytes are forwarded:
//! the handshake response (TLS requests refused, compression and multi-statements switched
//! off), and in the command phase every packet with sequence id 0 that starts a command (what
//! the proxy refuses, DESIGN §4). On the master, [`RouteOracle::may_forward`] is asked before
//! every chunk. The rest of a packet streams through, so a large payload is never buffered.
//!
//! Backend → client: the greeting (the connection id; TLS and compression switched off), the end
//! of the authentication (OK), and `LOCAL INFILE` requests, whose file data the client then sends
//! with sequence ids that may wrap to 0 and must not be read as commands. On the master's RW
//! port every OK is read whole (a few dozen bytes): the last packet of a reply that ends a
//! write transaction is held until the commit is known to be in the global binlog, and session
//! state the proxy asked for on a client's behalf is cut out (`commit_check`).
//!
//! Both directions also follow whether a command is in flight (forwarded, reply not fully
//! relayed; see `reply`), which picks the error a closed session gets: a few integer updates
//! per packet on heads already read.
//!
//! Both directions read into pooled buffers only while data is ready (`readable()` then
//! `try_read`), so an idle session holds no relay buffer. Everything of a session runs in one
//! task; the per-session state is a few atomics.

use std::future::Future;
use std::io;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed,
};
use std::time::Duration;

use parking_lot::Mutex as SyncMutex;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use super::commit_check::{self, CommitEvidence, CommitTracker, CommitVerdict};
use super::metrics::{ErrorKind, PortMetrics};
use super::mysql::{self, caps, com, parse_header, ClientHello, SqlError, HEADER_LEN, MAX_CHUNK};
use super::registry::{CloseReason, KillOutcome, Registry, SessionControl};
use super::reply;
use super::statement::{self, Verdict};
use super::{MasterEpoch, PortKind, ProxyLimits, RouteOracle};

/// Largest packet a client may send before the handshake is done (connect attributes and auth
/// data included).
const HANDSHAKE_MAX_PACKET: usize = 64 * 1024;
/// Greeting bytes looked at (its fixed fields are in the first ~60).
const GREETING_HEAD: usize = 1024;
/// Bound on writing the final ERR packet to a client that does not read.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a paused packet re-asks the forwarding rule.
const LEASE_POLL: Duration = Duration::from_millis(2);
/// A forwarding session asked to close on a master change waits this long beyond the lease
/// pause for the master's proxy to answer its command in flight (that proxy knows whether the
/// command reached mariadbd; a packet it holds is answered within its lease pause).
const LINGER_GRACE: Duration = Duration::from_secs(1);
/// How often a lingering session looks at its reply state.
const LINGER_POLL: Duration = Duration::from_millis(5);

/// Relay buffers, reused across sessions; a session holds one only while bytes are flowing.
#[derive(Debug)]
pub(crate) struct BufferPool {
    size: usize,
    max_pooled: usize,
    free: SyncMutex<Vec<Box<[u8]>>>,
}

impl BufferPool {
    pub(crate) fn new(size: usize, max_pooled: usize) -> Self {
        BufferPool {
            size: size.max(HEADER_LEN + 1),
            max_pooled,
            free: SyncMutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Box<[u8]> {
        self.free
            .lock()
            .pop()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }

    fn put(&self, buf: Box<[u8]>) {
        let mut free = self.free.lock();
        if free.len() < self.max_pooled {
            free.push(buf);
        }
    }
}

/// How a session reaches mariadbd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Relays to the local mariadbd and applies every check; `epoch` is set on the RW port.
    Local {
        port: PortKind,
        epoch: Option<MasterEpoch>,
    },
    /// Forwards to another node's proxy, which applies the checks; this side checks nothing.
    Pipe,
}

pub(crate) struct RelayCtx<'a> {
    pub(crate) mode: Mode,
    pub(crate) oracle: &'a dyn RouteOracle,
    pub(crate) ctl: &'a SessionControl,
    pub(crate) registry: &'a Registry,
    pub(crate) pool: &'a BufferPool,
    pub(crate) metrics: &'a PortMetrics,
    pub(crate) limits: &'a ProxyLimits,
    pub(crate) started: Instant,
    /// The proxy's count of RW sessions relayed to the local mariadbd with a command in flight
    /// (`None` for other sessions).
    pub(crate) rw_in_flight: Option<&'a AtomicUsize>,
}

impl RelayCtx<'_> {
    /// Whether this session's OKs that end write transactions are checked against the log:
    /// RW sessions on the master relayed to the local mariadbd (a forwarding proxy relays
    /// what the master's proxy already checked).
    fn commit_checks(&self) -> bool {
        matches!(
            self.mode,
            Mode::Local {
                port: PortKind::Rw,
                epoch: Some(_)
            }
        ) && self.oracle.commit_checks()
    }
}

const PHASE_GREETING: u8 = 0;
const PHASE_AUTH: u8 = 1;
const PHASE_COMMAND: u8 = 2;

/// State both directions of one session read and write (same task; atomics only so that the
/// task is `Send`).
struct Shared {
    phase: AtomicU8,
    /// Sequence id that follows the last chunk seen in either direction (for injected ERRs).
    next_seq: AtomicU8,
    /// Everything written to the client ends at a packet boundary.
    s2c_boundary: AtomicBool,
    /// The client is sending `LOAD DATA LOCAL` file contents.
    local_infile: AtomicBool,
    last_cmd: AtomicU8,
    hello_seen: AtomicBool,
    /// Milliseconds since `started` of the last byte read in either direction.
    last_activity_ms: AtomicU64,
    /// Whether a command is in flight and where its reply is (`reply` states).
    reply: AtomicU8,
    /// Definitions still to come in the reply being followed.
    reply_left: AtomicU64,
    /// Capability flags of the client's handshake response and of the server's greeting
    /// (0 until seen: then `CLIENT_DEPRECATE_EOF` counts as off, which only ever makes the
    /// tracking lose track, never end a reply early).
    client_caps: AtomicU32,
    server_caps: AtomicU32,
    /// The proxy set `CLIENT_SESSION_TRACK` for a client that did not ask for it: session
    /// state is cut out of the OKs it gets.
    strip_state: AtomicBool,
}

impl Shared {
    fn new(phase: u8) -> Self {
        Shared {
            phase: AtomicU8::new(phase),
            next_seq: AtomicU8::new(0),
            s2c_boundary: AtomicBool::new(true),
            local_infile: AtomicBool::new(false),
            last_cmd: AtomicU8::new(0),
            hello_seen: AtomicBool::new(phase == PHASE_COMMAND),
            last_activity_ms: AtomicU64::new(0),
            reply: AtomicU8::new(reply::IDLE),
            reply_left: AtomicU64::new(0),
            client_caps: AtomicU32::new(0),
            server_caps: AtomicU32::new(0),
            strip_state: AtomicBool::new(false),
        }
    }

    fn deprecate_eof(&self) -> bool {
        self.client_caps.load(Relaxed) & self.server_caps.load(Relaxed) & caps::DEPRECATE_EOF != 0
    }

    fn in_flight(&self) -> bool {
        reply::in_flight(self.reply.load(Relaxed))
    }

    /// Moves the reply state, keeping the proxy's in-flight count.
    fn set_reply(&self, counter: Option<&AtomicUsize>, st: u8) {
        let old = self.reply.swap(st, Relaxed);
        if let Some(c) = counter {
            match (reply::in_flight(old), reply::in_flight(st)) {
                (false, true) => {
                    c.fetch_add(1, Relaxed);
                }
                (true, false) => {
                    c.fetch_sub(1, Relaxed);
                }
                _ => {}
            }
        }
        if st == reply::INFILE {
            self.local_infile.store(true, Relaxed);
        }
    }

    /// A new command (sequence id 0) is being forwarded.
    fn command_forwarded(&self, counter: Option<&AtomicUsize>, head: &[u8]) {
        let st = reply::on_command(self.reply.load(Relaxed), head);
        self.set_reply(counter, st);
    }
}

/// A reply the proxy sends instead of forwarding a command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Ok,
    Err(SqlError, String),
}

enum Action {
    Forward,
    /// Forward the packet cut to this many payload bytes (its whole payload is in the head;
    /// the header's length is patched). Used to strip session state a client did not ask for.
    Cut(usize),
    /// Drop the packet; answer with the reply once all of it has been read.
    Skip(Option<Reply>),
    Close(CloseReason),
    /// The forwarding rule failed: wait (bounded) for it, then decide again.
    AwaitLease,
}

/// One direction's packet decisions and output.
trait Direction {
    /// Payload bytes needed before deciding on a chunk (capped at the chunk length).
    fn want(&self, sh: &Shared, len: usize, seq: u8, first: bool) -> usize;
    fn decide(&mut self, sh: &Shared, head: &mut [u8], len: usize, seq: u8, first: bool) -> Action;
    /// Writes relayed bytes; `boundary` says whether they end at a packet boundary.
    fn forward(
        &mut self,
        sh: &Shared,
        bytes: &[u8],
        boundary: bool,
    ) -> impl Future<Output = Result<(), CloseReason>> + Send;
    /// Waits for the forwarding rule to hold again (client direction), or for a held OK's
    /// commit check (server direction); `decide` is then asked again.
    fn await_lease(&mut self, sh: &Shared) -> impl Future<Output = Result<(), CloseReason>> + Send;
    /// Answers the client instead of forwarding (client direction only).
    fn reply(
        &mut self,
        sh: &Shared,
        reply: Reply,
        seq: u8,
    ) -> impl Future<Output = Result<(), CloseReason>> + Send;
}

/// What `Framer::apply` relays of a decided chunk.
enum Relay {
    All,
    Skip,
    /// The first `n` payload bytes (the whole packet is in the head).
    Cut(usize),
}

/// A split-read scratch buffer up to this size is kept between packets (a whole OK packet fits).
const SCRATCH_KEEP: usize = HEADER_LEN + commit_check::OK_MAX + 64;

/// Packet framing state of one direction.
#[derive(Default)]
struct Framer {
    /// Header and inspected payload prefix of a chunk that arrived split across reads.
    head: Vec<u8>,
    /// Payload bytes of the current chunk still to relay (or skip).
    remaining: usize,
    /// The current chunk is MAX_CHUNK long: the next one continues the same packet.
    cont: bool,
    /// The current packet is dropped (refused).
    skipping: bool,
    reply: Option<Reply>,
    /// Sequence id of the current chunk.
    seq: u8,
}

impl Framer {
    fn at_boundary(&self) -> bool {
        self.remaining == 0 && !self.cont
    }

    fn start_chunk(&mut self, len: usize, seq: u8, consumed: usize) {
        self.remaining = len - consumed;
        self.cont = len == MAX_CHUNK;
        self.seq = seq;
    }

    /// Called when the current chunk is fully relayed or skipped.
    async fn chunk_done<D: Direction>(
        &mut self,
        d: &mut D,
        sh: &Shared,
    ) -> Result<(), CloseReason> {
        if self.cont {
            return Ok(());
        }
        self.skipping = false;
        if let Some(reply) = self.reply.take() {
            d.reply(sh, reply, self.seq.wrapping_add(1)).await?;
        }
        Ok(())
    }

    fn apply(
        &mut self,
        action: Action,
        len: usize,
        seq: u8,
        consumed: usize,
    ) -> Result<Relay, CloseReason> {
        match action {
            Action::Forward => {
                self.start_chunk(len, seq, consumed);
                Ok(Relay::All)
            }
            // Only whole packets in the head are cut (`consumed == len`).
            Action::Cut(keep) if keep < consumed && consumed == len && len < MAX_CHUNK => {
                self.start_chunk(len, seq, consumed);
                Ok(Relay::Cut(keep))
            }
            Action::Cut(_) => {
                self.start_chunk(len, seq, consumed);
                Ok(Relay::All)
            }
            Action::Skip(reply) => {
                self.start_chunk(len, seq, consumed);
                self.skipping = true;
                if reply.is_some() {
                    self.reply = reply;
                }
                Ok(Relay::Skip)
            }
            Action::Close(r) => Err(r),
            Action::AwaitLease => Err(CloseReason::LeaseLost),
        }
    }

    fn decide_chunk<D: Direction>(
        &mut self,
        d: &mut D,
        sh: &Shared,
        head: &mut [u8],
        len: usize,
        seq: u8,
    ) -> Action {
        let first = !self.cont;
        sh.next_seq.store(seq.wrapping_add(1), Relaxed);
        if !first && self.skipping {
            return Action::Skip(None);
        }
        d.decide(sh, head, len, seq, first)
    }

    /// Relays one read's worth of bytes.
    async fn feed<D: Direction>(
        &mut self,
        d: &mut D,
        sh: &Shared,
        data: &mut [u8],
    ) -> Result<(), CloseReason> {
        let n = data.len();
        let mut i = 0;
        // Start of the bytes not yet written that are to be forwarded as they are.
        let mut run = 0;
        while i < n {
            if self.remaining > 0 {
                let k = self.remaining.min(n - i);
                if self.skipping {
                    if run < i {
                        d.forward(sh, &data[run..i], !self.cont).await?;
                    }
                    run = i + k;
                }
                i += k;
                self.remaining -= k;
                if self.remaining == 0 {
                    self.chunk_done(d, sh).await?;
                }
                continue;
            }
            // A chunk starts at `i`. Fast path: its header and inspected head are all here.
            if self.head.is_empty() && n - i >= HEADER_LEN {
                let mut hdr = [0u8; HEADER_LEN];
                hdr.copy_from_slice(&data[i..i + HEADER_LEN]);
                let (len, seq) = parse_header(&hdr);
                let want = self.want(d, sh, len, seq);
                if n - i - HEADER_LEN >= want {
                    let body = i + HEADER_LEN;
                    let mut action =
                        self.decide_chunk(d, sh, &mut data[body..body + want], len, seq);
                    while let Action::AwaitLease = action {
                        // What was decided before goes out first (the wait may end the
                        // session, and its error must follow whole packets).
                        if run < i {
                            d.forward(sh, &data[run..i], !self.cont).await?;
                            run = i;
                        }
                        d.await_lease(sh).await?;
                        action = self.decide_chunk(d, sh, &mut data[body..body + want], len, seq);
                    }
                    let boundary = !self.cont;
                    match self.apply(action, len, seq, want) {
                        Ok(Relay::All) => {}
                        Ok(Relay::Skip) => {
                            if run < i {
                                d.forward(sh, &data[run..i], boundary).await?;
                            }
                            run = body + want;
                        }
                        Ok(Relay::Cut(keep)) => {
                            data[i..i + 3].copy_from_slice(&(keep as u32).to_le_bytes()[..3]);
                            d.forward(sh, &data[run..body + keep], true).await?;
                            run = body + want;
                        }
                        Err(r) => {
                            if run < i {
                                d.forward(sh, &data[run..i], boundary).await?;
                            }
                            return Err(r);
                        }
                    }
                    i = body + want;
                    if self.remaining == 0 {
                        self.chunk_done(d, sh).await?;
                    }
                    continue;
                }
            }
            // Slow path: gather the header and head in `self.head`.
            if run < i {
                d.forward(sh, &data[run..i], !self.cont).await?;
            }
            if self.head.len() < HEADER_LEN {
                let k = (HEADER_LEN - self.head.len()).min(n - i);
                self.head.extend_from_slice(&data[i..i + k]);
                i += k;
                run = i;
                if self.head.len() < HEADER_LEN {
                    continue;
                }
            }
            let mut hdr = [0u8; HEADER_LEN];
            hdr.copy_from_slice(&self.head[..HEADER_LEN]);
            let (len, seq) = parse_header(&hdr);
            let want = self.want(d, sh, len, seq);
            let have = self.head.len() - HEADER_LEN;
            if have < want {
                let k = (want - have).min(n - i);
                self.head.extend_from_slice(&data[i..i + k]);
                i += k;
                run = i;
                if self.head.len() - HEADER_LEN < want {
                    continue;
                }
            }
            let mut head = std::mem::take(&mut self.head);
            let mut action = self.decide_chunk(d, sh, &mut head[HEADER_LEN..], len, seq);
            while let Action::AwaitLease = action {
                d.await_lease(sh).await?;
                action = self.decide_chunk(d, sh, &mut head[HEADER_LEN..], len, seq);
            }
            let boundary = !self.cont;
            match self.apply(action, len, seq, want)? {
                Relay::All => {
                    d.forward(sh, &head, boundary && self.remaining == 0 && !self.cont)
                        .await?;
                }
                Relay::Cut(keep) => {
                    head[..3].copy_from_slice(&(keep as u32).to_le_bytes()[..3]);
                    d.forward(sh, &head[..HEADER_LEN + keep], true).await?;
                }
                Relay::Skip => {}
            }
            head.clear();
            // Keep a small scratch buffer; drop a big one so idle sessions stay small.
            if head.capacity() <= SCRATCH_KEEP {
                self.head = head;
            }
            if self.remaining == 0 {
                self.chunk_done(d, sh).await?;
            }
        }
        if run < n {
            d.forward(sh, &data[run..n], self.at_boundary()).await?;
        }
        Ok(())
    }

    fn want<D: Direction>(&self, d: &D, sh: &Shared, len: usize, seq: u8) -> usize {
        let first = !self.cont;
        if !first && self.skipping {
            return 0;
        }
        d.want(sh, len, seq, first).min(len)
    }
}

/// Waits until the session is asked to close.
async fn closed(rx: &mut watch::Receiver<Option<CloseReason>>) -> CloseReason {
    match rx.wait_for(Option::is_some).await {
        Ok(r) => r.unwrap_or(CloseReason::ClientGone),
        // The sender lives as long as the session; treat its loss as a close.
        Err(_) => CloseReason::ClientGone,
    }
}

/// Client → backend.
struct ClientDir<'a> {
    ctx: &'a RelayCtx<'a>,
    backend: OwnedWriteHalf,
    client: &'a Mutex<OwnedWriteHalf>,
    rx: watch::Receiver<Option<CloseReason>>,
}

impl ClientDir<'_> {
    /// Follows what a forwarding session sends (it checks nothing) for its reply state.
    fn follow_forwarded(&self, sh: &Shared, head: &[u8], len: usize, seq: u8) {
        if sh.phase.load(Relaxed) != PHASE_COMMAND {
            if !sh.hello_seen.swap(true, Relaxed) {
                if let Some(c) = head.get(..4) {
                    let c = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    sh.client_caps.store(c, Relaxed);
                }
            } else if seq == 0 {
                // A command sent before the login's OK.
                sh.set_reply(None, reply::UNKNOWN);
            }
            return;
        }
        if sh.local_infile.load(Relaxed) {
            if len == 0 {
                sh.local_infile.store(false, Relaxed);
                sh.set_reply(None, reply::on_infile_end(sh.reply.load(Relaxed)));
            }
            return;
        }
        if seq != 0 {
            return;
        }
        sh.last_cmd
            .store(head.first().copied().unwrap_or(0), Relaxed);
        sh.command_forwarded(None, head);
    }

    fn clear_caps(&self) -> u32 {
        let mut c = caps::COMPRESS;
        if !self.ctx.limits.allow_multi_statements {
            c |= caps::MULTI_STATEMENTS;
        }
        c
    }
}

impl Direction for ClientDir<'_> {
    fn want(&self, sh: &Shared, len: usize, seq: u8, first: bool) -> usize {
        if !first {
            return 0;
        }
        let Mode::Local { .. } = self.ctx.mode else {
            // Forwarding checks nothing, but follows commands and replies (`reply`).
            return if sh.phase.load(Relaxed) != PHASE_COMMAND {
                if sh.hello_seen.load(Relaxed) {
                    0
                } else {
                    4
                }
            } else if sh.local_infile.load(Relaxed) || seq != 0 {
                0
            } else {
                reply::COMMAND_HEAD
            };
        };
        if sh.phase.load(Relaxed) != PHASE_COMMAND {
            if len > HANDSHAKE_MAX_PACKET {
                0
            } else if !sh.hello_seen.load(Relaxed) {
                mysql::HANDSHAKE_RESPONSE_HEAD
            } else if seq == 0 {
                // A command pipelined before the server's OK.
                1 + statement::STATEMENT_HEAD
            } else {
                0
            }
        } else if sh.local_infile.load(Relaxed) || seq != 0 {
            0
        } else {
            1 + statement::STATEMENT_HEAD
        }
    }

    fn decide(&mut self, sh: &Shared, head: &mut [u8], len: usize, seq: u8, first: bool) -> Action {
        let Mode::Local { port, epoch } = self.ctx.mode else {
            if first {
                if seq == 0
                    && sh.phase.load(Relaxed) == PHASE_COMMAND
                    && !sh.local_infile.load(Relaxed)
                {
                    // Closing after a master change: no new command goes out (it is answered
                    // "nothing executed" when nothing else is in flight).
                    if let Some(r) = self.ctx.ctl.lingering() {
                        return Action::Close(r);
                    }
                }
                self.follow_forwarded(sh, head, len, seq);
            }
            return Action::Forward;
        };
        if let Some(epoch) = epoch {
            // The forwarding rule, before each chunk the client sends (DESIGN §3).
            if !self.ctx.oracle.may_forward(epoch) {
                if self.ctx.limits.lease_pause.is_zero() {
                    return Action::Close(CloseReason::LeaseLost);
                }
                return Action::AwaitLease;
            }
        }
        if !first {
            return Action::Forward;
        }
        let mut pipelined = false;
        if sh.phase.load(Relaxed) != PHASE_COMMAND {
            if len > HANDSHAKE_MAX_PACKET || len == MAX_CHUNK {
                return Action::Close(CloseReason::BadHandshake);
            }
            if !sh.hello_seen.swap(true, Relaxed) {
                if seq != 1 {
                    return Action::Close(CloseReason::BadHandshake);
                }
                if let Some(c) = head.get(..4) {
                    let c = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    sh.client_caps.store(c, Relaxed);
                }
                // The commit check needs each commit's GTID in the OK (session tracking of
                // `last_gtid`); a client that did not ask for it gets the state cut out again.
                let mut set_caps = 0;
                let server_tracks = sh.server_caps.load(Relaxed) & caps::SESSION_TRACK != 0;
                let client_tracks = sh.client_caps.load(Relaxed) & caps::SESSION_TRACK != 0;
                if self.ctx.commit_checks() && server_tracks && !client_tracks {
                    set_caps = caps::SESSION_TRACK;
                    sh.strip_state.store(true, Relaxed);
                }
                return match mysql::patch_handshake_response(head, len, self.clear_caps(), set_caps)
                {
                    ClientHello::SslRequest => Action::Close(CloseReason::TlsRequested),
                    ClientHello::Malformed => Action::Close(CloseReason::BadHandshake),
                    ClientHello::Response { user } => {
                        self.ctx.ctl.set_user(user);
                        Action::Forward
                    }
                };
            }
            // Auth exchanges continue at sequence ids 3, 5, ...; a packet numbered 0 is a
            // command sent before the server's OK, which mariadbd would run right after the
            // login: inspect it like any command.
            if seq != 0 {
                return Action::Forward;
            }
            pipelined = true;
        }
        if sh.local_infile.load(Relaxed) {
            // File contents end with an empty packet.
            if len == 0 {
                sh.local_infile.store(false, Relaxed);
                let st = reply::on_infile_end(sh.reply.load(Relaxed));
                sh.set_reply(self.ctx.rw_in_flight, st);
            }
            return Action::Forward;
        }
        if seq != 0 {
            return Action::Forward;
        }
        let cmd = head.first().copied().unwrap_or(0);
        sh.last_cmd.store(cmd, Relaxed);
        if cmd == com::CHANGE_USER {
            // No KILL from or of this session until the server accepts the new user.
            let user = head.get(1..).and_then(|rest| {
                let end = rest.iter().position(|&b| b == 0)?;
                std::str::from_utf8(&rest[..end]).ok().map(str::to_owned)
            });
            self.ctx.ctl.begin_change_user(user);
        }
        match statement::classify(port, head, len, self.ctx.limits) {
            // Before the login's OK the relay cannot follow the reply.
            Verdict::Forward if pipelined => {
                sh.set_reply(self.ctx.rw_in_flight, reply::UNKNOWN);
                Action::Forward
            }
            Verdict::Forward => {
                sh.command_forwarded(self.ctx.rw_in_flight, head);
                Action::Forward
            }
            // No reply can be placed before the server's OK: close instead.
            Verdict::Refuse(_) | Verdict::Kill { .. } if pipelined => {
                self.ctx.metrics.error(ErrorKind::Refused);
                Action::Close(CloseReason::BadHandshake)
            }
            Verdict::Refuse(msg) => {
                self.ctx.metrics.error(ErrorKind::Refused);
                Action::Skip(Some(Reply::Err(mysql::ER_REFUSED, msg)))
            }
            Verdict::Kill { thread_id } => {
                let me = self.ctx.ctl.user();
                let reply = match self.ctx.registry.kill(thread_id, me.as_deref()) {
                    KillOutcome::Killed => Reply::Ok,
                    KillOutcome::NoSuchThread => Reply::Err(
                        mysql::ER_NO_SUCH_THREAD,
                        format!("Unknown thread id: {thread_id} (QuorumSQL proxy)"),
                    ),
                    KillOutcome::NotOwner => Reply::Err(
                        mysql::ER_KILL_DENIED,
                        format!("You are not owner of thread {thread_id} (QuorumSQL proxy)"),
                    ),
                };
                Action::Skip(Some(reply))
            }
        }
    }

    async fn forward(
        &mut self,
        _sh: &Shared,
        bytes: &[u8],
        _boundary: bool,
    ) -> Result<(), CloseReason> {
        tokio::select! {
            r = self.backend.write_all(bytes) => {
                r.map_err(|_| CloseReason::BackendGone)?;
                self.ctx.metrics.bytes_from_clients.fetch_add(bytes.len() as u64, Relaxed);
                Ok(())
            }
            r = closed(&mut self.rx) => Err(r),
        }
    }

    async fn await_lease(&mut self, _sh: &Shared) -> Result<(), CloseReason> {
        let Mode::Local {
            epoch: Some(epoch), ..
        } = self.ctx.mode
        else {
            return Ok(());
        };
        let deadline = Instant::now() + self.ctx.limits.lease_pause;
        loop {
            if self.ctx.oracle.may_forward(epoch) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CloseReason::LeaseLost);
            }
            let wake = deadline.min(now + LEASE_POLL);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                r = closed(&mut self.rx) => return Err(r),
            }
        }
    }

    async fn reply(&mut self, sh: &Shared, reply: Reply, seq: u8) -> Result<(), CloseReason> {
        if let Some(r) = self.ctx.ctl.reason() {
            return Err(r);
        }
        let bytes = match &reply {
            Reply::Ok => mysql::ok_packet(seq),
            Reply::Err(e, msg) => mysql::err_packet(seq, *e, msg),
        };
        let mut w = tokio::select! {
            w = self.client.lock() => w,
            r = closed(&mut self.rx) => return Err(r),
        };
        // The answer must not land inside a server packet being relayed.
        if !sh.s2c_boundary.load(Relaxed) {
            return Err(CloseReason::Desync);
        }
        tokio::select! {
            r = w.write_all(&bytes) => r.map_err(|_| CloseReason::ClientGone),
            r = closed(&mut self.rx) => Err(r),
        }
    }
}

/// Backend → client.
struct ServerDir<'a> {
    ctx: &'a RelayCtx<'a>,
    client: &'a Mutex<OwnedWriteHalf>,
    rx: watch::Receiver<Option<CloseReason>>,
    /// `RelayCtx::commit_checks`, fixed for the session.
    checking: bool,
    commit: CommitTracker,
    /// The last packet of a reply, held until the commit it acknowledges is verified.
    held: Option<Held>,
}

/// A reply's last packet waiting for its commit check.
struct Held {
    evidence: CommitEvidence,
    /// Cut the session state out of it when it goes (see `Shared::strip_state`).
    cut: Option<usize>,
    seq: u8,
    /// The check passed: relay it when `decide` is asked again.
    passed: bool,
}

impl ServerDir<'_> {
    /// Whether the next packet in reply state `st` may be an OK the commit check or the
    /// session-state stripping must read whole.
    fn reads_whole_ok(&self, sh: &Shared, st: u8) -> bool {
        match st {
            reply::FIRST => self.checking || sh.strip_state.load(Relaxed),
            reply::ROWS => sh.deprecate_eof() && (self.checking || sh.strip_state.load(Relaxed)),
            reply::SIMPLE | reply::AUTH => sh.strip_state.load(Relaxed),
            _ => false,
        }
    }

    /// The commit check and the session-state stripping at a server packet of the command
    /// phase; `st` / `next` are the reply states before and after it.
    fn guard(
        &mut self,
        sh: &Shared,
        head: &mut [u8],
        len: usize,
        seq: u8,
        st: u8,
        next: u8,
    ) -> Action {
        let b0 = head.first().copied();
        let result_ok = len < MAX_CHUNK
            && match st {
                reply::FIRST => b0 == Some(0x00),
                reply::ROWS => b0 == Some(0xFE) && sh.deprecate_eof(),
                _ => false,
            };
        let simple_ok =
            len < MAX_CHUNK && matches!(st, reply::SIMPLE | reply::AUTH) && b0 == Some(0x00);
        let mut cut = None;
        if result_ok || simple_ok {
            let view = commit_check::parse_ok(head, len);
            if self.checking && result_ok {
                match &view {
                    Some(v) => self.commit.on_ok(v),
                    None => self.commit.on_unreadable_ok(),
                }
            }
            if let Some(v) = view {
                cut = strip_state(sh, head, &v);
            }
        }
        if self.checking && next == reply::DONE_PENDING {
            if let Some(evidence) = self.commit.take_check() {
                self.held = Some(Held {
                    evidence,
                    cut,
                    seq,
                    passed: false,
                });
                return Action::AwaitLease;
            }
        }
        match cut {
            Some(k) => Action::Cut(k),
            None => Action::Forward,
        }
    }

    /// The relay's own bookkeeping of the first server packet of a command's reply.
    fn follow_command(&self, sh: &Shared, head: &[u8], seq: u8) {
        match sh.last_cmd.load(Relaxed) {
            com::QUERY if seq == 1 && head.first() == Some(&0xFB) => {
                sh.local_infile.store(true, Relaxed);
            }
            com::CHANGE_USER => match head.first() {
                Some(0x00) => {
                    self.ctx.ctl.commit_change_user();
                    sh.last_cmd.store(0, Relaxed);
                }
                Some(0xFF) => sh.last_cmd.store(0, Relaxed),
                _ => {}
            },
            _ => {}
        }
    }
}

impl Direction for ServerDir<'_> {
    fn want(&self, sh: &Shared, _len: usize, seq: u8, first: bool) -> usize {
        if !first {
            return 0;
        }
        match sh.phase.load(Relaxed) {
            PHASE_GREETING => GREETING_HEAD,
            PHASE_AUTH if sh.strip_state.load(Relaxed) => commit_check::OK_MAX,
            PHASE_AUTH => 1,
            _ => {
                let own = match sh.last_cmd.load(Relaxed) {
                    com::QUERY if seq == 1 => 1,
                    com::CHANGE_USER => 1,
                    _ => 0,
                };
                let st = sh.reply.load(Relaxed);
                let whole = if self.reads_whole_ok(sh, st) {
                    commit_check::OK_MAX
                } else {
                    0
                };
                own.max(reply::server_want(st)).max(whole)
            }
        }
    }

    fn decide(&mut self, sh: &Shared, head: &mut [u8], len: usize, seq: u8, first: bool) -> Action {
        if !first {
            return Action::Forward;
        }
        match sh.phase.load(Relaxed) {
            PHASE_GREETING => {
                if head.first() == Some(&0xFF) {
                    // mariadbd refused us (too many connections, host blocked): relay it.
                    return Action::Forward;
                }
                if let Mode::Local { .. } = self.ctx.mode {
                    match mysql::patch_greeting(head, caps::SSL | caps::COMPRESS) {
                        Ok(info) => {
                            self.ctx.ctl.set_thread_id(info.connection_id);
                            sh.server_caps.store(info.capabilities, Relaxed);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "mariadbd sent an unusable greeting");
                            return Action::Close(CloseReason::BackendGone);
                        }
                    }
                } else if let Ok(info) = mysql::patch_greeting(head, 0) {
                    // Read only (nothing cleared): whether EOF packets are deprecated.
                    sh.server_caps.store(info.capabilities, Relaxed);
                }
                sh.phase.store(PHASE_AUTH, Relaxed);
            }
            PHASE_AUTH => {
                if head.first() == Some(&0x00) {
                    sh.phase.store(PHASE_COMMAND, Relaxed);
                    if len < MAX_CHUNK {
                        if let Some(v) = commit_check::parse_ok(head, len) {
                            if let Some(k) = strip_state(sh, head, &v) {
                                return Action::Cut(k);
                            }
                        }
                    }
                }
            }
            _ => {
                if let Some(h) = self.held.take_if(|h| h.passed) {
                    // Asked again after the commit check passed: the state moved already.
                    return h.cut.map_or(Action::Forward, Action::Cut);
                }
                let st = sh.reply.load(Relaxed);
                let mut left = sh.reply_left.load(Relaxed);
                let next = reply::on_server_packet(st, &mut left, head, len, sh.deprecate_eof());
                sh.reply_left.store(left, Relaxed);
                if next != st {
                    sh.set_reply(self.ctx.rw_in_flight, next);
                }
                self.follow_command(sh, head, seq);
                if self.checking || sh.strip_state.load(Relaxed) {
                    return self.guard(sh, head, len, seq, st, next);
                }
            }
        }
        Action::Forward
    }

    async fn forward(
        &mut self,
        sh: &Shared,
        bytes: &[u8],
        boundary: bool,
    ) -> Result<(), CloseReason> {
        let mut w = tokio::select! {
            w = self.client.lock() => w,
            r = closed(&mut self.rx) => return Err(r),
        };
        sh.s2c_boundary.store(false, Relaxed);
        tokio::select! {
            r = w.write_all(bytes) => r.map_err(|_| CloseReason::ClientGone)?,
            r = closed(&mut self.rx) => return Err(r),
        }
        sh.s2c_boundary.store(boundary, Relaxed);
        // The reply's last packet is now with the client: nothing is in flight any more.
        if boundary && sh.reply.load(Relaxed) == reply::DONE_PENDING {
            sh.set_reply(self.ctx.rw_in_flight, reply::IDLE);
        }
        self.ctx
            .metrics
            .bytes_to_clients
            .fetch_add(bytes.len() as u64, Relaxed);
        Ok(())
    }

    /// The commit check of a held OK (see `commit_check`).
    async fn await_lease(&mut self, sh: &Shared) -> Result<(), CloseReason> {
        let Some(held) = self.held.as_mut() else {
            return Ok(());
        };
        let m = self.ctx.metrics;
        let oracle = self.ctx.oracle;
        let verdict = match held.evidence {
            CommitEvidence::Gtid(g) => {
                m.commit_gtid_checks.fetch_add(1, Relaxed);
                if oracle.gtid_logged_now(&g) {
                    CommitVerdict::Logged
                } else {
                    m.commit_gtid_waits.fetch_add(1, Relaxed);
                    tokio::select! {
                        v = oracle.verify_commit(held.evidence) => v,
                        r = closed(&mut self.rx) => return Err(r),
                    }
                }
            }
            CommitEvidence::NoGtid => {
                m.binlog_open_checks.fetch_add(1, Relaxed);
                tokio::select! {
                    v = oracle.verify_commit(held.evidence) => v,
                    r = closed(&mut self.rx) => return Err(r),
                }
            }
        };
        let (reason, why) = match verdict {
            CommitVerdict::Logged => {
                held.passed = true;
                return Ok(());
            }
            CommitVerdict::NotLogged(why) => (CloseReason::UnloggedCommit, why),
            CommitVerdict::Unknown(why) => (CloseReason::CommitUnverified, why),
        };
        tracing::error!(
            evidence = ?held.evidence,
            thread_id = self.ctx.ctl.thread_id(),
            %why,
            "withheld mariadbd's OK for a commit the global binlog does not hold; the client \
             gets \"outcome unknown\""
        );
        // The error takes the place of the withheld packet.
        sh.next_seq.store(held.seq, Relaxed);
        self.held = None;
        Err(reason)
    }

    async fn reply(&mut self, _sh: &Shared, _reply: Reply, _seq: u8) -> Result<(), CloseReason> {
        Ok(())
    }
}

/// For a client that did not negotiate `CLIENT_SESSION_TRACK` (the proxy did, see
/// `Shared::strip_state`): clears `SERVER_SESSION_STATE_CHANGED` in the OK in place and returns
/// the payload length without the session state.
fn strip_state(sh: &Shared, head: &mut [u8], ok: &commit_check::OkView) -> Option<usize> {
    if !sh.strip_state.load(Relaxed)
        || !ok.complete
        || ok.status & commit_check::SESSION_STATE_CHANGED == 0
    {
        return None;
    }
    let status = ok.status & !commit_check::SESSION_STATE_CHANGED;
    head.get_mut(ok.status_at..ok.status_at + 2)?
        .copy_from_slice(&status.to_le_bytes());
    Some(ok.len_without_state)
}

/// Reads from `reader` and feeds the framer until the session closes.
async fn pump<D: Direction>(
    ctx: &RelayCtx<'_>,
    sh: &Shared,
    reader: OwnedReadHalf,
    d: &mut D,
    eof: CloseReason,
) -> CloseReason {
    let mut rx = ctx.ctl.subscribe();
    let mut framer = Framer::default();
    loop {
        if let Some(r) = ctx.ctl.reason() {
            return r;
        }
        tokio::select! {
            r = reader.readable() => {
                if r.is_err() {
                    ctx.ctl.close(eof);
                    continue;
                }
            }
            _ = closed(&mut rx) => continue,
        }
        let mut buf = ctx.pool.take();
        let res = loop {
            match reader.try_read(&mut buf) {
                Ok(0) => break Err(eof),
                Ok(n) => {
                    let ms = ctx.started.elapsed().as_millis() as u64;
                    sh.last_activity_ms.store(ms, Relaxed);
                    if let Err(r) = framer.feed(d, sh, &mut buf[..n]).await {
                        break Err(r);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(_) => break Err(eof),
            }
        };
        ctx.pool.put(buf);
        if let Err(r) = res {
            ctx.ctl.close(r);
        }
    }
}

/// Closes the session on the handshake and idle timeouts.
async fn watchdog(ctx: &RelayCtx<'_>, sh: &Shared) {
    let mut rx = ctx.ctl.subscribe();
    let mut linger_rx = ctx.ctl.subscribe_linger();
    loop {
        if ctx.ctl.reason().is_some() {
            return;
        }
        let now = Instant::now();
        let idle_at = ctx.started
            + Duration::from_millis(sh.last_activity_ms.load(Relaxed))
            + ctx.limits.idle_timeout;
        let mut deadline = idle_at;
        if sh.phase.load(Relaxed) != PHASE_COMMAND {
            let hs = ctx.started + ctx.limits.handshake_timeout;
            if now >= hs {
                ctx.ctl.close(CloseReason::HandshakeTimeout);
                return;
            }
            deadline = deadline.min(hs);
        }
        if now >= idle_at {
            ctx.ctl.close(CloseReason::IdleTimeout);
            return;
        }
        let lingering = tokio::select! {
            _ = closed(&mut rx) => return,
            _ = tokio::time::sleep_until(deadline) => None,
            r = linger_rx.wait_for(Option::is_some) => {
                Some(r.ok().and_then(|r| *r).unwrap_or(CloseReason::ClientGone))
            }
        };
        if let Some(reason) = lingering {
            return linger(ctx, sh, reason, &mut rx).await;
        }
    }
}

/// Closes the session with `reason` as soon as no command is in flight, or after the grace.
async fn linger(
    ctx: &RelayCtx<'_>,
    sh: &Shared,
    reason: CloseReason,
    rx: &mut watch::Receiver<Option<CloseReason>>,
) {
    let deadline = Instant::now() + ctx.limits.lease_pause + LINGER_GRACE;
    loop {
        if !sh.in_flight() || Instant::now() >= deadline {
            ctx.ctl.close(reason);
            return;
        }
        tokio::select! {
            _ = closed(rx) => return,
            _ = tokio::time::sleep(LINGER_POLL) => {}
        }
    }
}

/// Relays between `client` and `backend` (mariadbd with the PROXY header already written, or
/// another node's proxy) until either side closes or the session is asked to; returns why it
/// ended. An error the client should see is written between two server packets; if that is not
/// possible (mid-packet), the connection is just closed.
pub(crate) async fn relay(
    ctx: &RelayCtx<'_>,
    client: TcpStream,
    backend: TcpStream,
) -> CloseReason {
    let (cr, cw) = client.into_split();
    let (br, bw) = backend.into_split();
    let cw = Mutex::new(cw);
    let sh = Shared::new(PHASE_GREETING);
    let mut cdir = ClientDir {
        ctx,
        backend: bw,
        client: &cw,
        rx: ctx.ctl.subscribe(),
    };
    let mut sdir = ServerDir {
        ctx,
        client: &cw,
        rx: ctx.ctl.subscribe(),
        checking: ctx.commit_checks(),
        commit: CommitTracker::default(),
        held: None,
    };
    let c2s = pump(ctx, &sh, cr, &mut cdir, CloseReason::ClientGone);
    let s2c = pump(ctx, &sh, br, &mut sdir, CloseReason::BackendGone);
    let (reason, _, ()) = tokio::join!(c2s, s2c, watchdog(ctx, &sh));
    drop(cdir);
    drop(sdir);
    let mut w = cw.into_inner();
    if let Some(kind) = reason.metric() {
        ctx.metrics.error(kind);
    }
    let in_flight = sh.in_flight();
    if in_flight {
        if let Some(c) = ctx.rw_in_flight {
            c.fetch_sub(1, Relaxed);
        }
    }
    if let Some((err, msg)) = reason.error(in_flight) {
        if sh.s2c_boundary.load(Relaxed) {
            let pkt = mysql::err_packet(sh.next_seq.load(Relaxed), err, msg);
            let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, w.write_all(&pkt)).await;
        }
    }
    let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, w.shutdown()).await;
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forwards everything except packets whose payload starts with `X` (answered with OK), and
    /// upper-cases a leading `p` in place, recording what it writes.
    #[derive(Default)]
    struct RecordingDir {
        out: Vec<u8>,
        replies: Vec<(Reply, u8)>,
        decisions: usize,
    }

    impl Direction for RecordingDir {
        fn want(&self, _sh: &Shared, _len: usize, _seq: u8, first: bool) -> usize {
            if first {
                8
            } else {
                0
            }
        }

        fn decide(
            &mut self,
            _sh: &Shared,
            head: &mut [u8],
            _l: usize,
            _s: u8,
            first: bool,
        ) -> Action {
            self.decisions += 1;
            if !first {
                return Action::Forward;
            }
            match head.first() {
                Some(b'X') => Action::Skip(Some(Reply::Ok)),
                Some(b'p') => {
                    head[0] = b'P';
                    Action::Forward
                }
                _ => Action::Forward,
            }
        }

        async fn forward(
            &mut self,
            _sh: &Shared,
            bytes: &[u8],
            _b: bool,
        ) -> Result<(), CloseReason> {
            self.out.extend_from_slice(bytes);
            Ok(())
        }

        async fn await_lease(&mut self, _sh: &Shared) -> Result<(), CloseReason> {
            Ok(())
        }

        async fn reply(&mut self, _sh: &Shared, reply: Reply, seq: u8) -> Result<(), CloseReason> {
            self.replies.push((reply, seq));
            Ok(())
        }
    }

    fn shared() -> Shared {
        Shared::new(PHASE_COMMAND)
    }

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        v.push(seq);
        v.extend_from_slice(payload);
        v
    }

    fn run(stream: &[u8], splits: &mut impl FnMut() -> usize) -> RecordingDir {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let sh = shared();
            let mut d = RecordingDir::default();
            let mut f = Framer::default();
            let mut data = stream.to_vec();
            let mut at = 0;
            while at < data.len() {
                let n = splits().min(data.len() - at).max(1);
                f.feed(&mut d, &sh, &mut data[at..at + n]).await.unwrap();
                at += n;
            }
            assert!(f.at_boundary());
            d
        })
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_relay() {
        let payloads: Vec<Vec<u8>> = vec![
            b"select 1".to_vec(),
            b"".to_vec(),
            b"X refused".to_vec(),
            b"pq".to_vec(),
            b"X".to_vec(),
            vec![b'z'; 3000],
            b"p".to_vec(),
        ];
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let pkt = packet(i as u8, p);
            stream.extend_from_slice(&pkt);
            if p.first() != Some(&b'X') {
                let mut e = pkt.clone();
                if p.first() == Some(&b'p') {
                    e[4] = b'P';
                }
                expected.extend_from_slice(&e);
            }
        }
        let mut seed = 0x1234_5678_9ABC_DEF1u64;
        for round in 0..300 {
            let max = [1usize, 2, 3, 5, 7, 64, 5000][round % 7];
            let d = run(&stream, &mut || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed as usize % max) + 1
            });
            assert_eq!(d.out, expected, "round {round}");
            assert_eq!(d.replies, vec![(Reply::Ok, 3), (Reply::Ok, 5)]);
        }
    }

    #[test]
    fn continued_packets_are_decided_once_and_skipped_whole() {
        // A refused payload of exactly MAX_CHUNK bytes is followed by an empty continuation.
        let mut big = vec![b'y'; MAX_CHUNK];
        big[0] = b'X';
        let mut stream = packet(0, &big);
        stream.extend_from_slice(&packet(1, b""));
        stream.extend_from_slice(&packet(0, b"after"));
        let d = run(&stream, &mut || 1 << 16);
        assert_eq!(d.out, packet(0, b"after"));
        assert_eq!(d.replies, vec![(Reply::Ok, 2)]);
        // Forwarded: every chunk (and its continuation) goes through unchanged.
        let mut big = vec![b'y'; MAX_CHUNK + 10];
        big[0] = b'a';
        let mut stream = packet(0, &big[..MAX_CHUNK]);
        stream.extend_from_slice(&packet(1, &big[MAX_CHUNK..]));
        let d = run(&stream, &mut || 70_000);
        assert_eq!(d.out, stream);
        // One decision per chunk: the first decides, the continuation is asked only for the
        // lease check.
        assert_eq!(d.decisions, 2);
    }
}
