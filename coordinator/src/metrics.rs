//! The coordinator's Prometheus metrics (one registry per coordinator).
//! Labels are fixed sets: route names and status classes, never user IDs.

use presence_http::metric::{counter, counter_vec, gauge, histogram};
use prometheus::{Histogram, IntCounter, IntGauge, Registry};

/// Every metric the coordinator exports.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// HTTP requests by route and status class, resolved once (a label
    /// lookup per request cost measurable `/route` throughput).
    requests: Vec<IntCounter>,
    /// `/route` latency, single and batch.
    pub route_seconds: Histogram,
    /// How long each store operation took, by operation.
    pub store_seconds: prometheus::HistogramVec,
    /// 1 while this coordinator holds the leader lease.
    pub leader: IntGauge,
    /// Live ws-nodes.
    pub live_nodes: IntGauge,
    /// Current routing epoch.
    pub epoch: IntGauge,
    /// Routing-table changes written by this coordinator.
    pub rebalances: IntCounter,
    /// Vnodes moved by this coordinator.
    pub vnode_moves: IntCounter,
    /// Dead nodes counted out.
    pub dead_nodes: IntCounter,
    /// Nodes found gone before their TTL (their address refused connections).
    pub refused_nodes: IntCounter,
    /// Leader writes the store refused because another coordinator held the lease.
    pub fenced_writes: IntCounter,
    /// Times the control loop panicked and was restarted.
    pub control_restarts: IntCounter,
    /// Store operations that failed.
    pub store_errors: IntCounter,
    /// Leave events the bus refused while counting out a dead node.
    pub bus_errors: IntCounter,
    /// `/route` requests that reported their user's node unreachable, by outcome.
    pub route_reports: RouteReports,
    /// `/route` requests waiting for a reported node's users to move.
    pub route_waiting: IntGauge,
    /// Admin requests refused for a missing or wrong API key.
    pub unauthorized: IntCounter,
    /// Open dashboard pages.
    pub dashboard_clients: IntGauge,
    /// Dashboard feed entries dropped for pages that read too slowly.
    pub dashboard_dropped: IntCounter,
}

/// What became of `/route` requests that reported a node unreachable
/// (`crate::suspects`), one counter per outcome.
pub struct RouteReports {
    /// The table already routed the user elsewhere.
    pub moved: IntCounter,
    /// The node's address accepted the coordinator's probe: answered at once.
    pub alive: IntCounter,
    /// Waited, and answered once the user's vnode moved.
    pub released: IntCounter,
    /// Waited `ROUTE_WAIT_MS` and nothing moved: answered with the same route.
    pub timed_out: IntCounter,
    /// `ROUTE_WAITERS` requests were already waiting: answered at once.
    pub full: IntCounter,
}

/// The `route` label values of `presence_http_requests_total`.
pub const ROUTES: [&str; 10] =
    ["dashboard", "route", "presence", "nodes", "ring", "healthz", "readyz", "metrics", "unauthorized", "other"];
/// Its `status` label values.
const CLASSES: [&str; 3] = ["2xx", "4xx", "5xx"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts a request to `route` (one of [`ROUTES`]; anything else counts
    /// as `other`) answered with `status`.
    pub fn request(&self, route: &str, status: u16) {
        let r = ROUTES.iter().position(|&x| x == route).unwrap_or(ROUTES.len() - 1);
        let c = match status {
            200..=299 => 0,
            400..=499 => 1,
            _ => 2,
        };
        self.requests[r * CLASSES.len() + c].inc();
    }

    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            requests: {
                let v = counter_vec(
                    &r,
                    "presence_http_requests_total",
                    "Coordinator HTTP requests by route and status class.",
                    &["route", "status"],
                );
                ROUTES.iter().flat_map(|route| CLASSES.map(|class| v.with_label_values(&[route, class]))).collect()
            },
            store_seconds: presence_http::metric::store_seconds(&r),
            route_seconds: histogram(
                &r,
                "presence_route_duration_seconds",
                "Time to answer /route (single and batch).",
                &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05],
            ),
            leader: gauge(&r, "presence_coordinator_leader", "1 while this coordinator holds the leader lease."),
            live_nodes: gauge(&r, "presence_live_nodes", "Live ws-nodes."),
            epoch: gauge(&r, "presence_routing_epoch", "Current routing-table epoch."),
            rebalances: counter(&r, "presence_rebalances_total", "Routing-table changes written by this coordinator."),
            vnode_moves: counter(&r, "presence_vnode_moves_total", "Vnodes moved by this coordinator."),
            dead_nodes: counter(&r, "presence_dead_nodes_total", "Dead nodes whose connections were counted out."),
            refused_nodes: counter(
                &r,
                "presence_refused_nodes_total",
                "Nodes found gone before their TTL: silent, and their address refused connections.",
            ),
            control_restarts: counter(
                &r,
                "presence_control_restarts_total",
                "Times the control loop panicked and was restarted.",
            ),
            fenced_writes: counter(
                &r,
                "presence_fenced_writes_total",
                "Leader writes refused by the store because another coordinator held the lease.",
            ),
            store_errors: counter(&r, "presence_store_errors_total", "Store operations that failed."),
            bus_errors: counter(&r, "presence_bus_errors_total", "Leave events the bus refused."),
            unauthorized: counter(
                &r,
                "presence_admin_unauthorized_total",
                "Admin API requests refused for a missing or wrong API key.",
            ),
            route_reports: {
                let v = counter_vec(
                    &r,
                    "presence_route_reports_total",
                    "/route requests that reported their user's node unreachable, by outcome.",
                    &["outcome"],
                );
                let c = |o: &str| v.with_label_values(&[o]);
                RouteReports {
                    moved: c("moved"),
                    alive: c("alive"),
                    released: c("released"),
                    timed_out: c("timed_out"),
                    full: c("full"),
                }
            },
            route_waiting: gauge(
                &r,
                "presence_route_waiting",
                "/route requests waiting for a reported node's users to move.",
            ),
            dashboard_clients: gauge(&r, "presence_dashboard_clients", "Open dashboard pages."),
            dashboard_dropped: counter(
                &r,
                "presence_dashboard_dropped_total",
                "Dashboard feed entries dropped for slow pages.",
            ),
            registry: r,
        }
    }
}
