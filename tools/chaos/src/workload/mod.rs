//! Client workloads (being written).
