//! One module per subcommand.

pub mod action;
pub mod config;
pub mod events;
pub mod health;
pub mod logs;
pub mod run;
pub mod status;
pub mod version;

use crate::Cli;
use crate::client::{Client, ClientError, Endpoint};
use crate::exit;

/// A client for the host named by the global flags.
pub(crate) fn client(cli: &Cli) -> Result<Client, u8> {
    client_with(cli, true)
}

/// A client; without `need_token` a missing token file is fine (the probes need none).
pub(crate) fn client_with(cli: &Cli, need_token: bool) -> Result<Client, u8> {
    let from_config = match &cli.config {
        None => None,
        Some(_) => match appfw_host::config::load(&layers(cli, None)) {
            Ok(l) => l.config.data_dir_resolved(),
            Err(e) => {
                eprintln!("appfw: invalid configuration:\n{e}");
                return Err(exit::CONFIG);
            }
        },
    };
    let layout = match appfw_host::datadir::resolve(cli.data_dir.as_deref(), from_config.as_deref())
    {
        Ok(root) => appfw_host::datadir::Layout::new(root),
        Err(e) => {
            eprintln!("appfw: {e}");
            return Err(exit::UNAVAILABLE);
        }
    };
    let token = match &cli.token {
        Some(t) => Some(t.clone()),
        None => match layout.read_token() {
            Ok(t) => Some(t),
            Err(_) if !need_token => None,
            Err(e) => {
                eprintln!(
                    "appfw: {e} (is a host running with this data directory? see --data-dir)"
                );
                return Err(exit::UNAVAILABLE);
            }
        },
    };
    let endpoint = match &cli.api {
        Some(a) => Endpoint::Tcp(
            a.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
        ),
        None => Endpoint::Unix(layout.api_socket()),
    };
    Ok(Client::new(endpoint, token))
}

/// The config layers named by the global flags: `file` (or `--config`, or `./appfw.toml` if it
/// exists), the `APPFW_*` environment and `--set` flags (and `--data-dir` as a flag).
pub(crate) fn layers(cli: &Cli, file: Option<&std::path::Path>) -> appfw_host::config::Layers {
    let path = file
        .map(std::path::Path::to_path_buf)
        .or_else(|| cli.config.clone())
        .or_else(|| {
            let p = std::path::PathBuf::from("appfw.toml");
            p.exists().then_some(p)
        });
    let mut layers = match path {
        Some(p) => appfw_host::config::Layers::file(&p),
        None => appfw_host::config::Layers::default(),
    };
    layers = layers.with_process_env().with_sets(&cli.sets);
    if let Some(d) = &cli.data_dir {
        // Not valid TOML, so the loader takes it as a string.
        layers.sets.push(format!("data_dir={}", d.display()));
    }
    layers
}

/// Prints a client error in one line and maps it to an exit code.
pub(crate) fn fail(e: &ClientError) -> u8 {
    eprintln!("appfw: {e}");
    match e {
        ClientError::Api {
            status: 401 | 403, ..
        } => exit::NOPERM,
        ClientError::Api {
            status: 400..=499, ..
        } => exit::FAILED,
        ClientError::Api { .. } | ClientError::Unreachable { .. } | ClientError::Protocol(_) => {
            exit::UNAVAILABLE
        }
    }
}

/// Percent-encodes a path segment (plugin names are plain, but user input is not trusted).
pub(crate) fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `1h 2m`, `3m 4s`, `5.2s`.
pub(crate) fn human_secs(s: f64) -> String {
    let total = s as u64;
    let (d, h, m, sec) = (
        total / 86400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{s:.1}s")
    }
}
