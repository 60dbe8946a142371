//! Histories of the chaos harness (`tools/chaos`) and the checkers that judge them.
//!
//! No I/O beyond reading and writing history files: the harness records, this crate decides.
//!
//! ```text
//! history                 Op / Call / Outcome and the JSON Lines file format
//! check                   check(): runs every checker, CheckReport / Anomaly / CheckStats
//! check::register         RW-port register linearizability (Wing–Gong–Lowe), RO phantom reads
//! check::bank             bank reads: all accounts, no overdraft, conserved total
//! check::set              set adds: nothing acknowledged lost, nothing phantom
//! check::list_append      Elle-style list-append isolation checker (G0, G1a, G1b, G1c, G2, lost appends)
//! svg                     render_svg(): the picture of a run (ops per client, faults, anomalies)
//! ```

pub mod check;
pub mod history;
pub mod svg;

pub use check::{check, check_with, Anomaly, CheckOptions, CheckReport, CheckStats, Checker};
pub use history::{Call, Initial, MicroOp, NodeIndex, Op, Outcome, Port};
pub use svg::{render_svg, FaultSpan};
