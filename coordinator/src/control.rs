//! The control loop. Every coordinator refreshes its view of the live nodes;
//! the leader (lease holder) also:
//!
//! * writes the table back when the store lost it (same owners, epoch + 1,
//!   a new generation so that every reader adopts it);
//! * runs one rebalance round and writes the result by compare-and-set;
//! * counts out nodes whose registration expired: their presence entries are
//!   removed and a `leave` event (reason `node_lost`) goes out per user;
//! * finds dead nodes before their registration expires: a node silent for
//!   `FAST_DEATH_MS` whose address refuses connections has no process
//!   listening there (killed, crashed, its port closed), so its registration
//!   is removed and the same tick moves its vnodes and counts it out. A node
//!   that is merely unreachable (a partition, a host down: connections time
//!   out rather than being refused) still waits for its TTL, and a node that
//!   heartbeats is never taken for dead, whatever the probe says, with one
//!   exception: when the leader's link to a node ([`crate::links`]) was up,
//!   closed, and the address then refused, the process behind it is gone,
//!   and the node is dead at once (unless it is draining). While
//!   clients report a node they cannot reach and it refuses connections
//!   ([`crate::suspects`]), the loop runs every 100 ms instead of every tick.
//!
//! Every write of the leader names its lease holder; the store refuses it
//! once another coordinator holds the lease (a leader paused past its lease
//! cannot act when it resumes). A refusal ends the leader's work at once.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use presence_backend::StoreError;
use presence_model::{EventReason, NodeRecord, RoutingTable, StatusEvent, VNODES};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::rebalance::{self, NodeInput};
use crate::Coordinator;

/// Runs the control loop until `shutdown`, restarting it (after a second)
/// if it panics: a bug or a record nobody foresaw must not leave the cluster
/// without assignment while `/healthz` says all is well. `/readyz` reports
/// the loop down meanwhile; restarts are counted.
pub async fn supervise(coord: Arc<Coordinator>, shutdown: CancellationToken) {
    let c = coord.clone();
    let down = move |is_down: bool| {
        c.control_down.store(is_down, Ordering::Relaxed);
        if is_down {
            c.metrics.control_restarts.inc();
        }
    };
    supervised(|| run(coord.clone(), shutdown.clone()), down, shutdown.clone()).await;
}

/// Runs the task `start` makes until it returns; when it panics, tells
/// `down(true)`, waits a second and starts it again (`down(false)` once it runs).
async fn supervised<F, Fut>(start: F, down: impl Fn(bool), shutdown: CancellationToken)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let task = tokio::spawn(start());
        down(false);
        match task.await {
            Err(e) if e.is_panic() => {
                tracing::error!(error = %e, "the control loop panicked; restarting it in a second");
                down(true);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
            _ => return,
        }
    }
}

/// Runs until `shutdown`.
pub async fn run(coord: Arc<Coordinator>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(coord.config.tick);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        // While a node that clients reported refuses connections, look more
        // often: it is counted dead as soon as the rule holds.
        let suspected = coord.suspects.any_refusing();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = coord.suspects.wake.notified() => {}
            _ = coord.links.wake.notified() => {}
            _ = tokio::time::sleep(crate::suspects::SUSPECT_TICK), if suspected => {}
        }
        let ok = match step(&coord).await {
            Ok(()) => true,
            Err(e) => {
                coord.metrics.store_errors.inc();
                if coord.store_ok() {
                    tracing::warn!(coordinator = %coord.config.id, error = %e, "store unreachable; serving routes from the cached table");
                }
                false
            }
        };
        coord.store_ok.store(ok, Ordering::Relaxed);
    }
}

/// One tick.
pub async fn step(coord: &Coordinator) -> Result<(), StoreError> {
    let nodes = coord.store.live_nodes().await?;
    coord.set_nodes(nodes.clone());
    let leader = coord.store.acquire_lease(&coord.holder, coord.config.lease_ttl).await?;
    set_leader(coord, leader);
    if leader && !coord.config.fast_death.is_zero() {
        coord.links.keep(&nodes);
    } else {
        coord.links.drop_all();
    }
    let now = presence_model::time::now_ms();
    if leader {
        // The peak is sampled here, once a tick, from the nodes' own reports.
        coord.store.record_peak(nodes.iter().map(|n| n.connections).sum(), now).await?;
    }
    coord.set_activity(coord.store.activity(now).await?);
    if !leader {
        return Ok(());
    }
    let nodes = without_refusing(coord, nodes).await?;
    let work = async {
        rebalance_round(coord, &nodes).await?;
        count_out_dead(coord, &nodes).await
    };
    match work.await {
        Err(StoreError::NotLeader(_)) => {
            coord.metrics.fenced_writes.inc();
            tracing::warn!(coordinator = %coord.holder, "the store refused a write: another coordinator holds the lease");
            set_leader(coord, false);
        }
        other => other?,
    }
    coord.metrics.epoch.set(coord.table.epoch() as i64);
    Ok(())
}

