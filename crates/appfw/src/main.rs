//! `appfw`: `appfw run` starts the host (a thin shell over `appfw_host`); the other verbs talk
//! to a running host through its API.

mod client;
mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes: 0 success, 1 the action failed (or the request was refused as invalid), 2 usage
/// (clap), 64 invalid config, 69 the host is unreachable or failing, 77 the token was refused.
pub(crate) mod exit {
    pub const FAILED: u8 = 1;
    pub const CONFIG: u8 = 64;
    pub const UNAVAILABLE: u8 = 69;
    pub const NOPERM: u8 = 77;
}

#[derive(Parser, Debug)]
#[command(
    name = "appfw",
    version,
    about = "Run plugins as supervised processes, and control them",
    propagate_version = true
)]
pub(crate) struct Cli {
    /// Data directory of the host (lock, token, API socket, logs) [default: $APPFW_DATA_DIR,
    /// else $XDG_STATE_HOME/appfw, else ~/.local/state/appfw]
    #[arg(long, global = true, env = "APPFW_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Config file (TOML): what `run` runs; the client verbs read its data_dir
    /// [default: $APPFW_CONFIG, else ./appfw.toml for `run` if present].
    #[arg(long, short, global = true, env = "APPFW_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Set a config key, over the file and the environment: `--set api.listen=127.0.0.1:9000`,
    /// `--set plugins.echo.restart=never` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Talk to the host's TCP API (e.g. 127.0.0.1:7070) instead of its Unix socket.
    #[arg(long, global = true, env = "APPFW_API", value_name = "HOST:PORT")]
    api: Option<String>,
    /// API token [default: read from the data directory].
    #[arg(long, global = true, env = "APPFW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host with the plugins of a config file, until SIGTERM or Ctrl-C.
    Run(cmd::run::RunArgs),
    /// Show every plugin (or one): state, pid, uptime, restarts, last exit.
    Status(cmd::status::StatusArgs),
    /// Start a plugin and wait until it is running.
    Start(cmd::action::ActionArgs),
    /// Stop a plugin (graceful, then escalating) and wait until it stopped.
    Stop(cmd::action::ActionArgs),
    /// Restart a plugin and wait until it is running again.
    Restart(cmd::action::ActionArgs),
    /// Print the version of this binary and of the running host.
    Version(cmd::version::VersionArgs),
    /// Show what happened (starts, exits, restarts, reloads...), from the host's store.
    Events(cmd::events::EventsArgs),
    /// Show plugin output from the host's searchable index (filters, -f to follow).
    Logs(cmd::logs::LogsArgs),
    /// Show the health checks as a tree; exit 0 healthy, 1 degraded, 2 unhealthy.
    Health(cmd::health::HealthArgs),
    /// Inspect, validate and change the configuration.
    #[command(subcommand)]
    Config(cmd::config::ConfigCmd),
}

/// Keeps memory the host frees for reuse rather than handing it back to the system at once.
///
/// The bus reads into 64 KiB buffers that are freed as soon as the messages read into them are
/// written. glibc hands the free top of its heap back to the system past 128 KiB (its
/// `M_TRIM_THRESHOLD`), so each new buffer was faulted in page by page again: at 1 KiB messages
/// that was 160–590 k page faults per 6 M messages and about 30 % of the host's CPU. Raising
/// the threshold keeps up to 16 MiB of freed heap. Setting it also stops glibc from raising its
/// mmap threshold by itself, so that is set too (8 MiB, past the default 4 MiB maximum frame):
/// a large frame's buffer still comes from the heap, not a fresh mapping each time. Measured in
/// docs/BENCHMARKS.md (bus). Other allocators (musl) keep their own policy.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes glibc's malloc parameters; it is called first thing in
    // main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// How often a running host gives the freed memory it kept back to the system.
const GIVE_BACK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Gives the memory [`keep_freed_memory`] keeps back to the system every [`GIVE_BACK_EVERY`]
/// (glibc's `malloc_trim`, which also releases free blocks inside the heap that trimming its top
/// never reaches): after a burst of large messages the host's RSS goes back down, while during
/// one its buffers are reused. Runs until the host stops (the caller drops it).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
async fn give_back_freed_memory() -> std::convert::Infallible {
    let mut every = tokio::time::interval(GIVE_BACK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        // SAFETY: malloc_trim only returns free memory to the system; it is thread-safe.
        // Off the async workers: it walks every arena.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
async fn give_back_freed_memory() -> std::convert::Infallible {
    std::future::pending().await
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("appfw")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("appfw: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let code = rt.block_on(async {
        match &cli.command {
            Command::Run(a) => tokio::select! {
                code = cmd::run::run(&cli, a) => code,
                never = give_back_freed_memory() => match never {},
            },
            Command::Status(a) => cmd::status::run(&cli, a).await,
            Command::Start(a) => cmd::action::run(&cli, "start", a).await,
            Command::Stop(a) => cmd::action::run(&cli, "stop", a).await,
            Command::Restart(a) => cmd::action::run(&cli, "restart", a).await,
            Command::Version(a) => cmd::version::run(&cli, a).await,
            Command::Config(c) => cmd::config::run(&cli, c).await,
            Command::Health(a) => cmd::health::run(&cli, a).await,
            Command::Events(a) => cmd::events::run(&cli, a).await,
            Command::Logs(a) => cmd::logs::run(&cli, a).await,
        }
    });
    ExitCode::from(code)
}
