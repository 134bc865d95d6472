//! [`KafkaBus`]: the bus on Kafka.
//!
//! Publishing never waits: an event goes into librdkafka's bounded queue
//! (`queue.buffering.max.messages`), which keeps retrying while the broker is
//! away. A full queue fails the publish with [`BusError::Full`]; an event
//! given up after `message.timeout.ms` is counted in `delivery_errors`. Either
//! way the subscribers elsewhere converge through their resync.
//!
//! Each subscriber runs one consumer assigned every partition of the topic
//! from its end, feeding a bounded channel (when full, consumption waits:
//! Kafka keeps the events). After the assignment, and whenever the broker
//! comes back after errors, the subscriber gets [`BusMessage::Resync`].
//! Dropping the subscription stops its consumer.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use presence_backend::{Bus, BusError, BusMessage, BusStats, BusSubscription};
use presence_model::StatusEvent;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::KafkaConfig;

/// Events a subscriber may have buffered before consumption waits for it.
const SUBSCRIBER_BUFFER: usize = 4096;

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    delivered: AtomicU64,
    delivery_errors: AtomicU64,
    received: AtomicU64,
    /// Events not yet read by the subscriber, as of the last check.
    consumer_lag: AtomicU64,
    /// Cleared on errors, set again on the next success.
    healthy: AtomicBool,
}

/// Counts deliveries as librdkafka reports them.
struct DeliveryCounter {
    stats: Arc<Stats>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                self.stats.healthy.store(true, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "status event not delivered; subscribers catch up by resync");
            }
        }
    }
}

/// The Kafka bus. One producer per process; one consumer per subscriber.
pub struct KafkaBus {
    config: KafkaConfig,
    producer: Arc<ThreadedProducer<DeliveryCounter>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

impl KafkaBus {
    /// Creates the producer and makes sure the topic exists (created with the
    /// configured partitions if missing). A broker that is down at start is
    /// not fatal: events queue and the topic is created on first use by the
    /// broker's auto-creation, or at the next start.
    pub async fn connect(config: KafkaConfig) -> Result<Self, BusError> {
        let stats = Arc::new(Stats::default());
        let producer: ThreadedProducer<DeliveryCounter> = config
            .producer()
            .create_with_context(DeliveryCounter { stats: stats.clone() })
            .map_err(|e| BusError::Unavailable(format!("Kafka producer: {e}")))?;
        let bus = Self { config, producer: Arc::new(producer), stats, stop: CancellationToken::new() };
        match bus.ensure_topic().await {
            Ok(()) => bus.stats.healthy.store(true, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "could not check the topic now; continuing"),
        }
        Ok(bus)
    }

    /// Creates the topic if it does not exist.
    pub async fn ensure_topic(&self) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> =
            self.config.admin().create().map_err(|e| BusError::Unavailable(format!("Kafka admin: {e}")))?;
        let topic =
            NewTopic::new(&self.config.topic, self.config.partitions, TopicReplication::Fixed(self.config.replication));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics(&[topic], &opts).await.map_err(|e| BusError::Unavailable(e.to_string()))?;
        for r in results {
            match r {
                Ok(name) => tracing::info!(topic = %name, partitions = self.config.partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(BusError::Unavailable(format!("creating topic {name}: {code}"))),
            }
        }
        Ok(())
    }

    /// The configuration in use.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }
}

impl Drop for KafkaBus {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Bus for KafkaBus {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn stats(&self) -> BusStats {
        BusStats {
            published: self.stats.published.load(Ordering::Relaxed),
            delivered: self.stats.delivered.load(Ordering::Relaxed),
            delivery_errors: self.stats.delivery_errors.load(Ordering::Relaxed),
            queue_depth: self.producer.in_flight_count().max(0) as u64,
            received: self.stats.received.load(Ordering::Relaxed),
            consumer_lag: self.stats.consumer_lag.load(Ordering::Relaxed),
            healthy: self.stats.healthy.load(Ordering::Relaxed),
        }
    }

