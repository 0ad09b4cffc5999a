//! Test support: start a broker in-process on port 0 and talk to it.
//!
//! Every integration test starts its own broker, so tests run in parallel without sharing state
//! and never depend on a fixed port.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use stampede_broker::{Config, RunningBroker};
use stampede_client::raw::RawConnection;
use stampede_client::{Client, ConnectOptions};

pub mod lossyfs;
pub mod nats;
pub mod process;

pub use stampede_broker::config::StorageKind;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A broker running inside the test process.
pub struct TestBroker {
    /// The running broker.
    pub broker: RunningBroker,
    /// `tcp://127.0.0.1:<port>`.
    pub tcp_url: String,
    /// `ws://127.0.0.1:<port>/ws`.
    pub ws_url: String,
    /// `http://127.0.0.1:<port>`, the management listener (`None` with `http_addr = none`).
    pub http_url: Option<String>,
    /// Keeps a sled data directory alive for the broker's lifetime (when one is used).
    pub data_dir: Option<tempfile::TempDir>,
}

impl TestBroker {
    /// A broker with default settings and in-memory storage.
    pub async fn start() -> TestBroker {
        TestBroker::start_with(Config::ephemeral()).await
    }

    /// A broker with `config` (listen addresses should be port 0).
    pub async fn start_with(config: Config) -> TestBroker {
        // A test's store belongs in a temporary directory: a relative data_dir (the default
        // `data`) would write into the checkout.
        assert!(
            config.storage != StorageKind::Sled || config.data_dir.is_absolute(),
            "a test broker storing in sled needs an absolute data_dir (start from Config::ephemeral())"
        );
        let broker = stampede_broker::start(&config).await.expect("broker starts");
        TestBroker {
            tcp_url: format!("tcp://{}", broker.stomp_addr),
            ws_url: format!("ws://{}{}", broker.ws_addr, config.ws_path),
            http_url: broker.http_addr.map(|addr| format!("http://{addr}")),
            broker,
            data_dir: None,
        }
    }

    /// A broker storing in sled under a fresh temporary directory.
    pub async fn start_durable(mut config: Config) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        config.storage = StorageKind::Sled;
        config.data_dir = dir.path().to_owned();
        let mut broker = TestBroker::start_with(config).await;
        broker.data_dir = Some(dir);
        broker
    }

    /// A broker storing in sled under `dir`, which may already hold data.
    pub async fn restart_on(dir: tempfile::TempDir, mut config: Config) -> TestBroker {
        config.storage = StorageKind::Sled;
        config.data_dir = dir.path().to_owned();
        let mut broker = TestBroker::start_with(config).await;
        broker.data_dir = Some(dir);
        broker
    }

    /// Stops the broker and starts a new one on the same data directory (new ports).
    pub async fn restart(self, mut config: Config) -> TestBroker {
        let dir = self.data_dir;
        self.broker.shutdown(WAIT).await;
        if let Some(dir) = &dir {
            config.storage = StorageKind::Sled;
            config.data_dir = dir.path().to_owned();
        }
        let mut broker = TestBroker::start_with(config).await;
        broker.data_dir = dir;
        broker
    }

    /// A connected client over TCP.
    pub async fn client(&self) -> Client {
        Client::connect(&self.tcp_url).await.expect("client connects over TCP")
    }

    /// A connected client over WebSocket.
    pub async fn ws_client(&self) -> Client {
        Client::connect(&self.ws_url).await.expect("client connects over WebSocket")
    }

    /// A client with custom options over TCP.
    pub async fn client_with(&self, adjust: impl FnOnce(ConnectOptions) -> ConnectOptions) -> Client {
        let options = adjust(ConnectOptions::new(&self.tcp_url).expect("valid url"));
        Client::connect_with(options).await.expect("client connects")
    }

    /// A raw TCP connection (no CONNECT sent yet).
    pub async fn raw(&self) -> RawConnection {
        RawConnection::connect(self.broker.stomp_addr).await.expect("raw connection")
    }
}

/// The `stampede` binary, for tests that run the broker as a child process (crash and
/// hostile-client tests).
///
/// A temporary directory in memory (`/dev/shm`) where there is one: for tests about what the
/// store does with its files, not about the disk's sync rate.
pub fn scratch_dir() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm").expect("temp dir in /dev/shm"),
        false => tempfile::tempdir().expect("temp dir"),
    }
}

/// True when the tests run as root (mounting a tmpfs or a FUSE file system needs it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").ok().is_some_and(|status| {
        status.lines().any(|l| l.strip_prefix("Uid:").and_then(|ids| ids.split_whitespace().nth(1)) == Some("0"))
    })
}

