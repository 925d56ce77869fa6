//! `appfw start|stop|restart NAME`

use clap::Args;

use super::{client, fail};
use crate::Cli;
use crate::exit;

#[derive(Args, Debug)]
pub(crate) struct ActionArgs {
    /// The plugin.
    name: String,
    /// How long to wait for the plugin to settle, e.g. `30s`, `2m` (`0s`: return at once).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    wait: std::time::Duration,
    /// Print the resulting status as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cli: &Cli, action: &str, args: &ActionArgs) -> u8 {
    let c = match client(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = format!(
        "/api/v1/plugins/{}/{action}?wait={}ms",
        super::segment(&args.name),
        args.wait.as_millis()
    );
    let st = match c.post(&path).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let state = st["state"].as_str().unwrap_or("?");
    let wanted = match action {
        "stop" => matches!(state, "stopped" | "completed" | "failed"),
        _ => matches!(state, "running" | "completed"),
    };
    // A plugin with several copies answers with each of them.
    let copies = st["instances"].as_array().cloned();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
    } else if let Some(copies) = &copies {
        for c in copies {
            let pid = c["pid"]
                .as_u64()
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default();
            println!(
                "{}: {}{pid}",
                c["name"].as_str().unwrap_or("?"),
                c["state"].as_str().unwrap_or("?")
            );
        }
    } else if wanted {
        let pid = st["pid"]
            .as_u64()
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_default();
        println!("{}: {state}{pid}", args.name);
    }
    if wanted {
        0
    } else {
        let last = st["last_exit"]["reason"]
            .as_str()
            .map(|r| format!("; last exit: {r}"))
            .unwrap_or_default();
        eprintln!("appfw: {action} {}: plugin is {state}{last}", args.name);
        exit::FAILED
    }
}
