//! The chaos harness: runs a real QuorumSQL (or Galera) cluster, drives client workloads through
//! its ports while a seeded nemesis breaks it, and checks the recorded histories.
//!
//! ```text
//! workload   clients: register, bank, set, list-append; records every operation
//! ```

pub mod workload;
