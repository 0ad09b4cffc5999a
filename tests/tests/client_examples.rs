//! The client crate's programs, its examples (clients/examples/) and `stampede-cli`, are built
//! and run against an in-process broker, so the code a new user copies first is known to work
//! and the CLI's errors are known to say what went wrong.
//!
//! They are separate programs: the test builds them with the same cargo, profile and target
//! directory as itself, runs each with the broker's URL, and checks its exit status and output.
//! Each ends by itself; a run is still cut off after [`RUN_LIMIT`].

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use stampede_tests::TestBroker;

/// Longest an example may run: they wait at most 5 s for any one message.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Builds the examples and `stampede-cli` once per test process and returns the profile
/// directory (`<target>/<profile>`).
fn programs_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // This test runs from <target>/<profile>/deps/; the examples land in
        // <target>/<profile>/examples/.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("<target>/<profile>");
        let target_dir = profile_dir.parent().expect("<target>");
        let profile = profile_dir.file_name().and_then(|name| name.to_str()).expect("profile name");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let cargo_profile = if profile == "debug" { "dev" } else { profile };
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "stampede-client",
                "--features",
                "cli",
                "--examples",
                "--bins",
                "--profile",
                cargo_profile,
            ])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the examples and stampede-cli failed: {status}");
        profile_dir.to_owned()
    })
}

fn examples_dir() -> PathBuf {
    programs_dir().join("examples")
}

/// Runs `stampede-cli` with `args`; returns (success, stdout, stderr).
async fn run_cli(args: &[&str]) -> (bool, String, String) {
    let dir = tokio::task::spawn_blocking(programs_dir).await.unwrap();
    let output = tokio::process::Command::new(dir.join("stampede-cli"))
        .args(args)
        .env_remove("STAMPEDE_URL")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_LIMIT, output).await.expect("stampede-cli ended in time").unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// Runs example `name` with `url`; returns its standard output, after checking it succeeded.
async fn run_example(name: &str, url: &str) -> String {
    let dir = tokio::task::spawn_blocking(examples_dir).await.unwrap();
    let child = tokio::process::Command::new(dir.join(name))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting example {name}: {e}"));
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("example {name} did not end within {RUN_LIMIT:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "example {name} failed ({}):\n{stdout}\n{stderr}", output.status);
    stdout
}

#[tokio::test]
async fn the_pubsub_example_receives_every_headline() {
    let broker = TestBroker::start().await;
    let out = run_example("pubsub", &broker.tcp_url).await;
    for headline in ["markets up", "rain tomorrow", "cat elected mayor"] {
        assert!(out.contains(&format!("received on /topic/examples.news: {headline}")), "{out}");
    }
}

#[tokio::test]
async fn the_pubsub_example_also_works_over_websocket() {
    let broker = TestBroker::start().await;
    let out = run_example("pubsub", &broker.ws_url).await;
    assert_eq!(out.lines().filter(|line| line.starts_with("received on")).count(), 3, "{out}");
}

#[tokio::test]
async fn the_worker_example_does_and_acknowledges_every_job() {
    let broker = TestBroker::start().await;
    let out = run_example("worker", &broker.tcp_url).await;
    let done: Vec<&str> = out.lines().filter(|line| line.starts_with("done: ")).collect();
    assert_eq!(done, ["done: job 1", "done: job 2", "done: job 3", "done: job 4", "done: job 5", "done: last job"]);
}

#[tokio::test]
async fn the_request_reply_example_gets_every_answer() {
    let broker = TestBroker::start().await;
    let out = run_example("request_reply", &broker.tcp_url).await;
    assert!(
        out.contains("hello -> HELLO") && out.contains("stomp -> STOMP") && out.contains("world -> WORLD"),
        "{out}"
    );
}

#[tokio::test]
async fn an_example_pointed_at_no_broker_fails_with_a_sentence_naming_the_address() {
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = tokio::task::spawn_blocking(examples_dir).await.unwrap();
    let output =
        tokio::process::Command::new(dir.join("pubsub")).arg(format!("tcp://{address}")).kill_on_drop(true).output();
    let output = tokio::time::timeout(RUN_LIMIT, output).await.unwrap().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("Error: Connect: cannot connect to {address}: ")), "{stderr}");
}

// ------------------------------------------------------------------------------------------
// stampede-cli

#[tokio::test]
async fn the_cli_names_the_address_that_refused() {
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("tcp://{address}");
    let (ok, _, stderr) = run_cli(&["--url", &url, "send", "/queue/a", "x"]).await;
    assert!(!ok);
    assert!(stderr.starts_with(&format!("stampede-cli: cannot connect to {address}: ")), "{stderr}");
}

