//! The checkers that judge a recorded history, and the report they produce.
//!
//! Each workload has its own checker; [`check`] routes every op to the checker it concerns
//! (by the shape of its [`Call`]) and merges what they find into one [`CheckReport`].
//!
//! ```text
//! register      linearizability of the RW-port registers (Wing–Gong–Lowe search), phantom RO reads
//! bank          every balance read sees all accounts, no overdraft, the conserved total
//! set           acknowledged adds survive; reads show nothing that was never (or definitely not) added
//! list_append   Elle-style dependency graph of list-append transactions: G0/G1a/G1b/G1c/G2, lost appends
//! ```

use crate::history::{Call, Initial, Op, Outcome};
use serde::{Deserialize, Serialize};
use std::fmt;

pub mod bank;
pub mod list_append;
pub mod register;
pub mod set;

/// Which checker found an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Checker {
    Register,
    Bank,
    Set,
    ListAppend,
}

impl fmt::Display for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Checker::Register => "register",
            Checker::Bank => "bank",
            Checker::Set => "set",
            Checker::ListAppend => "list-append",
        })
    }
}

/// One thing a checker could not reconcile with the guarantees of the port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub checker: Checker,
    /// Short machine-friendly name: "nonlinearizable", "undecided", "phantom-read",
    /// "total-changed", "lost-add", "G1c", "G2-realtime", "aborted-read", "duplicate", ...
    pub kind: String,
    /// What was seen, naming keys, values and op ids.
    pub message: String,
    /// The ops involved (the harness marks them in the picture).
    pub op_ids: Vec<u64>,
}

impl Anomaly {
    pub(crate) fn new(
        checker: Checker,
        kind: impl Into<String>,
        message: impl Into<String>,
        op_ids: Vec<u64>,
    ) -> Self {
        Anomaly {
            checker,
            kind: kind.into(),
            message: message.into(),
            op_ids,
        }
    }
}

/// Knobs of the checkers. `Default` suits a chaos run of a few minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Steps the linearizability search may take per register key before the key is
    /// reported undecided. The search is exponential in the number of ops concurrent on one
    /// key: measured on 3000-op single-key histories, 10 concurrent clients take ~0.2M steps
    /// (40 ms), 20 take ~12M, 25 take ~31M (2 s), 30 exceed 200M. Keep per-key concurrency
    /// around 10 (spread clients over keys); 20M steps is a few seconds per key at worst.
    pub register_search_budget: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            register_search_budget: 20_000_000,
        }
    }
}

/// Counts that say what was actually checked (a run that checked nothing must not look green).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStats {
    pub ops: u64,
    pub ok: u64,
    pub fail: u64,
    pub unknown: u64,
    pub register: register::RegisterStats,
    pub bank: bank::BankStats,
    pub set: set::SetStats,
    pub list_append: list_append::ListAppendStats,
}

/// Everything the checkers found in one history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub anomalies: Vec<Anomaly>,
    /// Acknowledged writes that a later read proves gone (set adds and list appends).
    pub lost: u64,
    pub stats: CheckStats,
}

/// How many anomaly lines [`CheckReport::summary`] prints before eliding the rest.
const SUMMARY_MAX_LINES: usize = 50;

impl CheckReport {
    /// True when no checker found anything (undecided register keys count as findings).
    pub fn is_valid(&self) -> bool {
        self.anomalies.is_empty() && self.lost == 0
    }

    /// A human summary: one headline, then one line per anomaly (capped).
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let mut out = format!(
            "{} ops ({} ok, {} fail, {} unknown): {} anomalies, {} lost; register {} keys/{} ops \
             ({} undecided), bank {} reads, set {} reads/{} adds, list-append {} txns\n",
            s.ops,
            s.ok,
            s.fail,
            s.unknown,
            self.anomalies.len(),
            self.lost,
            s.register.keys_checked,
            s.register.ops_checked,
            s.register.undecided_keys.len(),
            s.bank.reads_checked,
            s.set.reads_checked,
            s.set.adds_ok + s.set.adds_unknown + s.set.adds_fail,
            s.list_append.txns_in_graph,
        );
        for a in self.anomalies.iter().take(SUMMARY_MAX_LINES) {
            out.push_str(&format!("[{}] {}: {}\n", a.checker, a.kind, a.message));
        }
        if self.anomalies.len() > SUMMARY_MAX_LINES {
            out.push_str(&format!(
                "... and {} more anomalies\n",
                self.anomalies.len() - SUMMARY_MAX_LINES
            ));
        }
        out
    }
}

/// Runs every checker on the ops it concerns, with default options.
pub fn check(history: &[Op], initial: &Initial) -> CheckReport {
    check_with(history, initial, &CheckOptions::default())
}

/// Runs every checker on the ops it concerns.
pub fn check_with(history: &[Op], initial: &Initial, options: &CheckOptions) -> CheckReport {
    let mut report = CheckReport::default();
    let mut register_ops = Vec::new();
    let mut bank_ops = Vec::new();
    let mut set_ops = Vec::new();
    let mut list_ops = Vec::new();
    for op in history {
        report.stats.ops += 1;
        match op.outcome {
            Outcome::Ok => report.stats.ok += 1,
            Outcome::Fail => report.stats.fail += 1,
            Outcome::Unknown => report.stats.unknown += 1,
        }
        match op.call {
            Call::RegRead { .. } | Call::RegWrite { .. } | Call::RegCas { .. } => {
                register_ops.push(op)
            }
            Call::BankTransfer { .. } | Call::BankRead { .. } => bank_ops.push(op),
            Call::SetAdd { .. } | Call::SetRead { .. } => set_ops.push(op),
            Call::ListTxn { .. } => list_ops.push(op),
        }
    }
    let anomalies = &mut report.anomalies;
    report.stats.register = register::check(
        &register_ops,
        initial,
        options.register_search_budget,
        anomalies,
    );
    report.stats.bank = bank::check(&bank_ops, initial, anomalies);
    report.stats.set = set::check(&set_ops, anomalies);
    report.stats.list_append = list_append::check(&list_ops, anomalies);
    report.lost = report.stats.set.lost + report.stats.list_append.lost;
    report
}

