//! A log-only QuorumSQL node (no mariadbd) and the log benchmark driver.
//!
//! - [`logd`]: the node (`logbench logd`): raft-engine store, peer transport, log runtime, and a
//!   client port speaking [`protocol`].
//! - [`bench`]: `logbench bench`, three logd processes and a load generator.
//! - [`cluster`]: starting and killing logd processes (bench and real-process tests).

pub mod bench;
pub mod client;
pub mod cluster;
pub mod fsync;
pub mod logd;
pub mod protocol;
pub mod stats;
