//! Faked clocks for the `clock-jump` nemesis: every `quorumsql node` process runs under Debian's
//! libfaketime (LD_PRELOAD), reading its offset from a per-node file the nemesis rewrites.
//!
//! Only the quorumsql process is faked (`FAKETIME_ONLY_CMDS=quorumsql`): `ip netns exec` and the
//! mariadbd / mariadb-install-db children inherit the environment but libfaketime leaves them
//! alone. The thing under test is QuorumSQL's timing (lease, raft ticks, timeouts), and
//! mariadbd's own clock use is MariaDB's (docs/CHAOS.md, clock-jump).
//!
//! libfaketime 0.9.10 (checked with a clock_gettime probe): with `FAKETIME_DONT_FAKE_MONOTONIC=1`
//! only CLOCK_REALTIME, CLOCK_REALTIME_COARSE and CLOCK_TAI jump; without it CLOCK_MONOTONIC,
//! CLOCK_MONOTONIC_COARSE, CLOCK_MONOTONIC_RAW and CLOCK_BOOTTIME jump as well (they then read
//! as the faked wall clock). The lease runs on CLOCK_BOOTTIME, so that mode moves the lease
//! clock, and only forward jumps of the lease holder's clock are physically meaningful there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quorumsql_chaos_check::NodeIndex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

/// Which clocks of a node's quorumsql libfaketime moves. Fixed for a process's lifetime
/// (libfaketime reads `FAKETIME_DONT_FAKE_MONOTONIC` once, at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClockMode {
    /// Only the wall clock jumps, as when NTP or an operator steps it: both directions.
    WallOnly,
    /// Every clock jumps, CLOCK_BOOTTIME (the lease clock) included: forward only, master only.
    AllClocks,
}

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error(
        "clock-jump needs libfaketime ({tried}); install it with scripts/install-deps \
         (Debian package libfaketime)"
    )]
    NoLibrary { tried: String },
    #[error("cannot write the faketime offset file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The libfaketime set-up of a run: the library, and each node's mode and offset file.
#[derive(Debug, Clone)]
pub struct FakeClocks {
    library: PathBuf,
    modes: BTreeMap<NodeIndex, ClockMode>,
}

/// Where Debian installs the library (multiarch), plus the non-multiarch fallback.
fn library_candidates() -> Vec<PathBuf> {
    vec![
        PathBuf::from(format!(
            "/usr/lib/{}-linux-gnu/faketime/libfaketime.so.1",
            std::env::consts::ARCH
        )),
        PathBuf::from("/usr/lib/faketime/libfaketime.so.1"),
    ]
}

/// Both modes in every run of two or more nodes, which node gets which chosen by the seed.
pub fn assign_modes(nodes: &[NodeIndex], rng: &mut StdRng) -> BTreeMap<NodeIndex, ClockMode> {
    let mut order = nodes.to_vec();
    order.shuffle(rng);
    order
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let mode = if k % 2 == 0 {
                ClockMode::WallOnly
            } else {
                ClockMode::AllClocks
            };
            (n, mode)
        })
        .collect()
}

/// The text libfaketime expects in `FAKETIME_TIMESTAMP_FILE` for a relative offset.
pub fn offset_spec(secs: i64) -> String {
    if secs == 0 {
        "+0".into()
    } else {
        format!("{secs:+}s")
    }
}

impl FakeClocks {
    /// Finds the library; refuses clearly when it is not installed.
    pub fn new(modes: BTreeMap<NodeIndex, ClockMode>) -> Result<FakeClocks, ClockError> {
        let candidates = library_candidates();
        let library = candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or_else(|| ClockError::NoLibrary {
                tried: candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(FakeClocks { library, modes })
    }

    pub fn mode(&self, node: NodeIndex) -> Option<ClockMode> {
        self.modes.get(&node).copied()
    }

    pub fn modes(&self) -> &BTreeMap<NodeIndex, ClockMode> {
        &self.modes
    }

    /// The environment of node `node`'s quorumsql process, whose offset file is `file`.
    pub fn env(&self, node: NodeIndex, file: &Path) -> Vec<(String, String)> {
        let mut env = vec![
            ("LD_PRELOAD".into(), self.library.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
            // The file is re-read at most once a second: a jump lands within 1 s, without
            // the open/read/close per clock read of FAKETIME_NO_CACHE on a busy process.
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
            ("FAKETIME_ONLY_CMDS".into(), "quorumsql".into()),
        ];
        if self.mode(node) != Some(ClockMode::AllClocks) {
            env.push(("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()));
        }
        env
    }
}

/// Writes the offset atomically (libfaketime must never read a half-written file).
pub fn write_offset(file: &Path, secs: i64) -> Result<(), ClockError> {
    let tmp = file.with_extension("rc.tmp");
    let err = |source| ClockError::Write {
        path: file.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, format!("{}\n", offset_spec(secs))).map_err(err)?;
    std::fs::rename(&tmp, file).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn offsets_are_written_the_way_libfaketime_reads_them() {
        assert_eq!(offset_spec(0), "+0");
        assert_eq!(offset_spec(300), "+300s");
        assert_eq!(offset_spec(-600), "-600s");
    }

    #[test]
    fn every_run_of_two_or_more_nodes_has_both_modes() {
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            for nodes in [vec![1, 2, 3], vec![1, 2, 3, 4, 5]] {
                let modes = assign_modes(&nodes, &mut rng);
                assert_eq!(modes.len(), nodes.len());
                assert!(modes.values().any(|&m| m == ClockMode::WallOnly));
                assert!(modes.values().any(|&m| m == ClockMode::AllClocks));
            }
        }
    }

    #[test]
    fn only_all_clocks_nodes_fake_the_monotonic_clocks() {
        let clocks = FakeClocks {
            library: PathBuf::from("/lib/libfaketime.so.1"),
            modes: BTreeMap::from([(1, ClockMode::WallOnly), (2, ClockMode::AllClocks)]),
        };
        let has = |n, k: &str| {
            clocks
                .env(n, Path::new("/tmp/f.rc"))
                .iter()
                .any(|(key, _)| key == k)
        };
        assert!(has(1, "FAKETIME_DONT_FAKE_MONOTONIC"));
        assert!(!has(2, "FAKETIME_DONT_FAKE_MONOTONIC"));
        assert!(has(2, "LD_PRELOAD") && has(2, "FAKETIME_ONLY_CMDS"));
    }

    #[test]
    fn offset_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("faketime.rc");
        write_offset(&f, 300).unwrap();
        write_offset(&f, 0).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "+0\n");
    }
}
