//! The Redis store: routing table, membership, per-user presence and the
//! leader lease, on a single Redis or a Redis Cluster.
//!
//! * [`keys`]: the key schema (every multi-key script stays in one hash tag).
//! * [`scripts`]: the Lua scripts in `lua/`, run with `EVALSHA`.
//! * [`store`]: [`RedisStore`], the [`presence_backend::Store`] implementation.
//! * `live`: the live feed (pub/sub on each user's channel; the fast path).
//!
//! See `redis/README.md` for the schema, the TTLs and the reasons.

pub mod keys;
mod live;
pub mod scripts;
pub mod store;

pub use store::{connect, RedisConfig, RedisStore, TlsFiles};
