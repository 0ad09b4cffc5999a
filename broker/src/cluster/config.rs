//! The `[cluster]` table: where the NATS engine is and how this node joins it.
//!
//! Its keys come from the file, from `STAMPEDE_CLUSTER__<KEY>` variables (two underscores: the
//! table, then the key) and from `--cluster-*` flags, through the same machinery as every other
//! key ([`crate::config`]). Without the table the broker is a single node and nothing here is
//! read. [`ClusterConfig::default`] is the one source of each default.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a `/queue/` destination does in cluster mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueMode {
    /// Queues live in JetStream, shared by every node: consumers on different nodes compete
    /// for one queue (see [`crate::cluster::queue`]). A temporary queue stays on its
    /// connection's node and gets replies sent on other nodes over core NATS.
    #[default]
    Jetstream,
    /// SEND and SUBSCRIBE to any queue get an ERROR saying queues are not clustered.
    Refuse,
    /// Queues work as on a single node, each node with its own (a consumer sees only what was
    /// sent through its own node).
    NodeLocal,
}

/// The `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers, `nats://HOST:PORT` or `tls://HOST:PORT` (the client fails over between
    /// them); at least one.
    pub nats_urls: Vec<String>,
    /// NATS user name (with `password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// NATS password (with `user`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// NATS token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// NATS credentials file (JWT plus NKey seed, as `nsc` writes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    /// Require TLS to the NATS servers (also implied by `tls://` URLs).
    #[serde(with = "crate::config::values::serde_with::boolean")]
    pub tls: bool,
    /// PEM file of the CA that signed the NATS servers' certificates [default: the system's
    /// web roots].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for NATS servers that verify clients (with `tls_key_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// This node's name in logs, `/readyz` and its NATS connection name [default: the host
    /// name]. Names need not be unique: each start also draws a random instance id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Replicas of the JetStream streams this cluster creates: 1 (one NATS server, tests) or
    /// 3 (a NATS cluster of three, production). Read once queues and durable subscriptions
    /// live in JetStream.
    pub stream_replicas: u8,
    /// First tokens of every NATS subject this cluster uses; clusters sharing one NATS
    /// account need different prefixes.
    pub subject_prefix: String,
    /// `jetstream`, `refuse` or `node-local`: what queue destinations do.
    pub queues: QueueMode,
    /// How long JetStream waits for a delivered queue message's ACK before it hands the
    /// message to another node, in ms. A node keeps the messages its clients hold alive (it
    /// tells JetStream they are in progress), so this is how soon a dead node's messages move.
    pub ack_wait_ms: u64,
    /// How long a NACKed queue message waits before JetStream delivers it again, in ms.
    pub redelivery_delay_ms: u64,
    /// Longest a SUBSCRIBE waits for the NATS server to confirm this node's interest, in ms;
    /// past it the client gets an ERROR `cluster engine unavailable`.
    pub confirm_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_urls: Vec::new(),
            user: None,
            password: None,
            token: None,
            creds_file: None,
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            node_name: None,
            stream_replicas: 1,
            subject_prefix: "stampede".to_owned(),
            queues: QueueMode::Jetstream,
            confirm_timeout_ms: 5000,
            ack_wait_ms: 30_000,
            redelivery_delay_ms: 0,
        }
    }
}

impl ClusterConfig {
    /// Every key of the table, as serde knows them.
    pub fn keys() -> &'static [&'static str] {
        static KEYS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
        KEYS.get_or_init(crate::config::field_names::<ClusterConfig>)
    }

    /// `node_name`, or this machine's host name, or `stampede`.
    pub fn effective_node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(host_name)
    }

    /// Checks the table; the error is one line naming the key.
    ///
    /// # Errors
    /// The first key with a value that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.nats_urls.is_empty() {
            return Err("cluster.nats_urls is empty: name at least one NATS server, e.g. nats_urls = [\"nats://127.0.0.1:4222\"] (or STAMPEDE_CLUSTER__NATS_URLS, --cluster-nats-urls)".to_owned());
        }
        for url in &self.nats_urls {
            let parsed: Result<async_nats::ServerAddr, _> = url.parse();
            match parsed {
                Ok(addr) if matches!(addr.scheme(), "nats" | "tls") => {}
                Ok(addr) => {
                    return Err(format!(
                        "cluster.nats_urls: {url:?} uses the scheme {:?}; use nats://HOST:PORT or tls://HOST:PORT",
                        addr.scheme()
                    ));
                }
                Err(error) => {
                    return Err(format!(
                        "cluster.nats_urls: {url:?} is not a NATS URL (nats://HOST:PORT or tls://HOST:PORT): {error}"
                    ));
                }
            }
        }
        if ![1, 3].contains(&self.stream_replicas) {
            return Err(format!(
                "cluster.stream_replicas must be 1 or 3, not {}: 1 for a single NATS server, 3 for a NATS cluster of three (2 cannot lose a server without losing quorum)",
                self.stream_replicas
            ));
        }
        super::subject::check_prefix(&self.subject_prefix)
            .map_err(|reason| format!("cluster.subject_prefix cannot be used: {reason}"))?;
        if let Some(name) = &self.node_name
            && (name.trim().is_empty() || name.chars().any(char::is_control))
        {
            return Err(format!("cluster.node_name {name:?} must be non-empty and free of control characters"));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("cluster.user and cluster.password must be given together".to_owned());
        }
        let methods = [self.user.is_some(), self.token.is_some(), self.creds_file.is_some()];
        if methods.iter().filter(|&&given| given).count() > 1 {
            return Err(
                "cluster: give one of user + password, token or creds_file, not several: the NATS server checks one"
                    .to_owned(),
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("cluster.tls_cert_file and cluster.tls_key_file must be given together".to_owned());
        }
        let files = [
            ("creds_file", &self.creds_file),
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        for (key, path) in files {
            if let Some(path) = path
                && let Err(error) = std::fs::metadata(path)
            {
                return Err(format!("cluster.{key} {}: {error}", path.display()));
            }
        }
        if self.ack_wait_ms < 1000 {
            return Err(format!(
                "cluster.ack_wait_ms must be at least 1000, not {}: the node renews its clients' messages every third of it",
                self.ack_wait_ms
            ));
        }
        if self.confirm_timeout_ms == 0 {
            return Err("cluster.confirm_timeout_ms must be above 0".to_owned());
        }
        Ok(())
    }
}

