//! The table of open sessions: closes them on a master change, at shutdown, and for `KILL n`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::metrics::ErrorKind;
use super::mysql::{self, SqlError};
use super::PortKind;

/// Why a session ends; the ones with an error tell the client before the socket closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    ClientGone,
    BackendGone,
    MasterChanged,
    LeaseLost,
    Killed,
    IdleTimeout,
    HandshakeTimeout,
    BadHandshake,
    TlsRequested,
    /// A reply could not be placed between two server packets.
    Desync,
    Shutdown,
    /// Closed by the node (e.g. RO sessions at promotion).
    ClosedByNode,
    /// mariadbd answered OK to a commit the global binlog does not hold; the OK was withheld.
    UnloggedCommit,
    /// Whether a commit is in the global binlog could not be verified; the OK was withheld.
    CommitUnverified,
}

impl CloseReason {
    /// The error the client gets, if any. `in_flight` says whether the session had a command
    /// forwarded towards mariadbd whose reply was not fully relayed (see `reply`): only then
    /// may a master change, a lost lease or a shutdown have cut a COMMIT ("outcome unknown",
    /// 08007); otherwise nothing of the session was executed since its last answer and the
    /// client may simply reconnect and retry (08S01).
    pub(crate) fn error(self, in_flight: bool) -> Option<(SqlError, &'static str)> {
        Some(match self {
            CloseReason::ClientGone | CloseReason::BackendGone | CloseReason::Desync => {
                return None
            }
            CloseReason::MasterChanged if !in_flight => (
                mysql::ER_NO_MASTER,
                "QuorumSQL: the master changed; this connection is closed while no statement \
                 was in flight: nothing was executed since the last answer; reconnect and retry",
            ),
            CloseReason::MasterChanged => (
                mysql::ER_OUTCOME_UNKNOWN,
                "QuorumSQL: the master changed; this connection is closed and a statement in \
                 flight (a COMMIT in particular) has an unknown outcome: check before retrying",
            ),
            CloseReason::LeaseLost if !in_flight => (
                mysql::ER_NO_MASTER,
                "QuorumSQL: this node may not forward to its mariadbd now (lease lost or master \
                 changing); your statement was not executed (it never reached mariadbd); \
                 reconnect and retry",
            ),
            CloseReason::LeaseLost => (
                mysql::ER_OUTCOME_UNKNOWN,
                "QuorumSQL: this node is no longer sure it is the master (lease lost); the \
                 connection is closed, your last statement was not sent, and a statement still \
                 in flight (a COMMIT in particular) has an unknown outcome; reconnect and check",
            ),
            CloseReason::Killed => (
                mysql::ER_CONNECTION_KILLED,
                "QuorumSQL: connection killed by KILL through the proxy; a statement in flight \
                 (a COMMIT in particular) has an unknown outcome",
            ),
            CloseReason::IdleTimeout => (
                mysql::ER_IDLE,
                "QuorumSQL: connection closed after the proxy's idle timeout",
            ),
            CloseReason::HandshakeTimeout => (
                mysql::ER_HANDSHAKE,
                "QuorumSQL: handshake not completed within the proxy's handshake timeout",
            ),
            CloseReason::BadHandshake => (
                mysql::ER_HANDSHAKE,
                "QuorumSQL: bad handshake (not a MySQL protocol 4.1 handshake response)",
            ),
            CloseReason::TlsRequested => (
                mysql::ER_HANDSHAKE,
                "QuorumSQL: TLS is not supported by the proxy yet; connect without SSL \
                 (e.g. --ssl=0 / sslMode=DISABLED) or through a TLS-terminating tunnel",
            ),
            CloseReason::Shutdown if !in_flight => (
                mysql::ER_NO_MASTER,
                "QuorumSQL: this node is shutting down; no statement was in flight (nothing was \
                 executed since the last answer); reconnect and retry",
            ),
            CloseReason::Shutdown => (
                mysql::ER_OUTCOME_UNKNOWN,
                "QuorumSQL: this node is shutting down; a statement in flight has an unknown \
                 outcome",
            ),
            CloseReason::ClosedByNode => (
                mysql::ER_NO_MASTER,
                "QuorumSQL: this node's role changed and it closed the session; reconnect",
            ),
            CloseReason::UnloggedCommit => (
                mysql::ER_OUTCOME_UNKNOWN,
                "QuorumSQL: the database reported your commit done but the replicated log does \
                 not hold it (binary logging failed on the master); the master is being fenced \
                 and the outcome of your transaction is unknown: reconnect and check",
            ),
            CloseReason::CommitUnverified => (
                mysql::ER_OUTCOME_UNKNOWN,
                "QuorumSQL: the proxy could not verify that your commit reached the replicated \
                 log; the outcome of your transaction is unknown: reconnect and check",
            ),
        })
    }

