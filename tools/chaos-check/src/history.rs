//! One client operation as the chaos harness records it, and the history file format.
//!
//! Each operation is recorded once, when it completes (or when the run gives up on it), with
//! both its invocation and completion instants. An operation whose outcome the client could not
//! learn (connection lost during COMMIT, client-side timeout) is `Outcome::Unknown`: it may or may
//! not have taken effect, at any instant after its start; checkers treat it that way.
//!
//! The history file is JSON Lines: one [`Op`] per line, in completion order.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

/// Index of a cluster node as the harness numbers them (1-based, like `quorumsql up`).
pub type NodeIndex = u8;

/// Which client port an operation went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Port {
    /// Read-write port: linearizable for autocommit statements, SERIALIZABLE txns, locking reads.
    Rw,
    /// Read-only port: may be stale, never shows uncommitted or lost data.
    Ro,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The database said it happened (for a CAS: it happened and matched).
    Ok,
    /// The database said it did not happen (error before any effect, CAS mismatch,
    /// rolled-back transaction).
    Fail,
    /// Nobody knows: it may have taken effect at any instant after `start_ns`.
    Unknown,
}

/// One micro-operation of a list-append transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MicroOp {
    /// Append `value` to the list at `key`. Values are unique per key across the run.
    Append { key: u32, value: u64 },
    /// Read the list at `key`; `value` is `Some` (possibly empty) only when the txn is `Ok`.
    Read { key: u32, value: Option<Vec<u64>> },
}

/// What the operation did. Result fields are `Some` only when the outcome is `Ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// Register: read key. Every register row exists from the start with value 0.
    RegRead { key: u32, value: Option<i64> },
    /// Register: blind write. Written values are unique per key across the run and never 0.
    RegWrite { key: u32, value: i64 },
    /// Register: compare-and-set. `Ok` = it matched and wrote; `Fail` = it did not match.
    RegCas { key: u32, from: i64, to: i64 },
    /// Bank: move `amount` between two accounts in one transaction (`Fail` if it would overdraw).
    BankTransfer { from: u32, to: u32, amount: i64 },
    /// Bank: read every balance in one statement: `(account, balance)` sorted by account.
    BankRead { balances: Option<Vec<(u32, i64)>> },
    /// Set: insert a unique element.
    SetAdd { value: u64 },
    /// Set: read every element (the final read after healing, or periodic reads).
    SetRead { values: Option<Vec<u64>> },
    /// List-append: one transaction of micro-ops.
    ListTxn { ops: Vec<MicroOp> },
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique in the history, in invocation order per client.
    pub id: u64,
    /// The client (logical process) that ran it. A client runs one operation at a time; after an
    /// `Unknown` outcome it continues as a new client id, so per-client order stays meaningful.
    pub client: u32,
    /// The node whose port the client connected to.
    pub node: NodeIndex,
    pub port: Port,
    /// Invocation and completion, in nanoseconds since the start of the run (monotonic clock).
    /// For `Unknown`, `end_ns` is when the client gave up; the effect may land later.
    pub start_ns: u64,
    pub end_ns: u64,
    pub outcome: Outcome,
    /// The error the client saw (`"1927: Connection was killed"`, `"timeout"`, ...), if any.
    pub error: Option<String>,
    pub call: Call,
}

/// The initial state every workload starts from, known to the checkers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Initial {
    /// Register: keys `0..register_keys`, each starting at 0.
    pub register_keys: u32,
    /// Bank: accounts `0..bank_accounts`, each starting with `bank_initial_balance`.
    pub bank_accounts: u32,
    pub bank_initial_balance: i64,
}

impl Initial {
    pub fn bank_total(&self) -> i64 {
        i64::from(self.bank_accounts) * self.bank_initial_balance
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history line {line}: {source}")]
    Parse {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("history I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("history encode: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Writes one op as a JSON line.
pub fn write_op(out: &mut impl Write, op: &Op) -> Result<(), HistoryError> {
    serde_json::to_writer(&mut *out, op)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Reads a JSON Lines history (blank lines ignored).
pub fn read_history(input: impl BufRead) -> Result<Vec<Op>, HistoryError> {
    let mut ops = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
            line: i + 1,
            source,
        })?;
        ops.push(op);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_round_trips_through_json_lines() {
        let ops = vec![
            Op {
                id: 1,
                client: 3,
                node: 2,
                port: Port::Rw,
                start_ns: 10,
                end_ns: 20,
                outcome: Outcome::Ok,
                error: None,
                call: Call::RegRead {
                    key: 1,
                    value: Some(0),
                },
            },
            Op {
                id: 2,
                client: 4,
                node: 1,
                port: Port::Ro,
                start_ns: 15,
                end_ns: 40,
                outcome: Outcome::Unknown,
                error: Some("timeout".into()),
                call: Call::ListTxn {
                    ops: vec![
                        MicroOp::Append { key: 1, value: 7 },
                        MicroOp::Read {
                            key: 2,
                            value: None,
                        },
                    ],
                },
            },
        ];
        let mut buf = Vec::new();
        for op in &ops {
            write_op(&mut buf, op).unwrap();
        }
        let back = read_history(&buf[..]).unwrap();
        assert_eq!(back, ops);
        let bad = read_history(&b"{\"id\":1}\n"[..]).unwrap_err();
        assert!(bad.to_string().contains("line 1"), "{bad}");
    }
}