/// This machine's host name (Linux), or `stampede` when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|name| !name.is_empty()))
        .unwrap_or_else(|| "stampede".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Change = Box<dyn FnOnce(&mut ClusterConfig)>;

    fn with(change: impl FnOnce(&mut ClusterConfig)) -> Result<(), String> {
        let mut config = ClusterConfig { nats_urls: vec!["nats://127.0.0.1:4222".to_owned()], ..Default::default() };
        change(&mut config);
        config.validate()
    }

    #[test]
    fn bad_values_get_one_line_naming_the_key() {
        assert_eq!(with(|_| {}), Ok(()));
        let cases: [(&str, Change); 8] = [
            ("cluster.nats_urls is empty", Box::new(|c| c.nats_urls.clear())),
            ("cluster.nats_urls: \"http://x:1\"", Box::new(|c| c.nats_urls = vec!["http://x:1".to_owned()])),
            ("cluster.stream_replicas must be 1 or 3, not 2", Box::new(|c| c.stream_replicas = 2)),
            ("cluster.subject_prefix", Box::new(|c| c.subject_prefix = "a b".to_owned())),
            ("cluster.user and cluster.password", Box::new(|c| c.user = Some("u".to_owned()))),
            (
                "give one of",
                Box::new(|c| {
                    c.token = Some("t".to_owned());
                    c.creds_file = Some("/etc/hostname".into());
                }),
            ),
            ("cluster.creds_file /nonexistent", Box::new(|c| c.creds_file = Some("/nonexistent".into()))),
            ("cluster.tls_cert_file and", Box::new(|c| c.tls_cert_file = Some("/etc/hostname".into()))),
        ];
        for (expected, change) in cases {
            let error = with(change).unwrap_err();
            assert!(error.contains(expected), "{error:?} should say {expected:?}");
            assert!(!error.contains('\n'), "{error:?}");
        }
    }

    #[test]
    fn every_cluster_key_is_in_the_readme_table_with_its_real_default() {
        let readme = include_str!("../../../README.md");
        let table =
            readme.split("| key in `[cluster]` | default | meaning |").nth(1).expect("the README's [cluster] table");
        let rows: Vec<&str> = table.lines().skip(2).take_while(|line| line.starts_with('|')).collect();
        let defaults = toml::Table::try_from(ClusterConfig::default()).expect("renders as TOML");
        for key in ClusterConfig::keys() {
            let row =
                rows.iter().find(|row| row.split('|').nth(1).is_some_and(|cell| cell.contains(&format!("`{key}`"))));
            let row = row.unwrap_or_else(|| panic!("the README's [cluster] table has no row for {key}"));
            // Empty lists and unset options are written as "none".
            if let Some(value) = defaults.get(*key).filter(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
                let default_cell = row.split('|').nth(2).expect("a default cell");
                let shown = match value {
                    toml::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                assert!(
                    default_cell.contains(&format!("`{shown}`")),
                    "{key}: README says {default_cell:?}, the code {shown}"
                );
            }
        }
    }

    #[test]
    fn node_name_defaults_to_the_host_name() {
        let config = ClusterConfig::default();
        assert!(!config.effective_node_name().is_empty());
        let named = ClusterConfig { node_name: Some("a".to_owned()), ..ClusterConfig::default() };
        assert_eq!(named.effective_node_name(), "a");
    }
}