    pub(crate) fn metric(self) -> Option<ErrorKind> {
        Some(match self {
            CloseReason::ClientGone | CloseReason::BackendGone | CloseReason::ClosedByNode => {
                return None
            }
            CloseReason::MasterChanged => ErrorKind::MasterChanged,
            CloseReason::LeaseLost => ErrorKind::LeaseLost,
            CloseReason::Killed => ErrorKind::Killed,
            CloseReason::IdleTimeout => ErrorKind::IdleTimeout,
            CloseReason::HandshakeTimeout => ErrorKind::HandshakeTimeout,
            CloseReason::BadHandshake => ErrorKind::BadHandshake,
            CloseReason::TlsRequested => ErrorKind::TlsRequested,
            CloseReason::Desync | CloseReason::Shutdown => ErrorKind::Io,
            CloseReason::UnloggedCommit => ErrorKind::UnloggedCommit,
            CloseReason::CommitUnverified => ErrorKind::CommitUnverified,
        })
    }
}

/// A session as others see it: enough to close it and to answer `KILL`.
#[derive(Debug)]
pub(crate) struct SessionControl {
    pub(crate) port: PortKind,
    /// Relays to the local mariadbd (as opposed to forwarding to another node's proxy).
    pub(crate) local: bool,
    /// Master-change generation the session was opened under (RW sessions only).
    pub(crate) generation: Option<u64>,
    /// mariadbd's thread id from the greeting; 0 until known.
    thread_id: AtomicU32,
    /// The user of the handshake response; `None` when unknown or after `COM_CHANGE_USER`.
    user: Mutex<Option<String>>,
    /// The user a `COM_CHANGE_USER` in flight asks for; becomes `user` on the server's OK.
    pending_user: Mutex<Option<String>>,
    close_tx: watch::Sender<Option<CloseReason>>,
    /// Close once no command is in flight (or after a grace): asked of forwarding sessions on
    /// a master change, so that the master's proxy, which knows whether the command reached
    /// mariadbd, answers first.
    linger_tx: watch::Sender<Option<CloseReason>>,
    /// `linger_tx` holds a reason (read per client command, so an atomic).
    lingering: AtomicBool,
}

impl SessionControl {
    pub(crate) fn new(port: PortKind, local: bool, generation: Option<u64>) -> Self {
        SessionControl {
            port,
            local,
            generation,
            thread_id: AtomicU32::new(0),
            user: Mutex::new(None),
            pending_user: Mutex::new(None),
            close_tx: watch::channel(None).0,
            linger_tx: watch::channel(None).0,
            lingering: AtomicBool::new(false),
        }
    }

    /// Asks the session to close; the first reason wins. Returns whether this call set it.
    pub(crate) fn close(&self, reason: CloseReason) -> bool {
        self.close_tx.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        })
    }

    pub(crate) fn reason(&self) -> Option<CloseReason> {
        *self.close_tx.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<CloseReason>> {
        self.close_tx.subscribe()
    }

    /// Asks the session to close with `reason` once its command in flight has been answered
    /// (bounded by the relay's grace). Returns whether this call asked first.
    pub(crate) fn close_when_idle(&self, reason: CloseReason) -> bool {
        self.lingering.store(true, Ordering::Relaxed);
        self.linger_tx.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        })
    }

    /// Whether the session was asked to close once idle: it starts no new command.
    pub(crate) fn lingering(&self) -> Option<CloseReason> {
        if self.lingering.load(Ordering::Relaxed) {
            *self.linger_tx.borrow()
        } else {
            None
        }
    }

    pub(crate) fn subscribe_linger(&self) -> watch::Receiver<Option<CloseReason>> {
        self.linger_tx.subscribe()
    }

    pub(crate) fn set_thread_id(&self, id: u32) {
        self.thread_id.store(id, Ordering::Relaxed);
    }

    pub(crate) fn thread_id(&self) -> u32 {
        self.thread_id.load(Ordering::Relaxed)
    }

    pub(crate) fn set_user(&self, user: Option<String>) {
        *self.user.lock() = user;
    }

    /// `COM_CHANGE_USER` sent: the identity is unknown until the server answers.
    pub(crate) fn begin_change_user(&self, user: Option<String>) {
        *self.user.lock() = None;
        *self.pending_user.lock() = user;
    }

    /// The server accepted the `COM_CHANGE_USER`.
    pub(crate) fn commit_change_user(&self) {
        let pending = self.pending_user.lock().take();
        *self.user.lock() = pending;
    }

    pub(crate) fn user(&self) -> Option<String> {
        self.user.lock().clone()
    }
}

/// Result of `KILL n` through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillOutcome {
    Killed,
    NoSuchThread,
    NotOwner,
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    next_id: AtomicU64,
    sessions: Mutex<HashMap<u64, Arc<SessionControl>>>,
}

