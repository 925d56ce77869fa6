//! `appfw health`: the `/healthz` checks as a tree by level; exit 0 healthy, 1 degraded,
//! 2 unhealthy (69 when the host cannot be asked).

use clap::Args;
use serde_json::Value;

use super::{client_with, fail};
use crate::Cli;

#[derive(Args, Debug)]
pub(crate) struct HealthArgs {
    /// Print the JSON of /healthz.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cli: &Cli, args: &HealthArgs) -> u8 {
    let c = match client_with(cli, false) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // /healthz answers 503 when unhealthy: still a health report, not an error.
    let v = match c.get_report("/healthz").await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", tree(&v));
    }
    match v["status"].as_str() {
        Some("healthy") => 0,
        Some("degraded") => 1,
        _ => 2,
    }
}

/// Renders the checks grouped by level.
pub(crate) fn tree(v: &Value) -> String {
    let mut out = format!("{}\n", v["status"].as_str().unwrap_or("unknown"));
    let checks = v["checks"].as_array().cloned().unwrap_or_default();
    let levels = ["process", "service", "resource", "dependency", "config"];
    let width = checks
        .iter()
        .filter_map(|c| c["name"].as_str())
        .map(str::len)
        .max()
        .unwrap_or(0);
    for (li, level) in levels.iter().enumerate() {
        let in_level: Vec<&Value> = checks.iter().filter(|c| c["level"] == *level).collect();
        if in_level.is_empty() {
            continue;
        }
        let last_level = levels[li + 1..]
            .iter()
            .all(|l| !checks.iter().any(|c| c["level"] == *l));
        out.push_str(&format!(
            "{} {level}\n",
            if last_level { "└─" } else { "├─" }
        ));
        for (i, c) in in_level.iter().enumerate() {
            let branch = if last_level { "   " } else { "│  " };
            let leaf = if i + 1 == in_level.len() {
                "└─"
            } else {
                "├─"
            };
            out.push_str(&format!(
                "{branch}{leaf} {:<9} {:<width$}  {}\n",
                c["status"].as_str().unwrap_or("?"),
                c["name"].as_str().unwrap_or("?"),
                c["message"].as_str().unwrap_or(""),
            ));
        }
    }
    out
}
