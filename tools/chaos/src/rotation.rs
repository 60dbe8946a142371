//! The `binlog-rotation-failure` fault (design-review finding 2): a stray directory named like
//! the master's next binlog file, then `FLUSH BINARY LOGS`. MariaDB cannot open the new file,
//! "turns logging off for the whole duration of the MariaDB server process", and from then on
//! acknowledges commits with no binlog event (and so no semi-sync wait) while `@@log_bin` still
//! reads 1. The harness talks to mariadbd over its unix socket as root, like the convergence
//! check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use quorumsql_node::sql::SqlConn;

const SQL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("mariadbd at {socket}: {what}")]
    Sql { socket: PathBuf, what: String },
    #[error("binlog file name {0:?} has no numeric extension")]
    FileName(String),
    #[error("cannot create the stray directory {path}: {source}")]
    Plant {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What planting the fault did.
#[derive(Debug)]
pub struct Planted {
    /// The stray directory (remove it to heal).
    pub dir: PathBuf,
    /// The binlog file that was current before the rotation.
    pub current: String,
    /// The answer to `FLUSH BINARY LOGS` (MariaDB may answer OK or an error).
    pub flush: Result<(), String>,
    /// `SHOW MASTER STATUS` was empty afterwards: binary logging is off in that process.
    pub logging_off: bool,
}

/// `mysql-bin.000007` -> `mysql-bin.000008` (same width; MariaDB widens past 999999).
pub fn next_binlog_name(current: &str) -> Result<String, RotationError> {
    let (stem, num) = current
        .rsplit_once('.')
        .ok_or_else(|| RotationError::FileName(current.into()))?;
    let n: u64 = num
        .parse()
        .map_err(|_| RotationError::FileName(current.into()))?;
    Ok(format!(
        "{stem}.{:0width$}",
        n.saturating_add(1),
        width = num.len()
    ))
}

async fn connect(socket: &Path) -> Result<SqlConn, RotationError> {
    let sql_err = |what: String| RotationError::Sql {
        socket: socket.to_path_buf(),
        what,
    };
    match tokio::time::timeout(SQL_TIMEOUT, SqlConn::connect_unix(socket, "root", "")).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(sql_err(e.to_string())),
        Err(_) => Err(sql_err(format!("no connection within {SQL_TIMEOUT:?}"))),
    }
}

async fn query_row(conn: &mut SqlConn, sql: &str) -> Result<Option<Vec<String>>, String> {
    let rows = tokio::time::timeout(SQL_TIMEOUT, conn.query(sql))
        .await
        .map_err(|_| format!("{sql}: no answer within {SQL_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    Ok(rows.first().map(|r| {
        (0..r.values().len())
            .map(|i| r.get_idx(i).unwrap_or_default().to_string())
            .collect()
    }))
}

/// Plants the stray directory next to the current binlog file and forces a rotation.
pub async fn break_rotation(socket: &Path) -> Result<Planted, RotationError> {
    let sql_err = |what: String| RotationError::Sql {
        socket: socket.to_path_buf(),
        what,
    };
    let mut conn = connect(socket).await?;
    let status = query_row(&mut conn, "SHOW MASTER STATUS")
        .await
        .map_err(sql_err)?
        .ok_or_else(|| sql_err("SHOW MASTER STATUS is empty before the fault".into()))?;
    let current = status.first().cloned().unwrap_or_default();
    let basename = query_row(&mut conn, "SELECT @@log_bin_basename")
        .await
        .map_err(sql_err)?
        .and_then(|r| r.first().cloned())
        .unwrap_or_default();
    let binlog_dir = Path::new(&basename)
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| sql_err(format!("@@log_bin_basename {basename:?} has no directory")))?;
    let dir = binlog_dir.join(next_binlog_name(&current)?);
    std::fs::create_dir(&dir).map_err(|source| RotationError::Plant {
        path: dir.clone(),
        source,
    })?;
    let flush = match tokio::time::timeout(SQL_TIMEOUT, conn.exec("FLUSH BINARY LOGS")).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {SQL_TIMEOUT:?}")),
    };
    let logging_off = matches!(query_row(&mut conn, "SHOW MASTER STATUS").await, Ok(None));
    let _ = conn.quit().await;
    Ok(Planted {
        dir,
        current,
        flush,
        logging_off,
    })
}

/// Removes the stray directory (empty: MariaDB never writes into it). Returns what went wrong.
pub fn heal(planted_dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir(planted_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", planted_dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_file_keeps_the_stem_and_the_width() {
        assert_eq!(
            next_binlog_name("mysql-bin.000007").unwrap(),
            "mysql-bin.000008"
        );
        assert_eq!(
            next_binlog_name("mysql-bin.000999").unwrap(),
            "mysql-bin.001000"
        );
        assert_eq!(next_binlog_name("a.b.09").unwrap(), "a.b.10");
        assert!(next_binlog_name("mysql-bin").is_err());
        assert!(next_binlog_name("mysql-bin.index").is_err());
    }
}
