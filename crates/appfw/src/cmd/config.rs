//! `appfw config show|validate|schema|plan|apply|reload`

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::{client, fail, layers};
use crate::{Cli, exit};

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCmd {
    /// Print the running host's config (secrets redacted); with --effective, the config the
    /// layers (file < APPFW_* environment < --set flags) give here, without a host.
    Show(ShowArgs),
    /// Check a config file (default: --config) with the environment and --set layers; exit 64
    /// with every problem located if it is invalid.
    Validate(FileArg),
    /// Print the JSON Schema of the config file, for editors.
    Schema,
    /// Show what loading FILE (default: the host's config files) would change in the running
    /// host: plugins to start, stop, restart or update live. Changes nothing.
    Plan(FileArg),
    /// Replace the running host's config with FILE: validated, written to the host's config
    /// file (a backup is kept), applied as a diff.
    Apply(ApplyArgs),
    /// Reload the host's config files now (like SIGHUP) and print what changed.
    Reload,
}

#[derive(Args, Debug)]
pub(crate) struct ShowArgs {
    /// Merge the layers here instead of asking the running host.
    #[arg(long)]
    effective: bool,
    /// Name the layer that set each value (file:line:column, env VAR, flag, default).
    #[arg(long)]
    origin: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct FileArg {
    /// The config file.
    file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct ApplyArgs {
    /// The new config file content.
    file: PathBuf,
}

pub(crate) async fn run(cli: &Cli, cmd: &ConfigCmd) -> u8 {
    match cmd {
        ConfigCmd::Show(a) if a.effective => show_effective(cli, a),
        ConfigCmd::Show(a) => show_running(cli, a).await,
        ConfigCmd::Validate(f) => validate(cli, f),
        ConfigCmd::Schema => {
            let schema = appfw_host::config::Config::json_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            0
        }
        ConfigCmd::Plan(f) => {
            let body = match &f.file {
                None => String::new(),
                Some(p) => match read(p) {
                    Ok(t) => t,
                    Err(code) => return code,
                },
            };
            change(cli, "/api/v1/config/plan", "POST", body).await
        }
        ConfigCmd::Apply(a) => match read(&a.file) {
            Ok(t) => change(cli, "/api/v1/config", "PUT", t).await,
            Err(code) => code,
        },
        ConfigCmd::Reload => change(cli, "/api/v1/config/reload", "POST", String::new()).await,
    }
}

fn read(p: &std::path::Path) -> Result<String, u8> {
    std::fs::read_to_string(p).map_err(|e| {
        eprintln!("appfw: cannot read {}: {e}", p.display());
        exit::CONFIG
    })
}

fn show_effective(cli: &Cli, a: &ShowArgs) -> u8 {
    match appfw_host::config::load(&layers(cli, None)) {
        Ok(l) => {
            if a.json {
                let v = serde_json::json!({
                    "config": l.config.redacted(),
                    "origins": if a.origin { serde_json::to_value(&l.config.origins).unwrap_or_default() } else { Value::Null },
                });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", appfw_host::config::render_toml(&l.config, a.origin));
            }
            0
        }
        Err(e) => {
            eprintln!("appfw: invalid configuration:\n{e}");
            exit::CONFIG
        }
    }
}

async fn show_running(cli: &Cli, a: &ShowArgs) -> u8 {
    let c = match client(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = if a.origin {
        "/api/v1/config?origins=true"
    } else {
        "/api/v1/config"
    };
    match c.get(path).await {
        Ok(v) if a.json => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Ok(v) => {
            println!(
                "# generation {} from {}",
                v["generation"],
                v["source"].as_str().unwrap_or("(no file)")
            );
            if let Some(e) = v["last_error"].as_str() {
                println!(
                    "# the last reload was refused:\n# {}",
                    e.replace('\n', "\n# ")
                );
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&v["config"]).unwrap_or_default()
            );
            if a.origin {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v["origins"]).unwrap_or_default()
                );
            }
            0
        }
        Err(e) => fail(&e),
    }
}

fn validate(cli: &Cli, f: &FileArg) -> u8 {
    match appfw_host::config::load(&layers(cli, f.file.as_deref())) {
        Ok(l) => {
            let src = l
                .config
                .source
                .as_ref()
                .map_or_else(|| "defaults".to_string(), |p| p.display().to_string());
            println!("{src}: valid ({} plugins)", l.config.plugins.len());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            exit::CONFIG
        }
    }
}

async fn change(cli: &Cli, path: &str, method: &str, body: String) -> u8 {
    let c = match client(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match c.call_with_body(method, path, body).await {
        Ok(report) => {
            let verb = if report["applied"] == true {
                "applied"
            } else {
                "would apply"
            };
            println!(
                "{verb} (generation {}): {}",
                report["generation"],
                report["summary"].as_str().unwrap_or("")
            );
            if let Some(w) = report["written"].as_str() {
                println!("wrote {w} (previous version in {w}.bak)");
            }
            0
        }
        Err(crate::client::ClientError::Api {
            status: 400,
            code,
            message,
            issues,
        }) if code == "invalid_config" => {
            let _ = message;
            eprintln!("appfw: config refused, the running config stays:");
            for i in issues {
                eprintln!("{i}");
            }
            exit::CONFIG
        }
        Err(e) => fail(&e),
    }
}
