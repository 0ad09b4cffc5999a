//! `stampede ctl`: the admin command line, a thin client of the management API.
//!
//! It is a subcommand of the broker's own binary rather than of `stampede-cli` because it
//! speaks HTTP to the management listener, not STOMP, and because it can then find that
//! listener the way the broker does: from the same `--config` file, `STAMPEDE_*` variables and
//! flags (`http_addr`), so on the broker's host `stampede ctl status` needs no URL. `--url`
//! (or `STAMPEDE_CTL_URL`) points it elsewhere; `--user`/`--password` (or `STAMPEDE_CTL_USER`,
//! `STAMPEDE_CTL_PASSWORD`) are an administrator's credentials.
//!
//! Output is a table for people, or with `--json` the API's own JSON for scripts. The exit
//! status says what happened, so scripts can branch on it: see [`Exit`].

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

/// Variables of `stampede ctl` start with this (they are not configuration keys).
pub const ENV_PREFIX: &str = "STAMPEDE_CTL_";

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `stampede ctl`'s arguments.
#[derive(Debug, Args)]
#[command(after_help = "Exit status: 0 done, 1 failed (the broker refused or broke), 2 usage, 3 not found, \
4 not allowed (credentials missing, wrong, or not an administrator), 5 conflict (e.g. delete-queue --if-empty \
on a queue that has messages), 6 the broker cannot be reached.")]
pub struct CtlArgs {
    /// The management listener, e.g. http://10.0.0.5:15672 [default: from http_addr].
    #[arg(long, env = "STAMPEDE_CTL_URL", value_name = "URL")]
    pub url: Option<String>,
    /// An administrator's user name.
    #[arg(long, short = 'u', env = "STAMPEDE_CTL_USER", value_name = "USER")]
    pub user: Option<String>,
    /// Its password (visible in process lists as a flag: prefer STAMPEDE_CTL_PASSWORD).
    #[arg(long, env = "STAMPEDE_CTL_PASSWORD", hide_env_values = true, value_name = "PASSWORD")]
    pub password: Option<String>,
    /// A JSON Web Token with the `stampede.admin` scope, sent as `Authorization: Bearer`
    /// instead of a user and password.
    #[arg(long, env = "STAMPEDE_CTL_TOKEN", hide_env_values = true, value_name = "JWT", conflicts_with = "user")]
    pub token: Option<String>,
    /// For an https:// URL: a PEM file of certificates to trust besides the usual public roots
    /// (the broker's own self-signed certificate, or a private CA).
    #[arg(long, env = "STAMPEDE_CTL_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The virtual host queue names are in.
    #[arg(long, default_value = "/", value_name = "VHOST")]
    pub vhost: String,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What `stampede ctl` does.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Version, uptime, listeners, totals and readiness.
    Status,
    /// Open connections.
    Connections(ListArgs),
    /// Close a connection; its client gets an ERROR with the reason.
    CloseConnection {
        /// Its id (the `id` column of `connections`).
        id: String,
        /// Why, for the client's ERROR frame.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Queues, with their depth and consumers.
    Queues(ListArgs),
    /// One queue.
    Queue {
        /// Its name, without /queue/.
        name: String,
    },
    /// Remove a queue's waiting messages (unacknowledged ones stay).
    Purge {
        /// The queue.
        name: String,
    },
    /// Delete a queue and its messages.
    DeleteQueue {
        /// The queue.
        name: String,
        /// Only if it holds no messages.
        #[arg(long)]
        if_empty: bool,
        /// Only if it has no consumers.
        #[arg(long)]
        if_unused: bool,
    },
    /// Show the first messages of a queue without taking them.
    Peek {
        /// The queue.
        name: String,
        /// How many (1..500).
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
    },
    /// Move a dead-letter queue's messages back to their original queues.
    MoveDlq {
        /// The dead-letter queue (e.g. DLQ.orders).
        name: String,
    },
    /// Durable topic subscriptions.
    DurableSubscriptions(ListArgs),
    /// Webhooks, with their state, counts and last error.
    Webhooks,
    /// STOMP bridges to other brokers, with their state, counts and last error.
    Bridges,
}

/// Paging of the listing commands.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only those whose name contains this.
    #[arg(long)]
    pub name: Option<String>,
    /// Page number, from 1.
    #[arg(long, default_value_t = 1)]
    pub page: usize,
    /// Items per page (1..500).
    #[arg(long, default_value_t = 100)]
    pub page_size: usize,
    /// Field to sort by (the API's field names, e.g. messages_ready).
    #[arg(long)]
    pub sort: Option<String>,
    /// Sort descending.
    #[arg(long)]
    pub reverse: bool,
}

