//! Every benchmark runs in a short mode in the normal test run, so that none
//! of them rots. The figures of a debug build on a busy machine mean
//! nothing; the checks are that each finishes, prints its comparison, and
//! (for the fan-out) misses nothing. The full runs are in BENCHMARKS.md.

use std::process::Command;

/// Runs `presence-bench` with `args`; its stdout. `env` adds variables, and
/// the backends' variables are removed unless given there.
fn bench(args: &[&str], env: &[(&str, String)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_presence-bench"));
    cmd.args(args).env_remove("REDIS_URL").env_remove("KAFKA_BROKERS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("presence-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "presence-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// REDIS_URL and KAFKA_BROKERS, as `./scripts/test` sets them.
fn backends() -> [(&'static str, String); 2] {
    let var =
        |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: run the tests through ./scripts/test"));
    [("REDIS_URL", var("REDIS_URL")), ("KAFKA_BROKERS", var("KAFKA_BROKERS"))]
}

/// The changes each node heard on its live feed ("node-N: X changes heard ...").
fn heard_live(out: &str) -> Vec<u64> {
    out.lines()
        .filter(|l| l.contains("changes heard on the live feed"))
        .filter_map(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .collect()
}

/// "X of Y changes seen" with X == Y.
fn nothing_missed(out: &str) {
    let line = out.lines().find(|l| l.contains("changes seen")).unwrap_or_else(|| panic!("no tally in:\n{out}"));
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(nums.len() == 2 && nums[0] == nums[1] && nums[0] > 0, "changes missed: {line}\n{out}");
}

#[test]
fn vnode_and_watchers() {
    assert!(bench(&["vnode"], &[]).contains("ns per lookup"));
    let out = bench(&["watchers", "--sizes", "100,1000"], &[]);
    assert!(out.contains("1000"), "{out}");
}

#[test]
fn route_against_hello() {
    let out = bench(&["route", "--seconds", "1", "--connections", "8"], &[]);
    assert!(out.contains("ratio: throughput"), "{out}");
}

#[test]
fn idle_memory_and_connect_rate() {
    let out = bench(&["idle", "--count", "300"], &[]);
    assert!(out.contains("bare tungstenite echo"), "{out}");
    let out = bench(&["connect-rate", "--count", "300", "--concurrency", "16"], &[]);
    assert!(out.contains("connections"), "{out}");
}

#[test]
fn fanout_embedded() {
    nothing_missed(&bench(&["fanout", "--rate", "40", "--seconds", "1"], &[]));
}

#[test]
fn fanout_on_redis_and_kafka_beside_the_floors() {
    let env = backends();
    let out = bench(&["fanout", "--rate", "40", "--seconds", "1"], &env);
    nothing_missed(&out);
    assert!(out.contains("store redis, bus kafka"), "{out}");
    assert!(heard_live(&out).iter().any(|&n| n > 0), "the watcher's node heard the fast path:\n{out}");
    assert!(out.contains("bare Redis PUBLISH -> SUBSCRIBE") && out.contains("bare librdkafka"), "{out}");
    // The bus path alone, for its own comparison with librdkafka.
    let out = bench(&["fanout", "--rate", "40", "--seconds", "1", "--no-fast-path"], &env);
    nothing_missed(&out);
    assert!(out.contains("fast path off"), "{out}");
    let heard = heard_live(&out);
    assert!(heard.len() == 2 && heard.iter().all(|&n| n == 0), "no node followed anyone:\n{out}");
}

#[test]
fn fanout_through_the_deployed_binaries() {
    let env = backends();
    let out = bench(&["fanout", "--binaries", "--rate", "40", "--seconds", "1"], &env);
    nothing_missed(&out);
    assert!(out.contains("ws-node binaries on Redis + Kafka, fast path on"), "{out}");
    assert!(heard_live(&out).first().is_some_and(|&n| n > 0), "the watcher's node heard the fast path:\n{out}");
    assert!(out.contains("fanout-c (serves nobody)") && out.contains("us per event"), "{out}");
    assert!(out.contains("bare Redis PUBLISH -> SUBSCRIBE") && out.contains("bare librdkafka"), "{out}");
    let out = bench(&["fanout", "--binaries", "--rate", "40", "--seconds", "1", "--no-fast-path"], &env);
    nothing_missed(&out);
    let heard = heard_live(&out);
    assert!(heard.len() == 2 && heard.iter().all(|&n| n == 0), "no node followed anyone:\n{out}");
}

#[test]
fn redis_memory_per_user() {
    let url = std::env::var("REDIS_URL").expect("REDIS_URL is not set: run the tests through ./scripts/test");
    let out = bench(&["redis-memory", "--users", "2000"], &[("REDIS_URL", url)]);
    assert!(out.contains("per online user") && out.contains("per followed user"), "{out}");
}

#[test]
fn hot_user() {
    let out = bench(&["hot-user", "--watchers", "300"], &[]);
    for what in ["comes online", "goes offline", "status online", "status offline"] {
        let line = out.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no {what} line:\n{out}"));
        assert!(line.contains("300 of 300 watchers"), "every watcher heard it: {line}");
    }
    for what in ["first broadcast", "second broadcast"] {
        let line = out.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no {what} line:\n{out}"));
        assert!(line.contains("300 of 300 sockets (300 written in"), "every socket heard it: {line}");
    }
}

#[test]
fn idle_memory_of_the_deployed_binary() {
    let env = backends();
    let out = bench(&["idle", "--count", "300", "--binaries"], &env);
    assert!(out.contains("bytes per connection"), "{out}");
}

#[test]
fn reconnect_storm_of_the_deployed_binaries() {
    let env = backends();
    let out = bench(&["storm", "--users", "200"], &env);
    assert!(out.contains("users back on another node") && out.contains("every count exact"), "{out}");
    assert!(out.contains("the surviving nodes report 200 connections"), "{out}");
    // Every session named its lost node when it asked for a route again.
    let line = out.lines().find(|l| l.contains("route requests reporting the node unreachable")).expect("reports");
    let reports: u64 = line
        .split(": ")
        .nth(1)
        .expect("counts")
        .split(", ")
        .map(|part| part.split(' ').next().and_then(|n| n.parse::<f64>().ok()).expect("a count") as u64)
        .sum();
    assert!(reports >= 200, "{line}");
}

#[test]
fn churn_into_the_deployed_binary() {
    let out = bench(&["churn", "--seconds", "1", "--workers", "8"], &backends());
    assert!(out.contains("changes/s") && out.contains("every count exact"), "{out}");
    assert!(out.contains("batches (pipelined round trips)") && out.contains("us per change"), "{out}");
    assert!(out.contains("bare tungstenite server") && out.contains("ratio to the floor"), "{out}");
}
