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
    if let Some(Command::Passwd { password }) = &cli.command {
        return passwd(password.clone());
    }
    let config = cli.resolve()?;
    if let Some(Command::PrintConfig) = cli.command {
        let mut shown = config.clone();
        if let Some(secret) = shown.jwt.as_mut().and_then(|jwt| jwt.hs256_secret.as_mut()) {
            *secret = "<redacted>".to_owned();
        }
        print!("{}", toml::to_string(&shown).context("cannot render the configuration")?);
        return Ok(());
    }
    let filter =
        EnvFilter::try_new(&config.log_level).with_context(|| format!("invalid --log-level {:?}", config.log_level))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();

    raise_file_limit(config.max_connections);
    // A start-up failure is the operator's to fix (a busy port, a read-only data directory): one
    // line that says what and where, not an error chain with a backtrace.
    let broker = match start(&config).await {
        Ok(broker) => broker,
        Err(error) => {
            eprintln!("stampede: cannot start the broker: {error}");
            std::process::exit(1);
        }
    };
    tokio::spawn(return_freed_memory());
    wait_for_signal().await;
    tracing::info!("shutting down");
    broker.shutdown(Duration::from_secs(10)).await;
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
    let hash = stampede_broker::auth::hash_password(&password).map_err(anyhow::Error::msg)?;
    println!("{hash}");
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

/// Raises the soft limit on open files to the hard limit, since every connection is a file
/// descriptor: many systems start processes at a soft limit of 1,024, which would make the OS
/// refuse connections far below `max_connections`. Going past the hard limit needs privileges
/// (`ulimit -Hn`, systemd's `LimitNOFILE=`); when even the hard limit is below
/// `max_connections`, the broker says so at start-up instead of failing under load.
#[cfg(unix)]
fn raise_file_limit(max_connections: usize) {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    #[allow(unsafe_code)]
    let (soft, hard) = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        (limit.rlim_cur, limit.rlim_max)
    };
    // Listeners, the store's files and log output need a few descriptors besides connections.
    let room = usize::try_from(soft).unwrap_or(usize::MAX).saturating_sub(64);
    if room < max_connections {
        tracing::warn!(
            open_files = soft,
            hard_limit = hard,
            max_connections,
            "the open-file limit allows about {room} connections, fewer than max_connections; raise it (ulimit -n, systemd LimitNOFILE) to hold more"
        );
    } else {
        tracing::debug!(open_files = soft, "open-file limit");
    }
}

#[cfg(not(unix))]
fn raise_file_limit(_max_connections: usize) {}

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