/// The exit status of `stampede ctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// The broker refused or failed (400, 5xx), or its answer was not understood.
    Failed = 1,
    /// The command line was wrong.
    Usage = 2,
    /// No such connection, queue or subscription (404).
    NotFound = 3,
    /// Credentials missing or wrong, or not an administrator (401, 403).
    NotAllowed = 4,
    /// The broker's state refused it (409).
    Conflict = 5,
    /// The management listener could not be reached.
    Unreachable = 6,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The broker answered with an error.
    #[error("{reason} (HTTP {status})")]
    Api {
        /// Its status.
        status: StatusCode,
        /// Its `reason`.
        reason: String,
    },
    /// The management listener could not be reached.
    #[error("cannot reach the management API at {url}: {cause}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        cause: String,
    },
    /// The command line or configuration does not say enough.
    #[error("{0}")]
    Usage(String),
    /// The answer was not what the API sends.
    #[error("unexpected answer from the broker: {0}")]
    Protocol(String),
}

impl CtlError {
    /// The exit status for this failure.
    pub fn exit(&self) -> Exit {
        match self {
            CtlError::Api { status, .. } => match *status {
                StatusCode::NOT_FOUND => Exit::NotFound,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Exit::NotAllowed,
                StatusCode::CONFLICT => Exit::Conflict,
                _ => Exit::Failed,
            },
            CtlError::Unreachable { .. } => Exit::Unreachable,
            CtlError::Usage(_) => Exit::Usage,
            CtlError::Protocol(_) => Exit::Failed,
        }
    }
}

/// Runs `stampede ctl` with `args`; `http_addr` is the broker's management address from the
/// configuration, used when no `--url` is given. Prints the result or the error.
pub async fn main(args: &CtlArgs, http_addr: Option<SocketAddr>) -> ExitCode {
    match run(args, http_addr).await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("stampede ctl: {error}");
            ExitCode::from(error.exit() as u8)
        }
    }
}

/// Runs the command and returns what to print.
///
/// # Errors
/// The broker refused, could not be reached, or the command line lacks something.
pub async fn run(args: &CtlArgs, http_addr: Option<SocketAddr>) -> Result<String, CtlError> {
    let api = Api::new(args, http_addr)?;
    let vhost = encode(&args.vhost);
    let queue_path = |name: &str| format!("/api/v1/queues/{vhost}/{}", encode(name.trim_start_matches("/queue/")));
    let (value, render): (Value, fn(&Value) -> String) = match &args.command {
        CtlCommand::Status => {
            let mut overview = api.call(Method::GET, "/api/v1/overview", None, &[]).await?;
            // Readiness is part of the status; a 503 there is an answer, not a failure.
            let ready = api.call_any(Method::GET, "/readyz", None, &[]).await?;
            overview["readiness"] = ready;
            (overview, render_status)
        }
        CtlCommand::Connections(list) => {
            (api.call(Method::GET, &list_path("/api/v1/connections", list), None, &[]).await?, render_connections)
        }
        CtlCommand::CloseConnection { id, reason } => {
            let headers: Vec<(&str, &str)> = reason.iter().map(|r| ("x-reason", r.as_str())).collect();
            api.call(Method::DELETE, &format!("/api/v1/connections/{}", encode(id)), None, &headers).await?;
            (json!({"closed": id}), |v| format!("closed connection {}\n", text(&v["closed"])))
        }
        CtlCommand::Queues(list) => {
            let path = format!("{}&vhost={vhost}", list_path("/api/v1/queues", list));
            (api.call(Method::GET, &path, None, &[]).await?, render_queues)
        }
        CtlCommand::Queue { name } => (api.call(Method::GET, &queue_path(name), None, &[]).await?, render_queue),
        CtlCommand::Purge { name } => {
            let mut value = api.call(Method::DELETE, &format!("{}/contents", queue_path(name)), None, &[]).await?;
            value["queue"] = json!(name);
            (value, |v| format!("purged {} waiting messages from {}\n", text(&v["purged"]), text(&v["queue"])))
        }
        CtlCommand::DeleteQueue { name, if_empty, if_unused } => {
            let path = format!("{}?if-empty={if_empty}&if-unused={if_unused}", queue_path(name));
            api.call(Method::DELETE, &path, None, &[]).await?;
            (json!({"deleted": name}), |v| format!("deleted queue {}\n", text(&v["deleted"])))
        }
        CtlCommand::Peek { name, count } => {
            let body = json!({"count": count});
            (api.call(Method::POST, &format!("{}/peek", queue_path(name)), Some(body), &[]).await?, render_peek)
        }
        CtlCommand::MoveDlq { name } => {
            let mut value = api.call(Method::POST, &format!("{}/move", queue_path(name)), None, &[]).await?;
            value["queue"] = json!(name);
            (value, render_moved)
        }
        CtlCommand::DurableSubscriptions(list) => (
            api.call(Method::GET, &list_path("/api/v1/subscriptions/durable", list), None, &[]).await?,
            render_durables,
        ),
        CtlCommand::Webhooks => (api.call(Method::GET, "/api/v1/webhooks", None, &[]).await?, render_webhooks),
        CtlCommand::Bridges => (api.call(Method::GET, "/api/v1/bridges", None, &[]).await?, render_bridges),
    };
    if args.json {
        Ok(format!("{}\n", serde_json::to_string_pretty(&value).unwrap_or_default()))
    } else {
        Ok(render(&value))
    }
}

