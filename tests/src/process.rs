//! The real `stampede` binary as a child process with its listeners on loopback port 0, for
//! tests that must kill it (-9), restart it on the same data, or run it under a shim: the
//! addresses are read from its log, and the log is kept for assertions.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use stampede_client::{Client, ConnectOptions};

use crate::{WAIT, broker_binary, http_client};

/// Connect and receipt timeout of [`connect`]: a broker binary under load (fsync, strace, FUSE)
/// answers slower than one in the test's process.
const CLIENT_WAIT: Duration = Duration::from_secs(10);

/// A client of a broker binary at `url`, or a panic naming the URL.
pub async fn connect(url: &str) -> Client {
    let options = ConnectOptions::new(url).expect("url").connect_timeout(CLIENT_WAIT).receipt_timeout(CLIENT_WAIT);
    Client::connect_with(options).await.unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// How long the binary may take to log its listeners.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A broker child process, killed when dropped.
pub struct BrokerProcess {
    child: Child,
    /// The STOMP over TCP listener.
    pub addr: SocketAddr,
    /// The management HTTP listener.
    pub http: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl BrokerProcess {
    /// The binary on `data_dir`, every listener (management too) on loopback port 0, info logs
    /// without colour; add the environment a test needs, then [`BrokerProcess::spawn`] it.
    pub fn command(data_dir: &Path) -> Command {
        let mut command = Command::new(broker_binary());
        command
            .args(["--stomp-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--log-level", "info", "--data-dir"])
            .arg(data_dir)
            .env("NO_COLOR", "1")
            .env_remove("STAMPEDE_BIN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `command` (from [`BrokerProcess::command`]) and waits for its listeners.
    pub async fn spawn(mut command: Command) -> BrokerProcess {
        let mut child = command.spawn().expect("broker runs");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, mut addresses) = tokio::sync::mpsc::unbounded_channel::<(bool, SocketAddr)>();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for reader in [Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>, Box::new(stderr)] {
            let (log, found) = (Arc::clone(&log), found.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    for (stomp, marker) in
                        [(true, "STOMP over TCP listening on "), (false, "management HTTP listening on http://")]
                    {
                        if let Some(addr) = line.split(marker).nth(1).and_then(|rest| rest.trim().parse().ok()) {
                            let _ = found.send((stomp, addr));
                        }
                    }
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        drop(found);
        let (mut addr, mut http) = (None, None);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while addr.is_none() || http.is_none() {
            match tokio::time::timeout_at(deadline, addresses.recv()).await {
                Ok(Some((true, found))) => addr = Some(found),
                Ok(Some((false, found))) => http = Some(found),
                _ => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let log = log.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
                    panic!("the broker did not start:\n{log}");
                }
            }
        }
        BrokerProcess { child, addr: addr.expect("STOMP address"), http: http.expect("HTTP address"), log }
    }

    /// The process id (for reading its memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the broker runs")
    }

    /// The STOMP URL.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// True when a line of the log so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|line| line.contains(text))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }

    /// GET `path` on the management listener: the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = http_client().get(format!("http://{}{path}", self.http)).send().await.expect("HTTP answers");
        (response.status().as_u16(), response.text().await.expect("HTTP body"))
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        tokio::time::timeout(WAIT, self.child.wait()).await.expect("killed broker exits").expect("wait");
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
