//! The `stampede` binary: parse the command line, start the broker, stop on Ctrl-C or SIGTERM.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use stampede_broker::config::Command;
use stampede_broker::{Cli, start};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.resolve()?;
    if let Some(Command::PrintConfig) = cli.command {
        print!("{}", toml::to_string(&config).context("cannot render the configuration")?);
        return Ok(());
    }
    let filter =
        EnvFilter::try_new(&config.log_level).with_context(|| format!("invalid --log-level {:?}", config.log_level))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();

    let broker = start(&config).await.context("cannot start the broker")?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    broker.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