fn list_path(base: &str, list: &ListArgs) -> String {
    let mut path = format!("{base}?page={}&page_size={}", list.page, list.page_size);
    if let Some(name) = &list.name {
        path.push_str(&format!("&name={}", encode(name)));
    }
    if let Some(sort) = &list.sort {
        path.push_str(&format!("&sort={}", encode(sort)));
    }
    if list.reverse {
        path.push_str("&sort_reverse=true");
    }
    path
}

/// Percent-encodes everything but unreserved characters (so `/` becomes `%2F`).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The management API at one URL, with one user's credentials.
struct Api {
    base: String,
    authorization: Option<String>,
    client: reqwest::Client,
}

/// TLS for an https:// URL: the ring provider (the broker's own), the Mozilla roots, and the
/// certificates of `cacert` when given.
fn tls_config(cacert: Option<&std::path::Path>) -> Result<rustls::ClientConfig, CtlError> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = cacert {
        let unusable = |reason: String| CtlError::Usage(format!("--cacert {}: {reason}", path.display()));
        let certificates: Vec<rustls_pki_types::CertificateDer<'static>> =
            rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| unusable(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| unusable(e.to_string()))?;
        if certificates.is_empty() {
            return Err(unusable("no CERTIFICATE block found".to_owned()));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|e| unusable(e.to_string()))?;
        }
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| CtlError::Usage(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Api {
    fn new(args: &CtlArgs, http_addr: Option<SocketAddr>) -> Result<Api, CtlError> {
        let base = match (&args.url, http_addr) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(addr)) => {
                // A wildcard address is reached on loopback.
                let ip = if addr.ip().is_unspecified() {
                    if addr.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    }
                } else {
                    addr.ip()
                };
                format!("http://{}", SocketAddr::new(ip, addr.port()))
            }
            (None, None) => {
                return Err(CtlError::Usage(
                    "the management listener is off (http_addr = none); give --url or STAMPEDE_CTL_URL".to_owned(),
                ));
            }
        };
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(CtlError::Usage(format!("--url must start with http:// or https://, not {base:?}")));
        }
        let authorization = match (&args.user, &args.password, &args.token) {
            (_, _, Some(token)) => Some(format!("Bearer {token}")),
            (Some(user), password, None) => {
                let pair = format!("{user}:{}", password.as_deref().unwrap_or(""));
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
            }
            (None, Some(_), None) => return Err(CtlError::Usage("--password needs --user".to_owned())),
            (None, None, None) => None,
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(args.cacert.as_deref())?)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| CtlError::Usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(Api { base, authorization, client })
    }

    /// A request whose error statuses are errors.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<Value, CtlError> {
        let (status, value) = self.request(method, path, body, headers).await?;
        if status.is_success() {
            return Ok(value);
        }
        let reason = value["reason"].as_str().map_or_else(|| status.to_string(), str::to_owned);
        Err(CtlError::Api { status, reason })
    }

    /// A request whose 503 is an answer (readiness); other errors are errors.
    async fn call_any(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<Value, CtlError> {
        let (status, value) = self.request(method, path, body, headers).await?;
        if status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE {
            return Ok(value);
        }
        let reason = value["reason"].as_str().map_or_else(|| status.to_string(), str::to_owned);
        Err(CtlError::Api { status, reason })
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Value), CtlError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method, &url);
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(value) = body {
            request = request.header("content-type", "application/json").body(value.to_string());
        }
        let unreachable = |cause: String| CtlError::Unreachable { url: self.base.clone(), cause };
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                unreachable(format!("no answer within {REQUEST_TIMEOUT:?}"))
            } else {
                unreachable(error_chain(&e))
            }
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| unreachable(error_chain(&e)))?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| CtlError::Protocol(format!("{e} (HTTP {status})")))?
        };
        Ok((status, value))
    }
}

