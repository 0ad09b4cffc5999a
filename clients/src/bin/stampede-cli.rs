//! `stampede-cli`: send and receive STOMP messages from a shell.
//!
//! A thin layer over the `stampede_client` library, so that what works here works in code:
//! the same URL forms, the same defaults, the same errors (printed once, with a non-zero exit).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use stampede_client::{AckMode, Client, ClientError, ConnectOptions, Headers, Message, SubscribeOptions};

/// Send and receive messages through a STOMP broker (Stampede, RabbitMQ, ActiveMQ, ...).
///
/// The broker is named by --url (or STAMPEDE_URL): `tcp://host:port`, `host:port`, or
/// `ws://host:port/path` for STOMP over WebSocket; `tls://host:port` (or `stomp+ssl://`) and
/// `wss://host:port/path` run them inside TLS. Credentials come from --login/--passcode or
/// STAMPEDE_LOGIN/STAMPEDE_PASSCODE.
#[derive(Debug, Parser)]
#[command(name = "stampede-cli", version, propagate_version = true)]
#[command(after_help = "Examples:\n  \
    stampede-cli send /queue/orders 'order 1' --receipt --persistent\n  \
    echo hello | stampede-cli send /topic/news\n  \
    stampede-cli subscribe /topic/news --count 10 -v\n  \
    stampede-cli --url ws://localhost:15674/ws subscribe /queue/jobs --ack client\n  \
    stampede-cli --url tls://broker.internal:61614 --ca-file ca.pem send /queue/a hi")]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Debug, Args)]
struct ConnectionArgs {
    /// Broker address: tcp://host:port, host:port, ws://host:port/path, or with TLS
    /// tls://host:port, stomp+ssl://host:port, wss://host:port/path.
    #[arg(long, env = "STAMPEDE_URL", default_value = "tcp://localhost:61613", global = true)]
    url: String,
    /// PEM file of CA certificates to trust (besides the public roots) for tls:// and wss://:
    /// for a broker whose certificate a private CA signed.
    #[arg(long, env = "STAMPEDE_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    /// Accept any TLS certificate, unverified: the connection is encrypted but anyone could be
    /// at the other end. For testing only.
    #[arg(long, global = true)]
    insecure: bool,
    /// Login sent in CONNECT.
    #[arg(long, env = "STAMPEDE_LOGIN", global = true)]
    login: Option<String>,
    /// Passcode sent in CONNECT.
    #[arg(long, env = "STAMPEDE_PASSCODE", hide_env_values = true, global = true)]
    passcode: Option<String>,
    /// Virtual host (the CONNECT `host` header).
    #[arg(long, env = "STAMPEDE_VHOST", default_value = "/", global = true)]
    vhost: String,
    /// Heart-beat offer `send_ms,receive_ms`; `0,0` turns heart-beats off.
    #[arg(long, default_value = "10000,10000", value_parser = parse_heart_beat, global = true)]
    heart_beat: (u32, u32),
    /// Reconnect (with backoff) and resubscribe when the connection is lost, instead of exiting.
    #[arg(long, global = true)]
    reconnect: bool,
    /// Seconds to wait for the connection and for each receipt.
    #[arg(long, default_value_t = 10, global = true)]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Publish a message. The body is the BODY argument, or standard input when it is absent
    /// or `-`.
    Send(SendArgs),
    /// Receive messages and print them, one body per line (with -v: headers too).
    Subscribe(SubscribeArgs),
}

#[derive(Debug, Args)]
struct SendArgs {
    /// Destination, e.g. /queue/orders or /topic/news.
    destination: String,
    /// Message body; read from standard input when absent or `-`.
    body: Option<String>,
    /// Wait for the broker's RECEIPT before exiting (for a persistent message: until stored).
    #[arg(long)]
    receipt: bool,
    /// Ask the broker to store the message (`persistent:true`).
    #[arg(long)]
    persistent: bool,
    /// Extra header `name:value`; repeat for more.
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The `content-type` header.
    #[arg(long)]
    content_type: Option<String>,
    /// Send the message this many times.
    #[arg(long, default_value_t = 1)]
    repeat: u64,
}

#[derive(Debug, Args)]
struct SubscribeArgs {
    /// Destination, e.g. /queue/orders or /topic/news.
    destination: String,
    /// Exit after this many messages (default: run until interrupted).
    #[arg(short = 'n', long)]
    count: Option<u64>,
    /// Ack mode: auto, client or client-individual. In client modes each printed message is
    /// acknowledged after it is printed.
    #[arg(long, default_value = "auto", value_parser = parse_ack)]
    ack: AckMode,
    /// Subscription id (default: sub-0).
    #[arg(long)]
    id: Option<String>,
    /// The `prefetch-count` header: most unacknowledged messages in flight.
    #[arg(long)]
    prefetch: Option<u32>,
    /// Extra SUBSCRIBE header `name:value`; repeat for more.
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Print each message's headers before its body, and a blank line after it.
    #[arg(short, long)]
    verbose: bool,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME:VALUE, got {text:?}")),
    }
}

fn parse_heart_beat(text: &str) -> Result<(u32, u32), String> {
    stampede_client::HeartBeat::parse(text)
        .map(|hb| (hb.send_ms, hb.receive_ms))
        .ok_or_else(|| format!("expected SEND_MS,RECEIVE_MS such as 10000,10000, got {text:?}"))
}

