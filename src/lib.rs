//! The `presence` command line and the in-process demo cluster.
//!
//! * [`cluster`]: a coordinator and N ws-nodes in one process on shared
//!   backends (embedded by default); `presence demo` runs it and the
//!   integration tests start it on port 0.
//! * [`cli`]: the subcommands.
//! * [`try_page`]: the demo's try-it page, on the JavaScript SDK.

pub mod cli;
pub mod cluster;
pub mod try_page;