#[tokio::test]
async fn the_cli_says_use_tcp_when_a_ws_url_names_the_stomp_port() {
    let broker = TestBroker::start().await;
    let address = broker.broker.stomp_addr;
    let (ok, _, stderr) = run_cli(&["--url", &format!("ws://{address}/ws"), "send", "/queue/a", "x"]).await;
    assert!(!ok);
    assert!(stderr.contains(&format!("use tcp://{address}")), "{stderr}");
}

#[tokio::test]
async fn the_cli_says_use_ws_when_a_tcp_url_names_the_websocket_port() {
    let broker = TestBroker::start().await;
    let address = broker.broker.ws_addr;
    let (ok, _, stderr) = run_cli(&["--url", &format!("tcp://{address}"), "send", "/queue/a", "x"]).await;
    assert!(!ok);
    assert!(stderr.contains(&format!("use ws://{address}/ws")), "{stderr}");
}

#[tokio::test]
async fn the_cli_prints_the_servers_404_body_for_a_wrong_websocket_path() {
    let broker = TestBroker::start().await;
    let url = format!("ws://{}/stomp", broker.broker.ws_addr);
    let (ok, _, stderr) = run_cli(&["--url", &url, "send", "/queue/a", "x"]).await;
    assert!(!ok);
    assert!(stderr.contains("HTTP 404") && stderr.contains(&format!("{}/ws", broker.broker.ws_addr)), "{stderr}");
}

#[tokio::test]
async fn the_cli_speaks_tls_with_a_ca_file_and_skips_verification_only_with_insecure() {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let config = stampede_broker::Config {
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        ..stampede_broker::Config::ephemeral()
    };
    let broker = TestBroker::start_with(config).await;
    let url = format!("tls://localhost:{}", broker.broker.stomp_tls_addr.unwrap().port());
    let ca_file = cert.to_str().unwrap();

    let (ok, _, stderr) = run_cli(&["--url", &url, "send", "/queue/tls", "unverified", "--receipt"]).await;
    assert!(!ok, "an untrusted certificate is refused by default");
    assert!(stderr.contains("certificate"), "{stderr}");

    let (ok, _, stderr) =
        run_cli(&["--url", &url, "--ca-file", ca_file, "send", "/queue/tls", "trusted", "--receipt"]).await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run_cli(&["--url", &url, "--insecure", "send", "/queue/tls", "insecure", "--receipt"]).await;
    assert!(ok && stderr.contains("not verified"), "{stderr}");
    let (ok, stdout, stderr) =
        run_cli(&["--url", &url, "--ca-file", ca_file, "subscribe", "/queue/tls", "-n", "2"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "trusted\ninsecure\n");
}

#[tokio::test]
async fn the_readme_rust_quick_start_is_the_quickstart_example() {
    let readme = include_str!("../../README.md");
    let example = include_str!("../../clients/examples/quickstart.rs");
    let between = |text: &'static str, begin: &str, end: &str| -> &'static str {
        let start = text.find(begin).map(|i| i + begin.len()).expect("begin marker");
        &text[start..start + text[start..].find(end).expect("end marker")]
    };
    let in_readme = between(readme, "<!-- quickstart-rust -->\n```rust\n", "```");
    let in_example = between(example, "// quickstart-rust-begin\n", "// quickstart-rust-end");
    assert_eq!(in_readme, in_example, "the README's Rust quick start and clients/examples/quickstart.rs differ");
}

#[tokio::test]
async fn the_quickstart_example_gets_an_answer_from_a_worker() {
    // Built first: the worker's wait below is for the example, not for cargo.
    tokio::task::spawn_blocking(examples_dir).await.unwrap();
    let broker = TestBroker::start().await;
    let worker = broker.client().await;
    let mut jobs = worker.subscribe("/queue/jobs", stampede_client::SubscribeOptions::new()).await.unwrap();
    let answering = tokio::spawn(async move {
        let job = jobs.recv_timeout(Duration::from_secs(30)).await.unwrap();
        let body = format!("done: {}", job.body_str().unwrap_or_default());
        worker.reply(&job, body, stampede_client::Headers::new()).await.unwrap();
    });
    let output = run_example("quickstart", &broker.tcp_url).await;
    assert!(output.contains("answer: done: resize photo.jpg"), "{output}");
    answering.await.unwrap();
}
