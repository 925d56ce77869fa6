//! `appfw status`

use clap::Args;
use serde_json::Value;

use super::{client, fail, human_secs};
use crate::Cli;

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Only this plugin.
    name: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cli: &Cli, args: &StatusArgs) -> u8 {
    let c = match client(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match &args.name {
        Some(n) => c
            .get(&format!("/api/v1/plugins/{}", super::segment(n)))
            .await
            // A plugin with several copies: one row per copy.
            .map(|p| match p["instances"].as_array() {
                Some(copies) => copies.clone(),
                None => vec![p],
            }),
        None => c
            .get("/api/v1/plugins")
            .await
            .map(|v| v["plugins"].as_array().cloned().unwrap_or_default()),
    };
    let plugins = match result {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    if args.json {
        let out = if args.name.is_some() && plugins.len() == 1 {
            plugins.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(plugins)
        };
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return 0;
    }
    print!("{}", table(&plugins));
    0
}

/// Renders the plugin table.
pub(crate) fn table(plugins: &[Value]) -> String {
    let header = [
        "NAME",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "CPU",
        "MEM",
        "LAST EXIT",
    ];
    let rows: Vec<[String; 8]> = plugins
        .iter()
        .map(|p| {
            let last = match &p["last_exit"] {
                Value::Object(o) => format!(
                    "{} ({})",
                    o.get("status").and_then(Value::as_str).unwrap_or("?"),
                    o.get("reason").and_then(Value::as_str).unwrap_or("?")
                ),
                _ => "-".into(),
            };
            [
                p["name"].as_str().unwrap_or("?").to_string(),
                p["state"].as_str().unwrap_or("?").to_string(),
                p["pid"].as_u64().map_or("-".into(), |v| v.to_string()),
                p["uptime_secs"].as_f64().map_or("-".into(), human_secs),
                p["restarts"].as_u64().unwrap_or(0).to_string(),
                p["usage"]["cpu_percent"]
                    .as_f64()
                    .map_or("-".into(), |c| format!("{c:.1}%")),
                p["usage"]["rss_bytes"]
                    .as_u64()
                    .map_or("-".into(), |b| format!("{:.1}M", b as f64 / 1048576.0)),
                last,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[&str], out: &mut String| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header, &mut out);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells, &mut out);
    }
    out
}