fn set_leader(coord: &Coordinator, leader: bool) {
    if leader != coord.is_leader() {
        tracing::info!(coordinator = %coord.holder, leader, "leadership changed");
    }
    coord.leader.store(leader, Ordering::Relaxed);
    coord.metrics.leader.set(i64::from(leader));
}

/// A generation name for a table lineage that starts here.
fn new_generation() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn rebalance_round(coord: &Coordinator, nodes: &[NodeRecord]) -> Result<(), StoreError> {
    let stored = coord.store.load_table().await?;
    if let Some(t) = &stored {
        t.validate().map_err(|e| StoreError::Corrupt(e.to_string()))?;
    }
    // The store lost the table (restart without persistence): write ours back,
    // same owners, in a new generation (another coordinator may write back an
    // older copy; readers must adopt whatever the store now holds).
    let current = match (stored, coord.table.get()) {
        (None, Some(cached)) if cached.epoch > 0 => {
            let mut back = (*cached).clone().in_generation(new_generation());
            back.epoch += 1;
            if coord.store.swap_table(None, &back, Some(&coord.holder)).await? {
                tracing::warn!(epoch = back.epoch, "store had no routing table; wrote the cached one back");
                coord.table.offer(back);
            }
            return Ok(());
        }
        (stored, _) => stored,
    };
    let expected = current.as_ref().map(|t| t.epoch);
    let current = current.unwrap_or_else(|| RoutingTable::empty(0).in_generation(new_generation()));
    let owners = current.owner_ids();
    let mut load = vec![0u32; VNODES];
    for n in nodes {
        for &(v, l) in &n.vnode_load {
            if let Some(slot) = load.get_mut(v as usize) {
                *slot = slot.saturating_add(l);
            }
        }
    }
    let inputs: Vec<NodeInput> = nodes
        .iter()
        .map(|n| NodeInput { id: n.id.clone(), capacity: n.capacity, pinned: n.pinned.clone(), draining: n.draining })
        .collect();
    let plan = rebalance::plan(&owners, &inputs, &load, &coord.config.policy);
    let url_of = |id: &str| nodes.iter().find(|n| n.id == id).map(|n| n.url.clone()).unwrap_or_default();
    let new_owners: Vec<Option<&str>> = plan.owners.iter().map(|o| o.as_deref()).collect();
    let next =
        RoutingTable::from_owners(current.epoch + 1, &new_owners, url_of).in_generation(current.generation.clone());
    let urls_changed = next.nodes.iter().any(|n| current.node(&n.id).is_none_or(|c| c.url != n.url));
    if new_owners == owners && !urls_changed && expected.is_some() {
        coord.table.offer(current);
        return Ok(());
    }
    if coord.store.swap_table(expected, &next, Some(&coord.holder)).await? {
        coord.metrics.rebalances.inc();
        coord.metrics.vnode_moves.inc_by(plan.moves.len() as u64);
        tracing::info!(
            epoch = next.epoch,
            moves = plan.moves.len(),
            nodes = nodes.len(),
            capped = plan.capped,
            "routing table changed"
        );
        coord.table.offer(next);
    } else {
        tracing::info!("routing table changed under us; next tick retries");
    }
    Ok(())
}

/// The fast failure detector (see the module's doc): removes the
/// registrations of silent nodes whose address refuses connections, and
/// returns the other nodes.
async fn without_refusing(coord: &Coordinator, nodes: Vec<NodeRecord>) -> Result<Vec<NodeRecord>, StoreError> {
    let silence = coord.config.fast_death.as_millis() as u64;
    if silence == 0 {
        return Ok(nodes);
    }
    let now = presence_model::time::now_ms();
    // Only the run the link was made to: a node restarted under its ID since is another process.
    let lost = coord.links.take_lost();
    let lost_run = |n: &NodeRecord| lost.contains(&(n.id.clone(), n.run_id.clone()));
    let silent: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| now.saturating_sub(n.heartbeat_ms) >= silence || (lost_run(n) && !n.draining))
        .collect();
    if silent.is_empty() {
        return Ok(nodes);
    }
    let mut probes = tokio::task::JoinSet::new();
    for n in silent {
        let (id, url) = (n.id.clone(), n.url.clone());
        probes.spawn(async move { (id, crate::probe::refuses(&url).await) });
    }
    let mut gone = HashSet::new();
    while let Some(probe) = probes.join_next().await {
        if let Ok((id, true)) = probe {
            gone.insert(id);
        }
    }
    for id in &gone {
        coord.store.deregister(id).await?;
        coord.metrics.refused_nodes.inc();
        let why = if lost.iter().any(|(l, _)| l == id) { "its link closed" } else { "it is silent" };
        tracing::warn!(node = %id, why, "node's address refuses connections: dead before its TTL");
    }
    Ok(nodes.into_iter().filter(|n| !gone.contains(&n.id)).collect())
}

