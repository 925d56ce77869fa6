//! Helpers shared by the example plugins: tiny flag parsing (`--name value`) so each example
//! stays a single readable file.

use std::time::Duration;

/// The value after `--flag` on the command line, if any.
pub fn flag(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
        if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            return Some(v.to_string());
        }
    }
    None
}

/// `--flag 500ms` as a duration, or the default. Exits with a message on a bad value.
pub fn duration_flag(name: &str, default: Option<Duration>) -> Option<Duration> {
    match flag(name) {
        None => default,
        Some(v) => match humantime::parse_duration(&v) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("invalid {name} {v:?}: {e}");
                std::process::exit(2);
            }
        },
    }
}

/// `--flag N` as a number, or the default. Exits with a message on a bad value.
pub fn number_flag(name: &str, default: u64) -> u64 {
    match flag(name) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("invalid {name} {v:?}: not a number");
            std::process::exit(2);
        }),
    }
}

/// Whether the program was started as an appfw protocol plugin.
pub fn is_plugin() -> bool {
    std::env::var_os(appfw_proto::ENV_PLUGIN_FD).is_some()
}
