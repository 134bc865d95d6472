//! The floors of the fan-out path, measured on the same machine and the same
//! servers as the product: how fast a bare Redis pub/sub message and a bare
//! librdkafka produce-to-consume go, with nothing of the product in between.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use crate::percentile;

/// Prints p50, p99 and max of `l` (sorted here).
pub fn report(what: &str, l: &mut [Duration], sent: usize) {
    l.sort();
    if l.is_empty() {
        println!("  {what}: nothing received of {sent}");
        return;
    }
    println!(
        "  {what:<46} {} of {sent}; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        percentile(l, 0.5),
        percentile(l, 0.99),
        percentile(l, 1.0)
    );
}

/// The send times of `total` messages at `rate` per second, as offsets.
fn schedule(rate: u32, total: usize) -> impl Iterator<Item = Duration> {
    (0..total).map(move |i| Duration::from_secs_f64(i as f64 / f64::from(rate)))
}

/// Reads `total` messages (or until 5 s pass without one): for each, how long
/// since it was sent, by the send time (µs since `start`) it carries.
async fn receive<S: futures_util::Stream + Unpin>(
    mut stream: S,
    total: usize,
    start: Instant,
    sent_us: impl Fn(S::Item) -> Option<u64>,
) -> Vec<Duration> {
    let mut got = Vec::with_capacity(total);
    while got.len() < total {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(m)) => {
                if let Some(us) = sent_us(m) {
                    got.push(start.elapsed().saturating_sub(Duration::from_micros(us)));
                }
            }
            _ => break,
        }
    }
    got
}

/// PUBLISH on one connection, SUBSCRIBE on another: publish to receipt.
pub async fn redis(url: &str, rate: u32, seconds: u32) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let channel = format!("bench-floor-{}", std::process::id());
    let mut sub = client.get_async_pubsub().await?;
    sub.subscribe(&channel).await?;
    let mut publisher = client.get_multiplexed_async_connection().await?;
    let total = (rate * seconds) as usize;
    let start = Instant::now();
    let receiver =
        tokio::spawn(async move { receive(sub.on_message(), total, start, |m| m.get_payload::<u64>().ok()).await });
    for at in schedule(rate, total) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(start + at)).await;
        let sent_us = start.elapsed().as_micros() as u64;
        redis::cmd("PUBLISH").arg(&channel).arg(sent_us).exec_async(&mut publisher).await?;
    }
    let mut got = receiver.await?;
    report("bare Redis PUBLISH -> SUBSCRIBE", &mut got, total);
    Ok(())
}

/// `KAFKA_LINGER_MS` as the product's processes read it, so that the
/// floor's producer and the benchmark's in-process nodes batch like the
/// binaries this program starts (they inherit the variable).
pub fn linger_from_env() -> Option<Duration> {
    std::env::var("KAFKA_LINGER_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis)
}

/// librdkafka produce (the product's producer settings) to `readers`
/// consumers, each assigned every partition (the product's consumer
/// settings), timed at the first. With as many readers as the product has
/// nodes, the broker serves the same number of fetches as under the product,
/// which on a broker short of CPU is most of the latency.
pub async fn kafka(brokers: &str, partitions: i32, readers: usize, rate: u32, seconds: u32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let topic = format!("bench-floor-{}-{partitions}", std::process::id());
    let mut c = presence_kafka::KafkaConfig::new(brokers);
    c.topic = topic.clone();
    c.partitions = partitions;
    if let Some(linger) = linger_from_env() {
        c.linger = linger;
    }
    let admin: AdminClient<_> = c.admin().create()?;
    let new = NewTopic::new(&topic, partitions, TopicReplication::Fixed(1));
    admin.create_topics(&[new], &AdminOptions::new()).await?;
    let producer: FutureProducer = c.producer().create()?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(&topic, p, rdkafka::Offset::End)?;
    }
    let consumer: StreamConsumer = c.consumer("floor").create()?;
    consumer.assign(&assignment)?;
    // The other readers read everything too, and throw it away. They are
    // told to stop and awaited, so that each consumer is dropped by its own
    // task after its stream: a consumer dropped by an aborted task crashed
    // the process at exit.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut others = Vec::new();
    for r in 1..readers.max(1) {
        let other: StreamConsumer = c.consumer(&format!("floor-{r}")).create()?;
        other.assign(&assignment)?;
        let mut stopped = stopped.clone();
        others.push(tokio::spawn(async move {
            let mut stream = other.stream();
            loop {
                tokio::select! {
                    m = stream.next() => if m.is_none() { break },
                    _ = stopped.changed() => break,
                }
            }
            drop(stream);
            drop(other);
        }));
    }
    // Let the consumer reach the end of every partition before sending.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let total = (rate * seconds) as usize;
    let start = Instant::now();
    let receiver = tokio::spawn(async move {
        let sent_us = |m: Result<rdkafka::message::BorrowedMessage<'_>, _>| {
            m.ok()?.payload().and_then(|p| std::str::from_utf8(p).ok()).and_then(|s| s.parse().ok())
        };
        receive(consumer.stream(), total, start, sent_us).await
    });
    for (i, at) in schedule(rate, total).enumerate() {
        tokio::time::sleep_until(tokio::time::Instant::from_std(start + at)).await;
        let payload = (start.elapsed().as_micros() as u64).to_string();
        let key = format!("user-{i}");
        let record = FutureRecord::to(&topic).key(&key).payload(&payload);
        // Enqueued now; the delivery report is not awaited one by one (the
        // product does not wait for each either), so its future is dropped.
        drop(producer.send_result(record).map_err(|(e, _)| e).context("enqueue")?);
    }
    let mut got = receiver.await?;
    let _ = stop.send(true);
    for o in others {
        o.await?;
    }
    let readers = match readers {
        0 | 1 => String::new(),
        n => format!(", {n} readers"),
    };
    report(&format!("bare librdkafka produce -> consume ({partitions} partitions{readers})"), &mut got, total);
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    Ok(())
}
