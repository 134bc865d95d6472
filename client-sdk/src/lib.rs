//! Rust client SDK for the presence platform.
//!
//! * [`client`]: [`Client`] and [`Session`]: a connection that follows
//!   redirects and handoffs, reconnects with backoff, re-subscribes and
//!   refreshes its token, yielding [`Event`]s.
//! * [`coordinator`]: [`CoordinatorClient`]: `route`, batch `status`, `nodes`, `ring`.
//! * [`connection`]: [`Connection`]: one authenticated WebSocket to a ws-node,
//!   with typed messages in and out and the close code when it ends.
//! * [`error`]: the SDK's [`Error`] type.
//!
//! Every timestamp is milliseconds since the Unix epoch; every user ID is
//! validated before it leaves the client.

pub mod client;
pub mod connection;
pub mod coordinator;
pub mod error;
pub mod idle;

pub use client::{Backoff, Client, ConnectOptions, Event, ReconnectReason, Session, TokenSource};
pub use connection::{Connection, Frame, TokenPlacement};
pub use coordinator::CoordinatorClient;
pub use error::Error;
pub use idle::IdleTimer;
pub use presence_model::api::{NodeView, PresenceView, Route};
pub use presence_model::wire::{ClientMessage, ServerMessage};
pub use presence_model::{Availability, Devices, UserId};

/// The README's examples, compiled as doctests so that the quick start cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
