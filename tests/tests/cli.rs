//! The `stampede` binary as someone runs it in their first hour: log levels as people type
//! them, flags after the subcommand, environment variables that are checked and named, start-up
//! errors written once for a person, logs without colour codes in files, and a last line when
//! the broker has stopped. Each test runs the real binary as a child process.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stampede_tests::broker_binary;

/// How long a child broker may take to start or stop.
const PROCESS_WAIT: Duration = Duration::from_secs(20);

/// The binary with loopback port-0 listeners and no `STAMPEDE_*` variables of the test's own
/// environment.
fn stampede(args: &[&str]) -> Command {
    let mut command = Command::new(broker_binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STAMPEDE_") {
            command.env_remove(name);
        }
    }
    command.env_remove("NO_COLOR").args(args).stdin(Stdio::null());
    command
}

fn listening_args(data_dir: &Path) -> Vec<String> {
    ["--stomp-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([data_dir.display().to_string()])
        .collect()
}

/// Runs a command that exits by itself, bounded in time.
fn run(mut command: Command) -> Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the binary runs");
    let deadline = Instant::now() + PROCESS_WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("stampede did not exit within {PROCESS_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A broker process whose output lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(mut command: Command) -> Running {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the binary runs");
        let (sender, lines) = mpsc::channel();
        let streams: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().expect("stdout")), Box::new(child.stderr.take().expect("stderr"))];
        for stream in streams {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = sender.send(line);
                }
            });
        }
        Running { child, lines, seen: Vec::new() }
    }

    /// Waits for a line containing `needle`; panics with everything seen if none comes.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PROCESS_WAIT;
        loop {
            if let Some(line) = self.seen.iter().find(|line| line.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line containing {needle:?}; output:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// SIGTERM, then waits for the exit and collects the remaining output.
    fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(killed.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + PROCESS_WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "the broker did not stop within {PROCESS_WAIT:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_level_name_as_people_type_it_is_accepted_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = stampede(&["--log-level", "Warning"]);
    command.args(listening_args(&dir.path().join("data"))).env("STAMPEDE_QUEUE_MAX_LENGHT", "5");
    let mut broker = Running::start(command);
    let warning = broker.wait_for("STAMPEDE_QUEUE_MAX_LENGHT");
    assert!(warning.contains("WARN"), "{warning}");
}

#[test]
fn an_unknown_log_level_is_refused_with_one_line_listing_the_levels() {
    for (flag, variable) in [(Some("verbose"), None), (None, Some("json"))] {
        let mut command = stampede(&[]);
        if let Some(level) = flag {
            command.args(["--log-level", level]);
        }
        if let Some(level) = variable {
            command.env("STAMPEDE_LOG_LEVEL", level);
        }
        let output = run(command);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains("error, warn (or warning), info, debug, trace, off"), "{stderr}");
        assert!(first.contains(flag.or(variable).unwrap()), "{stderr}");
    }
}

#[test]
fn print_config_accepts_the_config_flag_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stampede.toml");
    std::fs::write(&file, "queue_max_length = 7\nmax_body = \"1 MiB\"\n").unwrap();
    let output = run(stampede(&["print-config", "--config", file.to_str().unwrap(), "--stomp-addr", "localhost:7"]));
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("queue_max_length = 7\n"), "{stdout}");
    assert!(stdout.contains("max_body = 1048576\n"), "{stdout}");
    assert!(stdout.contains("stomp_addr = \"127.0.0.1:7\"\n"), "{stdout}");
}

#[test]
fn print_config_reports_a_plaintext_password_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stampede.toml");
    std::fs::write(&file, "[users.alice]\npassword_hash = \"wonderland\"\n").unwrap();
    let output = run(stampede(&["print-config", "--config", file.to_str().unwrap()]));
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{}", text(&output.stdout));
    assert!(stderr.contains("alice") && stderr.contains("stampede passwd"), "{stderr}");
}

#[test]
fn an_unknown_stampede_variable_gets_a_warning_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = stampede(&[]);
    command.args(listening_args(&dir.path().join("data"))).env("STAMPEDE_QUEUE_MAX_SIZE", "5");
    let mut broker = Running::start(command);
    broker.wait_for("STOMP over TCP listening on");
    let warning = broker.wait_for("STAMPEDE_QUEUE_MAX_SIZE");
    assert!(warning.contains("WARN") && warning.contains("print-config --env"), "{warning}");
}

