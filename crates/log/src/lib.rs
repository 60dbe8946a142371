//! The global binlog: a raft-replicated log of MariaDB transactions (DESIGN §1–§3).
//!
//! - [`types`]: epochs, proposal ids, CLOCK_BOOTTIME instants, re-exported GTID types.
//! - [`entry`]: what a raft entry carries (commands, transaction chunks) and its encoding.
//! - [`state_machine`]: the deterministic accept rules and the transaction index.
//! - [`store`]: durable log storage (raft-engine) and its in-memory twin.
//! - [`lease`]: the master lease arithmetic.
//! - [`retention`]: how far the log may be compacted, from the members' reports.
//! - [`core`]: [`LogCore`], the sans-IO node tying raft-rs, store, state machine and lease.
//! - [`runtime`]: threads and transport around the core.

pub mod core;
#[cfg(test)]
mod core_tests;
pub mod entry;
pub mod lease;
pub mod retention;
pub mod runtime;
pub mod state_machine;
pub mod store;
pub mod types;

pub use crate::core::{
    AppliedCommand, ChunkPos, CommittedTxn, CompactReport, LogConfig, LogCore, LogError, LogEvent,
    LogStatus, Output, PeerProgress, ProposeError, ReadCursor, Role, StepOutcome, TxnPiece,
};
pub use entry::{digest_of, Command, EntryPayload, ProposalOrigin, TaggedCommand, TxnChunk};
pub use lease::{Lease, LeaseParams};
pub use state_machine::{MemberState, Membership, Outcome, RejectReason, StateMachine};
pub use store::{LogStore, MemStore, RaftEngineStore, RaftStorage, StoreError};
pub use types::{BinlogPos, BootInstant, Epoch, Gtid, GtidState, NodeId, ProposalId};

/// raft-rs message and configuration types used in this crate's API.
pub use raft::eraftpb;
