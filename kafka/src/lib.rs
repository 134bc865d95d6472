//! The Kafka event bus (`kafka/README.md`): every presence change as a JSON
//! event on topic `user_status_events`, key = user ID, read by every node
//! from every partition.
//!
//! * [`KafkaConfig`]: brokers, topic, partitions and the client settings.
//! * [`KafkaBus`]: the [`presence_backend::Bus`] implementation.
//!
//! See `kafka/README.md` for the topic and client settings and why.

mod bus;
mod config;

pub use bus::KafkaBus;
pub use config::{KafkaConfig, Security};