    async fn publish(&self, event: StatusEvent) -> Result<(), BusError> {
        let payload = event.to_vec();
        let record = BaseRecord::to(&self.config.topic).key(event.user_id.as_str()).payload(&payload);
        match self.producer.send(record) {
            Ok(()) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(BusError::Full),
            Err((e, _)) => Err(BusError::Unavailable(e.to_string())),
        }
    }

    fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, queued = self.producer.in_flight_count(), "events left undelivered at shutdown");
        }
    }

    fn subscribe(&self) -> Box<dyn BusSubscription> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let member = format!("{}", uuid::Uuid::new_v4().simple());
        tokio::spawn(consume(self.config.clone(), member, tx, self.stats.clone(), self.stop.child_token()));
        Box::new(KafkaSubscription { rx })
    }
}

struct KafkaSubscription {
    rx: mpsc::Receiver<BusMessage>,
}

#[async_trait]
impl BusSubscription for KafkaSubscription {
    async fn next(&mut self) -> Option<BusMessage> {
        self.rx.recv().await
    }
}

/// The topic's partition count, read on a blocking thread (librdkafka blocks).
async fn partitions(prober: &Arc<BaseConsumer>, topic: &str, timeout: Duration) -> Result<usize, KafkaError> {
    let (p, t) = (prober.clone(), topic.to_string());
    let md = tokio::task::spawn_blocking(move || {
        p.client()
            .fetch_metadata(Some(&t), timeout)
            .map(|md| md.topics().iter().find(|x| x.name() == t).map(|x| x.partitions().len()).unwrap_or(0))
    })
    .await
    .map_err(|_| KafkaError::MetadataFetch(RDKafkaErrorCode::Fail))??;
    if md == 0 {
        return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition));
    }
    Ok(md)
}

/// Assigns every partition of the topic at its current high watermark.
///
/// The offsets are read here, before `assign`, rather than left to librdkafka
/// as `Offset::End`: librdkafka resolves `End` some time after `assign`
/// returns, and an event produced in between would be skipped, while the
/// resync that follows the assignment might not cover it either. With
/// explicit offsets, everything after the read arrives on the bus and the
/// resync covers everything before. A broker that under-reports its
/// watermark only makes the node read a few old events again, which their
/// sequence numbers make harmless.
async fn assign_all(
    consumer: &StreamConsumer,
    prober: &Arc<BaseConsumer>,
    topic: &str,
) -> Result<Vec<i64>, KafkaError> {
    let n = partitions(prober, topic, Duration::from_secs(5)).await?;
    let highs = high_watermarks(prober, topic, n, Duration::from_secs(5)).await?;
    let mut tpl = TopicPartitionList::new();
    for (i, high) in highs.iter().enumerate() {
        tpl.add_partition_offset(topic, i as i32, Offset::Offset(*high))?;
    }
    consumer.assign(&tpl)?;
    Ok(highs)
}

/// The high watermark (next offset to be written) of partitions `0..n`, read
/// on a blocking thread (librdkafka blocks).
async fn high_watermarks(
    prober: &Arc<BaseConsumer>,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<i64>, KafkaError> {
    let (p, t) = (prober.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        (0..n as i32)
            .map(|i| p.client().fetch_watermarks(&t, i, timeout).map(|(_, high)| high))
            .collect::<Result<Vec<i64>, _>>()
    })
    .await
    .map_err(|_| KafkaError::MetadataFetch(RDKafkaErrorCode::Fail))?
}

/// How often a subscriber checks that the broker answers.
const PROBE_EVERY: Duration = Duration::from_secs(1);

