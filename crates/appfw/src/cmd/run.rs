//! `appfw run`

use appfw_host::{HostError, HostOptions};
use clap::Args;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::Cli;
use crate::exit;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Log filter, e.g. `info` or `appfw_host=debug` (also $APPFW_LOG).
    #[arg(long, env = "APPFW_LOG", default_value = "info")]
    log_level: String,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

pub(crate) async fn run(cli: &Cli, args: &RunArgs) -> u8 {
    // `Targets` (levels per target, `info` or `appfw_host=debug,info`) rather than
    // `EnvFilter`: the same syntax for what a host needs, without a regex engine in the binary.
    let filter: Targets = match args.log_level.parse() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("appfw: invalid --log-level {:?}: {e}", args.log_level);
            return exit::CONFIG;
        }
    };
    let registry = tracing_subscriber::registry().with(filter);
    match args.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    let layers = super::layers(cli, None);
    if layers.file.is_none() {
        tracing::warn!(
            "no config file (--config, APPFW_CONFIG or ./appfw.toml): running with no plugins"
        );
    }
    let opts = HostOptions {
        layers,
        data_dir: cli.data_dir.clone(),
    };
    // Polled only once the first signal stopped the host, so it waits for the next one.
    let force = async {
        let _ = appfw_host::signal().await;
    };
    match appfw_host::run(opts, appfw_host::signal(), force).await {
        Ok(()) => 0,
        Err(e @ HostError::Config(_)) => {
            eprintln!("appfw: {e}");
            exit::CONFIG
        }
        Err(e) => {
            eprintln!("appfw: {e}");
            exit::UNAVAILABLE
        }
    }
}
