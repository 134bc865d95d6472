//! The process tests' cluster: a Redis of the test's own, coordinators and
//! ws-nodes as real binaries, clients that record what they see, churn, and
//! the check that every view equals the truth.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use presence_client::CoordinatorClient;

use crate::common;
use crate::procs::{self, Proc, Redis, Shared};
use crate::tracked::Client;

pub const SECRET: &str = "process-test-secret-of-at-least-32-bytes";

/// A tiny deterministic generator, so a failing run can be replayed.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Waits until the coordinator lists `n` live nodes, every vnode has an owner
/// among them, and the assignment is settled (balanced).
pub async fn wait_for_nodes(api: &CoordinatorClient, n: usize) {
    common::eventually(&format!("{n} nodes owning the ring"), || async {
        let Ok(nodes) = api.nodes().await else { return false };
        let Ok(ring) = api.ring().await else { return false };
        let owned: usize = nodes.iter().map(|x| x.vnodes).sum();
        let (min, max) = (nodes.iter().map(|x| x.vnodes).min(), nodes.iter().map(|x| x.vnodes).max());
        let balanced = matches!((min, max), (Some(a), Some(b)) if b - a <= 1);
        nodes.len() == n && owned == 4096 && balanced && ring["nodes"].as_array().map(Vec::len) == Some(n)
    })
    .await;
}

/// One test's cluster: its own Redis, a coordinator and `n` nodes, settled.
pub struct Setup {
    pub redis: Redis,
    pub sh: Shared,
    pub coord: Proc,
    pub url: String,
    pub nodes: Vec<(Proc, String, String)>,
    pub api: CoordinatorClient,
}

impl Setup {
    /// Starts it; `kafka` is a broker of the test's own (else the shared one).
    pub async fn start(test: &str, n: usize, kafka: Option<String>) -> Setup {
        let ids: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
        let nodes: Vec<(&str, &[(&str, &str)])> = ids.iter().map(|id| (id.as_str(), &[][..])).collect();
        Self::start_nodes(test, &nodes, kafka).await
    }

    /// Starts it with nodes of these IDs and extra environment (on the shared broker).
    pub async fn start_with(test: &str, nodes: &[(&str, &[(&str, &str)])]) -> Setup {
        Self::start_nodes(test, nodes, None).await
    }

    async fn start_nodes(test: &str, nodes: &[(&str, &[(&str, &str)])], kafka: Option<String>) -> Setup {
        let dir = procs::output_dir(test);
        let redis = Redis::start(&dir).await;
        let sh = match kafka {
            Some(k) => Shared::with_kafka(test, redis.url(), k, SECRET),
            None => Shared::new(test, redis.url(), SECRET),
        };
        let (coord, url) = sh.coordinator("coord");
        let procs: Vec<(Proc, String, String)> = nodes.iter().map(|(id, env)| sh.node_with(id, env)).collect();
        let api = CoordinatorClient::new(&url).expect("url");
        wait_for_nodes(&api, procs.len()).await;
        Setup { redis, sh, coord, url, nodes: procs, api }
    }
}

pub struct Churn {
    pub users: Vec<String>,
    pub clients: Vec<Client>,
    pub watchers: Vec<Client>,
    pub rng: Lcg,
    pub coordinator: String,
}

impl Churn {
    pub async fn new(coordinator: &str, users: usize, watchers: usize) -> Self {
        let users: Vec<String> = (0..users).map(|i| format!("user-{i}")).collect();
        let mut w = Vec::new();
        for i in 0..watchers {
            w.push(Client::connect(coordinator, SECRET, &format!("watcher-{i}"), &users).await);
        }
        Self { users, clients: Vec::new(), watchers: w, rng: Lcg(7), coordinator: coordinator.into() }
    }

    /// `ops` random connects and disconnects (at most 3 connections per user).
    pub async fn run(&mut self, ops: usize) {
        for _ in 0..ops {
            self.clients.retain(|c| !c.user.is_empty());
            let connect = self.clients.len() < 10 || self.rng.next(3) != 0;
            if connect {
                let u = self.users[self.rng.next(self.users.len())].clone();
                if self.clients.iter().filter(|c| c.user == u && c.alive()).count() < 3 {
                    self.clients.push(Client::connect(&self.coordinator, SECRET, &u, &[]).await);
                }
            } else {
                let i = self.rng.next(self.clients.len());
                self.clients.swap_remove(i).close().await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The truth: live connections per user.
    pub fn truth(&self) -> HashMap<String, u64> {
        let mut t: HashMap<String, u64> = self.users.iter().map(|u| (u.clone(), 0)).collect();
        for c in self.clients.iter().filter(|c| c.alive()) {
            *t.entry(c.user.clone()).or_default() += 1;
        }
        t
    }

    /// Every view agrees with the truth, or a description of the first disagreement.
    pub async fn check(&self, api: &CoordinatorClient) -> Result<(), String> {
        let truth = self.truth();
        let ids: Vec<&str> = self.users.iter().map(String::as_str).collect();
        let presence = api.status(&ids).await.map_err(|e| format!("presence: {e}"))?;
        for p in presence {
            let want = truth[p.user_id.as_str()];
            if p.connections != want || p.online != (want > 0) {
                return Err(format!("/presence {} = {} but truth is {want}", p.user_id, p.connections));
            }
        }
        for c in self.clients.iter().filter(|c| c.alive()) {
            let s = c.seen();
            if s.count != Some(truth[&c.user]) {
                return Err(format!(
                    "count stream of a {} client on {:?} = {:?}, truth {}",
                    c.user, s.node_id, s.count, truth[&c.user]
                ));
            }
        }
        for w in self.watchers.iter().filter(|w| w.alive()) {
            let s = w.seen();
            for u in &self.users {
                if s.status.get(u).copied() != Some(truth[u]) {
                    return Err(format!("{} sees {u} at {:?}, truth {}", w.user, s.status.get(u), truth[u]));
                }
            }
        }
        Ok(())
    }

    /// Within 10 s of quiet, every view equals the truth.
    pub async fn converges(&self, api: &CoordinatorClient, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.check(api).await {
                Ok(()) => return,
                Err(e) if tokio::time::Instant::now() >= deadline => panic!("{what}: not converged after 10 s: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

pub async fn leader_of(coordinators: &[(Proc, String)]) -> Option<usize> {
    for (i, (_, url)) in coordinators.iter().enumerate() {
        let api = CoordinatorClient::new(url).ok()?;
        if let Ok(r) = api.get::<serde_json::Value>("/readyz").await {
            if r["leader"] == true {
                return Some(i);
            }
        }
    }
    None
}
