//! Process plumbing shared by the `coordinator`, `ws-node` and `presence` binaries.
//!
//! * [`config`]: checking configuration and reporting every problem at once (exit 64).
//! * [`backends`]: the store and bus named by `REDIS_URL` and `KAFKA_BROKERS`.
//! * [`listener`]: the connection limits of a listener, as flags.
//! * [`logging`]: tracing setup from `RUST_LOG`.
//! * [`signal`]: shutdown on SIGTERM or Ctrl-C.

pub mod backends;
pub mod config;
pub mod listener;
pub mod logging;
pub mod signal;
