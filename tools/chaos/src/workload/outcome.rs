//! What a failed operation means for the history: `Fail` (it had no effect) or `Unknown` (it may
//! have taken effect), and whether its connection can be reused.

use std::time::Duration;

use quorumsql_chaos_check::Outcome;
use quorumsql_node::sql::SqlError;

/// Why an operation did not complete normally.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Sql(#[from] SqlError),
    /// The client-side bound on the whole operation (connect included) expired.
    #[error("timeout after {0:?}")]
    Timeout(Duration),
    /// The server answered something the workload cannot interpret (missing row, bad number).
    #[error("unexpected result: {0}")]
    Bad(String),
}

/// Server errors after which the statement (or the whole transaction) certainly had no effect.
fn definitely_no_effect(code: u16, state: &str) -> bool {
    match code {
        // QuorumSQL's proxy: 08S01 = no master / not here, nothing was executed. The same code
        // with 08007 means "connection gone, a statement may have committed".
        1053 => state == "08S01",
        // Deadlock and lock wait timeout (the txn or statement rolled back), read-only server,
        // statement refused by the proxy.
        1213 | 1205 | 1290 | 1235 => true,
        // Rejected before execution: duplicate key, syntax, unknown table, access denied.
        1062 | 1064 | 1146 | 1044 | 1045 | 1142 => true,
        _ => false,
    }
}

/// The outcome of an operation that ended in `error`.
///
/// `read_only`: the operation cannot change the database (a read, a read-only transaction).
/// `effect_sent`: a statement that can make the operation's effect durable (an autocommit write,
/// or the COMMIT of a transaction) may have reached the server. Before that, an explicit
/// transaction that breaks off is rolled back by the server, so it is a definite `Fail`.
pub fn outcome_of(error: &OpError, read_only: bool, effect_sent: bool) -> Outcome {
    if read_only || !effect_sent {
        return Outcome::Fail;
    }
    match error {
        OpError::Sql(SqlError::Server { code, state, .. })
            if definitely_no_effect(*code, state) =>
        {
            Outcome::Fail
        }
        // I/O error, closed, timeout, 1053/08007, 1927, anything unexpected: may have landed.
        _ => Outcome::Unknown,
    }
}

/// Whether the connection may be used for the next operation after `error`.
///
/// Only a server ERR leaves the protocol state known. The proxy's connection-level errors
/// (1053, 1927) and a read-only backend (1290) also drop it: the next connection goes to another
/// random node, which is what a real client pool does.
pub fn keeps_connection(error: &OpError) -> bool {
    match error {
        OpError::Sql(SqlError::Server { code, .. }) => !matches!(code, 1053 | 1927 | 1290),
        OpError::Sql(e) => e.connection_usable(),
        OpError::Timeout(_) => false,
        OpError::Bad(_) => true,
    }
}

/// Deadlock or lock wait timeout: the transaction lost a conflict, the server is fine.
pub fn is_contention(error: &OpError) -> bool {
    matches!(
        error,
        OpError::Sql(SqlError::Server {
            code: 1213 | 1205,
            ..
        })
    )
}

/// The error text recorded in the history.
pub fn describe(error: &OpError) -> String {
    match error {
        OpError::Sql(SqlError::Server {
            code,
            state,
            message,
            ..
        }) => format!("{code} ({state}): {message}"),
        // One recognizable word for every client-side timeout, whichever layer noticed it.
        OpError::Sql(e @ SqlError::Timeout { .. }) => format!("timeout: {e}"),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16, state: &str) -> OpError {
        OpError::Sql(SqlError::Server {
            code,
            state: state.into(),
            message: "m".into(),
            during: "COMMIT".into(),
        })
    }

    fn io() -> OpError {
        OpError::Sql(SqlError::Io {
            peer: "p".into(),
            during: "COMMIT".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        })
    }

    fn closed() -> OpError {
        OpError::Sql(SqlError::Closed {
            peer: "p".into(),
            during: "COMMIT".into(),
        })
    }

    #[test]
    fn reads_that_fail_are_fail_whatever_the_error() {
        for e in [
            io(),
            closed(),
            server(1053, "08007"),
            OpError::Timeout(Duration::ZERO),
        ] {
            assert_eq!(outcome_of(&e, true, true), Outcome::Fail, "{e:?}");
            assert_eq!(outcome_of(&e, true, false), Outcome::Fail, "{e:?}");
        }
    }

    #[test]
    fn writes_that_break_before_the_effect_was_sent_are_fail() {
        for e in [
            io(),
            closed(),
            server(1927, "08007"),
            server(1213, "40001"),
            OpError::Timeout(Duration::ZERO),
            OpError::Bad("x".into()),
        ] {
            assert_eq!(outcome_of(&e, false, false), Outcome::Fail, "{e:?}");
        }
    }

    #[test]
    fn definite_server_errors_after_the_effect_was_sent_are_fail() {
        for (code, state) in [
            (1053, "08S01"),
            (1213, "40001"),
            (1205, "HY000"),
            (1290, "HY000"),
            (1235, "42000"),
            (1062, "23000"),
        ] {
            let e = server(code, state);
            assert_eq!(outcome_of(&e, false, true), Outcome::Fail, "{e:?}");
        }
    }

    #[test]
    fn anything_else_after_the_effect_was_sent_is_unknown() {
        for e in [
            io(),
            closed(),
            server(1053, "08007"),
            server(1927, "08007"),
            server(1180, "HY000"),
            OpError::Timeout(Duration::from_secs(5)),
            OpError::Bad("x".into()),
        ] {
            assert_eq!(outcome_of(&e, false, true), Outcome::Unknown, "{e:?}");
        }
    }

    #[test]
    fn connection_is_dropped_unless_the_server_answered_normally() {
        assert!(keeps_connection(&server(1213, "40001")));
        assert!(keeps_connection(&server(1235, "42000")));
        assert!(keeps_connection(&OpError::Bad("x".into())));
        assert!(!keeps_connection(&server(1053, "08S01")));
        assert!(!keeps_connection(&server(1927, "08007")));
        assert!(!keeps_connection(&server(1290, "HY000")));
        assert!(!keeps_connection(&io()));
        assert!(!keeps_connection(&closed()));
        assert!(!keeps_connection(&OpError::Timeout(Duration::ZERO)));
    }

    #[test]
    fn only_lost_conflicts_count_as_contention() {
        assert!(is_contention(&server(1213, "40001")));
        assert!(is_contention(&server(1205, "HY000")));
        assert!(!is_contention(&server(1053, "08S01")));
        assert!(!is_contention(&io()));
    }

    #[test]
    fn server_errors_are_described_by_code_and_state() {
        assert_eq!(describe(&server(1927, "08007")), "1927 (08007): m");
        assert_eq!(
            describe(&OpError::Timeout(Duration::from_secs(5))),
            "timeout after 5s"
        );
        let inner = OpError::Sql(SqlError::Timeout {
            peer: "p".into(),
            during: "COMMIT".into(),
            after: Duration::from_secs(5),
        });
        assert!(
            describe(&inner).starts_with("timeout: "),
            "{}",
            describe(&inner)
        );
    }
}