fn parse_ack(text: &str) -> Result<AckMode, String> {
    text.parse().map_err(|e: ClientError| e.to_string())
}

fn headers(pairs: &[(String, String)]) -> Headers {
    pairs.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stampede-cli: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    let args = &cli.connection;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let mut options = ConnectOptions::new(&args.url)?
        .vhost(args.vhost.clone())
        .heart_beat(args.heart_beat.0, args.heart_beat.1)
        .connect_timeout(timeout)
        .receipt_timeout(timeout);
    options.login = args.login.clone();
    options.passcode = args.passcode.clone();
    options.tls.ca_file = args.ca_file.clone();
    options.tls.insecure_skip_verify = args.insecure;
    if args.reconnect {
        options.reconnect = Some(stampede_client::Reconnect::default());
    }
    if args.insecure {
        eprintln!("stampede-cli: warning: --insecure: the server's TLS certificate is not verified");
    }
    let client = Client::connect_with(options).await?;
    match cli.command {
        CliCommand::Send(send) => run_send(&client, send).await?,
        CliCommand::Subscribe(subscribe) => run_subscribe(&client, subscribe).await?,
    }
    client.disconnect().await
}

async fn run_send(client: &Client, args: SendArgs) -> Result<(), ClientError> {
    let body = match args.body.as_deref() {
        Some("-") | None => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body)?;
            body
        }
        Some(text) => text.as_bytes().to_vec(),
    };
    let body = bytes::Bytes::from(body);
    let mut headers = headers(&args.headers);
    if args.persistent {
        headers.push("persistent", "true");
    }
    if let Some(content_type) = &args.content_type {
        headers.push("content-type", content_type.as_str());
    }
    for i in 0..args.repeat {
        // Only the last send needs a receipt: the broker processes frames in order.
        if args.receipt && i + 1 == args.repeat {
            client.send_with_receipt(&args.destination, body.clone(), headers.clone()).await?;
        } else {
            client.send(&args.destination, body.clone(), headers.clone()).await?;
        }
    }
    Ok(())
}

async fn run_subscribe(client: &Client, args: SubscribeArgs) -> Result<(), ClientError> {
    let mut options = SubscribeOptions::new().ack(args.ack);
    if let Some(id) = &args.id {
        options = options.id(id.clone());
    }
    if let Some(prefetch) = args.prefetch {
        options = options.prefetch(prefetch);
    }
    options.headers = headers(&args.headers);
    let mut subscription = client.subscribe(&args.destination, options).await?;
    let mut received = 0u64;
    while args.count.is_none_or(|count| received < count) {
        let message = tokio::select! {
            message = subscription.next() => message,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(message) = message else {
            // The connection ended; say why.
            return Err(ClientError::Closed(client.closed().await));
        };
        print_message(&message, args.verbose)?;
        if args.ack != AckMode::Auto {
            client.ack(&message).await?;
        }
        received += 1;
    }
    Ok(())
}

fn print_message(message: &Message, verbose: bool) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    if verbose {
        for (name, value) in message.headers.iter() {
            writeln!(out, "{name}:{value}")?;
        }
        writeln!(out)?;
    }
    out.write_all(&message.body)?;
    writeln!(out)?;
    if verbose {
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn send_parses_repeated_headers_and_flags() {
        let cli = Cli::try_parse_from([
            "stampede-cli",
            "--url",
            "ws://h:1/ws",
            "send",
            "/queue/a",
            "hi",
            "-H",
            "a:1",
            "--header",
            "b:x:y",
            "--persistent",
            "--receipt",
        ])
        .unwrap();
        assert_eq!(cli.connection.url, "ws://h:1/ws");
        assert!(!cli.connection.insecure && cli.connection.ca_file.is_none());
        let CliCommand::Send(send) = cli.command else { panic!("expected send") };
        assert_eq!(send.headers, vec![("a".into(), "1".into()), ("b".into(), "x:y".into())]);
        assert!(send.persistent && send.receipt);
    }

    #[test]
    fn tls_flags_are_global_and_insecure_is_only_set_by_name() {
        let cli =
            Cli::try_parse_from(["stampede-cli", "send", "/q", "x", "--ca-file", "ca.pem", "--insecure"]).unwrap();
        assert_eq!(cli.connection.ca_file.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert!(cli.connection.insecure);
    }

    #[test]
    fn reconnect_is_off_unless_asked_for() {
        let cli = Cli::try_parse_from(["stampede-cli", "subscribe", "/topic/t"]).unwrap();
        assert!(!cli.connection.reconnect);
        let cli = Cli::try_parse_from(["stampede-cli", "subscribe", "/topic/t", "--reconnect"]).unwrap();
        assert!(cli.connection.reconnect);
    }

    #[test]
    fn subscribe_parses_ack_mode_and_count() {
        let cli =
            Cli::try_parse_from(["stampede-cli", "subscribe", "/topic/t", "--ack", "client", "-n", "3", "-v"]).unwrap();
        let CliCommand::Subscribe(sub) = cli.command else { panic!("expected subscribe") };
        assert_eq!(sub.ack, AckMode::Client);
        assert_eq!(sub.count, Some(3));
        assert!(sub.verbose);
        assert!(Cli::try_parse_from(["stampede-cli", "subscribe", "/t", "--ack", "sometimes"]).is_err());
        assert!(Cli::try_parse_from(["stampede-cli", "send", "/t", "x", "-H", "novalue"]).is_err());
    }
}
