//! Separate processes sharing a real Redis and a real Kafka-protocol broker
//! (docs/architecture.md, "Exact counts"): counts stay exact through churn, a node killed with
//! -9, a node joining, the leader coordinator dying, and Redis restarting empty.

mod common;

#[path = "common/harness.rs"]
mod harness;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/tracked.rs"]
mod tracked;

use std::time::Duration;

use harness::{leader_of, wait_for_nodes, Churn, Setup, SECRET};
use presence_client::CoordinatorClient;
use presence_model::api::PresenceView;
use procs::{Proc, Redis, Shared, Tansu};
use tracked::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_through_churn_crash_join_and_leader_loss() {
    let _serial = procs::serial().await;
    let dir = procs::output_dir("churn");
    let redis = Redis::start(&dir).await;
    let sh = Shared::new("churn", redis.url(), SECRET);
    let mut coords = vec![sh.coordinator("coord-a"), sh.coordinator("coord-b")];
    let mut nodes: Vec<(Proc, String, String)> = (1..=3).map(|i| sh.node(&format!("node-{i}"))).collect();
    let api_a = CoordinatorClient::new(&coords[0].1).expect("url");
    wait_for_nodes(&api_a, 3).await;

    let mut churn = Churn::new(&coords[0].1, 24, 3).await;
    churn.run(80).await;
    churn.converges(&api_a, "after churn").await;

    // kill -9 a node: its clients drop, the leader counts its connections out.
    nodes[1].0.kill9();
    churn.run(30).await;
    wait_for_nodes(&api_a, 2).await;
    churn.converges(&api_a, "after a node was killed").await;

    // A new node joins: vnodes move and their users are handed over.
    nodes.push(sh.node("node-4"));
    wait_for_nodes(&api_a, 3).await;
    churn.run(30).await;
    churn.converges(&api_a, "after a node joined").await;

    // The leader coordinator dies; the other takes over.
    let leader = leader_of(&coords).await.expect("a leader");
    coords[leader].0.kill9();
    let survivor = coords.remove(1 - leader);
    let api = CoordinatorClient::new(&survivor.1).expect("url");
    churn.coordinator = survivor.1.clone();
    common::eventually("the survivor leads", || async {
        api.get::<serde_json::Value>("/readyz").await.is_ok_and(|r| r["leader"] == true)
    })
    .await;
    churn.run(30).await;
    churn.converges(&api, "after the leader died").await;
    let moved: u32 = churn.clients.iter().map(|c| c.seen().moves).sum();
    eprintln!("clients handed over during the test: {moved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_moves_few_vnodes_and_nobody_flaps_offline() {
    let _serial = procs::serial().await;
    let mut setup = Setup::start("join", 3, None).await;
    let (url, api) = (setup.url.clone(), setup.api.clone());

    // 60 users online, one connection each, and a watcher of all of them.
    let mut churn = Churn::new(&url, 60, 1).await;
    for u in churn.users.clone() {
        churn.clients.push(Client::connect(&url, SECRET, &u, &[]).await);
    }
    churn.converges(&api, "all online").await;
    let owner_of = |ring: &serde_json::Value, v: usize| -> String {
        let i = ring["owners"][v].as_u64().expect("owned") as usize;
        ring["nodes"][i]["id"].as_str().expect("id").to_string()
    };

    // An unpinned node joins: it takes about a quarter of the vnodes, only from
    // the others, and the emptiest first, so with 60 users none has to move.
    // (Load-aware needs the load: wait until the heartbeats have reported it.)
    common::eventually("load reported", || async {
        api.nodes().await.is_ok_and(|n| n.iter().map(|x| x.connections).sum::<u64>() == 61)
    })
    .await;
    let before = api.ring().await.expect("ring");
    setup.nodes.push(setup.sh.node("node-4"));
    wait_for_nodes(&api, 4).await;
    let after = api.ring().await.expect("ring");
    let moved = (0..4096).filter(|&v| owner_of(&before, v) != owner_of(&after, v)).count();
    assert!(moved as f64 <= 1.05 * 4096.0 / 4.0, "moved {moved} vnodes");
    assert!(moved >= 1000, "the new node got its share: {moved}");
    assert!((0..4096).all(|v| owner_of(&before, v) == owner_of(&after, v) || owner_of(&after, v) == "node-4"));
    assert!(churn.clients.iter().all(|c| c.seen().moves == 0), "load-aware joins move empty vnodes first");

    // A node pinned to the vnodes of 20 online users joins: they are handed over.
    let pinned_users: Vec<String> = churn.users[..20].to_vec();
    let pins: Vec<String> = pinned_users.iter().map(|u| presence_model::vnode(u).to_string()).collect();
    setup.nodes.push(setup.sh.node_with("node-5", &[("ASSIGNED_VNODES", &pins.join(","))]));
    common::eventually("pinned users on node-5", || async {
        churn.clients.iter().filter(|c| pinned_users.contains(&c.user)).all(|c| {
            let s = c.seen();
            c.alive() && s.node_id.as_deref() == Some("node-5") && s.moves == 1
        })
    })
    .await;
    churn.converges(&api, "after the handoff").await;
    assert!(churn.clients.iter().all(|c| c.alive() && c.seen().count == Some(1)));
    // Once a user was seen online, the watcher never saw it offline again.
    let mut online_seen = std::collections::HashSet::new();
    let mut flaps = Vec::new();
    for (user, online, n) in churn.watchers[0].seen().history {
        if online {
            online_seen.insert(user);
        } else if online_seen.contains(&user) {
            flaps.push((user, n));
        }
    }
    assert!(flaps.is_empty(), "a subscriber saw users go offline: {flaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_empty_under_churn_converges() {
    let _serial = procs::serial().await;
    let mut setup = Setup::start("redis-restart", 2, None).await;
    let (url, api) = (setup.url.clone(), setup.api.clone());
    let mut churn = Churn::new(&url, 16, 2).await;
    churn.run(40).await;
    churn.converges(&api, "before the outage").await;

    setup.redis.stop();
    // Routing keeps working from the caches, and so does counting.
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        churn.run(5).await;
    }
    let r = api.route("user-1").await.expect("route served from cache while Redis is down");
    assert!(r.stale, "a route from cache is marked stale");
    setup.redis.restart().await;
    churn.converges(&api, "after Redis came back empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_node_follows_a_user_on_another_in_order() {
    let _serial = procs::serial().await;
    let setup = Setup::start("cross-node", 2, None).await;
    let (url, api) = (setup.url.clone(), setup.api.clone());
    // Two users owned by different nodes.
    let ring = api.ring().await.expect("ring");
    let owner = |u: &str| ring["owners"][presence_model::vnode(u) as usize].as_u64();
    let watcher_id = "watcher";
    let target =
        (0..).map(|i| format!("target-{i}")).find(|u| owner(u) != owner(watcher_id)).expect("a user elsewhere");
    let watcher = Client::connect(&url, SECRET, watcher_id, std::slice::from_ref(&target)).await;
    common::eventually("initial status", || async { watcher.seen().status.get(&target) == Some(&0) }).await;

    let step = |n: u64| {
        let w = &watcher;
        let t = target.clone();
        async move { common::eventually(&format!("status {n}"), || async { w.seen().status.get(&t) == Some(&n) }).await }
    };
    let c1 = Client::connect(&url, SECRET, &target, &[]).await;
    step(1).await;
    let c2 = Client::connect(&url, SECRET, &target, &[]).await;
    step(2).await;
    c1.close().await;
    step(1).await;
    c2.close().await;
    step(0).await;
    let mine: Vec<(bool, u64)> =
        watcher.seen().history.into_iter().filter(|(u, _, _)| *u == target).map(|(_, online, n)| (online, n)).collect();
    assert_eq!(mine, vec![(false, 0), (true, 1), (true, 2), (true, 1), (false, 0)], "in order, each change once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_stopping_for_5s_under_churn_still_converges() {
    let _serial = procs::serial().await;
    let mut tansu = Tansu::start(&procs::output_dir("kafka-restart-broker")).await;
    let setup = Setup::start("kafka-restart", 2, Some(tansu.brokers())).await;
    let (url, api) = (setup.url.clone(), setup.api.clone());
    let mut churn = Churn::new(&url, 16, 2).await;
    churn.run(40).await;
    churn.converges(&api, "before the broker stops").await;

    tansu.stop();
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        churn.run(5).await;
    }
    tansu.restart().await;
    churn.converges(&api, "after the broker came back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_node_without_anyone_going_offline() {
    let _serial = procs::serial().await;
    let mut setup = Setup::start("drain", 3, None).await;
    let (url, api) = (setup.url.clone(), setup.api.clone());
    let mut churn = Churn::new(&url, 30, 1).await;
    for u in churn.users.clone() {
        churn.clients.push(Client::connect(&url, SECRET, &u, &[]).await);
    }
    churn.converges(&api, "all online").await;
    let on_node2: Vec<String> = churn
        .clients
        .iter()
        .filter(|c| c.seen().node_id.as_deref() == Some("node-2"))
        .map(|c| c.user.clone())
        .collect();
    assert!(!on_node2.is_empty(), "some users on node-2");

    setup.nodes[1].0.terminate(Duration::from_secs(20)).await;
    assert!(!setup.nodes[1].0.is_running(), "node-2 exited after draining");
    wait_for_nodes(&api, 2).await;
    churn.converges(&api, "after the drain").await;
    for c in churn.clients.iter().filter(|c| on_node2.contains(&c.user)) {
        let s = c.seen();
        assert!(c.alive() && s.moves == 1 && s.node_id.as_deref() != Some("node-2"), "{} {s:?}", c.user);
    }
    let mut online_seen = std::collections::HashSet::new();
    for (user, online, n) in churn.watchers[0].seen().history {
        if online {
            online_seen.insert(user);
        } else {
            assert!(!online_seen.contains(&user), "{user} went offline ({n}) during the drain");
        }
    }
}

/// Reads a child's stdout until a line starts with `prefix`; returns the rest.
async fn banner_value(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
) -> String {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
        panic!("no line starting with {prefix:?}");
    })
    .await
    .expect("banner in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_join_adds_nodes_and_the_ring_rebalances() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let _serial = procs::serial().await;
    let dir = procs::output_dir("demo-join");
    let redis = Redis::start(&dir).await;
    let kafka = std::env::var("KAFKA_BROKERS").expect("KAFKA_BROKERS (./scripts/test sets it)");
    let presence = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_presence"));
        cmd.args(args)
            .env("REDIS_URL", redis.url())
            .env("KAFKA_BROKERS", &kafka)
            .env("JWT_SECRET", SECRET)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn().expect("presence starts")
    };
    let mut demo = presence(&common::DEMO_ON_FREE_PORTS);
    let mut out = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let admin = banner_value(&mut out, "admin").await;
    let url = admin.split_whitespace().next().expect("the admin URL");
    let api = CoordinatorClient::new(url).expect("url");
    wait_for_nodes(&api, 2).await;

    let mut joiner = presence(&["demo", "--join", "--nodes", "1"]);
    let mut jout = BufReader::new(joiner.stdout.take().expect("stdout")).lines();
    let joined_id = banner_value(&mut jout, "join-").await;
    assert!(!joined_id.is_empty());
    wait_for_nodes(&api, 3).await;
    let ring = api.ring().await.expect("ring");
    let joined = ring["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"].as_str().is_some_and(|i| i.starts_with("join-")));
    let vnodes = joined.and_then(|n| n["vnodes"].as_u64()).unwrap_or(0);
    assert!((1365..=1366).contains(&vnodes), "the joined node owns a third of the ring: {ring}");

    // SIGTERM: the joined node drains and the ring goes back to two nodes.
    let _ = std::process::Command::new("kill").arg("-TERM").arg(joiner.id().expect("pid").to_string()).status();
    let status =
        tokio::time::timeout(Duration::from_secs(30), joiner.wait()).await.expect("joiner exits").expect("status");
    assert!(status.success(), "{status}");
    wait_for_nodes(&api, 2).await;
    let _ = demo.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_64_listing_every_problem_without_secrets() {
    for (bin, args) in [
        (
            "ws-node",
            vec![
                "--capacity",
                "zero",
                "--listen-addr",
                "nowhere",
                "--jwt-secret",
                "super-secret-value",
                "--jwt-alg",
                "RS256",
            ],
        ),
        (
            "coordinator",
            vec![
                "--tick-ms",
                "x",
                "--redis-url",
                "redis://:super-secret-value@h:1",
                "--listen-addr",
                "?",
                "--admin-addr",
                "0.0.0.0:8081",
            ],
        ),
    ] {
        let out = std::process::Command::new(procs::bin(bin))
            .args(&args)
            .env_remove("REDIS_URL")
            .env_remove("KAFKA_BROKERS")
            .env_remove("JWT_SECRET")
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(64), "{bin}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("LISTEN_ADDR") && err.contains("KAFKA_BROKERS"), "{bin}: {err}");
        assert!(!err.contains("super-secret-value"), "{bin} leaked a secret: {err}");
        if bin == "coordinator" {
            assert!(err.contains("ADMIN_ADDR") && err.contains("needs ADMIN_API_KEY"), "an open admin listener: {err}");
        }
    }
}

/// The next event of `s` matching `pred`, within 15 s.
async fn next(
    s: &mut presence_client::Session,
    what: &str,
    pred: fn(&presence_client::Event) -> bool,
) -> presence_client::Event {
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match s.next_event().await {
                Some(e) if pred(&e) => return e,
                Some(_) => {}
                None => panic!("session ended waiting for {what}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} within 15 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_session_survives_kill_9_of_its_node() {
    use presence_client::{ConnectOptions, Event, ReconnectReason, TokenSource};
    let _serial = procs::serial().await;
    let mut setup = Setup::start("sdk-kill", 3, None).await;
    let sdk = presence_client::Client::new(&setup.url).expect("client");
    let token = |u: &str| TokenSource::fixed(presence_model::auth::mint_hs256(SECRET.as_bytes(), u, 3600));
    let mut a = sdk.connect("alice", ConnectOptions::new(token("alice"))).await.expect("session");
    let first = loop {
        if let Some(Event::Welcome { node_id, .. }) = a.next_event().await {
            break node_id;
        }
    };
    a.subscribe(&["bob"]).await.expect("subscribe");
    next(&mut a, "bob's status", |e| matches!(e, Event::Status(PresenceView { connections: 0, .. }))).await;

    let i = setup.nodes.iter().position(|n| n.0.name == first).expect("alice's node");
    setup.nodes[i].0.kill9();
    next(&mut a, "reconnecting", |e| matches!(e, Event::Reconnecting { reason: ReconnectReason::Dropped { .. }, .. }))
        .await;
    let w = next(&mut a, "welcome on another node", |e| matches!(e, Event::Welcome { .. })).await;
    assert!(matches!(w, Event::Welcome { ref node_id, .. } if *node_id != first), "{w:?}");
    // Re-subscribed, and events after the reconnect arrive.
    next(&mut a, "bob's status again", |e| matches!(e, Event::Status(PresenceView { connections: 0, .. }))).await;
    let mut b = sdk.connect("bob", ConnectOptions::new(token("bob"))).await.expect("session");
    next(&mut b, "bob's welcome", |e| matches!(e, Event::Welcome { .. })).await;
    next(&mut a, "bob online", |e| matches!(e, Event::Status(PresenceView { online: true, connections: 1, .. }))).await;
    b.close().await;
    a.close().await;
}
