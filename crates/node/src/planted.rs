//! Planted bugs, for the chaos harness's tests of itself: a binary built with the
//! `planted-bugs` feature and run with `QUORUMSQL_PLANTED_BUG=<name>` breaks one guarantee on
//! purpose, and the harness must report anomalies or losses. Without the feature, [`active`] is
//! a constant `false` and the bug paths compile away; release builds never enable it.

/// The bugs that can be planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The proxy forwards client packets without checking the lease or the master epoch.
    SkipLease,
    /// Capture ACKs a transaction before the log has accepted it.
    EarlyAck,
}

impl Bug {
    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipLease => "skip-lease",
            Bug::EarlyAck => "early-ack",
        }
    }
}

/// Whether `bug` is planted in this process.
#[cfg(feature = "planted-bugs")]
pub fn active(bug: Bug) -> bool {
    static PLANTED: std::sync::OnceLock<Option<Bug>> = std::sync::OnceLock::new();
    *PLANTED.get_or_init(|| {
        let name = std::env::var("QUORUMSQL_PLANTED_BUG").ok()?;
        let found = [Bug::SkipLease, Bug::EarlyAck]
            .into_iter()
            .find(|b| b.name() == name);
        if let Some(b) = found {
            tracing::error!(
                bug = b.name(),
                "PLANTED BUG ACTIVE: this node breaks its guarantees on purpose (test build)"
            );
        }
        found
    }) == Some(bug)
}

/// Whether `bug` is planted in this process: never, without the `planted-bugs` feature.
#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub fn active(_bug: Bug) -> bool {
    false
}
