//! `appfw version`

use clap::Args;

use super::client;
use crate::Cli;

#[derive(Args, Debug)]
pub(crate) struct VersionArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cli: &Cli, args: &VersionArgs) -> u8 {
    let client_version = env!("CARGO_PKG_VERSION");
    let protocol = format!("{}-{}", appfw_host::PROTOCOL_MIN, appfw_host::PROTOCOL_MAX);
    // The host part is best effort: `version` works without a running host.
    let host = match client(cli) {
        Ok(c) => c.get("/api/v1/host").await.ok(),
        Err(_) => None,
    };
    if args.json {
        let v = serde_json::json!({
            "client": { "version": client_version, "protocol_versions": protocol },
            "host": host,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("appfw {client_version} (protocol {protocol})");
        match host {
            Some(h) => println!(
                "host  {} (pid {}, data dir {})",
                h["version"].as_str().unwrap_or("?"),
                h["pid"],
                h["data_dir"].as_str().unwrap_or("?")
            ),
            None => println!("host  not reachable"),
        }
    }
    0
}