/// Removes the session from the registry when dropped.
pub(crate) struct Registration<'a> {
    registry: &'a Registry,
    id: u64,
    pub(crate) ctl: Arc<SessionControl>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.sessions.lock().remove(&self.id);
    }
}

impl Registry {
    pub(crate) fn register(&self, ctl: SessionControl) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ctl = Arc::new(ctl);
        self.sessions.lock().insert(id, ctl.clone());
        Registration {
            registry: self,
            id,
            ctl,
        }
    }

    /// Closes every session matching `pred`; returns how many were asked to close.
    pub(crate) fn close_where(
        &self,
        reason: CloseReason,
        pred: impl Fn(&SessionControl) -> bool,
    ) -> usize {
        let targets: Vec<Arc<SessionControl>> = self
            .sessions
            .lock()
            .values()
            .filter(|s| pred(s))
            .cloned()
            .collect();
        targets.iter().filter(|s| s.close(reason)).count()
    }

    /// Like [`Registry::close_where`], but sessions forwarded to another node's proxy close
    /// only once their command in flight has been answered (see
    /// [`SessionControl::close_when_idle`]).
    pub(crate) fn close_or_linger_where(
        &self,
        reason: CloseReason,
        pred: impl Fn(&SessionControl) -> bool,
    ) -> usize {
        let targets: Vec<Arc<SessionControl>> = self
            .sessions
            .lock()
            .values()
            .filter(|s| pred(s))
            .cloned()
            .collect();
        targets
            .iter()
            .filter(|s| {
                if s.local {
                    s.close(reason)
                } else {
                    s.close_when_idle(reason)
                }
            })
            .count()
    }

    /// `KILL [QUERY] n`: closes the backend connection of the local RW session whose mariadbd
    /// thread id is `n`, if `requester` is the same user (mariadbd's own rule for users without
    /// CONNECTION ADMIN). The proxy never lets mariadbd run the KILL: killing a session that
    /// waits for its semi-sync ACK would commit it locally and tell its client "OK" although the
    /// cluster never accepted it (design-review 1). Closing the connection leaves the waiting
    /// commit prepared, and its client learns the outcome is unknown. `KILL QUERY` is treated
    /// like `KILL CONNECTION` for the same reason.
    pub(crate) fn kill(&self, thread_id: u64, requester: Option<&str>) -> KillOutcome {
        let target = self
            .sessions
            .lock()
            .values()
            .find(|s| {
                s.local
                    && s.port == PortKind::Rw
                    && s.thread_id() != 0
                    && u64::from(s.thread_id()) == thread_id
                    && s.reason().is_none()
            })
            .cloned();
        let Some(target) = target else {
            return KillOutcome::NoSuchThread;
        };
        match (requester, target.user()) {
            (Some(r), Some(t)) if r == t => {
                target.close(CloseReason::Killed);
                KillOutcome::Killed
            }
            _ => KillOutcome::NotOwner,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_needs_the_same_user_and_a_local_rw_session() {
        let reg = Registry::default();
        let a = reg.register(SessionControl::new(PortKind::Rw, true, Some(1)));
        a.ctl.set_thread_id(42);
        a.ctl.set_user(Some("app".into()));
        let fwd = reg.register(SessionControl::new(PortKind::Rw, false, Some(1)));
        fwd.ctl.set_thread_id(43);
        fwd.ctl.set_user(Some("app".into()));
        assert_eq!(reg.kill(43, Some("app")), KillOutcome::NoSuchThread);
        assert_eq!(reg.kill(42, Some("other")), KillOutcome::NotOwner);
        assert_eq!(reg.kill(42, None), KillOutcome::NotOwner);
        assert_eq!(a.ctl.reason(), None);
        assert_eq!(reg.kill(42, Some("app")), KillOutcome::Killed);
        assert_eq!(a.ctl.reason(), Some(CloseReason::Killed));
        // The first reason wins.
        assert!(!a.ctl.close(CloseReason::MasterChanged));
        assert_eq!(reg.kill(42, Some("app")), KillOutcome::NoSuchThread);
        drop(a);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn close_where_selects_by_generation() {
        let reg = Registry::default();
        let old = reg.register(SessionControl::new(PortKind::Rw, true, Some(1)));
        let new = reg.register(SessionControl::new(PortKind::Rw, false, Some(2)));
        let ro = reg.register(SessionControl::new(PortKind::Ro, true, None));
        let n = reg.close_where(CloseReason::MasterChanged, |s| {
            s.generation.is_some_and(|g| g < 2)
        });
        assert_eq!(n, 1);
        assert_eq!(old.ctl.reason(), Some(CloseReason::MasterChanged));
        assert_eq!(new.ctl.reason(), None);
        assert_eq!(ro.ctl.reason(), None);
    }
}
