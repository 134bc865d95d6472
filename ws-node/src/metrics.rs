//! The node's Prometheus metrics. One registry per node (the demo runs
//! several nodes in one process). Labels are bounded sets, never user IDs.

use presence_http::metric::{counter, counter_vec, gauge};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};

/// Every metric the node exports; see each field's help text.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Live authenticated connections.
    pub connections: IntGauge,
    /// Users with at least one connection here.
    pub users: IntGauge,
    /// Vnodes this node owns in the current table.
    pub vnodes_owned: IntGauge,
    /// Authenticated connections accepted.
    pub connects: IntCounter,
    /// Authenticated connections closed.
    pub disconnects: IntCounter,
    /// Authentication failures by reason.
    pub auth_failures: IntCounterVec,
    /// `error` messages sent to clients, by code.
    pub client_errors: IntCounterVec,
    /// Clients dropped as slow consumers: a write that missed its deadline, or
    /// a full queue of messages other than status and count.
    pub slow_consumers: IntCounter,
    /// Pending `status` messages replaced by a newer one before they were sent.
    pub statuses_conflated: IntCounter,
    /// Clients sent to another node with `redirect`.
    pub redirects: IntCounter,
    /// Offline statuses held back for the offline grace (`OFFLINE_GRACE_MS`).
    pub offline_held: IntCounter,
    /// Users not added to the unique-user counts: the buffer was full or the store failed.
    pub unique_dropped: IntCounter,
    /// Statuses users set (`setStatus`) and expiries the node cleared.
    pub status_sets: IntCounter,
    /// Connections told to `reconnect` elsewhere (handoff or drain).
    pub handoffs: IntCounter,
    /// Store operations that failed.
    pub store_errors: IntCounter,
    /// Count batches the writer sent to the store (each one pipelined round trip).
    pub store_writes: IntCounter,
    /// User counts written to the store (one script call each, pipelined in their batch).
    pub store_updates: IntCounter,
    /// Users whose count is waiting to be written to the store.
    pub store_pending: IntGauge,
    /// Times the pending-write buffer overflowed (a full resync follows).
    pub store_overflows: IntCounter,
    /// Events published to the bus.
    pub events_published: IntCounter,
    /// Events the bus refused (full queue or unavailable).
    pub bus_errors: IntCounter,
    /// Events received from the bus.
    pub events_received: IntCounter,
    /// States dropped as duplicate or older than the one held.
    pub events_stale: IntCounter,
    /// Bus events not trusted, by reason (`seq_ahead`, `unknown_node`).
    pub events_rejected: IntCounterVec,
    /// Resyncs of held users from the store.
    pub resyncs: IntCounter,
    /// Changes heard on the live feed (the fast path).
    pub live_changes: IntCounter,
    /// Gaps on the live feed (lost connection, overflow): watched users re-read.
    pub live_gaps: IntCounter,
    /// Users this node follows on the live feed.
    pub live_followed: IntGauge,
    /// Events the bus confirmed delivered.
    pub bus_delivered: IntCounter,
    /// Events the bus gave up on after retrying.
    pub bus_delivery_errors: IntCounter,
    /// Events waiting in the bus producer's queue.
    pub bus_queue_depth: IntGauge,
    /// Events on the bus this node has not read yet (Kafka consumer lag).
    pub bus_consumer_lag: IntGauge,
    /// How long each store operation took, by operation (`presence_store_seconds{op}`).
    pub store_seconds: HistogramVec,
    /// From a change in the store (its `seq`, the store's clock) to its status
    /// being queued for this node's watchers.
    pub fanout_latency: Histogram,
    /// 1 while the bus answers.
    pub bus_up: IntGauge,
    /// 1 while the node is fenced (its registration lapsed).
    pub fenced: IntGauge,
    /// Times the node fenced itself.
    pub fences: IntCounter,
    /// Differences between local counts and the store that the reconciler repaired.
    pub count_repairs: IntCounter,
    /// Users the store counted on this node with no connection here, zeroed by the reconciler.
    pub ghosts_reaped: IntCounter,
}

