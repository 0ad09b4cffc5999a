//! The `stampede` binary: parse the command line, start the broker, stop on Ctrl-C or SIGTERM.
//!
//! Whatever goes wrong is printed once, as a sentence: the broker's errors carry their whole
//! explanation, so their causes are shown only when they add something.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use stampede_broker::config::{self, Command};
use stampede_broker::{Cli, Config, start};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Ctl(args)) = &cli.command {
        return ctl(&cli, args).await;
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stampede: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// `stampede ctl`: the management address comes from the same configuration the broker reads,
/// unless `--url` names one.
async fn ctl(cli: &Cli, args: &stampede_broker::ctl::CtlArgs) -> ExitCode {
    let http_addr = match cli.resolve_with(&config::environment()) {
        Ok(config) => config.http_addr,
        Err(_) if args.url.is_some() => None,
        Err(error) => {
            eprintln!("stampede ctl: {error} (or give --url)");
            return ExitCode::from(stampede_broker::ctl::Exit::Usage as u8);
        }
    };
    stampede_broker::ctl::main(args, http_addr).await
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Passwd { password }) = &cli.command {
        return passwd(password.clone());
    }
    let environment = config::environment();
    let mut config = cli.resolve_with(&environment)?;
    if let Some(Command::PrintConfig { env }) = cli.command {
        stampede_broker::server::check(&config)?;
        if env {
            print!("{}", config.as_environment());
        } else {
            print!("{}", toml::to_string(&config.for_display()).context("cannot render the configuration")?);
        }
        return Ok(());
    }
    init_logging(&config.log_filter()?, config.log_format)?;
    for variable in config::unknown_variables(&environment) {
        tracing::warn!(
            "ignoring the environment variable {variable}: there is no configuration key {} (`stampede print-config --env` lists the variables)",
            variable[config::ENV_PREFIX.len()..].to_ascii_lowercase()
        );
    }
    fit_file_limit(&mut config);
    // Registered before the listeners open: a SIGTERM that arrives while the broker is still
    // starting must shut it down in order, not kill it.
    let mut signals = ShutdownSignals::register();
    let mut hangups = Hangups::register();
    let broker = start(&config).await?;
    tokio::spawn(return_freed_memory());
    loop {
        tokio::select! {
            () = signals.next() => break,
            () = hangups.next() => reload(&cli, &broker),
        }
    }
    // The drain and everything after it fit in shutdown_timeout_ms (validated: the drain is
    // shorter); a second signal cuts both short, the store flush excepted.
    let began = std::time::Instant::now();
    let timeout = Duration::from_millis(config.shutdown_timeout_ms);
    let spread = Duration::from_millis(config.shutdown_drain_ms);
    tracing::info!("shutting down (a second SIGTERM or Ctrl-C stops at once)");
    let hurried = tokio::select! {
        () = broker.drain(spread) => false,
        () = signals.next() => true,
    };
    if hurried {
        tracing::warn!("second signal: stopping now (the store is still flushed)");
        broker.shutdown(stampede_broker::server::HURRIED_STOP).await;
    } else {
        broker.shutdown_unless(timeout.saturating_sub(began.elapsed()), signals.next()).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: reads the configuration again (file, environment, flags) and applies its users,
/// permissions, token keys, allowed origins and TLS certificate; a bad file is refused with a
/// log line and the old settings stay.
fn reload(cli: &Cli, broker: &stampede_broker::RunningBroker) {
    let file = cli.config.as_ref().map_or_else(|| "(no file)".to_owned(), |path| path.display().to_string());
    let config = match cli.resolve_with(&config::environment()) {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!("configuration reload refused, the old settings stay: {error}");
            return;
        }
    };
    match broker.reload(&config) {
        Ok(users) => {
            tracing::info!(users, %file, "configuration reloaded: users, permissions, token keys, origins, TLS certificate")
        }
        Err(error) => tracing::warn!("configuration reload refused, the old settings stay: {error}"),
    }
}

/// SIGHUP, listened to from the moment it is registered (never, where there is none).
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn register() -> Hangups {
        #[cfg(unix)]
        {
            Hangups { signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok() }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

/// The error and those of its causes that its message does not already contain.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Logs to standard output, in colour only on a terminal and when `NO_COLOR` is unset or empty
/// (<https://no-color.org>), so that a log file holds no escape codes.
fn init_logging(filter: &str, format: config::LogFormat) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let colour = std::io::stdout().is_terminal() && !no_color;
    let filter = EnvFilter::try_new(filter).with_context(|| format!("invalid log_level {filter:?}"))?;
    match format {
        config::LogFormat::Human => {
            tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(colour).init();
        }
        // One object per line; the spans an event happened in carry its context (for example
        // a connection's fields).
        config::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_target(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    Ok(())
}

/// `stampede passwd`: prints an argon2 hash for the `users` table. The password comes from
/// `--password`, else from a no-echo prompt on a terminal, else from the first line of
/// standard input.
fn passwd(password: Option<String>) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let password = match password {
        Some(password) => password,
        None if std::io::stdin().is_terminal() => {
            let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
            let again = rpassword::prompt_password("Again: ").context("cannot read the password")?;
            anyhow::ensure!(first == again, "the two passwords differ");
            first
        }
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("cannot read the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    let hash = stampede_broker::security::auth::hash_password(&password).map_err(anyhow::Error::msg)?;
    println!("{hash}");
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C), listened to from the moment they are registered.
struct ShutdownSignals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn register() -> ShutdownSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            ShutdownSignals {
                terminate: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        ShutdownSignals {}
    }

    /// Waits for the next of them.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.terminate.is_none() && self.interrupt.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                () = next(&mut self.terminate) => {}
                () = next(&mut self.interrupt) => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Fits `max_connections` to the open-file limit, since every connection is a file descriptor.
///
/// The soft limit is first raised to the hard limit (many systems start processes at 1,024).
/// Going past the hard limit needs privileges (`ulimit -Hn`, systemd's `LimitNOFILE=`). When
/// even that is below `max_connections`: the default is lowered to what fits and the broker
/// says so at info level; a value someone configured is kept, with a warning, rather than
/// failing under load without explanation.
fn fit_file_limit(config: &mut Config) {
    let Some((soft, hard)) = raise_file_limit() else { return };
    // Listeners, the store's files and log output need a few descriptors besides connections.
    let room = usize::try_from(soft).unwrap_or(usize::MAX).saturating_sub(64).max(1);
    if room >= config.max_connections {
        tracing::debug!(open_files = soft, "open-file limit");
    } else if config.max_connections == Config::default().max_connections {
        tracing::info!(
            "max_connections is {room} to fit the open-file limit of {soft} (raise the limit, e.g. ulimit -n or systemd LimitNOFILE, for more)"
        );
        config.max_connections = room;
    } else {
        tracing::warn!(
            open_files = soft,
            hard_limit = hard,
            "the open-file limit allows about {room} connections, fewer than max_connections ({}); raise it (ulimit -n, systemd LimitNOFILE) to hold more",
            config.max_connections
        );
    }
}

/// Raises the soft limit on open files to the hard limit; returns both.
#[cfg(unix)]
fn raise_file_limit() -> Option<(u64, u64)> {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    #[allow(unsafe_code)]
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        Some((limit.rlim_cur, limit.rlim_max))
    }
}

#[cfg(not(unix))]
fn raise_file_limit() -> Option<(u64, u64)> {
    None
}

/// Gives memory freed after a burst (thousands of connections that came and went, a backlog
/// that drained) back to the operating system.
///
/// glibc's allocator keeps freed pages for reuse, so without this the resident size of a broker
/// stays at its high-water mark after a connection storm. `malloc_trim` releases them, but it
/// walks every free chunk and `madvise`s its pages (thousands of calls after a storm, and again
/// on every call, since released chunks stay on the free lists) while holding each arena's lock,
/// so a worker that allocates meanwhile waits. Trimming on a timer regardless would add that
/// stall every period and make a steady load fault its reused pages back in. So the broker trims
/// only when the resident size grew by [`TRIM_STEP_BYTES`] since the last trim and the allocator
/// holds at least that much free: after a burst has ended, not during steady traffic.
async fn return_freed_memory() {
    let mut every = tokio::time::interval(Duration::from_secs(10));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut settled = resident_bytes();
    loop {
        every.tick().await;
        settled = tokio::task::spawn_blocking(move || trim_after_growth(settled)).await.unwrap_or(settled);
    }
}

/// Growth of the resident size, and free memory held, that make a trim worth its stall.
const TRIM_STEP_BYTES: usize = 8 << 20;

/// Trims if worthwhile; returns the resident size to measure the next growth from.
fn trim_after_growth(settled: usize) -> usize {
    let resident = resident_bytes();
    if resident < settled.saturating_add(TRIM_STEP_BYTES) {
        return settled.min(resident);
    }
    if allocator_free_bytes() < TRIM_STEP_BYTES {
        return settled; // grown, but in use
    }
    trim();
    resident_bytes()
}

/// The process's resident size, from /proc/self/statm (0 where there is no such file).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|field| field.parse().ok()).unwrap_or(0);
    pages * page_size()
}

#[cfg(unix)]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

#[cfg(not(unix))]
fn page_size() -> usize {
    4096
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn allocator_free_bytes() -> usize {
    // SAFETY: mallinfo2 has no preconditions; it only reads allocator statistics.
    #[allow(unsafe_code)]
    let info = unsafe { libc::mallinfo2() };
    // Free chunks in the bins plus those in the fast bins (small chunks, counted apart).
    info.fordblks + info.fsmblks
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim has no preconditions; it only returns free heap pages to the kernel.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn allocator_free_bytes() -> usize {
    0
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