/// Formats at most `max` ids as `#1, #2, ... (+n more)` for messages.
pub(crate) fn fmt_ids(ids: impl IntoIterator<Item = u64>, max: usize) -> String {
    let mut out = String::new();
    let mut extra = 0usize;
    for (i, id) in ids.into_iter().enumerate() {
        if i >= max {
            extra += 1;
            continue;
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&format!("#{id}"));
    }
    if extra > 0 {
        out.push_str(&format!(" (+{extra} more)"));
    }
    out
}

#[cfg(test)]
pub(crate) mod testutil {
    use crate::history::{Call, Initial, Op, Outcome, Port};

    pub fn op(id: u64, port: Port, start_ns: u64, end_ns: u64, outcome: Outcome, call: Call) -> Op {
        Op {
            id,
            client: id as u32,
            node: 1,
            port,
            start_ns,
            end_ns,
            outcome,
            error: None,
            call,
        }
    }

    pub fn initial() -> Initial {
        Initial {
            register_keys: 4,
            bank_accounts: 3,
            bank_initial_balance: 100,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::history::{MicroOp, Port};

    #[test]
    fn a_clean_mixed_history_passes_and_counts_what_it_checked() {
        let h = vec![
            op(
                1,
                Port::Rw,
                0,
                10,
                Outcome::Ok,
                Call::RegWrite { key: 0, value: 5 },
            ),
            op(
                2,
                Port::Rw,
                20,
                30,
                Outcome::Ok,
                Call::RegRead {
                    key: 0,
                    value: Some(5),
                },
            ),
            op(
                3,
                Port::Ro,
                0,
                10,
                Outcome::Ok,
                Call::BankRead {
                    balances: Some(vec![(0, 100), (1, 100), (2, 100)]),
                },
            ),
            op(4, Port::Rw, 0, 10, Outcome::Ok, Call::SetAdd { value: 1 }),
            op(
                5,
                Port::Rw,
                20,
                30,
                Outcome::Ok,
                Call::SetRead {
                    values: Some(vec![1]),
                },
            ),
            op(
                6,
                Port::Rw,
                0,
                10,
                Outcome::Ok,
                Call::ListTxn {
                    ops: vec![MicroOp::Append { key: 1, value: 1 }],
                },
            ),
            op(
                7,
                Port::Rw,
                20,
                30,
                Outcome::Ok,
                Call::ListTxn {
                    ops: vec![MicroOp::Read {
                        key: 1,
                        value: Some(vec![1]),
                    }],
                },
            ),
        ];
        let r = check(&h, &initial());
        assert!(r.is_valid(), "{}", r.summary());
        assert_eq!(r.stats.ops, 7);
        assert_eq!(r.stats.register.ops_checked, 2);
        assert_eq!(r.stats.bank.reads_checked, 1);
        assert_eq!(r.stats.set.reads_checked, 1);
        assert_eq!(r.stats.list_append.txns_in_graph, 2);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"anomalies\":[]"), "{json}");
    }

    #[test]
    fn anomalies_of_every_checker_reach_the_report_and_summary() {
        let h = vec![
            op(
                1,
                Port::Rw,
                0,
                10,
                Outcome::Ok,
                Call::RegRead {
                    key: 0,
                    value: Some(9),
                },
            ),
            op(
                2,
                Port::Rw,
                0,
                10,
                Outcome::Ok,
                Call::BankRead {
                    balances: Some(vec![(0, 100), (1, 100), (2, 99)]),
                },
            ),
            op(3, Port::Rw, 0, 10, Outcome::Ok, Call::SetAdd { value: 1 }),
            op(
                4,
                Port::Rw,
                20,
                30,
                Outcome::Ok,
                Call::SetRead {
                    values: Some(vec![]),
                },
            ),
        ];
        let r = check(&h, &initial());
        let kinds: Vec<_> = r
            .anomalies
            .iter()
            .map(|a| (a.checker, a.kind.as_str()))
            .collect();
        assert!(
            kinds.contains(&(Checker::Register, "nonlinearizable")),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&(Checker::Bank, "total-changed")),
            "{kinds:?}"
        );
        assert!(kinds.contains(&(Checker::Set, "lost-add")), "{kinds:?}");
        assert_eq!(r.lost, 1);
        let s = r.summary();
        assert!(s.contains("[bank] total-changed"), "{s}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["anomalies"][0]["checker"], "Register");
        let back: CheckReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn summary_is_capped() {
        let mut r = CheckReport::default();
        for i in 0..(SUMMARY_MAX_LINES as u64 + 7) {
            r.anomalies.push(Anomaly::new(
                Checker::Set,
                "lost-add",
                format!("x{i}"),
                vec![i],
            ));
        }
        let s = r.summary();
        assert_eq!(s.lines().count(), SUMMARY_MAX_LINES + 2, "{s}");
        assert!(s.ends_with("... and 7 more anomalies\n"), "{s}");
    }
}