#[test]
fn an_invalid_environment_value_names_the_variable() {
    let mut command = stampede(&["print-config"]);
    command.env("STAMPEDE_MAX_CONNECTIONS", "many").env("STAMPEDE_QUEUE_MAX_LENGTH", "5");
    let output = run(command);
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("STAMPEDE_MAX_CONNECTIONS=\"many\""), "{stderr}");
    let mut command = stampede(&["print-config"]);
    command.env("STAMPEDE_QUEUE_MAX_LENGTH", "5").env("STAMPEDE_ALLOW_ANONYMOUS", "1");
    let output = run(command);
    let stdout = text(&output.stdout);
    assert!(stdout.contains("queue_max_length = 5\n") && stdout.contains("allow_anonymous = true\n"), "{stdout}");
}

/// The one line of a failed start: the error, written once, without Rust internals.
fn start_failure(command: Command) -> String {
    let output = run(command);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "started although it should not: {}", text(&output.stdout));
    let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("stampede: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let error = errors[0].to_owned();
    for internal in ["Os {", "os error", "kind:", "Some(", "Caused by"] {
        assert!(!stderr.contains(internal), "{internal:?} shown: {stderr}");
    }
    error
}

#[test]
fn an_address_in_use_is_explained_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let command = stampede(&["--stomp-addr", &addr, "--ws-addr", "127.0.0.1:0", "--data-dir"]);
    let mut command = command;
    command.arg(dir.path().join("data"));
    let error = start_failure(command);
    assert_eq!(
        error,
        format!("stampede: cannot listen on {addr} for STOMP: address already in use (is another broker running?)")
    );
}

#[test]
fn a_data_dir_that_is_a_file_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, "not a directory").unwrap();
    let mut command = stampede(&[]);
    command.args(listening_args(&file));
    let error = start_failure(command);
    assert_eq!(error, format!("stampede: data_dir {} is a file, not a directory", file.display()));
}

#[test]
fn a_data_dir_locked_by_another_process_names_that_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut command = stampede(&[]);
    command.args(listening_args(&data));
    let mut first = Running::start(command);
    first.wait_for("STOMP over TCP listening on");
    let mut command = stampede(&[]);
    command.args(listening_args(&data));
    let error = start_failure(command);
    let expected = format!(
        "stampede: another stampede process (pid {}) is using the data directory {}",
        first.child.id(),
        data.display()
    );
    assert_eq!(error, expected);
}

#[test]
fn logs_written_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stampede.log");
    let mut command = stampede(&[]);
    command.args(listening_args(&dir.path().join("data")));
    let mut child = command.stdout(std::fs::File::create(&log).unwrap()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + PROCESS_WAIT;
    let written = loop {
        let written = std::fs::read_to_string(&log).unwrap_or_default();
        if written.contains("listening on") || Instant::now() > deadline {
            break written;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(written.contains("INFO"), "{written}");
    assert!(!written.contains('\u{1b}'), "escape codes in the log file: {written:?}");
}

/// On a terminal (a pseudo-terminal from util-linux `script`) logs are coloured, unless
/// `NO_COLOR` is set.
#[cfg(target_os = "linux")]
#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, "a file, so the start fails right after the warning").unwrap();
    let line = format!("{} --data-dir {}", broker_binary().display(), file.display());
    let on_terminal = |no_color: Option<&str>| {
        let mut command = Command::new("script");
        command.args(["-qec", &line, "/dev/null"]).env("STAMPEDE_NOT_A_KEY", "1").env_remove("NO_COLOR");
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let output = run(command);
        let shown = text(&output.stdout);
        assert!(shown.contains("STAMPEDE_NOT_A_KEY"), "{shown}");
        shown
    };
    assert!(on_terminal(None).contains('\u{1b}'), "no colour on a terminal");
    assert!(!on_terminal(Some("1")).contains('\u{1b}'), "colour despite NO_COLOR");
}

#[test]
fn a_stopped_line_is_logged_after_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = stampede(&[]);
    command.args(listening_args(&dir.path().join("data")));
    let mut broker = Running::start(command);
    broker.wait_for("STOMP over TCP listening on");
    let (status, lines) = broker.terminate();
    assert!(status.success(), "{status}: {}", lines.join("\n"));
    assert!(lines.last().is_some_and(|line| line.ends_with("INFO stopped")), "{}", lines.join("\n"));
}

#[test]
fn storage_reports_its_start_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = stampede(&[]);
    command.args(listening_args(&dir.path().join("data")));
    let mut broker = Running::start(command);
    broker.wait_for("STOMP over TCP listening on");
    let storage: Vec<&String> =
        broker.seen.iter().filter(|line| line.contains("storage") || line.contains("store")).collect();
    assert_eq!(storage.len(), 1, "{storage:#?}");
    assert!(storage[0].contains("recovered 0 stored messages"), "{}", storage[0]);
}