impl Metrics {
    /// Copies the bus's own counters in, just before a scrape.
    pub fn observe_bus(&self, stats: &presence_backend::BusStats) {
        let catch_up = |c: &IntCounter, now: u64| c.inc_by(now.saturating_sub(c.get()));
        catch_up(&self.bus_delivered, stats.delivered);
        catch_up(&self.bus_delivery_errors, stats.delivery_errors);
        self.bus_queue_depth.set(stats.queue_depth as i64);
        self.bus_consumer_lag.set(stats.consumer_lag as i64);
        self.bus_up.set(i64::from(stats.healthy));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            connections: gauge(&r, "presence_connections", "Live authenticated WebSocket connections on this node."),
            users: gauge(&r, "presence_users", "Users with at least one connection on this node."),
            vnodes_owned: gauge(&r, "presence_vnodes_owned", "Vnodes this node owns in its routing table."),
            connects: counter(&r, "presence_connects_total", "Authenticated connections accepted."),
            disconnects: counter(&r, "presence_disconnects_total", "Authenticated connections closed."),
            auth_failures: counter_vec(
                &r,
                "presence_auth_failures_total",
                "Authentication failures by reason.",
                &["reason"],
            ),
            client_errors: counter_vec(
                &r,
                "presence_client_errors_total",
                "Error messages sent to clients, by code.",
                &["code"],
            ),
            slow_consumers: counter(
                &r,
                "presence_slow_consumers_total",
                "Clients dropped as slow consumers (a write missed its deadline, or the message queue filled).",
            ),
            statuses_conflated: counter(
                &r,
                "presence_statuses_conflated_total",
                "Pending status messages replaced by a newer status of the same user before they were sent.",
            ),
            redirects: counter(&r, "presence_redirects_total", "Clients redirected to the owning node."),
            offline_held: counter(
                &r,
                "presence_offline_held_total",
                "Offline statuses held back for the offline grace period.",
            ),
            unique_dropped: counter(
                &r,
                "presence_unique_dropped_total",
                "Users not added to the unique-user counts (buffer full or store failed).",
            ),
            status_sets: counter(
                &r,
                "presence_status_sets_total",
                "Statuses users set, and lapsed statuses the node cleared.",
            ),
            handoffs: counter(&r, "presence_handoffs_total", "Connections told to reconnect to another node."),
            store_errors: counter(&r, "presence_store_errors_total", "Store operations that failed."),
            store_writes: counter(
                &r,
                "presence_store_writes_total",
                "Count batches written to the store (one pipelined round trip each).",
            ),
            store_updates: counter(&r, "presence_store_updates_total", "User counts written to the store."),
            store_pending: gauge(
                &r,
                "presence_store_pending_users",
                "Users whose count waits to be written to the store.",
            ),
            store_overflows: counter(
                &r,
                "presence_store_buffer_overflows_total",
                "Pending-write buffer overflows (each forces a full resync).",
            ),
            events_published: counter(&r, "presence_events_published_total", "Status events published to the bus."),
            bus_errors: counter(&r, "presence_bus_errors_total", "Status events the bus refused."),
            events_received: counter(&r, "presence_events_received_total", "Status events received from the bus."),
            events_stale: counter(&r, "presence_events_stale_total", "States dropped as duplicate or stale."),
            events_rejected: counter_vec(
                &r,
                "presence_events_rejected_total",
                "Bus events not trusted: a seq far ahead of the clock, or a writer the routing table does not know.",
                &["reason"],
            ),
            resyncs: counter(&r, "presence_resyncs_total", "Resyncs of held users from the store."),
            live_changes: counter(&r, "presence_live_changes_total", "Changes heard on the live feed (the fast path)."),
            live_gaps: counter(
                &r,
                "presence_live_gaps_total",
                "Gaps on the live feed (lost connection or overflow); watched users were re-read.",
            ),
            live_followed: gauge(&r, "presence_live_followed_users", "Users this node follows on the live feed."),
            bus_delivered: counter(&r, "presence_bus_delivered_total", "Status events the bus confirmed delivered."),
            bus_delivery_errors: counter(
                &r,
                "presence_bus_delivery_errors_total",
                "Status events the bus gave up on after retrying.",
            ),
            bus_queue_depth: gauge(
                &r,
                "presence_bus_queue_depth",
                "Status events waiting in the bus producer's queue.",
            ),
            bus_consumer_lag: gauge(
                &r,
                "presence_bus_consumer_lag",
                "Events on the bus this node has not read yet (Kafka: high watermarks minus next offsets).",
            ),
            store_seconds: presence_http::metric::store_seconds(&r),
            fanout_latency: presence_http::metric::histogram(
                &r,
                "presence_fanout_latency_seconds",
                "From a change in the store to its status queued for this node's watchers.",
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
            ),
            bus_up: gauge(&r, "presence_bus_up", "1 while the event bus answers."),
            fenced: gauge(&r, "presence_node_fenced", "1 while the node is fenced: its registration lapsed."),
            fences: counter(
                &r,
                "presence_node_fences_total",
                "Times the node fenced itself after its registration lapsed.",
            ),
            count_repairs: counter(
                &r,
                "presence_count_repairs_total",
                "Per-user counts in the store that differed from this node's and were rewritten.",
            ),
            ghosts_reaped: counter(
                &r,
                "presence_ghosts_reaped_total",
                "Users the store counted on this node with no connection here, zeroed.",
            ),
            registry: r,
        }
    }
}