/// `$STAMPEDE_BIN` when it is at least as new as every source file it is built from, so a
/// stale release binary never stands in for the code under test; otherwise
/// `<target>/debug/stampede`, built once per test process when missing or older than the
/// sources.
pub fn broker_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let newest = newest_broker_source();
        let fresh = |path: &Path| path.metadata().and_then(|m| m.modified()).is_ok_and(|built| built >= newest);
        if let Some(bin) = std::env::var_os("STAMPEDE_BIN").map(PathBuf::from).filter(|p| fresh(p)) {
            return bin;
        }
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"));
        let bin = target.join("debug").join("stampede");
        if !fresh(&bin) {
            build_broker();
        }
        assert!(bin.is_file(), "no broker binary at {}", bin.display());
        bin
    })
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace")
}

/// The newest modification time among the sources of the broker binary.
fn newest_broker_source() -> SystemTime {
    fn walk(path: &Path, newest: &mut SystemTime) {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                walk(&entry.path(), newest);
            }
        } else if let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) {
            *newest = (*newest).max(modified);
        }
    }
    let mut newest = SystemTime::UNIX_EPOCH;
    for krate in ["broker", "storage", "protocol"] {
        walk(&workspace().join(krate).join("src"), &mut newest);
        walk(&workspace().join(krate).join("Cargo.toml"), &mut newest);
    }
    newest
}

/// `cargo build -p stampede-broker --bin stampede`, bounded in time.
fn build_broker() {
    eprintln!("building the broker (cargo build -p stampede-broker --bin stampede)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = std::process::Command::new(cargo)
        .args(["build", "-p", "stampede-broker", "--bin", "stampede"])
        .current_dir(workspace())
        .stdin(Stdio::null())
        .spawn()
        .expect("cargo runs");
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().expect("cargo build") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cargo build -p stampede-broker did not finish within 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "cargo build -p stampede-broker --bin stampede failed: {status}");
}

/// Installs ring as the process's rustls provider. The broker's webhooks build reqwest without a
/// provider of its own (ring is the project's one), and Cargo unifies that feature into every
/// reqwest of the workspace, so a `reqwest::Client` built before this would panic.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client for tests (see [`install_crypto_provider`]). Each read waits at most [`WAIT`],
/// so a stalled answer fails the test, while a long event stream that keeps arriving does not.
pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder().connect_timeout(WAIT).read_timeout(WAIT).build().expect("http client")
}

/// The management-listener tests' administrator and plain user (both may read and write all).
pub const ADMIN: (&str, &str) = ("alice", "wonderland");
/// See [`ADMIN`].
pub const USER: (&str, &str) = ("bob", "builder");

/// A user with every permission and a cheap password hash.
pub fn user_with_every_permission(password: &str, admin: bool) -> stampede_broker::config::UserConfig {
    stampede_broker::config::UserConfig {
        password_hash: stampede_broker::security::auth::hash_password_with(password, 64, 1).expect("hash"),
        read: vec!["**".to_owned()],
        write: vec!["**".to_owned()],
        vhosts: Default::default(),
        admin,
    }
}

/// [`ADMIN`] and [`USER`] on an ephemeral broker, with short login-failure delays.
pub fn admin_and_user_config() -> Config {
    let mut config = Config::ephemeral();
    config.auth_failure_delay_ms = 1;
    config.auth_failure_max_delay_ms = 2;
    config.users.insert(ADMIN.0.into(), user_with_every_permission(ADMIN.1, true));
    config.users.insert(USER.0.into(), user_with_every_permission(USER.1, false));
    config
}

/// Runs the real `stampede ctl` binary against `broker` (as alice unless `login` says
/// otherwise); returns its exit code, standard output and standard error.
pub async fn ctl(broker: &TestBroker, login: Option<(&str, &str)>, args: &[&str]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(broker_binary());
    command.arg("ctl").arg("--url").arg(broker.http_url.as_deref().expect("management listener"));
    if let Some((user, password)) = login {
        command.args(["--user", user]).env("STAMPEDE_CTL_PASSWORD", password);
    } else {
        command.env_remove("STAMPEDE_CTL_PASSWORD");
    }
    command.env_remove("STAMPEDE_CTL_USER").env_remove("STAMPEDE_CTL_URL").env_remove("STAMPEDE_CONFIG");
    command.args(args).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("stampede ctl finishes")
        .expect("stampede ctl runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
