//! The deployment files (`Dockerfile`, `deploy/stampede.service`, `deploy/stampede.toml`)
//! against the real binary: the unit's `ExecStart` and the image's environment are accepted
//! as they are written, and the unit passes `systemd-analyze verify` where that exists. Docker
//! itself cannot run here; what the image runs is what these tests run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use stampede_tests::broker_binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// The binary with none of the test's own `STAMPEDE_*` variables.
fn stampede() -> Command {
    let mut command = Command::new(broker_binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STAMPEDE_") {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null());
    command
}

fn exec_start(unit: &str) -> Vec<String> {
    let line = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart line");
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_systemd_units_exec_start_flags_and_example_config_are_accepted_by_the_binary() {
    let unit = std::fs::read_to_string(repo().join("deploy/stampede.service")).unwrap();
    let words = exec_start(&unit);
    assert_eq!(words[0], "/usr/local/bin/stampede");
    let data = tempfile::tempdir().unwrap();
    let config = repo().join("deploy/stampede.toml");
    let args: Vec<String> = words[1..]
        .iter()
        .map(|word| match word.as_str() {
            "/etc/stampede/stampede.toml" => config.display().to_string(),
            "/var/lib/stampede" => data.path().display().to_string(),
            other => other.to_owned(),
        })
        .collect();
    let output = stampede().args(&args).arg("print-config").output().expect("the binary runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains(&format!("data_dir = \"{}\"", data.path().display())), "{printed}");
    assert!(printed.contains("stomp_addr = \"0.0.0.0:61613\""), "{printed}");
    assert!(printed.contains("[users.admin]"), "the example has a user, so 0.0.0.0 is allowed: {printed}");
    for hardening in ["DynamicUser=yes", "StateDirectory=stampede", "NoNewPrivileges=yes", "ProtectSystem=strict"] {
        assert!(unit.contains(hardening), "the unit lacks {hardening}");
    }
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"), "reload is SIGHUP");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_where_it_exists() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    if !version.status.success() {
        eprintln!("skipped: systemd-analyze does not run here");
        return;
    }
    let unit = std::fs::read_to_string(repo().join("deploy/stampede.service")).unwrap();
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let unit = unit.replace("/usr/local/bin/stampede", &broker_binary().display().to_string());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stampede.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze runs");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let problems: Vec<&str> = said.lines().filter(|line| line.contains("stampede.service")).collect();
    assert!(output.status.success() && problems.is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn the_dockerfiles_environment_names_real_keys_and_refuses_to_open_without_users() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    // The ENV instruction, with its continuation lines.
    let env_block: String = dockerfile
        .lines()
        .skip_while(|line| !line.starts_with("ENV "))
        .take_while(|line| line.starts_with("ENV ") || line.starts_with("    "))
        .collect::<Vec<_>>()
        .join(" ");
    let variables: Vec<(String, String)> = env_block
        .trim_start_matches("ENV ")
        .split_whitespace()
        .filter(|word| *word != "\\")
        .filter_map(|word| word.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    assert!(variables.iter().any(|(k, _)| k == "STAMPEDE_DATA_DIR"), "{variables:?}");
    for expected in ["USER stampede", "VOLUME [\"/var/lib/stampede\"]", "EXPOSE 61613", "AS build", "--locked"] {
        assert!(dockerfile.contains(expected), "the Dockerfile lacks {expected}");
    }
    let data = tempfile::tempdir().unwrap();
    let config = repo().join("deploy/stampede.toml");
    let with_image_env = |command: &mut Command| {
        for (key, value) in &variables {
            let value = match key.as_str() {
                "STAMPEDE_CONFIG" => config.display().to_string(),
                "STAMPEDE_DATA_DIR" => data.path().display().to_string(),
                _ => value.clone(),
            };
            command.env(key, value);
        }
    };
    let mut command = stampede();
    with_image_env(&mut command);
    let output = command.args(["print-config", "--env"]).output().expect("the binary runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for (key, value) in variables.iter().filter(|(k, _)| k.starts_with("STAMPEDE_") && k != "STAMPEDE_CONFIG") {
        if key == "STAMPEDE_DATA_DIR" {
            continue;
        }
        assert!(printed.lines().any(|line| line == format!("{key}={value}")), "{key}={value} not in:\n{printed}");
    }
    // The same environment with a configuration without users: refused, not opened to all.
    let bare = data.path().join("bare.toml");
    std::fs::write(&bare, "log_level = \"info\"\n").unwrap();
    let mut command = stampede();
    with_image_env(&mut command);
    let output = command.env("STAMPEDE_CONFIG", &bare).arg("print-config").output().expect("the binary runs");
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "0.0.0.0 without users must be refused");
    assert!(error.contains("no users are configured"), "{error}");
}
