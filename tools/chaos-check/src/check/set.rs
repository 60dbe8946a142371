//! Set workload: no acknowledged add is lost, no read shows what was never (or definitely not)
//! added.
//!
//! The harness reads the whole set through the RW port once more after healing: that final read
//! (the Ok RW read with the greatest start) must hold every add acknowledged before it started.
//! Adds with an unknown outcome may or may not be there.

use super::{fmt_ids, Anomaly, Checker};
use crate::history::{Call, Op, Outcome, Port};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// What the set checker looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetStats {
    pub adds_ok: u64,
    pub adds_fail: u64,
    pub adds_unknown: u64,
    /// Ok reads checked (the final one included).
    pub reads_checked: u64,
    /// Op id of the final read, if there is one.
    pub final_read: Option<u64>,
    /// Elements in the final read.
    pub final_size: u64,
    /// Acknowledged adds the final read must hold.
    pub final_expected: u64,
    /// Of those, missing from the final read.
    pub lost: u64,
    /// Adds with unknown outcome that the final read shows (they did happen).
    pub unknown_present: u64,
}

/// What is known about one element from the adds that tried it.
struct Attempts {
    /// Earliest start of any attempt (an element cannot be seen before it).
    first_start: u64,
    /// Earliest end of an acknowledged attempt.
    acked_end: Option<u64>,
    any_unknown: bool,
    ids: Vec<u64>,
}

/// Most missing elements named in one stale-read message.
const MAX_NAMED: usize = 20;