async fn consume(
    config: KafkaConfig,
    member: String,
    tx: mpsc::Sender<BusMessage>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    // The consumer, and a client of its own for metadata and watermarks: on
    // the producer's or the consumer's connection those requests queued in
    // front of produce and fetch requests, once a second.
    let clients = config.consumer(&member).create().and_then(|c| Ok((c, config.prober(&member).create()?)));
    let (consumer, prober): (StreamConsumer, BaseConsumer) = match clients {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Kafka consumer could not be created; no remote events");
            return;
        }
    };
    let prober = Arc::new(prober);
    // Assign (retrying while the broker or topic is not there yet). `next`:
    // per partition, the next offset this subscriber reads (for its lag).
    let next = loop {
        match assign_all(&consumer, &prober, &config.topic).await {
            Ok(highs) => {
                tracing::info!(topic = %config.topic, partitions = highs.len(), "consuming every partition");
                break highs;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot assign partitions yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(PROBE_EVERY) => {}
                }
            }
        }
    };
    // Anything that happened before the assignment is read from the store.
    if tx.send(BusMessage::Resync).await.is_err() {
        return;
    }
    stats.healthy.store(true, Ordering::Relaxed);
    let position =
        Arc::new(Position { next: next.into_iter().map(AtomicI64::new).collect(), degraded: AtomicBool::new(false) });
    // The probe's round trips run beside the consumer: they took up to
    // hundreds of milliseconds under load, and events waited for them when
    // they ran in this loop.
    tokio::spawn(probe(config.clone(), prober, position.clone(), tx.clone(), stats.clone(), stop.clone()));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            // The subscription was dropped: stop reading the topic for it.
            _ = tx.closed() => return,
            m = consumer.recv() => match m {
                Ok(m) => {
                    if let Some(n) = usize::try_from(m.partition()).ok().and_then(|p| position.next.get(p)) {
                        n.store(m.offset() + 1, Ordering::Relaxed);
                    }
                    let Some(payload) = m.payload() else { continue };
                    match StatusEvent::from_slice(payload) {
                        Ok(e) => {
                            stats.received.fetch_add(1, Ordering::Relaxed);
                            if tx.send(BusMessage::Event(Arc::new(e))).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, partition = m.partition(), offset = m.offset(), "skipping an unreadable event"),
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Kafka consumer error");
                    position.degraded.store(true, Ordering::Relaxed);
                    stats.healthy.store(false, Ordering::Relaxed);
                    // Errors can come back to back while a broker is away; do not spin on them.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// What a subscriber's consumer and its probe share.
struct Position {
    /// Per partition, the next offset the subscriber reads (for its lag).
    next: Vec<AtomicI64>,
    /// Set on consumer errors; cleared by the probe once the broker answers.
    degraded: AtomicBool,
}

/// Checks every [`PROBE_EVERY`] that the broker answers (consumer errors do
/// not always surface while a broker is away; a metadata round trip tells
/// for sure), asks for a resync when it is back, and measures the lag.
/// Ends with `stop` or when the subscriber is gone.
async fn probe(
    config: KafkaConfig,
    prober: Arc<BaseConsumer>,
    position: Arc<Position>,
    tx: mpsc::Sender<BusMessage>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if tx.is_closed() {
            return;
        }
        let up = partitions(&prober, &config.topic, Duration::from_millis(800)).await.is_ok();
        let was_degraded = position.degraded.swap(!up, Ordering::Relaxed);
        if up && was_degraded {
            tracing::info!("Kafka is back; resyncing from the store");
            if tx.send(BusMessage::Resync).await.is_err() {
                return;
            }
        } else if !up && !was_degraded {
            tracing::warn!("Kafka does not answer; local counting goes on, events queue");
        }
        stats.healthy.store(up, Ordering::Relaxed);
        if up {
            let n = position.next.len();
            if let Ok(highs) = high_watermarks(&prober, &config.topic, n, Duration::from_millis(800)).await {
                let lag: i64 =
                    highs.iter().zip(&position.next).map(|(h, n)| (h - n.load(Ordering::Relaxed)).max(0)).sum();
                stats.consumer_lag.store(lag as u64, Ordering::Relaxed);
            }
        }
    }
}