/// An error and its causes on one line ("client error (Connect): tcp connect error: ...").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// ------------------------------------------------------------------------------------ output

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "no".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A page of a listing as a table: one column per (header, field of each item).
fn listing(page: &Value, columns: &[(&str, &str)], what: &str) -> String {
    item_table(page, columns) + &page_footer(page, what)
}

/// The items of a listing as a table, one column per `(header, field)`.
fn item_table(list: &Value, columns: &[(&str, &str)]) -> String {
    let headers: Vec<&str> = columns.iter().map(|(header, _)| *header).collect();
    let rows = items(list).iter().map(|item| columns.iter().map(|(_, field)| text(&item[*field])).collect()).collect();
    table(&headers, rows)
}

/// A table with a header row, columns padded to their widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect(), &mut out);
    for row in rows {
        line(row, &mut out);
    }
    out
}

fn page_footer(page: &Value, what: &str) -> String {
    format!(
        "{} of {} {what} (page {} of {})\n",
        text(&page["item_count"]),
        text(&page["filtered_count"]),
        text(&page["page"]),
        page["page_count"].as_u64().unwrap_or(0).max(1)
    )
}

fn items(page: &Value) -> &[Value] {
    page["items"].as_array().map_or(&[], Vec::as_slice)
}

fn render_status(v: &Value) -> String {
    let mut out = format!("stampede {}, up {}s\n", text(&v["version"]), text(&v["uptime_seconds"]));
    let ready = v["readiness"]["status"].as_str().unwrap_or("unknown");
    out.push_str(&format!("readiness: {ready}"));
    if let Some(checks) = v["readiness"]["checks"].as_object() {
        let failing: Vec<String> = checks
            .iter()
            .filter(|(_, check)| check["ok"] == false)
            .map(|(name, check)| format!("{name}: {}", text(&check["detail"])))
            .collect();
        if !failing.is_empty() {
            out.push_str(&format!(" ({})", failing.join(", ")));
        }
    }
    out.push('\n');
    for listener in v["listeners"].as_array().map_or(&[][..], Vec::as_slice) {
        out.push_str(&format!("listening: {} {}\n", text(&listener["protocol"]), text(&listener["address"])));
    }
    let totals = &v["totals"];
    out.push_str(&format!(
        "connections {}, subscriptions {}, queues {}, messages ready {}, unacked {}\n",
        text(&totals["connections"]),
        text(&totals["subscriptions"]),
        text(&totals["queues"]),
        text(&totals["messages_ready"]),
        text(&totals["messages_unacked"])
    ));
    out
}

fn render_connections(page: &Value) -> String {
    let columns = [
        ("ID", "id"),
        ("USER", "user"),
        ("VHOST", "vhost"),
        ("TRANSPORT", "transport"),
        ("PEER", "peer"),
        ("SUBS", "subscriptions"),
        ("UNACKED", "pending_acks"),
        ("BYTES IN", "bytes_in"),
        ("BYTES OUT", "bytes_out"),
    ];
    listing(page, &columns, "connections")
}

fn render_queues(page: &Value) -> String {
    let columns = [
        ("NAME", "name"),
        ("VHOST", "vhost"),
        ("READY", "messages_ready"),
        ("UNACKED", "messages_unacked"),
        ("CONSUMERS", "consumers"),
        ("DURABLE", "durable"),
        ("DLQ", "dlq"),
    ];
    listing(page, &columns, "queues")
}

fn render_queue(q: &Value) -> String {
    let fields = [
        "name",
        "vhost",
        "durable",
        "messages_ready",
        "messages_unacked",
        "consumers",
        "messages_dropped",
        "dlq",
        "is_dlq",
        "idle",
    ];
    table(&["FIELD", "VALUE"], fields.iter().map(|f| vec![(*f).to_owned(), text(&q[*f])]).collect())
}