pub(crate) fn check(ops: &[&Op], out: &mut Vec<Anomaly>) -> SetStats {
    let mut stats = SetStats::default();
    let mut adds: BTreeMap<u64, Attempts> = BTreeMap::new();
    let mut reads: Vec<(&Op, &Vec<u64>)> = Vec::new();
    for op in ops {
        match (&op.call, op.outcome) {
            (Call::SetAdd { value }, outcome) => {
                let a = adds.entry(*value).or_insert(Attempts {
                    first_start: op.start_ns,
                    acked_end: None,
                    any_unknown: false,
                    ids: Vec::new(),
                });
                a.first_start = a.first_start.min(op.start_ns);
                a.ids.push(op.id);
                match outcome {
                    Outcome::Ok => {
                        stats.adds_ok += 1;
                        a.acked_end = Some(a.acked_end.map_or(op.end_ns, |e| e.min(op.end_ns)));
                    }
                    Outcome::Fail => stats.adds_fail += 1,
                    Outcome::Unknown => {
                        stats.adds_unknown += 1;
                        a.any_unknown = true;
                    }
                }
            }
            (Call::SetRead { values: Some(v) }, Outcome::Ok) => reads.push((op, v)),
            _ => {}
        }
    }
    let final_read = reads
        .iter()
        .filter(|(op, _)| op.port == Port::Rw)
        .max_by_key(|(op, _)| (op.start_ns, op.id))
        .map(|(op, _)| op.id);
    stats.final_read = final_read;

    if final_read.is_none() && !adds.is_empty() {
        out.push(Anomaly::new(
            Checker::Set,
            "no-final-read",
            format!(
                "{} elements were added but no read through the RW port succeeded: nothing \
                 proves the acknowledged adds survived",
                adds.len()
            ),
            Vec::new(),
        ));
    }

    for (op, values) in &reads {
        stats.reads_checked += 1;
        let is_final = Some(op.id) == final_read;
        let what = format!(
            "{} #{} ({:?} port, node {}, [{}..{} ns])",
            if is_final { "final read" } else { "read" },
            op.id,
            op.port,
            op.node,
            op.start_ns,
            op.end_ns
        );
        let mut seen: HashSet<u64> = HashSet::with_capacity(values.len());
        let mut dups = Vec::new();
        for &v in values.iter() {
            if !seen.insert(v) {
                dups.push(v);
            }
            match adds.get(&v) {
                None => out.push(Anomaly::new(
                    Checker::Set,
                    "phantom-add",
                    format!("{what} shows {v}, which no add ever attempted"),
                    vec![op.id],
                )),
                Some(a) if a.acked_end.is_none() && !a.any_unknown => out.push(Anomaly::new(
                    Checker::Set,
                    "failed-add-visible",
                    format!(
                        "{what} shows {v}, whose add ({}) definitely failed",
                        fmt_ids(a.ids.iter().copied(), MAX_NAMED)
                    ),
                    [op.id].into_iter().chain(a.ids.iter().copied()).collect(),
                )),
                Some(a) if a.first_start > op.end_ns => out.push(Anomaly::new(
                    Checker::Set,
                    "phantom-add",
                    format!(
                        "{what} shows {v}, whose add ({}) started only after the read ended, \
                         at {} ns",
                        fmt_ids(a.ids.iter().copied(), MAX_NAMED),
                        a.first_start
                    ),
                    [op.id].into_iter().chain(a.ids.iter().copied()).collect(),
                )),
                Some(_) => {}
            }
        }
        if !dups.is_empty() {
            out.push(Anomaly::new(
                Checker::Set,
                "duplicate",
                format!("{what} shows these elements more than once: {dups:?}"),
                vec![op.id],
            ));
        }
        if op.port != Port::Rw {
            continue;
        }
        // Acknowledged before the read started: an RW read must show it.
        let missing: Vec<(u64, &Attempts)> = adds
            .iter()
            .filter(|(v, a)| a.acked_end.is_some_and(|e| e < op.start_ns) && !seen.contains(v))
            .map(|(v, a)| (*v, a))
            .collect();
        if is_final {
            stats.final_size = seen.len() as u64;
            stats.final_expected = adds
                .values()
                .filter(|a| a.acked_end.is_some_and(|e| e < op.start_ns))
                .count() as u64;
            stats.unknown_present = adds
                .iter()
                .filter(|(v, a)| a.acked_end.is_none() && a.any_unknown && seen.contains(v))
                .count() as u64;
            stats.lost = missing.len() as u64;
            for (v, a) in missing {
                out.push(Anomaly::new(
                    Checker::Set,
                    "lost-add",
                    format!(
                        "{v} was acknowledged by add {} (ended at {} ns) but is missing from \
                         the {what}",
                        fmt_ids(a.ids.iter().copied(), MAX_NAMED),
                        a.acked_end.unwrap_or_default()
                    ),
                    a.ids.iter().copied().chain([op.id]).collect(),
                ));
            }
        } else if !missing.is_empty() {
            out.push(Anomaly::new(
                Checker::Set,
                "stale-read-rw",
                format!(
                    "{what} misses {} elements acknowledged before it started: {:?}{}",
                    missing.len(),
                    missing
                        .iter()
                        .take(MAX_NAMED)
                        .map(|(v, _)| v)
                        .collect::<Vec<_>>(),
                    if missing.len() > MAX_NAMED {
                        " ..."
                    } else {
                        ""
                    }
                ),
                [op.id]
                    .into_iter()
                    .chain(
                        missing
                            .iter()
                            .take(MAX_NAMED)
                            .flat_map(|(_, a)| a.ids.iter().copied()),
                    )
                    .collect(),
            ));
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testutil::op;

    fn add(id: u64, s: u64, e: u64, outcome: Outcome, v: u64) -> Op {
        op(id, Port::Rw, s, e, outcome, Call::SetAdd { value: v })
    }
    fn read(id: u64, port: Port, s: u64, e: u64, v: Vec<u64>) -> Op {
        op(
            id,
            port,
            s,
            e,
            Outcome::Ok,
            Call::SetRead { values: Some(v) },
        )
    }
    fn run(h: &[Op]) -> (Vec<Anomaly>, SetStats) {
        let refs: Vec<&Op> = h.iter().collect();
        let mut out = Vec::new();
        let stats = check(&refs, &mut out);
        (out, stats)
    }
    fn kinds(a: &[Anomaly]) -> Vec<&str> {
        a.iter().map(|a| a.kind.as_str()).collect()
    }

    #[test]
    fn acknowledged_adds_in_the_final_read_pass() {
        let h = vec![
            add(1, 0, 10, Outcome::Ok, 1),
            add(2, 0, 10, Outcome::Unknown, 2),
            add(3, 0, 10, Outcome::Unknown, 3),
            add(4, 0, 10, Outcome::Fail, 4),
            read(5, Port::Ro, 5, 8, vec![]), // RO may be stale
            read(6, Port::Rw, 20, 30, vec![1, 2]),
            add(7, 25, 40, Outcome::Ok, 5), // concurrent with the final read: may be missing
            read(8, Port::Rw, 50, 60, vec![1, 3, 2, 5]),
            add(9, 55, 70, Outcome::Ok, 6), // concurrent too
        ];
        let (a, stats) = run(&h);
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(stats.final_read, Some(8));
        assert_eq!(stats.final_expected, 2); // 1 and 5
        assert_eq!(
            (stats.final_size, stats.unknown_present, stats.lost),
            (4, 2, 0)
        );
        assert_eq!(stats.reads_checked, 3);
    }

    #[test]
    fn an_acknowledged_add_missing_from_the_final_read_is_lost() {
        let h = vec![
            add(1, 0, 10, Outcome::Ok, 1),
            add(2, 0, 10, Outcome::Ok, 2),
            read(3, Port::Rw, 20, 30, vec![2]),
        ];
        let (a, stats) = run(&h);
        assert_eq!(kinds(&a), ["lost-add"]);
        assert_eq!(a[0].op_ids, vec![1, 3]);
        assert!(
            a[0].message.contains("1 was acknowledged by add #1"),
            "{}",
            a[0].message
        );
        assert_eq!(stats.lost, 1);
    }

    #[test]
    fn phantom_and_failed_elements_fail_on_any_port() {
        let h = vec![
            add(1, 0, 10, Outcome::Fail, 1),
            add(2, 100, 110, Outcome::Ok, 2),
            read(3, Port::Ro, 20, 30, vec![1, 9, 2]),
            read(4, Port::Rw, 200, 210, vec![2]),
        ];
        let (a, _) = run(&h);
        assert_eq!(
            kinds(&a),
            ["failed-add-visible", "phantom-add", "phantom-add"],
            "{a:?}"
        );
        assert!(
            a[2].message.contains("started only after the read ended"),
            "{}",
            a[2].message
        );
    }

    #[test]
    fn an_rw_read_missing_an_earlier_acknowledged_add_is_stale() {
        let h = vec![
            add(1, 0, 10, Outcome::Ok, 1),
            read(2, Port::Rw, 20, 30, vec![]),
            read(3, Port::Ro, 20, 30, vec![]), // RO: allowed
            read(4, Port::Rw, 40, 50, vec![1]),
        ];
        let (a, _) = run(&h);
        assert_eq!(kinds(&a), ["stale-read-rw"]);
        assert_eq!(a[0].op_ids, vec![2, 1]);
    }

    #[test]
    fn duplicates_and_a_missing_final_read_fail() {
        let h = vec![
            add(1, 0, 10, Outcome::Ok, 1),
            read(2, Port::Rw, 20, 30, vec![1, 1]),
        ];
        assert_eq!(kinds(&run(&h).0), ["duplicate"]);
        let h = vec![
            add(1, 0, 10, Outcome::Ok, 1),
            read(2, Port::Ro, 20, 30, vec![1]),
        ];
        assert_eq!(kinds(&run(&h).0), ["no-final-read"]);
        assert!(run(&[]).0.is_empty());
    }
}
