//! The alarm the proxy raises when mariadbd answered OK to a commit that the global binlog never
//! accepted, or that wrote no binlog event at all (design-review 2: after a failed binlog
//! rotation MariaDB "turns logging off" and acknowledges commits with no event and no semi-sync
//! wait). Such a master must not serve one more statement: roles fences it at once and marks it
//! diverged, because its InnoDB now holds commits that no log entry carries and no GTID-based
//! rejoin check can see.

use tokio::sync::watch;

/// Shared by the proxy (raises) and roles (fences). Cloning shares the same alarm.
#[derive(Debug, Clone)]
pub struct CommitAlarm {
    tx: watch::Sender<Option<String>>,
}

impl Default for CommitAlarm {
    fn default() -> Self {
        CommitAlarm {
            tx: watch::channel(None).0,
        }
    }
}

impl CommitAlarm {
    /// Raises the alarm with what was seen; the first reason is kept.
    pub fn raise(&self, reason: String) {
        self.tx.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Why the alarm is raised, if it is.
    pub fn raised(&self) -> Option<String> {
        self.tx.borrow().clone()
    }

    /// Wakes on every raise (and reset).
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.tx.subscribe()
    }

    /// Cleared when a new mariadbd becomes master.
    pub fn reset(&self) {
        self.tx.send_replace(None);
    }
}

#[cfg(test)]
mod tests {
    use super::CommitAlarm;

    #[test]
    fn the_first_reason_is_kept_until_reset() {
        let a = CommitAlarm::default();
        let b = a.clone();
        assert_eq!(a.raised(), None);
        b.raise("first".into());
        a.raise("second".into());
        assert_eq!(a.raised().as_deref(), Some("first"));
        a.reset();
        assert_eq!(b.raised(), None);
    }
}
