//! Real processes for the multi-process tests: `redis-server` (owned by the
//! test, so it can be stopped and restarted), and the `coordinator` and
//! `ws-node` binaries, each logging to `target/test-output/<test>/`.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Process tests start many processes each; on a 2-core machine they run one
/// at a time. Hold the guard for the whole test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(())).lock().await
}

/// A port that was free a moment ago, and never handed out before by this
/// process (the kernel may give the same ephemeral port to two quick binds).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Where the workspace's binaries are (`target/<profile>/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, as ./scripts/test does)",
        path.display()
    );
    path
}

/// A directory for this test's logs.
pub fn output_dir(test: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let target = exe.parent().and_then(|d| d.parent()).and_then(|d| d.parent()).expect("target");
    let dir = target.join("test-output").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("output dir");
    dir
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir.join(format!("{name}.log")))
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let child =
            cmd.stdin(Stdio::null()).stdout(log).stderr(err).spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self { name: name.into(), child: Some(child) }
    }

    /// `kill -9`: no cleanup at all.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `grace` before `kill -9`.
    pub async fn terminate(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// `kill -STOP`: frozen as a paused VM or a long GC pause is, sockets left open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// `kill -CONT`: carries on where it stopped.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").arg(sig).arg(c.id().to_string()).status();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `redis-server` without persistence, on its own port.
pub struct Redis {
    pub port: u16,
    log_dir: PathBuf,
    proc: Option<Proc>,
}

impl Redis {
    pub async fn start(log_dir: &Path) -> Self {
        let mut r = Self { port: free_port(), log_dir: log_dir.to_path_buf(), proc: None };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, empty: no persistence) and waits until it answers.
    pub async fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        self.proc = Some(Proc::spawn("redis", cmd, &self.log_dir));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start (is it installed? ./scripts/test installs it)"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops it hard (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }
}

/// A tansu broker of the test's own, keeping its data in sqlite so that its
/// topics survive a restart (a Kafka cluster keeps its topics too).
pub struct Tansu {
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Tansu {
    pub async fn start(dir: &Path) -> Self {
        let mut t = Self { port: free_port(), dir: dir.to_path_buf(), proc: None };
        t.restart().await;
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new("tansu");
        // tansu reads the sqlite path relative to its working directory.
        cmd.current_dir(&self.dir).args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "sqlite://tansu.db",
        ]);
        self.proc = Some(Proc::spawn("tansu", cmd, &self.dir));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tansu did not start (is it installed? ./scripts/test installs it)"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }
}

/// Settings every process of one test shares.
#[derive(Clone)]
pub struct Shared {
    pub redis_url: String,
    pub kafka: String,
    /// Redis key prefix and Kafka topic, unique to the test.
    pub namespace: String,
    pub secret: String,
    pub log_dir: PathBuf,
}

impl Shared {
    pub fn new(test: &str, redis_url: String, secret: &str) -> Self {
        let kafka = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| {
            panic!(
                "KAFKA_BROKERS is not set: run the tests through ./scripts/test, which starts a Kafka-protocol broker"
            )
        });
        Self::with_kafka(test, redis_url, kafka, secret)
    }

    /// The same, on a broker of the test's own.
    pub fn with_kafka(test: &str, redis_url: String, kafka: String, secret: &str) -> Self {
        let namespace = format!("{test}-{}", presence_model::time::now_us());
        Self { redis_url, kafka, namespace, secret: secret.into(), log_dir: output_dir(test) }
    }

    fn common(&self, cmd: &mut Command) {
        cmd.env("REDIS_URL", &self.redis_url)
            .env("REDIS_PREFIX", &self.namespace)
            .env("KAFKA_BROKERS", &self.kafka)
            .env("KAFKA_TOPIC", &self.namespace)
            .env("KAFKA_PARTITIONS", "4")
            .env("RUST_LOG", "info");
    }

    /// A coordinator with fast timings; returns it and its admin URL (the
    /// admin listener answers `/route` too, so clients may use it).
    pub fn coordinator(&self, id: &str) -> (Proc, String) {
        let (port, admin) = (free_port(), free_port());
        let mut cmd = Command::new(bin("coordinator"));
        self.common(&mut cmd);
        cmd.env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("ADMIN_ADDR", format!("127.0.0.1:{admin}"))
            .env("COORDINATOR_ID", id)
            .env("TICK_MS", "100")
            .env("LEASE_TTL_MS", "1000");
        (Proc::spawn(id, cmd, &self.log_dir), format!("http://127.0.0.1:{admin}"))
    }

    /// A ws-node with fast timings; returns it, its WebSocket URL and its HTTP URL.
    pub fn node(&self, id: &str) -> (Proc, String, String) {
        self.node_with(id, &[])
    }

    /// A ws-node with extra environment (e.g. `ASSIGNED_VNODES`).
    pub fn node_with(&self, id: &str, env: &[(&str, &str)]) -> (Proc, String, String) {
        let port = free_port();
        let mut cmd = Command::new(bin("ws-node"));
        self.common(&mut cmd);
        cmd.env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("PUBLIC_URL", format!("ws://127.0.0.1:{port}"))
            .env("NODE_ID", id)
            .env("JWT_SECRET", &self.secret)
            .env("HEARTBEAT_MS", "200")
            .env("NODE_TTL_MS", "1000")
            .env("HANDOFF_TIMEOUT_MS", "1500")
            .envs(env.iter().copied());
        (
            Proc::spawn(id, cmd, &self.log_dir),
            format!("ws://127.0.0.1:{port}/socket"),
            format!("http://127.0.0.1:{port}"),
        )
    }
}

/// A TCP forwarder the test can cut: one process's link to a server (its
/// Redis) fails while everyone else's works, as in a network partition.
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards a free port to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("addr").port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, l) = (cut.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped at once: the client sees its connection reset
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap_or_else(|p| p.into_inner()).push(link);
            }
        });
        Proxy { port, cut, links, accept }
    }

    /// Breaks every link and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            link.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