fn render_peek(v: &Value) -> String {
    let mut out =
        format!("{} of {} waiting messages (nothing was taken)\n", text(&v["count"]), text(&v["messages_ready"]));
    for (index, m) in v["messages"].as_array().map_or(&[][..], Vec::as_slice).iter().enumerate() {
        out.push_str(&format!(
            "\n#{} message-id {} ({} bytes{}{})\n",
            index + 1,
            text(&m["message_id"]),
            text(&m["body_bytes"]),
            if m["persistent"] == true { ", persistent" } else { "" },
            if m["delivery_count"].as_u64().unwrap_or(0) > 0 {
                format!(", delivered {} times", text(&m["delivery_count"]))
            } else {
                String::new()
            }
        ));
        if let Some(headers) = m["headers"].as_object() {
            for (name, value) in headers {
                out.push_str(&format!("  {name}: {}\n", text(value)));
            }
        }
        let encoding = if m["body_encoding"] == "base64" { " (base64)" } else { "" };
        let more = if m["truncated"] == true { " ..." } else { "" };
        out.push_str(&format!("  body{encoding}: {}{more}\n", text(&m["body_excerpt"])));
    }
    out
}

fn render_moved(v: &Value) -> String {
    let mut out = format!(
        "moved {} messages from {} back to their queues ({} skipped without an original queue, {} refused)\n",
        text(&v["moved"]),
        text(&v["queue"]),
        text(&v["skipped"]),
        text(&v["refused"])
    );
    if let Some(refusal) = v["refusal"].as_str() {
        out.push_str(&format!("first refusal: {refusal}\n"));
    }
    out
}

fn render_durables(page: &Value) -> String {
    let columns = [
        ("NAME", "name"),
        ("VHOST", "vhost"),
        ("TOPIC", "topic"),
        ("OWNER", "owner"),
        ("ACTIVE", "active"),
        ("READY", "messages_ready"),
        ("UNACKED", "messages_unacked"),
    ];
    listing(page, &columns, "durable subscriptions")
}

/// The columns webhooks and bridges share after their own: what they did and how they are.
const LINK_STATUS: [(&str, &str); 5] = [
    ("STATE", "state"),
    ("DELIVERED", "delivered"),
    ("FAILURES", "failures"),
    ("IN FLIGHT", "in_flight"),
    ("LAST ERROR", "last_error"),
];

/// Webhooks and bridges are as many as the configuration has: one table, no pages.
fn link_listing(list: &Value, own: &[(&str, &str)], what: &str) -> String {
    let columns: Vec<(&str, &str)> = own.iter().chain(&LINK_STATUS).copied().collect();
    item_table(list, &columns) + &format!("{} {what}\n", text(&list["total_count"]))
}

fn render_webhooks(list: &Value) -> String {
    link_listing(list, &[("NAME", "name"), ("SOURCE", "source"), ("URL", "url")], "webhooks")
}

fn render_bridges(list: &Value) -> String {
    link_listing(list, &[("NAME", "name"), ("DIRECTION", "direction"), ("FROM", "from"), ("TO", "to")], "bridges")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded_whole_so_a_slash_stays_in_its_segment() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("orders/eu v2"), "orders%2Feu%20v2");
        assert_eq!(encode("DLQ.jobs-1_~"), "DLQ.jobs-1_~");
    }

    #[test]
    fn exit_statuses_follow_the_http_status() {
        let api = |status| CtlError::Api { status, reason: String::new() };
        assert_eq!(api(StatusCode::NOT_FOUND).exit(), Exit::NotFound);
        assert_eq!(api(StatusCode::FORBIDDEN).exit(), Exit::NotAllowed);
        assert_eq!(api(StatusCode::UNAUTHORIZED).exit(), Exit::NotAllowed);
        assert_eq!(api(StatusCode::CONFLICT).exit(), Exit::Conflict);
        assert_eq!(api(StatusCode::BAD_REQUEST).exit(), Exit::Failed);
        assert_eq!(CtlError::Usage(String::new()).exit(), Exit::Usage);
    }

    #[test]
    fn tables_pad_columns_to_their_widest_cell() {
        let out = table(&["A", "BB"], vec![vec!["long".into(), "x".into()]]);
        assert_eq!(out, "A     BB\nlong  x\n");
    }
}
