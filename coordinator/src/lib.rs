//! The coordinator.
pub mod rebalance;
