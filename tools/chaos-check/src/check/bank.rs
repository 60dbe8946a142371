//! Bank workload: transfers conserve the total, and every read sees a whole, consistent snapshot.
//!
//! A read through either port must show every account `0..bank_accounts` exactly once, no
//! negative balance (transfers that would overdraw fail) and the initial total: a torn or
//! half-applied transaction shows up as a different sum.

use super::{Anomaly, Checker};
use crate::history::{Call, Initial, Op, Outcome};
use serde::{Deserialize, Serialize};

/// What the bank checker looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankStats {
    /// Ok reads checked.
    pub reads_checked: u64,
    pub transfers_ok: u64,
    pub transfers_fail: u64,
    pub transfers_unknown: u64,
}

pub(crate) fn check(ops: &[&Op], initial: &Initial, out: &mut Vec<Anomaly>) -> BankStats {
    let mut stats = BankStats::default();
    let expected_total = initial.bank_total();
    for op in ops {
        let balances = match (&op.call, op.outcome) {
            (Call::BankTransfer { .. }, outcome) => {
                match outcome {
                    Outcome::Ok => stats.transfers_ok += 1,
                    Outcome::Fail => stats.transfers_fail += 1,
                    Outcome::Unknown => stats.transfers_unknown += 1,
                }
                continue;
            }
            (Call::BankRead { balances: Some(b) }, Outcome::Ok) => b,
            _ => continue,
        };
        stats.reads_checked += 1;
        let where_ = format!(
            "read #{} ({:?} port, node {}, [{}..{} ns])",
            op.id, op.port, op.node, op.start_ns, op.end_ns
        );
        let accounts: Vec<u32> = balances.iter().map(|&(a, _)| a).collect();
        let expected: Vec<u32> = (0..initial.bank_accounts).collect();
        if accounts != expected {
            out.push(Anomaly::new(
                Checker::Bank,
                "wrong-accounts",
                format!(
                    "{where_} saw accounts {accounts:?}, expected 0..{} each once in order",
                    initial.bank_accounts
                ),
                vec![op.id],
            ));
        }
        let negative: Vec<(u32, i64)> = balances.iter().copied().filter(|&(_, b)| b < 0).collect();
        if !negative.is_empty() {
            out.push(Anomaly::new(
                Checker::Bank,
                "negative-balance",
                format!("{where_} saw negative balances (account, balance): {negative:?}"),
                vec![op.id],
            ));
        }
        // i128: a corrupted balance must not overflow the sum into a false "conserved".
        let sum: i128 = balances.iter().map(|&(_, b)| i128::from(b)).sum();
        if sum != i128::from(expected_total) {
            out.push(Anomaly::new(
                Checker::Bank,
                "total-changed",
                format!(
                    "{where_} saw a total of {sum}, expected {expected_total} (difference {})",
                    sum - i128::from(expected_total)
                ),
                vec![op.id],
            ));
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testutil::{initial, op};
    use crate::history::Port;

    fn read(id: u64, port: Port, b: Vec<(u32, i64)>) -> Op {
        op(
            id,
            port,
            0,
            10,
            Outcome::Ok,
            Call::BankRead { balances: Some(b) },
        )
    }
    fn run(h: &[Op]) -> (Vec<Anomaly>, BankStats) {
        let refs: Vec<&Op> = h.iter().collect();
        let mut out = Vec::new();
        let stats = check(&refs, &initial(), &mut out);
        (out, stats)
    }

    #[test]
    fn conserved_totals_pass_on_both_ports() {
        let h = vec![
            read(1, Port::Rw, vec![(0, 100), (1, 100), (2, 100)]),
            op(
                2,
                Port::Rw,
                0,
                10,
                Outcome::Ok,
                Call::BankTransfer {
                    from: 0,
                    to: 1,
                    amount: 60,
                },
            ),
            op(
                3,
                Port::Rw,
                0,
                10,
                Outcome::Fail,
                Call::BankTransfer {
                    from: 0,
                    to: 1,
                    amount: 600,
                },
            ),
            read(4, Port::Ro, vec![(0, 40), (1, 160), (2, 100)]),
            read(5, Port::Rw, vec![(0, 0), (1, 200), (2, 100)]),
            op(
                6,
                Port::Ro,
                0,
                10,
                Outcome::Fail,
                Call::BankRead { balances: None },
            ),
        ];
        let (a, stats) = run(&h);
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(stats.reads_checked, 3);
        assert_eq!((stats.transfers_ok, stats.transfers_fail), (1, 1));
    }

    #[test]
    fn a_changed_total_fails_with_the_sum_seen() {
        let (a, _) = run(&[read(7, Port::Ro, vec![(0, 40), (1, 100), (2, 100)])]);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].kind, "total-changed");
        assert_eq!(a[0].op_ids, vec![7]);
        assert!(
            a[0].message.contains("total of 240, expected 300"),
            "{}",
            a[0].message
        );
    }

    #[test]
    fn a_negative_balance_fails_even_when_the_total_holds() {
        let (a, _) = run(&[read(8, Port::Rw, vec![(0, -10), (1, 210), (2, 100)])]);
        let kinds: Vec<_> = a.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ["negative-balance"]);
        assert!(a[0].message.contains("(0, -10)"), "{}", a[0].message);
    }

    #[test]
    fn missing_or_duplicated_accounts_fail() {
        let (a, _) = run(&[
            read(1, Port::Rw, vec![(0, 150), (1, 150)]),
            read(2, Port::Rw, vec![(0, 100), (1, 100), (1, 100), (2, 0)]),
        ]);
        let kinds: Vec<_> = a.iter().map(|a| (a.kind.as_str(), a.op_ids[0])).collect();
        assert_eq!(
            kinds,
            [("wrong-accounts", 1), ("wrong-accounts", 2)],
            "{a:?}"
        );
    }
}
