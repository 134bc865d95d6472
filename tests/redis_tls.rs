//! Redis over TLS with a password (`rediss://`, `docs/security.md`): a real
//! `redis-server` with a TLS port only and `requirepass`, certificates made
//! by `openssl` for the test, and a whole cluster counting through it.

mod common;

#[path = "common/procs.rs"]
mod procs;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use presence::cluster::{Cluster, ClusterConfig};
use presence_runtime::backends::{connect as connect_backends, BackendConfig};
use procs::{free_port, output_dir, Proc};

const PASSWORD: &str = "tls-test-password";

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem"]
            .iter()
            .chain(&["-days", "2", "-subj", "/CN=presence test CA"])
            .copied()
            .collect::<Vec<_>>(),
    );
    openssl(
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr"]
            .iter()
            .chain(&["-subj", "/CN=127.0.0.1"])
            .copied()
            .collect::<Vec<_>>(),
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("ext file");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// `redis-server` with TLS only (no plain port) and a password.
async fn start_tls_redis(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    let file = |f: &str| dir.join(f).display().to_string();
    cmd.args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly"])
        .args(["no", "--requirepass", PASSWORD, "--tls-auth-clients", "no"])
        .args(["--tls-cert-file", &file("server.pem"), "--tls-key-file", &file("server.key")])
        .args(["--tls-ca-cert-file", &file("ca.pem")]);
    let proc = Proc::spawn("redis-tls", cmd, dir);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "redis-server with TLS did not start; see {}", dir.display());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (proc, port)
}

fn backends(url: String, ca: Option<&Path>) -> BackendConfig {
    let mut c = BackendConfig { redis_url: Some(url), client_id: "tls-test".into(), ..Default::default() };
    c.redis_tls.ca = ca.map(Path::to_path_buf);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_counts_through_redis_over_tls_with_a_password() {
    let dir = output_dir("redis-tls");
    make_certificates(&dir);
    let (_redis, port) = start_tls_redis(&dir).await;
    let ca = dir.join("ca.pem");

    // Refused clearly: an untrusted certificate, a wrong password, plain text to the TLS port.
    for (what, config) in [
        ("no CA given", backends(format!("rediss://:{PASSWORD}@127.0.0.1:{port}"), None)),
        ("wrong password", backends(format!("rediss://:wrong@127.0.0.1:{port}"), Some(&ca))),
        ("plain text", backends(format!("redis://:{PASSWORD}@127.0.0.1:{port}"), Some(&ca))),
    ] {
        let store = match connect_backends(&config).await {
            Ok(b) => b.store,
            Err(e) => {
                assert!(!e.contains(PASSWORD), "{what}: the password leaked into {e}");
                continue;
            }
        };
        // The connection is lazy; the first operation fails.
        let read = tokio::time::timeout(Duration::from_secs(10), store.table_version()).await;
        assert!(!matches!(read, Ok(Ok(_))), "{what}: a store operation succeeded");
    }

    // Trusted and authenticated: a whole cluster runs on it.
    let b = connect_backends(&backends(format!("rediss://:{PASSWORD}@127.0.0.1:{port}"), Some(&ca)))
        .await
        .expect("TLS Redis connects");
    assert_eq!(b.store.kind(), "redis");
    let c = Cluster::start_on(ClusterConfig::for_tests(2, SECRET), b.store.clone(), b.bus).await.expect("cluster");
    c.wait_settled(WAIT).await.expect("cluster settles on TLS Redis");
    let (mut alice, _) = connect(&c, "alice").await;
    expect_count(&mut alice, 1).await;
    eventually("alice online in Redis", || async {
        coordinator(&c).presence("alice").await.is_ok_and(|p| p.online && p.connections == 1)
    })
    .await;
    alice.close().await;
    eventually("alice offline in Redis", || async { coordinator(&c).presence("alice").await.is_ok_and(|p| !p.online) })
        .await;
    c.shutdown().await;
}