async fn count_out_dead(coord: &Coordinator, nodes: &[NodeRecord]) -> Result<(), StoreError> {
    let live: HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let mut candidates: Vec<String> =
        coord.store.nodes_with_presence().await?.into_iter().filter(|n| !live.contains(n.as_str())).collect();
    if candidates.is_empty() {
        return Ok(());
    }
    // A node may have registered since the tick began; look again before counting anyone out.
    // (Counting out a live node is still safe, only wasteful: its next heartbeat makes it rewrite its counts.)
    let live_now: HashSet<String> = coord.store.live_nodes().await?.into_iter().map(|n| n.id).collect();
    candidates.retain(|n| !live_now.contains(n));
    for dead in candidates {
        let now = presence_model::time::now_ms();
        let changes = coord.store.purge_node(&dead, now, &coord.holder).await?;
        coord.metrics.dead_nodes.inc();
        tracing::warn!(node = %dead, users = changes.len(), "node is dead; counted its connections out");
        for c in changes {
            let event =
                StatusEvent::from_change(&c, &dead, None, coord.table.epoch(), now, Some(EventReason::NodeLost));
            if let Err(e) = coord.bus.publish(event).await {
                coord.metrics.bus_errors.inc();
                tracing::warn!(error = %e, "leave event not published; subscribers catch up at their next resync");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use presence_backend::{CountUpdate, MemoryBus, MemoryStore, Store};
    use presence_model::UserId;

    use super::*;
    use crate::CoordinatorConfig;

    /// A leader that was paused while another coordinator took the lease acts
    /// on stale beliefs when it resumes; the store must refuse every write.
    #[tokio::test]
    async fn a_leader_that_lost_its_lease_cannot_count_out_or_write_the_table() {
        let store = MemoryStore::new();
        let coord =
            Coordinator::new(CoordinatorConfig::default(), Arc::new(store.clone()), Arc::new(MemoryBus::default()));
        let user = UserId::parse("alice").expect("valid");
        store.set_counts("dead-node", &[CountUpdate::new(user.clone(), 1)], 1).await.expect("up");
        assert!(store.acquire_lease(&coord.holder, Duration::from_secs(30)).await.expect("up"));
        // Paused: the lease passes to another coordinator.
        store.release_lease(&coord.holder).await.expect("up");
        assert!(store.acquire_lease("coord/another-run", Duration::from_secs(30)).await.expect("up"));

        assert!(matches!(count_out_dead(&coord, &[]).await, Err(StoreError::NotLeader(_))));
        assert_eq!(store.presence(&[user]).await.expect("up")[0].connections, 1, "no count-out happened");
        assert!(matches!(rebalance_round(&coord, &[]).await, Err(StoreError::NotLeader(_))));
        assert_eq!(store.table_version().await.expect("up"), None, "no table was written");

        // Through the control loop: it sees it does not lead and does nothing.
        coord.leader.store(true, Ordering::Relaxed);
        step(&coord).await.expect("step");
        assert!(!coord.is_leader());
        assert_eq!(coord.metrics.dead_nodes.get(), 0);
    }

    /// Silent and refusing: gone at once. Silent but listening (paused,
    /// overloaded), or refusing but heartbeating (a probe path that is
    /// broken, not the node): left to the TTL.
    #[tokio::test]
    async fn a_silent_node_whose_address_refuses_is_dead_before_its_ttl() {
        let store = MemoryStore::new();
        let coord =
            Coordinator::new(CoordinatorConfig::default(), Arc::new(store.clone()), Arc::new(MemoryBus::default()));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let open = listening.local_addr().expect("addr").port();
        let now = presence_model::time::now_ms();
        let record = |id: &str, port: u16, heartbeat_ms: u64| {
            crate::testing::node_record(id, format!("ws://127.0.0.1:{port}/socket"), heartbeat_ms)
        };
        let nodes = vec![
            record("killed", closed, now - 2_000),
            record("paused", open, now - 2_000),
            record("heartbeating", closed, now),
        ];
        for n in &nodes {
            store.heartbeat(n, Duration::from_secs(30)).await.expect("up");
        }
        let left = without_refusing(&coord, nodes).await.expect("up");
        let ids = |ns: &[NodeRecord]| {
            let mut ids: Vec<String> = ns.iter().map(|n| n.id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&left), ["heartbeating", "paused"]);
        assert_eq!(ids(&store.live_nodes().await.expect("up")), ["heartbeating", "paused"], "deregistered");
        assert_eq!(coord.metrics.refused_nodes.get(), 1);
        // Off: nobody is probed.
        let config = CoordinatorConfig { fast_death: Duration::ZERO, ..Default::default() };
        let off = Coordinator::new(config, Arc::new(store.clone()), Arc::new(MemoryBus::default()));
        let nodes = vec![record("killed-too", closed, now - 60_000)];
        assert_eq!(ids(&without_refusing(&off, nodes).await.expect("up")), ["killed-too"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_loop_is_restarted_and_reported_down_meanwhile() {
        let starts = Arc::new(AtomicU32::new(0));
        let downs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (s, d) = (starts.clone(), downs.clone());
        supervised(
            move || {
                let n = s.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        panic!("a bug");
                    }
                }
            },
            move |down| d.lock().unwrap_or_else(|p| p.into_inner()).push(down),
            stop,
        )
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 3, "restarted after each panic");
        let downs = downs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(downs, vec![false, true, false, true, false]);
    }
}