#[test]
fn the_default_max_connections_is_fitted_to_the_file_limit_at_info_level() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -n 2000 && exec \"$0\" \"$@\""])
        .arg(broker_binary())
        .args(listening_args(&dir.path().join("data")))
        .env_remove("NO_COLOR")
        // The test runner's own variable (where the release binary is) is not broker
        // configuration; the broker would rightly warn about it.
        .env_remove("STAMPEDE_BIN")
        .stdin(Stdio::null());
    let mut broker = Running::start(command);
    broker.wait_for("STOMP over TCP listening on");
    let fitted = broker.wait_for("max_connections");
    assert!(fitted.contains("INFO") && fitted.contains("max_connections is 1936"), "{fitted}");
    assert!(!broker.seen.iter().any(|line| line.contains("WARN")), "{}", broker.seen.join("\n"));
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = listening_args(dir.path());
    args.extend(["--log-format", "json"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut broker = Running::start(stampede(&args));
    let line = broker.wait_for("STOMP over TCP listening on");
    let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(event["level"], "INFO", "{event}");
    assert!(event["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{event}");
    assert!(event["target"].as_str().is_some_and(|t| t.starts_with("stampede")), "{event}");
    let message = event["fields"]["message"].as_str().expect("fields.message");
    let addr: std::net::SocketAddr = message.rsplit(' ').next().unwrap().parse().expect("the address in the message");
    assert!(addr.ip().is_loopback());
    let (status, lines) = broker.terminate();
    assert!(status.success(), "{status}");
    for line in lines.iter().filter(|line| !line.trim().is_empty()) {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok_and(|v| v.is_object()), "a line that is not a JSON object: {line}");
    }
}

#[test]
fn json_log_lines_of_a_connection_carry_its_session_peer_transport_and_vhost() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut args = listening_args(dir.path());
    args.extend(["--log-format", "json"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut broker = Running::start(stampede(&args));
    let listening = broker.wait_for("STOMP over TCP listening on");
    let event: serde_json::Value = serde_json::from_str(&listening).unwrap();
    let addr: std::net::SocketAddr =
        event["fields"]["message"].as_str().unwrap().rsplit(' ').next().unwrap().parse().unwrap();

    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    // A SEND without a destination: an ERROR, then the broker closes and logs it.
    client.write_all(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0SEND\n\nno destination\0").unwrap();
    let mut answer = String::new();
    let _ = client.read_to_string(&mut answer);
    assert!(answer.starts_with("CONNECTED") && answer.contains("ERROR"), "{answer}");
    let session = answer.lines().find_map(|line| line.strip_prefix("session:")).expect("a session header").to_owned();

    let closed = broker.wait_for("connection closed after ERROR");
    let event: serde_json::Value = serde_json::from_str(&closed).unwrap_or_else(|e| panic!("not JSON ({e}): {closed}"));
    let span = &event["span"];
    assert_eq!(span["name"], "connection", "{event}");
    assert_eq!(span["id"], session.as_str(), "{event}");
    assert_eq!(span["transport"], "tcp", "{event}");
    assert_eq!(span["vhost"], "/", "{event}");
    let peer: std::net::SocketAddr = span["peer"].as_str().expect("peer").parse().expect("an address");
    assert_eq!(peer, client.local_addr().unwrap(), "{event}");
    let (status, _) = broker.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn an_unknown_log_format_is_refused_naming_the_choices() {
    let output = run(stampede(&["--log-format", "xml", "print-config"]));
    assert!(!output.status.success());
    let error = text(&output.stderr);
    assert!(error.contains("human") && error.contains("json"), "{error}");
    let from_file = tempfile::tempdir().unwrap();
    let file = from_file.path().join("stampede.toml");
    std::fs::write(&file, "log_format = \"xml\"\n").unwrap();
    let output = run(stampede(&["--config", file.to_str().unwrap(), "print-config"]));
    assert!(!output.status.success());
    let error = text(&output.stderr);
    assert!(error.contains("log_format") || error.contains("human"), "{error}");
}

#[test]
fn the_demo_is_refused_on_a_broker_with_users_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stampede.toml");
    let hash = stampede_broker::security::auth::hash_password_with("pw", 64, 1).unwrap();
    std::fs::write(&file, format!("[users.alice]\npassword_hash = \"{hash}\"\n")).unwrap();
    let mut args = listening_args(dir.path());
    args.extend(["--demo", "--config"].map(str::to_owned));
    args.push(file.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run(stampede(&args));
    assert!(!output.status.success());
    let error = text(&output.stderr);
    assert!(error.contains("demo = true needs a broker without users"), "{error}");
}
