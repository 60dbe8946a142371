//! The chaos harness: runs a real QuorumSQL cluster (each node in its own network namespace),
//! drives client workloads through its ports while a seeded nemesis breaks it, and checks the
//! recorded histories with `quorumsql-chaos-check`.
//!
//! ```text
//! clock      libfaketime for the `clock-jump` nemesis: modes, environment, offset files
//! cluster    the system under test: QuorumSQL (`nodes`) or Galera (`galera`), same levers
//! net        network namespaces + bridge, partitions as blackhole routes; or loopback
//! nodes      configs and `quorumsql node` processes; kill / pause / restart levers
//! galera     `--target galera`: a MariaDB Galera cluster in the same namespaces
//! nemesis    the seeded fault schedule and how each fault is applied and healed
//! workload   clients: register, bank, set, list-append; records every operation
//! rotation   the `binlog-rotation-failure` fault: stray directory, FLUSH BINARY LOGS, heal
//! ddl_fence  the `ddl-at-fence` fault: followers stopped, commits and a DDL waiting, fence
//! rebuilds   the product's automatic rebuilds, read back from the nodes' logs and data dirs
//! runner     one run end to end: start, load, break, heal, quiet, final reads, check, report
//! ```

pub mod clock;
pub mod cluster;
pub mod ddl_fence;
pub mod galera;
pub mod nemesis;
pub mod net;
pub mod nodes;
pub mod rebuilds;
pub mod rotation;
pub mod runner;
pub mod workload;

/// The client account every node creates at first start (`[mariadb] bootstrap_user`).
pub const USER: &str = "chaos";
pub const PASSWORD: &str = "chaos-pw";
