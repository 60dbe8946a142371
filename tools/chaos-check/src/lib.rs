//! Histories of the chaos harness (`tools/chaos`) and the checkers that judge them.
//!
//! No I/O beyond reading and writing history files: the harness records, this crate decides.
//!
//! ```text
//! history   Op / Call / Outcome and the JSON Lines file format
//! ```

pub mod history;

pub use history::{Call, Initial, MicroOp, NodeIndex, Op, Outcome, Port};
